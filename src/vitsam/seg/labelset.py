"""A labelled folder: per-image results that survive interruption, and datasets built from them.

    OUT/run.json            the settings the labels are made with (a rerun must match)
    OUT/results/NAME.json   one per finished image (written whole, then renamed into place)
    OUT/images/NAME.ext     the originals (hard links or copies; links if asked), for the datasets
    OUT/annotations.json    COCO                     OUT/labels/, OUT/data.yaml   YOLO

Both engines (the local loop in `vitsam segment` and Ray) write through a LabelSet: an
image whose result file exists is done, and a rerun with the same OUT skips it. The
datasets are rebuilt from the result files at the end of every run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from vitsam.errors import VitsamError
from vitsam.files import TEMP_SUFFIX, remove, replacing, write_atomic
from vitsam.images import list_images, upright
from vitsam.seg.exports import DatasetEntry, ExportSummary, write_coco, write_yolo
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
    check_clicks,
    no_box_prompts,
    no_negative_exemplars,
    text_native,
)

# The unit of work of a folder run, everywhere: one image, as (a local path or a URI, its
# output name). local_runner.EntryResult says what became of one; exports.DatasetEntry is
# one in a dataset.
Entry = tuple[Path | str, str]
# How local originals go into OUT/images/: "auto" a hard link where the filesystem allows,
# else a copy (a self-contained dataset either way); "copy" always a copy of its own;
# "link" a relative symbolic link (small, but breaks when the dataset moves without them).
IMAGE_MODES = ("auto", "copy", "link")
log = logging.getLogger("vitsam")


@dataclass
class LabelSettings:
    """What decides an image's labels: the prompt (or boxes), the models, the thresholds."""

    prompt: str = ""  # phrases separated by '.'; the dataset's categories, in this order
    boxes: list[list[float]] = field(default_factory=list)  # XYXY pixels: no detector
    points: list[list[float]] = field(default_factory=list)  # [X, Y, LABEL] clicks: no detector
    detector: str = DEFAULT_DETECTOR
    segmenter: str = DEFAULT_SEGMENTER
    box_threshold: float = BOX_THRESHOLD
    text_threshold: float = TEXT_THRESHOLD
    nms_iou: float = NMS_IOU
    max_detections: int = MAX_DETECTIONS
    negative: str = ""  # phrases that must not be labelled (request.Prompt)
    classes: dict[str, list[str]] = field(default_factory=dict)  # class -> its phrases
    box_thresholds: dict[str, float] = field(default_factory=dict)  # class -> threshold
    negative_iou: float = NEGATIVE_IOU
    exemplars: list[dict] = field(default_factory=list)  # Exemplar.to_json() each

    def request(self) -> Prompt:
        """The prompt, class map, negatives and per-class thresholds, resolved and checked."""
        examples = [Exemplar.from_json(e) for e in self.exemplars]
        return Prompt.parse(
            self.prompt, self.classes or None, self.negative, self.box_thresholds, examples
        )

    def categories(self) -> list[str]:
        if self.points:
            return ["object"]
        return ["box"] if self.boxes else list(self.request().classes)

    def check(self) -> None:
        """Raise VitsamError for an empty prompt, a bad box or an unknown model name."""
        from vitsam.seg.registry import DETECTORS, SEGMENTERS, resolve

        if (self.points or self.boxes) and (
            self.negative or self.classes or self.box_thresholds or self.exemplars
        ):
            raise VitsamError(
                "--negative, --classes, --exemplar and per-class --box-threshold are for "
                "detection: leave them out with --box or --point"
            )
        if self.points:
            check_clicks(self.points, self.boxes, hint=": give one --box")
            if text_native(self.segmenter):
                raise no_box_prompts(self.segmenter)
        if self.boxes:
            check_boxes(self.boxes)
        elif not self.points:
            self.request()
            if not text_native(self.segmenter):  # SAM 3 is its own detector
                kind, _ = resolve(self.detector, DETECTORS, "detector")
                if self.exemplars and kind != "owlv2":
                    raise VitsamError(
                        f"{self.detector} takes text only: exemplars need --detector owlv2 "
                        "(OWLv2's image-guided detection) or --segmenter sam3"
                    )
                if any(e.get("negative") for e in self.exemplars):
                    raise no_negative_exemplars()
            for e in self.exemplars:  # a box off its reference image fails before models load
                if e.get("image"):
                    from vitsam.images import open_image

                    check_boxes([e["box"]], open_image(e["image"]).size)
        resolve(self.segmenter, SEGMENTERS, "segmenter")

    def load(self, device: str = "auto", precision: str = "auto", runtime: str = "torch"):
        """The TextSegmenter these settings describe (no detector for box prompts), in
        `runtime` (torch, or openvino: see compiled.py)."""
        from vitsam.seg.pipeline import TextSegmenter

        return TextSegmenter.from_pretrained(**self._models(device, precision), runtime=runtime)

    def load_video(self, device: str = "auto", precision: str = "auto", redetect: int = 20):
        """The video.VideoSegmenter these settings describe (no detector for boxes or clicks)."""
        from vitsam.seg.video import VideoSegmenter

        return VideoSegmenter.from_pretrained(**self._models(device, precision), redetect=redetect)

    def _models(self, device: str, precision: str) -> dict:
        """The models and detection options, as TextSegmenter and VideoSegmenter take them."""
        return dict(
            detector=None if self.boxes or self.points else self.detector,
            segmenter=self.segmenter,
            device=device,
            precision=precision,
            box_threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
            negative_iou=self.negative_iou,
        )

    def track(self, segmenter, video: Path, out_dir: Path, name: str, **options):
        """One video -> its frames JSON (and overlay) in `out_dir` as NAME, by the prompt,
        the boxes or the clicks; options as VideoSegmenter.segment takes them."""
        prompted = bool(self.boxes or self.points)
        return segmenter.segment(
            video, self.prompt if prompted else self.request(), out_dir, name=name,
            boxes=self.boxes or None, points=self.points or None, **options,
        )  # fmt: skip

    def segment(self, segmenter, image: Image.Image):
        """One RGB image -> its Segmentation, by the prompt or the boxes."""
        if self.points:
            box = self.boxes[0] if self.boxes else None
            return segmenter.segment_points(image, self.points, box, prompt=self.prompt)
        if self.boxes:
            return segmenter.segment_boxes(image, self.boxes, prompt=self.prompt)
        result = segmenter.segment(image, self.request())
        result.prompt = self.prompt
        return result

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists


def check_run(root: Path, mine: dict, defaults: dict) -> None:
    """Raise VitsamError when ROOT/run.json records settings other than `mine` (a field
    newer than the folder counts as its default): a rerun resumes only what it started."""
    manifest = root / "run.json"
    if not manifest.exists():
        return
    theirs = json.loads(manifest.read_text())
    changed = [f"{k} {theirs.get(k, defaults.get(k))!r} -> {v!r}"
               for k, v in mine.items() if theirs.get(k, defaults.get(k)) != v]  # fmt: skip
    if changed:
        raise VitsamError(
            f"{root} was labelled with other settings ({'; '.join(changed)}): "
            "use another --out, or delete that folder to start over"
        )


def write_run(root: Path, mine: dict) -> None:
    """ROOT/run.json, the settings of the first run in ROOT (check_run holds later ones to it)."""
    if not (root / "run.json").exists():
        write_atomic(root / "run.json", json.dumps(mine, indent=1) + "\n")


def output_name(relative: PurePosixPath | Path) -> str:
    """An image's path below its input folder -> its output name: 'sub/cat.jpg' -> 'sub__cat'."""
    return "__".join(relative.with_suffix("").parts)


def named_images(inputs: list[str | Path]) -> list[Entry]:
    """Local files and folders -> (path, output name) per image, folders searched recursively."""
    out: list[Entry] = []
    for item in map(Path, inputs):
        for f in list_images([item]):
            out.append((f, output_name(f.relative_to(item) if item.is_dir() else Path(f.name))))
    return out


def suffix(location: Path | str) -> str:
    return PurePosixPath(str(location)).suffix


class LabelSet:
    """The labelled folder OUT for one set of LabelSettings (see the module docstring).

    Raises VitsamError when OUT holds results made with other settings.
    """

    def __init__(self, root: str | Path, settings: LabelSettings) -> None:
        self.root, self.settings = Path(root), settings
        self.results = self.root / "results"
        self.images = self.root / "images"
        mine = settings.to_json()
        check_run(self.root, mine, LabelSettings().to_json())
        self.results.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.results, self.images, self.root / "labels"):
            for stale in folder.glob(f"*{TEMP_SUFFIX}") if folder.is_dir() else ():
                remove(stale)  # what a kill left mid-write (a file, a link): never ours to keep
        write_run(self.root, mine)

    def result_path(self, name: str) -> Path:
        return self.results / f"{name}.json"

    def pending(self, entries: list[Entry]) -> list[Entry]:
        """The entries without a result yet. Two images with one output name are an error."""
        seen: dict[str, Path | str] = {}
        for location, name in entries:
            if name in seen:
                raise VitsamError(
                    f"{seen[name]} and {location} would both be labelled {name!r}: "
                    "rename one (names drop the extension)"
                )
            seen[name] = location
        return [(loc, name) for loc, name in entries if not self.result_path(name).exists()]

    def add(self, name: str, doc: dict, data: bytes | None = None, ext: str = "") -> None:
        """Record a finished image: its bytes into images/ when given (a remote source),
        then its result, written whole and renamed into place, which marks it done."""
        if data is not None:
            self.images.mkdir(exist_ok=True)
            _place_bytes(data, self.images / f"{name}{ext}")
        write_atomic(self.result_path(name), json.dumps(doc, indent=1) + "\n")

    def read(self, name: str) -> dict:
        return json.loads(self.result_path(name).read_text())

    def export(
        self,
        entries: list[Entry],
        kinds: tuple[str, ...],
        polygons: bool = False,
        image_mode: str = "auto",
    ) -> list[ExportSummary]:
        """Rebuild each dataset kind ('coco', 'yolo', 'label-studio') from the results of `entries` that
        are done, in entry order; local images are put into images/ as `image_mode` says
        (IMAGE_MODES; what an earlier run left in another mode is converted)."""
        done = [(loc, name) for loc, name in entries if self.result_path(name).exists()]
        if not kinds:
            return []
        self.images.mkdir(exist_ok=True)
        converted = 0
        for location, name in done:
            dest = self.images / f"{name}{suffix(location)}"
            if Path(location).is_file():
                converted += place_image(Path(location), dest, image_mode) == "converted"
            elif not os.path.lexists(dest) and not isinstance(location, str):
                log.warning("%s: gone, so it is not in images/", location)
        if converted:
            what = {"auto": "files", "copy": "copies", "link": "relative links"}[image_mode]
            log.info("images/: %d images from an earlier run made %s", converted, what)

        def items() -> Iterator[DatasetEntry]:
            for location, name in done:
                yield DatasetEntry(f"{name}{suffix(location)}", self.read(name))

        from vitsam.seg import label_studio as ls
        from vitsam.seg.label_studio import write_tasks

        def tasks():
            for item in items():
                regions = ls.image_results(item.doc)
                yield ({"image": ls.local_file_url(f"images/{item.file_name}")},
                       ls.prediction(regions, ls.model_version(item.doc)))  # fmt: skip

        names = self.settings.categories()
        writers = {
            "coco": lambda: write_coco(items(), names, self.root / "annotations.json", polygons),
            "yolo": lambda: write_yolo(items(), names, self.root),
            "label-studio": lambda: write_tasks(tasks(), self.root, names),
        }
        return [writers[k]() for k in kinds]


def parse_exports(text: str | None) -> tuple[str, ...]:
    """'coco,yolo' -> ('coco', 'yolo'); None or '' -> ()."""
    from vitsam.seg.exports import KINDS

    kinds = tuple(k.strip().lower() for k in (text or "").split(",") if k.strip())
    if set(kinds) - set(KINDS):
        video = " (mot and ytvis take videos)" if set(kinds) & {"mot", "ytvis"} else ""
        raise VitsamError(f"--export for images takes {', '.join(KINDS)} (comma-separated){video}")
    return tuple(dict.fromkeys(kinds))


def _save_upright(image: Image.Image, turned: Image.Image, dest: Path) -> None:
    options = {"quality": 95} if image.format == "JPEG" else {}
    with replacing(dest) as tmp:
        turned.save(tmp, format=image.format, **options)


def _is_placed(src: Path, dest: Path, mode: str) -> bool:
    """`dest` already is what `mode` makes of `src` (a file of ours counts for 'auto')."""
    if dest.is_symlink():
        target = os.readlink(dest)
        return mode == "link" and not os.path.isabs(target) and dest.resolve() == src.resolve()
    if not dest.is_file():
        return False
    if mode == "auto":
        return True
    own = not os.path.samefile(src, dest)  # a copy (or an upright re-encode), not a hard link
    return own if mode == "copy" else False


def place_image(src: Path, dest: Path, mode: str = "auto") -> str:
    """Put an original into images/ as `mode` says (IMAGE_MODES), converting whatever a
    run with another mode left at `dest`. An EXIF-rotated original is always written
    upright instead, because the masks are made on the upright image and not every
    reader (torchvision's CocoDetection) applies the EXIF orientation.

    Returns 'kept' (already right), 'placed' (new) or 'converted'.
    """
    if mode not in IMAGE_MODES:
        raise VitsamError(f"image mode {mode!r}: use one of {', '.join(IMAGE_MODES)}")
    if _is_placed(src, dest, mode):
        return "kept"
    existed = os.path.lexists(dest)
    with Image.open(src) as image:
        turned = upright(image)
        if turned is not None:
            if existed and _is_placed(src, dest, "copy"):
                return "kept"  # the upright copy of an earlier run
            _save_upright(image, turned, dest)
            return "converted" if existed else "placed"
    return place_file(src, dest, mode)


def place_file(src: Path, dest: Path, mode: str = "auto") -> str:
    """Put `src` at `dest` as `mode` says (IMAGE_MODES: a hard link else a copy, a copy,
    or a relative link), replacing what is there. Returns 'kept', 'placed' or 'converted'."""
    if _is_placed(src, dest, mode):
        return "kept"
    existed = os.path.lexists(dest)
    source = src.resolve()
    with replacing(dest) as tmp:
        if mode == "link":
            try:  # relative: the dataset and its inputs may move together
                os.symlink(os.path.relpath(source, dest.parent.resolve()), tmp)
            except OSError:  # no symlinks here (Windows without the privilege): copy
                shutil.copyfile(source, tmp)
        elif mode == "auto":
            try:
                os.link(source, tmp)
            except OSError:  # another filesystem, or one without hard links: copy
                shutil.copyfile(source, tmp)
        else:
            shutil.copyfile(source, tmp)
    return "converted" if existed else "placed"


def _place_bytes(data: bytes, dest: Path) -> None:
    """Write an image's original bytes into images/ (upright if EXIF-rotated)."""
    import io

    with Image.open(io.BytesIO(data)) as image:
        turned = upright(image)
        if turned is not None:
            return _save_upright(image, turned, dest)
    write_atomic(dest, data)
