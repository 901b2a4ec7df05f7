"""Test accuracy against wall-clock time: when each run reached a target, and a plot.

Reads RUN_DIR/metrics.jsonl of finished (or running) training runs and prints one markdown
row per run: epochs, wall minutes of the whole run (data loading, training and every
evaluation; from each epoch's `wall_seconds`), the epoch and wall minute at which test
accuracy first reached the target, and the final and best test accuracy. `--plot` draws
test accuracy against wall minutes for all runs on one figure.

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
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitsam.devices import cpu_description  # noqa: E402


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


def summarize(run_dir: Path, target: float) -> dict:
    rows = read_rows(run_dir)
    reached = next(((r["epoch"], r["wall_seconds"]) for r in rows if r["test_acc"] >= target), None)
    return {
        "run": run_dir.name,
        "epochs": rows[-1]["epoch"],
        "wall_s": rows[-1]["wall_seconds"],
        "eval_s": sum(r.get("eval_seconds", 0.0) for r in rows),
        "reached": reached,
        "final": rows[-1]["test_acc"],
        "best": max(r["test_acc"] for r in rows),
        "images_per_second": sorted(r["images_per_second"] for r in rows)[len(rows) // 2],
    }


def plot(runs: list[Path], target: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        rows = read_rows(run)
        minutes = [0.0] + [r["wall_seconds"] / 60 for r in rows]
        ax.plot(minutes, [0.1] + [r["test_acc"] for r in rows], marker=".", label=run.name)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"{target:.2%}")
    ax.set(xlabel="wall-clock minutes (data loading, training, evaluation)",
           ylabel="test accuracy", title=title)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
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
        f"\n| run | epochs | wall min | of which evaluation min | reached {args.target:.2%} at "
        "| final | best | median train images/s |\n|---|---|---|---|---|---|---|---|"
    )
    for run in runs:
        s = summarize(run, args.target)
        reached = (
            f"epoch {s['reached'][0]}, {s['reached'][1] / 60:.1f} min"
            if s["reached"]
            else "not reached"
        )
        print(
            f"| {s['run']} | {s['epochs']} | {s['wall_s'] / 60:.1f} | {s['eval_s'] / 60:.1f} "
            f"| {reached} | {s['final']:.2%} | {s['best']:.2%} | {s['images_per_second']:.0f} |"
        )
    if args.plot:
        plot(runs, args.target, args.plot, f"CIFAR-10 test accuracy against time\n{cpu}")
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
