"""Labelled videos: per-video tracks that survive interruption, and video datasets built
from them.

    OUT/run.json                 the settings the tracks are made with (a rerun must match)
    OUT/results/NAME.json        one per video: the frames JSON of video.VideoSegmenter
    OUT/mot/NAME/gt/gt.txt       MOT Challenge text, one per video, and its seqinfo.ini
    OUT/ytvis.json               YouTube-VIS (COCO-video) JSON: every video, one RLE per
                                 processed frame per track
    OUT/images/NAME/000123.jpg   the processed frames, upright (ytvis' file_names; coco, yolo)
    OUT/annotations.json         COCO on those frames, each annotation with its `track_id`
    OUT/labels/NAME/000123.txt   YOLO segmentation on those frames, and OUT/data.yaml
    OUT/label-studio/tasks.json  Label Studio tasks (one per video, its tracks as
                                 `videorectangle` predictions) and config.xml; the videos
                                 in OUT/videos/ (hard links, else copies)

A video whose result says `"complete": true` is done and a rerun skips it; one cut short
(a kill, Ctrl-C) is redone from its first frame, so that its track ids stay one run's. A
video that breaks mid-way (a corrupt stream) keeps the frames before the break: its
result says where it `stopped`, the datasets hold those frames, and ytvis.json's video
entry carries the same `stopped`. The datasets are rebuilt from the result files at the
end of every run.

MOT rows (Milan et al. 2016, "MOT16: A Benchmark for Multi-Object Tracking"):
`frame, id, bb_left, bb_top, width, height, conf, class, visibility`, frames and
coordinates 1-based as in MOT Challenge files, `conf` the track's score, `class` the
category id (1-based, in the request's class order), `visibility` 1; py-motmetrics reads
them with `motmetrics.io.loadtxt(path, fmt="mot15-2D")`. YouTube-VIS (Yang et al. 2019,
"Video Instance Segmentation"): `videos` (`file_names` per processed frame, as
`NAME/000123.jpg`), `annotations` (per track: `segmentations`, `bboxes` XYWH and
`areas`, one per processed frame, null where the track is absent), `categories`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vitsam.errors import VitsamError
from vitsam.files import replacing, write_atomic
from vitsam.seg.labelset import check_run, output_name, write_run

VIDEO_KINDS = ("mot", "ytvis", "coco", "yolo", "label-studio")
FRAME_KINDS = ("ytvis", "coco", "yolo")  # the exports that need the frames in OUT/images
VideoEntry = tuple[Path, str]  # (a video file or a folder of frames, its output name)


@dataclass
class VideoExportSummary:
    path: Path  # OUT/mot or OUT/ytvis.json
    videos: int = 0
    tracks: int = 0
    rows: int = 0  # MOT lines, or YouTube-VIS per-frame masks
    stopped: int = 0  # videos that broke mid-way (their frames before the break are in)


def parse_video_exports(text: str | None) -> tuple[str, ...]:
    """'mot,ytvis' -> ('mot', 'ytvis'). Raises VitsamError for another name."""
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in (text or "").split(",") if k.strip()))
    wrong = [k for k in kinds if k not in VIDEO_KINDS]
    if wrong:
        raise VitsamError(
            f"--export for videos takes {', '.join(VIDEO_KINDS)} (comma-separated), "
            f"not {', '.join(wrong)}"
        )
    return kinds


def named_videos(inputs: list[Path], is_video) -> list[VideoEntry]:
    """Video files, folders of them (searched recursively) and folders of frames (given as
    `is_video` says) -> (path, output name): 'sub/clip.mp4' -> 'sub__clip'. A name that
    two inputs would share gets '-2', '-3' in input order, so none is overwritten."""
    found: list[VideoEntry] = []
    for item in inputs:
        if item.is_dir() and not is_video(item):
            found += [(f, output_name(f.relative_to(item)))
                      for f in sorted(item.rglob("*")) if f.is_file() and is_video(f)]  # fmt: skip
        else:
            found.append((item, item.stem if item.is_file() else item.name))
    seen: dict[str, int] = {}
    out = []
    for path, name in found:
        seen[name] = seen.get(name, 0) + 1
        out.append((path, name if seen[name] == 1 else f"{name}-{seen[name]}"))
    return out


class VideoDataset:
    """The labelled folder OUT for videos and one set of settings (module docstring).

    `settings` is what must match on a rerun (LabelSettings.to_json() and the video
    options); `categories` the request's classes, in order. Raises VitsamError when OUT
    holds tracks made with other settings.
    """

    def __init__(self, root: str | Path, settings: dict, categories: list[str]) -> None:
        self.root, self.categories = Path(root), list(categories)
        self.results = self.root / "results"
        check_run(self.root, settings, {})
        self.results.mkdir(parents=True, exist_ok=True)
        write_run(self.root, settings)

    def result_path(self, name: str) -> Path:
        return self.results / f"{name}.json"

    def track(self, settings, segmenter, video: Path, name: str, kinds: tuple[str, ...],
              on_frame=None, **options):  # fmt: skip
        """Track one video into results/NAME.json (labelset.LabelSettings.track), keeping
        its processed frames in images/ when `kinds` need them. Options as
        VideoSegmenter.segment takes them (formats, stride, max_frames, fps)."""
        keep = bool(set(kinds) & set(FRAME_KINDS))

        def each(frame, tracks):
            if keep:
                self.save_frame(name, frame.index, frame.image)
            if on_frame is not None:
                on_frame(frame, tracks)

        return settings.track(segmenter, video, self.results, name, on_frame=each, **options)

    def save_frame(self, name: str, index: int, image) -> None:
        """Frame `index` of NAME (a PIL image, upright) as OUT/images/NAME/{index:06d}.jpg."""
        dest = self.root / "images" / name / f"{index:06d}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with replacing(dest) as tmp:
            image.save(tmp, format="JPEG", quality=95)

    def done(self, name: str) -> bool:
        """Whether NAME's tracks are whole: complete, or stopped by a broken stream (a rerun
        would stop there again). A cut run (a kill, Ctrl-C) is not done."""
        doc = self._read(name)
        return doc is not None and (doc["complete"] or doc["stopped"] not in (None, "interrupted"))

    def _read(self, name: str) -> dict | None:
        try:
            doc = json.loads(self.result_path(name).read_text())
        except (OSError, ValueError):
            return None  # absent, or cut mid-write by a kill: redone
        return doc if "complete" in doc and "frames" in doc else None

    def export(self, entries: list[VideoEntry], kinds: tuple[str, ...]) -> list[VideoExportSummary]:
        """Build the datasets `kinds` from the result files of `entries` (those without one
        are left out)."""
        from vitsam.seg.exports import write_coco, write_yolo

        docs = [(name, doc) for _, name in entries if (doc := self._read(name)) is not None]
        ids = {c: i + 1 for i, c in enumerate(self.categories)}
        out = []
        if "mot" in kinds:
            out.append(self._mot(docs, ids))
        if "ytvis" in kinds:
            out.append(self._ytvis(docs, ids))
        if "coco" in kinds:
            out.append(write_coco(self._frames(docs), self.categories, self.root / "annotations.json"))
        if "yolo" in kinds:
            out.append(write_yolo(self._frames(docs), self.categories, self.root))
        if "label-studio" in kinds:
            out.append(self._label_studio(entries, docs))
        return out

    def _label_studio(self, entries: list[VideoEntry], docs: list[tuple[str, dict]]):
        from vitsam.seg import label_studio as ls
        from vitsam.seg.labelset import place_file

        path_of = {name: path for path, name in entries}
        (self.root / "videos").mkdir(exist_ok=True)
        keyframes = 0

        def tasks():
            nonlocal keyframes
            for name, doc in docs:
                source = path_of[name]
                relative = f"videos/{name}{source.suffix.lower()}"
                place_file(source, self.root / relative)
                regions = ls.video_results(doc)
                keyframes += sum(len(r["value"]["sequence"]) for r in regions)
                yield {"video": ls.local_file_url(relative)}, ls.prediction(regions, ls.model_version(doc))

        fps = docs[0][1]["fps"] if docs else 0.0
        written = ls.write_tasks(tasks(), self.root, self.categories, video=True, fps=fps)
        stopped = sum(doc["stopped"] is not None for _, doc in docs)
        return VideoExportSummary(written.path, written.images, written.annotations, keyframes, stopped)

    @staticmethod
    def _frames(docs: list[tuple[str, dict]]):
        """Each processed frame as a dataset entry: images/NAME/000123.jpg and its tracks."""
        from vitsam.seg.exports import DatasetEntry

        for name, doc in docs:
            for f in doc["frames"]:
                frame = {"width": doc["width"], "height": doc["height"],
                         "detections": f["detections"]}  # fmt: skip
                yield DatasetEntry(f"{name}/{f['frame']:06d}.jpg", frame)

    def _mot(self, docs: list[tuple[str, dict]], ids: dict[str, int]) -> VideoExportSummary:
        summary = VideoExportSummary(self.root / "mot")
        for name, doc in docs:
            seq = summary.path / name
            lines, tracks = [], set()
            for f in doc["frames"]:
                for d in f["detections"]:
                    x1, y1, x2, y2 = d["box"]
                    lines.append(f"{f['frame'] + 1},{d['track_id']},{x1 + 1:.2f},{y1 + 1:.2f},"
                                 f"{x2 - x1:.2f},{y2 - y1:.2f},{d['score']:.4f},"
                                 f"{_category(d['label'], ids)},1")  # fmt: skip
                    tracks.add(d["track_id"])
            (seq / "gt").mkdir(parents=True, exist_ok=True)
            write_atomic(seq / "gt" / "gt.txt", "".join(line + "\n" for line in lines))
            length = doc["frame_count"] or (doc["frames"][-1]["frame"] + 1 if doc["frames"] else 0)
            write_atomic(seq / "seqinfo.ini", "[Sequence]\n" f"name={name}\n"
                         f"frameRate={doc['fps']:g}\n" f"seqLength={length}\n"
                         f"imWidth={doc['width']}\n" f"imHeight={doc['height']}\n")  # fmt: skip
            summary.videos += 1
            summary.tracks += len(tracks)
            summary.rows += len(lines)
            summary.stopped += doc["stopped"] is not None
        return summary

    def _ytvis(self, docs: list[tuple[str, dict]], ids: dict[str, int]) -> VideoExportSummary:
        summary = VideoExportSummary(self.root / "ytvis.json")
        videos, annotations = [], []
        for vid, (name, doc) in enumerate(docs, start=1):
            frames = doc["frames"]
            w, h = doc["width"], doc["height"]
            video = {"id": vid, "name": name, "width": w, "height": h, "length": len(frames),
                     "file_names": [f"{name}/{f['frame']:06d}.jpg" for f in frames],
                     "frame_indices": [f["frame"] for f in frames]}  # fmt: skip
            if doc["stopped"] is not None:
                video["stopped"] = doc["stopped"]
                summary.stopped += 1
            videos.append(video)
            per_track: dict[int, dict] = {}
            for k, f in enumerate(frames):
                for d in f["detections"]:
                    if d.get("mask") is None:
                        continue
                    ann = per_track.setdefault(d["track_id"], {
                        "id": 0, "video_id": vid, "category_id": _category(d["label"], ids),
                        "track_id": d["track_id"], "iscrowd": 0, "width": w, "height": h,
                        "segmentations": [None] * len(frames), "bboxes": [None] * len(frames),
                        "areas": [None] * len(frames), "score": 0.0,
                    })  # fmt: skip
                    x1, y1, x2, y2 = d["box"]
                    ann["segmentations"][k] = d["mask"]
                    ann["bboxes"][k] = [x1, y1, x2 - x1, y2 - y1]
                    ann["areas"][k] = d["area"]
                    ann["score"] = max(ann["score"], d["score"])
                    summary.rows += 1
            for tid in sorted(per_track):
                per_track[tid]["id"] = len(annotations) + 1
                annotations.append(per_track[tid])
            summary.tracks += len(per_track)
        summary.videos = len(videos)
        doc = {"info": {"description": "vitsam video tracks (YouTube-VIS layout)"},
               "videos": videos, "annotations": annotations,
               "categories": [{"id": i, "name": c} for c, i in ids.items()]}  # fmt: skip
        write_atomic(summary.path, json.dumps(doc) + "\n")
        return summary


def _category(label: str, ids: dict[str, int]) -> int:
    if label not in ids:
        raise VitsamError(
            f"a track is labelled {label!r}, which is not among the categories {list(ids)}: "
            "export with the prompt the tracks were made with"
        )
    return ids[label]
