"""The HTTP API (FastAPI): POST /v1/segment, GET /healthz, OpenAPI at /openapi.json and /docs.

Answers are the CLI's JSON document (or the overlay PNG with ?format=png); every error is
a JSON body {"error": "..."} with a 4xx/5xx status, and the server keeps serving. With a
token, every route but /healthz and the OpenAPI description needs it (serve/auth.py, which
also guards the page that serve/server.py mounts).
"""

from __future__ import annotations

import io
import json

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from vitsam import __version__
from vitsam.errors import VitsamError
from vitsam.images import decode_image
from vitsam.seg.request import (
    BOX_THRESHOLD,
    MAX_DETECTIONS,
    MAX_DETECTIONS_LIMIT,
    NEGATIVE_IOU,
    TEXT_THRESHOLD,
)
from vitsam.serve import MAX_UPLOAD_MB
from vitsam.serve.auth import TokenGuard
from vitsam.serve.service import Busy, NotReady, SegmentService


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, with or without a
    Content-Length header (chunked uploads are counted as they arrive)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(self.limit, send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(limit: int, send) -> None:
    body = json.dumps({"error": f"request body over the {limit // 2**20} MB limit"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def create_app(
    service: SegmentService, token: str = "", max_upload_mb: float = MAX_UPLOAD_MB
) -> FastAPI:
    app = FastAPI(
        title="vitsam segmentation API",
        version=__version__,
        description="Text-prompted segmentation: an image and a prompt in, boxes and masks out.",
    )

    @app.exception_handler(VitsamError)
    async def user_error(request: Request, e: VitsamError):
        status = 503 if isinstance(e, (Busy, NotReady)) else 400
        return JSONResponse({"error": str(e)}, status_code=status)

    @app.get("/healthz", summary="ready once the models are loaded")
    async def healthz():
        if service.ready:
            return {
                "status": "ok",
                "detectors": service.detectors,
                "segmenters": service.segmenters,
                "image_encodings": service.image_encodings(),
            }
        status = "error" if service.error else "loading"
        return JSONResponse({"status": status, "error": service.error}, status_code=503)

    @app.post("/v1/segment", summary="segment an uploaded image")
    async def segment(
        image: UploadFile = File(..., description="the image file (JPEG, PNG, WebP, TIFF, ...)"),
        prompt: str = Form(
            "", description="phrases separated by '.' or ',', e.g. 'cat. remote control'"
        ),
        box_threshold: float = Form(BOX_THRESHOLD, ge=0.0, le=1.0),
        text_threshold: float = Form(TEXT_THRESHOLD, ge=0.0, le=1.0),
        max_detections: int = Form(MAX_DETECTIONS, ge=0, le=MAX_DETECTIONS_LIMIT),
        negative: str = Form("", description="phrases that must not be labelled, e.g. 'toy car'"),
        negative_iou: float = Form(NEGATIVE_IOU, ge=0.0, le=1.0),
        classes: str = Form(
            "", description='JSON class map: {"cat": ["kitten", "tabby cat"]} (labels = classes)'
        ),
        exemplars: str = Form(
            "",
            description='JSON list of boxes on this image to find more of, e.g. '
            '[{"box": [10, 20, 80, 90], "label": "cat"}] (OWLv2 detectors)',
        ),
        box_thresholds: str = Form(
            "", description='JSON per-class box thresholds, e.g. {"cat": 0.5}'
        ),
        points: str = Form(
            "",
            description="JSON list of [x, y, label] clicks (label 1 object, 0 background) for "
            "SAM / SAM 2, with at most one of `boxes`; instead of a prompt",
        ),
        boxes: str = Form(
            "",
            description="JSON list of [x1, y1, x2, y2] pixel boxes, instead of a prompt; "
            "clamped to the image",
        ),
        detector: str = Form(
            "", description="one of the configured detectors (default: the first)"
        ),
        segmenter: str = Form(
            "", description="one of the configured segmenters (default: the first)"
        ),
        format: str = Query(
            "json", pattern="^(json|png)$", description="json document or overlay png"
        ),
    ):
        box_list = _json_field(boxes, "boxes", "a JSON list of [x1, y1, x2, y2] pixel boxes",
                               "[[10, 20, 200, 180]]")  # fmt: skip
        point_list = _json_field(points, "points", "JSON", "[[120, 80, 1], [40, 30, 0]]")
        class_map = _json_field(classes, "classes", "a JSON object",
                                '{"cat": ["kitten", "tabby cat"]}', dict)  # fmt: skip
        thresholds = _json_field(box_thresholds, "box_thresholds", "a JSON object",
                                 '{"cat": 0.5}', dict)  # fmt: skip
        examples = _json_field(exemplars, "exemplars", "a JSON list",
                               '[{"box": [10, 20, 80, 90]}]', list)  # fmt: skip
        name = image.filename or "upload"  # for messages and the JSON only, never a path here
        picture = decode_image(await image.read(), name)
        result = await run_in_threadpool(
            service.segment,
            picture,
            prompt=prompt,
            boxes=box_list,
            points=point_list,
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            max_detections=max_detections,
            negative=negative,
            negative_iou=negative_iou,
            classes=class_map,
            box_thresholds=thresholds,
            exemplars=examples,
            detector=detector or None,
            segmenter=segmenter or None,
            name=name,
        )
        if format == "png":
            buf = io.BytesIO()
            result.overlay(picture).save(buf, format="PNG")
            return Response(buf.getvalue(), media_type="image/png")
        return result.to_json()

    app.add_middleware(BodyLimit, limit=int(max_upload_mb * 2**20))
    app.add_middleware(TokenGuard, token=token)  # outermost: no body is read before it
    return app


def _json_field(text: str, field: str, what: str, example: str, kind: type | None = None):
    """A JSON form field ('' -> None), of `kind` (dict, list) when given; the library's
    checks (check_boxes, check_points, request.Prompt) judge what is inside. NaN and
    Infinity parse here, and those checks refuse them."""
    if not text.strip():
        return None
    refused = VitsamError(f"{field} must be {what}, e.g. {example}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise refused from None
    if kind is not None and not isinstance(value, kind):
        raise refused
    return value
