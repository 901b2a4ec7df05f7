import csv
from pathlib import Path

import pytest
import torch

from vitsam.cli import main
from vitsam.images import example_images
from vitsam.vit import train as training
from vitsam.vit.analysis import (
    SweepSpec,
    attention_maps,
    flops_per_image,
    parse_grid_flags,
    run_state,
    sweep,
)
from vitsam.vit.config import ModelConfig
from vitsam.vit.model import ViT

SWEEPS = Path(__file__).resolve().parents[1] / "docs" / "sweeps"


def test_flops_match_a_hand_count():
    cfg = ModelConfig(image_size=8, patch_size=4, channels=1, dim=8, depth=1, heads=2, mlp_dim=16,
                      num_classes=3, pool="cls")  # fmt: skip
    n, t = 4, 5  # patches, tokens with the class token
    macs = (
        n * (1 * 4 * 4) * 8  # patch projection
        + t * 8 * 24  # qkv
        + 2 * (t * t * 8)  # q k^T and attn v, all heads
        + t * 8 * 8  # attention output projection
        + 2 * t * 8 * 16  # MLP
        + 8 * 3  # head, on the class token only
    )
    assert flops_per_image(cfg) == 2 * macs
    assert flops_per_image(ModelConfig(patch_size=2)) > 3 * flops_per_image(
        ModelConfig(patch_size=4)
    )


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_attention_maps_are_distributions(pool):
    torch.manual_seed(0)
    model = ViT(ModelConfig(dim=32, depth=3, heads=4, mlp_dim=64, pool=pool))
    maps = attention_maps(model, torch.randn(2, 3, 32, 32))
    assert maps["raw"].shape == (2, 3, 65 if pool == "cls" else 64, 65 if pool == "cls" else 64)
    torch.testing.assert_close(maps["raw"].sum(-1), torch.ones(2, 3, maps["raw"].shape[-1]))
    assert maps["layers"].shape == (2, 3, 8, 8) and maps["rollout"].shape == (2, 1, 8, 8)
    torch.testing.assert_close(maps["layers"].sum((-1, -2)), torch.ones(2, 3))
    torch.testing.assert_close(maps["rollout"].sum((-1, -2)), torch.ones(2, 1))
    assert (maps["rollout"] >= 0).all()


TINY = {"dim": 32, "heads": 2, "mlp_dim": 64, "train_subset": 256, "test_subset": 100,
        "epochs": 1, "batch_size": 64, "device": "cpu", "precision": "fp32"}  # fmt: skip


def test_sweep_expands_runs_skips_finished_and_resumes_partial(tmp_path, monkeypatch):
    spec = SweepSpec(preset="quick", base=dict(TINY), grid={"depth": [1, 2]},
                     variants={"plain": {}, "mixed": {"mixup": 0.8, "cutmix": 1.0}})  # fmt: skip
    names = [name for name, _, _ in spec.runs()]
    assert names == ["depth=1-variant=plain", "depth=1-variant=mixed",
                     "depth=2-variant=plain", "depth=2-variant=mixed"]  # fmt: skip
    assert spec.runs()[1][1].mixup == 0.8 and spec.runs()[1][1].model.depth == 1

    spec = SweepSpec(preset="quick", base={**TINY, "epochs": 2}, grid={"depth": [1, 2]})
    out = tmp_path / "sweep"
    # interrupt the second run after its first epoch, as a killed sweep would leave it
    name, cfg, _ = spec.runs()[1]
    cfg.out = str(out / name)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, on_epoch_end=stop)

    calls = {"train": 0, "resume": 0}
    real_train, real_resume = training.train, training.resume
    monkeypatch.setattr(
        training,
        "train",
        lambda *a, **k: calls.__setitem__("train", calls["train"] + 1) or real_train(*a, **k),
    )
    monkeypatch.setattr(
        training,
        "resume",
        lambda *a, **k: calls.__setitem__("resume", calls["resume"] + 1) or real_resume(*a, **k),
    )
    rows = sweep(spec, out)
    assert calls == {"train": 1, "resume": 1}
    assert [r["epochs"] for r in rows] == [2, 2]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["run"] for t in table] == ["depth=1", "depth=2"]
    for key in (
        "params",
        "flops_per_image",
        "images_per_second",
        "best_acc",
        "final_acc",
        "final_test_acc",
    ):
        assert all(float(t[key]) > 0 for t in table), key
    # wall time is whatever the machine took (a tiny run can round to zero): check its sum
    for t, r in zip(table, rows):
        assert float(t["wall_seconds"]) == round(sum(h["epoch_seconds"] for h in r["history"]), 3)
    assert int(table[1]["params"]) > int(table[0]["params"])
    report = (out / "report.md").read_text()
    assert "| run | depth | params" in report and "depth=2" in report
    assert (out / "accuracy.png").exists() and (out / "curves_depth.png").exists()

    sweep(spec, out)  # everything finished: nothing is trained again
    assert calls == {"train": 1, "resume": 1}


def test_a_budgeted_sweep_run_is_done_at_the_length_it_fixed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").touch()
    (run / "metrics.jsonl").write_text("{}\n" * 13)
    # --time-budget fitted 13 of the spec's 22 epochs on this machine: done, not resumable
    (run / "config.json").write_text('{"epochs": 13, "time_budget": 30}')
    assert run_state(run, 22) == "done"
    (run / "metrics.jsonl").write_text("{}\n" * 12)
    assert run_state(run, 22) == "partial"
    # without a budget the spec's length stands (a spec asking for more extends the run)
    (run / "metrics.jsonl").write_text("{}\n" * 13)
    (run / "config.json").write_text('{"epochs": 13, "time_budget": 0}')
    assert run_state(run, 22) == "partial"
    # --max-steps also fixes the length: 13 epochs, the last one cut short
    (run / "config.json").write_text('{"epochs": 13, "time_budget": 0, "max_steps": 5000}')
    assert run_state(run, 22) == "done"


@pytest.mark.parametrize("spec", sorted(SWEEPS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_documented_sweep_spec_builds_valid_configs(spec):
    runs = SweepSpec.load(spec).runs()  # an unknown field or value raises here
    assert runs and len({name for name, _, _ in runs}) == len(runs)


def test_a_sweep_on_the_validation_split_is_judged_there(tmp_path):
    spec = SweepSpec(preset="quick", base={**TINY, "epochs": 2, "val_split": 100},
                     grid={"label_smoothing": [0.0, 0.2]})  # fmt: skip
    rows = sweep(spec, tmp_path / "sweep")
    for r in rows:
        assert r["evaluated_on"] == "val"
        assert r["best_acc"] == max(h["val_acc"] for h in r["history"])
        assert r["final_acc"] == r["history"][-1]["val_acc"]
        assert r["final_test_acc"] == r["history"][-1]["test_acc"]  # reported, not judged on
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "| evaluated_on | best_acc | final_acc | final_test_acc |" in report
    assert (tmp_path / "sweep" / "curves_label_smoothing.png").exists()


def test_sweep_flags_and_bad_fields(tmp_path, capsys):
    assert parse_grid_flags(["patch-size=2,4", "policy=none,randaugment"]) == {
        "patch_size": [2, 4], "policy": ["none", "randaugment"]}  # fmt: skip
    assert main(["sweep", "--grid", "depth=4,8", "--grid", "dim=128,256", "--list"]) == 0
    assert capsys.readouterr().out.split() == ["depth=4-dim=128", "depth=4-dim=256",
                                               "depth=8-dim=128", "depth=8-dim=256"]  # fmt: skip
    assert main(["sweep", "--grid", "depht=4,8", "--list"]) == 2
    assert "'depht' is not a config field" in capsys.readouterr().err
    spec = tmp_path / "s.toml"
    spec.write_text('preset = "quick"\n[grid]\npatch_size = [2, 4]\n[base]\nepochs = 3\n')
    assert main(["sweep", str(spec), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["patch_size=2", "patch_size=4"]


def test_sweep_preset_flag_wins_over_the_specs(tmp_path, monkeypatch):
    from vitsam.vit import analysis

    specs = []
    monkeypatch.setattr(analysis, "sweep", lambda spec, out, progress: specs.append(spec) or [])
    spec = tmp_path / "s.toml"
    spec.write_text('preset = "quick"\n[grid]\ndepth = [2, 4]\n')
    assert main(["sweep", str(spec), "--preset", "fast", "--out", str(tmp_path / "o")]) == 0
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 0
    assert main(["sweep", "--grid", "depth=2", "--out", str(tmp_path / "o")]) == 0
    assert [s.preset for s in specs] == ["fast", "quick", "quick"]
    assert [cfg.model.tokenizer for _, cfg, _ in specs[0].runs()] == ["conv", "conv"]
    assert [cfg.epochs for _, cfg, _ in specs[0].runs()] != [6, 6]  # not the quick preset's


def test_attention_command_draws_maps(tmp_path, capsys):
    from tests.conftest import tiny_config

    training.train(tiny_config(tmp_path, epochs=1))
    assert (
        main(
            [
                "attention",
                str(tmp_path / "run"),
                str(example_images()[1]),
                "--out",
                str(tmp_path / "att"),
            ]
        )
        == 0
    )
    assert (tmp_path / "att" / "ring.attention.png").stat().st_size > 0
