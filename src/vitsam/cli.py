"""The `vitsam` command: parses, calls the library, prints. `main(argv) -> int`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from vitsam.errors import VitsamError
from vitsam.images import pixel_limit

log = logging.getLogger("vitsam")


# --- config flags ----------------------------------------------------------------------


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig / ModelConfig field, e.g. --epochs, --depth, --no-flip."""
    from vitsam.vit.config import ModelConfig, TrainConfig

    for cls, title in ((TrainConfig, "training"), (ModelConfig, "model")):
        group = p.add_argument_group(f"{title} fields (override the preset)")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "model":
                continue
            flag = "--" + f.name.replace("_", "-")
            kind = hints[f.name]
            if kind is bool:
                group.add_argument(
                    flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None
                )
            elif f.name == "betas":
                group.add_argument(
                    flag,
                    dest=f.name,
                    default=None,
                    metavar="B1,B2",
                    type=lambda s: tuple(float(v) for v in s.split(",")),
                )
            else:
                group.add_argument(
                    flag, dest=f.name, type=kind, default=None, metavar=kind.__name__.upper()
                )


def _config_from_args(args: argparse.Namespace):
    from vitsam.vit.config import MODEL_FIELDS, TRAIN_FIELDS, override, preset

    given = {k: v for k in MODEL_FIELDS | TRAIN_FIELDS if (v := getattr(args, k, None)) is not None}
    return override(preset(args.preset), given)


# --- commands --------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from vitsam.vit import distributed
    from vitsam.vit import train as training
    from vitsam.vit.config import to_json

    try:  # under torchrun, each process is one rank of a data-parallel run
        if args.resume:
            from vitsam.vit.config import MODEL_FIELDS, TRAIN_FIELDS

            given = MODEL_FIELDS | TRAIN_FIELDS
            overrides = {k: v for k in given if (v := getattr(args, k, None)) is not None}
            history = training.resume(args.resume, progress=not args.quiet, **overrides)
            out = args.resume
        else:
            cfg = _config_from_args(args)
            if args.print_config:
                print(to_json(cfg))
                return 0
            history = training.train(cfg, progress=not args.quiet)
            out = cfg.out
    finally:
        distributed.shutdown()
    if history and distributed.from_env().is_main:
        best = max(r["test_acc"] for r in history)
        last = history[-1]
        print(
            f"done: {last['epoch']} epochs, final test accuracy {last['test_acc']:.4f}, "
            f"best {best:.4f}; run directory {out}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vitsam.devices import resolve_device, resolve_precision
    from vitsam.vit.config import eval_precision_name
    from vitsam.vit.data import load_dataset
    from vitsam.vit.evaluate import checkpoint_path, confusion_matrix, evaluate, load_classifier
    from vitsam.vit.loaders import Normalize
    from vitsam.vit.plots import plot_confusion

    path = checkpoint_path(args.checkpoint)
    clf = load_classifier(path)
    cfg = clf.meta["config"]
    dataset = args.dataset or cfg["dataset"]
    _, test = load_dataset(dataset, args.data_dir or cfg["data_dir"], clf.image_size)
    if test.classes != clf.classes:
        raise VitsamError(
            f"{dataset}: its classes {test.classes[:5]}... differ from the model's "
            f"{clf.classes[:5]}...: evaluate on a dataset with the same classes"
        )
    if tuple(test.images.shape[1:]) != (clf.channels, clf.image_size, clf.image_size):
        raise VitsamError(
            f"{dataset}: images are {tuple(test.images.shape[1:])} but the model takes "
            f"{(clf.channels, clf.image_size, clf.image_size)}"
        )
    device = resolve_device(args.device)
    clf.to(device)
    # the precision the training run evaluated in, so both report the same accuracy
    precision = args.precision or eval_precision_name(
        cfg.get("eval_precision", "fp32"), cfg.get("precision", "auto")
    )
    result = evaluate(
        clf.model,
        test,
        Normalize(clf.mean, clf.std, device),
        device,
        resolve_precision(precision, device),
        tta_flip=cfg.get("tta_flip", False) if args.tta_flip is None else args.tta_flip,
    )
    k = len(clf.classes)
    cm = confusion_matrix(result.predictions, result.labels, k)
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()
    out = Path(args.out) if args.out else path.parent
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(path),
        "dataset": dataset,
        "images": len(test),
        "top1": result.accuracy,
        "loss": result.loss,
        "classes": clf.classes,
        "per_class_accuracy": dict(zip(clf.classes, per_class)),
        "confusion_matrix": cm.tolist(),
    }
    (out / "confusion.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(
        cm, clf.classes, out / "confusion.png", title=f"{dataset}: top-1 {result.accuracy:.2%}"
    )
    print(f"top-1 accuracy: {result.accuracy:.4f} on {len(test)} images of {dataset}")
    width = max(len(c) for c in clf.classes)
    for c, a in zip(clf.classes, per_class):
        print(f"  {c:<{width}}  {a:.4f}")
    print(f"confusion matrix: {out / 'confusion.png'} and {out / 'confusion.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from vitsam.devices import resolve_device
    from vitsam.images import open_image
    from vitsam.vit.evaluate import load_classifier

    clf = load_classifier(args.checkpoint).to(resolve_device(args.device))
    results, failed = [], 0
    for name in args.images:
        try:
            image = open_image(name)
        except VitsamError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        top = clf.predict([image], top_k=args.top_k)[0]
        results.append(
            {"image": name, "predictions": [{"label": c, "probability": p} for c, p in top]}
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            best = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in r["predictions"])
            print(f"{r['image']}: {best}")
    return 1 if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from vitsam.vit.analysis import SweepSpec, parse_grid_flags, sweep

    spec = SweepSpec.load(args.spec) if args.spec else SweepSpec()
    if args.preset:  # the command line wins over the spec's own preset
        spec.preset = args.preset
    spec.grid.update(parse_grid_flags(args.grid or []))
    spec.base.update({k: v[0] for k, v in parse_grid_flags(args.set or []).items()})
    if args.list:
        for name, _cfg, _ in spec.runs():
            print(name)
        return 0
    rows = sweep(spec, args.out, progress=not args.quiet)
    print(
        f"{len(rows)} runs; results in {Path(args.out) / 'results.csv'} and {Path(args.out) / 'report.md'}"
    )
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from vitsam.images import open_image
    from vitsam.vit.analysis import attention_maps, draw_attention
    from vitsam.vit.evaluate import load_classifier

    clf = load_classifier(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = (clf.image_size, clf.image_size)
    for name in args.images:
        image = open_image(name).resize(size, 3)  # the picture the maps are drawn over
        maps = attention_maps(clf.model, clf.batch([image]))
        label, p = clf.predict([image], top_k=1)[0][0]
        path = out / f"{Path(name).stem}.attention.png"
        draw_attention(image, maps, 0, path, title=f"{label} {p:.2f}")
        print(f"{name}: {path}")
    return 0


def _box(text: str) -> tuple[float, float, float, float]:
    """'X1,Y1,X2,Y2' -> four numbers; the rules (finite, ordered, clamped) are check_boxes'."""
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X1,Y1,X2,Y2 in pixels") from None
    return x1, y1, x2, y2


def _attach_box_values(argv: list[str]) -> list[str]:
    """'--box -20,-20,100,100' -> '--box=-20,-20,100,100': argparse takes a value that
    starts with '-' for an option and stops with "expected one argument"."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            return [*out, arg, *rest]
        value = rest[0] if rest else ""
        if arg == "--box" and value.startswith("-") and not value.startswith("--") and "," in value:
            arg = f"--box={rest.pop(0)}"
        out.append(arg)
    return out


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vitsam.seg.detect import split_prompt
    from vitsam.seg.folder import Outcome, Outputs, segment_folder
    from vitsam.seg.labelset import LabelSet, named_images, parse_exports
    from vitsam.seg.pipeline import check_boxes, check_options
    from vitsam.seg.results import FORMATS
    from vitsam.seg.videoio import is_video_path

    if args.box:
        _check_box_segmenter(args.segmenter)
    if args.video or any(is_video_path(Path(p)) for p in args.inputs):
        return _segment_videos(args)
    exports = parse_exports(args.export)
    labelled = bool(exports) or args.engine == "ray"  # a LabelSet folder: resumable
    fmt = args.format or ("json" if labelled else "overlay,masks,json")
    formats = tuple(f.strip() for f in fmt.split(",") if f.strip())
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise VitsamError(f"--format takes a comma list of {', '.join(FORMATS)}; got {fmt!r}")
    if args.box:  # bad boxes, prompts and options fail before any model loads
        check_boxes(args.box)
    else:
        split_prompt(args.prompt or "")
    check_options(args.box_threshold, args.text_threshold, args.nms, args.max_detections)
    settings = _label_settings(args)
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
    segmenter = settings.load(args.device, args.precision) if todo else None
    outputs = Outputs(
        labels.results if labels else Path(args.out),
        tuple(f for f in formats if not labels or f != "json"),  # the LabelSet writes it
        args.instance_masks,
        labels,
    )
    bar = tqdm(total=len(todo), desc="segment", disable=len(todo) < 2 or args.quiet, unit="image")

    def show(done: Outcome) -> None:  # in input order, above the progress bar
        bar.update()
        if done.error:
            tqdm.write(f"error: {done.error}", file=sys.stderr)
        else:
            tqdm.write(_found(done.location, [(d.label, d.score) for d in done.result.detections]))

    with bar:
        failed = segment_folder(todo, lambda im: settings.segment(segmenter, im), outputs, show)
    print(f"{len(todo) - failed} of {len(todo)} images segmented; outputs in {outputs.out}")
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

    return LabelSettings(
        prompt=args.prompt or "",
        boxes=[list(b) for b in args.box or []],
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
        polygons=args.polygons,
        image_mode=args.image_mode,
        progress=not args.quiet,
        on_result=show,
    )
    if report.skipped:
        print(f"{report.skipped} of {report.images} images already done in {args.out}")
    todo = report.images - report.skipped
    print(f"{todo - report.failed} of {todo} images segmented; outputs in {report.results}")
    _print_exports(report.exports)
    return 1 if report.failed else 0


def _found(location, detections: list[tuple[str, float]]) -> str:
    found = ", ".join(f"{label} {score:.2f}" for label, score in detections) or "nothing found"
    return f"{location}: {len(detections)} detections ({found})"


def _print_exports(summaries) -> None:
    for s in summaries:
        dropped = f"; {s.left_out} empty masks left out" if s.left_out else ""
        print(f"dataset: {s.path} ({s.images} images, {s.annotations} annotations{dropped})")


def _check_box_segmenter(segmenter: str) -> None:
    """SAM 3 finds objects from text: refuse box prompts before it loads."""
    from vitsam.seg.registry import SEGMENTERS, resolve
    from vitsam.seg.sam3 import no_box_prompts

    if resolve(segmenter, SEGMENTERS, "segmenter")[0] == "sam3":
        raise no_box_prompts(segmenter)


LONG_VIDEO_S = 600  # a note is printed for videos longer than this (seconds)


def _segment_videos(args: argparse.Namespace) -> int:
    """`vitsam segment clip.mp4 ...`: tracks through each video, outputs as they are made."""
    from tqdm import tqdm

    from vitsam.seg.detect import split_prompt
    from vitsam.seg.pipeline import check_boxes
    from vitsam.seg.video import VIDEO_FORMATS, VideoSegmenter
    from vitsam.seg.videoio import VideoReader, is_video_path

    if args.export or args.engine != "local":
        raise VitsamError("--export and --engine ray take images, not videos: leave them out")
    fmt = args.format or ",".join(VIDEO_FORMATS)
    formats = tuple(f for f in (f.strip() for f in fmt.split(",")) if f in VIDEO_FORMATS)
    if not formats:
        raise VitsamError(f"for a video, --format takes {','.join(VIDEO_FORMATS)}; got {fmt!r}")
    if args.box:
        check_boxes(args.box)
    else:
        split_prompt(args.prompt or "")
    if (args.max_frames is not None and args.max_frames < 1) or args.stride < 1:
        raise VitsamError("--max-frames and --stride must be 1 or more")
    videos = [Path(p) for p in args.inputs]
    for v in videos:
        if not v.exists():
            raise VitsamError(f"{v}: no such file or folder")
        if not (is_video_path(v) or (v.is_dir() and args.video)):
            raise VitsamError(
                f"{v}: not a video (.mp4 .mov .webm .mkv, or a folder of frames with --video): "
                "segment images and videos in separate commands"
            )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    segmenter = VideoSegmenter.from_pretrained(
        detector=None if args.box else args.detector,
        segmenter=args.segmenter,
        device=args.device,
        precision=args.precision,
        redetect=args.redetect,
        **_detection_options(args),
    )
    out, failed = Path(args.out), 0
    for path in videos:
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
        try:
            result = segmenter.segment(
                path, args.prompt or "", out, formats=formats, boxes=args.box,
                stride=args.stride, max_frames=args.max_frames, fps=args.fps,
                on_frame=lambda frame, tracks, bar=bar: bar.update(1),
            )  # fmt: skip
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
    print(f"{len(videos) - failed} of {len(videos)} videos segmented; outputs in {out}")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from vitsam.serve.server import run
    from vitsam.serve.service import SegmentService

    detectors = [d.strip() for d in args.detector.split(",") if d.strip()]
    segmenters = [s.strip() for s in args.segmenter.split(",") if s.strip()]
    if not detectors or not segmenters:
        raise VitsamError("--detector and --segmenter each need at least one model name")
    token = args.token or os.environ.get("VITSAM_TOKEN", "")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning(
            "serving on %s without --token: anyone who can reach it can use the API", args.host
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    service = SegmentService(detectors, segmenters, args.device, args.precision, args.queue_size)
    print(f"vitsam serving on http://{args.host}:{args.port}/ (API: /v1/segment, docs: /docs)")
    run(service, args.host, args.port, token, args.max_upload_mb)
    return 0


# --- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from vitsam import __version__
    from vitsam.devices import DEVICES, PRECISIONS
    from vitsam.vit.config import PRESETS

    parser = argparse.ArgumentParser(prog="vitsam", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vitsam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a ViT classifier")
    p.add_argument("--preset", default="seed", choices=list(PRESETS), help="recipe to start from")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from RUN_DIR/last.pt (--epochs N extends it; --device, "
        "--precision, --eval-precision, --workers, --compile may change; nothing else)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix")
    p.add_argument("checkpoint", metavar="RUN_DIR|CKPT")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one trained on)")
    p.add_argument("--data-dir", default="")
    p.add_argument(
        "--out", help="where to write confusion.png/json (default: beside the checkpoint)"
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="default: the run's eval_precision (fp32 unless set), as training evaluated",
    )
    p.add_argument(
        "--tta-flip",
        action=argparse.BooleanOptionalAction,
        help="average with the mirrored image (default: as the run evaluated)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k labels for image files")
    p.add_argument("checkpoint", metavar="RUN_DIR|CKPT")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "segment", help="masks for what a text prompt names (Grounding DINO -> SAM 2)"
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|VIDEO")
    _max_pixels_flag(p)
    p.add_argument(
        "--prompt",
        help="phrases separated by '.' or ',' (or new lines), e.g. 'cat, remote control'; "
        "case and invisible characters are ignored",
    )
    p.add_argument("--detector", default="grounding-dino-tiny", help="short name, hub id or folder")
    p.add_argument(
        "--segmenter", default="sam2.1-tiny", help="short name, hub id, folder or original .pth/.pt"
    )
    p.add_argument(
        "--box",
        action="append",
        type=_box,
        metavar="X1,Y1,X2,Y2",
        help="segment this box instead of detecting (repeatable); pixels, clamped to the "
        "image; negative numbers work: --box -20,-20,100,100",
    )
    p.add_argument("--box-threshold", type=float, default=0.35, help="0..1 (default %(default)s)")
    p.add_argument("--text-threshold", type=float, default=0.25, help="0..1 (default %(default)s)")
    p.add_argument(
        "--nms", type=float, default=0.0, metavar="IOU", help="NMS across phrases (0 = off)"
    )
    p.add_argument(
        "--max-detections",
        type=int,
        default=100,
        metavar="N",
        help="keep at most N detections per image, best first (default %(default)s)",
    )
    p.add_argument("--out", default="segments")
    p.add_argument(
        "--format",
        help="which outputs: overlay,masks,json (default all three; json with --export or ray)",
    )
    p.add_argument(
        "--instance-masks", action="store_true", help="one PNG per detection instead of a label map"
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--quiet", action="store_true")
    video = p.add_argument_group("video (.mp4 .mov .webm .mkv, or a folder of frames)")
    video.add_argument("--video", action="store_true", help="each folder given is one video's frames")
    video.add_argument("--max-frames", type=int, help="process at most this many frames")
    video.add_argument("--stride", type=int, default=1, help="process every Nth frame")
    video.add_argument(
        "--redetect", type=int, default=20, metavar="N",
        help="detector + SAM 2: detect again every N processed frames (0 = first frame only)",
    )  # fmt: skip
    video.add_argument("--fps", type=float, help="frame rate of a folder of frames (default 30)")
    g = p.add_argument_group("datasets and scale (resumable: a rerun skips images already done)")
    g.add_argument(
        "--export", metavar="coco|yolo", help="build a dataset in --out (or both: coco,yolo)"
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
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("serve", help="the web page and HTTP API for segmentation")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (loopback unless told otherwise)"
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--detector", default="grounding-dino-tiny", help="comma list; the first is the default"
    )
    p.add_argument(
        "--segmenter", default="sam2.1-tiny", help="comma list; the first is the default"
    )
    p.add_argument(
        "--token",
        default="",
        help="require the token on the API and the page: 'Authorization: Bearer TOKEN', "
        "or the page's sign-in form (or VITSAM_TOKEN)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20)
    _max_pixels_flag(p)
    p.add_argument(
        "--queue-size", type=int, default=8, help="requests waiting or running before 503"
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("sweep", help="a grid of training runs, with a CSV and a report")
    p.add_argument("spec", nargs="?", help="TOML, YAML or JSON file: preset, base, grid, variants")
    p.add_argument("--out", default="runs/sweep", help="sweep directory (one run directory each)")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="recipe every run starts from (default: the spec's preset, else quick)",
    )
    p.add_argument(
        "--grid", action="append", metavar="FIELD=V1,V2", help="vary a field (repeatable)"
    )
    p.add_argument("--set", action="append", metavar="FIELD=V", help="set a field for every run")
    p.add_argument("--list", action="store_true", help="print the run names and exit")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("attention", help="attention rollout and per-layer maps over images")
    p.add_argument("checkpoint", metavar="RUN_DIR|CKPT")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", default="attention")
    p.set_defaults(func=cmd_attention)
    return parser


def _max_pixels_flag(p: argparse.ArgumentParser) -> None:
    from vitsam.images import MAX_PIXELS, MAX_PIXELS_ENV

    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help=f"decode images up to N pixels, width x height (default {MAX_PIXELS:_}, or "
        f"{MAX_PIXELS_ENV}); larger ones are refused before decoding",
    )


def main(argv: list[str] | None = None) -> int:
    """vitsam: train and use a Vision Transformer; segment images from text prompts."""
    parser = build_parser()
    args = parser.parse_args(_attach_box_values(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        with pixel_limit(getattr(args, "max_pixels", None)):
            return args.func(args)
    except VitsamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
