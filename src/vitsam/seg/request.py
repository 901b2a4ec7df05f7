"""The rules of a segmentation request, shared by every way in (the CLI, Python, the HTTP
API, the page, labelling runs and Ray): prompts, boxes, thresholds and their defaults, and
which segmenters read the text themselves.
"""

from __future__ import annotations

import numbers
import re
import unicodedata

import numpy as np

from vitsam.errors import VitsamError

# Grounding DINO's two knobs, at the values its authors' demo uses: a box is kept when its
# best token scores over BOX_THRESHOLD and its phrase over TEXT_THRESHOLD.
BOX_THRESHOLD = 0.35
TEXT_THRESHOLD = 0.25
NMS_IOU = 0.0  # IoU for NMS across phrases; 0 = off
MAX_DETECTIONS = 100  # per image, best first
MAX_DETECTIONS_LIMIT = 1000  # the most one HTTP request may ask for
# Phrases are separated by periods (Grounding DINO's convention), commas (how people
# write lists) and line breaks.
SEPARATORS = re.compile(r"[.,]")
# Segmenter kinds (registry.SEGMENTERS) that find objects from the text themselves, so no
# detector runs before them and box prompts do not apply.
TEXT_NATIVE_KINDS = frozenset({"sam3"})


def normalize_text(text: str) -> str:
    """NFKC; line breaks become '.'; other control and format characters (zero-width space,
    BOM, soft hyphen, ...) are dropped, so invisible characters cannot change a prompt."""
    text = ".".join(unicodedata.normalize("NFKC", text).splitlines())
    return "".join(
        " " if c.isspace() else c
        for c in text
        if c.isspace() or not unicodedata.category(c).startswith("C")
    )


def split_prompt(prompt: str) -> list[str]:
    """'Cat, remote control.' -> ['cat', 'remote control']: phrases are separated by '.',
    ',' or line breaks; lower-case, normalised (see normalize_text), no empties or repeats.

    Raises VitsamError when no phrase is left.
    """
    if not isinstance(prompt, str):
        raise VitsamError(f"a prompt is a string of phrases, not a {type(prompt).__name__}")
    phrases = [" ".join(p.split()).lower() for p in SEPARATORS.split(normalize_text(prompt))]
    phrases = list(dict.fromkeys(p for p in phrases if p))
    if not phrases:
        raise VitsamError("empty prompt: give at least one phrase, e.g. 'cat. remote control'")
    return phrases


def check_boxes(boxes, size: tuple[int, int] | None = None) -> np.ndarray:
    """XYXY pixel boxes, as every interface takes them -> (N, 4) float64.

    `boxes` must be a list of [X1, Y1, X2, Y2] lists of finite numbers (or an (N, 4)
    array or tensor) with X2 > X1 and Y2 > Y1. With the image's `size` (W, H), boxes are clamped
    to it ([-20, -20, 100, 100] -> [0, 0, 100, 100]), and a box wholly outside it is an
    error. Raises VitsamError saying which rule a box breaks.
    """
    shape_error = VitsamError(
        "boxes must be a list of [X1, Y1, X2, Y2] boxes in pixels, e.g. [[10, 20, 200, 180]]"
    )
    if hasattr(boxes, "__array__"):  # numpy arrays, torch tensors
        boxes = np.asarray(boxes)
        if boxes.dtype.kind not in "iuf" or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise shape_error
    elif not isinstance(boxes, (list, tuple)) or not all(
        isinstance(b, (list, tuple))
        and len(b) == 4
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in b)
        for b in boxes
    ):
        raise shape_error
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise VitsamError("box numbers must be finite: nan and inf are not pixel positions")
    if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise VitsamError("a box must be X1,Y1,X2,Y2 with X2 > X1 and Y2 > Y1 (pixels)")
    if size is None:
        return boxes
    w, h = size
    clamped = boxes.clip(0, [w, h, w, h])
    outside = (clamped[:, 2] <= clamped[:, 0]) | (clamped[:, 3] <= clamped[:, 1])
    if outside.any():
        box = [round(float(v), 2) for v in boxes[outside][0]]
        raise VitsamError(f"box {box} lies wholly outside the {w}x{h} image")
    return clamped


def check_options(
    box_threshold: float | None = None,
    text_threshold: float | None = None,
    nms_iou: float | None = None,
    max_detections: int | None = None,
) -> None:
    """Thresholds and NMS IoU in [0, 1], max_detections a count >= 0 (None: not given).
    Raises VitsamError naming the option."""
    for name, v in (("box_threshold", box_threshold), ("text_threshold", text_threshold),
                    ("nms_iou", nms_iou)):  # fmt: skip
        if v is not None and not 0.0 <= v <= 1.0:  # False for nan too
            raise VitsamError(f"{name} must be between 0 and 1, got {v}")
    if max_detections is not None and (
        isinstance(max_detections, bool)
        or not isinstance(max_detections, numbers.Integral)
        or max_detections < 0
    ):
        raise VitsamError(f"max_detections must be a count of 0 or more, got {max_detections}")


def text_native(segmenter: str) -> bool:
    """Whether the segmenter named (short name, hub id, folder) finds objects from text
    itself (SAM 3), so that no detector is loaded for it. Raises VitsamError for a name
    that is no segmenter."""
    from vitsam.seg.registry import SEGMENTERS, resolve

    return resolve(segmenter, SEGMENTERS, "segmenter")[0] in TEXT_NATIVE_KINDS


def no_box_prompts(name: str) -> VitsamError:
    return VitsamError(
        f"{name} finds objects from a text prompt; box prompts need a SAM or SAM 2 segmenter "
        "(e.g. --segmenter sam2.1-tiny)"
    )


def check_box_segmenter(segmenter: str) -> None:
    """Box prompts need a segmenter that takes boxes: raises VitsamError for SAM 3 before
    it loads."""
    if text_native(segmenter):
        raise no_box_prompts(segmenter)
