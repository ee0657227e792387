"""The status route as a pure ASGI app, for FastAPI, Starlette or any ASGI server.

``status_app(store)`` answers ``GET /<name>`` relative to wherever it is mounted
(``app.mount("/_progress_status", status_app(store))``): it routes on the
request path below ``root_path``. Store reads block, so each request's answer
is computed in a worker thread (``asyncio.to_thread``) and the event loop never
waits on a file read or a Redis round trip; only an answer already rendered for
an unchanged FileStore record (checked with one ``stat``) is sent from the loop.
No dependency beyond the standard library: every decision is the framework-free
service's (``tracked._web``); this module only converts between ASGI and it.

``TrackedMiddleware(app, store)`` wraps a whole ASGI app (FastAPI, Starlette):
it serves the status route under ``prefix`` and runs every other request in the
request scope, so ``@tracked`` endpoints combine the client's ``progress_id``
(query, form field or ``X-Progress-Id``, read as the Bottle plugin reads it)
with their names::

    app.add_middleware(TrackedMiddleware, store=store)   # or TrackedMiddleware(app, store)
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

import tracked

from ._events import (
    HEARTBEAT_SECONDS,
    MAX_STREAM_SECONDS,
    wants_events,
)
from ._query import (
    FORM_LIMIT,
    FORM_TYPES,
    form_progress_ids,
    mount_prefix,
    requested_progress_id,
    wants_html,
)
from ._scope import RequestScope, request_scope
from ._web import (
    CACHE_BYTES,
    Authorize,
    CancelPolicy,
    EventStream,
    Response,
    StatusRequest,
    StatusService,
    Wait,
    error,
)

__all__ = ["TrackedMiddleware", "status_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def status_app(
    store: tracked.Store | str | os.PathLike[str] | None = None,
    *,
    authorize: Authorize | None = None,
    max_stream_seconds: float = MAX_STREAM_SECONDS,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    cancel: CancelPolicy = False,
    show_errors: bool = True,
    cache_bytes: int = CACHE_BYTES,
) -> ASGIApp:
    """An ASGI app serving the status route for ``store`` (None: the process default
    at request time). ``authorize(scope, key)`` returning false answers 403; it
    runs in the worker thread with the rest of the request. ``cancel`` (off by
    default) lets ``DELETE /<name>`` ask a running progress to stop: True for
    whoever ``authorize`` lets read it, or ``(scope, key) -> bool`` per request.
    ``show_errors=False`` sends ``"error": "failed"`` instead of the exception's
    text (the store keeps it), in JSON answers and events alike.

    A GET accepting ``text/event-stream`` gets Server-Sent Events for at most
    ``max_stream_seconds`` (0: never), with a comment line after
    ``heartbeat_seconds`` of silence. A waiting stream holds no thread: it waits
    on the event loop for its store's change signal; only store reads run in a
    worker thread.
    ``cache_bytes`` (default 32 MiB) bounds the bytes the route keeps for reuse:
    half for rendered answers, half for open streams (nothing once they closed).
    """
    service = StatusService(
        store, authorize=authorize, max_stream_seconds=max_stream_seconds,
        heartbeat_seconds=heartbeat_seconds, cancel=cancel, show_errors=show_errors,
        cache_bytes=cache_bytes,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        else:
            raise ValueError(f"the tracked status app serves HTTP only, not {kind!r}")

    async def http(scope: Scope, receive: Receive, send: Send) -> None:
        root: str = scope.get("root_path", "").rstrip("/")  # "/" and "/app/" too
        path: str = scope["path"]
        if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
            path = path[len(root) :]
        await serve(scope, receive, send, root, path)

    async def serve(scope: Scope, receive: Receive, send: Send, root: str, path: str) -> None:
        """Answer ``path``, the request's path below the mount point ``root`` (which
        ``scope`` may not carry yet: it is only copied in when the request goes on)."""
        method: str = scope["method"]
        if not path.isascii() and _path_not_utf8(scope, path):
            await _send(_PATH_NOT_UTF8, method == "HEAD", send)
            return
        if not isinstance(scope.get("headers", ()), (list, tuple)):  # any iterable is ASGI:
            scope = {**scope, "headers": list(scope["headers"])}  # read it twice safely
        if (method == "GET" or method == "HEAD") and not scope.get("query_string"):
            quick = _poll_answer(service, scope, method, path)
            if quick is not None:
                await _send(quick, method == "HEAD", send)
                return
        if scope.get("root_path", "") != root:
            scope = {**scope, "root_path": root}
        request = _request(scope, root, path)
        answer: Response | EventStream | None = service.cached(request)
        if answer is None:
            loop = asyncio.get_running_loop()
            answer = await asyncio.to_thread(service.open, request, loop)
        # A stream lasts up to a minute: it keeps no copy of its request (nor of the
        # scope copied above for its root_path).
        del request, scope
        if isinstance(answer, EventStream):
            await _stream(answer, receive, send)
        else:
            await _send(answer, method == "HEAD", send)

    app.service = service  # type: ignore[attr-defined]
    app.serve = serve  # type: ignore[attr-defined] # for TrackedMiddleware: HTTP scopes only
    return app


def _path_not_utf8(scope: Scope, path: str) -> bool:
    """Whether the request's path held bytes that are not UTF-8. Servers decode those
    to U+FFFD (uvicorn, hypercorn, daphne) or lone surrogates: the raw path decides,
    so ``/caf%E9`` is the 400 it is on WSGI, not the name ``caf\ufffd``."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        try:
            unquote_to_bytes(raw.partition(b"?")[0]).decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


#: What a status path that is not UTF-8 gets, whichever adapter serves it.
_PATH_NOT_UTF8 = error(400, "the URL path is not UTF-8")


def _poll_answer(service: StatusService, scope: Scope, method: str, path: str) -> Response | None:
    """The cached answer to a plain poll (a GET or HEAD without a query string naming
    a progress in its path, with at most an ``If-None-Match`` and an ``Accept`` that
    asks for no event stream); None for anything else, which ``serve`` then reads in
    full. Polls are most of the route's requests: this keeps them cheap."""
    if_none_match: str | None = None
    for name, value in scope.get("headers", ()):
        if name in _HEADERS:
            if name == b"if-none-match" and if_none_match is None:
                if_none_match = value.decode("latin-1")
            elif name != b"accept" or (method == "GET" and wants_events(value.decode("latin-1"))):
                return None  # an id, a resume, a stream, htmx or a repeated header: in full
            elif wants_html(value.decode("latin-1")):
                return None  # the HTML fragment
    return service.cached_poll(path[1:] if path[:1] == "/" else path, if_none_match)


def _request(scope: Scope, root: str, path: str) -> StatusRequest:
    """Describe an ASGI HTTP request for the service: ``path`` is below ``root``."""
    found: dict[bytes, str] | None = None  # most requests carry none of _HEADERS
    for name, value in scope.get("headers", ()):
        if name in _HEADERS:
            text = value.decode("latin-1")
            if found is None:
                found = {name: text}
            else:
                found[name] = f"{found[name]}, {text}" if name in found else text
    query: bytes = scope.get("query_string", b"")
    request = StatusRequest(
        scope["method"],
        path[1:] if path[:1] == "/" else path,
        query.decode("latin-1") if query else "",
        None,
        None,
        root,
        scope,
    )
    if found is not None:
        request.if_none_match = found.get(b"if-none-match")
        request.progress_id_header = found.get(b"x-progress-id")
        request.accept = found.get(b"accept")
        request.last_event_id = found.get(b"last-event-id")
        request.if_match = found.get(b"if-match")
        request.hx_request = found.get(b"hx-request")
    return request


_HEADERS = frozenset(
    (b"if-none-match", b"x-progress-id", b"accept", b"last-event-id", b"if-match",
     b"hx-request")
)


async def _stream(stream: EventStream, receive: Receive, send: Send) -> None:
    """Drive an event stream on the loop: wait for changes without a thread, read
    the store in one, stop when the client disconnects (or a send fails)."""
    # Done once the client has gone: no closure or cells per stream (issue 19: each
    # open stream's memory counts, a thousand at a time).
    listener = asyncio.create_task(_listen(receive, stream))
    try:
        headers = list(_encoded(stream.headers))  # a fresh list of shared pairs
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        value: Any = None
        while not listener.done():
            try:
                step = stream.steps.send(value)
            except StopIteration:
                break
            value = None
            if isinstance(step, bytes):
                await send({"type": "http.response.body", "body": step, "more_body": True})
            elif isinstance(step, Wait):
                value = await stream.subscription.wait_async(step.seconds)
            else:
                try:
                    value = await asyncio.to_thread(stream.load)
                except Exception:  # noqa: BLE001 - end the stream; a reconnect gets the 500
                    break
        if not listener.done():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass  # the client went away (ASGI 2.4 servers raise it from send)
    finally:
        listener.cancel()
        stream.close()


async def _listen(receive: Receive, stream: EventStream) -> None:
    """Return once the client of ``stream`` has disconnected, waking its schedule."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            stream.subscription.notify()  # wake a waiting schedule now
            return


@functools.lru_cache(maxsize=16)
def _encoded(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """An event stream's headers as ASGI sends them, encoded once for all streams."""
    return tuple((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers)


async def _send(answer: Response, head: bool, send: Send) -> None:
    """Send one complete answer; a HEAD gets the headers of the GET, without the body."""
    cached = _ENCODED.get((id(answer.headers), len(answer.body)))
    if cached is not None and cached[0] is answer.headers:
        headers = list(cached[1])  # a fresh list: middlewares outside may append to it
    else:
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                   for name, value in answer.headers]
        if answer.status not in (204, 304):
            headers.append((b"content-length", str(len(answer.body)).encode("ascii")))
        if len(_ENCODED) >= 1024:
            _ENCODED.clear()
        _ENCODED[(id(answer.headers), len(answer.body))] = (answer.headers, tuple(headers))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else answer.body})


#: (id of a Response's headers, its body's length) -> (those headers, encoded): cached
#: answers are sent as they are. The headers are kept (so their id stays theirs), never
#: the body: 1,024 entries of a few hundred bytes.
_Headers = tuple[tuple[str, str], ...]
_ENCODED: dict[tuple[int, int], tuple[_Headers, tuple[tuple[bytes, bytes], ...]]] = {}


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: acknowledge startup and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class TrackedMiddleware:
    """Wrap an ASGI app: serve the status route under ``prefix``; run every other
    HTTP request with the client's ``progress_id`` and ``store`` in the request scope
    (a context variable: async endpoints and the threads Starlette runs sync ones
    in both see it).

    A request whose ``progress_id`` sources disagree, or is not a valid id, gets a
    JSON 400 and never reaches ``app``. A urlencoded or multipart body of at most
    ``FORM_LIMIT`` bytes (1 MiB) is read for a ``progress_id`` field and replayed
    to ``app``; for larger uploads, send it in the query or the header. The other
    options are ``status_app``'s; other scopes (lifespan, websocket) go to ``app``.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: tracked.Store | str | os.PathLike[str] | None = None,
        *,
        prefix: str = "/_progress_status",
        authorize: Authorize | None = None,
        max_stream_seconds: float = MAX_STREAM_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        cancel: CancelPolicy = False,
        show_errors: bool = True,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.app = app
        self.prefix = mount_prefix(prefix)
        self.status = status_app(
            store, authorize=authorize, max_stream_seconds=max_stream_seconds,
            heartbeat_seconds=heartbeat_seconds, cancel=cancel, show_errors=show_errors,
            cache_bytes=cache_bytes,
        )
        self.store = self.status.service.store  # type: ignore[attr-defined]
        self._serve_status = self.status.serve  # type: ignore[attr-defined]
        self._below = self.prefix + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root: str = scope.get("root_path", "").rstrip("/")  # "/" and "/app/" too
        path: str = scope["path"]
        local = path[len(root) :] if root and path.startswith(root) else path
        if local.startswith(self._below) or local == self.prefix:
            await self._serve_status(
                scope, receive, send, root + self.prefix, local[len(self.prefix) :]
            )
            return
        headers = dict(scope.get("headers", ()))
        try:
            form: list[str] = []
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            if content_type.lower().startswith(FORM_TYPES):
                body, receive = await _read_small_body(headers, receive)
                if body is not None:
                    form = form_progress_ids(content_type, body)
            header = headers.get(b"x-progress-id")
            progress_id = requested_progress_id(
                scope.get("query_string", b"").decode("latin-1"),
                None if header is None else header.decode("latin-1"),
                form,
            )
        except tracked.TrackedError as exc:
            await _send(error(400, str(exc)), False, send)
            return
        token = request_scope.set(RequestScope(progress_id, self.store))
        try:
            await self.app(scope, receive, send)
        finally:
            request_scope.reset(token)


async def _read_small_body(
    headers: dict[bytes, bytes], receive: Receive
) -> tuple[bytes | None, Receive]:
    """The whole body when it declares at most FORM_LIMIT bytes, and a ``receive``
    that replays it to the app; (None, receive) for any other body."""
    try:
        length = int(headers.get(b"content-length", b""))
    except ValueError:
        return None, receive
    if not 0 < length <= FORM_LIMIT:
        return None, receive
    chunks: list[bytes] = []
    pending: list[Message] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            pending.append(message)
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    replay.extend(pending)

    async def replaying() -> Message:
        if replay:
            return replay.pop(0)
        return await receive()

    return body, replaying
