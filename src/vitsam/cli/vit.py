"""`vitsam train | eval | predict | sweep | attention`: the classifier half of the command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from vitsam.errors import VitsamError


def add_commands(sub) -> None:
    """The classifier's subcommands, on the top-level parser's subparsers."""
    from vitsam.devices import DEVICES, PRECISIONS
    from vitsam.vit.config import PRESETS

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
    p.add_argument(
        "--tta-translate",
        action=argparse.BooleanOptionalAction,
        help="also with the image shifted 1 px two ways (default: as the run evaluated)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k labels for image files")
    p.add_argument("checkpoint", metavar="RUN_DIR|CKPT")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=cmd_predict)

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
            from vitsam.vit.budget import process_started

            # --time-budget is the whole command's: it counts from the process's start
            history = training.train(cfg, progress=not args.quiet, started=process_started())
            out = cfg.out
    finally:
        distributed.shutdown()
    if history and distributed.from_env().is_main:
        from vitsam.vit.plots import evaluated_on

        name = evaluated_on(history)
        best = max(r[f"{name}_acc"] for r in history)
        last = history[-1]
        tested = f", test accuracy {last['test_acc']:.4f}" if name == "val" else ""
        print(
            f"done: {last['epoch']} epochs, final {name} accuracy {last[f'{name}_acc']:.4f}, "
            f"best {best:.4f}{tested}; run directory {out}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vitsam.vit.evaluate import checkpoint_path, evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint,
        args.dataset,
        args.data_dir,
        args.device,
        args.precision,
        args.tta_flip,
        args.tta_translate,
    )
    json_path, png_path = report.save(
        Path(args.out) if args.out else checkpoint_path(args.checkpoint).parent
    )
    print(f"top-1 accuracy: {report.top1:.4f} on {report.images} images of {report.dataset}")
    width = max(len(c) for c in report.classes)
    for c, a in report.per_class_accuracy.items():
        print(f"  {c:<{width}}  {a:.4f}")
    print(f"confusion matrix: {png_path} and {json_path}")
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


