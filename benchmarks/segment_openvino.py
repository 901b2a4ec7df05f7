"""`vitsam segment DIR --runtime openvino` against eager PyTorch over a folder, on a CPU, fp32.

Full-size random-weight models (random weights time the same as trained ones): the
default set (Grounding DINO tiny: Swin-T + BERT-base; SAM 2.1 tiny) or, with `--models
fast`, the edge set (OmDet-Turbo + EdgeTAM), built as segment_speed.py builds them. A
folder of `--images` JPEG copies of one 1024x768 image, one phrase, up to 5 detections
an image, and three whole commands (`vitsam.cli.main`: loading, every image, every
output written: overlay, masks, JSON), each timed:

  1. `--runtime torch` (eager fp32);
  2. `--runtime openvino` with an empty graph cache: the conversions are in its time;
  3. `--runtime openvino` again: the cache loads, nothing is converted.

Printed: each command's seconds, its seconds per image (the command's time / images),
and the process's peak memory after it (ru_maxrss; the commands run in this order in one process,
so each peak includes what came before it). Then the agreement of the two runtimes on the
benchmark's image: the OpenVINO run's top box against the eager run's nearest box (bar
<= 1 px) and their masks' IoU (bar >= 0.98). The nearest box, not the eager top one:
random weights score many of Grounding DINO's queries at exactly 1.0, so a "top box" is
a tie broken by query order.

    pip install -e ".[openvino,edge]"
    python benchmarks/segment_openvino.py [--images 50] [--models fast]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_speed import build_edge_models, build_models, peak_rss_mb

from vitsam.seg.results import decode_rle


def run(args: list[str]) -> float:
    from vitsam.cli import main

    t0 = time.perf_counter()
    code = main(args)
    if code != 0:
        raise SystemExit(f"vitsam {' '.join(args)} exited with {code}")
    return time.perf_counter() - t0


def top(out: Path) -> list[dict]:
    return json.loads((out / "0000.json").read_text())["detections"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="1024x768")
    p.add_argument("--images", type=int, default=50, help="images in the folder")
    p.add_argument("--models", choices=("default", "fast"), default="default")
    p.add_argument("--detector", help="a saved detector folder (default: build full size)")
    p.add_argument("--segmenter", help="a saved segmenter folder (default: build full size)")
    args = p.parse_args()
    if bool(args.detector) != bool(args.segmenter):
        p.error("--detector and --segmenter go together")
    import openvino

    from vitsam.devices import cpu_description

    w, h = map(int, args.size.split("x"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, OpenVINO {openvino.__version__}, "
          f"{args.models} models, {args.images} images of {w}x{h}, one phrase, fp32\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build = build_edge_models if args.models == "fast" else build_models
        det, seg = (args.detector, args.segmenter) if args.detector else build(tmp / "models")
        folder = tmp / "images"
        folder.mkdir()
        for i in range(args.images):
            image.save(folder / f"{i:04d}.jpg", quality=95)
        os.environ["VITSAM_CACHE"] = str(tmp / "cache")
        common = [str(folder), "--prompt", "cat", "--detector", str(det), "--segmenter", str(seg),
                  "--device", "cpu", "--precision", "fp32", "--box-threshold", "0",
                  "--text-threshold", "0", "--max-detections", "5", "--quiet"]  # fmt: skip
        print("| command | s | s/image | peak memory MB |\n|---|---|---|---|")
        outs = {}
        for label, runtime in (("--runtime torch", "torch"),
                               ("--runtime openvino, empty cache (converts)", "openvino"),
                               ("--runtime openvino, cached graphs", "openvino")):  # fmt: skip
            out = tmp / f"out-{len(outs)}"
            seconds = run(["segment", *common, "--runtime", runtime, "--out", str(out)])
            print(f"| {label} | {seconds:.0f} | {seconds / args.images:.2f} | "
                  f"{peak_rss_mb():,.0f} |", flush=True)  # fmt: skip
            outs[label] = out
        eager, graphs = top(outs["--runtime torch"]), top(outs["--runtime openvino, cached graphs"])
    if not eager or not graphs:
        print("\nno detection to compare")
        return
    box = np.array(graphs[0]["box"])
    px = np.abs(np.array([d["box"] for d in eager]) - box).max(1)
    near = eager[int(px.argmin())]
    a, b = decode_rle(near["mask"]), decode_rle(graphs[0]["mask"])
    iou = (a & b).sum() / max(1, (a | b).sum())
    ok = "agrees" if px.min() <= 1 and iou >= 0.98 else "DOES NOT AGREE"
    print(f"\nagreement on the benchmark's image: top box within {px.min():.3f} px of eager's "
          f"nearest, mask IoU {iou:.4f}: {ok} (bar: <= 1 px, IoU >= 0.98)")  # fmt: skip


if __name__ == "__main__":
    main()
