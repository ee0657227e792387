"""``RedisStore``'s footing: its connection, its key names and channels, and its round trips.

``RedisCore`` holds what every part of the store uses: the client (made on first
use), the names of a record's keys (all with the record's hash tag ``{T}``, so each
script touches one slot), the pub/sub channel of its events (sharded on a Redis
Cluster >= 7.0), and how a script call or a pipeline of them is sent, every Redis
failure turned into ``StoreError``. ``RedisStore`` (``tracked.redis``) builds on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, NoScriptError, RedisClusterException

from ._redis_codec import clean_text, hash_tag, major_version
from ._redis_connect import (
    CLUSTER_SCHEMES,
    CONNECT_TIMEOUT,
    Client,
    address_of,
    async_twin,
    connector,
)
from ._redis_scripts import Call, Script
from ._text import describe_error
from .errors import StoreError

__all__ = ["NAME_CACHE_SIZE", "SCAN_BATCH", "RedisCore"]

#: Keys fetched per SCAN step and records read per pipeline in ``records()``.
SCAN_BATCH = 200
#: Progress keys whose Redis key names a store keeps at hand (then it starts afresh).
NAME_CACHE_SIZE = 10_000


class RedisCore:
    """A ``RedisStore``'s connection, key names and round trips (see the module)."""

    def __init__(self, url_or_client: str | Client, prefix: str) -> None:
        self.prefix = prefix
        self._owns_client = isinstance(url_or_client, str)
        self.address = address_of(url_or_client)
        self._connect = connector(url_or_client, self.address)
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        #: Whether this store talks to a Redis Cluster (known without connecting).
        self._cluster = isinstance(url_or_client, RedisCluster) or (
            isinstance(url_or_client, str)
            and url_or_client.partition("://")[0].lower() in CLUSTER_SCHEMES
        )
        self._sharded: bool | None = None  # SPUBLISH known to work: asked on first use
        self._name_cache: dict[str, tuple[list[bytes], bytes]] = {}
        #: The URL this store was made from (None: a client), which a pickle carries.
        self._url = url_or_client if isinstance(url_or_client, str) else None

    @property
    def client(self) -> Client:
        """The redis-py client, made on first use (a cluster client connects when made)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._call(self._connect)
                client = self._client
        return client

    def close(self) -> None:
        """Close the connections of a client this store created."""
        if self._owns_client and self._client is not None:
            self._client.close()

    # ------------------------------------------------------------------ key names

    def record_key(self, key: str) -> str:
        """The Redis hash that holds ``key``'s state and owner."""
        return f"{self.prefix}rec:{hash_tag(key)}"

    def messages_key(self, key: str) -> str:
        """The Redis list that holds ``key``'s kept messages."""
        return f"{self.prefix}msg:{hash_tag(key)}"

    def lease_key(self, key: str) -> str:
        """The Redis key whose TTL is the running owner's lease."""
        return f"{self.prefix}lease:{hash_tag(key)}"

    def parts_key(self, key: str) -> str:
        """The Redis hash of the joined workers' parts of ``key`` (``tracked.join``):
        one field ``<run>/<worker>`` per worker, its part as JSON. It has the record's
        hash tag, so the scripts that read or write both run on one cluster slot."""
        return f"{self.prefix}parts:{hash_tag(key)}"

    def cancel_key(self, key: str) -> str:
        """The Redis key holding the run id of a running owner asked to stop (with the
        run's lease as its TTL)."""
        return f"{self.prefix}cancel:{hash_tag(key)}"

    def channel(self, key: str) -> str:
        """The pub/sub channel on which every write of ``key`` is published.

        On a Redis Cluster it carries the record's hash tag, so it lives in the
        record's slot: with ``sharded_pubsub`` the write publishes it with
        ``SPUBLISH`` and readers follow it with ``SSUBSCRIBE``."""
        if self._cluster:
            return f"{self.prefix}events:{hash_tag(key)}"
        return f"{self.prefix}events:{clean_text(key)}"

    @property
    def sharded_pubsub(self) -> bool:
        """True when events are sharded pub/sub messages (``SPUBLISH``): on a Redis
        Cluster whose servers are 7.0 or newer. A single Redis, and older clusters,
        use plain ``PUBLISH``, which a cluster relays to every master."""
        sharded = self._sharded
        if sharded is None:
            sharded = self._cluster and self._supports_spublish()
            if sharded is None:  # the cluster cannot answer now: ask again next time
                return False
            self._sharded = sharded
        return sharded

    def _supports_spublish(self) -> bool | None:
        """Whether the cluster's servers know ``SPUBLISH`` (Redis >= 7.0); None when
        they cannot be asked."""
        try:
            info: Any = self.client.info("server")
        except (redis.RedisError, RedisClusterException, StoreError):
            return None
        versions = info.values() if "redis_version" not in info else [info]
        found = [str(v.get("redis_version", "0")) for v in versions if isinstance(v, dict)]
        return bool(found) and all(major_version(version) >= 7 for version in found)

    def async_client(self) -> Any | None:
        """A new redis-py asyncio client of this store's server, for reading its events
        on an event loop (the caller closes it); None when there is none to make (a
        Redis Cluster, or a client whose connection class has no asyncio twin): then
        events are read on a thread instead."""
        import redis.asyncio

        if self._url is not None:
            if CLUSTER_SCHEMES.get(self._url.partition("://")[0].lower()) is not None:
                return None
            return redis.asyncio.Redis.from_url(
                self._url, socket_connect_timeout=CONNECT_TIMEOUT
            )
        client = self.client
        if not isinstance(client, redis.Redis):
            return None
        return async_twin(client)

    def _keys(self, key: str) -> list[str]:
        return self._sibling_keys(hash_tag(key))

    def _names(self, key: str) -> tuple[list[bytes], bytes]:
        """The keys and the channel of ``key``, encoded; cached, as every write needs them."""
        names = self._name_cache.get(key)
        if names is None:
            if len(self._name_cache) >= NAME_CACHE_SIZE:
                self._name_cache.clear()
            keys = [name.encode() for name in self._keys(key)]
            names = self._name_cache[key] = (keys, self.channel(key).encode())
        return names

    def _sibling_keys(self, tagged: str) -> list[str]:
        """The record, messages and lease keys of a record from its ``{T}`` part."""
        return [f"{self.prefix}{kind}:{tagged}" for kind in ("rec", "msg", "lease")]

    def _all_keys(self, tagged: str) -> list[str]:
        """A read's keys from the ``{T}`` part: the record's, then its joined workers'
        parts (one slot: they share the tag)."""
        return [f"{self.prefix}{kind}:{tagged}" for kind in ("rec", "msg", "lease", "parts")]

    def _view_keys(self, tagged: str) -> list[str]:
        """A reader's keys from the ``{T}`` part: the read's, then a group's ledger
        hash and lines (one slot: the ledgers take the record's tag)."""
        ledger = [f"{self.prefix}{kind}:{tagged}" for kind in ("grp", "grpm")]
        return [*self._all_keys(tagged), *ledger]

    def _read_keys(self, key: str) -> list[str]:
        """A read's keys: the record's, then its joined workers' parts."""
        return self._all_keys(hash_tag(key))

    # ------------------------------------------------------------------ round trips

    def _read_record(
        self, script: Script, key: str, keys: Sequence[str | bytes] | None = None
    ) -> Any:
        """Run a script that reads ``key``'s record (its ``keys``, by default the
        record's three); a foreign value there is corrupt."""
        try:
            return self._run(script, self._keys(key) if keys is None else keys, ())
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise self._failure(exc) from exc
            raise StoreError(f"corrupt progress record {key!r} in {self}: {exc}") from exc
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._failure(exc) from exc

    def _scan(self, pattern: str) -> list[Any]:
        return list(self.client.scan_iter(match=pattern, count=SCAN_BATCH, _type="hash"))

    def _run(
        self, script: Script, keys: Sequence[str | bytes], args: Sequence[str | bytes | int]
    ) -> Any:
        """One script call: one round trip (two the first time a server sees it)."""
        return script(self.client, keys, args)

    def _run_many(self, script: Script, calls: Sequence[Call]) -> list[Any]:
        """Each call's reply, or the error it got, from one pipeline round trip.

        Calls a server answered NOSCRIPT (restarted, or a master added) are sent
        once more after loading the script. A single call skips the pipeline.
        """
        if len(calls) == 1:
            try:
                return [self._run(script, *calls[0])]
            except redis.ResponseError as exc:  # an error reply, as a pipeline returns it
                return [exc]
        replies = self._pipeline(script, calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            script.load(self.client)
            again = self._pipeline(script, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _pipeline(self, script: Script, calls: Sequence[Call]) -> list[Any]:
        """Send every call in one pipeline (a cluster's groups them per master and
        writes to every master before reading any reply)."""
        client = self.client
        pipe = client.pipeline(transaction=False)
        if isinstance(client, RedisCluster):
            # Name each call's master from the client's slot table: left to find the
            # keys itself, a cluster pipeline asks the server (COMMAND GETKEYS) for
            # every EVALSHA, one round trip each. A stale table is corrected by the
            # MOVED reply, which the pipeline follows.
            for keys, args in calls:
                node = client.get_node_from_key(keys[0])
                pipe.execute_command(*script.command(keys, args), target_nodes=node)
        else:
            for keys, args in calls:
                pipe.execute_command(*script.command(keys, args))
        return list(pipe.execute(raise_on_error=False))

    def _failure(self, exc: BaseException) -> StoreError:
        text = describe_error(exc)
        if isinstance(exc, AskError) and not isinstance(self._client, RedisCluster):  # or MOVED
            text += " (this server is part of a Redis Cluster: use a redis+cluster:// URL)"
        return StoreError(f"Redis at {self.address} failed: {text}")

    def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a Redis operation, turning every Redis failure into ``StoreError``."""
        try:
            return function(*args, **kwargs)
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._failure(exc) from exc
