"""Training runs as users extend, resume and configure them (issue: inputs from the field)."""

import json

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


def test_budget_epochs_fit_what_is_left():
    # 60 s budget, 10 s gone of which 2 steps (1 s each) were the first epoch's; epochs
    # of 10 steps + 2 s evaluation: (60 * 0.97 - 10 + 2) / 12 = 4.18 -> 4
    assert budget.budget_epochs(60, 10, 2, 1.0, 10, 2.0) == 4
    assert budget.budget_epochs(60, 59, 2, 1.0, 10, 2.0) == 1  # never fewer than one
    assert budget.budget_epochs(3600, 0, 0, 0.01, 100, 0.0, margin=0.0) == 3600


def test_a_time_budget_fixes_the_epochs_and_records_them(tmp_path, caplog):
    cfg = tiny_config(tmp_path, epochs=1000, time_budget=0.25, train_subset=480, batch_size=16)
    with caplog.at_level("INFO", logger="vitsam"):
        history = training.train(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert 1 <= saved["epochs"] < 1000  # measured, whatever this machine's speed
    assert len(history) == saved["epochs"] == cfg.epochs
    assert saved["time_budget"] == 0.25
    assert "time budget 0.25 min" in caplog.text
    # a resumed run keeps the epochs it resolved instead of timing again
    assert training.resume(cfg.out)[-1]["epoch"] == saved["epochs"]


def test_a_time_budget_too_short_to_time_keeps_the_epochs(tmp_path, caplog):
    cfg = tiny_config(tmp_path, epochs=2, time_budget=1.0, train_subset=96, batch_size=48)
    with caplog.at_level("WARNING", logger="vitsam"):
        assert len(training.train(cfg)) == 2
    assert "too few to time" in caplog.text


def test_negative_time_budget_is_refused():
    with pytest.raises(VitsamError, match="time-budget"):
        TrainConfig(time_budget=-1)


def test_epochs_that_fit_what_is_left_of_the_budget():
    assert budget.epochs_that_fit(100, 40, 10, margin=0.0) == 6
    assert budget.epochs_that_fit(100, 95, 10) == 0  # none: the run ends now


class Clock:
    """A made-up perf_counter: seconds, set by the test."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _calibrated(clock: Clock) -> tuple[TimeBudget, list]:
    """A 1-minute budget fitted from made-up times: 100 steps an epoch, 0.1 s a step after
    2 s of start-up, 1 s per 1,000 test images (2,000 of them); returns it and its fits."""
    b = TimeBudget(1.0, steps_per_epoch=100, test_images=2000, started=0.0, clock=clock)
    fits = []
    for step in range(100):
        clock.t = 2.0 + 0.1 * step
        fits.append(b.before_step(step, 3, sync=lambda: None, time_eval=lambda n: (n / 1000, n)))
    return b, fits


def test_the_budget_times_its_steps_and_an_evaluation_then_fits_the_epochs():
    clock = Clock()
    b, fits = _calibrated(clock)
    # steps 10-40 took 3 s: 0.1 s a step; an evaluation 2 s; 6 s gone, 4 of them the epoch's:
    # (60 * 0.97 - 2) // (100 * 0.1 + 2) = 4 epochs, answered once, at step 40
    assert fits[40] == 4 and fits.count(None) == 99
    assert b.fitted
    unbudgeted = TimeBudget(0, steps_per_epoch=100, test_images=2000, started=0.0, clock=clock)
    for step in range(100):
        assert unbudgeted.before_step(step, 3, sync=None, time_eval=None) is None
    kept = unbudgeted.after_epoch(
        done=1, epochs=3, steps=100, in_warmup=True, train_s=5.0, train_ended=20.0, eval_s=1.0
    )
    assert kept is None


def test_a_budgeted_run_refits_its_length_to_the_first_epoch_while_in_warmup():
    # 60 s budget, 10 s gone, epochs of 5 s: 1 + (60 * 0.97 - 10) // 5 = 10 epochs fit
    b = TimeBudget(1.0, steps_per_epoch=100, test_images=100, started=0.0, clock=Clock(10.0))
    assert b.refit(1, 3, 5.0, in_warmup=True) == 10  # grown: no learning rate depended on it
    assert b.refit(1, 3, 5.0, in_warmup=False) is None  # the decay has begun: only shrinks
    assert b.refit(1, 3, 25.0, in_warmup=False) is None  # one slow epoch: median of 5, 5, 25
    assert b.refit(1, 3, 25.0, in_warmup=False) == 2  # a lasting slowdown: 1 + 48.2 // 25


def test_the_fitting_epoch_is_read_at_its_pace_after_the_fit():
    clock = Clock()
    b, _ = _calibrated(clock)  # fitted at step 40, clock 6 s
    # the 60 steps after the fit took 0.1 s each: the epoch reads as 100 of those, not its
    # measured 15 s (slow warm-up steps and timed evaluations)
    assert b.train_seconds(15.0, 6.0 + 0.1 * 60, 100) == pytest.approx(10.0)
    steps = budget.CALIBRATION_STEPS
    assert b.train_seconds(15.0, 6.0 + 0.1 * 29, 40 + steps - 1) == 15.0  # too few after it
    # the check after that epoch: 10 s + 2 s an epoch, 16 s gone: 1 + 42.2 // 12 = 4, kept
    clock.t = 16.0
    kept = b.after_epoch(
        done=1, epochs=4, steps=100, in_warmup=True, train_s=15.0, train_ended=12.0, eval_s=2.0
    )
    assert kept is None
    # later epochs are read as measured (15 s + 2 s); the pace is the median of 12 and 17 s:
    # at 33 s gone, 2 + 25.2 // 14.5 = 3 epochs fit
    clock.t = 33.0
    assert b.train_seconds(15.0, 31.0, 200) == 15.0
    shrunk = b.after_epoch(
        done=2, epochs=4, steps=200, in_warmup=False, train_s=15.0, train_ended=31.0, eval_s=2.0
    )
    assert shrunk == 3


def test_a_run_the_budget_ends_early_resumes_as_ended(tmp_path, monkeypatch):
    """The budget's last word (end after this epoch) is in last.pt, not only config.json."""

    def end_after_two(self, *, done, epochs, **_):
        return 2 if done == 2 and epochs != 2 else None

    monkeypatch.setattr(TimeBudget, "after_epoch", end_after_two)
    cfg = tiny_config(tmp_path, epochs=5, train_subset=96, batch_size=48)
    assert len(training.train(cfg)) == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 2
    assert len(training.resume(cfg.out)) == 2  # nothing left to train
