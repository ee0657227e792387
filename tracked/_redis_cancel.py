"""``RedisStore``'s cancel requests: one key per record, polled for many runs at once.

``{prefix}cancel:{T}`` holds the run id of a running owner asked to stop, with the
run's lease as its TTL. Asking is one script call; a process's flusher asks about
all its live runs on a store in one round trip (``cancels_requested``).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.cluster import RedisCluster

from ._redis_codec import key_text, ms
from ._redis_core import RedisCore
from ._redis_scripts import Script
from ._store import Owner

__all__ = ["CANCEL_CHUNK", "RedisCancels"]

#: Cancel keys read per MGET when the flusher asks about its live runs (``cancels_requested``).
CANCEL_CHUNK = 1000


class RedisCancels(RedisCore):
    """``RedisStore``'s part of the cancel contract (see ``Store.request_cancel``):
    ``_lease`` is the store's lease, ``_request_cancel`` and ``_clear_cancel`` its scripts."""

    _lease: float
    _request_cancel: Script
    _clear_cancel: Script

    def request_cancel(self, key: str) -> bool:
        """One script call: mark ``key``'s live run asked to stop; False if none runs."""
        keys = [self.record_key(key), self.lease_key(key), self.cancel_key(key)]
        return bool(self._call(self._run, self._request_cancel, keys, [ms(self._lease)]))

    def cancels_requested(self, runs: Sequence[tuple[str, Owner]]) -> list[bool]:
        """One round trip for all of this process's live runs on this store."""
        if not runs:
            return []
        client = self.client
        pipe = client.pipeline(transaction=False)
        if isinstance(client, RedisCluster):  # keys in as many slots as runs: a GET each
            for key, _ in runs:
                pipe.get(self.cancel_key(key))
        else:  # one MGET per chunk: a command to pack and a reply to parse, not one per run
            keys = [self.cancel_key(key) for key, _ in runs]
            for start in range(0, len(keys), CANCEL_CHUNK):
                pipe.execute_command("MGET", *keys[start : start + CANCEL_CHUNK])
        replies = self._call(pipe.execute, raise_on_error=False)
        if not isinstance(client, RedisCluster):
            replies = [
                value
                for chunk in replies
                for value in (chunk if isinstance(chunk, list) else [chunk] * CANCEL_CHUNK)
            ][: len(runs)]
        return [
            isinstance(reply, (bytes, str)) and key_text(reply) == owner.run
            for reply, (_, owner) in zip(replies, runs, strict=True)
        ]

    def clear_cancel(self, key: str, owner: Owner) -> None:
        """One script call: remove ``owner``'s run's cancel request of ``key``."""
        self._call(self._run, self._clear_cancel, [self.cancel_key(key)], [owner.run])
