"""SAM 3 and the edge set against a detector + SAM 2.1, per image and per video frame, and
memory on a long clip.

Random weights time the same as trained ones, so every model is built from its default
transformers config (SAM 3: facebook/sam3's, 840 M parameters with the tracker; Grounding
DINO tiny: Swin-T + BERT-base; SAM 2.1 tiny with its video memory), saved to a temporary
folder and loaded through vitsam's own loading path; the edge set (`--models fast`:
OmDet-Turbo + EdgeTAM, as segment_speed.py builds them) beside them. Measured:

  - per image: TextSegmenter with segmenter sam3 (no detector) against Grounding DINO +
    SAM 2.1 tiny and against the edge set, the same image and phrases, best of --repeats;
  - per video frame: VideoSegmenter over the same synthetic clip (squares moving over
    noise), SAM 3's video model against Grounding DINO + SAM 2.1 video and OmDet-Turbo +
    EdgeTAM video (key frames every --redetect frames), seconds a frame after the first;
  - memory on a long clip: the process's resident memory (VmRSS) before the clip and its
    peak over the clip, for both trackers, and for the detector + SAM 2 tracker once more
    with the session trimming switched off (transformers' own behaviour) to show the growth.

    python benchmarks/sam3_speed.py                   # full size: an hour or more on a CPU
    python benchmarks/sam3_speed.py --tiny            # the test models: checks the script runs
    python benchmarks/sam3_speed.py --part long --long-frames 30   # the memory table alone
    python benchmarks/sam3_speed.py --part speed --sets default,fast   # edge set against default
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHRASES = "cat. remote control"


def build_full(folder: Path) -> dict[str, str]:
    """Default-config models, saved as their hub folders are."""
    from transformers import (
        CLIPTokenizer,
        Sam2ImageProcessor,
        Sam2VideoConfig,
        Sam2VideoModel,
        Sam2VideoProcessor,
        Sam3ImageProcessor,
        Sam3VideoConfig,
        Sam3VideoModel,
        Sam3VideoProcessor,
    )
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    sys.path.insert(0, str(Path(__file__).parent))
    from segment_speed import build_edge_models, build_models  # real-shaped vocabularies

    torch.manual_seed(0)
    detector, _ = build_models(folder)
    omdet, edgetam = build_edge_models(folder / "edge")  # --models fast at full size
    sam2 = folder / "sam2.1-tiny-video"
    Sam2VideoModel(Sam2VideoConfig()).save_pretrained(sam2)
    Sam2VideoProcessor(Sam2ImageProcessor(), Sam2VideoVideoProcessor()).save_pretrained(sam2)
    sam3 = folder / "sam3"
    Sam3VideoModel(Sam3VideoConfig()).save_pretrained(sam3)
    Sam3VideoProcessor(
        Sam3ImageProcessor(), Sam2VideoVideoProcessor(size={"height": 1008, "width": 1008}),
        _clip_tokenizer(folder, CLIPTokenizer),
    ).save_pretrained(sam3)  # fmt: skip
    return {"detector": str(detector), "sam2": str(sam2), "sam3": str(sam3),
            "omdet": str(omdet), "edgetam": str(edgetam)}  # fmt: skip


def build_tiny(folder: Path) -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    from tests import seg_models

    return {
        "detector": str(seg_models.grounding_dino(folder / "gd")),
        "sam2": str(seg_models.sam2_video(folder / "sam2")),
        "sam3": str(seg_models.sam3(folder / "sam3")),
        "omdet": str(seg_models.omdet_turbo(folder / "omdet")),
        "edgetam": str(seg_models.edgetam_video(folder / "edgetam")),
    }


def _clip_tokenizer(folder: Path, cls):
    """A CLIP BPE vocabulary of letters (ids stay inside SAM 3's 49408-token embedding)."""
    letters = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for c in letters:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "clip_vocab.json").write_text(json.dumps(vocab))
    (folder / "clip_merges.txt").write_text("#version: 0.2\n")
    return cls(str(folder / "clip_vocab.json"), str(folder / "clip_merges.txt"), pad_token="!")


def write_clip(path: Path, frames: int, width: int, height: int, fps: int = 24) -> Path:
    """Two squares moving over noise, written with PyAV (H.264)."""
    import av

    rng = np.random.default_rng(0)
    noise = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    side = height // 5
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            img = noise.copy()
            x = (t * 8) % (width - side)
            img[height // 4 : height // 4 + side, x : x + side] = (230, 30, 30)
            img[height // 2 : height // 2 + side, width - side - x : width - x] = (30, 30, 230)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def per_image(models: dict, image: Image.Image, repeats: int, sets: list[str]) -> list[str]:
    from vitsam.seg import TextSegmenter

    rows = []
    for label, det, seg in _chosen(sets, ("sam3", None, models["sam3"]),
                                   ("Grounding DINO + SAM 2.1", models["detector"], models["sam2"]),
                                   ("OmDet-Turbo + EdgeTAM (--models fast)", models["omdet"],
                                    models["edgetam"])):  # fmt: skip
        ts = TextSegmenter.from_pretrained(det, seg, device="cpu", max_detections=5,
                                           box_threshold=0.0, text_threshold=0.0)  # fmt: skip
        best = min(_timed(lambda ts=ts: ts.segment(image, PHRASES)) for _ in range(repeats))
        rows.append(f"| {label} | {image.width}x{image.height} | {best:.2f} |")
        del ts
    return rows


def per_frame(models: dict, clip: Path, frames: int, redetect: int, sets: list[str]) -> list[str]:
    from vitsam.seg.video import VideoSegmenter

    rows = []
    for label, det, seg in _chosen(sets, ("sam3 video", None, models["sam3"]),
                                   (f"Grounding DINO + SAM 2.1 video (redetect {redetect})",
                                    models["detector"], models["sam2"]),
                                   (f"OmDet-Turbo + EdgeTAM video (--models fast, redetect "
                                    f"{redetect})", models["omdet"], models["edgetam"])):  # fmt: skip
        video = VideoSegmenter.from_pretrained(det, seg, device="cpu", redetect=redetect,
                                               max_detections=5)  # fmt: skip
        stamps = [time.perf_counter()]
        for _ in video.track(clip, PHRASES, max_frames=frames):
            stamps.append(time.perf_counter())
        steps = np.diff(stamps)
        rows.append(f"| {label} | {steps[0]:.2f} | {steps[1:].mean():.2f} | {len(steps)} |")
        del video
    return rows


def long_clip(models: dict, clip: Path, frames: int, redetect: int) -> list[str]:
    from vitsam.seg import tracking
    from vitsam.seg.video import VideoSegmenter

    rows, trim = [], tracking.trim_session
    runs = (("sam3 video", None, models["sam3"], trim),
            ("Grounding DINO + SAM 2.1 video", models["detector"], models["sam2"], trim),
            ("Grounding DINO + SAM 2.1 video, untrimmed session", models["detector"],
             models["sam2"], lambda *a: None))  # fmt: skip
    for label, det, seg, trimmer in runs:
        video = VideoSegmenter.from_pretrained(det, seg, device="cpu", redetect=redetect,
                                               max_detections=5)  # fmt: skip
        tracking.trim_session = trimmer
        before = peak = rss_mb()
        trace = []
        for i, _ in enumerate(video.track(clip, PHRASES, max_frames=frames)):
            peak = max(peak, rss_mb())
            if (i + 1) % max(1, frames // 4) == 0:
                trace.append(f"{rss_mb() - before:+.0f}")
        tracking.trim_session = trim
        rows.append(f"| {label} | {frames} | {before:,.0f} | {peak:,.0f} | {' '.join(trace)} |")
        del video
    return rows


def _chosen(sets: list[str], sam3, default, fast) -> list:
    """The rows of the model sets named in --sets, in the table's order."""
    return [row for name, row in (("sam3", sam3), ("default", default), ("fast", fast))
            if name in sets]  # fmt: skip


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="the tests' tiny models (checks the script)")
    p.add_argument("--size", default="1024x768", help="image and video frame size")
    p.add_argument("--repeats", type=int, default=2, help="per image: best of this many")
    p.add_argument("--frames", type=int, default=8, help="per frame: frames timed")
    p.add_argument("--long-frames", type=int, default=60, help="memory: the long clip's length")
    p.add_argument("--redetect", type=int, default=20)
    p.add_argument("--sets", default="sam3,default,fast",
                   help="the model sets timed per image and per frame (comma-separated)")
    p.add_argument("--part", choices=("speed", "long", "both"), default="both",
                   help="speed: per image and per frame; long: the long clip's memory")  # fmt: skip
    args = p.parse_args()
    w, h = map(int, args.size.split("x"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'tiny test models' if args.tiny else 'full-size models'}, random weights\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_tiny(folder) if args.tiny else build_full(folder)
        clip = write_clip(folder / "clip.mp4", max(args.frames, args.long_frames), w, h)
        if args.part in ("speed", "both"):
            print("| per image | size | best s |\n|---|---|---|")
            sets = args.sets.split(",")
            print("\n".join(per_image(models, image, args.repeats, sets)), flush=True)
            print(
                "\n| per video frame | first frame s | then s/frame | frames |\n|---|---|---|---|"
            )
            print("\n".join(per_frame(models, clip, args.frames, args.redetect, sets)), flush=True)
        if args.part == "speed":
            return
        print(
            "\n| long clip | frames | RSS before MB | peak RSS MB | RSS growth at each quarter MB |"
        )
        print("|---|---|---|---|---|")
        print("\n".join(long_clip(models, clip, args.long_frames, args.redetect)), flush=True)


if __name__ == "__main__":
    main()
