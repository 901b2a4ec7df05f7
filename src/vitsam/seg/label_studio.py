"""Label Studio: results as pre-annotations (`predictions`) a person reviews and fixes.

Label Studio (HumanSignal) imports a JSON list of tasks, each `{"data": {...},
"predictions": [{"model_version", "score", "result": [...]}]}`, and shows the results
through a labelling config (XML). What vitsam writes, for the config `config_xml` makes:

- an image: per detection a `rectanglelabels` region (`x`, `y`, `width`, `height` in
  percent of the image) and a `brushlabels` region, the mask as Label Studio's brush RLE
  encoded by label-studio-sdk's own converter (`label_studio_sdk.converter.brush.mask2rle`);
- a video: per track one `videorectangle` region, its `sequence` the track's box on each
  processed frame (frames 1-based; a keyframe where the track ends or pauses has
  `enabled: false`, so Label Studio does not interpolate the box across the gap).

The media are referenced as Label Studio's local storage serves them:
`/data/local-files/?d=images/NAME.jpg`, relative to the dataset folder, which is then
Label Studio's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT` (see the README).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from vitsam.errors import VitsamError
from vitsam.seg.results import decode_rle

LOCAL_FILES = "/data/local-files/?d="  # Label Studio's local storage URL prefix
IMAGE, BOX, MASK = "image", "box", "mask"  # the config's tag names, as results name them
VIDEO, TRACK, TRACK_LABELS = "video", "box", "videoLabels"


def require_sdk() -> None:
    """Raise VitsamError, saying how to install it, when label-studio-sdk is missing."""
    try:
        import label_studio_sdk  # noqa: F401
    except ImportError:
        raise VitsamError(
            "Label Studio support needs label-studio-sdk: pip install -e '.[label-studio]'"
        ) from None


def local_file_url(relative: str) -> str:
    """A path below the document root -> the URL Label Studio's local storage serves it at."""
    return LOCAL_FILES + quote(relative, safe="/")


def config_xml(categories: list[str], video: bool = False, fps: float = 0.0) -> str:
    """The labelling config for vitsam's results: Image + RectangleLabels + BrushLabels, or
    Video + VideoRectangle + Labels (a `framerate` where the clip has one)."""
    labels = "".join(f"    <Label value={quoteattr(c)}/>\n" for c in categories)
    if video:
        rate = f' framerate="{fps:g}"' if fps else ""
        return (f'<View>\n  <Labels name="{TRACK_LABELS}" toName="{VIDEO}">\n{labels}  </Labels>\n'
                f'  <Video name="{VIDEO}" value="${VIDEO}"{rate}/>\n'
                f'  <VideoRectangle name="{TRACK}" toName="{VIDEO}"/>\n</View>\n')  # fmt: skip
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}" zoom="true"/>\n'
            f'  <RectangleLabels name="{BOX}" toName="{IMAGE}">\n{labels}  </RectangleLabels>\n'
            f'  <BrushLabels name="{MASK}" toName="{IMAGE}">\n{labels}  </BrushLabels>\n</View>\n')  # fmt: skip


def _percent(box, width: int, height: int) -> dict:
    x1, y1, x2, y2 = box
    return {"x": 100 * x1 / width, "y": 100 * y1 / height,
            "width": 100 * (x2 - x1) / width, "height": 100 * (y2 - y1) / height, "rotation": 0}  # fmt: skip


def image_results(doc: dict, box: str | None = BOX, mask: str | None = MASK,
                  to_name: str = IMAGE) -> list[dict]:  # fmt: skip
    """A per-image document (Segmentation.to_json()) -> Label Studio result regions: for
    each detection a rectangle (from_name `box`) and its mask as brush RLE (`mask`);
    None leaves that kind out. Scores ride on each region."""
    from label_studio_sdk.converter.brush import mask2rle

    w, h = doc["width"], doc["height"]
    out = []
    for d in doc["detections"]:
        common = {"to_name": to_name, "original_width": w, "original_height": h,
                  "image_rotation": 0, "score": d["score"]}  # fmt: skip
        if box:
            out.append({"id": _id(), "type": "rectanglelabels", "from_name": box, **common,
                        "value": {**_percent(d["box"], w, h), "rectanglelabels": [d["label"]]}})  # fmt: skip
        if mask and d.get("mask"):
            rle = mask2rle(decode_rle(d["mask"]).astype(np.uint8) * 255)
            out.append({"id": _id(), "type": "brushlabels", "from_name": mask, **common,
                        "value": {"format": "rle", "rle": rle, "brushlabels": [d["label"]]}})  # fmt: skip
    return out


def video_results(doc: dict) -> list[dict]:
    """A video's frames JSON (video.VideoSegmenter) -> one `videorectangle` region per
    track: its box on every processed frame it is on, frames 1-based."""
    w, h = doc["width"], doc["height"]
    fps = doc["fps"] or 1.0
    frames = doc["frames"]
    present = [{d["track_id"]: d for d in f["detections"]} for f in frames]
    tracks: dict[int, dict] = {}
    for k, f in enumerate(frames):
        for tid, d in present[k].items():
            region = tracks.setdefault(tid, {
                "id": f"track{tid}", "type": "videorectangle", "from_name": TRACK,
                "to_name": VIDEO, "origin": "prediction", "score": 0.0,
                "value": {"sequence": [], "labels": [d["label"]],
                          "framesCount": doc["frame_count"] or len(frames),
                          "duration": (doc["frame_count"] or len(frames)) / fps},
            })  # fmt: skip
            goes_on = k + 1 < len(frames) and tid in present[k + 1]
            region["value"]["sequence"].append({
                "frame": f["frame"] + 1, "time": f["frame"] / fps, "enabled": goes_on,
                **_percent(d["box"], w, h),
            })  # fmt: skip
            region["score"] = max(region["score"], d["score"])
    return [tracks[t] for t in sorted(tracks)]


def prediction(results: list[dict], model_version: str) -> dict:
    """Regions -> one Label Studio prediction; its score is the mean region score (0 when
    there are none)."""
    scores = [r["score"] for r in results if "score" in r]
    return {"model_version": model_version, "score": float(np.mean(scores)) if scores else 0.0,
            "result": results}  # fmt: skip


def model_version(doc: dict) -> str:
    """'vitsam:DETECTOR+SEGMENTER' from a result document (the segmenter alone for SAM 3
    or box prompts)."""
    parts = [p for p in (doc.get("detector"), doc.get("segmenter")) if p]
    return "vitsam:" + "+".join(dict.fromkeys(parts))


@dataclass
class ProjectPrompt:
    """What a Label Studio project asks vitsam for, read from its labelling config."""

    prompt: str  # the labels searched for by themselves, '. '-joined
    classes: dict[str, list[str]]  # labels the class map gives phrases for
    tags: dict[str, str]  # {"box": RectangleLabels name, "mask": BrushLabels name, "to_name": ...}
    data_key: str  # the task data field holding the image ("image" for value="$image")
    label_of: dict[str, str]  # vitsam's lower-case label -> the config's spelling


def prompt_from_config(config: str, classes: dict[str, list[str]] | None = None) -> ProjectPrompt:
    """A project's labelling config -> the request its labels make (ProjectPrompt).

    Each label of the config's RectangleLabels / BrushLabels is a class; a label the class
    map `classes` names is searched for by that map's phrases, any other by the label
    itself. Raises VitsamError for a config that does not parse, or has no such control,
    no labels, or no Image for them.
    """
    from label_studio_sdk.label_interface import LabelInterface

    from vitsam.seg.request import Prompt

    try:
        interface = LabelInterface(config)
    except Exception as e:  # the SDK raises its own parse errors
        raise VitsamError(f"the project's labelling config does not parse: {e}") from None
    tags: dict[str, str] = {}
    labels: list[str] = []
    for control in interface.controls:
        kind = {"RectangleLabels": "box", "BrushLabels": "mask"}.get(control.tag)
        if kind and kind not in tags:
            tags[kind] = control.name
            tags.setdefault("to_name", control.to_name[0])
            labels += [v for v in control.labels if v not in labels]
    if not tags or not labels:
        raise VitsamError(
            "the project's labelling config has no RectangleLabels or BrushLabels with labels: "
            "vitsam answers those (see config_xml)"
        )
    image = next((o for o in interface.objects if o.name == tags["to_name"]), None)
    if image is None or image.tag != "Image" or not str(image.value).startswith("$"):
        raise VitsamError(
            f"the project's {tags['to_name']!r} is not an Image with value=\"$field\": "
            "vitsam predicts on images"
        )
    mapped = {k.lower(): v for k, v in (classes or {}).items()}
    plain = ". ".join(lab for lab in labels if lab.lower() not in mapped)
    given = {lab: mapped[lab.lower()] for lab in labels if lab.lower() in mapped}
    Prompt.parse(plain, given or None)  # a label twice, or under two classes: refused here
    return ProjectPrompt(plain, given, tags, str(image.value)[1:],
                         {lab.lower(): lab for lab in labels})  # fmt: skip


def _id() -> str:
    return uuid.uuid4().hex[:10]


def write_tasks(tasks, root, categories: list[str], video: bool = False, fps: float = 0.0):
    """ROOT/label-studio/tasks.json (the tasks, streamed: memory holds one at a time) and
    ROOT/label-studio/config.xml (config_xml). `tasks` yields (data, prediction or None).
    Returns an exports.ExportSummary (images = tasks, annotations = regions)."""
    import json

    from vitsam.files import replacing, write_atomic
    from vitsam.seg.exports import ExportSummary

    folder = root / "label-studio"
    folder.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(folder / "tasks.json")
    with replacing(summary.path) as tmp, open(tmp, "w") as f:
        f.write("[\n")
        for data, predicted in tasks:
            task = {"data": data, "predictions": [predicted] if predicted else []}
            f.write(("," if summary.images else "") + json.dumps(task) + "\n")
            summary.images += 1
            summary.annotations += len(predicted["result"]) if predicted else 0
        f.write("]\n")
    write_atomic(folder / "config.xml", config_xml(categories, video, fps))
    return summary
