"""The test servers' ports: each pytest-xdist worker allocates from its own range."""

from __future__ import annotations

import os
import socket

import pytest

from apply_layer.core.errors import RedisUnavailable
from apply_layer.ops import embedded_redis
from apply_layer.ops.embedded_redis import PORT_RANGE_ENV, EmbeddedRedis, free_port


def test_this_worker_allocates_below_the_ephemeral_ports() -> None:
    first, last = map(int, os.environ[PORT_RANGE_ENV].split("-"))
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
    assert last < ephemeral and last - first + 1 == 500
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw"))
    assert last == ephemeral - 1 - 500 * index  # gw0 the top range, gw1 the next...
    assert first <= free_port() <= last


def test_a_range_skips_busy_ports_walks_on_and_says_when_it_is_exhausted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = EmbeddedRedis()  # a port from this worker's range, listening
    with server:
        busy = server.port
        monkeypatch.setenv(PORT_RANGE_ENV, f"{busy}-{busy + 2}")
        monkeypatch.setattr(embedded_redis, "_next_in_range", {})
        got = [free_port() for _ in range(4)]
        assert busy not in got
        assert set(got) <= {busy + 1, busy + 2}
        assert got[0] != got[1]  # walks on: a second server gets a second port
        monkeypatch.setenv(PORT_RANGE_ENV, f"{busy}-{busy}")
        with pytest.raises(RedisUnavailable, match=f"no free port left in {PORT_RANGE_ENV}"):
            free_port()


def test_without_a_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PORT_RANGE_ENV)
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # it was free
