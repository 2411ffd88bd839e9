"""Redis health alone: an outage is one ``redis_unavailable`` and one
``redis_recovered`` line however many calls fail, every failure is counted, and
the intake loop's pause doubles up to MAX_BACKOFF_SEC and starts over once a
read succeeds. The same through a daemon and a real outage: tests/daemon/test_chaos.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from apply_layer import metrics
from apply_layer.daemon.redis_health import FIRST_BACKOFF_SEC, MAX_BACKOFF_SEC, RedisHealth

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


@pytest.fixture(autouse=True)
def gauges_restored() -> Iterator[None]:
    """The process's gauges as they were: other tests in this worker read them."""
    gauges = (
        metrics.REDIS_UP,
        metrics.PENDING,
        metrics.PENDING_OLDEST,
        metrics.STREAM_LAG,
        metrics.KILL_SWITCH_ON,
    )
    before = [g._value.get() for g in gauges]
    yield
    for gauge, value in zip(gauges, before, strict=True):
        gauge.set(value)


def sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


async def test_an_outage_is_one_line_each_way_and_every_failure_counts() -> None:
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    health = RedisHealth("paper", pause)
    errors_before = sample("apply_redis_errors_total")
    with capture_logs() as logs:
        for _ in range(3):
            health.failed(RedisConnectionError())
        assert not health.up and sample("apply_redis_up") == 0
        assert math.isnan(sample("apply_pending_entries"))  # unknown during the outage
        health.ok()
        health.ok()
    assert sample("apply_redis_errors_total") - errors_before == 3
    assert health.up and sample("apply_redis_up") == 1
    assert [(e["event"], e.get("error")) for e in logs] == [
        ("redis_unavailable", "ConnectionError"),  # no message: the type names it
        ("redis_recovered", None),
    ]


async def test_the_pause_doubles_up_to_the_cap_and_starts_over_after_a_good_read() -> None:
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    health = RedisHealth("paper", pause)
    for _ in range(7):
        await health.pause_after_failure()
    health.ok()
    await health.pause_after_failure()
    assert pauses == [0.2, 0.4, 0.8, 1.6, 3.2, MAX_BACKOFF_SEC, MAX_BACKOFF_SEC, 0.2]
    assert FIRST_BACKOFF_SEC == 0.2
