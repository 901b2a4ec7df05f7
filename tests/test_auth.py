"""The token guard in process: every route the server exposes, the login form, the cookie."""

import re

import pytest
from starlette.routing import Mount
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from vitsam.serve.auth import COOKIE, LOGIN, LOGOUT, OPEN_PATHS, basic_password, bearer_token
from vitsam.serve.server import create_server
from vitsam.serve.service import SegmentService

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def app():
    pytest.importorskip("gradio")
    service = SegmentService(["grounding-dino-tiny"], ["sam2.1-tiny"])
    return create_server(service, TOKEN, label_studio=True)  # its ML-backend routes too


def routes(items, prefix=""):
    """(path, methods) of every route, through mounts and included routers (Gradio's)."""
    for r in items:
        if isinstance(r, Mount):
            yield from routes(r.routes, prefix + r.path)
        elif hasattr(r, "original_router"):  # FastAPI's included router
            yield from routes(r.original_router.routes, prefix + r.include_context.prefix)
        elif hasattr(r, "path"):
            yield prefix + r.path, sorted(getattr(r, "methods", None) or {"GET"})


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path) or "/"


def test_every_route_but_health_login_and_the_api_description_needs_the_token(app):
    client = TestClient(app)
    seen = 0
    for path, methods in routes(app.routes):
        for method in methods:
            r = client.request(method, concrete(path), follow_redirects=False)
            if path in OPEN_PATHS | {LOGIN, LOGOUT}:  # the guard's own form answers these
                assert "www-authenticate" not in r.headers, path
                continue
            seen += 1
            assert r.status_code == 401, f"{method} {path}: {r.status_code}"
            assert r.headers["www-authenticate"] == "Bearer"
    assert seen > 60  # the Gradio app's own routes are in the sweep, not only ours
    gradio = {"/gradio_api/upload", "/gradio_api/queue/join", "/gradio_api/run/{api_name}"}
    assert gradio <= {p for p, _ in routes(app.routes)}
    assert {"/health", "/setup", "/predict"} <= {p for p, _ in routes(app.routes)}


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", " bEaReR "])
def test_the_bearer_scheme_is_case_insensitive(app, scheme):
    client = TestClient(app)
    assert client.get("/config", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200
    wrong = client.get("/config", headers={"Authorization": f"{scheme} {TOKEN}x"})
    assert wrong.status_code == 401


def test_label_studio_sends_the_token_as_a_basic_password(app):
    import base64

    def basic(user, password):
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    client = TestClient(app)
    assert client.get("/health", headers={"Authorization": basic("ls", TOKEN)}).status_code == 200
    assert client.get("/health", headers={"Authorization": basic("ls", TOKEN + "x")}).status_code == 401
    assert client.get("/health", headers={"Authorization": "Basic not-base64!"}).status_code == 401
    assert basic_password(basic("", "a:b")) == "a:b" and basic_password("Bearer x") is None


def test_bearer_token_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc  ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None and bearer_token("") is None


def test_a_person_signs_in_once_and_the_page_opens(app):
    client = TestClient(app)
    r = client.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    form = client.get("/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    wrong = client.post("/login", data={"token": "guess"}, follow_redirects=False)
    assert wrong.status_code == 401 and "Wrong token" in wrong.text and COOKIE not in client.cookies
    r = client.post("/login?next=/", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert TOKEN not in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/config").status_code == 200  # the page's own API calls pass too
    client.get("/logout")
    assert client.get("/config").status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil"])
def test_the_login_never_sends_a_person_off_the_server(app, target):
    r = TestClient(app).post(f"/login?next={target}", data={"token": TOKEN}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_a_websocket_without_the_token_is_closed(app):
    with pytest.raises(WebSocketDisconnect) as e:
        with TestClient(app).websocket_connect("/gradio_api/queue/join"):
            pass
    assert e.value.code == 1008


def test_no_token_no_guard():
    pytest.importorskip("gradio")
    app = create_server(SegmentService(["grounding-dino-tiny"], ["sam2.1-tiny"]), "")
    assert TestClient(app).get("/config").status_code == 200
