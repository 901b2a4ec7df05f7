"""--time-budget: a run sized to end within the minutes the user gave.

The promise (README, `--time-budget MINUTES`): the whole run, data loading and every
evaluation included, ends within that much wall time on the machine at hand. Early in a
fresh run's first epoch the budget times a few dozen training steps and one evaluation
and fixes the epochs; after each epoch it checks the epochs' real time: while the
schedule is in warmup the run may grow or shrink, later it only shrinks. The recipe's
figures (how far the estimate misses, and why the first steps are skipped) are in
docs/BENCHMARKS.md, `--time-budget`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

import torch

from vitsam.vit import distributed

log = logging.getLogger("vitsam")

WARM_STEPS = 10  # training steps left untimed: the first ones pay for allocations and caches
CALIBRATION_STEPS = 30  # training steps then timed for the seconds per step
EVAL_WARM_IMAGES = 250  # test images evaluated untimed first (one CPU batch): it allocates
EVAL_TIMED_IMAGES = 1000  # test images timed, the time scaled to the whole test set
MARGIN = 0.03  # share of the budget kept spare for checkpoints and speed drift
PACE_EPOCHS = 3  # epochs whose median time is the pace: one slow epoch does not cut a run


def budget_epochs(
    budget_s: float,
    elapsed_s: float,
    steps_done: int,
    step_s: float,
    steps_per_epoch: int,
    eval_s: float,
    margin: float = MARGIN,
) -> int:
    """How many epochs fit in what is left of a time budget, at the measured speed.

    `elapsed_s` is the run's time so far (data loading included), `steps_done` the steps of
    the first epoch already taken (and timed into `elapsed_s`), `step_s` the measured seconds
    per training step and `eval_s` the measured seconds of one test-set evaluation. Keeps
    `margin` of the budget spare for checkpoints and speed drift. At least 1.
    """
    # the first epoch's steps already taken are part of it: count from the epoch's start
    start = elapsed_s - steps_done * step_s
    return max(1, epochs_that_fit(budget_s, start, steps_per_epoch * step_s + eval_s, margin))


def epochs_that_fit(
    budget_s: float, elapsed_s: float, epoch_s: float, margin: float = MARGIN
) -> int:
    """Whole epochs of `epoch_s` seconds (training + evaluation) left in a time budget (>= 0),
    keeping `margin` of the budget spare."""
    return max(0, int((budget_s * (1 - margin) - elapsed_s) // epoch_s))


class TimeBudget:
    """One run's time budget. The trainer calls `before_step` before every training step
    and `after_epoch` after every epoch; each returns the run's new length in epochs when
    it changes, else None. Inert when `minutes` is 0.

    `started` is the clock reading (seconds) the budget counts from: the run's start, data
    loading included. `test_images` are evaluated after every epoch; `final_images` (the
    test set of a run evaluated on a validation split) once more after the last, whose
    time, scaled from the timed evaluation, is kept spare. Only a fresh run is fitted; a
    resumed one keeps the epochs it has.
    """

    def __init__(
        self,
        minutes: float,
        *,
        steps_per_epoch: int,
        test_images: int,
        final_images: int = 0,
        started: float,
        dist: distributed.Dist | None = None,
        device: torch.device | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.minutes = minutes
        self.steps_per_epoch = steps_per_epoch
        self.test_images = test_images  # evaluated after every epoch
        self.final_images = final_images  # evaluated once more after the last (the test set)
        self.final_s = 0.0  # the measured seconds that last evaluation takes, kept spare
        self.started = started
        self.dist = dist or distributed.Dist()  # one process unless told
        self.device = device or torch.device("cpu")  # where the ranks' timings are summed
        self.clock = clock  # seconds; tests give a made-up one
        # the steps timed: fewer when an epoch is short, none when it is too short to time
        self.calibration_steps = min(CALIBRATION_STEPS, steps_per_epoch - WARM_STEPS - 1)
        self.fitted = False  # epochs fitted in this process: kept to the budget from here on
        self._timing_from: float | None = None  # clock at WARM_STEPS
        self._steady_from: tuple[float, int] | None = None  # (clock, steps) just after the fit
        self._paces: list[float] = []  # the checked epochs' seconds, in order

    def before_step(
        self,
        step: int,
        epochs: int,
        *,
        sync: Callable[[], object],
        time_eval: Callable[[int], tuple[float, int]],
    ) -> int | None:
        """The calibration: call before each training step, `step` the steps taken so far.

        In a fresh run's first epoch it times CALIBRATION_STEPS steps after WARM_STEPS
        (`sync()` waits for the device) and one evaluation (`time_eval(n)` evaluates up to
        n test images and returns (seconds, images)), and returns the epochs that fit; every
        rank gets the same answer (the ranks' mean timings). None at every other step. The
        learning rate so far is warmup, which does not depend on the run's length.
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
        time_eval(EVAL_WARM_IMAGES)
        seconds, n = time_eval(EVAL_TIMED_IMAGES)
        eval_s = seconds * self.test_images / n
        step_s, eval_s = self._rank_mean(step_s, eval_s)
        self.final_s = eval_s * self.final_images / max(self.test_images, 1)
        elapsed = self.clock() - self.started + self.final_s
        budget_s = self.minutes * 60
        epochs = budget_epochs(budget_s, elapsed, steps_done, step_s, self.steps_per_epoch, eval_s)
        self.fitted = True
        if self.dist.is_main:
            log.info(
                "time budget %g min: %.3f s per step, %.1f s per evaluation, %.1f s so far "
                "-> %d epochs of %.1f s",
                self.minutes,
                step_s,
                eval_s,
                elapsed,
                epochs,
                self.steps_per_epoch * step_s + eval_s,
            )
        return epochs

    def after_epoch(
        self,
        *,
        done: int,
        epochs: int,
        steps: int,
        in_warmup: bool,
        train_s: float,
        train_ended: float,
        eval_s: float,
    ) -> int | None:
        """The per-epoch check: `done` of `epochs` epochs finished, `steps` training steps
        taken, `in_warmup` whether the schedule is still in its warmup; the epoch took
        `train_s` seconds of training, which ended at clock `train_ended`, and `eval_s`
        seconds of evaluation. Returns the run's new length in epochs, or None to keep it.
        """
        if not self.fitted or done >= epochs:
            self._steady_from = None
            return None
        epoch_s = self.train_seconds(train_s, train_ended, steps) + eval_s
        self._steady_from = None  # only the epoch that fitted has a pace after the fit
        return self.refit(done, epochs, epoch_s, in_warmup)

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

    def refit(self, done: int, epochs: int, epoch_s: float, in_warmup: bool) -> int | None:
        """The epochs that fit after `done` of `epochs` epochs took `epoch_s` seconds each
        (training + evaluation), or None to keep `epochs`.

        In warmup (whose learning rates do not depend on the run's length) the run may grow
        as well as shrink, so the first whole epoch's time replaces the estimate from a few
        dozen steps. After that a run is only shortened, when its epochs run slower than
        timed (the machine got busier); the schedule follows the new length from the next
        step (a linear decay then drops to the new line). The pace is the median of the last PACE_EPOCHS epochs' (fewer at first), so one
        slow epoch, as a shared machine has now and then, keeps the run; a slowdown that
        lasts two epochs shortens it.
        """
        (total,) = distributed.all_reduce_sum(self.dist, torch.tensor(epoch_s, device=self.device))
        self._paces.append(total.item() / self.dist.world)  # the ranks' mean: all alike
        epoch_s = statistics.median(self._paces[-PACE_EPOCHS:])
        elapsed = self.clock() - self.started + self.final_s
        fits = done + epochs_that_fit(self.minutes * 60, elapsed, epoch_s)
        if fits == epochs or (fits > epochs and not in_warmup):
            return None
        if self.dist.is_main:
            log.warning(
                "time budget %g min: epochs take %.1f s, %s than timed; the run now ends "
                "after %d epochs instead of %d",
                self.minutes,
                epoch_s,
                "faster" if fits > epochs else "slower",
                fits,
                epochs,
            )
        return fits

    def _rank_mean(self, *values: float) -> list[float]:
        timings = torch.tensor(values, device=self.device)
        return [v.item() / self.dist.world for v in distributed.all_reduce_sum(self.dist, *timings)]
