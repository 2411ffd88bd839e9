"""Shared fixtures: a real redis-server per session, a clean database per test.

Hypothesis profiles (``HYPOTHESIS_PROFILE``): ``ci`` (the default) runs the
fuzz tests (tests/core/test_parsers_fuzz.py) at 200 examples each; ``nightly`` at 10,000
each (``scripts/fuzz.py``, docs/TESTING.md). Tests that set their own
``max_examples`` keep it in both.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis

from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import PORT_RANGE_ENV, EmbeddedRedis
from apply_layer.store.connection import create_redis

PORTS_PER_WORKER = 500
PORT_LOCKS = Path(tempfile.gettempdir()) / "apply-layer-test-ports"
_held: list[int] = []  # the claimed range's lock: held until this process exits


def _claim_ports() -> str:
    """This test process's own port range, below the kernel's ephemeral ports.

    The ranges are :data:`PORTS_PER_WORKER` ports each, counted down from the
    first ephemeral port. A process takes the first one no other process
    holds, from its pytest-xdist worker's own (``gw0`` the top one, ``gw1`` the
    next...), by an exclusive lock on a file named after it, which the kernel
    releases when the process exits, however it exits. So no two processes'
    servers share a port: neither two workers of a run nor two runs sharing
    the machine. A range per worker number alone gave every run's ``gw0`` the
    same 500 ports, and a port one run had just found free could be another
    run's server by the time its own started. Below the ephemeral ports, no
    outgoing connection takes a port whose server a test has stopped to
    restart it.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral = int(f.read().split()[0])
    except OSError:
        ephemeral = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    slots = (ephemeral - 1024) // PORTS_PER_WORKER  # never the privileged ports
    PORT_LOCKS.mkdir(exist_ok=True)
    for step in range(slots):
        slot = (index + step) % slots
        fd = os.open(PORT_LOCKS / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held.append(fd)
        last = ephemeral - 1 - slot * PORTS_PER_WORKER
        return f"{last - PORTS_PER_WORKER + 1}-{last}"
    raise RuntimeError(f"every one of the {slots} test port ranges is held ({PORT_LOCKS})")


# Each process its own: xdist workers import this module again and claim theirs.
os.environ[PORT_RANGE_ENV] = _claim_ports()

FUZZ_EXAMPLES = {"ci": 200, "nightly": 10_000}
# No wall-clock limits: Hypothesis' deadline (200 ms an example) and its
# too_slow health check (generating the first examples) are timed tests. On
# the shared 2-core machine a property that holds
# (tests/core/test_marker_stats.py's test_any_mix_of_lines_adds_up: up to 60
# composite lines an example) failed three runs under load with a Hypothesis
# error and passed when rerun, its logic deterministic. Speed is measured in
# bench/, not asserted by a test.
settings.register_profile(
    "ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "nightly",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real server for the session (notifications off, like a default install)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def own_redis_server() -> Iterator[EmbeddedRedis]:
    """A server of the test's own, to stop, kill and restart at will."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = create_redis(redis_server.url, name="tests")
    await client.flushall()
    await client.config_set("notify-keyspace-events", "")
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def _logging() -> None:
    setup_logging("DEBUG", "console")


# ``scripts/test.sh --fast`` runs the tests marked ``unit``: no server, no
# process, seconds in all. Every test of the pure core is one; elsewhere a
# module says so itself (``pytestmark = pytest.mark.unit``).
CORE_TESTS = os.path.join(os.path.dirname(__file__), "core") + os.sep


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(CORE_TESTS):
            item.add_marker(pytest.mark.unit)
