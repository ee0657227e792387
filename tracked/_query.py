"""What a status request carries, read one way for every adapter: the progress name
(path or ``?name=``), the client's ``progress_id`` (query, form field or
``X-Progress-Id`` header), ``since``, the mount prefix, and the storage key and
status URL they make.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

import tracked

from ._url import key_url

__all__ = [
    "FORM_LIMIT",
    "FORM_TYPES",
    "PROGRESS_ID_HEADER",
    "form_progress_ids",
    "missing_name",
    "mount_prefix",
    "query_values",
    "request_key",
    "requested_html",
    "requested_name",
    "requested_progress_id",
    "requested_since",
    "status_url",
    "storage_key",
    "wants_html",
]

PROGRESS_ID_HEADER = "X-Progress-Id"
_SINCE = re.compile(r"[0-9]{1,15}")


@functools.lru_cache(maxsize=256)
def _parsed_query(query: str) -> tuple[tuple[str, str], ...]:
    """A raw query string's decoded fields (UTF-8); cached, as pollers repeat theirs.

    Servers hand the query over as bytes read as latin-1 (PEP 3333, ASGI): bytes a
    client sent unescaped are read back as the UTF-8 they are, as in the path. Bytes
    that are not UTF-8 stay as lone surrogates: the query belongs to the app, and
    only a field tracked reads is refused for them (``query_values``)."""
    if not query.isascii() and max(query) <= "\xff":  # above: already text
        query = query.encode("latin-1").decode("utf-8", "surrogateescape")
    return tuple(parse_qsl(query, keep_blank_values=True, errors="surrogateescape"))


def query_values(query: str, field: str) -> list[str]:
    """Every decoded value of ``field`` in a raw query string (percent-encoded names too);
    ``InvalidValue`` when one of them is not UTF-8 (other fields are not looked at)."""
    if not query:
        return []
    values = [value for name, value in _parsed_query(query) if name == field]
    for value in values:
        if not value.isascii() and not _is_utf8(value):
            raise tracked.InvalidValue(f"the query's {field} is not UTF-8")
    return values


def _is_utf8(text: str) -> bool:
    """Whether ``text`` holds no lone surrogate (a byte that was not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def requested_name(path_name: str | None, query: str) -> str | None:
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
    return request_key(None, first)


#: Bodies whose fields may carry the client's progress_id.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: Largest body a middleware reads for a ``progress_id`` field (bigger uploads:
#: put it in the query or the header).
FORM_LIMIT = 1 << 20


def form_progress_ids(content_type: str | None, body: bytes) -> list[str]:
    """The ``progress_id`` fields of a urlencoded or multipart ``body`` (UTF-8); none
    for other bodies. Other fields are not decoded (bytes that are not UTF-8 there are
    the app's business, as is a body that cannot be read as its form); a progress_id
    that is not UTF-8 is ``InvalidName``."""
    kind = (content_type or "").lower()
    if kind.startswith(FORM_TYPES[0]):
        # Fields as their raw bytes (latin-1 text): only progress_id must be UTF-8.
        fields = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        return [_utf8(value.encode("latin-1")) for name, value in fields if name == "progress_id"]
    if kind.startswith(FORM_TYPES[1]):
        return _multipart_progress_ids(content_type or "", body)
    return []


def _multipart_progress_ids(content_type: str, body: bytes) -> list[str]:
    """The ``progress_id`` fields of a ``multipart/form-data`` body."""
    import email.parser
    import email.policy

    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return []  # no field tracked can read: the app answers this body
    found = []
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") != "progress_id":
            continue
        payload = part.get_payload(decode=True)
        found.append(_utf8(payload) if isinstance(payload, bytes) else "")
    return found


def _utf8(raw: bytes) -> str:
    """A progress_id field's bytes as text; ``InvalidName`` if they are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise tracked.InvalidName("a progress_id must be UTF-8 text") from None


@functools.lru_cache(maxsize=4096)
def mount_prefix(prefix: object) -> str:
    """The status route's prefix, checked, without its trailing slash.

    It must be a decoded URL path of at least one segment (``/`` alone would send
    every request to the status route) that a request can match as written: no
    empty, ``.`` or ``..`` segment (clients and proxies rewrite them), no ``?``,
    ``#`` or ``%`` (the path is matched decoded), no backslash, space or control
    character. Anything else is ``InvalidValue``."""
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise tracked.InvalidValue(f"prefix must be a URL path starting with '/', got {prefix!r}")
    kept = prefix.rstrip("/")
    reason = _prefix_problem(kept)
    if reason:
        raise tracked.InvalidValue(
            f"prefix must be a URL path like '/_progress_status', got {prefix!r}: {reason}"
        )
    return kept


def _prefix_problem(prefix: str) -> str:
    """Why a prefix (without its trailing slash) cannot work; "" when it can."""
    if not prefix:
        return "'/' would send every request to the status route"
    for segment in prefix[1:].split("/"):
        if segment in ("", ".", ".."):
            return "empty, '.' and '..' segments are rewritten before they arrive"
    bad = next((c for c in prefix if c in "?#%\\" or c.isspace() or not c.isprintable()), None)
    if bad is not None:
        return f"{bad!r} cannot be matched in a decoded path"
    return ""


def storage_key(name: str | None, progress_id: str | None) -> str:
    """The key ``name`` and ``progress_id`` combine into; raises ``InvalidName`` for a
    bad name or progress_id."""
    return tracked.State(name=name, progress_id=progress_id).key


#: ``storage_key`` for what requests carry (text or None, so always hashable): each
#: key is validated once, then cached, as pollers repeat theirs. A rejected one is
#: not cached (it raises every time). Names are at most 512 characters: bounded.
request_key = functools.lru_cache(maxsize=4096)(storage_key)


def requested_since(query: str) -> int:
    """The ``?since=N`` message cursor: a non-negative integer, 0 when absent."""
    values = query_values(query, "since")
    if not values:
        return 0
    value = values[-1]
    if not _SINCE.fullmatch(value):
        raise tracked.InvalidValue(f"since must be a non-negative integer, got {value!r}")
    return int(value)


def requested_html(query: str, accept: str | None, hx_request: str | None) -> bool:
    """Whether a request asks for the HTML fragment rather than the JSON: ``?format=html``
    (``?format=json`` asks for JSON whatever the headers say), else ``HX-Request: true``
    (htmx) or an ``Accept`` preferring ``text/html`` to JSON (a browser's address bar).
    Another ``format`` is ``InvalidValue`` (a 400)."""
    formats = query_values(query, "format") if query else []
    if formats:
        if len(set(formats)) > 1 or formats[0] not in ("html", "json"):
            raise tracked.InvalidValue(
                f"format must be 'html' or 'json', got {', '.join(map(repr, formats))}"
            )
        return formats[0] == "html"
    if hx_request is not None and hx_request.strip().lower() == "true":
        return True
    return accept is not None and wants_html(accept)


def wants_html(accept: str) -> bool:
    """Whether an ``Accept`` header names ``text/html`` before any JSON type (a browser
    navigating does; ``fetch``'s ``*/*`` and tracked.js's ``application/json`` do not)."""
    lowered = accept.lower()
    at = lowered.find("text/html")
    if at < 0:
        return False
    json_at = lowered.find("json")
    return json_at < 0 or at < json_at


def missing_name(prefix: str) -> tracked.InvalidName:
    return tracked.InvalidName(
        f"the URL names no progress: use {prefix}/<name> or {prefix}/?name=<name>"
    )


def status_url(prefix: str, key: str) -> str:
    """The status URL of ``key`` under ``prefix`` (the one rule: ``tracked.status_url``)."""
    return key_url(prefix, key)
