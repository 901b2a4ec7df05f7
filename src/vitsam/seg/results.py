"""Typed results: detections and segmentations, their JSON (COCO RLE) and overlay picture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitsam.errors import VitsamError
from vitsam.images import as_image

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
    """One box and, once segmented, its mask.

    The mask is kept packed as COCO RLE (`rle`, pycocotools) and decoded on each read of
    `mask`, so a result of many detections on a large image holds no full-size masks:
    assign an (H, W) bool array to `mask` (or pass it to the constructor) to store one.
    """

    label: str  # the prompt phrase this box answers
    score: float  # detector confidence in [0, 1]
    box: tuple[float, float, float, float]  # XYXY, pixels of the original image
    rle: dict | None = field(default=None, init=False, repr=False, compare=False)  # packed mask
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)  # see below
    mask_score: float = 0.0  # the segmenter's predicted IoU

    @property
    def area(self) -> int:
        """Mask pixels (0 before segmentation), counted from the RLE without decoding."""
        from pycocotools import mask as mask_utils

        return int(mask_utils.area(self.rle)) if self.rle is not None else 0

    def to_json(self) -> dict:
        """As in the documented JSON: rounded numbers, the mask as COCO compressed RLE."""
        return {
            "label": self.label,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 2) for v in self.box],
            "mask_score": round(float(self.mask_score), 4),
            "area": self.area,
            "mask": _rle_json(self.rle) if self.rle is not None else None,
        }


def _get_mask(d: Detection) -> np.ndarray | None:
    """(H, W) bool, decoded from `rle`; None before segmentation."""
    from pycocotools import mask as mask_utils

    return None if d.rle is None else mask_utils.decode(d.rle).astype(bool)


def _set_mask(d: Detection, mask: np.ndarray | None) -> None:
    from pycocotools import mask as mask_utils

    d.rle = None if mask is None else mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))


# A property over the dataclass field: the generated __init__ (rle first, then mask) and
# every `d.mask = m` go through _set_mask, so callers keep the plain `mask` attribute.
Detection.mask = property(_get_mask, _set_mask)  # type: ignore[assignment]


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
    # what the request asked beyond the prompt text (request.Prompt.to_json: a class map,
    # per-class box thresholds) and, per negative phrase, how many detections it removed
    request: dict = field(default_factory=dict)
    negatives: list[dict] = field(default_factory=list)  # [{"phrase": ..., "removed": N}]

    def to_json(self) -> dict:
        """The documented JSON document; masks as COCO compressed RLE (pycocotools)."""
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "prompt": self.prompt,
            "detector": self.detector,
            "segmenter": self.segmenter,
            **self.request,
            **({"negatives": self.negatives} if self.negatives else {}),
            "detections": [d.to_json() for d in self.detections],
        }

    def label_map(self) -> np.ndarray:
        """(H, W) array: 0 background, i for detection i (later detections drawn on top)."""
        dtype = np.uint8 if len(self.detections) < 256 else np.uint16
        out = np.zeros((self.height, self.width), dtype=dtype)
        for i, d in enumerate(self.detections, start=1):
            if d.rle is not None:
                out[d.mask] = i  # one mask decoded at a time
        return out

    def overlay(self, image, alpha: float = 0.45) -> Image.Image:
        """The result drawn over `image` (path, PIL image or array, read upright as
        `segment` reads it). Raises VitsamError when its size is not the result's."""
        picture, _ = as_image(image)
        if picture.size != (self.width, self.height):
            raise VitsamError(
                f"overlay: the image is {picture.width}x{picture.height} but the result is for "
                f"{self.width}x{self.height}: draw it over the image it was made from"
            )
        return draw_overlay(picture, self.detections, alpha)


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE as JSON: {"size": [H, W], "counts": str}."""
    from pycocotools import mask as mask_utils

    return _rle_json(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def _rle_json(rle: dict) -> dict:
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
        if d.rle is not None:
            mask = d.mask  # one mask decoded at a time
            color = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
            base[mask] = base[mask] * (1 - alpha) + color * alpha
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


def parse_formats(text: str, allowed: tuple[str, ...], what: str = "") -> tuple[str, ...]:
    """'overlay,json' -> ('overlay', 'json'), in the order given, each one of `allowed`.

    Raises VitsamError for an unknown or empty list (`what`: 'for a video', in the message).
    """
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    if not formats or set(formats) - set(allowed):
        where = f"{what}, " if what else ""
        raise VitsamError(f"{where}--format takes a comma list of {','.join(allowed)}; got {text!r}")
    return formats


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
        written[-1].write_text(json.dumps(result.to_json(), indent=1, allow_nan=False) + "\n")
    return written
