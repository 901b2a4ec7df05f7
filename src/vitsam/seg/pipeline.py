"""TextSegmenter: text -> boxes (detector) -> masks (segmenter), one image at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from vitsam.devices import choose_precision, resolve_device
from vitsam.errors import VitsamError
from vitsam.images import ImageLike, as_image
from vitsam.seg import compiled
from vitsam.seg.detect import Detector, nms
from vitsam.seg.masks import MaskPredictor
from vitsam.seg.registry import DEFAULT_DETECTOR, DEFAULT_SEGMENTER
from vitsam.seg.request import (
    BOX_THRESHOLD,
    MAX_DETECTIONS,
    NEGATIVE_IOU,
    NMS_IOU,
    TEXT_THRESHOLD,
    Exemplar,
    Prompt,
    check_boxes,
    check_options,
    check_points,
    no_box_prompts,
    text_native,
)
from vitsam.seg.results import Detection, Segmentation
from vitsam.seg.sam3 import Sam3Segmenter

log = logging.getLogger("vitsam")

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
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
        nms_iou: float = NMS_IOU,
        max_detections: int = MAX_DETECTIONS,
        negative_iou: float = NEGATIVE_IOU,
    ) -> None:
        check_options(box_threshold, text_threshold, nms_iou, max_detections, negative_iou)
        self.detector, self.segmenter = detector, segmenter
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.nms_iou, self.max_detections = nms_iou, max_detections
        self.negative_iou = negative_iou
        self._references: dict[str, Image.Image] = {}  # exemplars' reference images, by path
        self.graphs = None  # --runtime openvino: its compiled.GraphCache

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
        runtime: str = "torch",
        **options,
    ) -> TextSegmenter:
        """Load both models (detector=None for box prompts only); options as in __init__,
        checked before any model loads.

        A text-native segmenter (`sam3`) is its own detector: `detector` is then not loaded.
        `runtime` "openvino" runs the detector and the image encoder as compiled graphs,
        converted at first use and cached on disk (see compiled.py; CPU only); `graphs`
        is then the cache, whose counters say what was converted and what loaded.
        Raises VitsamError, before any model loads, for an unknown runtime, OpenVINO not
        installed (with the install line) or a device other than the CPU.
        """
        check_options(**options)
        if runtime not in compiled.RUNTIMES:
            raise VitsamError(f"unknown runtime {runtime!r}: use {' or '.join(compiled.RUNTIMES)}")
        dev = resolve_device(device)
        if runtime == "openvino":
            compiled.require_openvino()
            if dev.type != "cpu":
                raise VitsamError("--runtime openvino runs on the CPU: add --device cpu")
        dtype = seg_precision(precision, dev)
        seg = load_segmenter(segmenter, dev, dtype)
        if seg.text_native:  # its own detector
            ts = cls(seg, seg, **options)
        else:
            det = Detector.from_pretrained(detector, dev, dtype) if detector else None
            ts = cls(det, seg, **options)
        if runtime == "openvino":
            ts.graphs = compiled.use_openvino(ts)
        return ts

    def segment(
        self,
        image: ImageLike | Sequence[ImageLike],
        prompt: str | Prompt | Sequence[str],
        box_threshold: float | Mapping[str, float] | None = None,
        text_threshold: float | None = None,
        *,
        negative: str = "",
        classes: Mapping[str, str | Sequence[str]] | None = None,
        exemplars: Sequence[Exemplar] = (),
    ) -> Segmentation | list[Segmentation]:
        """All phrases of `prompt` ('cat. remote control', 'cat, dog') in one detector pass.

        `classes` {'cat': ['kitten', 'tabby cat']} adds classes of several phrases each (the
        labels are class names); `negative` 'toy cat. poster' names what must not be
        labelled: a detection labelled with a negative phrase is dropped, and so is one that
        overlaps a negative phrase's detection by IoU >= negative_iou (the result counts
        what each removed). `box_threshold` a number, or {class: threshold} overriding the
        default for those classes. `exemplars` (request.Exemplar: a box on a reference
        image, or on this one) find objects like the boxed one (OWLv2's image-guided
        detection, SAM 3's geometric prompt), labelled with the exemplar's class, with or
        without phrases; a negative exemplar (SAM 3 only) goes into its class's prompt as
        a label-0 box: beside the positive exemplars, or beside the class's phrases when
        it has none. `prompt` may be a ready request.Prompt instead.

        A list of images gives a list of results, one per image, in order (as lang-sam's
        `predict`): `prompt` is then one prompt for all or a list of the same length.
        Raises VitsamError for an empty prompt, mismatched lists or a bad class map.
        """
        overrides = box_threshold if isinstance(box_threshold, Mapping) else None
        default_box = None if overrides is not None else box_threshold
        options = dict(negative=negative, classes=classes, exemplars=tuple(exemplars))
        if isinstance(image, (list, tuple)):
            prompts = [prompt] * len(image) if isinstance(prompt, str) else list(prompt)
            if len(prompts) != len(image):
                raise VitsamError(
                    f"{len(image)} images but {len(prompts)} prompts: give one prompt for all "
                    "or one per image"
                )
            for p in prompts:  # every prompt is checked before the first image is done
                if not isinstance(p, Prompt):
                    Prompt.parse(p, classes, negative, overrides, exemplars)
            return [self.segment(i, p, box_threshold, text_threshold, **options)
                    for i, p in zip(image, prompts)]  # fmt: skip
        if isinstance(prompt, Prompt):
            request, text = prompt, ", ".join(prompt.classes)
        elif isinstance(prompt, str):
            request, text = Prompt.parse(prompt, **options, box_thresholds=overrides), prompt
        else:
            raise VitsamError(
                "one image takes one prompt string: join phrases with '.' or ',' ('cat, dog'), "
                "or pass a list of images"
            )
        if self.detector is None:
            raise VitsamError("this TextSegmenter has no detector: load one, or give boxes")
        check_options(default_box, text_threshold)
        default_box = self.box_threshold if default_box is None else default_box
        pil, name = as_image(image)
        t0 = time.perf_counter()
        lowest = min([default_box, *request.box_thresholds.values()])  # then per class, below
        found = []
        beside = request.beside_text()  # classes whose phrases go with negative boxes
        plain = [p for p in request.phrases if request.class_of.get(p) not in beside]
        if request.class_of and plain:
            found = self.detector.detect(
                pil,
                plain,
                lowest,
                self.text_threshold if text_threshold is None else text_threshold,
            )
        for label, group in request.exemplar_groups().items():
            examples = [(*self._example(ex, pil), not ex.negative) for ex in group]
            if label not in beside:
                found += self.detector.detect_like(pil, examples, label, lowest)
                continue
            for phrase in (p for p, c in request.class_of.items() if c == label):
                found += self.detector.detect_like(pil, examples, phrase, lowest, text=phrase)
        found.sort(key=lambda d: -d.score)
        found, removed = apply_prompt(found, request, default_box, self.negative_iou)
        if self.nms_iou > 0:
            found = nms(found, self.nms_iou)
        found = found[: self.max_detections]
        t1 = time.perf_counter()
        result = self._masks(pil, name, text, found)
        result.request = request.to_json()
        result.negatives = [{"phrase": n, "removed": removed[n]} for n in request.negatives]
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

    def _example(self, exemplar: Exemplar, image: Image.Image) -> tuple[Image.Image, tuple]:
        """The exemplar's reference image (its file, read once per run, else the image being
        segmented) and its box clamped to it. Raises VitsamError for a missing file or a box
        off it."""
        if exemplar.image is None:
            reference = image
        else:
            if exemplar.image not in self._references:
                self._references[exemplar.image] = as_image(exemplar.image)[0]
            reference = self._references[exemplar.image]
        try:
            box = check_boxes([list(exemplar.box)], reference.size)[0]
        except VitsamError as e:
            raise VitsamError(f"exemplar on {exemplar.image or 'the image'}: {e}") from None
        return reference, tuple(float(v) for v in box)

    def segment_points(
        self, image: ImageLike, points, box=None, label: str = "object", prompt: str = ""
    ) -> Segmentation:
        """Clicks, as SAM's demo takes them: [[X, Y, LABEL], ...] pixels (LABEL 1 object, 0
        background; see request.check_points), with at most one XYXY `box` -> one mask,
        labelled `label`, its box the mask's extent. The image is encoded once: the same
        picture again (more clicks) reuses its embedding. Raises VitsamError for bad
        points, a point off the image or a segmenter that takes no clicks (SAM 3)."""
        if self.segmenter.text_native:
            raise no_box_prompts(self.segmenter.name)
        pil, name = as_image(image)
        clicks = check_points(points, pil.size)
        given = None if box is None else check_boxes([list(box)], pil.size)[0]
        self.segmenter.set_image(pil)
        mask, score = self.segmenter.predict_points(clicks[:, :2], clicks[:, 2], given)
        ys, xs = np.nonzero(mask)
        extent = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        found = [Detection(label, 1.0, tuple(map(float, given)) if given is not None else extent,
                           mask=mask, mask_score=score)] if mask.any() else []  # fmt: skip
        result = Segmentation(name, pil.width, pil.height, prompt, "", self.segmenter.name, found)
        result.request = {"points": clicks.tolist(), **({"box": given.tolist()} if given is not None else {})}
        return result

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


def apply_prompt(
    found: list[Detection], prompt: Prompt, box_threshold: float, negative_iou: float
) -> tuple[list[Detection], dict[str, int]]:
    """The detector's answer to `prompt.phrases` -> the detections to keep, labelled with
    their class, and how many each negative phrase removed.

    A detection labelled with a negative phrase is dropped (it is not a class); a positive
    one is dropped when it scores at or under its class's box threshold, or overlaps a
    negative phrase's detection by IoU >= `negative_iou` (0: never; counted for the most
    overlapping negative). Order (by score) is kept.
    """
    from torchvision.ops import box_iou

    negative = [d for d in found if d.label in prompt.negatives]
    removed = dict.fromkeys(prompt.negatives, 0)
    for d in negative:
        removed[d.label] += 1
    overlap = None  # (found, negative) IoU, once for all pairs
    if negative and negative_iou > 0:  # 0: by label only
        boxes = torch.tensor([d.box for d in found], dtype=torch.float64)
        overlap = box_iou(boxes, torch.tensor([n.box for n in negative], dtype=torch.float64))
    kept = []
    for k, d in enumerate(found):
        if d.label in prompt.negatives or d.score <= prompt.threshold(d.label, box_threshold):
            continue
        if overlap is not None and overlap[k].max() >= negative_iou:
            removed[negative[int(overlap[k].argmax())].label] += 1
            continue
        d.label = prompt.class_of.get(d.label, d.label)  # a label outside the phrases stays
        kept.append(d)
    return kept, removed


def load_segmenter(
    name: str, device: torch.device, dtype: torch.dtype
) -> MaskPredictor | Sam3Segmenter:
    """A segmenter by name: SAM / SAM 2 (a mask per given box) or SAM 3 (text-native)."""
    if text_native(name):
        return Sam3Segmenter.from_pretrained(name, device, dtype)
    return MaskPredictor.from_pretrained(name, device, dtype)
