"""The share token: plain data naming a shared run and, by a fingerprint, its store.

``Progress.share()`` makes one and ``tracked.join()`` reads one (see ``_share``).
It lives apart from both so the live handle and the joined handle, which is a
``Progress``, need not import each other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import threading
import weakref
from typing import Any, Protocol

from ._state import make_key
from ._store import Store
from .errors import InvalidValue, TrackedError

__all__ = ["ShareToken", "Shareable", "known_store", "share_token", "store_fingerprint"]


class Shareable(Protocol):
    """What a token is made of: a handle's store, key parts and write settings."""

    @property
    def store(self) -> Store: ...
    @property
    def name(self) -> str | None: ...
    @property
    def progress_id(self) -> str | None: ...
    @property
    def min_interval(self) -> float: ...
    @property
    def max_messages(self) -> int: ...


#: What every share token starts with (the 1 is the format's version).
TOKEN_PREFIX = "tracked-share-1."  # noqa: S105 - a format tag, no secret
#: The longest token accepted: a 512-character name and a progress_id fit well within.
MAX_TOKEN_LENGTH = 4096
_PAYLOAD = re.compile(r"[A-Za-z0-9_-]+")
_RUN = re.compile(r"[0-9a-f]{32}")
_STORE_ID = re.compile(r"[0-9a-f]{16}")
_FIELDS = {"s", "r", "n", "p", "i", "m"}


class ShareToken(str):
    """What ``Progress.share()`` hands to workers: a short ``str``, plain data.

    It is ``tracked-share-1.`` followed by URL-safe base64 of a small JSON object:
    the run's name, progress_id and run id, its ``min_interval`` and
    ``max_messages``, and a fingerprint of the store (a hash of its location,
    never an address or a credential). Send it anywhere a string goes (a task
    argument, a URL, a queue header, JSON); ``tracked.join`` accepts the plain
    ``str`` too. Parsing it runs no code: anything else is ``InvalidValue``.
    """

    __slots__ = ()

    def __new__(cls, text: object) -> ShareToken:
        """Check ``text`` is a share token; ``InvalidValue`` (naming why) if not."""
        if isinstance(text, ShareToken):
            return text
        if not isinstance(text, str):
            raise InvalidValue(
                f"a share token is a str from Progress.share(), not {type(text).__name__}"
            )
        token = super().__new__(cls, text)
        token._fields()  # validates
        return token

    def __repr__(self) -> str:
        return f"ShareToken({str(self)!r})"

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        """Pickle as the plain ``str``: a worker needs nothing of this module to load it."""
        return (str, (str(self),))

    def _fields(self) -> dict[str, Any]:
        text = str(self)
        if len(text) > MAX_TOKEN_LENGTH:
            raise InvalidValue(f"not a share token: longer than {MAX_TOKEN_LENGTH} characters")
        payload = text[len(TOKEN_PREFIX) :]
        if not text.startswith(TOKEN_PREFIX) or not _PAYLOAD.fullmatch(payload):
            raise InvalidValue(f"not a share token (from Progress.share()): {text[:40]!r}")
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            fields = json.loads(raw)
        except (binascii.Error, ValueError, RecursionError) as exc:  # nested too deep
            raise InvalidValue(f"not a share token: {exc}") from None
        if not isinstance(fields, dict) or set(fields) != _FIELDS:
            raise InvalidValue("not a share token: unexpected fields")
        _check_fields(fields)
        return fields

    @property
    def name(self) -> str | None:
        """The shared run's name."""
        return self._fields()["n"]  # type: ignore[no-any-return]

    @property
    def progress_id(self) -> str | None:
        """The shared run's progress_id."""
        return self._fields()["p"]  # type: ignore[no-any-return]

    @property
    def key(self) -> str:
        """The shared progress's storage key."""
        fields = self._fields()
        return make_key(fields["n"], fields["p"])

    @property
    def run(self) -> str:
        """The id of the one run workers add to (a later run of the name gets nothing)."""
        return self._fields()["r"]  # type: ignore[no-any-return]

    @property
    def min_interval(self) -> float:
        """The run's ``min_interval``: joined handles write their parts as often."""
        return float(self._fields()["i"])

    @property
    def max_messages(self) -> int:
        """The run's ``max_messages``."""
        return self._fields()["m"]  # type: ignore[no-any-return]

    @property
    def store_id(self) -> str:
        """The fingerprint of the store the run lives in (see ``store_fingerprint``)."""
        return self._fields()["s"]  # type: ignore[no-any-return]


def _check_fields(fields: dict[str, Any]) -> None:
    """``InvalidValue`` unless every field of a decoded token has its type and form."""
    name, progress_id, interval, keep = fields["n"], fields["p"], fields["i"], fields["m"]
    for field, form, what in (("s", _STORE_ID, "store fingerprint"), ("r", _RUN, "run id")):
        if not isinstance(fields[field], str) or not form.fullmatch(fields[field]):
            raise InvalidValue(f"not a share token: malformed {what}")
    if not all(v is None or isinstance(v, str) for v in (name, progress_id)):
        raise InvalidValue("not a share token: malformed name or progress_id")
    if not _number_in(interval, (int, float), math.inf):
        raise InvalidValue("not a share token: malformed min_interval")
    if not _number_in(keep, (int,), (1 << 31) + 1):
        raise InvalidValue("not a share token: malformed max_messages")
    try:
        make_key(name, progress_id)
    except TrackedError as exc:
        raise InvalidValue(f"not a share token: {exc}") from None


def _number_in(value: object, kinds: tuple[type, ...], below: float) -> bool:
    """Whether ``value`` is a number of one of ``kinds`` (not a bool), 0 <= value < below."""
    if isinstance(value, bool) or not isinstance(value, kinds):
        return False
    return 0 <= value < below  # type: ignore[operator]


def share_token(progress: Shareable, run: str) -> ShareToken:
    """The token of ``progress``'s run ``run``; its store is remembered in this process
    (and its forked children), so a join here needs no configuration."""
    store = progress.store
    store_id = store_fingerprint(store)
    with _known_lock:
        _known_stores[store_id] = store
    fields = {
        "s": store_id,
        "r": run,
        "n": progress.name,
        "p": progress.progress_id,
        "i": progress.min_interval,
        "m": progress.max_messages,
    }
    raw = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return ShareToken(TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="))


def store_fingerprint(store: Store) -> str:
    """16 hex digits naming where ``store`` keeps its records (a FileStore's real
    directory, a RedisStore's address and prefix), with no credential in what is
    hashed: a worker tells whether its store is the token's."""
    from ._filestore import FileStore
    from ._memorystore import MemoryStore

    if isinstance(store, FileStore):
        where = "file:" + os.path.realpath(store.directory)
    elif isinstance(store, MemoryStore):
        where = f"memory:{os.getpid()}:{id(store)}"
    else:  # RedisStore's repr is its address (no user, no password) and prefix
        where = f"{type(store).__module__}.{type(store).__qualname__}:{store!r}"
    return hashlib.blake2b(where.encode("utf-8", "replace"), digest_size=8).hexdigest()


#: The stores whose runs this process shared, by fingerprint (inherited by a fork).
_known_stores: weakref.WeakValueDictionary[str, Store] = weakref.WeakValueDictionary()
_known_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    global _known_lock
    _known_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


def known_store(store_id: str) -> Store | None:
    """The store this process (or its parent, before a fork) shared a run of, by
    its fingerprint; None if there is none."""
    with _known_lock:
        return _known_stores.get(store_id)
