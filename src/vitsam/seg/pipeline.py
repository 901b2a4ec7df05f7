"""TextSegmenter: text -> boxes (detector) -> masks (segmenter), one image at a time."""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from vitsam.devices import choose_precision, resolve_device
from vitsam.errors import VitsamError
from vitsam.images import open_image, to_rgb
from vitsam.seg.detect import Detector, nms, split_prompt
from vitsam.seg.masks import MaskPredictor
from vitsam.seg.registry import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, SEGMENTERS, resolve
from vitsam.seg.results import Detection, Segmentation
from vitsam.seg.sam3 import Sam3Segmenter

log = logging.getLogger("vitsam")

ImageLike = str | Path | Image.Image | np.ndarray
ORIENTATION = ExifTags.Base.Orientation  # the EXIF tag (0x0112)


def as_image(image: ImageLike) -> tuple[Image.Image, str]:
    """A path, PIL image or HWC uint8 array -> (RGB PIL image, a name for reports).

    One rule on every interface: the image as it is displayed. Files are read with
    open_image (EXIF orientation applied); a PIL image still carrying an EXIF orientation
    tag (as Image.open returns a phone photo) is turned upright the same way, and one
    already upright is unchanged; arrays have no EXIF and are taken as they are.
    """
    if isinstance(image, (str, Path)):
        return open_image(image), str(image)
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "<image>"
        if image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return to_rgb(image), name
    if isinstance(image, np.ndarray):
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (1, 3, 4))
        ):
            raise VitsamError(
                f"array image must be HxW or HxWxC (C = 1, 3, 4) uint8, got {image.dtype} {image.shape}"
            )
        return to_rgb(
            Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image)
        ), "<array>"
    raise VitsamError(
        f"cannot read an image from a {type(image).__name__}: give a path, PIL image or array"
    )


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


def seg_precision(name: str, device: torch.device) -> torch.dtype:
    """The models' dtype: the same rule as training (`devices.choose_precision`: 'auto' is
    bf16 on GPUs and on CPUs with bf16 matrix units), logged with the reason."""
    precision = choose_precision(name, device)
    log.info("segmentation precision %s", precision)
    return precision.dtype


class TextSegmenter:
    """Segment what a text prompt names: detector boxes, then one mask per box.

    Thresholds: a box is kept when its best token score exceeds `box_threshold` and the
    phrase it is labelled with scores over `text_threshold` (Grounding DINO's two knobs).
    At most `max_detections` boxes per image are kept, highest scores first.
    """

    def __init__(
        self,
        detector: Detector | None,
        segmenter: MaskPredictor,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        nms_iou: float = 0.0,
        max_detections: int = 100,
    ) -> None:
        check_options(box_threshold, text_threshold, nms_iou, max_detections)
        self.detector, self.segmenter = detector, segmenter
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.nms_iou, self.max_detections = nms_iou, max_detections

    @property
    def detector_name(self) -> str:
        """As results report it: SAM 3, its own detector, is reported as 'sam3'."""
        if self.detector is None:
            return ""
        return "sam3" if self.detector is self.segmenter else self.detector.name

    @classmethod
    def from_pretrained(
        cls,
        detector: str | None = DEFAULT_DETECTOR,
        segmenter: str = DEFAULT_SEGMENTER,
        device: str = "auto",
        precision: str = "auto",
        **options,
    ) -> TextSegmenter:
        """Load both models (detector=None for box prompts only); options as in __init__,
        checked before any model loads.

        A text-native segmenter (`sam3`) is its own detector: `detector` is then not loaded.
        """
        check_options(**options)
        dev = resolve_device(device)
        dtype = seg_precision(precision, dev)
        seg = load_segmenter(segmenter, dev, dtype)
        if isinstance(seg, Sam3Segmenter):
            return cls(seg, seg, **options)
        det = Detector.from_pretrained(detector, dev, dtype) if detector else None
        return cls(det, seg, **options)

    def segment(
        self,
        image: ImageLike | Sequence[ImageLike],
        prompt: str | Sequence[str],
        box_threshold: float | None = None,
        text_threshold: float | None = None,
    ) -> Segmentation | list[Segmentation]:
        """All phrases of `prompt` ('cat. remote control', 'cat, dog') in one detector pass.

        A list of images gives a list of results, one per image, in order (as lang-sam's
        `predict`): `prompt` is then one prompt for all or a list of the same length.
        Raises VitsamError for an empty prompt or mismatched lists.
        """
        if isinstance(image, (list, tuple)):
            prompts = [prompt] * len(image) if isinstance(prompt, str) else list(prompt)
            if len(prompts) != len(image):
                raise VitsamError(
                    f"{len(image)} images but {len(prompts)} prompts: give one prompt for all "
                    "or one per image"
                )
            for p in prompts:  # every prompt is checked before the first image is done
                split_prompt(p)
            return [self.segment(i, p, box_threshold, text_threshold) for i, p in zip(image, prompts)]
        if not isinstance(prompt, str):
            raise VitsamError(
                "one image takes one prompt string: join phrases with '.' or ',' ('cat, dog'), "
                "or pass a list of images"
            )
        phrases = split_prompt(prompt)
        if self.detector is None:
            raise VitsamError("this TextSegmenter has no detector: load one, or give boxes")
        check_options(box_threshold, text_threshold)
        pil, name = as_image(image)
        t0 = time.perf_counter()
        found = self.detector.detect(
            pil,
            phrases,
            self.box_threshold if box_threshold is None else box_threshold,
            self.text_threshold if text_threshold is None else text_threshold,
        )
        if self.nms_iou > 0:
            found = nms(found, self.nms_iou)
        found = found[: self.max_detections]
        t1 = time.perf_counter()
        result = self._masks(pil, name, prompt, found)
        result.timings["detector"] = t1 - t0
        return result

    def segment_boxes(
        self, image: ImageLike, boxes, labels: list[str] | None = None, prompt: str = ""
    ) -> Segmentation:
        """SAM's own prompt: masks for given XYXY pixel boxes, no detector.

        Boxes are clamped to the image and written clamped; see check_boxes for the rules.
        """
        boxes = check_boxes(boxes)
        pil, name = as_image(image)
        boxes = check_boxes(boxes, pil.size)
        labels = labels or ["box"] * len(boxes)
        found = [Detection(lab, 1.0, tuple(float(v) for v in b)) for lab, b in zip(labels, boxes)]
        return self._masks(pil, name, prompt, found)

    def _masks(
        self, image: Image.Image, name: str, prompt: str, found: list[Detection]
    ) -> Segmentation:
        result = Segmentation(
            name,
            image.width,
            image.height,
            prompt,
            self.detector_name,
            self.segmenter.name,
            found,
        )
        if not found or all(d.mask is not None for d in found):  # SAM 3: masks came with them
            return result
        t0 = time.perf_counter()
        self.segmenter.set_image(image)
        t1 = time.perf_counter()
        pending = iter(found)
        for masks, scores in self.segmenter.predict_chunks(np.array([d.box for d in found])):
            for m, s in zip(masks, scores):  # packed as each chunk arrives (Detection.rle)
                d = next(pending)
                d.mask, d.mask_score = m, float(s)
        result.timings.update(image_encoder=t1 - t0, mask_decoder=time.perf_counter() - t1)
        return result


def load_segmenter(
    name: str, device: torch.device, dtype: torch.dtype
) -> MaskPredictor | Sam3Segmenter:
    """A segmenter by name: SAM / SAM 2 (a mask per given box) or SAM 3 (text-native)."""
    if resolve(name, SEGMENTERS, "segmenter")[0] == "sam3":
        return Sam3Segmenter.from_pretrained(name, device, dtype)
    return MaskPredictor.from_pretrained(name, device, dtype)
