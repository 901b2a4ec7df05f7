"""Label Studio: exported tasks with predictions, imported into a real Label Studio server
(SQLite, localhost), and `vitsam serve --label-studio` connected to it as its ML backend."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving import TOKEN, free_port, server, stop, wait_ready
from tests.test_video import write_clip
from vitsam.cli import main
from vitsam.seg.results import decode_rle

pytest.importorskip("label_studio_sdk")
ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "vitsam@example.com", "vitsam-test-password"


def label_studio_bin() -> str | None:
    """The server: $LABEL_STUDIO_BIN, .venv-label-studio (scripts/label_studio.sh), or PATH."""
    for candidate in (os.environ.get("LABEL_STUDIO_BIN"),
                      str(ROOT / ".venv-label-studio" / "bin" / "label-studio"),
                      shutil.which("label-studio")):  # fmt: skip
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server on a free loopback port; yields (url, personal access token,
    its local-files document root)."""
    binary = label_studio_bin()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs a Label Studio server: bash scripts/label_studio.sh installs it")
        pytest.skip("no Label Studio here: bash scripts/label_studio.sh installs one in .venv-label-studio")
    data, root = tmp_path_factory.mktemp("ls-data"), tmp_path_factory.mktemp("ls-root")
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "DJANGO_DB": "sqlite",
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}  # the backend: loopback  # fmt: skip
    log = open(data / "server.log", "w")
    proc = subprocess.Popen([binary, "start", "--no-browser", "--host", "127.0.0.1", "--port",
                             str(port), "--username", USER, "--password", PASSWORD],
                            stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:  # the first start migrates its SQLite database: minutes on a slow machine
        wait_ready(proc, healthy, 300, "Label Studio",
                   lambda: (data / "server.log").read_text()[-2000:])  # fmt: skip
        yield url, personal_token(url), root
    finally:
        stop(proc, 20)
        log.close()


def personal_token(url: str) -> str:
    """Sign in as the user the server was started with and make a personal access token
    (Label Studio 1.20+ turns legacy tokens off by default)."""
    with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as s:
        s.get("/user/login/")
        s.post("/user/login/", data={"email": USER, "password": PASSWORD,
                                     "csrfmiddlewaretoken": s.cookies["csrftoken"]},
               headers={"Referer": url + "/user/login/"})  # fmt: skip
        r = s.post("/api/token/", headers={"X-CSRFToken": s.cookies["csrftoken"], "Referer": url + "/"})
        r.raise_for_status()
        return r.json()["token"]


def photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
        arr[20:60, 30:70] = (220, 40, 40)
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def export(models, inputs, out, *args):
    return main(["segment", str(inputs), "--prompt", "cat. dog", "--export", "label-studio",
                 "--out", str(out), "--detector", models["grounding_dino"], "--segmenter",
                 models["sam2"], "--device", "cpu", "--quiet", "--box-threshold", "0",
                 "--text-threshold", "0", "--max-detections", "3", *args])  # fmt: skip


def test_image_tasks_carry_boxes_and_brush_masks(models, tmp_path):
    from label_studio_sdk.converter.brush import decode_rle as decode_brush
    from label_studio_sdk.label_interface import LabelInterface

    out = tmp_path / "dataset"
    assert export(models, photos(tmp_path / "photos"), out) == 0
    tasks = json.loads((out / "label-studio" / "tasks.json").read_text())
    config = LabelInterface((out / "label-studio" / "config.xml").read_text())
    assert [c.name for c in config.controls] == ["box", "mask"]
    assert len(tasks) == 2
    for task in tasks:
        name = task["data"]["image"].removeprefix("/data/local-files/?d=")
        assert (out / name).is_file()  # the image, in the dataset Label Studio serves from
        doc = json.loads((out / "results" / f"{Path(name).stem}.json").read_text())
        (predicted,) = task["predictions"]
        assert predicted["model_version"].startswith("vitsam:")
        boxes = [r for r in predicted["result"] if r["type"] == "rectanglelabels"]
        masks = [r for r in predicted["result"] if r["type"] == "brushlabels"]
        assert len(boxes) == len(masks) == len(doc["detections"]) > 0
        for d, b, m in zip(doc["detections"], boxes, masks):
            x1, y1, x2, y2 = d["box"]
            assert b["value"]["x"] == pytest.approx(100 * x1 / 100)
            assert b["value"]["height"] == pytest.approx(100 * (y2 - y1) / 80)
            assert b["value"]["rectanglelabels"] == m["value"]["brushlabels"] == [d["label"]]
            flat = decode_brush(m["value"]["rle"]).reshape(80, 100, 4)[..., 3]  # RGBA, alpha
            assert np.array_equal(flat > 0, decode_rle(d["mask"]))


def test_video_tasks_are_videorectangle_sequences(video_models, tmp_path):
    from label_studio_sdk.label_interface import LabelInterface

    clip = write_clip(tmp_path / "clip.mp4", n=6)
    out = tmp_path / "tracks"
    code = main(["segment", str(clip), "--box", "10,40,40,70", "--export", "label-studio",
                 "--out", str(out), "--segmenter", video_models["sam2_video"], "--device", "cpu",
                 "--quiet"])  # fmt: skip
    assert code == 0
    config = LabelInterface((out / "label-studio" / "config.xml").read_text())
    assert {c.tag for c in config.controls} == {"Labels", "VideoRectangle"}
    (task,) = json.loads((out / "label-studio" / "tasks.json").read_text())
    assert task["data"]["video"] == "/data/local-files/?d=videos/clip.mp4"
    assert (out / "videos" / "clip.mp4").read_bytes() == clip.read_bytes()
    doc = json.loads((out / "results" / "clip.json").read_text())
    regions = task["predictions"][0]["result"]
    for region in regions:
        tid = int(region["id"].removeprefix("track"))
        seen = [f for f in doc["frames"] if any(d["track_id"] == tid for d in f["detections"])]
        assert [k["frame"] for k in region["value"]["sequence"]] == [f["frame"] + 1 for f in seen]
        assert region["value"]["labels"] == ["box"] and region["value"]["framesCount"] == 6
    assert regions  # the box is tracked


def test_exported_tasks_import_into_label_studio(label_studio, models):
    from label_studio_sdk import LabelStudio

    url, key, root = label_studio
    assert export(models, photos(root / "photos"), root) == 0  # the dataset is the document root
    client = LabelStudio(base_url=url, api_key=key)
    project = client.projects.create(title="vitsam export",
                                     label_config=(root / "label-studio" / "config.xml").read_text())  # fmt: skip
    tasks = json.loads((root / "label-studio" / "tasks.json").read_text())
    client.projects.import_tasks(project.id, request=tasks)
    back = list(client.tasks.list(project=project.id, fields="all"))
    assert len(back) == len(tasks)
    by_image = {t.data["image"]: t for t in back}
    for task in tasks:
        stored = by_image[task["data"]["image"]]
        assert len(stored.predictions) == 1
        predicted = stored.predictions[0]
        predicted = predicted if isinstance(predicted, dict) else predicted.dict()
        assert predicted["model_version"] == task["predictions"][0]["model_version"]
        assert {r["type"] for r in predicted["result"]} == {"rectanglelabels", "brushlabels"}
        assert len(predicted["result"]) == len(task["predictions"][0]["result"])


def test_vitsam_serves_as_the_projects_ml_backend(label_studio, models, monkeypatch):
    from label_studio_sdk import LabelStudio

    url, key, root = label_studio
    photos(root / "backend")
    config = ('<View><Image name="photo" value="$picture"/><RectangleLabels name="boxes" '
              'toName="photo"><Label value="Cat"/><Label value="dog"/></RectangleLabels>'
              '<BrushLabels name="masks" toName="photo"><Label value="Cat"/></BrushLabels></View>')  # fmt: skip
    client = LabelStudio(base_url=url, api_key=key)
    project = client.projects.create(title="vitsam backend", label_config=config)
    client.projects.import_tasks(project.id, request=[
        {"picture": "/data/local-files/?d=backend/0.png"}, {"picture": "/data/local-files/?d=backend/1.png"}])  # fmt: skip
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(root))  # the backend reads from disk
    with server(models, "--label-studio", "--token", TOKEN) as backend:
        assert httpx.get(backend + "/health").status_code == 401  # the token guards it too
        client.ml.create(project=project.id, url=backend, title="vitsam", auth_method="BASIC_AUTH",
                         basic_auth_user="label-studio", basic_auth_pass=TOKEN,
                         extra_params={"box_threshold": 0, "text_threshold": 0})  # fmt: skip
        client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": True, "excluded": []})  # fmt: skip
        back = list(client.tasks.list(project=project.id, fields="all"))
    assert len(back) == 2
    found = 0
    for task in back:
        assert len(task.predictions) == 1, task
        predicted = task.predictions[0]
        predicted = predicted if isinstance(predicted, dict) else predicted.dict()
        assert predicted["model_version"].startswith("vitsam:")
        for region in predicted["result"]:
            assert region["to_name"] == "photo" and region["from_name"] in ("boxes", "masks")
            labels = region["value"].get("rectanglelabels") or region["value"].get("brushlabels")
            assert set(labels) <= {"Cat", "dog"}  # the config's spelling
            found += 1
    assert found  # with thresholds at 0 the tiny detector finds something
