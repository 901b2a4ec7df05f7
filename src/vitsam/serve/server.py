"""One server: the API, the page mounted at /, and the models loading in the background."""

from __future__ import annotations

import threading

from fastapi import FastAPI

from vitsam.serve import HOST, MAX_UPLOAD_MB, PORT
from vitsam.serve.api import create_app
from vitsam.serve.service import SegmentService


def create_server(
    service: SegmentService,
    token: str = "",
    max_upload_mb: float = MAX_UPLOAD_MB,
    page: bool = True,
    label_studio: bool = False,
    classes: dict | None = None,
) -> FastAPI:
    """The API, the Label Studio ML backend routes when `label_studio` (with the class map
    `classes`), and the page at /."""
    app = create_app(service, token, max_upload_mb)
    if label_studio:
        from vitsam.serve.label_studio import create_router

        app.include_router(create_router(service, classes))
    if page:
        import gradio as gr

        from vitsam.serve.page import CSS, GESTURES_JS, build_page

        app = gr.mount_gradio_app(
            app, build_page(service), path="/", max_file_size=int(max_upload_mb * 2**20),
            head=GESTURES_JS, css=CSS,
        )  # fmt: skip
    return app


def run(
    service: SegmentService,
    host: str = HOST,
    port: int = PORT,
    token: str = "",
    max_upload_mb: float = MAX_UPLOAD_MB,
    label_studio: bool = False,
    classes: dict | None = None,
) -> None:
    """Serve until interrupted; /healthz answers 503 until the models are loaded."""
    import uvicorn

    threading.Thread(target=service.load, name="load-models", daemon=True).start()
    app = create_server(service, token, max_upload_mb, label_studio=label_studio, classes=classes)
    uvicorn.run(app, host=host, port=port, log_level="info")
