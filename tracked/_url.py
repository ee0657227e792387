"""``tracked.status_url``: the one rule that turns a run's key into its status URL.

The status route's adapters (Bottle, WSGI, ASGI), ``tracked serve`` and
``tracked.js``'s ``statusUrl`` all build URLs this way, so a ``Location`` made by
any of them reaches the same run.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from ._progress import Progress
from ._state import KEY_SEPARATOR, State, make_key
from .errors import InvalidName, InvalidValue

__all__ = ["key_url", "status_url"]

DEFAULT_PREFIX = "/_progress_status"


def status_url(
    progress_or_name: Progress | State | str | None,
    progress_id: str | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
) -> str:
    """The percent-encoded path of a run's status route: ``prefix``, the name, and
    ``?progress_id=`` when there is one. Give a ``Progress`` (or ``State``), or a
    name with an optional progress_id (``None`` and a progress_id: the id alone).

    Answer a ``202`` with it as ``Location``; prefix it with the mount point of the
    status route if it is not at the site's root. Raises ``InvalidName`` for a name
    or progress_id no run can have, ``InvalidValue`` for a progress_id given beside
    a progress.
    """
    if progress_or_name is None or isinstance(progress_or_name, str):
        key = make_key(progress_or_name, progress_id)
    elif not isinstance(progress_or_name, (Progress, State)):
        raise InvalidName(
            "status_url: give a progress, a State or a name, not "
            f"{type(progress_or_name).__name__}"
        )
    elif progress_id is not None:
        raise InvalidValue("status_url: give progress_id with a name, not with a progress")
    else:
        key = make_key(progress_or_name.name, progress_or_name.progress_id)
    if not isinstance(prefix, str):
        raise InvalidValue(f"status_url: prefix must be a str, not {type(prefix).__name__}")
    return key_url(prefix.rstrip("/"), key)


def key_url(prefix: str, key: str) -> str:
    """The status URL of ``key`` under ``prefix`` that every browser requests unchanged.

    Browsers resolve ``.`` and ``..`` path segments (``%2e%2e`` too) before sending
    a request. A name with such a segment travels as one segment, its ``/`` as
    ``%2F``; a name that is itself ``.`` or ``..`` as ``?name=``; a name that starts
    with ``/`` as one segment too (else an empty prefix makes ``//host``, a URL of
    another site); any other name keeps its slashes (proxies that refuse ``%2F``
    still pass it). ``statusUrl`` in tracked.js follows the same rule.
    """
    name, separator, rest = key.partition(KEY_SEPARATOR)  # see tracked.State.key
    query = [("progress_id", rest)] if separator else []
    if name in (".", ".."):
        return f"{prefix}/?{urlencode([('name', name), *query])}"
    dotted = name.startswith("/") or any(segment in (".", "..") for segment in name.split("/"))
    url = prefix + "/" + quote(name, safe="" if dotted else "/")
    return url + (f"?{urlencode(query)}" if query else "")
