"""`vitsam serve`: the page and the HTTP API, with the models loaded once."""

from __future__ import annotations

import argparse
import logging

from vitsam.cli import max_pixels_flag, model_flags
from vitsam.errors import VitsamError

log = logging.getLogger("vitsam")


def add_commands(sub) -> None:
    from vitsam.devices import DEVICES, PRECISIONS
    from vitsam.serve import HOST, MAX_UPLOAD_MB, PORT
    from vitsam.serve.auth import TOKEN_ENV
    from vitsam.serve.service import QUEUE_SIZE

    p = sub.add_parser("serve", help="the web page and HTTP API for segmentation")
    p.add_argument("--host", default=HOST, help="address to bind (default loopback: %(default)s)")
    p.add_argument("--port", type=int, default=PORT, help="port to bind (default %(default)s)")
    model_flags(p, many=True)
    p.add_argument(
        "--token",
        default="",
        help="require the token on the API and the page: 'Authorization: Bearer TOKEN', "
        f"or the page's sign-in form (or {TOKEN_ENV})",
    )
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, metavar="MB",
                   help="largest upload accepted, else 413 (default %(default)s)")  # fmt: skip
    max_pixels_flag(p)
    p.add_argument(
        "--queue-size", type=int, default=QUEUE_SIZE, metavar="N",
        help="requests waiting or running before 503 (default %(default)s)",  # fmt: skip
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument(
        "--label-studio", action="store_true",
        help="also answer Label Studio's ML-backend protocol (/health, /setup, /predict): "
        "the project's labels are the prompt; with --token, the token is the Basic password",
    )  # fmt: skip
    p.add_argument(
        "--classes", metavar="FILE",
        help="class map (YAML or JSON, 'cat: [kitten, tabby cat]') for --label-studio: "
        "phrases for the project's labels it names",
    )  # fmt: skip
    p.set_defaults(func=cmd_serve)



def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from vitsam.serve import LOOPBACK
    from vitsam.serve.auth import TOKEN_ENV
    from vitsam.serve.server import run
    from vitsam.serve.service import SegmentService

    if args.classes and not args.label_studio:
        raise VitsamError("--classes is for --label-studio here: add it, or leave --classes out")
    classes = None
    if args.classes:
        from vitsam.seg.request import load_classes

        classes = load_classes(args.classes)
    if args.label_studio:
        from vitsam.seg.label_studio import require_sdk

        require_sdk()
    detectors = [d.strip() for d in args.detector.split(",") if d.strip()]
    segmenters = [s.strip() for s in args.segmenter.split(",") if s.strip()]
    if not detectors or not segmenters:
        raise VitsamError("--detector and --segmenter each need at least one model name")
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if args.host not in LOOPBACK and not token:
        log.warning(
            "serving on %s without --token: anyone who can reach it can use the API", args.host
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    service = SegmentService(
        detectors, segmenters, device=args.device, precision=args.precision,
        queue_size=args.queue_size,
    )  # fmt: skip
    print(f"vitsam serving on http://{args.host}:{args.port}/ (API: /v1/segment, docs: /docs)")
    if args.label_studio:
        print(f"Label Studio ML backend: connect a project to http://{args.host}:{args.port}")
    run(service, args.host, args.port, token, args.max_upload_mb, args.label_studio, classes)
    return 0


