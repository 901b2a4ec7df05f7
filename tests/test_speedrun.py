"""The speedrun preset and its levers: Muon, mimetic init, alternating flips, translate
TTA and the validation split that recipe choices are made on."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from vitsam.errors import VitsamError
from vitsam.vit import train as training
from vitsam.vit.analysis import flops_split
from vitsam.vit.config import ModelConfig, from_dict, preset
from vitsam.vit.data import make_shapes
from vitsam.vit.evaluate import logits_of
from vitsam.vit.model import WHITEN_IMAGES, ViT, count_parameters, mimetic_init_, whiten_init_

ROOT = Path(__file__).resolve().parents[1]  # the repository


def test_speedrun_preset_is_a_transformer_by_the_flops_rule():
    cfg = preset("speedrun")
    model = ViT(cfg.model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3  # the tokenizer stays a tokenizer
    assert count_parameters(model) == 891_946
    f = flops_split(cfg.model)
    assert round(f["total"] / 1e6, 1) == 46.6  # MFLOPs per image, forward
    assert f["blocks"] / f["total"] > 0.5  # the blocks carry most of the forward FLOPs
    assert f["tokenizer"] + f["blocks"] + f["head"] == f["total"]
    assert (cfg.optimizer, cfg.model.attn_init, cfg.time_budget) == ("muon", "mimetic", 60.0)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(tmp_path):
    trainer = training.Trainer(tiny_config(tmp_path, optimizer="muon"))
    model = trainer.model
    muon = {id(p) for g in trainer.opt.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in trainer.opt.adamw.param_groups for p in g["params"]}
    matrices = {id(p) for p in model.blocks.parameters() if p.ndim == 2}
    assert muon == matrices and len(muon) == 4 * model.cfg.depth  # qkv, proj, fc1, fc2
    assert adamw == {id(p) for p in model.parameters()} - matrices
    assert id(model.head.weight) in adamw  # the classifier stays with AdamW
    assert len(trainer.opt.param_groups) == 2  # one schedule moves both


def _products(attn, d):
    wq, wk, wv = attn.qkv.weight.view(3, d, d)
    return wq.T @ wk, wv.T @ attn.proj.weight.T  # (d_in, d_in) as the logits see them


def test_mimetic_init_has_its_closed_form():
    d = 64
    torch.manual_seed(0)
    attn = ViT(ModelConfig(dim=d, depth=1, heads=4, mlp_dim=64, attn_init="mimetic")).blocks[0].attn
    qk, vo = _products(attn, d)
    eye = torch.eye(d)
    assert qk.diagonal().mean().item() == pytest.approx(0.7, abs=0.05)  # + beta1 I
    assert vo.diagonal().mean().item() == pytest.approx(-0.4, abs=0.05)  # - beta2 I
    # the rest is alpha Z with Z of N(0, 1/d) entries: Frobenius norm alpha sqrt(d)
    assert (qk - 0.7 * eye).norm().item() / d**0.5 == pytest.approx(0.7, rel=0.15)
    assert (vo + 0.4 * eye).norm().item() / d**0.5 == pytest.approx(0.4, rel=0.15)
    # without the noise term each product is exactly the multiple of the identity
    mimetic_init_(attn, qk=(0.0, 0.7), vo=(0.0, 0.4))
    qk, vo = _products(attn, d)
    torch.testing.assert_close(qk, 0.7 * eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(vo, -0.4 * eye, atol=1e-5, rtol=0)


def _smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, 16, 16) images whose neighbouring pixels and channels correlate, as photos do."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 20, 20, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1)  # (n, 3, 16, 16), blurred
    return x + 0.5 * x.mean(dim=1, keepdim=True)  # and the channels share a part


def test_whitening_init_gives_the_top_principal_directions_with_unit_variance():
    images = _smooth_images(200)
    conv = torch.nn.Conv2d(3, 32, 3, padding=1, bias=False)
    whiten_init_(conv, images, eps=0.0)
    w = conv.weight.detach()
    torch.testing.assert_close(w[16:], -w[:16])  # each filter twice, +v and -v
    # the patch covariance, summed here in another way: one 3 x 3 offset at a time
    patches = torch.stack(
        [images[:, :, i : i + 3, j : j + 3] for i in range(14) for j in range(14)], dim=1
    ).reshape(-1, 27)
    cov = (patches.T @ patches).double() / len(patches)
    eigenvalues = torch.linalg.eigvalsh(cov).flip(0)  # largest first
    # each filter's response: unit variance, uncorrelated with the others
    response = patches.double() @ w[:16].reshape(16, 27).T.double()
    second_moment = response.T @ response / len(response)
    torch.testing.assert_close(second_moment, torch.eye(16, dtype=torch.float64), atol=1e-4, rtol=0)
    # ... and along the 16 directions of largest variance, in order
    directions = torch.nn.functional.normalize(w[:16].reshape(16, 27).double(), dim=1)
    captured = (directions @ cov * directions).sum(dim=1)
    torch.testing.assert_close(captured, eigenvalues[:16], rtol=1e-4, atol=0)


def test_whitening_init_keeps_filters_beyond_the_patch_dimensions_and_rejects_bad_images():
    conv = torch.nn.Conv2d(1, 6, 1, bias=True)  # 1 dimension per patch: one +v, -v pair
    before = conv.weight.detach().clone()
    whiten_init_(conv, 3 * torch.randn(50, 1, 8, 8))
    assert conv.weight[0].item() == pytest.approx(-conv.weight[1].item())
    assert conv.weight[0].abs().item() == pytest.approx(1 / 3, rel=0.05)  # 1 / std
    torch.testing.assert_close(conv.weight[2:], before[2:])
    assert conv.bias[:2].tolist() == [0.0, 0.0]
    with pytest.raises(VitsamError, match="at least 1x1"):
        whiten_init_(conv, torch.randn(4, 3, 8, 8))  # 3 channels for a 1-channel conv
    with pytest.raises(VitsamError, match="--tokenizer conv"):
        ModelConfig(stem_init="whiten")  # the patch embedding has no conv stem


def test_whitening_init_is_set_from_the_runs_own_training_images(tmp_path):
    cfg = tiny_config(tmp_path, precision="fp32")
    cfg.model.tokenizer, cfg.model.stem_init = "conv", "whiten"
    trainer = training.Trainer(cfg)
    stem = trainer.model.patch_embed.stem
    expected = torch.nn.Conv2d(3, stem.out_channels, 3, padding=1, bias=False)
    images = trainer.data.train.images[:WHITEN_IMAGES]
    whiten_init_(expected, trainer.normalize(images))
    torch.testing.assert_close(stem.weight, expected.weight)
    history = trainer.run()
    assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"]


def test_validation_split_is_held_out_of_training_and_never_the_test_set(tmp_path):
    train, test = make_shapes(600, seed=1), make_shapes(200, seed=2)
    key = lambda d: {bytes(x.numpy()) for x in d.images}  # noqa: E731
    runs = []
    for seed in (0, 1):
        cfg = tiny_config(tmp_path, val_split=100, train_subset=0, seed=seed)
        data = training.prepare_data(cfg, (train, test))
        assert len(data.val) == 100 and len(data.train) == 500
        assert key(data.val) <= key(train)  # carved from the training set
        assert not key(data.val) & key(data.train)
        assert not key(data.val) & key(test)
        assert data.val.labels.bincount().tolist() == [100 // len(train.classes)] * len(
            train.classes
        )
        runs.append(key(data.val))
    assert runs[0] == runs[1]  # the same images whatever the run's seed


def test_alternating_flips_mirror_each_image_every_other_epoch(tmp_path):
    trainer = training.Trainer(tiny_config(tmp_path, alternate_flip=True))
    loader, idx = trainer.loader, torch.arange(len(trainer.data.train))
    loader.set_epoch(0)
    first = loader.flips(idx)
    loader.set_epoch(1)
    assert torch.equal(loader.flips(idx), ~first)
    loader.set_epoch(2)
    assert torch.equal(loader.flips(idx), first)
    assert 0.3 < first.float().mean().item() < 0.7  # starts from a random half


def test_translate_tta_weighs_the_shifted_views():
    def model(x):  # the top-left pixel as a single logit
        return x[:, 0, 0, :1]

    x = torch.arange(16.0).view(1, 1, 4, 4)
    # reflection padding: both shifted views start at pixel (1, 1)
    expected = 0.5 * x[0, 0, 0, 0] + 0.5 * x[0, 0, 1, 1]
    assert logits_of(model, x, tta_translate=True).item() == pytest.approx(expected.item())
    flat = torch.full((2, 3, 8, 8), 0.25)
    torch.testing.assert_close(
        logits_of(model, flat, tta_flip=True, tta_translate=True), logits_of(model, flat)
    )


@pytest.mark.models
def test_speedrun_levers_resume_exactly_and_report_the_test_set_once(tmp_path):
    over = dict(
        epochs=3,
        optimizer="muon",
        alternate_flip=True,
        tta_flip=True,
        tta_translate=True,
        label_smoothing=0.2,
        val_split=96,
    )
    cfg = tiny_config(tmp_path / "a", **over)
    cfg.model.attn_init = "mimetic"
    full = training.train(cfg)
    assert all("val_acc" in r for r in full)
    assert [("test_acc" in r) for r in full] == [False, False, True]

    def kill_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    cfg = tiny_config(tmp_path / "b", **over)
    cfg.model.attn_init = "mimetic"
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, on_epoch_end=kill_after_first)
    resumed = training.resume(cfg.out)
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(full)


def _time_to_accuracy():
    """benchmarks/time_to_accuracy.py, imported from its file (benchmarks/ is no package)."""
    path = ROOT / "benchmarks" / "time_to_accuracy.py"
    spec = importlib.util.spec_from_file_location("time_to_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headline_runs_are_summarised_over_their_seeds(tmp_path):
    bench = _time_to_accuracy()
    finals = {"speedrun-20min-seed0": 0.84, "speedrun-20min-seed1": 0.83,
              "speedrun-20min-seed2": 0.86, "fast-10min": 0.80}  # fmt: skip
    for name, acc in finals.items():
        run = tmp_path / name
        run.mkdir()
        rows = [{"epoch": 1, "test_acc": 0.7, "wall_seconds": 500.0, "epoch_seconds": 480.0,
                 "images_per_second": 400.0},
                {"epoch": 2, "test_acc": acc, "wall_seconds": 1190.0, "epoch_seconds": 480.0,
                 "images_per_second": 400.0}]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summaries = [bench.summarize(tmp_path / name, 0.8081) for name in finals]
    (group,) = bench.seed_groups(summaries)  # the run without a seed is not a group
    assert group["name"] == "speedrun-20min" and group["seeds"] == [0, 1, 2]
    final = group["final_test"]
    assert final["mean"] == pytest.approx((0.84 + 0.83 + 0.86) / 3)
    assert final["sd"] == pytest.approx(0.01527525, rel=1e-6)  # sample sd of 84, 83, 86
    assert (final["min"], final["max"]) == (0.83, 0.86)
    assert group["reached_s"] == pytest.approx(1190.0) and group["wall_s"] == 1190.0


def test_the_kept_headline_runs_read_and_name_their_command():
    bench = _time_to_accuracy()
    runs = sorted((ROOT / "docs" / "runs").iterdir())
    assert runs, "docs/runs holds the headline runs"
    for run in runs:
        config = from_dict(json.loads((run / "config.json").read_text()))
        assert config.out == f"runs/{run.name}"  # as the README's command writes it
        assert f"--out runs/{run.name}" in (run / "README.md").read_text()
        s = bench.summarize(run, 0.8081)
        assert s["final_test"] is not None and s["epochs"] == config.epochs
