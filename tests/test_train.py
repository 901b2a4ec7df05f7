import json
import math

import pytest
import torch

from tests.conftest import tiny_config
from vitsam.errors import VitsamError
from vitsam.vit import train as training
from vitsam.vit.evaluate import load_classifier

pytestmark = pytest.mark.models  # trains: repeated in the other precision by .ci/run


def test_smoke_run_loss_falls_and_writes_outputs(tmp_path):
    cfg = tiny_config(tmp_path, epochs=3, train_subset=1024, lr=2e-3)
    history = training.train(cfg)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = {
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "epoch_seconds",
        "images_per_second",
        "eval_seconds",
    }
    assert len(rows) == 3 and keys <= set(rows[0])
    assert json.loads((run / "config.json").read_text())["model"]["dim"] == 32
    for name in ("last.pt", "best.pt", "curves.png"):
        assert (run / name).stat().st_size > 0
    assert not list(run.glob("*.tmp*"))
    state = torch.load(run / "last.pt", weights_only=True)  # loads with weights_only
    assert state["epoch"] == 3
    clf = load_classifier(run)
    assert clf.classes[0] == "disk" and clf.image_size == 32


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_resume_after_a_kill_matches_the_uninterrupted_run(tmp_path, loader):
    over = dict(
        epochs=3,
        loader=loader,
        workers=0,
        ema=0.99,
        mixup=0.8,
        cutmix=1.0,
        erasing=0.25,
        policy="randaugment",
        mix_off_epochs=1,
    )
    full = training.train(tiny_config(tmp_path / "a", **over))

    def kill_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    cfg = tiny_config(tmp_path / "b", **over)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, on_epoch_end=kill_after_first)
    resumed = training.resume(cfg.out)
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(full)
    lines = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


# the test replaces optimizer.step after the scheduler wrapped it, which torch warns of
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_interrupt_mid_epoch_saves_weights(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    trainer = training.Trainer(cfg)
    calls = {"n": 0}
    real = trainer.opt.step

    def step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer.opt, "step", step)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert (tmp_path / "run" / "interrupted.pt").exists()
    load_classifier(tmp_path / "run" / "interrupted.pt")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, epochs=3)
    real = training.soft_cross_entropy
    trainer = training.Trainer(cfg)

    def poisoned(logits, targets):
        loss = real(logits, targets)
        return loss * float("nan") if trainer.epoch == 1 else loss

    monkeypatch.setattr(training, "soft_cross_entropy", poisoned)
    with pytest.raises(VitsamError, match="diverged.*epoch 2.*last good state \\(epoch 1\\)"):
        trainer.run()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(VitsamError, match="no last.pt"):
        training.resume(tmp_path)


def test_lr_schedule_warms_up_then_decays():
    f = [training.lr_factor(s, 10, 100, 0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.01, abs=1e-3)


def test_bf16_training_runs_on_cpu(tmp_path):
    history = training.train(tiny_config(tmp_path, precision="bf16", epochs=1))
    assert history[0]["train_loss"] < 2.5


def test_compiled_training_with_dropout(tmp_path):
    """--compile traces the model, CPU dropout included (it falls back to F.dropout)."""
    cfg = tiny_config(tmp_path, epochs=1, compile=True)
    cfg.model.dropout = 0.1
    history = training.train(cfg)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
