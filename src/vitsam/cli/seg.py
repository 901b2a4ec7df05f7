"""`vitsam segment`: images, folders (resumable datasets), videos and Ray."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vitsam.cli import max_pixels_flag, model_flags
from vitsam.errors import VitsamError

log = logging.getLogger("vitsam")
LONG_VIDEO_S = 600  # a note is printed for videos longer than this (seconds)


def add_commands(sub) -> None:
    from vitsam.devices import DEVICES, PRECISIONS
    from vitsam.seg.compiled import RUNTIMES
    from vitsam.seg.request import (
        BOX_THRESHOLD,
        MAX_DETECTIONS,
        NEGATIVE_IOU,
        NMS_IOU,
        TEXT_THRESHOLD,
    )
    from vitsam.seg.videoio import FOLDER_FPS

    p = sub.add_parser(
        "segment", help="masks for what a text prompt names (Grounding DINO -> SAM 2)"
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|VIDEO")
    max_pixels_flag(p)
    p.add_argument(
        "--prompt",
        help="phrases separated by '.' or ',' (or new lines), e.g. 'cat, remote control'; "
        "case and invisible characters are ignored",
    )
    model_flags(p)
    p.add_argument(
        "--box",
        action="append",
        type=box_value,
        metavar="X1,Y1,X2,Y2",
        help="segment this box instead of detecting (repeatable); pixels, clamped to the "
        "image; negative numbers work: --box -20,-20,100,100",
    )
    p.add_argument(
        "--point",
        action="append",
        type=point_value,
        metavar="X,Y",
        help="a click on the object, for SAM / SAM 2 (repeatable; with at most one --box)",
    )
    p.add_argument(
        "--neg-point",
        action="append",
        type=point_value,
        metavar="X,Y",
        help="a click on the background: not part of the object (repeatable)",
    )
    p.add_argument(
        "--box-threshold",
        action=ThresholdFlag,
        default=BOX_THRESHOLD,
        metavar="[CLASS=]T",
        help="0..1 (default %(default)s); CLASS=T sets one class's, repeatable: "
        "--box-threshold 0.3 --box-threshold cat=0.5",
    )
    p.add_argument(
        "--negative",
        default="",
        metavar="PHRASES",
        help="what must not be labelled, e.g. 'toy car. poster of a car': a detection these "
        "describe better, or that overlaps one of theirs (--negative-iou), is dropped",
    )
    p.add_argument(
        "--negative-iou", type=float, default=NEGATIVE_IOU, metavar="IOU",
        help="overlap with a negative phrase's detection that drops a detection (0 = by "
        "label only; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--exemplar",
        action="append",
        metavar="[CLASS=]REF.jpg:X1,Y1,X2,Y2",
        help="find objects like the one in this box of REF.jpg (repeatable; it may be one of "
        "the images labelled), labelled CLASS (default 'exemplar'); needs --detector owlv2 "
        "or --segmenter sam3",
    )
    p.add_argument(
        "--neg-exemplar",
        action="append",
        metavar="[CLASS=]REF.jpg:X1,Y1,X2,Y2",
        help="not like the one in this box (repeatable): a label-0 box in CLASS's prompt, "
        "beside its --exemplar boxes or its phrases; needs --segmenter sam3",
    )
    p.add_argument(
        "--classes",
        metavar="FILE",
        help="class map, YAML or JSON: 'cat: [kitten, tabby cat]' (several phrases, one "
        "label); with or without --prompt",
    )
    p.add_argument(
        "--text-threshold", type=float, default=TEXT_THRESHOLD, help="0..1 (default %(default)s)"
    )
    p.add_argument(
        "--nms", type=float, default=NMS_IOU, metavar="IOU", help="NMS across phrases (0 = off)"
    )
    p.add_argument(
        "--max-detections",
        type=int,
        default=MAX_DETECTIONS,
        metavar="N",
        help="keep at most N detections per image, best first (default %(default)s)",
    )
    p.add_argument("--out", default="segments", help="output folder (default %(default)s)")
    p.add_argument(
        "--format",
        help="which outputs: overlay,masks,json (default all three; json with --export or ray)",
    )
    p.add_argument(
        "--instance-masks", action="store_true", help="one PNG per detection instead of a label map"
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument(
        "--runtime", default="torch", choices=RUNTIMES,
        help="openvino: the detector and image encoder as compiled graphs, converted once and "
        "cached (CPU, images and folders; pip install -e '.[openvino]'; default %(default)s)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    video = p.add_argument_group("video (.mp4 .mov .webm .mkv, or a folder of frames)")
    video.add_argument("--video", action="store_true", help="each folder given is one video's frames")
    video.add_argument("--max-frames", type=int, help="process at most this many frames")
    video.add_argument("--stride", type=int, default=1, help="process every Nth frame")
    video.add_argument(
        "--redetect", type=int, default=20, metavar="N",
        help="detector + SAM 2: detect again every N processed frames (0 = first frame only)",
    )  # fmt: skip
    video.add_argument(
        "--fps", type=float, help=f"frame rate of a folder of frames (default {FOLDER_FPS:g})"
    )
    g = p.add_argument_group("datasets and scale (resumable: a rerun skips images already done)")
    g.add_argument(
        "--export", metavar="FORMATS",
        help="build a resumable dataset in --out, comma-separated: coco, yolo, label-studio "
        "for images; mot, ytvis, coco, yolo, label-studio for videos",  # fmt: skip
    )
    g.add_argument("--polygons", action="store_true", help="COCO masks as polygons, not RLE")
    placing = g.add_mutually_exclusive_group()
    placing.add_argument(
        "--copy-images",
        dest="image_mode",
        action="store_const",
        const="copy",
        default="auto",
        help="images/ gets copies of its own (default: hard links where the filesystem "
        "allows, else copies)",
    )
    placing.add_argument(
        "--link-images",
        dest="image_mode",
        action="store_const",
        const="link",
        help="images/ gets relative symbolic links to the originals (the dataset then "
        "needs them beside it)",
    )
    g.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="ray: Ray Data (RAY_ADDRESS or a local cluster)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Ray workers, each with its own models (one GPU each where there are GPUs)",
    )
    p.set_defaults(func=cmd_segment, class_box_thresholds={})



class ThresholdFlag(argparse.Action):
    """--box-threshold T (the default) or CLASS=T (one class's), repeatable; the classes'
    go to `class_box_thresholds`."""

    def __call__(self, parser, namespace, value, option_string=None):
        from vitsam.seg.request import class_threshold

        try:
            name, threshold = class_threshold(value)
        except VitsamError as e:
            parser.error(f"{option_string}: {e}")
        if name:
            extra = dict(getattr(namespace, "class_box_thresholds", None) or {})
            extra[name] = threshold
            namespace.class_box_thresholds = extra
        else:
            setattr(namespace, self.dest, threshold)


def _exemplar(text: str, negative: bool = False) -> dict:
    """--exemplar's (or --neg-exemplar's) text -> Exemplar.to_json(), the reference file's
    path made absolute (a Ray worker or a later rerun may run elsewhere). Raises
    VitsamError for a missing file."""
    from vitsam.seg.request import Exemplar

    exemplar = Exemplar.parse(text, negative)
    path = Path(exemplar.image)
    if not path.is_file():
        raise VitsamError(f"exemplar {text!r}: {path}: no such image file")
    return {**exemplar.to_json(), "image": str(path.resolve())}


def point_value(text: str) -> tuple[float, float]:
    """'X,Y' -> two numbers, pixels; the rules (finite, on the image) are check_points'."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X,Y in pixels") from None
    return x, y


def box_value(text: str) -> tuple[float, float, float, float]:
    """'X1,Y1,X2,Y2' -> four numbers; the rules (finite, ordered, clamped) are check_boxes'."""
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X1,Y1,X2,Y2 in pixels") from None
    return x1, y1, x2, y2


def attach_box_values(argv: list[str]) -> list[str]:
    """'--box -20,-20,100,100' -> '--box=-20,-20,100,100': argparse takes a value that
    starts with '-' for an option and stops with "expected one argument"."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            return [*out, arg, *rest]
        value = rest[0] if rest else ""
        if (arg in ("--box", "--point", "--neg-point") and value.startswith("-")
                and not value.startswith("--") and "," in value):  # fmt: skip
            arg = f"{arg}={rest.pop(0)}"
        out.append(arg)
    return out


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vitsam.seg.label_studio import require_sdk
    from vitsam.seg.labelset import LabelSet, named_images, parse_exports
    from vitsam.seg.local_runner import EntryResult, Outputs, segment_folder
    from vitsam.seg.request import check_box_segmenter, check_options
    from vitsam.seg.results import FORMATS, parse_formats
    from vitsam.seg.videoio import is_video_path

    if args.box or args.point or args.neg_point:
        check_box_segmenter(args.segmenter)
    if args.video or any(is_video_path(Path(p)) or holds_videos(Path(p)) for p in args.inputs):
        return _segment_videos(args)
    exports = parse_exports(args.export)
    if "label-studio" in exports:
        require_sdk()
    labelled = bool(exports) or args.engine == "ray"  # a LabelSet folder: resumable
    formats = parse_formats(args.format or ("json" if labelled else ",".join(FORMATS)), FORMATS)
    check_options(args.box_threshold, args.text_threshold, args.nms, args.max_detections,
                  args.negative_iou)  # fmt: skip
    settings = _label_settings(args)
    settings.check()  # bad boxes, prompts, class maps and names fail before any model loads
    if args.engine == "ray":
        return _segment_ray(args, settings, formats, exports)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-file "Loading weights" bars
    images = named_images(args.inputs)
    if not images:
        raise VitsamError(f"no image files in {' '.join(args.inputs)}")
    labels = LabelSet(args.out, settings) if labelled else None
    todo = labels.pending(images) if labels else images
    if len(todo) < len(images):
        print(f"{len(images) - len(todo)} of {len(images)} images already done in {args.out}")
    segmenter = settings.load(args.device, args.precision, args.runtime) if todo else None
    outputs = Outputs(
        labels.results if labels else Path(args.out),
        tuple(f for f in formats if not labels or f != "json"),  # the LabelSet writes it
        args.instance_masks,
        labels,
    )
    bar = tqdm(total=len(todo), desc="segment", disable=len(todo) < 2 or args.quiet, unit="image")

    def show(done: EntryResult) -> None:  # in input order, above the progress bar
        bar.update()
        if done.error:
            tqdm.write(f"error: {done.error}", file=sys.stderr)
        else:
            tqdm.write(_found(done.location, [(d.label, d.score) for d in done.result.detections]))

    with bar:
        failed = segment_folder(todo, lambda im: settings.segment(segmenter, im), outputs, show)
    print(_tally(len(todo), failed, 0, "images", outputs.out))
    if labels:
        _print_exports(labels.export(images, exports, args.polygons, args.image_mode))
    return 1 if failed else 0


def _detection_options(args: argparse.Namespace) -> dict:
    """The detection flags, as TextSegmenter / VideoSegmenter / LabelSettings name them."""
    return {
        "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold,
        "nms_iou": args.nms,
        "max_detections": args.max_detections,
    }


def _label_settings(args: argparse.Namespace):
    from vitsam.seg.labelset import LabelSettings
    from vitsam.seg.request import load_classes

    return LabelSettings(
        negative=args.negative,
        negative_iou=args.negative_iou,
        classes=load_classes(args.classes) if args.classes else {},
        box_thresholds=dict(args.class_box_thresholds),
        exemplars=[_exemplar(text) for text in args.exemplar or []]
        + [_exemplar(text, negative=True) for text in args.neg_exemplar or []],
        prompt=args.prompt or "",
        boxes=[list(b) for b in args.box or []],
        points=[[*p, 1] for p in args.point or []] + [[*p, 0] for p in args.neg_point or []],
        detector=args.detector,
        segmenter=args.segmenter,
        **_detection_options(args),
    )


def _segment_ray(args: argparse.Namespace, settings, formats, exports) -> int:
    from tqdm import tqdm

    from vitsam.seg.ray_runner import label_with_ray

    if formats != ("json",):
        raise VitsamError("--engine ray writes the per-image JSON only: leave out --format")

    def show(location: str, doc: dict | None, error: str) -> None:  # above the progress bar
        if error:
            tqdm.write(f"error: {error}", file=sys.stderr)
        else:
            tqdm.write(_found(location, [(d["label"], d["score"]) for d in doc["detections"]]))

    report = label_with_ray(
        args.inputs,
        args.out,
        settings,
        exports,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        runtime=args.runtime,
        polygons=args.polygons,
        image_mode=args.image_mode,
        progress=not args.quiet,
        on_result=show,
    )
    if report.skipped:
        print(f"{report.skipped} of {report.images} images already done in {args.out}")
    todo = report.images - report.skipped
    print(_tally(todo, report.failed, report.skipped, "images", report.results))
    _print_exports(report.exports)
    return 1 if report.failed else 0


def _found(location, detections: list[tuple[str, float]]) -> str:
    found = ", ".join(f"{label} {score:.2f}" for label, score in detections) or "nothing found"
    return f"{location}: {len(detections)} detections ({found})"


def _print_exports(summaries) -> None:
    for s in summaries:
        dropped = f"; {s.left_out} empty masks left out" if s.left_out else ""
        print(f"dataset: {s.path} ({s.images} images, {s.annotations} annotations{dropped})")


def holds_videos(path: Path) -> bool:
    """A folder (not of frames) with video files in it, and no images: `vitsam segment
    videos/` labels its videos. Stops at the first image, so an image folder costs one
    step of its walk, not a second listing."""
    from vitsam.images import is_image_path
    from vitsam.seg.videoio import is_video_path

    if not path.is_dir():
        return False
    found = False
    for f in path.rglob("*"):
        if is_image_path(f) and f.is_file():
            return False
        found = found or (is_video_path(f) and f.is_file())
    return found


def _segment_videos(args: argparse.Namespace) -> int:
    """`vitsam segment clip.mp4 videos/ ...`: tracks through each video, outputs as they are
    made; with --export mot,ytvis a resumable video dataset (seg.video_dataset)."""
    from tqdm import tqdm

    from vitsam.seg.label_studio import require_sdk
    from vitsam.seg.request import check_options, text_native
    from vitsam.seg.results import parse_formats
    from vitsam.seg.tracking import Sam3VideoTracker
    from vitsam.seg.video import VIDEO_FORMATS
    from vitsam.seg.video_dataset import (
        VideoDataset,
        named_videos,
        parse_video_exports,
    )
    from vitsam.seg.videoio import VideoReader, is_video_path

    kinds = parse_video_exports(args.export)
    if "label-studio" in kinds:
        require_sdk()
    formats = parse_formats(args.format or ("json" if kinds else ",".join(VIDEO_FORMATS)),
                            VIDEO_FORMATS, "for a video")  # fmt: skip
    if kinds and "json" not in formats:
        raise VitsamError("--export builds its datasets from the JSON: keep json in --format")
    check_options(args.box_threshold, args.text_threshold, args.nms, args.max_detections,
                  args.negative_iou)  # fmt: skip
    settings = _label_settings(args)
    settings.check()  # the image rules: bad boxes, clicks, prompts and class maps fail here
    prompted = bool(settings.boxes or settings.points)
    request = None if prompted else settings.request()
    if request is not None and text_native(args.segmenter):
        Sam3VideoTracker.check(request)
    if (args.max_frames is not None and args.max_frames < 1) or args.stride < 1:
        raise VitsamError("--max-frames and --stride must be 1 or more")
    if args.runtime != "torch":
        raise VitsamError(f"--runtime {args.runtime} is for images and folders: leave it out for videos")

    def is_video(p: Path) -> bool:
        return is_video_path(p) or (p.is_dir() and args.video)

    for v in map(Path, args.inputs):
        if not v.exists():
            raise VitsamError(f"{v}: no such file or folder")
        if not (is_video(v) or holds_videos(v)):
            raise VitsamError(
                f"{v}: not a video (.mp4 .mov .webm .mkv, a folder of them, or a folder of "
                "frames with --video): segment images and videos in separate commands"
            )
    entries = named_videos([Path(p) for p in args.inputs], is_video)
    if "label-studio" in kinds and any(p.is_dir() for p, _ in entries):
        raise VitsamError(
            "--export label-studio takes video files (Label Studio's Video tag plays a file), "
            "not folders of frames: encode the frames into a video first"
        )
    out, failed, skipped = Path(args.out), 0, 0
    dataset = None
    if kinds or args.engine == "ray":  # a resumable video dataset
        options = {"stride": args.stride, "max_frames": args.max_frames,
                   "redetect": args.redetect, "fps": args.fps}  # fmt: skip
        dataset = VideoDataset(out, {**settings.to_json(), **options}, settings.categories())
        todo = [(p, n) for p, n in entries if not dataset.done(n)]
        skipped = len(entries) - len(todo)
        if skipped:
            log.info("%d of %d videos already done in %s: skipped", skipped, len(entries), out)
    else:
        todo = entries
    if args.engine == "ray":
        return _track_ray(args, settings, dataset, entries, todo, kinds, formats, skipped)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    segmenter = settings.load_video(args.device, args.precision, args.redetect) if todo else None
    options = {"formats": formats, "stride": args.stride, "max_frames": args.max_frames, "fps": args.fps}
    for path, name in todo:
        try:
            with VideoReader(path, args.fps) as probe:
                info = probe.info
        except VitsamError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        total = info.frames_to_process(args.stride, args.max_frames)
        if total and total * args.stride / info.fps > LONG_VIDEO_S:
            log.info("%s: %d frames to process; --max-frames or --stride shorten it", path, total)
        bar = tqdm(total=total, desc=path.name, unit="frame", disable=args.quiet)

        def done(frame, tracks, bar=bar):
            bar.update(1)

        try:
            if dataset is not None:
                result = dataset.track(settings, segmenter, path, name, kinds, done, **options)
            else:
                result = settings.track(segmenter, path, out, name, on_frame=done, **options)
        except VitsamError as e:
            failed += 1
            tqdm.write(f"error: {e}", file=sys.stderr)
            continue
        finally:
            bar.close()
        files = ", ".join(str(f) for f in result.files)
        if result.stopped:
            failed += 1
            print(f"error: {result.stopped} (the {result.frames} frames before are in {files})",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"{path}: {result.frames} frames, {len(result.track_ids)} tracks: {files}")
    return _videos_done(len(todo), failed, skipped, out, dataset, entries, kinds)


def _tally(todo: int, failed: int, skipped: int, what: str, out) -> str:
    """The run's count line: 'N of M images segmented; outputs in OUT', or, when an
    earlier run did them all, 'nothing left to do: K images done before; ...'."""
    if not todo and skipped:
        noun = what if skipped != 1 else what[:-1]
        return f"nothing left to do: {skipped} {noun} done before; outputs in {out}"
    return f"{todo - failed} of {todo} {what} segmented; outputs in {out}"


def _videos_done(todo: int, failed: int, skipped: int, out: Path, dataset, entries, kinds) -> int:
    """The run's last lines (and the datasets, rebuilt), and its exit code."""
    from vitsam.seg.exports import ExportSummary

    print(_tally(todo, failed, skipped, "videos", out) + (f" ({skipped} done before)" if skipped and todo else ""))
    if dataset is not None:
        for s in dataset.export(entries, kinds):
            if isinstance(s, ExportSummary):  # coco, yolo: on the frames
                _print_exports([s])
                continue
            broken = f", {s.stopped} cut short by a broken stream" if s.stopped else ""
            print(f"{s.path}: {s.videos} videos, {s.tracks} tracks, {s.rows} rows{broken}")
    return 1 if failed else 0


def _track_ray(args, settings, dataset, entries, todo, kinds, formats, skipped) -> int:
    """`vitsam segment videos/ --engine ray`: one video per task, on Ray workers."""
    from vitsam.seg.ray_runner import track_with_ray

    def said(name, error):
        print(f"error: {name}: {error}" if error else f"{name}: done", file=sys.stderr if error else sys.stdout)

    options = {"formats": formats, "stride": args.stride, "max_frames": args.max_frames, "fps": args.fps}
    failed = track_with_ray(todo, dataset, settings, kinds, options, args.redetect,
                            workers=args.workers, device=args.device, precision=args.precision,
                            on_result=said)  # fmt: skip
    return _videos_done(len(todo), failed, skipped, Path(args.out), dataset, entries, kinds)


