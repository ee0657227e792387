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
import hashlib
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import bottle

import tracked

from ._scope import RequestScope, request_scope

__all__ = ["TrackedPlugin"]

logger = logging.getLogger("tracked")

Authorize = Callable[[Any, str], bool]

JSON_TYPE = "application/json; charset=utf-8"
#: Options the route-config form ``tracked={...}`` passes on to ``@tracked``.
ROUTE_OPTIONS = frozenset({"name", "total", "min_interval", "max_messages"})
_SINCE = re.compile(r"[0-9]{1,15}")


class TrackedPlugin:
    """A Bottle plugin (API v2) tying an app's routes to a progress store.

    ``store`` is a ``Store``, a directory or a store URL (None: the process
    default at request time); ``prefix`` is where the status route lives;
    ``authorize(request, key)`` returning false makes the status route answer 403.
    """

    name = "tracked"
    api = 2

    def __init__(
        self,
        store: tracked.Store | str | None = None,
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
            except tracked.AlreadyRunning as exc:
                return error_response(409, str(exc))
            except tracked.InvalidName as exc:
                return error_response(400, str(exc))
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
            state = (self.store or tracked.default_store()).load(key)
        except tracked.StoreError as exc:
            logger.warning("tracked: status route cannot read %r: %s", key, exc)
            return error_response(500, "the progress store cannot be read")
        if state is None:
            return error_response(404, f"no progress named {name!r}")
        if since:
            state = state.messages_since(since)
        return _state_response(state, environ.get("HTTP_IF_NONE_MATCH"))


class ScopedBody:
    """A generator route's body, run step by step in the context captured when the
    route was called; closing it (the client went away) closes the generator."""

    __slots__ = ("_context", "_generator")

    def __init__(self, generator: Iterator[Any], context: contextvars.Context) -> None:
        self._generator = generator
        self._context = context

    def __iter__(self) -> ScopedBody:
        return self

    def __next__(self) -> Any:
        return self._context.run(next, self._generator)

    def close(self) -> None:
        close = getattr(self._generator, "close", None)
        if close is not None:
            self._context.run(close)


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
    if "progress_id" not in bottle.request.environ.get("QUERY_STRING", ""):
        return None
    value = bottle.request.query.get("progress_id")
    return None if value is None else _valid_progress_id(value)


def _valid_progress_id(value: str) -> str:
    return tracked.State(name=None, progress_id=value).key


def _status_key(name: str, query: Any) -> str:
    """The storage key a status request names: the path's name, with any progress_id."""
    progress_id = None if query is None else query.get("progress_id")
    if progress_id is not None:
        _valid_progress_id(progress_id)
    return tracked.State(name=name, progress_id=progress_id).key


def _since(query: Any) -> int:
    """The ``?since=N`` message cursor: a non-negative integer, 0 when absent."""
    value = None if query is None else query.get("since")
    if value is None:
        return 0
    if not _SINCE.fullmatch(value):
        raise tracked.InvalidValue(f"since must be a non-negative integer, got {value!r}")
    return int(value)


def _state_response(state: tracked.State, if_none_match: str | None) -> Any:
    body = json.dumps(state.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "no-store"}
    if if_none_match and _etag_matches(if_none_match, etag):
        return bottle.HTTPResponse(status=304, headers=headers)
    headers["Content-Type"] = JSON_TYPE
    return bottle.HTTPResponse(body, status=200, headers=headers)


def _etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, or ``*``)."""
    if header == etag:
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def error_response(status: int, message: str) -> Any:
    """The JSON error body every failure of the plugin answers with."""
    body = json.dumps({"error": message, "status": "error"}, ensure_ascii=False)
    headers = {"Content-Type": JSON_TYPE, "Cache-Control": "no-store"}
    return bottle.HTTPResponse(body.encode(), status=status, headers=headers)
