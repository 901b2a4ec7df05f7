"""Peak memory of box-prompted segmentation on a large image: packed masks vs dense ones.

SAM 2.1 tiny is built from its default transformers config (random weights: memory and
time are the same as with trained ones) and saved to a temporary folder. Each mode runs
in its own process, so its peak resident memory (ru_maxrss) is its own:

  - packed: vitsam's path, `TextSegmenter.segment_boxes` then writing the overlay, label
    map and JSON (masks upsampled a few at a time and kept as COCO RLE);
  - dense: every full-size mask at once, as `MaskPredictor.predict` returns them (the
    way the pipeline held them before).

    python benchmarks/segment_memory.py [--size 6000x4000] [--boxes 100]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run(mode: str, model: str, size: tuple[int, int], n_boxes: int, out: str, queue) -> None:
    import torch
    from PIL import Image

    from vitsam.seg.masks import MaskPredictor
    from vitsam.seg.pipeline import TextSegmenter
    from vitsam.seg.results import save

    w, h = size
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    x1, y1 = rng.uniform(0, w * 0.7, n_boxes), rng.uniform(0, h * 0.7, n_boxes)
    boxes = np.stack([x1, y1, x1 + w * 0.3, y1 + h * 0.3], 1)
    seg = TextSegmenter(None, MaskPredictor.from_pretrained(model, torch.device("cpu")))
    before = peak_mb()
    t0 = time.perf_counter()
    if mode == "packed":
        result = seg.segment_boxes(image, boxes)
        save(result, image, Path(out), "big")
    else:
        seg.segmenter.set_image(image)
        masks, _ = seg.segmenter.predict(boxes)
        assert masks.shape == (n_boxes, h, w)
    queue.put((mode, before, peak_mb(), time.perf_counter() - t0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="6000x4000", help="WxH of the image")
    p.add_argument("--boxes", type=int, default=100)
    p.add_argument("--segmenter", help="a saved SAM / SAM 2 folder (default: build SAM 2.1 tiny)")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.segmenter
        if model is None:
            import torch
            from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

            model = str(Path(tmp) / "sam2.1-tiny")
            torch.manual_seed(0)
            Sam2Model(Sam2Config()).save_pretrained(model)
            Sam2Processor(Sam2ImageProcessor()).save_pretrained(model)
        ctx = mp.get_context("spawn")
        print(f"image {size[0]}x{size[1]}, {args.boxes} boxes, {Path(model).name}")
        print("| mode | resident before (MB) | peak (MB) | growth (MB) | seconds |")
        print("|---|---|---|---|---|")
        for mode in ("packed", "dense"):
            queue = ctx.Queue()
            proc = ctx.Process(target=run, args=(mode, model, size, args.boxes, tmp, queue))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                print(f"| {mode} | failed (exit {proc.exitcode}; out of memory?) | | | |")
                continue
            mode, before, peak, seconds = queue.get()
            print(f"| {mode} | {before:.0f} | {peak:.0f} | {peak - before:.0f} | {seconds:.1f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
