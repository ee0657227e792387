"""The framework-free status service: what the status route answers, whatever carries it.

An adapter (``tracked.bottle``, ``tracked.wsgi``) describes a request in plain
terms (a ``StatusRequest``: method, the name below the prefix, the raw query
string, the few headers that matter) and sends back the ``Response`` that
``StatusService.handle`` returns. Every decision lives here, so adapters cannot
drift apart: the storage key from name and progress_id, ``since``, rendering,
ETag and 304, the caches, JSON errors and 405s. The one reading of a client's
``progress_id`` (query, form field, ``X-Progress-Id`` header) lives here too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import tracked

__all__ = [
    "ALLOW",
    "JSON_TYPE",
    "Authorize",
    "RenderCache",
    "Rendered",
    "Response",
    "StatusRequest",
    "StatusService",
    "error",
    "query_values",
    "render",
    "requested_progress_id",
    "status_url",
    "storage_key",
]

logger = logging.getLogger("tracked")

#: ``authorize(request, key) -> bool``: ``request`` is whatever the adapter passes
#: (Bottle's request, a WSGI environ), ``key`` the storage key asked for.
Authorize = Callable[[Any, str], bool]
Signature = tuple[int, int, int]

JSON_TYPE = "application/json; charset=utf-8"
#: The methods the status route answers; any other gets a JSON 405 naming them.
ALLOW = "GET, HEAD, OPTIONS"
PROGRESS_ID_HEADER = "X-Progress-Id"
_SINCE = re.compile(r"[0-9]{1,15}")
_NO_STORE = ("Cache-Control", "no-store")


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


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """What the adapter sends back: status code, headers and the whole body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """A status response body, its ETag, and the two answers made of them (200 and
    304), built once so that a cached record is answered without building anything."""

    body: bytes
    etag: str
    ok: Response
    not_modified: Response


class StatusService:
    """Answers ``GET {prefix}/<name>[?progress_id=X][&since=N]`` for one store.

    ``store`` is a ``Store``, a directory or a store URL (None: the process
    default at request time); ``authorize(native_request, key)`` returning false
    answers 403 before anything about the progress is revealed.
    """

    def __init__(
        self,
        store: tracked.Store | str | os.PathLike[str] | None = None,
        *,
        authorize: Authorize | None = None,
    ) -> None:
        if authorize is not None and not callable(authorize):
            raise tracked.InvalidValue(f"authorize must be callable, got {authorize!r}")
        self.store = None if store is None else tracked.open_store(store)
        self.authorize = authorize
        self._cache: RenderCache | None = None

    def __repr__(self) -> str:
        return f"StatusService(store={self.store!r})"

    def handle(self, request: StatusRequest) -> Response:
        """The answer to ``request``: the wire JSON, a 304, or a JSON error; never raises
        for anything a client sends."""
        method = request.method
        if method != "GET" and method != "HEAD":
            return _not_allowed(method)
        try:
            key, since = self._key_and_since(request)
        except tracked.TrackedError as exc:
            return error(400, str(exc))
        if self.authorize is not None and not self.authorize(request.native, key):
            return error(403, "not allowed to read this progress")
        try:
            rendered = self._rendered(key, since)
        except Exception as exc:  # noqa: BLE001 - a store or record problem, never HTML
            logger.warning("tracked: status route cannot read %r: %s", key, exc)
            return error(500, "the progress store cannot be read")
        if rendered is None:
            shown = key.replace("\0", "?progress_id=")
            return error(404, f"no progress {shown!r}")
        return respond(rendered, request.if_none_match)

    def _key_and_since(self, request: StatusRequest) -> tuple[str, int]:
        """The storage key and message cursor a request names; ``TrackedError`` if bad."""
        query = request.query
        if not query and request.progress_id_header is None:
            if not request.name:
                raise _missing_name(request.prefix)
            return storage_key(request.name, None), 0
        name = _requested_name(request.name or None, query)
        progress_id = requested_progress_id(query, request.progress_id_header)
        if name is None and progress_id is None:
            raise _missing_name(request.prefix)
        return storage_key(name, progress_id), _since(query)

    def _rendered(self, key: str, since: int) -> Rendered | None:
        """The response body for ``key``, from the cache or the store; None if unknown."""
        store = self.store or tracked.default_store()
        cache = self._cache
        if cache is None or cache.store is not store:
            cache = self._cache = RenderCache(store)
        signature = cache.signature(key)  # before reading: see RenderCache
        now = time.monotonic()
        rendered = cache.get(key, since, signature, now)
        if rendered is not None:
            return rendered
        state = store.load(key)
        if state is None:
            return None
        rendered = render(state.messages_since(since) if since else state)
        cache.put(key, since, signature, rendered, state.in_progress, now)
        return rendered


class RenderCache:
    """Rendered bodies of a FileStore's records, reused while their file is unchanged.

    A record only changes when its file is replaced, so a ``stat`` (inode, mtime,
    size) tells whether a cached body is current without reading or parsing the
    file. An ended (or abandoned) record's body is then reused for as long as its
    file stays the same. A running record's body also depends on its owner being
    alive, so it is reused for at most ``RECHECK_S`` (1 s) after the liveness was
    judged: an owner that dies is seen as ``abandoned`` up to a second later.
    Files younger than ``SETTLE_NS`` look the same as a file replaced within one
    tick of the file system's clock: an ended one is not cached, a running one
    only until it could have settled.
    """

    SETTLE_NS = 50_000_000
    RECHECK_S = 1.0
    MAX_ENTRIES = 1024

    def __init__(self, store: tracked.Store) -> None:
        self.store = store
        self._files = store if isinstance(store, tracked.FileStore) else None
        self._paths: dict[str, str] = {}
        self._entries: dict[tuple[str, int], tuple[Signature, Rendered, float]] = {}

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

    def get(self, key: str, since: int, signature: Signature | None, now: float) -> Rendered | None:
        """The cached body for ``key`` and ``since`` if its file is still ``signature``
        and, for a running record, its owner was judged alive less than a second ago."""
        if signature is None:
            return None
        entry = self._entries.get((key, since))
        if entry is None or entry[0] != signature or now >= entry[2]:
            return None
        return entry[1]

    def put(
        self, key: str, since: int, signature: Signature | None, rendered: Rendered,
        running: bool, now: float,
    ) -> None:
        """Remember a body rendered from a record read (and judged, at ``now``) after
        taking ``signature``."""
        if signature is None:
            return
        settled = time.time_ns() - signature[1] > self.SETTLE_NS
        if running:
            expires = now + (self.RECHECK_S if settled else self.SETTLE_NS / 1e9)
        elif settled:
            expires = float("inf")
        else:
            return
        _bounded_put(self._entries, (key, since), (signature, rendered, expires), self.MAX_ENTRIES)


def _bounded_put(table: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Insert into ``table``, dropping the oldest entry once it holds ``limit``."""
    if len(table) >= limit and key not in table:
        try:
            del table[next(iter(table))]
        except (StopIteration, KeyError, RuntimeError):
            pass  # another thread changed the table: the bound is approximate
    table[key] = value


# ----------------------------------------------------------------------------- requests


@functools.lru_cache(maxsize=256)
def _parsed_query(query: str) -> tuple[tuple[str, str], ...]:
    """A raw query string's decoded fields (UTF-8); cached, as pollers repeat theirs.

    Servers hand the query over as bytes read as latin-1 (PEP 3333, ASGI): bytes a
    client sent unescaped are read back as the UTF-8 they are, as in the path."""
    try:
        if not query.isascii() and max(query) <= "\xff":  # above: already text
            query = query.encode("latin-1").decode("utf-8")
        return tuple(parse_qsl(query, keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise tracked.InvalidValue("the query string is not UTF-8") from None


def query_values(query: str, field: str) -> list[str]:
    """Every decoded value of ``field`` in a raw query string (percent-encoded names too)."""
    if not query:
        return []
    return [value for name, value in _parsed_query(query) if name == field]


def _requested_name(path_name: str | None, query: str) -> str | None:
    """The progress name a request gives in its path or as ``?name=`` (for names a
    browser would rewrite as dot segments); two different names are ``InvalidName``."""
    names = query_values(query, "name")
    if not names:
        return path_name
    if len(set(names)) > 1 or (path_name is not None and names[0] != path_name):
        raise tracked.InvalidName("the request names two different progresses (path and ?name=)")
    return names[0]


def requested_progress_id(
    query: str, header: str | None = None, form: Iterable[str] = ()
) -> str | None:
    """The client's ``progress_id``, validated; None when the request carries none.

    Read from, in this order, the decoded query string (``?progress_id=``), a
    field of a urlencoded or multipart body (``form``: the adapter passes its
    values) and the ``X-Progress-Id`` header. Sources that disagree, or one
    giving two different values, are refused with ``InvalidName`` (a 400), so
    the order only says which value an error names first.
    """
    found = query_values(query, "progress_id")
    found.extend(form)
    if header is not None:
        found.append(header.strip())
    if not found:
        return None
    first = found[0]
    for other in found:
        if other != first:
            raise tracked.InvalidName(
                f"conflicting progress_id values {first!r} and {other!r} "
                f"(query, form field and {PROGRESS_ID_HEADER} header must agree)"
            )
    return storage_key(None, first)


@functools.lru_cache(maxsize=4096)
def storage_key(name: str | None, progress_id: str | None) -> str:
    """The key ``name`` and ``progress_id`` combine into (validated once, then cached);
    raises ``InvalidName`` for a bad name or progress_id."""
    return tracked.State(name=name, progress_id=progress_id).key


def _since(query: str) -> int:
    """The ``?since=N`` message cursor: a non-negative integer, 0 when absent."""
    values = query_values(query, "since")
    if not values:
        return 0
    value = values[-1]
    if not _SINCE.fullmatch(value):
        raise tracked.InvalidValue(f"since must be a non-negative integer, got {value!r}")
    return int(value)


def _missing_name(prefix: str) -> tracked.InvalidName:
    return tracked.InvalidName(
        f"the URL names no progress: use {prefix}/<name> or {prefix}/?name=<name>"
    )


def status_url(prefix: str, key: str) -> str:
    """The status URL of ``key`` under ``prefix`` that every browser requests unchanged.

    Browsers resolve ``.`` and ``..`` path segments (``%2e%2e`` too) before sending
    a request. A name with such a segment travels as one segment, its ``/`` as
    ``%2F``; a name that is itself ``.`` or ``..`` as ``?name=``; any other name
    keeps its slashes (proxies that refuse ``%2F`` still pass it). ``statusUrl``
    in tracked.js follows the same rule.
    """
    name, separator, rest = key.partition("\0")  # see tracked.State.key
    query = [("progress_id", rest)] if separator else []
    if name in (".", ".."):
        return f"{prefix}/?{urlencode([('name', name), *query])}"
    dotted = any(segment in (".", "..") for segment in name.split("/"))
    url = prefix + "/" + quote(name, safe="" if dotted else "/")
    return url + (f"?{urlencode(query)}" if query else "")


# ----------------------------------------------------------------------------- responses


def render(state: tracked.State) -> Rendered:
    """The wire JSON of ``state`` and its ETag, a hash of those very bytes."""
    body = json.dumps(state.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    ok = Response(200, (("Content-Type", JSON_TYPE), ("ETag", etag), _NO_STORE), body)
    return Rendered(body, etag, ok, Response(304, (("ETag", etag), _NO_STORE)))


def respond(rendered: Rendered, if_none_match: str | None) -> Response:
    """200 with the body, or 304 without one when the client already has this ETag."""
    if if_none_match and _etag_matches(if_none_match, rendered.etag):
        return rendered.not_modified
    return rendered.ok


def _etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, or ``*``)."""
    if header == etag:
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def error(status: int, message: str, *headers: tuple[str, str]) -> Response:
    """The JSON error every failure answers with: ``{"error": ..., "status": "error"}``."""
    body = json.dumps({"error": message, "status": "error"}, ensure_ascii=False).encode()
    return Response(status, (("Content-Type", JSON_TYPE), _NO_STORE, *headers), body)


def _not_allowed(method: str) -> Response:
    """OPTIONS: 204 naming the allowed methods; anything else but GET/HEAD: a JSON 405."""
    if method == "OPTIONS":
        return Response(204, (("Allow", ALLOW), _NO_STORE))
    shown = method if method.isascii() and method.isprintable() else repr(method)
    return error(405, f"the status route answers {ALLOW}, not {shown}", ("Allow", ALLOW))
