"""Scaling on one machine: labelling images/s with Ray (1 and 2 workers) against the local
engine, and ViT training images/s with 1 and 2 torchrun processes.

Each configuration gets the same cores, split evenly: a Ray worker asks for cores/workers
CPUs (Ray then gives it that many threads), a torchrun process runs with OMP_NUM_THREADS =
cores/processes. Prints markdown tables.

  - labelling: N synthetic photos through `label_with_ray` into a fresh folder. "wall" is
    the whole run (actor start-up and model loading included, a fixed cost per run);
    "steady" is images/s between the first and the last finished image.
  - training: `torchrun --nproc-per-node P -m vitsam train` on the synthetic shapes at the
    seed model's size (32x32, 4.25 M parameters, global batch 256); images/s of the last
    epoch, as metrics.jsonl reports it (all ranks' images over rank 0's epoch time).

    python benchmarks/scale.py --tiny          # tiny random models and ViT: checks it runs
    python benchmarks/scale.py                 # Grounding DINO (Swin-T) + SAM 2.1 tiny, seed ViT
    python benchmarks/scale.py --part ray --images 16 --size 1024x768
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1


def build_models(folder: Path, tiny: bool) -> tuple[str, str]:
    """Random-weight detector and segmenter folders: the tests' tiny ones or full size."""
    if tiny:
        sys.path.insert(0, str(ROOT))
        from tests import seg_models

        return (
            str(seg_models.grounding_dino(folder / "det")),
            str(seg_models.sam2(folder / "seg")),
        )
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from segment_speed import build_models as full_size

    det, seg = full_size(folder)
    return str(det), str(seg)


def photos(folder: Path, n: int, w: int, h: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:04d}.jpg", quality=90)
    return folder


def _steady(done: list[float]) -> float:
    """Images/s between the first and the last finished image (start-up and warm-up out)."""
    return (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else float("nan")


def bench_ray(args, tmp: Path) -> None:
    import ray

    from vitsam.seg.labelset import LabelSettings
    from vitsam.seg.ray_runner import label_with_ray

    w, h = map(int, args.size.split("x"))
    det, seg = build_models(tmp / "models", args.tiny)
    folder = photos(tmp / "photos", args.images, w, h)
    settings = LabelSettings(
        prompt="cat. dog", detector=det, segmenter=seg, box_threshold=0.0, max_detections=5
    )
    print(
        f"\nlabelling {args.images} images of {w}x{h}, {'tiny' if args.tiny else 'full-size'}"
        f" models, {CORES} cores\n"
    )
    print("| engine | workers | CPUs each | wall images/s | steady images/s |")
    print("|---|---|---|---|---|")
    import torch

    torch.set_num_threads(CORES)
    segmenter = settings.load("cpu", "fp32")
    t0, done = time.perf_counter(), []
    for f in sorted(folder.iterdir()):
        settings.segment(segmenter, Image.open(f).convert("RGB"))
        done.append(time.perf_counter())
    wall = args.images / (time.perf_counter() - t0)
    print(f"| local (in-process) | 1 | {CORES} | {wall:.3f} | {_steady(done):.3f} |", flush=True)
    del segmenter
    ray.init(num_cpus=CORES, include_dashboard=False)
    try:
        for workers in (1, 2):
            done: list[float] = []
            t0 = time.perf_counter()
            label_with_ray(
                [str(folder)],
                tmp / f"out{workers}",
                settings,
                workers=workers,
                device="cpu",
                precision="fp32",
                cpus_per_worker=CORES // workers,
                on_result=lambda *_, done=done: done.append(time.perf_counter()),
            )
            wall = args.images / (time.perf_counter() - t0)
            print(
                f"| Ray Data | {workers} | {CORES // workers} | {wall:.3f} | {_steady(done):.3f} |",
                flush=True,
            )
    finally:
        ray.shutdown()


def bench_train(args, tmp: Path) -> None:
    if args.tiny:
        size = [
            "--dim",
            "32",
            "--depth",
            "2",
            "--heads",
            "2",
            "--mlp-dim",
            "64",
            "--train-subset",
            "768",
            "--batch-size",
            "48",
        ]
    else:
        size = ["--train-subset", str(args.train_images), "--batch-size", "256"]  # seed model
    print(f"\nViT training, {'tiny' if args.tiny else 'seed-size'} model, {CORES} cores\n")
    print("| torchrun processes | threads each | images/s (last epoch) |")
    print("|---|---|---|")
    for procs in (1, 2):
        out = tmp / f"train{procs}"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(CORES // procs),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(procs),
            "-m",
            "vitsam",
            "train",
            "--preset",
            "seed",
            "--dataset",
            "shapes",
            "--test-subset",
            "200",
            "--epochs",
            "2",
            "--warmup-epochs",
            "0",
            "--loader",
            "device",
            "--device",
            args.device,
            "--quiet",
            "--out",
            str(out),
            *size,
        ]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
        print(f"| {procs} | {CORES // procs} | {rows[-1]['images_per_second']:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="tiny models: a quick check that it runs")
    p.add_argument("--part", choices=("ray", "train", "both"), default="both")
    p.add_argument("--images", type=int, default=None, help="photos to label (8; tiny 4)")
    p.add_argument("--size", default=None, help="photo size WxH (1024x768; tiny 160x120)")
    p.add_argument("--train-images", type=int, default=5120, help="training images per epoch")
    p.add_argument("--device", default="cpu", help="training device (cpu, or cuda for NCCL)")
    args = p.parse_args()
    args.images = args.images or (4 if args.tiny else 8)
    args.size = args.size or ("160x120" if args.tiny else "1024x768")
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("ray", "both"):
            bench_ray(args, Path(tmp))
        if args.part in ("train", "both"):
            bench_train(args, Path(tmp))


if __name__ == "__main__":
    main()
