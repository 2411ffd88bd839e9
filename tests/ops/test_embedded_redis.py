"""The test servers' ports: each pytest-xdist worker allocates from its own range."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from apply_layer.core.errors import RedisUnavailable
from apply_layer.ops import embedded_redis
from apply_layer.ops.embedded_redis import PORT_RANGE_ENV, EmbeddedRedis, free_port


def test_this_process_allocates_below_the_ephemeral_ports() -> None:
    first, last = map(int, os.environ[PORT_RANGE_ENV].split("-"))
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
    assert first >= 1024 and last < ephemeral and last - first + 1 == 500
    assert (ephemeral - 1 - last) % 500 == 0  # one of the ranges counted down from there
    assert first <= free_port() <= last


def test_another_test_run_beside_this_one_gets_another_range() -> None:
    # Two runs sharing the machine (two worktrees) each took gw0's range by its
    # number, and a port one found free could be the other's server a moment
    # later. A second process claiming a range as tests/conftest.py does (same
    # worker name, same environment) gets one of its own while this one runs.
    code = f"import os, tests.conftest; print(os.environ[{PORT_RANGE_ENV!r}])"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    ).stdout.strip()
    first, last = map(int, other.split("-"))
    assert last - first + 1 == 500
    assert other != os.environ[PORT_RANGE_ENV]


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
