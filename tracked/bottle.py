"""Bottle integration: ``TrackedPlugin`` sets the request scope and serves the status route.

``app.install(TrackedPlugin(store))`` makes ``store`` the default for the app's
routes, combines a client's progress_id (``?progress_id=``, a form field or an
``X-Progress-Id`` header, read as ``tracked._web.requested_progress_id`` reads
it) with the names routes give, and answers every request under ``{prefix}``
through the framework-free status service (``tracked._web``): the wire JSON of
``GET {prefix}/<name>``, JSON errors, 405s. This module only translates.

Access control: anyone who knows a progress's name (and progress_id) can read
it, as in the Perl original. For anything sensitive, let clients generate
unguessable progress_ids (``crypto.randomUUID()``) and pass
``authorize(request, key) -> bool`` to check the reader may see ``key``.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import bottle

import tracked

from ._decorator import SizedGenerator
from ._events import (
    HEARTBEAT_SECONDS,
    MAX_STREAM_SECONDS,
)
from ._query import (
    mount_prefix,
    requested_progress_id,
)
from ._scope import RequestScope, request_scope
from ._web import (
    CACHE_BYTES,
    Authorize,
    CancelPolicy,
    EventStream,
    StatusRequest,
    StatusService,
    SyncEvents,
    error,
    render,
)

__all__ = ["TrackedPlugin", "accepted", "status_url"]

#: Options the route-config form ``tracked={...}`` passes on to ``@tracked``.
ROUTE_OPTIONS = frozenset({"name", "total", "min_interval", "max_messages"})
#: Bodies whose fields may carry the client's progress_id.
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: Everything after the prefix, newlines included: any valid name reaches ``_web``.
_NAME_RULE = "/<name:re:(?s:.*)>"


class TrackedPlugin:
    """A Bottle plugin (API v2) tying an app's routes to a progress store.

    ``store`` is a ``Store``, a directory or a store URL (None: the process
    default at request time); ``prefix`` is where the status route lives;
    ``authorize(request, key)`` returning false makes the status route answer 403.
    ``cancel`` (off by default: DELETE answers 405) lets ``DELETE {prefix}/<name>``
    ask a running progress to stop: True for whoever ``authorize`` lets read it, or
    ``(request, key) -> bool`` deciding per request (403 when it says no).
    ``show_errors=False`` sends ``"error": "failed"`` to readers instead of the
    exception's text, which the store keeps for ``tracked show`` (in JSON answers
    and events alike). ``key`` is the name, the progress_id, or both joined by NUL,
    as ``tracked.State(name, progress_id).key`` builds it. A GET accepting
    ``text/event-stream`` gets Server-Sent Events for at most ``max_stream_seconds``
    (0: never), with a comment line after ``heartbeat_seconds`` of silence.
    ``cache_bytes`` (32 MiB) bounds what the status route keeps for reuse (see
    ``tracked._web.StatusService``).
    """

    name = "tracked"
    api = 2

    def __init__(
        self,
        store: tracked.Store | str | os.PathLike[str] | None = None,
        prefix: str = "/_progress_status",
        authorize: Authorize | None = None,
        cancel: CancelPolicy = False,
        show_errors: bool = True,
        *,
        max_stream_seconds: float = MAX_STREAM_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        if isinstance(prefix, str) and any(c in prefix for c in "<>:"):
            raise tracked.InvalidValue(  # Bottle would read them as route wildcards
                f"prefix must be a URL path without '<', '>' or ':', got {prefix!r}"
            )
        kept = mount_prefix(prefix)
        self.service = StatusService(
            store, authorize=authorize, cancel=cancel, show_errors=show_errors,
            max_stream_seconds=max_stream_seconds, heartbeat_seconds=heartbeat_seconds,
            cache_bytes=cache_bytes,
        )
        self.store = self.service.store
        self.prefix = kept
        self.authorize = authorize

    def __repr__(self) -> str:
        return f"TrackedPlugin(store={self.store!r}, prefix={self.prefix!r})"

    # ------------------------------------------------------------------ plugin API

    def setup(self, app: Any) -> None:
        """Refuse a second TrackedPlugin on one app; add the status route."""
        for other in app.plugins:
            if isinstance(other, TrackedPlugin):
                raise bottle.PluginError(f"{app!r} already has a TrackedPlugin: {other!r}")
        # Every method: the service answers each one (405s included) in JSON.
        app.route(self.prefix + _NAME_RULE, "ANY", self.status_response, skip=[self])
        app.route(self.prefix, "ANY", self.status_response, skip=[self])

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
            except tracked.TrackedError as exc:
                return error_response(400, str(exc))
            token = request_scope.set(RequestScope(progress_id, store))
            try:
                result = callback(*args, **kwargs)
                if inspect.isgenerator(result) or isinstance(result, SizedGenerator):
                    # Bottle iterates the body after this returns: keep the scope for it.
                    result = ScopedBody(result, contextvars.copy_context())
                return result
            except REFUSALS as exc:
                return refusal_response(exc)
            except tracked.Cancelled as exc:  # an in-request run was asked to stop
                return error_response(409, str(exc))
            finally:
                request_scope.reset(token)

        return call_in_scope

    # ------------------------------------------------------------------ the status route

    def status_response(self, name: str | None = None) -> Any:
        """Every request under the prefix: translated for ``_web`` and its answer sent back."""
        environ = bottle.request.environ
        raw = environ.get("bottle.raw_path", "")  # Bottle drops bytes that are not UTF-8
        if not raw.isascii():
            try:
                raw.encode("latin-1").decode("utf-8")
            except UnicodeError:
                return error_response(400, "the URL path is not UTF-8")
        request = StatusRequest(
            environ["REQUEST_METHOD"],
            name,
            environ.get("QUERY_STRING", ""),
            environ.get("HTTP_IF_NONE_MATCH"),
            environ.get("HTTP_X_PROGRESS_ID"),
            self.prefix,
            bottle.request,
            environ.get("HTTP_ACCEPT"),
            environ.get("HTTP_LAST_EVENT_ID"),
            environ.get("HTTP_IF_MATCH"),
            environ.get("HTTP_HX_REQUEST"),
        )
        answer = self.service.open(request)
        response = bottle.response
        if isinstance(answer, EventStream):
            for header, value in answer.headers:
                response.set_header(header, value)
            return SyncEvents(answer)
        response.status = answer.status
        for header, value in answer.headers:
            response.set_header(header, value)
        return answer.body


class ScopedBody:
    """A generator route's body, run step by step in the context captured when the
    route was called; closing it (the client went away) closes the generator.

    Only ``str`` (encoded in the response's charset) and ``bytes`` items are
    sent; anything else a route yields (None, numbers, objects) was counted by
    ``@tracked`` and is skipped here, so Bottle never fails mid-stream on it and
    a route may mix ``str`` and ``bytes``. An exception from the route ends its
    run ``failed`` (``@tracked`` records it) and then reaches the server.
    """

    __slots__ = ("_charset", "_context", "_generator", "_started")

    def __init__(self, generator: Iterator[Any], context: contextvars.Context) -> None:
        self._generator = generator
        self._context = context
        self._started = False
        self._charset: str | None = None

    def __iter__(self) -> ScopedBody:
        return self

    def __next__(self) -> bytes:
        try:
            return self._next()
        except tracked.Cancelled:  # the run was asked to stop: the stream simply ends
            raise StopIteration from None

    def _next(self) -> bytes:
        run, generator = self._context.run, self._generator
        if not self._started:
            self._started = True
            try:
                item = run(next, generator)
            except REFUSALS as exc:
                # Nothing is sent yet: Bottle turns a raised HTTPResponse into the answer.
                raise refusal_response(exc) from exc
            if isinstance(item, bottle.HTTPResponse):
                return item  # type: ignore[no-any-return]  # Bottle answers with it
        else:
            item = run(next, generator)
        while True:
            if isinstance(item, bytes):
                return item
            if isinstance(item, str):
                if self._charset is None:
                    self._charset = bottle.response.charset or "UTF-8"
                return _encode(item, self._charset)
            item = run(next, generator)

    def close(self) -> None:
        close = getattr(self._generator, "close", None)
        if close is not None:
            self._context.run(close)


def _encode(text: str, charset: str) -> bytes:
    """``text`` in the response's charset; lone surrogates (file names from
    ``os.listdir``) go back to their original bytes, anything else unencodable
    becomes ``?``, so a body never fails mid-stream on its own text."""
    try:
        return text.encode(charset)
    except UnicodeEncodeError:
        try:
            return text.encode(charset, "surrogateescape")
        except UnicodeEncodeError:
            return text.encode(charset, "replace")


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
    """The client's ``progress_id`` for a tracked route, read as ``_web`` reads it:
    the decoded query, a urlencoded or multipart body field, the ``X-Progress-Id``
    header; None when the request has none."""
    environ = bottle.request.environ
    return requested_progress_id(
        environ.get("QUERY_STRING", ""),
        environ.get("HTTP_X_PROGRESS_ID"),
        _form_progress_ids(environ),
    )


def _form_progress_ids(environ: dict[str, Any]) -> list[str]:
    """``progress_id`` fields of a urlencoded or multipart body (parsed and kept by
    Bottle, so the route can still read its form); none for other bodies."""
    content_type = environ.get("CONTENT_TYPE", "").lower()  # media types ignore case
    if not content_type.startswith(_FORM_TYPES):
        return []
    try:
        values = bottle.request.forms.getall("progress_id")
    except (ValueError, UnicodeError, bottle.HTTPError):
        return []  # no field tracked can read: the route answers this body
    return [_unicode(v) for v in values]


def _unicode(value: str) -> str:
    """Bottle's form values are latin-1 decoded bytes: the client sent UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise tracked.InvalidName(f"a progress_id must be UTF-8 text, got {value!r}") from None


#: What a route may raise that is the client's doing, answered as a JSON error.
REFUSALS = (tracked.AlreadyRunning, tracked.InvalidName)


def refusal_response(exc: tracked.TrackedError) -> Any:
    """409 for a progress already running, 400 for a name the request made invalid."""
    return error_response(409 if isinstance(exc, tracked.AlreadyRunning) else 400, str(exc))


def error_response(status: int, message: str) -> Any:
    """The JSON error body every failure of the plugin answers with (see ``_web.error``)."""
    answer = error(status, message)
    return bottle.HTTPResponse(answer.body, status=status, headers=dict(answer.headers))


def accepted(progress: tracked.Progress) -> Any:
    """``202 Accepted`` for a run started off the request (``tracked.submit``).

    The body is the run's wire JSON now; ``Location`` is its status URL on this
    app (the plugin's prefix, the name, and ``?progress_id=`` when it has one),
    so a client can poll it without knowing the name. Return it from the route.
    """
    answer = render(progress.snapshot()).ok
    headers = dict(answer.headers)
    del headers["ETag"]  # a 202 describes the run's start, not a cacheable status
    headers["Location"] = status_url(progress.name, progress.progress_id)
    _warn_if_the_client_id_was_lost(progress)
    return bottle.HTTPResponse(answer.body, status=202, headers=headers)


_warned_no_plugin = False


def _warn_if_the_client_id_was_lost(progress: tracked.Progress) -> None:
    """Once per process: a client sent a progress_id that could not reach the run,
    because no ``TrackedPlugin`` runs this app's routes in a request scope."""
    global _warned_no_plugin
    if _warned_no_plugin or progress.progress_id is not None:
        return
    if "progress_id" not in bottle.request.query or request_scope.get() is not None:
        return
    _warned_no_plugin = True
    logging.getLogger("tracked").warning(
        "tracked.bottle.accepted: the request carries a progress_id but run %r has none:"
        " install TrackedPlugin on this app so the client's progress_id reaches @tracked",
        progress.name,
    )


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
    base = bottle.request.script_name.rstrip("/") + mounted + prefix
    return tracked.status_url(name, progress_id, prefix=base)
