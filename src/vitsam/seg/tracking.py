"""Trackers: a text prompt followed through a video, frame by frame, with stable track ids.

Two recipes behind one interface (`start(prompt)`, then `step(image) -> [Track]` per frame;
`removed` then counts what each negative phrase removed on that frame):

- `Sam3VideoTracker`: SAM 3's own video model (`Sam3VideoModel`, streamed frame by frame),
  which detects every frame and matches detections to its SAM 2-style tracker itself.
- `DetectTrackSam2`: Grounded-SAM-2's recipe (IDEA-Research, `grounded_sam2_tracking_demo_
  with_continuous_id.py`): detect and segment on a key frame, track with SAM 2's video
  model (`Sam2VideoModel`), and every `redetect` frames detect again; a new detection whose
  mask overlaps a tracked mask (IoU >= `match_iou`) keeps that track's id, the rest get new
  ids, and the tracker restarts from the merged masks.

Both trim the models' session after each frame to what the memory attention can still read,
so memory stays flat however long the video (see `trim_session`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.seg.mixed_precision import Mixed
from vitsam.seg.pipeline import TextSegmenter, apply_prompt
from vitsam.seg.registry import SEGMENTERS, resolve, with_hub_errors
from vitsam.seg.request import (
    MAX_DETECTIONS,
    NEGATIVE_IOU,
    Prompt,
    check_boxes,
    check_clicks,
)
from vitsam.seg.results import Detection


@dataclass
class Track(Detection):
    """A detection on one frame of a video, with the id of the object it belongs to."""

    track_id: int = 0  # stable across frames, from 1

    def to_json(self) -> dict:
        return {"track_id": self.track_id, **super().to_json()}


class Sam3VideoTracker(Mixed):
    """SAM 3's video model over streamed frames; phrases are the prompt's, ids SAM 3's + 1."""

    def __init__(self, name: str, model, processor, device, dtype, score_threshold: float = 0.0,
                 max_objects: int = MAX_DETECTIONS, negative_iou: float = NEGATIVE_IOU) -> None:  # fmt: skip
        self.name, self.processor, self.score_threshold = name, processor, score_threshold
        self.negative_iou = negative_iou
        self.prompt: Prompt | None = None
        self.removed: dict[str, int] = {}
        self.model = self.place(model, device, dtype)  # fp32 weights, `dtype` under autocast
        self.model.max_num_objects = max_objects  # SAM 3 starts no tracks beyond this
        tracker = model.config.tracker_config
        self.window = max(tracker.num_maskmem, tracker.max_object_pointers_in_encoder)
        self.max_cond = tracker.max_cond_frame_num
        self.detector_name = "sam3"
        self._session, self._t = None, 0

    @staticmethod
    def from_pretrained(name: str, device, dtype, score_threshold: float = 0.0,
                        max_objects: int = MAX_DETECTIONS,
                        negative_iou: float = NEGATIVE_IOU) -> Sam3VideoTracker:  # fmt: skip
        """`sam3` (facebook/sam3), a hub id or folder whose config is `sam3_video`, or SAM 3
        LiteText (`sam3-lite`, model type `sam3_lite_text`).

        SAM 3 LiteText ships the image model alone: it tracks with SAM 3's own tracker,
        taken from `sam3` (facebook/sam3, the registry's entry) with SAM 3's detector
        replaced by LiteText's, as the LiteText paper evaluates video. SAM 3 keeps its own
        detection thresholds (0.5 to keep a detection, 0.7 to start a track);
        `score_threshold` filters what is reported, `max_objects` caps the tracks.
        Raises VitsamError for another image-only model, or a model missing offline.
        """
        from transformers import AutoConfig, Sam3LiteTextModel, Sam3VideoModel, Sam3VideoProcessor

        _, source = resolve(name, SEGMENTERS, "segmenter")
        config = with_hub_errors(name, lambda: AutoConfig.from_pretrained(source))
        detector, tracker, tracker_source = None, name, source
        if config.model_type == "sam3_lite_text":
            detector = with_hub_errors(name, lambda: Sam3LiteTextModel.from_pretrained(source))
            tracker, tracker_source = "sam3", resolve("sam3", SEGMENTERS, "segmenter")[1]
        elif config.model_type != "sam3_video":
            raise VitsamError(
                f"{name}: a SAM 3 image model ({config.model_type}); video needs the full "
                "SAM 3 (detector + tracker, model type sam3_video), e.g. facebook/sam3"
            )
        processor = with_hub_errors(
            tracker, lambda: Sam3VideoProcessor.from_pretrained(tracker_source)
        )
        model = with_hub_errors(tracker, lambda: Sam3VideoModel.from_pretrained(tracker_source))
        if detector is not None:  # the tracker reads the detector's vision features
            ours, theirs = detector.config.vision_config, model.config.detector_config.vision_config
            if (ours.image_size, ours.fpn_hidden_size) != (theirs.image_size, theirs.fpn_hidden_size):
                raise VitsamError(
                    f"{name}: its image encoder ({ours.image_size} px, {ours.fpn_hidden_size} "
                    f"channels) does not match the tracker's in {tracker_source} "
                    f"({theirs.image_size} px, {theirs.fpn_hidden_size}): track with a SAM 3 of "
                    "the same vision model"
                )
            model.detector_model = detector
        use_cpu_postprocessing()
        return Sam3VideoTracker(name, model, processor, device, dtype, score_threshold,
                                max_objects, negative_iou)  # fmt: skip

    def start(self, prompt: str | Prompt, boxes=None, points=None) -> None:
        """A prompt's phrases, class map, negatives and per-class thresholds: every phrase,
        negatives too, is a text prompt of SAM 3's video model; each frame's tracks then
        go through the image path's rules (pipeline.apply_prompt). Raises VitsamError for
        boxes, clicks or exemplars (SAM 3 video takes text here)."""
        if boxes is not None or points is not None:
            raise VitsamError(f"{self.name} tracks what a text prompt names; it takes no boxes or clicks")
        request = prompt if isinstance(prompt, Prompt) else Prompt.parse(prompt)
        Sam3VideoTracker.check(request)
        self._session = self.processor.init_video_session(
            inference_device=self.device, dtype=torch.float32
        )
        self.processor.add_text_prompt(self._session, request.phrases)
        self.prompt, self._t, self.removed = request, 0, {}

    @staticmethod
    def check(request: Prompt) -> None:
        """Raise VitsamError for what SAM 3 video cannot take here (exemplars), before
        anything loads."""
        if request.exemplars:
            raise VitsamError(
                "exemplars in a video need a detector that takes them: --detector owlv2 "
                "with a SAM 2 segmenter (e.g. --segmenter sam2.1-tiny)"
            )

    @torch.inference_mode()
    def step(self, image: Image.Image) -> list[Track]:
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        with _quiet_transformers(), self.autocast():  # it warns each frame past max_objects
            out = self.model(
                inference_session=self._session,
                frame=pixels.to(self.device, torch.float32),
                frame_idx=self._t,  # given: trimming empties the frame store it would count
            )
        res = self.processor.postprocess_outputs(
            self._session, out, original_sizes=[[image.height, image.width]]
        )
        trim_session(self._session, self._t, self.window, self.max_cond)
        self._t += 1
        phrase = {o: text for text, ids in res["prompt_to_obj_ids"].items() for o in ids}
        tracks = []
        for obj, score, box, mask in zip(
            res["object_ids"].tolist(), res["scores"].tolist(), res["boxes"].tolist(), res["masks"]
        ):
            mask = mask.cpu().numpy()
            tracks.append(Track(phrase[obj], score, tuple(box), mask, score, obj + 1))
        tracks.sort(key=lambda t: -t.score)
        tracks, self.removed = apply_prompt(tracks, self.prompt, self.score_threshold,
                                            self.negative_iou)  # fmt: skip
        return tracks


class DetectTrackSam2(Mixed):
    """A detector + SAM 2 on key frames, SAM 2's video model in between (Grounded-SAM-2).

    `finder` is the image pipeline (detector, thresholds, NMS, caps; SAM 2 image masks);
    `redetect` is the key-frame period in processed frames (0: the first frame only).
    Tracks the detector misses on a key frame stay while SAM 2 still sees them (non-empty
    mask) and are dropped when their mask is empty.
    """

    def __init__(self, finder: TextSegmenter, model, processor, device, dtype,
                 redetect: int = 20, match_iou: float = 0.5) -> None:  # fmt: skip
        self.finder, self.processor = finder, processor
        self.model = self.place(model, device, dtype)  # fp32 weights, `dtype` under autocast
        self.redetect, self.match_iou = redetect, match_iou
        self.window = max(model.config.num_maskmem, model.config.max_object_pointers_in_encoder)
        self.max_cond = model.config.max_cond_frame_num
        self.detector_name = finder.detector_name
        self.name = finder.segmenter.name
        self._session, self._t = None, 0
        self._prompt: Prompt | None = None
        self._boxes = self._points = None
        self.removed: dict[str, int] = {}
        self._labels: dict[int, tuple[str, float]] = {}  # track id -> (phrase, detector score)
        self._next_id = 1

    @staticmethod
    def from_pretrained(detector: str | None, segmenter: str, device: torch.device,
                        dtype: torch.dtype, redetect: int = 20, **options) -> DetectTrackSam2:  # fmt: skip
        """The detector and SAM 2 image model as TextSegmenter uses them, and SAM 2's video
        model from the same segmenter (its folder must hold the memory weights: the hub's
        SAM 2.1 folders do). Options go to TextSegmenter (thresholds, nms_iou, caps)."""
        from transformers import EdgeTamVideoModel, Sam2VideoModel, Sam2VideoProcessor

        from vitsam.seg.detect import Detector
        from vitsam.seg.masks import SAM2_KINDS, MaskPredictor

        kind, source = resolve(segmenter, SEGMENTERS, "segmenter")
        if kind not in SAM2_KINDS:
            raise VitsamError(
                f"{segmenter}: video tracking needs SAM 2 (e.g. sam2.1-tiny), EdgeTAM or SAM 3; "
                f"{kind} cannot track"
                + (" (original checkpoint files serve images only)" if kind == "checkpoint" else "")
            )
        video_class = EdgeTamVideoModel if kind == "edgetam" else Sam2VideoModel
        with _quiet_transformers():
            model, info = with_hub_errors(
                segmenter,
                lambda: video_class.from_pretrained(source, output_loading_info=True),
            )
        if any(k.startswith("memory_") for k in info["missing_keys"]):
            raise VitsamError(
                f"{segmenter}: a SAM 2 image model without the memory weights tracking needs: "
                "use a SAM 2 video folder (model type sam2_video, as the hub's SAM 2.1 ones)"
            )
        processor = with_hub_errors(segmenter, lambda: Sam2VideoProcessor.from_pretrained(source))
        with _quiet_transformers():  # the image half of a sam2_video folder: a load report
            masks = MaskPredictor.from_pretrained(segmenter, device, dtype)
        found = Detector.from_pretrained(detector, device, dtype) if detector else None
        finder = TextSegmenter(found, masks, **options)
        return DetectTrackSam2(finder, model, processor, device, dtype, redetect)

    def start(self, prompt: str | Prompt, boxes=None, points=None) -> None:
        """`boxes` (XYXY pixels of the first frame) replace the detector: tracked, not
        re-found. `points` ([[X, Y, LABEL], ...] on the first frame, with at most one box)
        give one object, SAM 2's clicks. A prompt (text, or a request.Prompt with class
        map, negatives, per-class thresholds, exemplars) is detected on every key frame as
        TextSegmenter.segment does."""
        if points is not None:
            points = check_clicks(points, boxes)
        elif boxes is None:
            prompt = prompt if isinstance(prompt, Prompt) else Prompt.parse(prompt)
            if self.finder.detector is None:
                raise VitsamError("no detector loaded: give a prompt and a detector, or boxes")
        if isinstance(prompt, Prompt):
            self._prompt = prompt
        self._boxes = None if boxes is None else check_boxes(boxes)
        self._points = points
        self.removed = {}
        self._session = self.processor.init_video_session(
            inference_device=self.device, dtype=torch.float32
        )
        self._t, self._labels, self._next_id = 0, {}, 1

    @torch.inference_mode()
    def step(self, image: Image.Image) -> list[Track]:
        t = self._t
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        pixels = pixels.to(self.device, torch.float32)
        masks, objectness = self._propagate(pixels, image) if self._labels else ({}, {})
        prompted = self._boxes is not None or self._points is not None
        key = t == 0 or (self.redetect > 0 and not prompted and t % self.redetect == 0)
        self.removed = {}
        if key:
            merged = self._merge(self._find(image), masks)
            self._session.reset_tracking_data()
            if merged:  # restart the tracker from the merged masks on this frame
                self.processor.add_inputs_to_inference_session(
                    self._session, t, obj_ids=list(merged), input_masks=list(merged.values())
                )
                masks, objectness = self._propagate(pixels, image)
            else:
                masks, objectness = {}, {}
        trim_session(self._session, t, self.window, self.max_cond)
        self._t += 1
        tracks = []
        for tid, mask in masks.items():
            if mask.any():
                label, score = self._labels[tid]
                tracks.append(Track(label, score, mask_box(mask), mask, objectness[tid], tid))
        return tracks

    def _propagate(self, pixels: torch.Tensor, image: Image.Image):
        """SAM 2's masks on this frame for every tracked id: ({id: (H, W) bool}, {id: p})."""
        with self.autocast():
            out = self.model(inference_session=self._session, frame=pixels, frame_idx=self._t)
        masks = self.processor.post_process_masks(
            [out.pred_masks.float().cpu()], original_sizes=[[image.height, image.width]]
        )[0][:, 0].numpy()
        present = out.object_score_logits.float().sigmoid().reshape(-1).tolist()
        ids = list(out.object_ids)
        return dict(zip(ids, masks)), dict(zip(ids, present))

    def _find(self, image: Image.Image) -> list[Detection]:
        if self._points is not None:
            box = None if self._boxes is None or not len(self._boxes) else self._boxes[0]
            return self.finder.segment_points(image, self._points.tolist(), box).detections
        if self._boxes is not None:
            return self.finder.segment_boxes(image, self._boxes).detections
        result = self.finder.segment(image, self._prompt)
        self.removed = {n["phrase"]: n["removed"] for n in result.negatives}
        return result.detections

    def _merge(self, found: list[Detection], tracked: dict[int, np.ndarray]) -> dict:
        """Key-frame masks by track id: detections matched to tracks by mask IoU (Hungarian)
        keep the track's id and take the fresh mask; unmatched detections start tracks;
        unmatched tracks stay while their mask is non-empty. At most `max_detections`."""
        from scipy.optimize import linear_sum_assignment

        found = [d for d in found if d.mask is not None and d.mask.any()]
        ids = list(tracked)
        pairs = {}
        if found and ids:
            iou = mask_iou(np.stack([d.mask for d in found]), np.stack([tracked[i] for i in ids]))
            rows, cols = linear_sum_assignment(-iou)
            pairs = {r: ids[c] for r, c in zip(rows, cols) if iou[r, c] >= self.match_iou}
        merged, labels = {}, {}
        for i, d in enumerate(found):
            tid = pairs.get(i)
            if tid is None:
                tid, self._next_id = self._next_id, self._next_id + 1
            merged[tid], labels[tid] = d.mask, (d.label, d.score)
        for tid in set(ids) - set(pairs.values()):
            if tracked[tid].any():
                merged[tid], labels[tid] = tracked[tid], self._labels[tid]
        keep = sorted(merged, key=lambda k: -labels[k][1])[: self.finder.max_detections]
        self._labels = {k: labels[k] for k in keep}
        return {k: merged[k] for k in sorted(keep)}


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H, W) and (M, H, W) bool -> (N, M) intersection over union."""
    a, b = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The XYXY pixel box around a non-empty (H, W) bool mask."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def trim_session(session, frame_idx: int, window: int, max_cond: int) -> None:
    """Drop from a transformers video session what the memory attention no longer reads.

    transformers' sessions keep every frame's pixels and every frame's memory for the whole
    video (memory grows ~12 MB a frame at 1024 px). After frame `frame_idx` the model reads
    only: the current frame, non-conditioning memories of the last `window` frames
    (max(num_maskmem, max_object_pointers_in_encoder)), and the `max_cond_frame_num`
    conditioning frames closest in time (all of them when it is -1). Older conditioning
    frames, whose object pointers SAM 2 would still attend to, are dropped too: a deliberate
    bound, so memory and time per frame stay flat on long videos.
    """
    horizon = frame_idx - window
    _drop_before(session.processed_frames or {}, frame_idx)
    for outputs in session.output_dict_per_obj.values():
        _drop_before(outputs["non_cond_frame_outputs"], horizon)
        cond = outputs["cond_frame_outputs"]
        if max_cond > 0 and len(cond) > max_cond:
            recent = sorted(cond)[-max_cond:]
            for k in [k for k in cond if k < horizon and k not in recent]:
                del cond[k]
    for tracked in session.frames_tracked_per_obj.values():
        _drop_before(tracked, horizon)
    for per_frame in ("obj_id_to_tracker_score_frame_wise", "suppressed_obj_ids"):  # SAM 3
        if hasattr(session, per_frame):
            _drop_before(getattr(session, per_frame), horizon)


def _drop_before(store: dict, index: int) -> None:
    for k in [k for k in store if k < index]:
        del store[k]


def use_cpu_postprocessing() -> None:
    """Give transformers' SAM 3 video the mask NMS and connected components it leaves out.

    It takes both from the `kernels` hub package (CUDA builds, downloaded on first use);
    without it, detections are not de-duplicated (one object, several tracks) and holes are
    not filled. Where that kernel did not load, this installs the same two operations in
    plain torch / SciPy. The kernel is used where it loads.
    """
    from transformers.models.sam3_video import modeling_sam3_video as m
    from transformers.utils import is_kernels_available

    if m.cv_utils_kernel is None and is_kernels_available():
        with contextlib.suppress(Exception):
            m._load_cv_utils_kernel_once()
    if not m.cv_utils_kernel:
        m.cv_utils_kernel = CpuPostprocessing()


class CpuPostprocessing:
    """The two operations of the `kernels-community/cv-utils` kernel SAM 3 video calls."""

    @staticmethod
    def generic_nms(ious: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                    use_iou_matrix: bool = True) -> torch.Tensor:  # fmt: skip
        """Greedy NMS over a (N, N) IoU matrix: indices kept, highest score first."""
        suppressed = torch.zeros(len(scores), dtype=torch.bool, device=ious.device)
        kept = []
        for i in scores.argsort(descending=True).tolist():
            if not suppressed[i]:
                kept.append(i)
                suppressed |= ious[i] > iou_threshold
        return torch.tensor(kept, dtype=torch.long, device=scores.device)

    @staticmethod
    def cc_2d(mask: torch.Tensor, get_counts: bool = True):
        """8-connected components of (B, 1, H, W) masks: labels, and each pixel's component
        area (0 on background), as cc_torch returns them."""
        from scipy import ndimage

        arrays = mask.cpu().numpy().astype(bool)
        labels = np.zeros(arrays.shape, dtype=np.int32)
        counts = np.zeros(arrays.shape, dtype=np.int32)
        for i, m in enumerate(arrays[:, 0]):
            lab, _ = ndimage.label(m, structure=np.ones((3, 3)))
            areas = np.bincount(lab.ravel())
            areas[0] = 0
            labels[i, 0], counts[i, 0] = lab, areas[lab]
        to = {"device": mask.device}
        return torch.from_numpy(labels).to(**to), torch.from_numpy(counts).to(**to)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load reports as errors only (a SAM 2 video folder read as the image
    model reports its memory weights as unused)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)

