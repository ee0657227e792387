"""What the status route answers: a state rendered once with its ETag, the 200 and
304 made of it, ``If-Match`` against a run's tag, and the one JSON error shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import tracked

__all__ = [
    "JSON_TYPE",
    "NO_STORE",
    "Rendered",
    "Response",
    "error",
    "if_match_allows",
    "render",
    "rendered",
    "respond",
    "run_tag",
]

JSON_TYPE = "application/json; charset=utf-8"
NO_STORE = ("Cache-Control", "no-store")


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


def render(state: tracked.State, *headers: tuple[str, str]) -> Rendered:
    """The wire JSON of ``state`` and its ETag: ``"<run>.<hash of those very bytes>"``
    (``run_tag``), so an ETag also says which run of the name it was taken from.
    ``headers`` are added to the 200 (the service's ``X-Tracked-Events``)."""
    body = json.dumps(state.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()
    return rendered(body, JSON_TYPE, state, headers)


def rendered(
    body: bytes, content_type: str, state: tracked.State, headers: tuple[tuple[str, str], ...]
) -> Rendered:
    """``body`` (a rendering of ``state``) with its ETag and its 200 and 304 answers."""
    etag = f'"{run_tag(state)}.{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
    ok = Response(200, (("Content-Type", content_type), ("ETag", etag), NO_STORE, *headers), body)
    return Rendered(body, etag, ok, Response(304, (("ETag", etag), NO_STORE)))


def run_tag(state: tracked.State) -> str:
    """Which run of a name ``state`` belongs to: its start time in whole microseconds,
    in decimal. The first part of every ETag; a client holding only the state (an
    event stream has no ETag) builds the same from ``start_time`` (tracked.js does)."""
    start = state.start_time
    return str(math.floor(start * 1_000_000)) if math.isfinite(start) else "0"


def if_match_allows(header: str, state: tracked.State) -> bool:
    """Whether an ``If-Match`` header names the run of ``state``: ``*``, or an entity
    tag whose run part (before the first ``.``) is ``run_tag(state)``. Compared by run,
    not byte for byte, so any ETag of the run matches (a ``W/`` added by a proxy too),
    and one of an earlier or later run of the name never does."""
    current = run_tag(state)
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if len(tag) >= 2 and tag[0] == '"' and tag[-1] == '"':
            if tag[1:-1].partition(".")[0] == current:
                return True
    return False


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
    return Response(status, (("Content-Type", JSON_TYPE), NO_STORE, *headers), body)
