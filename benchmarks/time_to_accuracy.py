"""Time to a target test accuracy, and final accuracy, of finished training runs.

Reads RUN_DIR/metrics.jsonl of each run and prints one markdown row per run: epochs,
training seconds (the epochs' own time, evaluation excluded), evaluation seconds, the
epoch and training seconds at which test accuracy first reached the target, and the
final and best test accuracy.

    python benchmarks/time_to_accuracy.py runs/seed runs/best            # target 80.81%
    python benchmarks/time_to_accuracy.py runs/* --target 0.9
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def summarize(run_dir: Path, target: float) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if not rows:
        raise SystemExit(f"{run_dir}/metrics.jsonl has no epochs yet")
    train_s = eval_s = 0.0
    reached = None
    for r in rows:
        train_s += r["epoch_seconds"]
        eval_s += r.get("eval_seconds", 0.0)
        if reached is None and r["test_acc"] >= target:
            reached = (r["epoch"], train_s)
    return {
        "run": run_dir.name,
        "epochs": rows[-1]["epoch"],
        "train_s": train_s,
        "eval_s": eval_s,
        "reached": reached,
        "final": rows[-1]["test_acc"],
        "best": max(r["test_acc"] for r in rows),
        "images_per_second": sorted(r["images_per_second"] for r in rows)[len(rows) // 2],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--target", type=float, default=0.8081, help="test accuracy, 0-1")
    args = p.parse_args()
    print(
        f"| run | epochs | training s | evaluation s | reached {args.target:.2%} at "
        "| final | best | median images/s |\n|---|---|---|---|---|---|---|---|"
    )
    for run in args.runs:
        s = summarize(run, args.target)
        reached = (
            f"epoch {s['reached'][0]}, {s['reached'][1]:.1f} s" if s["reached"] else "not reached"
        )
        print(
            f"| {s['run']} | {s['epochs']} | {s['train_s']:.1f} | {s['eval_s']:.1f} | {reached} "
            f"| {s['final']:.2%} | {s['best']:.2%} | {s['images_per_second']:.0f} |"
        )


if __name__ == "__main__":
    main()
