"""The models a server holds, loaded once, and the one queue every request goes through."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from PIL import Image

from vitsam.errors import VitsamError
from vitsam.seg.pipeline import TextSegmenter
from vitsam.seg.request import (
    BOX_THRESHOLD,
    MAX_DETECTIONS,
    NEGATIVE_IOU,
    TEXT_THRESHOLD,
    Exemplar,
    Prompt,
    check_boxes,
    check_clicks,
)
from vitsam.seg.results import Segmentation

log = logging.getLogger("vitsam")
QUEUE_SIZE = 8  # requests waiting or running before the next is refused (503)


class Busy(VitsamError):
    """The request queue is full: try again shortly."""


class NotReady(VitsamError):
    """The models are still loading (or failed to load)."""


class Admission:
    """A bounded queue in front of the model: at most `size` requests wait or run.

    `enter()` refuses at once (Busy) when full rather than letting the queue grow; the
    model itself runs one request at a time under `lock`, so no two requests interleave.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = threading.BoundedSemaphore(size)
        self.lock = threading.Lock()

    def __enter__(self) -> Admission:
        if not self._slots.acquire(blocking=False):
            raise Busy(f"server busy: {self.size} requests already queued; retry shortly")
        return self

    def __exit__(self, *exc) -> None:
        self._slots.release()


@dataclass
class SegmentService:
    detectors: list[str]  # names as configured; the first is the default
    segmenters: list[str]
    device: str = "auto"
    precision: str = "auto"
    queue_size: int = QUEUE_SIZE
    admission: Admission = field(init=False)
    error: str = ""  # why loading failed, if it did
    _models: dict = field(default_factory=dict, init=False)
    _ready: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.queue_size)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load(self) -> None:
        """Load every configured model (call once, e.g. in a background thread)."""
        from vitsam.devices import resolve_device
        from vitsam.seg.detect import Detector
        from vitsam.seg.pipeline import load_segmenter, seg_precision

        try:
            dev = resolve_device(self.device)
            dtype = seg_precision(self.precision, dev)
            for name in self.detectors:
                self._models[("detector", name)] = Detector.from_pretrained(name, dev, dtype)
            for name in self.segmenters:
                self._models[("segmenter", name)] = load_segmenter(name, dev, dtype)
        except VitsamError as e:
            self.error = str(e)
            log.error("model loading failed: %s", e)
            return
        self._ready.set()
        log.info("models loaded: detectors %s, segmenters %s", self.detectors, self.segmenters)

    def segment(
        self,
        image: Image.Image,
        *,
        prompt: str = "",
        boxes=None,
        points=None,
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
        max_detections: int = MAX_DETECTIONS,
        negative: str = "",
        negative_iou: float = NEGATIVE_IOU,
        classes: dict | None = None,
        box_thresholds: dict | None = None,
        exemplars: list | None = None,
        detector: str | None = None,
        segmenter: str | None = None,
        name: str = "upload",
    ) -> Segmentation:
        """One request, through the queue (keywords only: no two thresholds can swap).
        Boxes (XYXY pixels) replace the prompt's detector; a text-native segmenter (sam3)
        needs none, and `detector` is then ignored. `negative`, `classes` and `box_thresholds`
        ({class: threshold}) as for TextSegmenter.segment. Raises Busy, NotReady or
        VitsamError (a bad prompt or class map before the request takes a place in the queue)."""
        if not self.ready:
            raise NotReady(self.error or "models are still loading; retry shortly")
        if boxes is not None:  # a bad box or click fails before it takes a place in the queue
            boxes = check_boxes(boxes)
        if points is not None:
            points = check_clicks(points, boxes)
        use_boxes = boxes is not None and len(boxes) > 0
        prompted = use_boxes or points is not None
        examples = [Exemplar.from_json(e) for e in exemplars or []]  # boxes on this image
        if any(e.image is not None for e in examples):
            raise VitsamError("an exemplar here is a box on the uploaded image: leave out 'image'")
        request = (
            None if prompted else Prompt.parse(prompt, classes, negative, box_thresholds, examples)
        )
        seg = self._pick("segmenter", segmenter or self.segmenters[0], self.segmenters)
        if seg.text_native:  # its own detector
            det = seg
        else:
            det = self._pick("detector", detector or self.detectors[0], self.detectors)
        pipeline = TextSegmenter(
            det, seg, box_threshold=box_threshold, text_threshold=text_threshold,
            max_detections=max_detections, negative_iou=negative_iou,
        )  # fmt: skip
        with self.admission, self.admission.lock:
            if points is not None:
                box = boxes[0] if use_boxes else None
                result = pipeline.segment_points(image, points.tolist(), box, prompt=prompt)
            elif use_boxes:
                result = pipeline.segment_boxes(image, boxes, prompt=prompt)
            else:
                result = pipeline.segment(image, request)
                result.prompt = prompt
        result.image = name
        return result

    def image_encodings(self) -> dict[str, int]:
        """How many times each click-taking segmenter has run its image encoder (a click on
        the same picture must not add one)."""
        return {n: m.encoded for (role, n), m in self._models.items()
                if role == "segmenter" and hasattr(m, "encoded")}  # fmt: skip

    def _pick(self, role: str, name: str, configured: list[str]):
        if name not in configured:
            raise VitsamError(
                f"{role} {name!r} is not served here: choose one of {', '.join(configured)}"
            )
        return self._models[(role, name)]
