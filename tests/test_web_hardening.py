"""The status service under hostile or unusual requests, on every adapter (Bottle
plugin, WSGI middleware and app, ASGI middleware and app): unrelated requests pass
through untouched, one answer to a path that is not UTF-8, prefixes that cannot
work are refused, a DELETE bound to the run the client saw, caches bounded in bytes.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Callable
from typing import Any
from wsgiref.validate import validator

import bottle
import pytest

import tracked
from tracked.asgi import TrackedMiddleware as AsgiMiddleware
from tracked.bottle import TrackedPlugin
from tracked.wsgi import TrackedMiddleware as WsgiMiddleware

PREFIX = "/_progress_status"
MIDDLEWARES = ["bottle", "wsgi", "asgi"]


# ----------------------------------------------------------------------------- drivers


def asgi_call(
    app: Callable[..., Any], method: str, path: str, query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"",
    root_path: str = "", raw_path: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request to an ASGI app as a server sends it: (status, headers, body)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode("utf-8", "replace"),
        "root_path": root_path, "query_string": query, "headers": headers or [],
        "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
    }
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    found = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], found, b"".join(m.get("body", b"") for m in sent[1:])


def wsgi_call(
    app: Callable[..., Any], method: str, path: bytes, query: bytes = b"", body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request to a WSGI app as a server sends it (the path's raw bytes read as
    latin-1, PEP 3333), checked by ``wsgiref.validate``: (status, headers, body)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path.decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"), "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)) if body else "",
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    if not environ["CONTENT_LENGTH"]:
        del environ["CONTENT_LENGTH"]
    started: list[Any] = []

    def start_response(status: str, listed: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, listed]
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return int(started[0].split()[0]), {k.lower(): v for k, v in started[1]}, data


def echo_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """An unrelated WSGI route: echoes its raw query, body and the request scope's id."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "application/json")])
    return [_echo(environ.get("QUERY_STRING", "").encode("latin-1"), body)]


async def echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same route for ASGI."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": _echo(scope["query_string"], body)})


def _echo(query: bytes, body: bytes) -> bytes:
    from tracked._scope import request_scope

    scope = request_scope.get()
    return json.dumps({
        "query": query.decode("latin-1"), "body": body.decode("latin-1"),
        "progress_id": None if scope is None else scope.progress_id,
    }).encode()


def bottle_app(store: tracked.Store, **options: Any) -> bottle.Bottle:
    app = bottle.Bottle()
    app.install(TrackedPlugin(store, **options))

    @app.route("/search", method=["GET", "POST"])
    def search() -> bytes:
        query = bottle.request.environ["QUERY_STRING"].encode("latin-1")
        return _echo(query, bottle.request.body.read())

    return app


Answer = tuple[int, dict[str, str], bytes]
Call = Callable[..., Answer]


@pytest.fixture(params=MIDDLEWARES)
def call(request: pytest.FixtureRequest) -> Callable[..., Call]:
    """``make(store, **options)`` -> ``call(method, path, query=b"", body=b"", headers={})``
    for one adapter wrapping an unrelated route ``/search`` and the status route."""

    def make(store: tracked.Store, **options: Any) -> Call:
        if request.param == "asgi":
            app = AsgiMiddleware(echo_asgi, store, **options)

            def via_asgi(method: str, path: str, query: bytes = b"", body: bytes = b"",
                         headers: dict[str, str] | None = None) -> Answer:
                listed = [(k.lower().encode(), v.encode("latin-1"))
                          for k, v in (headers or {}).items()]
                if body:
                    listed.append((b"content-length", str(len(body)).encode()))
                return asgi_call(app, method, path, query, listed, body)

            return via_asgi
        wsgi = (bottle_app(store, **options) if request.param == "bottle"
                else WsgiMiddleware(echo_wsgi, store, **options))

        def via_wsgi(method: str, path: str, query: bytes = b"", body: bytes = b"",
                     headers: dict[str, str] | None = None) -> Answer:
            return wsgi_call(wsgi, method, path.encode(), query, body, headers)

        return via_wsgi

    return make


# ----------------------------------------------------------------------------- item 3


@pytest.mark.parametrize("query", [b"q=%E9t%E9", b"q=%FF", b"%E9=1", b"q=\xe9t\xe9", b"a=1&b=%C3"])
def test_an_unrelated_query_that_is_not_utf8_reaches_the_app_untouched(call, query):
    status, _, body = call(tracked.MemoryStore())("GET", "/search", query)
    assert status == 200
    assert json.loads(body) == {"query": query.decode("latin-1"), "body": "", "progress_id": None}


def test_an_unrelated_form_that_is_not_utf8_reaches_the_app_untouched(call):
    form = b"city=Z%FCrich&raw=\xfc&progress_id=abc"
    status, _, body = call(tracked.MemoryStore())(
        "POST", "/search", b"", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert json.loads(body) == {"query": "", "body": form.decode("latin-1"), "progress_id": "abc"}


def test_a_query_that_is_not_utf8_elsewhere_still_gives_its_progress_id(call):
    status, _, body = call(tracked.MemoryStore())("GET", "/search", b"q=%E9&progress_id=abc")
    assert status == 200
    assert json.loads(body)["progress_id"] == "abc"


@pytest.mark.parametrize(
    ("query", "form"),
    [(b"progress_id=%E9", b""), (b"", b"progress_id=%E9"), (b"", b"progress_id=\xe9")],
)
def test_only_a_progress_id_that_is_not_utf8_is_refused(call, query, form):
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
    status, found, body = call(tracked.MemoryStore())("POST", "/search", query, form, headers)
    assert status == 400
    assert found["content-type"].startswith("application/json")
    assert "progress_id" in json.loads(body)["error"]


def test_the_status_route_ignores_fields_it_does_not_read(call):
    store = tracked.MemoryStore()
    with tracked.start("job", store=store):
        pass
    answer = call(store)
    status, _, body = answer("GET", PREFIX + "/job", b"utm=%E9t%E9")
    assert status == 200
    assert json.loads(body)["name"] == "job"
    status, _, body = answer("GET", PREFIX + "/job", b"since=%E9")
    assert status == 400
    assert json.loads(body)["error"] == "the query's since is not UTF-8"
