"""Video segmentation: what a prompt names, followed through a clip with stable track ids.

from vitsam.seg.video import VideoSegmenter
video = VideoSegmenter.from_pretrained(segmenter="sam3")            # or a detector + SAM 2
for frame, tracks in video.track("clip.mp4", "person. dog"):        # one frame at a time
    ...                                                              # Track: track_id, label, ...
video.segment("clip.mp4", "person. dog", "segments/")               # clip.overlay.mp4, clip.json
video.segment("clip.mp4", Prompt.parse("car", negative="toy car"), "segments/")  # the image rules

Frames are decoded, tracked, drawn and written one at a time (see videoio), so memory does
not grow with the length of the clip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vitsam.devices import resolve_device
from vitsam.errors import VitsamError
from vitsam.seg.pipeline import seg_precision
from vitsam.seg.registry import DEFAULT_DETECTOR, DEFAULT_SEGMENTER
from vitsam.seg.request import (
    MAX_DETECTIONS,
    NEGATIVE_IOU,
    Prompt,
    check_boxes,
    check_points,
    text_native,
)
from vitsam.seg.results import draw_overlay
from vitsam.seg.tracking import DetectTrackSam2, Sam3VideoTracker, Track
from vitsam.seg.videoio import Frame, FramesJson, OverlayWriter, VideoInfo, VideoReader

VIDEO_FORMATS = ("overlay", "json")


@dataclass
class VideoResult:
    info: VideoInfo
    frames: int  # frames processed
    track_ids: set[int] = field(default_factory=set)  # every id seen
    files: list[Path] = field(default_factory=list)
    stopped: str | None = None  # why it stopped before the end (None: it did not)


class VideoSegmenter:
    """A tracker (SAM 3 video, or a detector + SAM 2 video) and the clip plumbing around it."""

    def __init__(self, tracker, redetect: int = 0) -> None:
        self.tracker, self.redetect = tracker, redetect

    @classmethod
    def from_pretrained(
        cls,
        detector: str | None = DEFAULT_DETECTOR,
        segmenter: str = DEFAULT_SEGMENTER,
        device: str = "auto",
        precision: str = "auto",
        redetect: int = 20,
        **options,
    ) -> VideoSegmenter:
        """`segmenter` sam3 (text-native, no detector), or a SAM 2 video model with `detector`
        (None: box prompts on the first frame). `redetect`: the detector runs every that
        many processed frames (0: first frame only). Options as for TextSegmenter
        (box_threshold, text_threshold, nms_iou, max_detections, negative_iou)."""
        if redetect < 0:
            raise VitsamError("--redetect must be 0 (first frame only) or a number of frames")
        dev = resolve_device(device)
        dtype = seg_precision(precision, dev)
        if text_native(segmenter):
            cap = options.get("max_detections", MAX_DETECTIONS)
            threshold = options.get("box_threshold", 0.0)  # SAM 3's own score, unfiltered
            overlap = options.get("negative_iou", NEGATIVE_IOU)
            return cls(Sam3VideoTracker.from_pretrained(segmenter, dev, dtype, threshold, cap, overlap))
        tracker = DetectTrackSam2.from_pretrained(detector, segmenter, dev, dtype, redetect, **options)
        return cls(tracker, redetect)

    def track(
        self,
        video: str | Path,
        prompt: str | Prompt = "",
        boxes=None,
        stride: int = 1,
        max_frames: int | None = None,
        fps: float | None = None,
        points=None,
    ) -> Iterator[tuple[Frame, list[Track]]]:
        """(frame, its tracks) for every `stride`-th frame, at most `max_frames`.

        `prompt`: text, or a request.Prompt (class map, negative phrases, per-class
        thresholds; exemplars with a detector that takes them), applied to each frame's
        detections as for one image. `boxes`: XYXY pixels on the first frame, tracked
        instead of what a prompt names; `points` [[X, Y, LABEL], ...] on the first frame
        (with at most one box) for one object (detector + SAM 2 only). `fps`: the rate of
        a folder of frames (default 30). Raises VitsamError for a bad video, at the frame
        where decoding failed.
        """
        with VideoReader(video, fps) as reader:
            self.tracker.start(prompt, boxes, points)
            for frame in reader.frames(stride, max_frames):
                yield frame, self.tracker.step(frame.image)

    def segment(
        self,
        video: str | Path,
        prompt: str | Prompt,
        out_dir: str | Path,
        name: str | None = None,
        formats: tuple[str, ...] = VIDEO_FORMATS,
        boxes=None,
        stride: int = 1,
        max_frames: int | None = None,
        fps: float | None = None,
        on_frame: Callable[[Frame, list[Track]], None] | None = None,
        points=None,
    ) -> VideoResult:
        """Write NAME.overlay.mp4 (masks, ids and labels drawn; fps / stride) and NAME.json.

        NAME.json: the video's size as displayed (upright: `rotation`, clockwise degrees,
        and `mirrored` say what was done to the decoded frames; boxes and masks are on the
        upright frames), fps and declared frame count, then per processed frame its index,
        time (s) and detections (track_id, label, score, XYXY box, COCO RLE mask). A bad
        stream mid-way stops the run with what was done kept: both files are valid and the
        JSON says where and why it stopped (`VideoResult.stopped` too). An error before the
        first frame (missing, unreadable, no video stream, first frame undecodable) raises
        VitsamError. The header records the request beyond the text (`classes`,
        `box_thresholds`, `exemplars`, `negatives`, `points`), and with negative phrases
        each frame says what each removed (`removed`). Prompt, boxes and points as for
        `track`.
        """
        self.tracker.start(prompt, boxes, points)  # bad prompts fail before any file is made
        request = prompt if isinstance(prompt, Prompt) else None
        text = ", ".join(request.classes) if request else prompt
        reader = VideoReader(video, fps)
        info, out = reader.info, Path(out_dir)
        try:  # boxes and clicks off the frame fail before any file is made
            if boxes is not None:
                check_boxes(boxes, (info.width, info.height))
            if points is not None:
                check_points(points, (info.width, info.height))
        except VitsamError:
            reader.close()
            raise
        name = name or Path(video).stem
        out.mkdir(parents=True, exist_ok=True)
        result = VideoResult(info, 0)
        header = {
            "video": info.path, "width": info.width, "height": info.height,
            "rotation": info.rotation, "mirrored": info.mirrored,
            "fps": round(info.fps, 3), "frame_count": info.frame_count, "prompt": text,
            **(request.to_json() if request else {}),
            **({"negatives": list(request.negatives)} if request and request.negatives else {}),
            **({"points": [list(map(float, p)) for p in points]} if points is not None else {}),
            "detector": self.tracker.detector_name if boxes is None and points is None else "",
            "segmenter": self.tracker.name, "stride": stride, "max_frames": max_frames,
            "redetect": self.redetect,
        }  # fmt: skip
        doc = FramesJson(out / f"{name}.json", header) if "json" in formats else None
        overlay = None
        if "overlay" in formats:
            overlay = OverlayWriter(out / f"{name}.overlay.mp4", info.width, info.height, info.fps / stride)
        result.files = [w.path for w in (overlay, doc) if w is not None]
        try:
            for frame in reader.frames(stride, max_frames):
                tracks = self.tracker.step(frame.image)
                if doc is not None:
                    record = {"frame": frame.index, "time": round(frame.time, 4),
                              "detections": [t.to_json() for t in tracks]}  # fmt: skip
                    if request is not None and request.negatives:
                        record["removed"] = {n: self.tracker.removed.get(n, 0)
                                             for n in request.negatives}  # fmt: skip
                    doc.add(record)
                if overlay is not None:
                    overlay.write(draw_overlay(frame.image, tracks, ids=[t.track_id for t in tracks]))
                result.frames += 1
                result.track_ids.update(t.track_id for t in tracks)
                if on_frame is not None:
                    on_frame(frame, tracks)
        except VitsamError as e:
            result.stopped = str(e)
        except KeyboardInterrupt:
            result.stopped = "interrupted"
            raise
        finally:
            reader.close()
            if overlay is not None:
                overlay.close()
            if doc is not None:
                doc.close(result.stopped)
        return result
