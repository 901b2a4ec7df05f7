"""TextSegmenter: text -> boxes (detector) -> masks (segmenter), one image at a time."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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


def as_image(image: ImageLike) -> tuple[Image.Image, str]:
    """A path, PIL image or HWC uint8 array -> (RGB PIL image, a name for reports)."""
    if isinstance(image, (str, Path)):
        return open_image(image), str(image)
    if isinstance(image, Image.Image):
        return to_rgb(image), getattr(image, "filename", "") or "<image>"
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


def check_boxes(boxes) -> np.ndarray:
    """Any nested sequence of XYXY pixel boxes -> (N, 4) float32, or a clear error."""
    try:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    except ValueError:
        raise VitsamError("boxes must be a list of [X1, Y1, X2, Y2] in pixels") from None
    if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise VitsamError("a box must be X1,Y1,X2,Y2 with X2 > X1 and Y2 > Y1 (pixels)")
    return boxes


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
        """Load both models (detector=None for box prompts only); options as in __init__.

        A text-native segmenter (`sam3`) is its own detector: `detector` is then not loaded.
        """
        dev = resolve_device(device)
        dtype = seg_precision(precision, dev)
        seg = load_segmenter(segmenter, dev, dtype)
        if isinstance(seg, Sam3Segmenter):
            return cls(seg, seg, **options)
        det = Detector.from_pretrained(detector, dev, dtype) if detector else None
        return cls(det, seg, **options)

    def segment(
        self,
        image: ImageLike,
        prompt: str,
        box_threshold: float | None = None,
        text_threshold: float | None = None,
    ) -> Segmentation:
        """All phrases of `prompt` ('cat. remote control') in one detector pass."""
        phrases = split_prompt(prompt)
        if self.detector is None:
            raise VitsamError("this TextSegmenter has no detector: load one, or give boxes")
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
        """SAM's own prompt: masks for given XYXY pixel boxes, no detector."""
        boxes = check_boxes(boxes)
        pil, name = as_image(image)
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
        masks, scores = self.segmenter.predict(np.array([d.box for d in found]))
        for d, m, s in zip(found, masks, scores):
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
