"""The framework-free status service: what the status route answers, whatever carries it.

An adapter (``tracked.bottle``, ``tracked.wsgi``) describes a request in plain
terms (a ``StatusRequest``: method, the name below the prefix, the raw query
string, the few headers that matter) and sends back the ``Response`` that
``StatusService.handle`` returns. Every decision lives here, so adapters cannot
drift apart: the storage key from name and progress_id, ``since``, rendering,
ETag and 304, the caches, JSON errors and 405s, ``DELETE`` (cancel) and
``show_errors``. The one reading of a client's
``progress_id`` (query, form field, ``X-Progress-Id`` header) lives here too.

Server-Sent Events on the same URL (``Accept: text/event-stream``): ``open``
answers either a ``Response`` (every error, decided before a stream starts) or
an ``EventStream``, whose ``steps`` generator is the whole schedule of the
stream, free of I/O: it yields ``bytes`` to send, ``Wait(seconds)`` (the driver
waits that long for a change and sends back ``subscription.wait``'s answer) and
``LOAD`` (the driver reads the record and sends back the state). ``SyncEvents``
drives it for WSGI servers; ``tracked.asgi`` drives it on an event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import tracked

from . import _watch
from ._cache import CACHE_BYTES, EventCache, RenderCache
from ._events import (
    END_ID,
    EVENT_HEADERS,
    EVENT_STREAM_TYPE,
    HEARTBEAT_SECONDS,
    LOAD,
    MAX_STREAM_SECONDS,
    EventStream,
    SyncEvents,
    Wait,
    async_events,
    event_schedule,
    resume_point,
    run_number,
    wants_events,
)
from ._html import HTML_TYPE, error_fragment, fragment
from ._query import (
    form_progress_ids,
    missing_name,
    query_values,
    request_key,
    requested_children,
    requested_html,
    requested_name,
    requested_progress_id,
    requested_since,
    status_url,
    storage_key,
)
from ._response import (
    JSON_TYPE,
    NO_STORE,
    VARY,
    Rendered,
    Response,
    error,
    if_match_allows,
    json_response,
    render,
    rendered,
    respond,
    run_tag,
)
from ._state import split_key

__all__ = [
    "ALLOW",
    "CACHE_BYTES",
    "EVENTS_HEADER",
    "EVENT_STREAM_TYPE",
    "HTMX_STOP",
    "JSON_TYPE",
    "LOAD",
    "Authorize",
    "CancelPolicy",
    "EventCache",
    "EventStream",
    "RenderCache",
    "Rendered",
    "Response",
    "StatusRequest",
    "StatusService",
    "SyncEvents",
    "Wait",
    "async_events",
    "error",
    "event_schedule",
    "form_progress_ids",
    "if_match_allows",
    "query_values",
    "render",
    "requested_progress_id",
    "run_tag",
    "status_url",
    "storage_key",
]

logger = logging.getLogger("tracked")

#: ``authorize(request, key) -> bool``: ``request`` is whatever the adapter passes
#: (Bottle's request, a WSGI environ), ``key`` the storage key asked for.
Authorize = Callable[[Any, str], bool]
#: ``cancel=``: False (DELETE answers 405), True (whoever may read may cancel), or
#: ``(request, key) -> bool`` deciding per request (403 when it says no).
CancelPolicy = bool | Callable[[Any, str], bool]

#: The methods the status route answers; any other gets a JSON 405 naming them.
ALLOW = "GET, HEAD, OPTIONS"
#: The header of a JSON answer saying whether the same URL streams events ("1" or "0").
EVENTS_HEADER = "X-Tracked-Events"
#: The status htmx takes as "stop polling": an ended run's fragment to an htmx poll.
HTMX_STOP = 286


@dataclasses.dataclass(slots=True)
class StatusRequest:
    """One request to the status route, in plain terms.

    ``name`` is the decoded text after ``{prefix}/`` (None or "" when the path
    names nothing: the name may then come as ``?name=``); ``query`` is the raw,
    undecoded query string; ``native`` is what ``authorize`` receives.
    """

    method: str
    name: str | None
    query: str = ""
    if_none_match: str | None = None
    progress_id_header: str | None = None
    prefix: str = ""
    native: Any = None
    accept: str | None = None
    last_event_id: str | None = None
    if_match: str | None = None
    hx_request: str | None = None


class StatusService:
    """Answers ``GET {prefix}/<name>[?progress_id=X][&since=N]`` for one store.

    ``store`` is a ``Store``, a directory or a store URL (None: the process
    default at request time); ``authorize(native_request, key)`` returning false
    answers 403 before anything about the progress is revealed. ``cache_bytes``
    bounds what it keeps for reuse (``CACHE_BYTES``, 32 MiB: half for rendered
    answers, half for event streams, whose share empties when they close).
    """

    def __init__(
        self,
        store: tracked.Store | str | os.PathLike[str] | None = None,
        *,
        authorize: Authorize | None = None,
        max_stream_seconds: float = MAX_STREAM_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        cancel: CancelPolicy = False,
        show_errors: bool = True,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        _check_options(cache_bytes, authorize, cancel, max_stream_seconds, heartbeat_seconds)
        self.store = None if store is None else tracked.open_store(store)
        self.authorize = authorize
        self.max_stream_seconds = float(max_stream_seconds)
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.cancel = cancel
        self.show_errors = bool(show_errors)
        self.cache_bytes = cache_bytes
        self._cache: RenderCache | None = None
        self._events = EventCache(cache_bytes // 2)
        #: Tells tracked.js from its first answer whether to open an event stream.
        self._advert = (EVENTS_HEADER, "1" if self.max_stream_seconds else "0")

    def __repr__(self) -> str:
        return f"StatusService(store={self.store!r})"

    @property
    def held_bytes(self) -> int:
        """Bytes the service keeps for reuse now (rendered answers, encoded events and
        the records they came from): at most ``cache_bytes``, about."""
        cache = self._cache
        return (0 if cache is None else cache.size) + self._events.size

    def handle(self, request: StatusRequest) -> Response:
        """The answer to ``request``: the wire JSON, a 304, or a JSON error; never raises
        for anything a client sends."""
        method = request.method
        if self.cancel is not False and (method == "DELETE" or method == "OPTIONS"):
            return self._cancel(request) if method == "DELETE" else _OPTIONS_WITH_DELETE
        if method != "GET" and method != "HEAD":
            return _not_allowed(method)
        return self._read(request)

    def _read(self, request: StatusRequest) -> Response:
        """``handle`` for a GET or HEAD: parse, authorize, then answer."""
        try:
            html = requested_html(request.query, request.accept, request.hx_request)
        except tracked.TrackedError as exc:
            return error(400, str(exc))
        try:
            key, since = self._key_and_since(request)
        except tracked.TrackedError as exc:
            return _error(html, 400, str(exc))
        if self.authorize is not None and not self.authorize(request.native, key):
            return _error(html, 403, "not allowed to read this progress")
        if request.query and "children" in request.query:
            listed = self._children(key, request.query)
            if listed is not None:  # else the word was only part of a name, say
                return listed
        return self._answer(request, key, since, html)

    def _answer(self, request: StatusRequest, key: str, since: int, html: bool) -> Response:
        """The record of ``key`` as asked (JSON or HTML, since ``since``), a 304, or a
        404/500 error."""
        try:
            found = self._rendered(key, since, html)
        except Exception as exc:  # noqa: BLE001 - a store or record problem, never HTML
            logger.warning("status route cannot read %r: %s", key, exc)
            return _error(html, 500, "the progress store cannot be read")
        if found is None:
            shown = key.replace("\0", "?progress_id=")
            return _error(html, 404, f"no progress {shown!r}")
        answer = respond(found, request.if_none_match)
        return _htmx_end(answer) if html and _ended(found) and _htmx(request) else answer

    def cached(self, request: StatusRequest) -> Response | None:
        """The answer when it needs no store read and no user code: a GET or HEAD of a
        FileStore record whose rendered body is cached and whose file is unchanged
        (one ``stat``), without ``authorize``; else None (ask ``open``). Lets an event
        loop answer the common poll without a thread hop."""
        if not self._may_be_cached(request):
            return None
        try:
            key, since = self._key_and_since(request)
            html = requested_html(request.query, request.accept, request.hx_request)
        except tracked.TrackedError:
            return None
        if request.query and "children" in request.query:
            return None  # a page of a group's children: never a cached state
        if html and _htmx(request):
            return None  # its end is a 286, decided by handle
        return self._cached_answer(key, -1 - since if html else since, request.if_none_match)

    def _may_be_cached(self, request: StatusRequest) -> bool:
        """A HEAD, or a GET not asking for an event stream: ``cached`` may answer it."""
        method = request.method
        if method == "HEAD":
            return True
        return method == "GET" and not (
            request.accept is not None and self.max_stream_seconds
            and wants_events(request.accept)
        )

    def cached_poll(self, name: str, if_none_match: str | None = None) -> Response | None:
        """``cached`` for the commonest request, a poll: a GET or HEAD naming ``name``
        in its path, with no query, no ``X-Progress-Id`` and not asking for events.
        The caller has checked all that; this skips building a ``StatusRequest``."""
        if not name:
            return None
        try:
            key = request_key(name, None)
        except tracked.TrackedError:
            return None
        return self._cached_answer(key, 0, if_none_match)

    def _cached_answer(self, key: str, since: int, if_none_match: str | None) -> Response | None:
        """The cached answer for ``key`` and ``since`` (its cache slot: see ``_rendered``)
        if current and nothing else (``authorize``, another store) must be asked."""
        cache = self._cache
        if (
            self.authorize is not None or cache is None or not cache.stat_checked
            or cache.store is not (self.store or tracked.default_store())
        ):
            return None
        rendered = cache.current(key, since)
        return None if rendered is None else respond(rendered, if_none_match)

    def open(
        self, request: StatusRequest, loop: asyncio.AbstractEventLoop | None = None
    ) -> Response | EventStream:
        """``handle``, or an event stream for a GET that accepts ``text/event-stream``
        (while ``max_stream_seconds`` is not 0): the same checks and errors first.
        ``loop``: the event loop the stream will wait on (ASGI), if any."""
        if (
            request.method != "GET"
            or not self.max_stream_seconds
            or not wants_events(request.accept)
        ):
            return self.handle(request)
        try:
            html = requested_html(request.query, None, None)
        except tracked.TrackedError as exc:
            return error(400, str(exc))
        try:
            key, since = self._key_and_since(request)
            resume = resume_point(request.last_event_id)
        except tracked.TrackedError as exc:
            return _error(html, 400, str(exc))
        if self.authorize is not None and not self.authorize(request.native, key):
            return _error(html, 403, "not allowed to read this progress")
        if resume == END_ID:
            return Response(204, (NO_STORE,))
        return self._follow(key, since, resume, loop, html)

    def _follow(
        self, key: str, since: int, resume: tuple[int, int | None] | str | None,
        loop: asyncio.AbstractEventLoop | None, html: bool = False,
    ) -> Response | EventStream:
        """Subscribe to ``key``, then start its stream (subscribed before reading: no
        change falls between); an error answered instead closes what was opened."""
        store = self.store or tracked.default_store()
        subscription = _watch.subscribe(store, key, loop)
        self._events.opened(key)
        answer = self._start(store, key, since, resume, subscription, html)
        if isinstance(answer, Response):
            subscription.close()
            self._events.closed(key)
        return answer

    def _start(
        self, store: tracked.Store, key: str, since: int,
        resume: tuple[int, int | None] | str | None, subscription: _watch.Subscription,
        html: bool = False,
    ) -> Response | EventStream:
        """The stream of ``key`` from its first state on (the cursor from ``since`` or
        ``Last-Event-ID``), or the error to answer when it cannot be read."""
        events = self._events
        try:
            state = events.load(store, key)
        except Exception as exc:  # noqa: BLE001 - a store or record problem, never HTML
            logger.warning("status route cannot read %r: %s", key, exc)
            return _error(html, 500, "the progress store cannot be read")
        if state is None:
            shown = key.replace("\0", "?progress_id=")
            return _error(html, 404, f"no progress {shown!r}")
        cursor = since
        if isinstance(resume, tuple):
            count, run = resume
            cursor = count if run is None or run == run_number(state) else 0
        steps = event_schedule(
            state, cursor, heartbeat=self.heartbeat_seconds, max_seconds=self.max_stream_seconds,
            show_errors=self.show_errors, events=events, key=key, html=html,
        )
        return EventStream(EVENT_HEADERS, key, store, subscription, steps, events)

    def _key_and_since(self, request: StatusRequest) -> tuple[str, int]:
        """The storage key and message cursor a request names; ``TrackedError`` if bad."""
        query = request.query
        if not query and request.progress_id_header is None:
            if not request.name:
                raise missing_name(request.prefix)
            return request_key(request.name, None), 0
        name = requested_name(request.name or None, query)
        progress_id = requested_progress_id(query, request.progress_id_header)
        if name is None and progress_id is None:
            raise missing_name(request.prefix)
        return request_key(name, progress_id), requested_since(query)

    def _rendered(self, key: str, since: int, html: bool = False) -> Rendered | None:
        """The response body for ``key`` (the JSON, or with ``html`` the fragment), from
        the cache or the store; None if unknown. The cache holds a fragment at the slot
        ``-1 - since`` (a JSON answer's slot is ``since``, never negative)."""
        store = self.store or tracked.default_store()
        cache = self._cache
        if cache is None or cache.store is not store:
            cache = self._cache = RenderCache(store, self.cache_bytes // 2)
        signature = cache.signature(key)  # before reading: see RenderCache
        now = time.monotonic()
        slot = -1 - since if html else since
        found = cache.get(key, slot, signature, now)
        if found is not None:
            return found
        state = store.load(key)
        if state is None:
            return None
        shown = self._shown(state.messages_since(since) if since else state)
        if html:
            found = rendered(fragment(shown).encode(), HTML_TYPE, shown, ())
        else:
            found = render(shown, self._advert)
        cache.put(key, slot, signature, found, state.in_progress, now)
        return found

    def _children(self, key: str, query: str) -> Response | None:
        """``?children=STATE&offset=N&limit=M``: one page of a group's children counted
        in ``STATE`` (or ``all``), sorted by key, as JSON; 400 for a bad query or a run
        that is no group, 404 for none."""
        try:
            asked = requested_children(query)
        except tracked.TrackedError as exc:
            return error(400, str(exc))
        if asked is None:
            return None
        wanted, offset, limit = asked
        store = self.store or tracked.default_store()
        try:
            state = store.load(key)
            if state is None:
                return error(404, f"no progress {key.replace(chr(0), '?progress_id=')!r}")
            if state.children is None:
                return error(400, "this progress is not a group: it has no children")
            found = sorted(
                (child, counted) for child, counted in store.group_children(key)
                if wanted in ("all", counted)
            )
        except Exception as exc:  # noqa: BLE001 - a store problem, never HTML
            logger.warning("status route cannot read the children of %r: %s", key, exc)
            return error(500, "the progress store cannot be read")
        page = found[offset : offset + limit]
        body = {
            "children": [
                {"name": name, "progress_id": progress_id, "state": counted}
                for (name, progress_id), counted in
                ((split_key(child), counted) for child, counted in page)
            ],
            "state": wanted,
            "total": len(found),
            "offset": offset,
            "limit": limit,
            "next_offset": offset + limit if offset + limit < len(found) else None,
        }
        return json_response(body)

    def _shown(self, state: tracked.State) -> tracked.State:
        """``state`` as readers of the route see it: with ``show_errors=False`` a failed
        run's error text is replaced by ``"failed"`` (the store keeps the text)."""
        if self.show_errors or state.error is None:
            return state
        return dataclasses.replace(state, error="failed")

    def _cancel(self, request: StatusRequest) -> Response:
        """``DELETE {prefix}/<name>``: ask the running progress to stop (see ``tracked.cancel``).

        202 with the wire JSON when a running progress was asked, 404 when there is
        none, 409 when it already ended; 403 when ``authorize`` or a ``cancel``
        callable refuses; 412 when ``If-Match`` names no ETag of the current run (the
        client saw another run of the name: see ``run_tag``)."""
        try:
            key, _ = self._key_and_since(request)
        except tracked.TrackedError as exc:
            return error(400, str(exc))
        refused = self._cancel_refused(request, key)
        if refused is not None:
            return refused
        shown = key.replace("\0", "?progress_id=")
        store = self.store or tracked.default_store()
        try:
            state = store.load(key)
            if state is None:
                return error(404, f"no progress {shown!r}")
            if request.if_match is not None and not if_match_allows(request.if_match, state):
                return error(412, f"progress {shown!r} is another run than the one the "
                                  "request names (If-Match): nothing was asked to stop")
            name, progress_id = split_key(key)
            asked = state.in_progress and tracked.cancel(name, progress_id=progress_id, store=store)
        except Exception as exc:  # noqa: BLE001 - a store problem, answered in JSON
            logger.warning("cannot ask %r to stop: %s", key, exc)
            return error(500, "the progress store cannot be used")
        if not asked:
            return error(409, f"progress {shown!r} is not running (it ended {state.state})")
        if state.state == "queued":  # it ended at once: answer with its final state
            state = _reread(store, key, state)
        body = render(self._shown(state)).body
        return Response(202, (("Content-Type", JSON_TYPE), NO_STORE), body)

    def _cancel_refused(self, request: StatusRequest, key: str) -> Response | None:
        """The 403 of a DELETE that ``authorize`` or the ``cancel`` callable refuses."""
        if self.authorize is not None and not self.authorize(request.native, key):
            return error(403, "not allowed to read this progress")
        if callable(self.cancel) and not self.cancel(request.native, key):
            return error(403, "not allowed to cancel this progress")
        return None


def _check_options(
    cache_bytes: object,
    authorize: object,
    cancel: object,
    max_stream_seconds: object,
    heartbeat_seconds: object,
) -> None:
    """``InvalidValue`` for the first ``StatusService`` option that is not one."""
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
        raise tracked.InvalidValue(f"cache_bytes must be an int >= 0, got {cache_bytes!r}")
    if authorize is not None and not callable(authorize):
        raise tracked.InvalidValue(f"authorize must be callable, got {authorize!r}")
    if not isinstance(cancel, bool) and not callable(cancel):
        raise tracked.InvalidValue(f"cancel must be a bool or a callable, got {cancel!r}")
    _check_seconds("max_stream_seconds", max_stream_seconds)
    _check_seconds("heartbeat_seconds", heartbeat_seconds)
    if not heartbeat_seconds:
        raise tracked.InvalidValue("heartbeat_seconds must be > 0")


def _check_seconds(what: str, value: object) -> None:
    """``InvalidValue`` unless ``value`` is a number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise tracked.InvalidValue(f"{what} must be a number of seconds >= 0, got {value!r}")


def _reread(store: tracked.Store, key: str, state: tracked.State) -> tracked.State:
    """``key``'s state read again (a queued run's cancel ended it at once); ``state``
    if there is none or it cannot be read (what was read before is still true enough)."""
    try:
        return store.load(key) or state
    except Exception:
        logger.debug("cannot read %r after its cancel", key, exc_info=True)
        return state


# ----------------------------------------------------------------------------- events


#: OPTIONS while DELETE is allowed (``cancel=``).
_OPTIONS_WITH_DELETE = Response(204, (("Allow", ALLOW + ", DELETE"), NO_STORE))


def _error(html: bool, status: int, message: str) -> Response:
    """The error answer, as a fragment when the client asked for HTML (same status)."""
    if not html:
        return error(status, message)
    body = error_fragment(message).encode()
    return Response(status, (("Content-Type", HTML_TYPE), NO_STORE, VARY), body)


def _htmx(request: StatusRequest) -> bool:
    hx = request.hx_request
    return hx is not None and hx.strip().lower() == "true"


def _ended(found: Rendered) -> bool:
    return b'data-in-progress="false"' in found.body[:200]


def _htmx_end(answer: Response) -> Response:
    """An ended run's fragment to an htmx poll: 286, so ``hx-trigger="every …"`` stops."""
    if answer.status != 200:
        return answer
    return Response(HTMX_STOP, answer.headers, answer.body)


def _not_allowed(method: str) -> Response:
    """OPTIONS: 204 naming the allowed methods; anything else but GET/HEAD: a JSON 405."""
    if method == "OPTIONS":
        return Response(204, (("Allow", ALLOW), NO_STORE))
    shown = method if method.isascii() and method.isprintable() else repr(method)
    return error(405, f"the status route answers {ALLOW}, not {shown}", ("Allow", ALLOW))
