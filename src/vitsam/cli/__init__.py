"""The `vitsam` command: parses, calls the library, prints. `main(argv) -> int`.

Each half adds its own subcommands: `cli/vit.py` (train, eval, predict, sweep,
attention), `cli/seg.py` (segment) and `cli/serve.py` (serve). Defaults come from the
library modules that own them, never from literals here.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vitsam.errors import VitsamError
from vitsam.images import pixel_limit

log = logging.getLogger("vitsam")


def build_parser() -> argparse.ArgumentParser:
    from vitsam import __version__
    from vitsam.cli import seg, serve, vit

    parser = argparse.ArgumentParser(
        prog="vitsam",
        description="vitsam: train and use a Vision Transformer; segment images from text prompts.",
    )
    parser.add_argument("--version", action="version", version=f"vitsam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    vit.add_commands(sub)
    seg.add_commands(sub)
    serve.add_commands(sub)
    return parser


def max_pixels_flag(p: argparse.ArgumentParser) -> None:
    """--max-pixels, for the commands that decode images (main applies it)."""
    from vitsam.images import MAX_PIXELS, MAX_PIXELS_ENV

    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help=f"decode images up to N pixels, width x height (default {MAX_PIXELS:_}, or "
        f"{MAX_PIXELS_ENV}); larger ones are refused before decoding",
    )


def model_flags(p: argparse.ArgumentParser, many: bool = False) -> None:
    """--models SET, --detector and --segmenter (`many`: comma lists, for serve); main
    fills the two from the set where they are not given."""
    from vitsam.seg.registry import MODEL_SETS

    sets = ", ".join(f"{k} ({' + '.join(v)})" for k, v in MODEL_SETS.items())
    p.add_argument("--models", default="default", choices=list(MODEL_SETS), metavar="SET",
                   help=f"a detector and segmenter picked together: {sets}")  # fmt: skip
    what = "comma list; the first is the default" if many else "short name, hub id or folder"
    p.add_argument("--detector", help=f"{what} (default: the --models set's)")
    p.add_argument("--segmenter", help=f"{what}, or an original .pth/.pt (default: the --models set's)")


def main(argv: list[str] | None = None) -> int:
    """vitsam: train and use a Vision Transformer; segment images from text prompts."""
    from vitsam.cli.seg import attach_box_values

    parser = build_parser()
    args = parser.parse_args(attach_box_values(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if getattr(args, "models", None):  # --detector / --segmenter win over the set's
        from vitsam.seg.registry import MODEL_SETS

        detector, segmenter = MODEL_SETS[args.models]
        args.detector = args.detector or detector
        args.segmenter = args.segmenter or segmenter
    try:
        with pixel_limit(getattr(args, "max_pixels", None)):
            return args.func(args)
    except VitsamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
