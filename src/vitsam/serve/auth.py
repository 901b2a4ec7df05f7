"""The token guard: one ASGI middleware in front of every route of the server.

With a token set, every request (the HTTP API, the mounted Gradio page and all of its own
routes: its API, queue, uploads and files; websockets too) needs one of

- `Authorization: Bearer TOKEN` (the scheme in any case, RFC 7235 §2.1), or
- `Authorization: Basic ...` with TOKEN as the password, any user name (RFC 7617): what
  Label Studio sends an ML backend, which takes no bearer token, or
- the page's session cookie, which `POST /login` sets after a person types the token.

It sits in front of the mounted Gradio app on purpose: a mounted Gradio app does not run
the host app's FastAPI dependencies (gradio #4376, #6987, #7005), so a dependency on the
API routes alone leaves the page's routes open. Open without a token: `/healthz`, the
login form, and the OpenAPI description (`/openapi.json`, `/docs`, `/redoc`), which run
no model and take no file. Tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, quote

TOKEN_ENV = "VITSAM_TOKEN"  # the token, when --token is not given
COOKIE = "vitsam_session"
LOGIN = "/login"
LOGOUT = "/logout"
OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
LOGIN_BODY_LIMIT = 16 * 1024  # bytes: the login form is one field


def bearer_token(authorization: str) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header value, else None.

    The scheme is matched in any case (RFC 7235 §2.1: "bearer", "BEARER" and "Bearer"
    are one scheme); surrounding whitespace is ignored.
    """
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def basic_password(authorization: str) -> str | None:
    """The password of an `Authorization: Basic base64(user:password)` header value, else
    None (RFC 7617)."""
    import base64
    import binascii

    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not credentials.strip():
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return password if sep else None


def session_value(token: str) -> str:
    """The cookie the page keeps: an HMAC-SHA256 of the token, so the token itself never
    sits in the browser's cookie store. Changing the token ends every session."""
    return hmac.new(token.encode(), b"vitsam page session", hashlib.sha256).hexdigest()


class TokenGuard:
    """ASGI middleware: without the token, a request gets 401 (JSON, `WWW-Authenticate:
    Bearer`), a page load in a browser a redirect to the login form, and a websocket is
    closed (1008). With `token` empty it passes everything through."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token
        self._session = session_value(token) if token else ""

    async def __call__(self, scope, receive, send):
        if not self.token or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if scope["type"] == "http" and path == LOGIN:
            return await self._login(scope, receive, send)
        if scope["type"] == "http" and path == LOGOUT:
            return await _redirect(send, LOGIN, cookie=f"{COOKIE}=; Max-Age=0; Path=/")
        if path in OPEN_PATHS or self._allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if _wants_page(scope):
            return await _redirect(send, f"{LOGIN}?next={quote(_local(path))}")
        await _send(send, 401, json.dumps({"error": "missing or wrong bearer token"}).encode(),
                    "application/json", [(b"www-authenticate", b"Bearer")])  # fmt: skip

    def _allowed(self, scope) -> bool:
        headers = _headers(scope)
        authorization = headers.get("authorization", "")
        given = bearer_token(authorization)
        if given is None:
            given = basic_password(authorization)
        if given is not None:
            return hmac.compare_digest(given.encode(), self.token.encode())
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no session
            return False
        value = cookie[COOKIE].value if COOKIE in cookie else ""
        return bool(value) and hmac.compare_digest(value.encode(), self._session.encode())

    async def _login(self, scope, receive, send):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        target = _local(query.get("next", ["/"])[0])
        if scope["method"] != "POST":
            return await _send(send, 200, _form(target, ""), "text/html; charset=utf-8")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > LOGIN_BODY_LIMIT:
                return await _send(send, 413, b"login form too large", "text/plain")
            if not message.get("more_body"):
                break
        given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            page = _form(target, "Wrong token: try again (it is the --token the server runs with).")
            return await _send(send, 401, page, "text/html; charset=utf-8")
        cookie = f"{COOKIE}={self._session}; Path=/; HttpOnly; SameSite=Strict"
        await _redirect(send, target, cookie=cookie)


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _wants_page(scope) -> bool:
    """A browser loading a page (GET asking for HTML), not a script calling the API."""
    return scope.get("method") == "GET" and "text/html" in _headers(scope).get("accept", "")


def _local(path: str) -> str:
    """Only a path on this server may follow the login ('//host' or 'http:' would leave it)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _form(target: str, message: str) -> bytes:
    note = f'<p style="color:#b00">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>vitsam: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:28em;margin:4em auto">
<h2>vitsam</h2><p>This server needs its token.</p>{note}
<form method="post" action="{LOGIN}?next={html.escape(quote(target))}">
<input type="password" name="token" id="token" autocomplete="current-password" autofocus
 placeholder="token" style="width:100%;padding:.5em" required>
<button type="submit" id="sign-in" style="margin-top:1em;padding:.5em 1.5em">Sign in</button>
</form></body></html>""".encode()


async def _redirect(send, location: str, cookie: str = "") -> None:
    extra = [(b"location", location.encode())]
    if cookie:
        extra.append((b"set-cookie", cookie.encode()))
    await _send(send, 303, b"", "text/plain", extra)


async def _send(send, status: int, body: bytes, content_type: str, extra=()) -> None:
    headers = [(b"content-type", content_type.encode()), (b"cache-control", b"no-store"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
