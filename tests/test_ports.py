"""``free_port()``, what keeps parallel (xdist) workers' servers apart: each worker
takes ports from its own block, below the kernel's ephemeral range."""

from __future__ import annotations

import socket

from tests.conftest import PORT_BASE, PORT_BLOCK, PORT_BLOCKS, free_port, worker_index


def ephemeral_range() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as numbers:
        low, high = map(int, numbers.read().split())
    return range(low, high + 1)


def test_free_ports_come_from_this_workers_block_and_repeat_only_after_it() -> None:
    first = PORT_BASE + (worker_index() % PORT_BLOCKS) * PORT_BLOCK
    ports = [free_port() for _ in range(100)]
    assert all(first <= port < first + PORT_BLOCK for port in ports), ports
    assert len(set(ports)) == 100  # no port handed out twice within the block
    with socket.socket() as sock:  # and it is free
        sock.bind(("127.0.0.1", ports[-1]))


def test_every_block_and_its_cluster_bus_ports_lie_below_the_ephemeral_range() -> None:
    last = PORT_BASE + PORT_BLOCKS * PORT_BLOCK - 1
    assert PORT_BASE > 10080  # the last port browsers refuse (ERR_UNSAFE_PORT)
    assert last + 10000 < ephemeral_range().start
