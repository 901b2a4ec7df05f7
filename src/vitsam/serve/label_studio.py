"""vitsam as a Label Studio ML backend (`vitsam serve --label-studio`).

The protocol is label-studio-ml's (HumanSignal/label-studio-ml-backend, `label_studio_ml/
api.py`), as Label Studio's `ml/api_connector.py` calls it:

- `GET /health` -> `{"status": "UP"}`;
- `POST /setup` `{project, schema, hostname, access_token, extra_params}` ->
  `{"model_version"}`; the ML backend's "extra params" in Label Studio may set
  `box_threshold`, `text_threshold` and `max_detections` for that project;
- `POST /predict` `{tasks, project, label_config, params}` -> `{"results": [one prediction
  per task], "model_version"}`;
- `POST /webhook` is accepted and ignored (vitsam does not train).

The prompt is the project's labels (seg.label_studio.prompt_from_config), with the class
map given to `vitsam serve --classes` for labels it names. Each task's image is fetched as
label-studio-sdk's `get_local_path` does: local storage files from disk under
`LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`, uploads and URLs from the Label Studio at
`hostname` (or `LABEL_STUDIO_URL`) with `LABEL_STUDIO_API_KEY` (or the setup's token).
Label Studio sends HTTP Basic credentials to a backend, not a bearer token: with
`--token`, the token is the Basic password (serve.auth).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from fastapi import APIRouter, Body

from vitsam.errors import VitsamError
from vitsam.seg.request import check_options
from vitsam.serve.service import SegmentService

EXTRA_PARAMS = ("box_threshold", "text_threshold", "max_detections")

log = logging.getLogger("vitsam")


def create_router(service: SegmentService, classes: dict[str, list[str]] | None = None) -> APIRouter:
    from vitsam.seg import label_studio as ls

    router = APIRouter(tags=["Label Studio ML backend"])
    hosts: dict[str, tuple[str, str]] = {}  # project -> (hostname, access token) from /setup
    options: dict[str, dict] = {}  # project -> detection options from its extra params
    cache = tempfile.mkdtemp(prefix="vitsam-label-studio-")

    def version() -> str:
        return "vitsam:" + "+".join(dict.fromkeys([service.detectors[0], service.segmenters[0]]))

    @router.get("/health", summary="Label Studio's health check")
    def health():
        return {"status": "UP", "model_class": "vitsam", "ready": service.ready}

    @router.post("/setup", summary="Label Studio connects a project")
    def setup(body: dict = Body(...)):  # noqa: B008
        ls.prompt_from_config(body.get("schema") or "", classes)  # refuse a config we cannot answer
        project = str(body.get("project", ""))
        hosts[project] = (body.get("hostname") or "", body.get("access_token") or "")
        extra = body.get("extra_params") or {}
        if isinstance(extra, str):  # Label Studio keeps the field as the text typed
            try:
                extra = json.loads(extra)
            except ValueError:
                raise VitsamError("the ML backend's extra params must be JSON, e.g. "
                                  '{"box_threshold": 0.3}') from None  # fmt: skip
        if not isinstance(extra, dict) or set(extra) - set(EXTRA_PARAMS):
            raise VitsamError(f"the ML backend's extra params take {', '.join(EXTRA_PARAMS)}")
        check_options(extra.get("box_threshold"), extra.get("text_threshold"),
                      max_detections=extra.get("max_detections"))  # fmt: skip
        options[project] = extra
        return {"model_version": version()}

    @router.post("/webhook", summary="accepted and ignored (vitsam does not train)")
    def webhook(body: dict = Body(...)):  # noqa: B008
        return {}

    @router.post("/predict", summary="pre-annotations for Label Studio tasks")
    def predict(body: dict = Body(...)):  # noqa: B008
        asked = ls.prompt_from_config(body.get("label_config") or "", classes)
        project = str(body.get("project", ""))
        hostname, token = hosts.get(project, ("", ""))
        results = []
        for task in body.get("tasks") or []:
            try:
                doc = _segment(service, task, asked, hostname, token, cache, options.get(project, {}))
            except VitsamError as e:  # one task's trouble: an empty prediction, said in the log
                log.warning("Label Studio task %s: %s", task.get("id"), e)
                results.append(ls.prediction([], version()))
                continue
            for d in doc["detections"]:
                d["label"] = asked.label_of.get(d["label"], d["label"])
            regions = ls.image_results(doc, asked.tags.get("box"), asked.tags.get("mask"),
                                       asked.tags["to_name"])  # fmt: skip
            results.append(ls.prediction(regions, version()))
        return {"results": results, "model_version": version()}

    return router


def _segment(service, task: dict, asked, hostname: str, token: str, cache: str, extra: dict) -> dict:
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path

    from vitsam.images import open_image

    url = (task.get("data") or {}).get(asked.data_key)
    if not url:
        raise VitsamError(f"the task has no {asked.data_key!r} in its data")
    try:
        path = get_local_path(
            url, cache_dir=cache, hostname=hostname or None, task_id=task.get("id"),
            access_token=os.environ.get("LABEL_STUDIO_API_KEY") or token or None,
        )  # fmt: skip
    except Exception as e:  # the SDK raises what requests and its own checks raise
        raise VitsamError(f"cannot fetch {url}: {e}") from None
    image = open_image(path)
    result = service.segment(image, prompt=asked.prompt, classes=asked.classes or None,
                             name=str(url), **extra)  # fmt: skip
    return result.to_json()
