"""Flusher writes/s to Redis with 1,000 dirty handles: one ``save`` each vs one ``save_many``.

    .venv/bin/python bench/bench_redis_flush.py [--handles 1000] [--rounds 7] [--no-cluster]

Starts its own redis-server (no persistence) on a free port and, unless
``--no-cluster``, a 3-master Redis Cluster. ``--handles`` progresses are claimed,
each keeping 10 messages. A round gives every one a new snapshot (count + 1, one
new message, so every write sends only its delta, as the flusher's do) and writes
them all twice, in alternating order: with a ``save`` per handle (one EVALSHA
round trip each: what a flush of many handles cost before ``save_many``) and
with one ``save_many`` of the whole batch. Prints the median writes/s of each
and the median of the per-round ratios.

``--baseline REV`` also times, interleaved in the same rounds, a ``save`` per
handle through the RedisStore of git revision REV (its ``tracked/redis.py``
loaded beside the current package, on the single server only), and prints
``save_many`` over it: the before/after ratio measured in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_redis import start_redis

import tracked
from tracked._store import Owner

Writes = list[tuple[tracked.State, Owner]]


def main() -> int:
    args = parse_args()
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.handles} dirty handles, {args.rounds} rounds, {os.cpu_count()} CPUs, load {load}")
    baseline = load_baseline(args.baseline) if args.baseline else None
    header = f"{'redis':8} {'save x N /s':>12} {'save_many /s':>13} {'ratio':>6}"
    if baseline is not None:
        header += f"  {args.baseline[:10] + ' save x N /s':>22} {'save_many / it':>15}"
    print(header)
    with tempfile.TemporaryDirectory(prefix="tracked-bench-flush-") as directory:
        servers: list[subprocess.Popen[bytes]] = []
        try:
            server, url = start_redis(binary, Path(directory))
            servers.append(server)
            targets = {"single": url}
            if not args.no_cluster:
                nodes, cluster_url = start_cluster(binary, cli, Path(directory))
                servers.extend(nodes)
                targets["cluster"] = cluster_url
            for label, target in targets.items():
                old = baseline if label == "single" else None
                bus = bus_publishes(target) if label == "cluster" else []
                rates, ratios = bench(target, args, old)
                line = f"{label:8} {rates['save']:>12,.0f} {rates['save_many']:>13,.0f}"
                line += f" {ratios['save']:>5.1f}x"
                if old is not None:
                    line += f"  {rates['baseline']:>22,.0f} {ratios['baseline']:>14.1f}x"
                print(line)
                if bus:
                    relayed = [b - a for a, b in zip(bus, bus_publishes(target), strict=True)]
                    print(f"{'':8} pub/sub messages each master received over the cluster bus "
                          f"during these writes: {relayed}")
        finally:
            for process in servers:
                process.terminate()
            for process in servers:
                process.wait(timeout=10)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handles", type=int, default=1000, help="dirty handles per flush")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (>= 5)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the Redis Cluster")
    parser.add_argument("--baseline", metavar="REV", help="also time REV's RedisStore.save")
    return parser.parse_args()


def bench(
    url: str, args: argparse.Namespace, baseline: type[tracked.Store] | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Median writes/s of each way, and the median per-round ratio of ``save_many``
    over each other way."""
    stores: dict[str, tracked.Store] = {"save": tracked.open_store(url)}
    stores["save_many"] = stores["save"]
    if baseline is not None:
        stores["baseline"] = baseline(url, prefix="baseline:")  # type: ignore[call-arg]
    writes = {how: claim(store, args.handles, how) for how, store in stores.items()}
    rates: dict[str, list[float]] = {how: [] for how in stores}
    ratios: dict[str, list[float]] = {how: [] for how in stores if how != "save_many"}
    for round_ in range(args.rounds):
        order = list(stores) if round_ % 2 == 0 else list(reversed(stores))
        rate = {}
        for how in order:
            writes[how] = advance(writes[how])
            rate[how] = timed(functools.partial(write, stores[how], how, writes[how]), args.handles)
            rates[how].append(rate[how])
        for how in ratios:
            ratios[how].append(rate["save_many"] / rate[how])
    for how, store in stores.items():
        check(store, writes[how])
        store.close()
    return (
        {how: statistics.median(values) for how, values in rates.items()},
        {how: statistics.median(values) for how, values in ratios.items()},
    )


def load_baseline(revision: str) -> type[tracked.Store]:
    """The ``RedisStore`` class of ``tracked/redis.py`` at git ``revision``, loaded as
    ``tracked._redis_baseline`` (its relative imports use the current package)."""
    source = subprocess.run(
        ["git", "show", f"{revision}:tracked/redis.py"],
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("tracked._redis_baseline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{revision}:tracked/redis.py", "exec"), module.__dict__)
    return module.RedisStore  # type: ignore[no-any-return]


def claim(store: tracked.Store, handles: int, label: str) -> Writes:
    """Claim ``handles`` progresses named after ``label``, each with 10 kept messages."""
    writes = []
    now = time.time()
    for i in range(handles):
        owner = Owner.for_this_process()
        messages = tuple(f"step {j} of handle {i} done" for j in range(10))
        state = tracked.State(
            name=f"{label}-{i}",
            total=None,
            messages=messages,
            message_count=10,
            start_time=now,
            current_time=now,
        )
        store.claim(state, owner)
        writes.append((state, owner))
    return writes


def advance(writes: Writes) -> Writes:
    """The next snapshot of every handle: one more item and one more message."""
    later = []
    for state, owner in writes:
        count = state.count + 1
        messages = (*state.messages[1:], f"item {count} done")
        later.append(
            (
                dataclasses.replace(
                    state,
                    count=count,
                    messages=messages,
                    message_count=state.message_count + 1,
                    current_time=time.time(),
                ),
                owner,
            )
        )
    return later


def write(store: tracked.Store, how: str, writes: Writes) -> None:
    if how != "save_many":
        for state, owner in writes:
            store.save(state, owner)
    else:
        failed = [r for r in store.save_many(writes) if r is not None]
        assert not failed, failed[:3]


def timed(call: Callable[[], None], count: int) -> float:
    """``count`` divided by the seconds ``call`` takes."""
    began = time.perf_counter()
    call()
    return count / (time.perf_counter() - began)


def check(store: tracked.Store, writes: Writes) -> None:
    """The last snapshot of a few handles is what the store holds."""
    for state, _ in writes[:: max(1, len(writes) // 10)]:
        assert store.load(state.key) == state, state.key


def bus_publishes(cluster_url: str) -> list[int]:
    """Each master's ``cluster_stats_messages_publish_received``: the plain PUBLISH
    messages other masters relayed to it (sharded SPUBLISH ones never cross)."""
    import redis

    seed = redis.Redis.from_url(cluster_url.replace("redis+cluster://", "redis://"))
    ports = sorted(int(name.rpartition(":")[2].partition("@")[0])
                   for name, node in seed.cluster("nodes").items() if "master" in node["flags"])
    seed.close()
    counts = []
    for port in ports:
        node = redis.Redis(host="127.0.0.1", port=port)
        counts.append(int(node.cluster("info").get("cluster_stats_messages_publish_received", 0)))
        node.close()
    return counts


def start_cluster(
    binary: str, cli: str, directory: Path
) -> tuple[list[subprocess.Popen[bytes]], str]:
    """Three cluster-enabled redis-servers joined into one cluster; (processes, URL)."""
    ports = cluster_ports(3)
    nodes = []
    for port in ports:
        node_dir = directory / f"node-{port}"
        node_dir.mkdir()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(node_dir), "--cluster-enabled", "yes"]
        nodes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
    for port in ports:
        wait_for(port)
    create = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
    subprocess.run([*create, "--cluster-replicas", "0", "--cluster-yes"], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    wait_until_ok(ports)
    return nodes, f"redis+cluster://127.0.0.1:{ports[0]}"


def wait_until_ok(ports: list[int]) -> None:
    """Block until every node reports ``cluster_state:ok`` and knows every other."""
    import redis

    deadline = time.monotonic() + 30
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        while True:
            info = client.cluster("info")
            known = int(info.get("cluster_known_nodes", 0))
            if info.get("cluster_state") == "ok" and known == len(ports):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster on {ports} not ok: {info}")
            time.sleep(0.05)
        client.close()


def cluster_ports(count: int) -> list[int]:
    """Free ports below 55536 whose cluster bus port (+10000) is free too."""
    import socket

    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port > 55535 or {port, port + 10000, port - 10000} & set(ports):
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


def wait_for(port: int) -> None:
    import socket

    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
