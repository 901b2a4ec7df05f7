"""--time-budget: a run sized to end within the minutes the user gave.

The promise (README, `--time-budget MINUTES`): the whole run, data loading and every
evaluation included, ends within that much wall time on the machine at hand, and less
than 3% before it. Early in a fresh run's first epoch the budget times a few dozen
training steps and one evaluation (and, when the last epoch's evaluation is heavier, one
of those too) and fixes the run's length in training steps: whole epochs, then a last
epoch cut short to fill what is left. After each epoch it refits the length to the
epochs' real pace, longer or shorter, and rescales the last evaluations' extra time by
how the epochs' evaluations ran against the timed one; the learning-rate schedule
follows from the next step. The recipe's figures are in docs/BENCHMARKS.md, `--time-budget`.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vitsam.vit import distributed

log = logging.getLogger("vitsam")

WARM_STEPS = 10  # training steps left untimed: the first ones pay for allocations and caches
CALIBRATION_STEPS = 30  # training steps then timed for the seconds per step
EVAL_WARM_IMAGES = 250  # test images evaluated untimed first (one CPU batch): it allocates
EVAL_TIMED_IMAGES = 1000  # test images timed, the time scaled to the whole test set
# share of the budget kept spare for the checkpoints, the process's exit and speed drift
MARGIN = 0.015
PACE_EPOCHS = 3  # epochs whose median pace is the pace: one slow epoch does not cut a run
EPS = 1e-9  # float rounding, in epochs or steps
REFIT_LOGGED = 0.02  # a refit that moves the run's end by more than this share is logged


def process_started(clock: Callable[[], float] = time.perf_counter) -> float:
    """The `clock` reading (seconds) at which this process started, so that a budget given
    on the command line counts the interpreter's start and the imports too (3-4 s on a
    2-core CPU, before any of vitsam's code runs).

    On Linux, the process's start from /proc/self/stat (field 22, clock ticks since boot)
    against /proc/uptime; elsewhere, or where those cannot be read, the clock now.
    """
    now = clock()
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # fields[0] is field 3
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return now
    return now - max(0.0, uptime_s - started_s)


def steps_that_fit(
    budget_s: float,
    elapsed_s: float,
    step_s: float,
    steps_per_epoch: int,
    eval_s: float,
    margin: float = MARGIN,
) -> int:
    """Training steps, counted from the start of an epoch, that fit in what is left of a
    time budget (>= 0).

    `elapsed_s` is the time gone at that epoch's start, `step_s` the seconds per training
    step and `eval_s` those of the evaluation after every epoch, the last (cut short) one
    included. Whole epochs of `steps_per_epoch` steps first, then the steps of a partial
    epoch that leave time for its evaluation; `margin` of the budget is kept spare.
    """
    left = budget_s * (1 - margin) - elapsed_s
    epoch_s = steps_per_epoch * step_s + eval_s
    whole = max(0, int(left / epoch_s + EPS))  # EPS: 7.1 s of 0.1 s steps is 71, not 70.99
    rest = left - whole * epoch_s - eval_s  # the partial epoch's training seconds
    partial = int(rest / step_s + EPS) if rest > 0 and step_s > 0 else 0
    return whole * steps_per_epoch + min(partial, steps_per_epoch - 1)


def budget_steps(
    budget_s: float,
    elapsed_s: float,
    steps_done: int,
    step_s: float,
    steps_per_epoch: int,
    eval_s: float,
    margin: float = MARGIN,
) -> int:
    """The run's length in training steps, fitted in its first epoch at the measured speed.

    `elapsed_s` is the run's time so far (data loading included), `steps_done` the steps of
    the first epoch already taken (and timed into `elapsed_s`), `step_s` the measured
    seconds per training step and `eval_s` the measured seconds of one evaluation. Keeps
    `margin` of the budget spare. At least the steps already taken, and at least 1.
    """
    # the first epoch's steps already taken are part of it: count from the epoch's start
    start = elapsed_s - steps_done * step_s
    fits = steps_that_fit(budget_s, start, step_s, steps_per_epoch, eval_s, margin)
    return max(1, steps_done, fits)


class TimeBudget:
    """One run's time budget. The trainer calls `before_step` before every training step
    and `after_epoch` after every epoch; each returns the run's new length in training
    steps when it changes, else None. Inert when `minutes` is 0.

    `started` is the clock reading (seconds) the budget counts from: the run's start, data
    loading included. `test_images` are evaluated after every epoch; `final_images` (the
    test set of a run evaluated on a validation split) once more after the last; with
    `final_tta` the last epoch's evaluations alone use test-time augmentation. What the
    last evaluations take beyond an epoch's, timed with the others and scaled, is kept
    spare. Only a fresh run is fitted; a resumed one keeps the length it has.
    """

    def __init__(
        self,
        minutes: float,
        *,
        steps_per_epoch: int,
        test_images: int,
        final_images: int = 0,
        final_tta: bool = False,
        started: float,
        dist: distributed.Dist | None = None,
        device: torch.device | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.minutes = minutes
        self.steps_per_epoch = steps_per_epoch
        self.test_images = test_images  # evaluated after every epoch
        self.final_images = final_images  # evaluated once more after the last (the test set)
        self.final_tta = final_tta  # the last evaluations alone with test-time augmentation
        self.final_s = 0.0  # the seconds the last evaluations take beyond an epoch's: spare
        self._timed_eval_s = 0.0  # one evaluation's seconds as timed for the fit
        self.started = started
        self.dist = dist or distributed.Dist()  # one process unless told
        self.device = device or torch.device("cpu")  # where the ranks' timings are summed
        self.clock = clock  # seconds; tests give a made-up one
        # the steps timed: fewer when an epoch is short, none when it is too short to time
        self.calibration_steps = min(CALIBRATION_STEPS, steps_per_epoch - WARM_STEPS - 1)
        self.fitted = False  # length fitted in this process: kept to the budget from here on
        self._timing_from: float | None = None  # clock at WARM_STEPS
        self._steady_from: tuple[float, int] | None = None  # (clock, steps) just after the fit
        self._paces: list[tuple[float, float]] = []  # checked epochs' (s per step, s per eval)

    def before_step(
        self,
        step: int,
        epochs: int,
        *,
        sync: Callable[[], object],
        time_eval: Callable[[int, bool], tuple[float, int]],
    ) -> int | None:
        """The calibration: call before each training step, `step` the steps taken so far
        and `epochs` the run's length before the fit.

        In a fresh run's first epoch it times CALIBRATION_STEPS steps after WARM_STEPS
        (`sync()` waits for the device) and one evaluation (`time_eval(n, last)` evaluates
        up to n images as every epoch does, or as the last epoch does when `last`, and
        returns (seconds, images)), and returns the steps that fit; every rank gets the
        same answer (the ranks' mean timings). None at every other step. The learning rate
        so far is warmup, which does not depend on the run's length.
        """
        if not self.minutes or self.fitted:
            return None
        if self.calibration_steps < 1:
            if step == 0:
                log.warning(
                    "time budget: %d steps per epoch are too few to time; the run keeps %d epochs",
                    self.steps_per_epoch,
                    epochs,
                )
            return None
        if step == WARM_STEPS:
            sync()
            self._timing_from = self.clock()
        elif step == WARM_STEPS + self.calibration_steps and self._timing_from is not None:
            sync()
            step_s = (self.clock() - self._timing_from) / self.calibration_steps
            fitted = self._fit(step, step_s, time_eval)
            self._steady_from = (self.clock(), step)
            return fitted
        return None

    def _fit(self, steps_done: int, step_s: float, time_eval) -> int:
        time_eval(EVAL_WARM_IMAGES, False)
        seconds, n = time_eval(EVAL_TIMED_IMAGES, False)
        eval_s = seconds * self.test_images / n
        last_per_image = seconds / n
        if self.final_tta:  # the last epoch's views cost more than the others'
            seconds, n = time_eval(EVAL_TIMED_IMAGES, True)
            last_per_image = seconds / n
        step_s, eval_s, last_per_image = self._rank_mean(step_s, eval_s, last_per_image)
        self.final_s = last_per_image * (self.test_images + self.final_images) - eval_s
        self._timed_eval_s = eval_s
        elapsed = self.clock() - self.started + self.final_s
        budget_s = self.minutes * 60
        steps = budget_steps(budget_s, elapsed, steps_done, step_s, self.steps_per_epoch, eval_s)
        self.fitted = True
        if self.dist.is_main:
            whole, part = divmod(steps, self.steps_per_epoch)
            log.info(
                "time budget %g min: %.3f s per step, %.1f s per evaluation (%.1f s more for "
                "the last), %.1f s so far -> %d steps: %d epochs of %.1f s%s",
                self.minutes,
                step_s,
                eval_s,
                self.final_s,
                elapsed - self.final_s,
                steps,
                whole,
                self.steps_per_epoch * step_s + eval_s,
                f" and one of {part} steps" if part else "",
            )
        return steps

    def after_epoch(
        self,
        *,
        done: int,
        steps: int,
        total_steps: int,
        train_s: float,
        train_ended: float,
        eval_s: float,
    ) -> int | None:
        """The per-epoch check: `done` epochs finished, `steps` of the run's `total_steps`
        training steps taken; the epoch took `train_s` seconds of training, which ended at
        clock `train_ended`, and `eval_s` seconds of evaluation. Returns the run's new
        length in steps, or None to keep it.
        """
        if not self.fitted or steps >= total_steps:
            self._steady_from = None
            return None
        step_s = self.train_seconds(train_s, train_ended, steps) / self.steps_per_epoch
        self._steady_from = None  # only the epoch that fitted has a pace after the fit
        return self.refit(done, steps, total_steps, step_s, eval_s)

    def train_seconds(self, seconds: float, ended: float, steps: int) -> float:
        """An epoch's training seconds as later epochs will take them.

        `seconds` is the epoch as measured, `ended` the clock at its end and `steps` the
        run's steps then. The epoch that fitted the budget also ran the warm-up and timed
        steps and the timed evaluations, which run slower than later steps, so the pace of
        its steps after the fit stands for the whole epoch when at least CALIBRATION_STEPS
        of them ran; otherwise `seconds` as it is.
        """
        if self._steady_from is None:
            return seconds
        started, steps_before = self._steady_from
        if steps - steps_before < CALIBRATION_STEPS:
            return seconds
        return (ended - started) / (steps - steps_before) * self.steps_per_epoch

    def refit(
        self, done: int, steps: int, total_steps: int, step_s: float, eval_s: float
    ) -> int | None:
        """The run's length in steps after `done` epochs (`steps` steps) of `step_s` seconds
        per step and `eval_s` seconds per evaluation, or None to keep `total_steps`.

        The run grows when its epochs run faster than timed (the first steps, timed for the
        fit, run slow) and shrinks when they run slower (the machine got busier); the
        schedule follows the new length from the next step, which moves the learning rate
        by about the share the run's end moved. The pace is the median of the last
        PACE_EPOCHS epochs' (fewer at first), so one slow epoch, as a shared machine has now
        and then, keeps the run; a slowdown that lasts two epochs shortens it. The last
        evaluations' extra seconds (`final_s`, timed at the fit) are scaled by that
        median evaluation against the timed one: the machine that slowed the epochs'
        evaluations slows the last ones too.
        """
        self._paces.append(tuple(self._rank_mean(step_s, eval_s)))  # the ranks': all alike
        step_s = statistics.median(p[0] for p in self._paces[-PACE_EPOCHS:])
        eval_s = statistics.median(p[1] for p in self._paces[-PACE_EPOCHS:])
        elapsed = self.clock() - self.started + self.final_seconds(eval_s)
        fits = steps + steps_that_fit(
            self.minutes * 60, elapsed, step_s, self.steps_per_epoch, eval_s
        )
        if fits == total_steps:
            return None
        if self.dist.is_main and abs(fits - total_steps) > REFIT_LOGGED * total_steps:
            log.info(
                "time budget %g min: epochs take %.1f s, %s than fitted; the run now ends "
                "after %d steps (%.1f epochs) instead of %d",
                self.minutes,
                step_s * self.steps_per_epoch + eval_s,
                "faster" if fits > total_steps else "slower",
                fits,
                fits / self.steps_per_epoch,
                total_steps,
            )
        return fits

    def final_seconds(self, eval_s: float) -> float:
        """The seconds the last evaluations take beyond an epoch's, at the pace of
        evaluations of `eval_s` seconds: `final_s` scaled by `eval_s` against the timed
        evaluation (`final_s` itself when none was timed)."""
        if self._timed_eval_s <= 0:
            return self.final_s
        return self.final_s * eval_s / self._timed_eval_s

    def _rank_mean(self, *values: float) -> list[float]:
        if not self.dist.enabled:
            return list(values)
        timings = torch.tensor(values, dtype=torch.float64, device=self.device)
        return [v.item() / self.dist.world for v in distributed.all_reduce_sum(self.dist, *timings)]
