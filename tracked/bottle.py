"""Bottle integration: ``TrackedPlugin`` sets the request scope and serves the status route.

``app.install(TrackedPlugin(store))`` makes ``store`` the default for the app's
routes, combines a client's ``?progress_id=`` with the names routes give, and
adds ``GET {prefix}/<name>`` answering the wire JSON of a progress.

Access control: anyone who knows a progress's name (and progress_id) can read
it, as in the Perl original. For anything sensitive, let clients generate
unguessable progress_ids (``crypto.randomUUID()``) and pass
``authorize(request, key) -> bool`` to check the reader may see ``key``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import bottle

import tracked

from ._scope import RequestScope, request_scope

__all__ = ["TrackedPlugin", "accepted", "status_url"]

logger = logging.getLogger("tracked")

Authorize = Callable[[Any, str], bool]
Signature = tuple[int, int, int]

JSON_TYPE = "application/json; charset=utf-8"
#: Options the route-config form ``tracked={...}`` passes on to ``@tracked``.
ROUTE_OPTIONS = frozenset({"name", "total", "min_interval", "max_messages"})
_SINCE = re.compile(r"[0-9]{1,15}")


class TrackedPlugin:
    """A Bottle plugin (API v2) tying an app's routes to a progress store.

    ``store`` is a ``Store``, a directory or a store URL (None: the process
    default at request time); ``prefix`` is where the status route lives;
    ``authorize(request, key)`` returning false makes the status route answer 403.
    ``key`` is the name, the progress_id, or both joined by NUL, as
    ``tracked.State(name, progress_id).key`` builds it.
    """

    name = "tracked"
    api = 2

    def __init__(
        self,
        store: tracked.Store | str | os.PathLike[str] | None = None,
        prefix: str = "/_progress_status",
        authorize: Authorize | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or "<" in prefix:
            raise tracked.InvalidValue(
                f"prefix must be a URL path starting with '/' and without '<', got {prefix!r}"
            )
        if authorize is not None and not callable(authorize):
            raise tracked.InvalidValue(f"authorize must be callable, got {authorize!r}")
        self.store = None if store is None else tracked.open_store(store)
        self.prefix = prefix.rstrip("/")
        self.authorize = authorize
        self._cache: EndedCache | None = None

    def __repr__(self) -> str:
        return f"TrackedPlugin(store={self.store!r}, prefix={self.prefix!r})"

    # ------------------------------------------------------------------ plugin API

    def setup(self, app: Any) -> None:
        """Refuse a second TrackedPlugin on one app; add the status route."""
        for other in app.plugins:
            if isinstance(other, TrackedPlugin):
                raise bottle.PluginError(f"{app!r} already has a TrackedPlugin: {other!r}")
        status = self.status_response
        app.route(self.prefix + "/<name:path>", "GET", status, skip=[self])
        app.route(self.prefix, "GET", self.missing_name, skip=[self])
        app.route(self.prefix + "/", "GET", self.missing_name, skip=[self])

    def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
        """Wrap a route: ``tracked={...}`` in its config tracks it; every call runs
        in the request scope (this app's store, the client's progress_id)."""
        options = _route_options(route)
        if options is not None:
            callback = tracked.tracked(**options)(callback)
        return self._scoped(callback)

    # ------------------------------------------------------------------ tracked routes

    def _scoped(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        store = self.store

        def call_in_scope(*args: Any, **kwargs: Any) -> Any:
            try:
                progress_id = _requested_progress_id()
            except tracked.InvalidName as exc:
                return error_response(400, str(exc))
            token = request_scope.set(RequestScope(progress_id, store))
            try:
                result = callback(*args, **kwargs)
                if inspect.isgenerator(result):
                    # Bottle iterates the body after this returns: keep the scope for it.
                    result = ScopedBody(result, contextvars.copy_context())
                return result
            except REFUSALS as exc:
                return refusal_response(exc)
            finally:
                request_scope.reset(token)

        return call_in_scope

    # ------------------------------------------------------------------ the status route

    def missing_name(self) -> Any:
        """``GET {prefix}/``: a 400 saying what the URL lacks."""
        return error_response(400, f"the URL names no progress: use {self.prefix}/<name>")

    def status_response(self, name: str) -> Any:
        """``GET {prefix}/<name>[?progress_id=X][&since=N]``: the wire JSON, 304 when
        ``If-None-Match`` holds the current ETag, else a JSON error."""
        environ = bottle.request.environ
        query = bottle.request.query if environ.get("QUERY_STRING") else None
        try:
            key = _status_key(name, query)
            since = _since(query)
        except tracked.TrackedError as exc:
            return error_response(400, str(exc))
        if self.authorize is not None and not self.authorize(bottle.request, key):
            return error_response(403, "not allowed to read this progress")
        try:
            rendered = self._rendered(key, since)
        except tracked.StoreError as exc:
            logger.warning("tracked: status route cannot read %r: %s", key, exc)
            return error_response(500, "the progress store cannot be read")
        if rendered is None:
            shown = key.replace("\0", "?progress_id=")
            return error_response(404, f"no progress {shown!r}")
        return _respond(rendered, environ.get("HTTP_IF_NONE_MATCH"))

    def _rendered(self, key: str, since: int) -> Rendered | None:
        """The response body for ``key``, from the cache or the store; None if unknown."""
        store = self.store or tracked.default_store()
        cache = self._cache
        if cache is None or cache.store is not store:
            cache = self._cache = EndedCache(store)
        signature = cache.signature(key)  # before reading: see EndedCache
        rendered = cache.get(key, since, signature)
        if rendered is not None:
            return rendered
        state = store.load(key)
        if state is None:
            return None
        rendered = render(state.messages_since(since) if since else state)
        if not state.in_progress:
            cache.put(key, since, signature, rendered)
        return rendered


class ScopedBody:
    """A generator route's body, run step by step in the context captured when the
    route was called; closing it (the client went away) closes the generator."""

    __slots__ = ("_context", "_generator", "_started")

    def __init__(self, generator: Iterator[Any], context: contextvars.Context) -> None:
        self._generator = generator
        self._context = context
        self._started = False

    def __iter__(self) -> ScopedBody:
        return self

    def __next__(self) -> Any:
        if self._started:
            return self._context.run(next, self._generator)
        self._started = True
        try:
            return self._context.run(next, self._generator)
        except REFUSALS as exc:
            # Nothing is sent yet: Bottle turns a raised HTTPResponse into the answer.
            raise refusal_response(exc) from exc

    def close(self) -> None:
        close = getattr(self._generator, "close", None)
        if close is not None:
            self._context.run(close)


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """A status response body and its ETag."""

    body: bytes
    etag: str


class EndedCache:
    """Rendered bodies of a FileStore's ended records, reused while their file is unchanged.

    An ended (or abandoned) record only changes when its file is replaced, so a
    ``stat`` (inode, mtime, size) tells whether a cached body is current, without
    reading or parsing the file. Files younger than ``SETTLE_NS`` are not cached:
    within one tick of the file system's clock a replaced file could look the same.
    """

    SETTLE_NS = 50_000_000
    MAX_ENTRIES = 1024

    def __init__(self, store: tracked.Store) -> None:
        self.store = store
        self._files = store if isinstance(store, tracked.FileStore) else None
        self._paths: dict[str, str] = {}
        self._entries: dict[tuple[str, int], tuple[Signature, Rendered]] = {}

    def signature(self, key: str) -> Signature | None:
        """The identity of ``key``'s file now; None when there is no file (or no FileStore)."""
        if self._files is None:
            return None
        path = self._paths.get(key)
        if path is None:
            path = str(self._files.path_for(key))
            _bounded_put(self._paths, key, path, self.MAX_ENTRIES)
        try:
            info = os.stat(path)
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def get(self, key: str, since: int, signature: Signature | None) -> Rendered | None:
        """The cached body for ``key`` and ``since`` if its file is still ``signature``."""
        if signature is None:
            return None
        entry = self._entries.get((key, since))
        return entry[1] if entry is not None and entry[0] == signature else None

    def put(self, key: str, since: int, signature: Signature | None, rendered: Rendered) -> None:
        """Remember the body of an ended record read after taking ``signature``."""
        if signature is not None and time.time_ns() - signature[1] > self.SETTLE_NS:
            _bounded_put(self._entries, (key, since), (signature, rendered), self.MAX_ENTRIES)


def _bounded_put(table: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Insert into ``table``, dropping the oldest entry once it holds ``limit``."""
    if len(table) >= limit and key not in table:
        try:
            del table[next(iter(table))]
        except (StopIteration, KeyError, RuntimeError):
            pass  # another thread changed the table: the bound is approximate
    table[key] = value


# ----------------------------------------------------------------------------- helpers


def _route_options(route: Any) -> dict[str, Any] | None:
    """The ``@tracked`` arguments a route's ``tracked=...`` config asks for, or None."""
    config = route.config
    flag = config.get("tracked")
    options = {
        key[len("tracked.") :]: value
        for key, value in config.items()
        if key.startswith("tracked.")
    }
    if not options:
        return {} if flag is True else None
    unknown = sorted(set(options) - ROUTE_OPTIONS)
    if unknown:
        raise tracked.InvalidValue(
            f"route {route.rule!r}: unknown tracked option(s) {', '.join(unknown)}; "
            f"use {', '.join(sorted(ROUTE_OPTIONS))}"
        )
    return options


def _requested_progress_id() -> str | None:
    """The client's ``?progress_id=``, validated; None when the request has none."""
    if "progress" not in bottle.request.environ.get("QUERY_STRING", ""):
        return None
    value = bottle.request.query.get("progress_id")
    return None if value is None else _valid_progress_id(value)


@functools.lru_cache(maxsize=4096)
def storage_key(name: str | None, progress_id: str | None) -> str:
    """The key ``name`` and ``progress_id`` combine into (validated once, then cached);
    raises ``InvalidName`` for a bad name or progress_id."""
    return tracked.State(name=name, progress_id=progress_id).key


def _valid_progress_id(value: str) -> str:
    return storage_key(None, value)


def _status_key(name: str, query: Any) -> str:
    """The storage key a status request names: the path's name, with any progress_id."""
    progress_id = None if query is None else query.get("progress_id")
    return storage_key(name, progress_id)


def _since(query: Any) -> int:
    """The ``?since=N`` message cursor: a non-negative integer, 0 when absent."""
    value = None if query is None else query.get("since")
    if value is None:
        return 0
    if not _SINCE.fullmatch(value):
        raise tracked.InvalidValue(f"since must be a non-negative integer, got {value!r}")
    return int(value)


def render(state: tracked.State) -> Rendered:
    """The wire JSON of ``state`` and its ETag, a hash of those very bytes."""
    body = json.dumps(state.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()
    return Rendered(body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')


def _respond(rendered: Rendered, if_none_match: str | None) -> bytes:
    """Fill Bottle's response: 304 without a body when the client has this ETag."""
    response = bottle.response
    response.set_header("ETag", rendered.etag)
    response.set_header("Cache-Control", "no-store")
    if if_none_match and _etag_matches(if_none_match, rendered.etag):
        response.status = 304
        return b""
    response.set_header("Content-Type", JSON_TYPE)
    return rendered.body


def _etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, or ``*``)."""
    if header == etag:
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


#: What a route may raise that is the client's doing, answered as a JSON error.
REFUSALS = (tracked.AlreadyRunning, tracked.InvalidName)


def refusal_response(exc: tracked.TrackedError) -> Any:
    """409 for a progress already running, 400 for a name the request made invalid."""
    return error_response(409 if isinstance(exc, tracked.AlreadyRunning) else 400, str(exc))


def error_response(status: int, message: str) -> Any:
    """The JSON error body every failure of the plugin answers with."""
    body = json.dumps({"error": message, "status": "error"}, ensure_ascii=False)
    headers = {"Content-Type": JSON_TYPE, "Cache-Control": "no-store"}
    return bottle.HTTPResponse(body.encode(), status=status, headers=headers)


def accepted(progress: tracked.Progress) -> Any:
    """``202 Accepted`` for a run started off the request (``tracked.submit``).

    The body is the run's wire JSON now; ``Location`` is its status URL on this
    app (the plugin's prefix, the name, and ``?progress_id=`` when it has one),
    so a client can poll it without knowing the name. Return it from the route.
    """
    body = json.dumps(progress.snapshot().to_dict(), ensure_ascii=False, separators=(",", ":"))
    headers = {
        "Content-Type": JSON_TYPE,
        "Cache-Control": "no-store",
        "Location": status_url(progress.name, progress.progress_id),
    }
    return bottle.HTTPResponse(body.encode(), status=202, headers=headers)


def status_url(name: str | None, progress_id: str | None = None) -> str:
    """The path of the status route for a run of this request's app: the mount point,
    the app's ``TrackedPlugin`` prefix (``/_progress_status`` without one) and the key."""
    route = bottle.request.environ.get("bottle.route")
    app = route.app if route is not None else bottle.request.app
    prefix = next(
        (p.prefix for p in app.plugins if isinstance(p, TrackedPlugin)), "/_progress_status"
    )
    mounted = ""
    while "_mount.app" in app.config:  # Bottle >= 0.13 mounts an app by copying its routes
        mounted = app.config["_mount.prefix"].rstrip("/") + mounted
        app = app.config["_mount.app"]
    path: str = bottle.request.script_name.rstrip("/") + mounted + prefix + "/"
    if name is None:
        return path + urllib.parse.quote(storage_key(None, progress_id), safe="")
    path += urllib.parse.quote(name, safe="")
    if progress_id is not None:
        path += "?progress_id=" + urllib.parse.quote(progress_id, safe="")
    return path
