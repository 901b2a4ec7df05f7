"""Typed results: detections and segmentations, their JSON (COCO RLE) and overlay picture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours (Tableau 10), cycled for more detections.
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


@dataclass
class Detection:
    label: str  # the prompt phrase this box answers
    score: float  # detector confidence in [0, 1]
    box: tuple[float, float, float, float]  # XYXY, pixels of the original image
    mask: np.ndarray | None = None  # (H, W) bool, once segmented
    mask_score: float = 0.0  # the segmenter's predicted IoU

    @property
    def area(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else 0

    def to_json(self) -> dict:
        """As in the documented JSON: rounded numbers, the mask as COCO compressed RLE."""
        return {
            "label": self.label,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 2) for v in self.box],
            "mask_score": round(float(self.mask_score), 4),
            "area": self.area,
            "mask": encode_rle(self.mask) if self.mask is not None else None,
        }


@dataclass
class Segmentation:
    image: str  # path or name of the input
    width: int
    height: int
    prompt: str
    detector: str
    segmenter: str
    detections: list[Detection] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, not in JSON

    def to_json(self) -> dict:
        """The documented JSON document; masks as COCO compressed RLE (pycocotools)."""
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "prompt": self.prompt,
            "detector": self.detector,
            "segmenter": self.segmenter,
            "detections": [d.to_json() for d in self.detections],
        }

    def label_map(self) -> np.ndarray:
        """(H, W) array: 0 background, i for detection i (later detections drawn on top)."""
        dtype = np.uint8 if len(self.detections) < 256 else np.uint16
        out = np.zeros((self.height, self.width), dtype=dtype)
        for i, d in enumerate(self.detections, start=1):
            if d.mask is not None:
                out[d.mask] = i
        return out

    def overlay(self, image: Image.Image, alpha: float = 0.45) -> Image.Image:
        return draw_overlay(image, self.detections, alpha)


def encode_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(
        bool
    )


def draw_overlay(
    image: Image.Image,
    detections: list[Detection],
    alpha: float = 0.45,
    ids: list[int] | None = None,
) -> Image.Image:
    """Each mask tinted in its own colour, its box outlined, and a label chip with the score.

    Chips are filled with the detection's colour and carry black or white text by the
    colour's brightness, so they read on dark and light images alike. `ids` (video track
    ids) pick each detection's colour, so an object keeps it across frames, and lead its chip.
    """
    keys = ids if ids is not None else range(len(detections))
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    for i, d in zip(keys, detections):
        if d.mask is not None:
            color = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
            base[d.mask] = base[d.mask] * (1 - alpha) + color * alpha
    out = Image.fromarray(base.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    side = min(out.size)
    width = max(2, side // 250)
    font = _font(max(12, side // 40))
    for i, d in zip(keys, detections):
        color = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = d.box
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        text = f"{d.label} {d.score:.2f}" if ids is None else f"{i} {d.label} {d.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, th // 4)
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1  # above the box if it fits
        tx = min(max(x1, 0), max(out.width - tw - 2 * pad, 0))
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=color)
        ink = (
            (0, 0, 0)
            if sum(c * w for c, w in zip(color, (0.299, 0.587, 0.114))) > 140
            else (255, 255, 255)
        )
        draw.text((tx + pad - left, ty + pad - top), text, fill=ink, font=font)
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


FORMATS = ("overlay", "masks", "json")


def save(
    result: Segmentation,
    image: Image.Image,
    out_dir: Path,
    name: str,
    formats: tuple[str, ...] = FORMATS,
    instance_masks: bool = False,
) -> list[Path]:
    """Write NAME.overlay.png, NAME.masks.png (or NAME.mask_I.png each) and NAME.json."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "overlay" in formats:
        written.append(out_dir / f"{name}.overlay.png")
        result.overlay(image).save(written[-1])
    if "masks" in formats and instance_masks:
        for i, d in enumerate(result.detections, start=1):
            written.append(out_dir / f"{name}.mask_{i}.png")
            Image.fromarray(d.mask.astype(np.uint8) * 255).save(written[-1])
    elif "masks" in formats:
        written.append(out_dir / f"{name}.masks.png")
        Image.fromarray(result.label_map()).save(written[-1])
    if "json" in formats:
        written.append(out_dir / f"{name}.json")
        written[-1].write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return written
