"""The HTTP API against a real server process on loopback, with tiny random-weight models."""

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving import TOKEN, server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def url(models):
    with server(models, "--token", TOKEN, "--max-upload-mb", "1", "--queue-size", "8") as u:
        yield u


def png_bytes(size=(160, 120), mode="RGB") -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def post(url, data=None, files=None, params=None, headers=AUTH, **kw):
    data = {"max_detections": "3", **(data or {})}
    files = files or {"image": ("photo.png", png_bytes(), "image/png")}
    return httpx.post(url + "/v1/segment", data=data, files=files, params=params, headers=headers,
                      timeout=60, **kw)  # fmt: skip


def healthy(url) -> bool:
    return httpx.get(url + "/healthz").json()["status"] == "ok"


def test_health_openapi_and_page(url):
    health = httpx.get(url + "/healthz").json()
    assert health["status"] == "ok" and len(health["detectors"]) == 2
    spec = httpx.get(url + "/openapi.json").json()
    assert "/v1/segment" in spec["paths"] and "/healthz" in spec["paths"]
    assert httpx.get(url + "/docs").status_code == 200
    assert httpx.get(url + "/").status_code == 401  # the page needs the token too
    page = httpx.get(url + "/", headers=AUTH)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_segment_answers_the_cli_json(url):
    r = post(url, {"prompt": "cat. dog", "box_threshold": "0.0", "text_threshold": "0.0"})
    assert r.status_code == 200
    doc = r.json()
    assert set(doc) == {"image", "width", "height", "prompt", "detector", "segmenter", "detections"}
    assert (doc["width"], doc["height"], doc["image"]) == (160, 120, "photo.png")
    assert doc["detections"] and all(d["label"] in ("cat", "dog") for d in doc["detections"])


def test_png_format_boxes_and_model_choice(url, models):
    r = post(url, {"prompt": "cat"}, params={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (160, 120)
    r = post(url, {"boxes": json.dumps([[10, 10, 60, 60], [70, 20, 150, 110]])})
    assert [d["box"] for d in r.json()["detections"]] == [[10, 10, 60, 60], [70, 20, 150, 110]]
    r = post(url, {"prompt": "cat", "detector": models["owlv2"], "box_threshold": "0.3"})
    assert r.status_code == 200 and r.json()["detector"] == models["owlv2"]


def test_boxes_are_clamped_and_commas_separate_phrases(url):
    r = post(url, {"boxes": json.dumps([[-20, -20, 100, 100], [100, 10, 300, 100]])})
    assert [d["box"] for d in r.json()["detections"]] == [[0, 0, 100, 100], [100, 10, 160, 100]]
    r = post(url, {"prompt": "Cat, dog\u200b", "box_threshold": "0", "text_threshold": "0"})
    labels = {d["label"] for d in r.json()["detections"]}
    assert r.status_code == 200 and labels and labels <= {"cat", "dog"}


def test_exif_orientation_is_applied_to_uploads(url):
    """A phone JPEG stored 160x120 with EXIF orientation 6 is segmented as shown, 120x160."""
    arr = np.zeros((120, 160, 3), np.uint8)
    arr[:, :80] = 200
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", exif=exif)
    files = {"image": ("phone.jpg", buf.getvalue(), "image/jpeg")}
    r = post(url, {"prompt": "cat", "box_threshold": "0", "text_threshold": "0",
                   "max_detections": "1"}, files)  # fmt: skip
    doc = r.json()
    assert (doc["width"], doc["height"]) == (120, 160)
    assert doc["detections"][0]["mask"]["size"] == [160, 120]
    r = post(url, {"boxes": "[[0, 0, 120, 80]]"}, files, params={"format": "png"})
    assert Image.open(io.BytesIO(r.content)).size == (120, 160)


def test_token_is_required(url):
    assert post(url, {"prompt": "cat"}, headers={}).status_code == 401
    r = post(url, {"prompt": "cat"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "token" in r.json()["error"]
    lower = post(url, {"prompt": "cat"}, headers={"Authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200  # RFC 7235: the scheme is case-insensitive


def test_the_page_api_needs_the_token_too(url, tmp_path):
    """gradio_client calls the page's own API (/gradio_api/...), which a mounted Gradio app
    serves past the host app's dependencies: the guard stops it without the token."""
    from gradio_client import Client, handle_file

    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes())
    with pytest.raises(Exception, match="credentials were not provided|401"):
        Client(url, verbose=False).predict(handle_file(str(photo)), "a cat", 0, 0, api_name="/run")
    for route in ("/gradio_api/call/run", "/gradio_api/queue/join", "/gradio_api/upload"):
        assert httpx.post(url + route, json={"data": []}).status_code == 401, route
    client = Client(url, verbose=False, headers=AUTH, download_files=str(tmp_path / "dl"))
    overlay, table, files = client.predict(
        handle_file(str(photo)), "a cat", 0, 0, api_name="/run"
    )
    assert Image.open(overlay).size == (160, 120)
    assert table["data"] and {row[0] for row in table["data"]} <= {"a cat", "cat"}
    assert sorted(Path(f).suffix for f in files) == [".json", ".png"]


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data,files,status,message",
    [
        ({"prompt": "cat"}, {"image": ("x.png", b"hello", "image/png")}, 400, "not an image"),
        ({"prompt": "cat"}, {"image": ("x.png", png_bytes()[:200], "image/png")}, 400, "truncated"),
        ({"prompt": "  "}, None, 400, "empty prompt"),
        ({"prompt": " ".join(["remote control"] * 150)}, None, 400, "detector's limit of 256"),
        ({"prompt": "cat"}, {"image": ("bomb.png", bomb(), "image/png")}, 400, "bomb"),
        ({"prompt": "cat"}, {"image": ("big.png", b"\0" * (2 * 2**20), "image/png")}, 413, "limit"),
        ({"boxes": "[[1, 2, 3]"}, None, 400, "JSON list"),
        ({"boxes": "[[1, 2], [3, 4]]"}, None, 400, "list of [X1, Y1, X2, Y2] boxes"),
        ({"boxes": "[1, 2, 3, 4]"}, None, 400, "list of [X1, Y1, X2, Y2] boxes"),
        ({"boxes": "5"}, None, 400, "list of [X1, Y1, X2, Y2] boxes"),
        ({"boxes": "[[0, 0, Infinity, 100]]"}, None, 400, "finite"),
        ({"boxes": "[[NaN, 0, 10, 10]]"}, None, 400, "finite"),
        ({"boxes": "[[200, 10, 300, 100]]"}, None, 400, "wholly outside the 160x120 image"),
        ({"prompt": "cat", "max_detections": "-1"}, None, 422, ""),
        ({"prompt": "cat", "detector": "/etc"}, None, 400, "not served here"),
        ({"prompt": "cat", "box_threshold": "7"}, None, 422, ""),
    ],
)
def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(
    url, data, files, status, message
):
    r = post(url, data, files)
    assert r.status_code == status
    body = r.json()
    assert message in json.dumps(body)
    assert healthy(url)


def test_a_client_filename_never_names_a_server_file(url):
    r = post(url, {"prompt": "cat"}, {"image": ("/etc/hostname", b"not an image", "image/png")})
    assert r.status_code == 400 and "not an image" in r.json()["error"]


def test_concurrent_requests_are_all_answered(url):
    def one(i):
        return post(url, {"prompt": "cat. dog", "box_threshold": "0.5"}).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, range(20)))
    assert codes == [200] * 20
    assert healthy(url)


def test_full_queue_answers_503_at_once(models):
    """In-process: hold the only queue slot, and the next request is refused, not queued."""
    from fastapi.testclient import TestClient

    from vitsam.serve.api import create_app
    from vitsam.serve.service import SegmentService

    service = SegmentService([models["grounding_dino"]], [models["sam2"]], "cpu", queue_size=1)
    client = TestClient(create_app(service))
    files = {"image": ("p.png", png_bytes(), "image/png")}
    assert (
        client.post("/v1/segment", data={"prompt": "cat"}, files=files).status_code == 503
    )  # loading
    assert client.get("/healthz").json()["status"] == "loading"
    service.load()
    with service.admission:  # a request in flight
        r = client.post("/v1/segment", data={"prompt": "cat"}, files=files)
        assert r.status_code == 503 and "busy" in r.json()["error"]
    assert client.post("/v1/segment", data={"prompt": "cat"}, files=files).status_code == 200
