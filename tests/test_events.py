"""Server-Sent Events on the status route, spoken to by a raw HTTP client.

Every test runs against every adapter (Bottle plugin, WSGI app under wsgiref,
ASGI app under uvicorn), each on a real server on a free port, over every
store (memory, file, redis). Records are written in this process with
``tracked.start`` (the memory store is shared with the in-process server).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle
import pytest

import tracked
from tests.conftest import free_port, wait_for_port
from tracked import _watch
from tracked.asgi import status_app as asgi_status_app
from tracked.bottle import TrackedPlugin
from tracked.wsgi import status_app as wsgi_status_app

PREFIX = "/_progress_status"
ADAPTERS = ["bottle", "wsgi", "asgi"]


class _ThreadingServer(WSGIServer):
    """wsgiref with a thread per request: a stream must not block the next request."""

    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._handle, args=(request, client_address))
        thread.daemon = True
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _mounted(app: Callable[..., Any]) -> Callable[..., Any]:
    """Mount a WSGI app at PREFIX as DispatcherMiddleware does."""

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        environ["SCRIPT_NAME"] = PREFIX
        environ["PATH_INFO"] = path[len(PREFIX):]
        return app(environ, start_response)

    return dispatch


@contextlib.contextmanager
def serve(adapter: str, store: tracked.Store, **options: Any) -> Iterator[int]:
    """Serve the status route of ``store`` through ``adapter``; yield the port."""
    if adapter == "asgi":
        import uvicorn

        app = asgi_status_app(store, **options)

        async def root(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope = {**scope, "root_path": PREFIX}
            await app(scope, receive, send)

        port = free_port()
        config = uvicorn.Config(root, host="127.0.0.1", port=port, log_level="error",
                                lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for_port(port)
        try:
            yield port
        finally:
            server.should_exit = True
            thread.join(10)
        return
    if adapter == "bottle":
        wsgi: Any = bottle.Bottle()
        wsgi.install(TrackedPlugin(store, **options))
    else:
        wsgi = _mounted(wsgi_status_app(store, **options))
    httpd = make_server("127.0.0.1", 0, wsgi, server_class=_ThreadingServer, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


class Stream:
    """A raw HTTP/1.0 request for an event stream, read event by event."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = [f"GET {path} HTTP/1.0", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in header_lines)}
        self.comments = 0

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def body(self) -> bytes:
        """Everything until the server closes."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return self.buffer
            self.buffer += chunk

    def event(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next event ({"id", "event", "data", "retry"}); None when the server closed.
        Comment lines are counted in ``comments``."""
        self.sock.settimeout(timeout)
        while True:
            try:
                block = self._until(b"\n\n").decode()
            except EOFError:
                return None
            event: dict[str, Any] = {"event": "message"}
            data: list[str] = []
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "data":
                    data.append(value)
                else:
                    event[field] = value
            if data:
                event["data"] = json.loads("\n".join(data))
                return event
            if event.get("event") != "message":
                return event

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _messages(events: list[dict[str, Any]], cursor: int = 0) -> tuple[list[str], int]:
    """The messages of ``events`` placed by message_count, checking none is skipped."""
    seen: list[str] = []
    for event in events:
        data = event["data"]
        first = data["message_count"] - len(data["messages"])
        assert first == cursor, (
            f"event starts at message {first}, client had {cursor}: "
            f"{[(e['id'], len(e['data']['messages']), e['data']['state']) for e in events]}"
        )
        seen.extend(data["messages"])
        cursor = data["message_count"]
    return seen, cursor


def test_first_event_is_the_whole_state_then_only_new_messages(adapter, store):
    with serve(adapter, store) as port, tracked.start("job", store=store, min_interval=0) as p:
        p.increment(1, "one", "two")
        _wait_stored(store, "job", 2)
        stream = Stream(port, f"{PREFIX}/job")
        try:
            assert stream.status == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["cache-control"] == "no-store"
            first = stream.event()
            assert first is not None
            assert first["retry"] == "1000"
            assert first["data"]["messages"] == ["one", "two"]
            assert first["data"]["count"] == 1
            assert first["id"].startswith("2/")
            p.increment(1, "three")
            second = stream.event()
            # The flusher may catch the count before the message: skip such a write.
            while second is not None and not second["data"]["messages"]:
                second = stream.event()
            assert second is not None
            assert second["data"]["messages"] == ["three"]
            assert second["data"]["message_count"] == 3
            assert second["data"]["count"] == 2
            assert second["id"].startswith("3/")
        finally:
            stream.close()


def test_since_in_the_query_starts_the_first_event_there(adapter, store):
    with serve(adapter, store) as port:
        with tracked.start("job", store=store) as p:
            p.add_message("a", "b", "c")
        stream = Stream(port, f"{PREFIX}/job?since=2")
        first = stream.event()
        assert first is not None and first["data"]["messages"] == ["c"]
        stream.close()


def test_stream_ends_with_an_end_event_after_the_final_state_and_its_id_gets_204(adapter, store):
    with serve(adapter, store) as port:
        with tracked.start("job", store=store, min_interval=0) as p:
            p.increment(1, "first")
            _wait_stored(store, "job", 1)
            stream = Stream(port, f"{PREFIX}/job")
            assert stream.event() is not None
            p.increment(1, "last")
        events = _read_to_end(stream)
        assert events[-1]["event"] == "end"
        assert events[-1]["id"] == "end"
        assert events[-2]["data"]["state"] == "finished"
        assert events[-2]["data"]["in_progress"] is False
        assert "last" in [m for e in events[:-1] for m in e["data"]["messages"]]
        again = Stream(port, f"{PREFIX}/job", {"Last-Event-ID": "end"})
        assert again.status == 204
        assert again.body() == b""
        again.close()


def test_an_ended_record_gets_its_state_and_the_end_at_once(adapter, store):
    with serve(adapter, store) as port:
        with tracked.start("job", store=store) as p:
            p.add_message("done")
        stream = Stream(port, f"{PREFIX}/job")
        events = _read_to_end(stream)
        assert [e["event"] for e in events] == ["message", "end"]
        assert events[0]["data"]["messages"] == ["done"]


def test_last_event_id_resumes_without_gap_or_repeat_over_1000_messages(adapter, store):
    expected = [f"message {i}" for i in range(1000)]
    with serve(adapter, store) as port:
        # max_messages above 1000: _progress keeps only the last message of a full-ish
        # deque (len - max_messages is a small negative slice start), reported to core.
        progress = tracked.start("long", store=store, total=1000, min_interval=0.005,
                                 max_messages=2000)
        progress.increment(1, expected[0])
        _wait_stored(store, "long", 1)

        def write() -> None:
            with progress:
                for text in expected[1:]:
                    progress.increment(1, text)
                    time.sleep(0.002)

        writer = threading.Thread(target=write)
        writer.start()
        received: list[str] = []
        cursor, last_id, connections = 0, None, 0
        try:
            while True:
                connections += 1
                headers = {"Last-Event-ID": last_id} if last_id else {}
                stream = Stream(port, f"{PREFIX}/long", headers)
                if stream.status == 204:
                    stream.close()
                    break
                assert stream.status == 200
                # Leave after a few events, as a dropped connection would.
                events = []
                for _ in range(3 if connections < 6 else 10_000):
                    event = stream.event()
                    if event is None or event["event"] == "end":
                        if event is not None:
                            last_id = event["id"]
                        break
                    events.append(event)
                    last_id = event["id"]
                stream.close()
                seen, cursor = _messages(events, cursor)
                received.extend(seen)
                if last_id == "end":
                    break
        finally:
            writer.join(30)
    assert received == expected
    assert connections >= 6


def test_idle_stream_sends_a_comment_line_every_heartbeat(adapter, store):
    with serve(adapter, store, heartbeat_seconds=0.2) as port:
        with tracked.start("idle", store=store):
            _wait_stored(store, "idle", 0)
            stream = Stream(port, f"{PREFIX}/idle")
            assert stream.event() is not None
            started = time.monotonic()
            stream.sock.settimeout(10)  # a guard against hanging, not a timed assertion
            while stream.buffer.count(b": ping\n\n") < 3:  # not a sleep: load delays pings
                chunk = stream.sock.recv(65536)
                assert chunk, "the stream ended before three heartbeats"
                stream.buffer += chunk
            took = time.monotonic() - started
            stream.close()
    assert took >= 2 * 0.2  # three pings span two heartbeats at least (load only delays them)


def test_a_stream_lasts_at_most_max_stream_seconds(adapter, store):
    with serve(adapter, store, max_stream_seconds=0.5) as port:
        with tracked.start("slow", store=store):
            _wait_stored(store, "slow", 0)
            started = time.monotonic()
            stream = Stream(port, f"{PREFIX}/slow")
            events = _read_to_end(stream)
            took = time.monotonic() - started
    assert len(events) == 1 and events[0]["event"] == "message"
    assert 0.4 <= took < 3


def test_max_stream_seconds_zero_answers_json_to_event_stream_requests(adapter, store):
    with serve(adapter, store, max_stream_seconds=0) as port:
        with tracked.start("job", store=store) as p:
            p.add_message("x")
        stream = Stream(port, f"{PREFIX}/job")
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("application/json")
        assert json.loads(stream.body())["messages"] == ["x"]


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        (f"{PREFIX}/missing", {}, 404),
        (f"{PREFIX}/job?progress_id=bad%20id", {}, 400),
        (f"{PREFIX}/job?since=-1", {}, 400),
        (f"{PREFIX}/job", {"Last-Event-ID": "not-an-id"}, 400),
        (f"{PREFIX}/", {}, 400),
        (f"{PREFIX}/secret", {}, 403),
    ],
)
def test_errors_are_json_before_any_stream_starts(adapter, store, path, headers, code):
    def authorize(request: Any, key: str) -> bool:
        return key != "secret"

    with serve(adapter, store, authorize=authorize) as port:
        for name in ("job", "secret"):
            with tracked.start(name, store=store):
                pass
        stream = Stream(port, path, headers)
        assert stream.status == code
        assert stream.headers["content-type"].startswith("application/json")
        body = json.loads(stream.body())
        assert body["status"] == "error"
        stream.close()


def test_a_name_started_again_is_streamed_from_its_first_message(adapter, store):
    with serve(adapter, store) as port:
        with tracked.start("again", store=store) as p:
            p.add_message("old 1", "old 2")
        time.sleep(0.01)
        with tracked.start("again", store=store, min_interval=0) as p:
            p.add_message("new 1")
            _wait_stored(store, "again", 1)
            # The client's cursor belongs to the first run: the new run comes whole.
            stream = Stream(port, f"{PREFIX}/again", {"Last-Event-ID": "2/1"})
            first = stream.event()
            stream.close()
    assert first is not None and first["data"]["messages"] == ["new 1"]


def test_a_closed_client_stops_following_the_record(adapter, store):
    with serve(adapter, store, heartbeat_seconds=0.1) as port:
        with tracked.start("left", store=store):
            _wait_stored(store, "left", 0)
            stream = Stream(port, f"{PREFIX}/left")
            assert stream.event() is not None
            assert "left" in _watch.followed(store)
            stream.close()
            deadline = time.monotonic() + 5
            while "left" in _watch.followed(store) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "left" not in _watch.followed(store)


def test_a_write_reaches_the_client_quickly(adapter, store):
    with serve(adapter, store) as port:
        with tracked.start("fresh", store=store, min_interval=0) as p:
            _wait_stored(store, "fresh", 0)
            stream = Stream(port, f"{PREFIX}/fresh")
            assert stream.event() is not None
            delays = []
            for i in range(5):
                time.sleep(0.1)
                written = time.monotonic()
                p.add_message(f"m{i}")
                _wait_stored(store, "fresh", i + 1)
                event = stream.event()
                while event is not None and not event["data"]["messages"]:
                    event = stream.event()  # a write without messages (a lease renewal)
                assert event is not None and event["data"]["messages"] == [f"m{i}"]
                delays.append(time.monotonic() - written)
            stream.close()
    # Generous on a shared machine; bench/ measures the real figures.
    assert sorted(delays)[2] < 0.5


# ----------------------------------------------------------------------------- helpers


def _wait_stored(store: tracked.Store, key: str, message_count: int) -> None:
    """Wait until the store holds ``key`` with at least ``message_count`` messages."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = store.load(key)
        if state is not None and state.message_count >= message_count:
            return
        time.sleep(0.005)
    raise AssertionError(f"{key} never reached {message_count} messages in {store}")


def _read_to_end(stream: Stream) -> list[dict[str, Any]]:
    events = []
    while True:
        event = stream.event()
        if event is None:
            break
        events.append(event)
    stream.close()
    return events


def _pubsub_ids(admin: Any) -> set[str]:
    """The ids of the server's pub/sub connections now (any test's, any process's)."""
    listed = admin.execute_command("CLIENT", "LIST", "TYPE", "pubsub").decode()
    return {field[3:] for line in listed.splitlines() for field in line.split()
            if field.startswith("id=")}


def _own_store(redis_url: str) -> tracked.RedisStore:
    """A store whose channels no other test uses (pub/sub channels ignore the database):
    counting their subscribers is independent of what earlier tests left open."""
    return tracked.RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:")


def test_redis_streams_share_one_pub_sub_connection(adapter, redis_url):
    import redis

    store = _own_store(redis_url)
    admin = redis.Redis.from_url(redis_url)
    names = [f"job-{i}" for i in range(5)]
    streams = []
    try:
        with serve(adapter, store) as port:
            progresses = [tracked.start(f"live-{n}", store=store, min_interval=0) for n in names]
            for name in names:
                _wait_stored(store, f"live-{name}", 0)
            before = _pubsub_ids(admin)  # other tests' connections may still be open
            streams = [Stream(port, f"{PREFIX}/live-{n}") for n in [*names, *names]]
            for stream in streams:
                assert stream.event() is not None
            assert len(_pubsub_ids(admin) - before) == 1
            channels = [store.channel(f"live-{n}") for n in names]
            assert [count for _, count in admin.pubsub_numsub(*channels)] == [1] * len(names)
            # ASGI streams read pub/sub on their event loop; WSGI ones on one thread.
            on_threads = set(_watch.watcher(store).keys())
            assert on_threads == (set() if adapter == "asgi" else _watch.followed(store))
            for index, progress in enumerate(progresses):
                progress.add_message(f"to {index}")
            for index, stream in enumerate(streams):
                event = stream.event()
                while event is not None and not event["data"]["messages"]:
                    event = stream.event()
                assert event is not None
                assert event["data"]["messages"] == [f"to {index % len(names)}"]
            for progress in progresses:
                progress.finish()
    finally:
        for stream in streams:
            stream.close()
        admin.close()
        store.close()


def test_streams_resubscribe_after_the_pub_sub_connection_is_killed(adapter, redis_url):
    import redis

    store = _own_store(redis_url)
    admin = redis.Redis.from_url(redis_url)
    channel = store.channel("survivor")

    def pubsub_clients() -> int:
        """Connections subscribed to this test's own channel (NUMSUB). Not counted by new
        connection ids: the kill also ends earlier tests' watchers, which subscribe again
        as new connections of their own."""
        return int(admin.pubsub_numsub(channel)[0][1])

    try:
        with serve(adapter, store) as port, tracked.start(
            "survivor", store=store, min_interval=0
        ) as progress:
            _wait_stored(store, "survivor", 0)
            stream = Stream(port, f"{PREFIX}/survivor")
            assert stream.event() is not None
            assert pubsub_clients() == 1
            admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            deadline = time.monotonic() + 10
            while pubsub_clients() != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pubsub_clients() == 1  # subscribed again, on one connection
            progress.add_message("after the kill")
            event = stream.event()
            while event is not None and not event["data"]["messages"]:
                event = stream.event()
            assert event is not None and event["data"]["messages"] == ["after the kill"]
            stream.close()
    finally:
        admin.close()
        store.close()


def test_asgi_streams_keep_trying_to_subscribe_while_redis_refuses_it(redis_url):
    # The pub/sub connection is killed and the server refuses new ones for a while
    # (here: a password set meanwhile; the store's open connections still read):
    # after the first failed attempt, the loop's reader must keep trying, or its
    # streams only see writes at each recheck from then on.
    import redis

    store = _own_store(redis_url)
    admin = redis.Redis.from_url(redis_url)
    channel = store.channel("refused")
    others = _pubsub_ids(admin)  # other tests' connections may still be open

    def subscribers() -> tuple[int, int]:
        return admin.pubsub_numsub(channel)[0][1], len(_pubsub_ids(admin) - others)

    def refusals() -> int:
        stats = admin.info("errorstats")
        return int(stats.get("errorstat_NOAUTH", {}).get("count", 0))

    try:
        with serve("asgi", store) as port, tracked.start(
            "refused", store=store, min_interval=0
        ) as progress:
            _wait_stored(store, "refused", 0)
            stream = Stream(port, f"{PREFIX}/refused")
            assert stream.event() is not None
            assert subscribers() == (1, 1)
            before = refusals()
            admin.config_set("requirepass", "not-given")
            try:
                admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                deadline = time.monotonic() + 10
                while refusals() == before and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert refusals() > before  # the reader's reconnection was refused
                time.sleep(1.5)  # the rest of the outage: the next attempts fail too
            finally:
                admin.config_set("requirepass", "")
            deadline = time.monotonic() + 10
            while subscribers() != (1, 1) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert subscribers() == (1, 1)  # subscribed again, on one connection
            progress.add_message("after the refusal")
            event = stream.event()
            while event is not None and not event["data"]["messages"]:
                event = stream.event()
            assert event is not None and event["data"]["messages"] == ["after the refusal"]
            stream.close()
    finally:
        admin.close()
        store.close()


@pytest.mark.parametrize("reader", ["loop", "thread"])
def test_a_key_followed_again_while_its_last_stream_unsubscribes_stays_subscribed(
    reader, redis_url
):
    # The last stream of a key closes; before its unsubscription reaches Redis,
    # another stream follows the key. Whatever the order, the key must stay
    # subscribed, or the new stream only sees writes at each recheck.
    import asyncio

    import redis

    store = tracked.RedisStore(redis_url)
    admin = redis.Redis.from_url(redis_url)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    watcher = _watch.watcher(store, loop if reader == "loop" else None)
    key = f"contested-{reader}"  # its own channel: another test's connection may linger
    again: list[_watch.Subscription] = []
    original = watcher._removed

    def removed_late(key: str) -> None:
        again.append(watcher.subscribe(key))  # another stream, right then
        original(key)

    try:
        held = watcher.subscribe(key)
        watcher._removed = removed_late  # type: ignore[method-assign]
        held.close()
        watcher._removed = original  # type: ignore[method-assign]
        # Commands run in order: once this one is confirmed, the others have run.
        watcher.subscribe("marker").close()
        assert admin.pubsub_numsub(store.channel(key))[0][1] == 1
        with tracked.start(key, store=store, min_interval=0):
            pass
        changed, _ = again[0].wait(10)
        assert changed
        again[0].close()
    finally:

        async def cancel_the_others() -> None:  # the reader, say: no task left pending
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_the_others(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()
        admin.close()
        store.close()


def test_asgi_streams_of_a_store_made_from_a_client_follow_it_on_the_loop(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    store = tracked.RedisStore(client)
    try:
        with serve("asgi", store) as port, tracked.start(
            "from-client", store=store, min_interval=0
        ) as progress:
            _wait_stored(store, "from-client", 0)
            stream = Stream(port, f"{PREFIX}/from-client")
            assert stream.event() is not None
            assert "from-client" in _watch.followed(store)
            assert not _watch.watcher(store).keys()  # no thread reads for this loop
            progress.add_message("pushed")
            event = stream.event()
            while event is not None and not event["data"]["messages"]:
                event = stream.event()
            assert event is not None and event["data"]["messages"] == ["pushed"]
            stream.close()
    finally:
        client.close()


def test_asgi_streams_of_a_client_store_use_its_password_and_database(redis_url):
    # The asyncio client reading events must connect as the store's client does:
    # same server, credentials and database (dropping them fails the subscription
    # on a server with a password, and streams fall back to rechecks).
    import redis

    admin = redis.Redis.from_url(redis_url)
    port_number = admin.connection_pool.connection_kwargs["port"]
    admin.config_set("requirepass", "s3cret")
    client = redis.Redis(host="127.0.0.1", port=port_number, db=3, password="s3cret")
    store = tracked.RedisStore(client)
    twin = store.async_client()
    try:
        options = twin.connection_pool.connection_kwargs
        assert (options["db"], options["password"]) == (3, "s3cret")
        with serve("asgi", store) as port, tracked.start(
            "guarded", store=store, min_interval=0
        ) as progress:
            _wait_stored(store, "guarded", 0)
            stream = Stream(port, f"{PREFIX}/guarded")
            assert stream.event() is not None
            assert admin.pubsub_numsub(store.channel("guarded"))[0][1] == 1
            progress.add_message("to db 3")
            event = stream.event()
            while event is not None and not event["data"]["messages"]:
                event = stream.event()
            assert event is not None and event["data"]["messages"] == ["to db 3"]
            stream.close()
    finally:
        admin.config_set("requirepass", "")
        admin.close()
        client.close()


def test_a_cluster_store_has_no_asyncio_client_so_its_events_are_read_on_a_thread(
    redis_cluster_url,
):
    store = tracked.open_store(redis_cluster_url)
    try:
        assert store.async_client() is None  # type: ignore[attr-defined]
    finally:
        store.close()


# ----------------------------------------------------------------------------- cancel, show_errors


def _request(port: int, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """One plain request (a DELETE, say): its status and JSON body."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_a_delete_ends_an_open_stream_with_the_cancelled_state(adapter, store):
    with serve(adapter, store, cancel=True) as port:
        stream = None
        try:
            with pytest.raises(tracked.Cancelled), tracked.start(
                "job", store=store, min_interval=0.02
            ) as p:
                p.increment(1, "working")
                _wait_stored(store, "job", 1)
                stream = Stream(port, f"{PREFIX}/job")
                first = stream.event()
                assert first is not None and first["data"]["state"] == "running"
                status, body = _request(port, "DELETE", f"{PREFIX}/job")
                assert status == 202, body
                assert body["in_progress"] is True
                deadline = time.monotonic() + 10
                while not p.cancel_requested:
                    assert time.monotonic() < deadline, "the run never saw the DELETE"
                    time.sleep(0.005)
                p.check()
            events = _read_to_end(stream)
        finally:
            if stream is not None:
                stream.close()
        assert events[-1]["event"] == "end"
        final = events[-2]["data"]
        assert (final["state"], final["in_progress"], final["error"]) == ("cancelled", False, None)
        assert all(e["data"]["state"] == "running" for e in events[:-2])


def test_events_hide_the_error_text_when_show_errors_is_false(adapter, store):
    with serve(adapter, store, show_errors=False) as port:
        stream = None
        try:
            with pytest.raises(RuntimeError), tracked.start(
                "job", store=store, min_interval=0
            ) as p:
                p.increment(1, "working")
                _wait_stored(store, "job", 1)
                stream = Stream(port, f"{PREFIX}/job")
                first = stream.event()
                assert first is not None and first["data"]["error"] is None
                raise RuntimeError("password=hunter2")
            followed = _read_to_end(stream)
        finally:
            if stream is not None:
                stream.close()
        # A stream opened on the ended record gets the failed state at once, hidden too.
        opened_after = _read_to_end(Stream(port, f"{PREFIX}/job"))
        status, answer = _request(port, "GET", f"{PREFIX}/job")
    assert status == 200 and answer["error"] == "failed"
    for events in (followed, opened_after):
        assert events[-1]["event"] == "end"
        final = events[-2]["data"]
        assert (final["state"], final["error"]) == ("failed", "failed")
        assert "hunter2" not in json.dumps(events)
    assert tracked.load("job", store=store).error == "RuntimeError: password=hunter2"
