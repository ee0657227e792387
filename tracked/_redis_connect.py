"""Connecting to Redis: the client a store uses (made from a URL checked whole first,
or given), its asyncio twin, and the address shown in messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

try:
    import redis
except ImportError as exc:  # pragma: no cover - redis is in the test extra
    raise ImportError(
        "tracked's Redis store needs redis-py: pip install 'tracked[redis]'"
    ) from exc

from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .errors import InvalidValue, StoreError

#: Seconds to wait for a connection, so a dead Redis cannot hang a task.
CONNECT_TIMEOUT = 2.0
#: Seconds to wait for a reply on an open connection.
SOCKET_TIMEOUT = 5.0

#: Connections a store made from a URL opens at most to one server (``?max_connections=``
#: in the URL overrides it), and seconds a thread waits for a free one (``?timeout=``):
#: a burst of thousands of starts or ends in one process queues for the pool instead
#: of failing with redis-py's ``MaxConnectionsError``.
MAX_CONNECTIONS = 100
POOL_TIMEOUT = 10.0

#: URL schemes that select a Redis Cluster, and the plain scheme redis-py takes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

#: A client of one server or of a cluster.
Client: TypeAlias = "redis.Redis | RedisCluster"  # type: ignore[type-arg]


def connector(url_or_client: object, address: str) -> Callable[[], Client]:
    """A function that returns the store's client: the one given, or one made from
    the URL. The URL is checked now; a cluster client is made on first use, since
    making one connects to the cluster."""
    if isinstance(url_or_client, (redis.Redis, RedisCluster)):
        given = url_or_client
        return lambda: given
    if not isinstance(url_or_client, str):
        raise StoreError(
            "RedisStore needs a redis://, rediss://, unix://, redis+cluster:// or "
            "rediss+cluster:// URL, or a redis.Redis or redis.cluster.RedisCluster "
            f"client, not {type(url_or_client).__name__}"
        )
    _check_url(url_or_client)
    scheme, _, rest = url_or_client.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    try:
        if plain is None:
            client = _single_client(url_or_client)
            return lambda: client
        return _cluster_connector(f"{plain}://{rest}")
    except (ValueError, TypeError, redis.RedisError, RedisClusterException) as exc:
        raise StoreError(f"cannot use {address!r} as a Redis store: {exc}") from exc

#: A sync client's connection options that do not carry over to an asyncio one: its
#: retry policy and read timeout (a pub/sub read waits), and objects made for the
#: sync connections (a callback run on connect, the pool's notification handler).
_SYNC_ONLY_OPTIONS = frozenset(
    ("retry", "socket_timeout", "redis_connect_func", "maint_notifications_pool_handler")
)


def async_twin(client: redis.Redis) -> Any | None:  # type: ignore[type-arg]
    """An asyncio client with the connection settings of a sync one, where they carry over."""
    import inspect

    import redis.asyncio
    import redis.asyncio.connection

    pool = client.connection_pool
    kind = getattr(redis.asyncio.connection, pool.connection_class.__name__, None)
    if kind is None:
        return None
    # Each class takes its own options and passes the rest (db, password, ...) on to
    # its base as **kwargs: what is accepted is the union along the MRO.
    accepted = {
        name
        for cls in kind.__mro__
        if "__init__" in vars(cls)
        for name, parameter in inspect.signature(vars(cls)["__init__"]).parameters.items()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }
    options = {
        name: value
        for name, value in pool.connection_kwargs.items()
        if name in accepted and name not in _SYNC_ONLY_OPTIONS
    }
    try:
        async_pool = redis.asyncio.ConnectionPool(connection_class=kind, **options)
    except (TypeError, ValueError):
        return None
    return redis.asyncio.Redis(connection_pool=async_pool)


def _single_client(url: str) -> redis.Redis:  # type: ignore[type-arg]
    """A client of one server (it connects lazily, on its first command), whose pool
    makes a thread wait for a free connection rather than fail (see ``MAX_CONNECTIONS``)."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        # One immediate retry on a broken connection (a pooled socket the server
        # closed by restarting); none on timeouts, so a dead host costs one wait.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    return redis.Redis(connection_pool=pool)


def _cluster_connector(url: str) -> Callable[[], Client]:
    """Check a cluster node's URL now; return the function that makes the client."""
    options = parse_url(url)
    if "path" in options:
        raise ValueError("a Redis Cluster is reached over TCP: give host:port")
    if int(options.get("db") or 0) != 0:
        raise ValueError("a Redis Cluster has only database 0")
    if not options.get("host"):
        raise ValueError("name a node of the cluster: redis+cluster://host:port")

    def connect() -> Client:
        return RedisCluster.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            connection_pool_class=redis.BlockingConnectionPool,  # one per master
            max_connections=MAX_CONNECTIONS,  # the URL's own options win over these
            timeout=POOL_TIMEOUT,
        )

    return connect

#: Query options a URL may carry as plain text (redis-py converts the others it knows,
#: ``URL_QUERY_ARGUMENT_PARSERS``); ``ssl_*`` ones only on a ``rediss`` URL.
_TEXT_OPTIONS = frozenset(("client_name", "lib_name", "lib_version", "password", "username"))

_TLS_TEXT_OPTIONS = frozenset(
    ("ssl_ca_certs", "ssl_ca_path", "ssl_cert_reqs", "ssl_certfile", "ssl_ciphers",
     "ssl_keyfile", "ssl_password")
)

#: Options that would change what tracked's own code receives or relies on.
_REFUSED_OPTIONS = frozenset(("decode_responses", "legacy_responses", "protocol"))


#: What a part of a URL that tracked cannot read fully is reported with.
_Bad = Callable[[str], InvalidValue]


def _check_url(url: str) -> None:
    """``InvalidValue`` naming the part of a store URL that tracked cannot read fully.

    redis-py ignores what it cannot parse (``redis://h/abc`` is database 0, an
    unknown option is passed on to fail at the first command): every part is
    checked here instead, at once, before anything connects.
    """
    shown = _redact(url)

    def bad(part: str) -> InvalidValue:
        return InvalidValue(f"cannot use {shown!r} as a Redis store: {part}")

    plain, cluster = _check_scheme(url, bad)
    parts = _split(url, bad)
    options = _check_query(parts.query, tls=plain == "rediss", bad=bad)
    _check_credentials(parts, options, bad)
    if plain == "unix":
        if not parts.path or parts.path == "/":
            raise bad("the unix socket path is missing (unix:///path/to/redis.sock)")
        return
    if parts.port == 0:
        raise bad("port 0 is not a port")
    if cluster and not parts.hostname:
        raise bad("name a node of the cluster: redis+cluster://host:port")
    db = _check_database(unquote(parts.path).removeprefix("/"), options, bad)
    if cluster and db != 0:
        raise bad("a Redis Cluster has only database 0")


def _check_scheme(url: str, bad: _Bad) -> tuple[str, bool]:
    """(the plain scheme redis-py takes, whether it names a cluster)."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    plain = CLUSTER_SCHEMES.get(scheme, scheme)
    if not sep or plain not in ("redis", "rediss", "unix"):
        what = f"unknown scheme {scheme!r}" if sep else "no scheme://"
        raise bad(f"{what} (use redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://)")
    return plain, scheme in CLUSTER_SCHEMES


def _split(url: str, bad: _Bad) -> SplitResult:
    """The URL's parts, its port readable; no fragment."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise bad(f"the address is malformed ({exc})") from None
    if parts.fragment or url.endswith("#"):
        raise bad("a URL fragment ('#...') means nothing here")
    return parts


def _check_credentials(parts: SplitResult, options: dict[str, Any], bad: _Bad) -> None:
    """A username or password given before '@' is not given again as an option."""
    for name, given in (("username", parts.username), ("password", parts.password)):
        if given is not None and name in options:
            raise bad(f"the {name} is given twice: before '@' and as an option")


def _check_database(db: str, options: dict[str, Any], bad: _Bad) -> int:
    """The database the path (``db``) and the options name, once; 0 if none does."""
    if db:
        if not db.isascii() or not db.isdigit():
            raise bad(f"the database {db!r} is not an integer >= 0 (redis://host:port/0)")
        if "db" in options and options["db"] != int(db):
            raise bad(f"the database is given twice: {db!r} in the path, db={options['db']}")
    return int(db or 0) + int(options.get("db", 0))


def _check_query(query: str, *, tls: bool, bad: _Bad) -> dict[str, Any]:
    """The query options, each known to redis-py and readable; ``bad(part)`` else."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise bad("the query is not name=value pairs joined by '&'") from None
    options: dict[str, Any] = {}
    for name, value in pairs:
        if name in options:
            raise bad(f"the option {name!r} is given twice")
        options[name] = _check_option(name, value, tls=tls, bad=bad)
    return options


def _check_option(name: str, value: str, *, tls: bool, bad: _Bad) -> Any:
    """One query option's value as redis-py reads it; ``bad(part)`` if it cannot."""
    if not _known(name, tls=tls):
        where = "" if tls or not name.startswith("ssl_") else " on a non-TLS URL"
        raise bad(f"unknown option {name!r}{where}")
    parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
    if not value:
        raise bad(f"the option {name!r} has no value")
    try:
        read = value if parser is None else parser(value)
    except (TypeError, ValueError):
        raise bad(f"the option {name!r} has a value redis-py cannot read") from None
    least = {"db": 0, "max_connections": 1}.get(name)
    if least is not None and not (isinstance(read, int) and read >= least):
        raise bad(f"the option {name!r} must be an integer >= {least}")
    return read


def _known(name: str, *, tls: bool) -> bool:
    """Whether redis-py reads option ``name`` (``ssl_*`` only on a TLS URL) and tracked
    lets it through."""
    if name in _REFUSED_OPTIONS or (name.startswith("ssl_") and not tls):
        return False
    return (
        URL_QUERY_ARGUMENT_PARSERS.get(name) is not None
        or name in _TEXT_OPTIONS
        or name in _TLS_TEXT_OPTIONS
    )


def address_of(url_or_client: object) -> str:
    """Where the server is, for error messages: the URL without its password."""
    if isinstance(url_or_client, str):
        return _redact(url_or_client)
    if isinstance(url_or_client, RedisCluster):
        node = url_or_client.get_default_node()
        return f"redis+cluster://{node.name}" if node is not None else "a Redis Cluster"
    if isinstance(url_or_client, redis.Redis):
        kwargs = url_or_client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}"
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return repr(type(url_or_client).__name__)


def _redact(url: str) -> str:
    """The URL as shown in messages: no password, no query (it may hold one)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        user = f"{parts.username or ''}:***@" if parts.password is not None else ""
        sep = "://" if "://" in url else ":"
        return f"{parts.scheme}{sep}{user}{host}{parts.path}" if parts.scheme else "<a URL>"
    except ValueError:
        return "<a malformed URL>"
