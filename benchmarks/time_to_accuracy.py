"""Test accuracy against wall-clock time: when each run reached a target, and a plot.

Reads RUN_DIR/metrics.jsonl of finished (or running) training runs and prints one markdown
row per run: epochs, wall minutes of the whole run (data loading, training and every
evaluation; from each epoch's `wall_seconds`), the epoch and wall minute at which test
accuracy first reached the target, and the final and best test accuracy. Runs with a
validation split (`--val-split`) are judged per epoch on it and report the test set once,
at the end. `--plot` draws accuracy against wall minutes for all runs on one figure;
`--anchors` adds the published CIFAR-10 speedrun points (each labelled with its hardware)
on a log time axis. Runs named NAME-seedN are then summarised together, one row per NAME:
the mean, sample standard deviation and range of their final accuracies over the seeds
(speedrun records are reported as means over runs, as airbench does).

With `--train`, it first trains each named preset with the same `--time-budget` on the
same dataset, one after the other (never two at once: they would slow each other), and
records the command's own wall time beside the run's.

    python benchmarks/time_to_accuracy.py runs/fast runs/seed --plot docs/time-to-accuracy.png
    python benchmarks/time_to_accuracy.py --train fast seed best --budget 60 \\
        --dataset ../shared/data/cifar10-jpeg.tar.gz --out runs/tta --plot docs/time-to-accuracy.png
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitsam.devices import cpu_description  # noqa: E402
from vitsam.vit.plots import evaluated_on  # noqa: E402


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{run_dir}: no metrics.jsonl (is it a vitsam run directory?)")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if not rows:
        raise SystemExit(f"{path} has no epochs yet")
    wall = 0.0
    for r in rows:  # runs from before `wall_seconds`: training + evaluation time only
        wall += r["epoch_seconds"] + r.get("eval_seconds", 0.0)
        r.setdefault("wall_seconds", wall)
    return rows


# Published CIFAR-10 points to draw beside ours: (label, seconds, test accuracy).
ANCHORS = [
    ("airbench94, A100", 2.59, 0.9401),  # Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"
    ("hlb-CIFAR10, A100", 6.3, 0.94),  # tysam-code/hlb-CIFAR10 README
    ("airbench96, A100", 27.0, 0.96),
    ("CCT, 12-core desktop CPU", 30 * 60, 0.80),  # Hassani et al. 2021: "80% in under 30 min"
]


def per_epoch_key(rows: list[dict]) -> str:
    """What each epoch was evaluated on: "val_acc" for runs with a validation split."""
    return f"{evaluated_on(rows)}_acc"


def summarize(run_dir: Path, target: float) -> dict:
    rows = read_rows(run_dir)
    key = per_epoch_key(rows)
    reached = next(((r["epoch"], r["wall_seconds"]) for r in rows if r[key] >= target), None)
    return {
        "run": run_dir.name,
        "on": key.removesuffix("_acc"),
        "epochs": rows[-1]["epoch"],
        "wall_s": rows[-1]["wall_seconds"],
        "eval_s": sum(r.get("eval_seconds", 0.0) for r in rows),
        "reached": reached,
        "final": rows[-1][key],
        "final_test": rows[-1].get("test_acc"),
        "best": max(r[key] for r in rows),
        "images_per_second": sorted(r["images_per_second"] for r in rows)[len(rows) // 2],
    }


def seed_groups(summaries: list[dict]) -> list[dict]:
    """Runs named NAME-seedN (or NAME_seedN) grouped by NAME, in first-seen order.

    Each group: its `name`, `seeds` (N of each run), the `final` and `final_test`
    accuracies as `mean`, `sd` (sample standard deviation, 0 for one seed) and `min`/`max`,
    `wall_s` mean and `reached_s` (the mean minute of reaching the target, None unless
    every seed reached it). Runs without a seed suffix are left out.
    """
    groups: dict[str, list[tuple[int, dict]]] = {}
    for s in summaries:
        m = re.fullmatch(r"(.+?)[-_]seed(\d+)", s["run"])
        if m:
            groups.setdefault(m[1], []).append((int(m[2]), s))

    def spread(values: list[float]) -> dict:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}

    out = []
    for name, members in groups.items():
        runs = [s for _, s in members]
        tests = [s["final_test"] for s in runs if s["final_test"] is not None]
        reached = [s["reached"][1] for s in runs if s["reached"]]
        out.append({
            "name": name,
            "seeds": [n for n, _ in members],
            "final": spread([s["final"] for s in runs]),
            "final_test": spread(tests) if len(tests) == len(runs) else None,
            "wall_s": statistics.fmean(s["wall_s"] for s in runs),
            "reached_s": statistics.fmean(reached) if len(reached) == len(runs) else None,
        })  # fmt: skip
    return out


def plot(runs: list[Path], target: float, path: Path, title: str, anchors: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for run in runs:
        rows = read_rows(run)
        key = per_epoch_key(rows)
        minutes = [r["wall_seconds"] / 60 for r in rows]
        label = run.name if key == "test_acc" else f"{run.name} (validation split)"
        (line,) = ax.plot(minutes, [r[key] for r in rows], marker=".", label=label)
        if key != "test_acc" and "test_acc" in rows[-1]:  # the test set, once, at the end
            ax.plot(minutes[-1], rows[-1]["test_acc"], marker="*", ms=10, color=line.get_color())
    if anchors:
        for i, (label, seconds, acc) in enumerate(ANCHORS):
            ax.plot(seconds / 60, acc, marker="D", color="black", ms=5)
            ax.annotate(label, (seconds / 60, acc), textcoords="offset points",
                        xytext=(5, -10 if i % 2 == 0 else 5), fontsize=7)  # fmt: skip
        ax.set_xscale("log")
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"{target:.2%}")
    ax.set(xlabel="wall-clock minutes (data loading, training, evaluation)",
           ylabel="test accuracy", title=title)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)  # beside the curves
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_presets(presets: list[str], budget: float, dataset: str, out: Path, extra: list[str]):
    runs = []
    for name in presets:
        run = out / name
        cmd = [sys.executable, "-m", "vitsam", "train", "--preset", name, "--dataset", dataset,
               "--time-budget", str(budget), "--out", str(run), "--quiet", *extra]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"{name}: the command took {(time.perf_counter() - t) / 60:.1f} min", flush=True)
        runs.append(run)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="*", type=Path, help="run directories to summarise")
    p.add_argument("--target", type=float, default=0.8081, help="test accuracy, 0-1")
    p.add_argument("--plot", type=Path, help="write accuracy against wall minutes here (.png)")
    p.add_argument("--anchors", action="store_true", help="draw published speedrun points too")
    p.add_argument("--train", nargs="+", metavar="PRESET", help="train these presets first")
    p.add_argument("--budget", type=float, default=60.0, help="--time-budget of each, minutes")
    p.add_argument("--dataset", default="cifar10", help="dataset name or path, for --train")
    p.add_argument("--out", type=Path, default=Path("runs/time-to-accuracy"))
    p.add_argument("--extra", default="", help="more `vitsam train` flags, for --train")
    args = p.parse_args()
    cpu = cpu_description()
    print(f"CPU: {cpu}")
    runs = list(args.runs)
    if args.train:
        runs += train_presets(args.train, args.budget, args.dataset, args.out, args.extra.split())
    if not runs:
        p.error("give run directories, or --train PRESET ...")
    print(
        f"\n| run | per epoch on | epochs | wall min | of which evaluation min "
        f"| reached {args.target:.2%} at | final | best | final test | median train images/s |"
        "\n|---|---|---|---|---|---|---|---|---|---|"
    )
    summaries = [summarize(run, args.target) for run in runs]
    for s in summaries:
        reached = (
            f"epoch {s['reached'][0]}, {s['reached'][1] / 60:.1f} min"
            if s["reached"]
            else "not reached"
        )
        test = "-" if s["final_test"] is None else f"{s['final_test']:.2%}"
        print(
            f"| {s['run']} | {s['on']} | {s['epochs']} | {s['wall_s'] / 60:.1f} "
            f"| {s['eval_s'] / 60:.1f} | {reached} | {s['final']:.2%} | {s['best']:.2%} "
            f"| {test} | {s['images_per_second']:.0f} |"
        )
    groups = seed_groups(summaries)
    if groups:
        print(
            f"\n| runs | seeds | final: mean ± sd | range | reached {args.target:.2%} at (mean) "
            "| wall min (mean) |\n|---|---|---|---|---|---|"
        )
    for g in groups:
        f = g["final_test"] or g["final"]  # the test set where each run reported it
        reached = "-" if g["reached_s"] is None else f"{g['reached_s'] / 60:.1f} min"
        print(
            f"| {g['name']} | {', '.join(map(str, g['seeds']))} "
            f"| {f['mean']:.2%} ± {f['sd']:.2%} | {f['min']:.2%}-{f['max']:.2%} "
            f"| {reached} | {g['wall_s'] / 60:.1f} |"
        )
    if args.plot:
        title = "CIFAR-10 accuracy against time"
        if not args.runs:  # all trained here, by --train; given runs may come from elsewhere
            title += f"\n{cpu}"
        plot(runs, args.target, args.plot, title, anchors=args.anchors)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
