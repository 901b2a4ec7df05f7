"""Measuring models and runs: FLOPs, attention maps, and sweeps over training configs."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import torch

from vitsam.errors import VitsamError
from vitsam.files import write_atomic
from vitsam.vit.config import (
    MODEL_FIELDS,
    TRAIN_FIELDS,
    ModelConfig,
    TrainConfig,
    from_dict,
    override,
    preset,
)
from vitsam.vit.model import ViT, count_parameters
from vitsam.vit.plots import evaluated_on

log = logging.getLogger("vitsam")


# --- FLOPs -----------------------------------------------------------------------------


def flops_per_image(cfg: ModelConfig) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), by torch's FlopCounterMode.

    Counts the matrix products and convolutions (tokenizer, attention, MLPs, head);
    elementwise ops, softmax and layer norms are left out, as is usual.
    """
    return flops_split(cfg)["total"]


def flops_split(cfg: ModelConfig) -> dict[str, int]:
    """Forward FLOPs for one image, as in `flops_per_image`, by part of the model:
    {"total", "tokenizer" (patch embedding or conv stages), "blocks" (the transformer
    blocks), "head"}. The blocks' share is what makes a conv-tokenized model a
    transformer (the speedrun's rule: at least half).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]):  # the model's init leaves a run's RNG alone
        model = ViT(cfg).eval()
    model.set_attention("plain")
    x = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    parts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    return {
        "total": int(counter.get_total_flops()),
        "tokenizer": int(parts.get("ViT.patch_embed", 0)),
        "blocks": int(parts.get("ViT.blocks", 0)),
        "head": int(parts.get("ViT.head", 0)),
    }


def describe_flops(cfg: ModelConfig) -> str:
    """One line: forward MFLOPs per image and the share of each part."""
    f = flops_split(cfg)
    share = {k: f[k] / max(f["total"], 1) for k in ("tokenizer", "blocks", "head")}
    return (
        f"{f['total'] / 1e6:.1f} MFLOPs per image forward: transformer blocks "
        f"{share['blocks']:.1%}, tokenizer {share['tokenizer']:.1%}, head {share['head']:.1%}"
    )


# --- attention maps --------------------------------------------------------------------


@torch.no_grad()
def attention_maps(model: ViT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-layer attention to the patches and attention rollout, each (B, L or 1, h, w).

    `layers`: for a class-token model, the class token's attention to each patch (heads
    averaged); for a mean-pooling model, the attention each patch receives averaged over
    all queries. `rollout`: Abnar & Zuidema's attention rollout (identity added for the
    residual path, rows renormalised, multiplied through the layers), read the same way.
    """
    model.eval()
    maps = [a.float().mean(1) for a in model.attention_maps(x)]  # each (B, T, T), rows sum to 1
    p = model.num_prefix
    side = model.cfg.image_size // model.cfg.patch_size

    def to_patches(a: torch.Tensor) -> torch.Tensor:  # (B, T, T) -> (B, side, side)
        v = a[:, 0, p:] if p else a.mean(1)
        v = v / v.sum(-1, keepdim=True)
        return v.reshape(-1, side, side)

    eye = torch.eye(maps[0].shape[-1], device=x.device)
    rollout = eye.expand_as(maps[0])
    for a in maps:
        a = 0.5 * a + 0.5 * eye
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    return {
        "layers": torch.stack([to_patches(a) for a in maps], 1),
        "rollout": to_patches(rollout).unsqueeze(1),
        "raw": torch.stack(maps, 1),  # (B, L, T, T)
    }


def draw_attention(
    image, maps: dict[str, torch.Tensor], index: int, path: Path, title: str = ""
) -> None:
    """The input, its rollout and each layer's map over it, in one row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers, rollout = maps["layers"][index], maps["rollout"][index, 0]
    panels = [("rollout", rollout)] + [(f"layer {i + 1}", m) for i, m in enumerate(layers)]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2 * (len(panels) + 1), 2.3))
    img = np.asarray(image.convert("RGB"))
    axes[0].imshow(img)
    axes[0].set_title(title or "input", fontsize=8)
    h, w = img.shape[:2]
    for ax, (name, m) in zip(axes[1:], panels):
        ax.imshow(img)
        ax.imshow(
            m.cpu().numpy(),
            cmap="inferno",
            alpha=0.6,
            extent=(0, w, h, 0),
            interpolation="bilinear",
        )
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- sweeps ----------------------------------------------------------------------------


@dataclasses.dataclass
class SweepSpec:
    preset: str = "quick"
    base: dict[str, Any] = dataclasses.field(default_factory=dict)  # fields set for every run
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # fields to vary
    # named bundles of fields, varied as one axis (e.g. augmentation sets)
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @staticmethod
    def load(path: str | Path) -> SweepSpec:
        path = Path(path)
        if not path.exists():
            raise VitsamError(f"{path}: no such sweep spec")
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        unknown = set(data) - {"preset", "base", "grid", "variants"}
        if unknown:
            raise VitsamError(
                f"{path}: unknown sweep keys {sorted(unknown)}: use preset, base, grid, variants"
            )
        return SweepSpec(**data)

    def runs(self) -> list[tuple[str, TrainConfig, dict[str, Any]]]:
        """(name, config, the varied values) for every point of the grid."""
        for key in [*self.base, *self.grid, *(k for v in self.variants.values() for k in v)]:
            if key not in MODEL_FIELDS | TRAIN_FIELDS:
                raise VitsamError(
                    f"sweep field {key!r} is not a config field (see vitsam train --help)"
                )
        axes = [[(k, v) for v in vs] for k, vs in self.grid.items()]
        if self.variants:
            axes.append([("variant", name) for name in self.variants])
        out = []
        for point in itertools.product(*axes) if axes else [()]:
            values = dict(point)
            fields = {**self.base, **{k: v for k, v in values.items() if k != "variant"}}
            fields.update(self.variants.get(values.get("variant"), {}))
            cfg = override(preset(self.preset), fields)
            name = "-".join(f"{k}={v}" for k, v in values.items()).replace("/", "_") or "base"
            out.append((name, cfg, values))
        return out


def run_state(run_dir: Path, epochs: int) -> str:
    """'done', 'partial' (resumable) or 'new'.

    `epochs` is the spec's; a run that wrote its own length (a --time-budget run fixes its
    epochs on the machine at hand, a --max-steps run from its steps, and each records them
    in config.json) is done at that length.
    """
    metrics = run_dir / "metrics.jsonl"
    if not (run_dir / "last.pt").exists():
        return "new"
    saved = run_dir / "config.json"
    if saved.exists():
        recorded = json.loads(saved.read_text())
        if recorded.get("time_budget") or recorded.get("max_steps"):
            epochs = recorded["epochs"]
    done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    return "done" if done >= epochs else "partial"


def sweep(spec: SweepSpec, out: str | Path, progress: bool = False) -> list[dict[str, Any]]:
    """Train every run of the grid into OUT/NAME (skipping finished ones, resuming partial
    ones), then write OUT/results.csv and OUT/report.md. Returns the result rows."""
    from vitsam.vit import train as training

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = spec.runs()
    write_atomic(out / "spec.json", json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    for i, (name, cfg, _) in enumerate(runs, 1):
        run_dir = out / name
        cfg.out = str(run_dir)
        state = run_state(run_dir, cfg.epochs)
        log.info("sweep run %d/%d %s: %s", i, len(runs), name, state)
        if state == "partial":
            training.resume(run_dir, progress=progress)
        elif state == "new":
            training.train(cfg, progress=progress)
    rows = [summarize(out / name, values) for name, _, values in runs]
    write_results(rows, out)
    return rows


def summarize(run_dir: Path, values: dict[str, Any]) -> dict[str, Any]:
    """One result row of a finished run: its varied `values`, size, speed and accuracy.

    `best_acc` and `final_acc` are on what its epochs were evaluated on (`evaluated_on`:
    "val" for a run with --val-split, whose recipe choices are judged there, else "test");
    `final_test_acc` is the test set's after the last epoch, which every run reports.
    """
    cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    on = evaluated_on(history)
    key = f"{on}_acc"
    return {
        "run": run_dir.name,
        **values,
        "params": count_parameters(ViT(cfg.model)),
        "flops_per_image": flops_per_image(cfg.model),
        "images_per_second": round(sum(r["images_per_second"] for r in history) / len(history), 1),
        "wall_seconds": round(sum(r["epoch_seconds"] for r in history), 3),
        "evaluated_on": on,
        "best_acc": max(r[key] for r in history),
        "final_acc": history[-1][key],
        "final_test_acc": history[-1]["test_acc"],
        "epochs": len(history),
        "history": history,
    }


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    columns = [k for k in rows[0] if k != "history"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows([{k: r[k] for k in columns} for r in rows])
    measured = ("run", "params", "flops_per_image", "images_per_second", "wall_seconds",
                "evaluated_on", "best_acc", "final_acc", "final_test_acc", "epochs")  # fmt: skip
    axes = [k for k in columns if k not in measured]
    plot_sweep(rows, axes, out)
    lines = ["# Sweep report", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [f"{r[k]:,}" if k in ("params", "flops_per_image") else str(r[k]) for k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![accuracy against FLOPs and wall time](accuracy.png)", ""]
    lines += [f"![learning curves by {a}](curves_{a}.png)" for a in axes]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


def plot_sweep(rows: list[dict[str, Any]], axes: list[str], out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on = " / ".join(sorted({"validation" if r["evaluated_on"] == "val" else "test" for r in rows}))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        a.scatter(r["flops_per_image"] / 1e6, r["best_acc"])
        a.annotate(r["run"], (r["flops_per_image"] / 1e6, r["best_acc"]), fontsize=7)
        b.scatter(r["wall_seconds"], r["best_acc"])
        b.annotate(r["run"], (r["wall_seconds"], r["best_acc"]), fontsize=7)
    a.set(xlabel="forward MFLOPs per image", ylabel=f"best {on} accuracy", xscale="log")
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
    b.set(xlabel="training wall time (s)", ylabel=f"best {on} accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    for axis in axes:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ep = [h["epoch"] for h in r["history"]]
            acc = [h[f"{r['evaluated_on']}_acc"] for h in r["history"]]
            ax.plot(ep, acc, label=f"{axis}={r[axis]} ({r['run']})")
        ax.set(xlabel="epoch", ylabel=f"{on} accuracy", title=f"learning curves by {axis}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / f"curves_{axis}.png", dpi=100)
        plt.close(fig)


def parse_grid_flags(items: list[str]) -> dict[str, list[Any]]:
    """['patch_size=2,4,8', 'dim=128,256'] -> {'patch_size': [2, 4, 8], 'dim': [128, 256]}."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise VitsamError(f"--grid takes FIELD=V1,V2,...; got {item!r}")
        key, values = item.split("=", 1)
        grid[key.strip().replace("-", "_")] = [_literal(v) for v in values.split(",")]
    return grid


def _literal(text: str) -> Any:
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
