"""Training runs as users extend, resume and configure them (issue: inputs from the field)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_config
from vitsam.cli import main
from vitsam.errors import VitsamError
from vitsam.vit import budget
from vitsam.vit import train as training
from vitsam.vit.budget import TimeBudget
from vitsam.vit.config import TrainConfig
from vitsam.vit.data import load_image_folder
from vitsam.vit.evaluate import evaluate

pytestmark = pytest.mark.models  # trains: repeated in the other precision by .ci/run


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_extending_a_finished_run_rebuilds_the_schedule(tmp_path):
    cfg = tiny_config(tmp_path, epochs=2)
    first = training.train(cfg)
    assert first[-1]["lr"] > 0
    resumed = training.resume(cfg.out, epochs=4)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    # epoch 3 starts where a 4-epoch cosine is half-way (warmup 0.5 epoch): well above 0
    t = training.Trainer(tiny_config(tmp_path / "ref", epochs=4))
    expected = cfg.lr * t.lr_factor(2 * t.steps_per_epoch)
    assert resumed[2]["lr"] == pytest.approx(expected, rel=1e-6)
    assert expected > 0.4 * cfg.lr
    assert [r["epoch"] for r in _rows(tmp_path / "run")] == [1, 2, 3, 4]


def test_resume_refuses_a_change_to_the_runs_maths(tmp_path, capsys):
    cfg = tiny_config(tmp_path, epochs=1)
    training.train(cfg)
    with pytest.raises(VitsamError, match="--batch-size cannot change when resuming"):
        training.resume(cfg.out, batch_size=8)
    assert main(["train", "--resume", cfg.out, "--batch-size", "8"]) == 2
    assert "--batch-size cannot change" in capsys.readouterr().err


def test_a_checkpoint_of_another_devices_generator_resumes(tmp_path, caplog):
    """A last.pt written on a CUDA machine carries a CUDA generator state (16 bytes)."""
    cfg = tiny_config(tmp_path, epochs=1)
    training.train(cfg)
    path = tmp_path / "run" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["rng"]["gen"] = torch.zeros(16, dtype=torch.uint8)
    state["rng"]["gen_device"] = "cuda"
    torch.save(state, path)
    with caplog.at_level("WARNING", logger="vitsam"):
        history = training.resume(cfg.out, epochs=2)
    assert [r["epoch"] for r in history] == [1, 2]
    assert "generator is a cuda one" in caplog.text


def test_warmup_not_shorter_than_the_run_is_capped(tmp_path, caplog):
    cfg = tiny_config(tmp_path, epochs=4, warmup_epochs=5.0)
    with caplog.at_level("WARNING", logger="vitsam"):
        trainer = training.Trainer(cfg)
    assert cfg.warmup_epochs == pytest.approx(0.8)
    assert "capped to 0.8" in caplog.text
    peak = [trainer.lr_factor(s) for s in range(4 * trainer.steps_per_epoch)]
    assert max(peak) == pytest.approx(1.0)


def test_print_config_names_optimizer_and_schedule(capsys):
    assert main(["train", "--preset", "seed", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["optimizer"], cfg["schedule"], cfg["eval_precision"]) == (
        "adamw",
        "warmup-cosine",
        "fp32",
    )
    args = ["train", "--optimizer", "sgd", "--schedule", "warmup-linear", "--print-config"]
    assert main(args) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["optimizer"], cfg["schedule"]) == ("sgd", "warmup-linear")
    assert main(["train", "--schedule", "step", "--print-config"]) == 2


@pytest.mark.parametrize("schedule", ["warmup-cosine", "warmup-linear", "warmup-constant"])
def test_schedules_warm_up_then_end_where_they_say(schedule):
    f = [training.lr_factor(s, 10, 100, 0.01, schedule) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    end = {"warmup-cosine": 0.01, "warmup-linear": 0.01, "warmup-constant": 1.0}[schedule]
    assert f[100] == pytest.approx(end)
    if schedule == "warmup-linear":  # a straight line: half-way is half-way
        assert f[55] == pytest.approx(0.01 + 0.99 * 0.5)


def test_sgd_trains(tmp_path):
    history = training.train(tiny_config(tmp_path, optimizer="sgd", lr=0.05, epochs=2))
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_training_and_eval_report_the_same_accuracy(tmp_path, capsys):
    """The run evaluates in its eval_precision (fp32 by default) and records it; `vitsam
    eval` reads it, so the two agree even when training ran in bf16."""
    cfg = tiny_config(tmp_path, epochs=1, precision="bf16", test_subset=0)  # eval: all
    history = training.train(cfg)
    assert history[-1]["eval_precision"] == "float32"
    assert main(["eval", cfg.out, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    top1 = float(out.split("top-1 accuracy: ")[1].split()[0])
    assert top1 == pytest.approx(history[-1]["test_acc"], abs=1e-4)


def test_image_folder_training_reads_images_upright(tmp_path):
    """A photo stored sideways with EXIF orientation 6 is trained as it is displayed."""
    arr = np.zeros((32, 16, 3), dtype=np.uint8)  # stored 16 wide, 32 tall
    arr[:8] = 255  # white band at the stored top
    for split in ("train", "test"):
        d = tmp_path / "ds" / split / "only"
        d.mkdir(parents=True)
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        Image.fromarray(arr).save(d / "a.jpg", exif=exif, quality=95)
    train, _ = load_image_folder(tmp_path / "ds", image_size=32)
    img = train.images[0].float().mean(0)  # (H, W)
    # displayed upright, the stored top band is the right-hand side
    assert img[:, -6:].mean() > 200 and img[:, :6].mean() < 50


def test_ema_follows_the_batchnorm_statistics_of_the_conv_tokenizer(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1, ema=0.99)
    cfg.model.tokenizer, cfg.model.patch_size = "conv", 8
    trainer = training.Trainer(cfg)
    trainer.run()
    bn = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ema_bn = [m for m in trainer.ema.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and bn[0].num_batches_tracked > 0
    for a, b in zip(bn, ema_bn):  # evaluated with statistics of the data, not of the init
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)


def test_budget_steps_fit_whole_epochs_then_a_partial_one():
    # 60 s budget (1.5% spare: 59.1 s), 10 s gone of which 2 steps (1 s each) were the
    # first epoch's, so 51.1 s from its start; epochs of 10 steps + 2 s evaluation: 4 whole
    # (48 s), then 1.1 s left after the partial epoch's evaluation: 1 step
    assert budget.budget_steps(60, 10, 2, 1.0, 10, 2.0) == 41
    assert budget.budget_steps(60, 59, 2, 1.0, 10, 2.0) == 2  # never fewer than taken
    assert budget.budget_steps(3600, 0, 0, 0.01, 100, 0.0, margin=0.0) == 360_000


def test_a_time_budget_fixes_the_length_and_records_it(tmp_path, caplog):
    cfg = tiny_config(tmp_path, epochs=1000, time_budget=0.25, train_subset=480, batch_size=16)
    with caplog.at_level("INFO", logger="vitsam"):
        history = training.train(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert 1 <= saved["epochs"] < 1000  # measured, whatever this machine's speed
    assert len(history) == saved["epochs"] == cfg.epochs
    assert (saved["epochs"] - 1) * 30 < saved["max_steps"] <= saved["epochs"] * 30
    assert saved["time_budget"] == 0.25
    assert "time budget 0.25 min" in caplog.text
    # a resumed run keeps the length it resolved instead of timing again
    assert training.resume(cfg.out)[-1]["epoch"] == saved["epochs"]


def test_a_time_budget_too_short_to_time_keeps_the_epochs(tmp_path, caplog):
    cfg = tiny_config(tmp_path, epochs=2, time_budget=1.0, train_subset=96, batch_size=48)
    with caplog.at_level("WARNING", logger="vitsam"):
        assert len(training.train(cfg)) == 2
    assert "too few to time" in caplog.text


def test_negative_time_budget_and_steps_are_refused():
    with pytest.raises(VitsamError, match="time-budget"):
        TrainConfig(time_budget=-1)
    with pytest.raises(VitsamError, match="max-steps"):
        TrainConfig(max_steps=-1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_budget_from_the_command_line_counts_from_the_process_start():
    # a process that slept 1 s before asking: its budget's clock started at least 1 s back
    code = (
        "import time; time.sleep(1.0); from vitsam.vit.budget import process_started; "
        "print(time.perf_counter() - process_started())"
    )
    age = float(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert 1.0 <= age < 60.0
    now = [5.0]
    assert budget.process_started(clock=lambda: now[0]) <= 5.0


def test_steps_that_fit_what_is_left_of_the_budget():
    assert budget.steps_that_fit(100, 40, 1.0, 10, 0.0, margin=0.0) == 60
    assert budget.steps_that_fit(100, 40, 1.0, 10, 5.0, margin=0.0) == 40  # 4 x 15 s, no more
    # 3.5 s left: no whole epoch, one step and the evaluation of its partial epoch
    assert budget.steps_that_fit(100, 95, 1.0, 10, 2.0) == 1
    assert budget.steps_that_fit(100, 99, 1.0, 10, 2.0) == 0  # none: the run ends now


class Clock:
    """A made-up perf_counter: seconds, set by the test."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _calibrated(clock: Clock, **kwargs) -> tuple[TimeBudget, list]:
    """A 1-minute budget fitted from made-up times: 100 steps an epoch, 0.1 s a step after
    2 s of start-up, 1 s per 1,000 test images (2,000 of them; 6 s with the last epoch's
    six TTA views); returns it and its fits."""
    b = TimeBudget(1.0, steps_per_epoch=100, test_images=2000, started=0.0, clock=clock, **kwargs)
    fits = []
    for step in range(100):
        clock.t = 2.0 + 0.1 * step
        fits.append(
            b.before_step(
                step,
                3,
                sync=lambda: None,
                time_eval=lambda n, last: (n * (6 if last else 1) / 1000, n),
            )
        )
    return b, fits


def test_the_budget_times_its_steps_and_an_evaluation_then_fits_the_steps():
    clock = Clock()
    b, fits = _calibrated(clock)
    # steps 10-40 took 3 s: 0.1 s a step; an evaluation 2 s; 6 s gone, 4 of them the epoch's:
    # 59.1 - 2 = 57.1 s from the epoch's start: 4 epochs of 12 s, then 57.1 - 48 - 2 = 7.1 s
    # for 71 steps of a fifth; answered once, at step 40
    assert fits[40] == 471 and fits.count(None) == 99
    assert b.fitted and b.final_s == 0
    unbudgeted = TimeBudget(0, steps_per_epoch=100, test_images=2000, started=0.0, clock=clock)
    for step in range(100):
        assert unbudgeted.before_step(step, 3, sync=None, time_eval=None) is None
    kept = unbudgeted.after_epoch(
        done=1, steps=100, total_steps=300, train_s=5.0, train_ended=20.0, eval_s=1.0
    )
    assert kept is None


def test_the_heavier_last_evaluations_are_kept_spare():
    # the last epoch evaluated with six TTA views: 12 s instead of 2, 10 s kept spare, so
    # 47.1 s from the epoch's start: 3 epochs, then 9.1 s for 91 steps
    b, fits = _calibrated(Clock(), final_tta=True)
    assert b.final_s == pytest.approx(10.0) and fits[40] == 391
    # a validation split's run evaluates the 1,000 test images once more: 1 s spare
    b, fits = _calibrated(Clock(), final_images=1000)
    assert b.final_s == pytest.approx(1.0) and fits[40] == 461


def test_a_budgeted_run_refits_its_length_to_the_epochs_pace_both_ways():
    # 60 s budget, 10 s gone: 49.1 s left for epochs of 100 steps and no evaluation
    b = TimeBudget(1.0, steps_per_epoch=100, test_images=100, started=0.0, clock=Clock(10.0))
    grown = b.refit(1, 100, 300, 0.04, 0.0)  # epochs of 4 s: 12 of them, then 1.1 s: 27 steps
    assert grown == 100 + 1227
    assert b.refit(1, 100, grown, 0.04, 0.0) is None  # the same pace: kept
    assert b.refit(1, 100, grown, 0.2, 0.0) is None  # one slow epoch: median of .04, .04, .2
    # a lasting slowdown: median 0.2 s a step, 49.1 s: 2 epochs, then 9.1 s for 45 steps
    assert b.refit(1, 100, grown, 0.2, 0.0) == 100 + 245


def test_the_fitting_epoch_is_read_at_its_pace_after_the_fit():
    clock = Clock()
    b, _ = _calibrated(clock)  # fitted at step 40, clock 6 s, to 471 steps
    # the 60 steps after the fit took 0.1 s each: the epoch reads as 100 of those, not its
    # measured 15 s (slow warm-up steps and timed evaluations)
    assert b.train_seconds(15.0, 6.0 + 0.1 * 60, 100) == pytest.approx(10.0)
    steps = budget.CALIBRATION_STEPS
    assert b.train_seconds(15.0, 6.0 + 0.1 * 29, 40 + steps - 1) == 15.0  # too few after it
    # the check after that epoch: 10 s + 2 s an epoch, 16 s gone (2 s more than fitted):
    # 43.1 s left: 3 epochs, then 5.1 s for 51 steps
    clock.t = 16.0
    shrunk = b.after_epoch(
        done=1, steps=100, total_steps=471, train_s=15.0, train_ended=12.0, eval_s=2.0
    )
    assert shrunk == 100 + 351
    # later epochs are read as measured (15 s + 2 s); the pace is the median of 0.1 and
    # 0.15 s a step: at 33 s gone, 26.1 s left: 1 epoch of 14.5 s, then 9.6 s for 76 steps
    clock.t = 33.0
    assert b.train_seconds(15.0, 31.0, 200) == 15.0
    shrunk = b.after_epoch(
        done=2, steps=200, total_steps=451, train_s=15.0, train_ended=31.0, eval_s=2.0
    )
    assert shrunk == 200 + 176


def _simulated_run(
    minutes: float,
    step_s: float,
    eval_s: float,
    slower_from: int = 10**9,
    epoch_pace: tuple[float, ...] = (1.0,),
    last_eval_s: float = 0.0,
):
    """A run driven by a made-up clock as the trainer drives its budget: 5 s of data
    loading, 390 steps an epoch, the first 40 steps twice as slow as the rest (allocation,
    caches), the steps and evaluations 30% slower from step `slower_from` on (the machine
    got busier), epoch i's steps `epoch_pace[i % len]` times as long (a shared machine's
    noise), and the last epoch's evaluation `last_eval_s` longer than the others (TTA
    views). Returns (seconds at the end, steps taken)."""
    clock = Clock(5.0)
    spe, total, step, done = 390, 22 * 390, 0, 0
    b = TimeBudget(
        minutes,
        steps_per_epoch=spe,
        test_images=10_000,
        final_tta=last_eval_s > 0,
        started=0.0,
        clock=clock,
    )

    def slow() -> float:
        return 1.3 if step >= slower_from else 1.0

    def time_eval(n, last):
        seconds = (eval_s + (last_eval_s if last else 0.0)) * n / 10_000 * slow()
        clock.t += seconds
        return seconds, n

    while step < total:
        t0 = clock.t
        while step < min(total, (done + 1) * spe):
            fitted = b.before_step(step, 22, sync=lambda: None, time_eval=time_eval)
            total = fitted or total
            if step >= total:
                break
            noise = epoch_pace[done % len(epoch_pace)]
            clock.t += step_s * noise * (2 if step < 40 else 1) * slow()
            step += 1
        train_s, ended = clock.t - t0, clock.t
        clock.t += eval_s * slow()
        done += 1
        refitted = b.after_epoch(
            done=done,
            steps=step,
            total_steps=total,
            train_s=train_s,
            train_ended=ended,
            eval_s=eval_s * slow(),
        )
        total = max(refitted or total, step)
    return clock.t + last_eval_s * slow(), step


@pytest.mark.parametrize(
    "minutes, step_s, eval_s", [(10, 0.19, 4.5), (20, 0.19, 27.0), (60, 0.19, 4.5), (1, 0.01, 0.5)]
)
def test_a_budgeted_run_ends_within_3_percent_of_its_budget(minutes, step_s, eval_s):
    ended, steps = _simulated_run(minutes, step_s, eval_s)
    assert 0.97 * minutes * 60 <= ended <= minutes * 60
    assert steps % 390 != 0 or steps == 0  # the last epoch was cut to fit


def test_a_run_that_slows_down_still_ends_within_its_budget():
    ended, _ = _simulated_run(20, 0.19, 4.5, slower_from=3000)
    assert 0.97 * 20 * 60 <= ended <= 20 * 60


def test_the_last_evaluations_are_refitted_to_the_machines_pace():
    # six TTA views of the test set after the last epoch, 70 s beyond one view as timed in
    # the first epoch (as the fp32 10-minute runs measured), then the machine slows by 30%
    # for the run's last half: the last evaluations take 91 s, 21 s more than timed, which
    # the 1.5% margin (9 s at 10 minutes) cannot hold; the refit keeps them spare (kept at
    # the timed 70 s, the runs end at 102.2%, 100.2% and 99.1% of their budgets)
    for minutes, slower_from in ((10, 1200), (20, 3000), (60, 9000)):
        ended, _ = _simulated_run(minutes, 0.19, 4.5, slower_from=slower_from, last_eval_s=70.0)
        assert 0.97 * minutes * 60 <= ended <= minutes * 60, (minutes, ended)


@pytest.mark.parametrize("minutes", [10, 20, 60])
def test_a_run_whose_epochs_vary_still_ends_within_its_budget(minutes):
    # epochs of 112-126 s, as a 10-minute run measured on a shared 2-core EPYC, the 126 s
    # ones falling last in turn
    for shift in range(3):
        pace = (1.0, 0.94, 1.06)[shift:] + (1.0, 0.94, 1.06)[:shift]
        ended, _ = _simulated_run(minutes, 0.32, 4.2, epoch_pace=pace)
        assert 0.97 * minutes * 60 <= ended <= minutes * 60, (shift, ended)


def test_a_run_the_budget_ends_early_resumes_as_ended(tmp_path, monkeypatch):
    """The budget's last word (end after this epoch) is in last.pt, not only config.json."""

    def end_after_two(self, *, done, steps, total_steps, **_):
        return steps if done == 2 and total_steps != steps else None

    monkeypatch.setattr(TimeBudget, "after_epoch", end_after_two)
    cfg = tiny_config(tmp_path, epochs=5, train_subset=96, batch_size=48)
    assert len(training.train(cfg)) == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 2
    assert len(training.resume(cfg.out)) == 2  # nothing left to train


def test_max_steps_cuts_the_last_epoch_short_and_the_schedule_ends_with_it(tmp_path):
    cfg = tiny_config(tmp_path, epochs=99, max_steps=8 + 3, schedule="warmup-linear")
    t = training.Trainer(cfg)  # 384 images in batches of 48: 8 steps an epoch
    assert (t.steps_per_epoch, cfg.epochs) == (8, 2)  # the steps decide the epochs
    history = t.run()
    assert [r["epoch"] for r in history] == [1, 2]
    assert t.sched.last_epoch == 11
    assert t.opt.param_groups[0]["lr"] == 0.0  # the linear decay reached zero at step 11
    # extending by epochs trains whole epochs from there
    resumed = training.resume(cfg.out, epochs=3)
    assert len(resumed) == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["max_steps"] == 0


def test_tta_at_end_evaluates_the_last_epoch_alone_with_all_views(tmp_path):
    cfg = tiny_config(
        tmp_path, epochs=3, tta_flip=True, tta_translate=True, tta_at_end=True, precision="fp32"
    )
    t = training.Trainer(cfg)
    history = t.run()
    assert [r["eval_views"] for r in history] == [1, 1, 6]
    # the last row is the final weights evaluated with the run's flip + translate views
    args = (t.eval_model(), t.data.test, t.normalize, t.device, t.eval_dtype)
    views = evaluate(*args, tta_flip=True, tta_translate=True)
    assert history[-1]["test_acc"] == pytest.approx(views.accuracy, abs=1e-6)
