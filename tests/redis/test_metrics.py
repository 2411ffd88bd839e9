"""The metrics the alert rules need move when what they count happens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from apply_layer import keys as K
from apply_layer.embedded_redis import EmbeddedRedis
from apply_layer.gate import GateConfig, PermitGate
from apply_layer.service import ApplyService
from tests.harness import grant, settings_for


def sample(name: str, **labels: str) -> float:
    """The exported value now (0 for a series not created yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_gate_decisions_are_counted_once_by_symbol_status_and_reason(redis: Redis) -> None:
    gate = PermitGate(redis, GateConfig(wait_ms=60, step_ms=10))
    allow = {"symbol": "ETHUSDT", "status": "ALLOW", "reason": "none"}
    late = {"symbol": "ETHUSDT", "status": "TIMEOUT", "reason": "missing_p33"}
    before = (
        sample("apply_gate_decisions_total", **allow),
        sample("apply_gate_decisions_total", **late),
    )
    await grant(redis, "m-ok", symbol="ETHUSDT")
    assert (await gate.wait_and_consume("m-ok", "ETHUSDT")).allowed
    await grant(redis, "m-late", symbol="ETHUSDT", p33=False)
    assert (await gate.wait_and_consume("m-late", "ETHUSDT")).reason == "missing_p33"
    replay = await gate.wait_and_consume("m-late", "ETHUSDT")  # a resend: not counted again
    assert not replay.owner
    after = (
        sample("apply_gate_decisions_total", **allow),
        sample("apply_gate_decisions_total", **late),
    )
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def _running(
    server: EmbeddedRedis, redis: Redis, body: Callable[[], Awaitable[None]], **settings: Any
) -> None:
    service = ApplyService(settings_for(server, **settings))
    runner = asyncio.create_task(service.run())
    try:
        await until(lambda: service._group_ready)
        await body()
    finally:
        service.request_stop()
        assert await runner == 0


async def test_service_gauges_redis_up_deadline_and_keyspace(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    from apply_layer import metrics

    metrics.REDIS_UP.set(0)  # as a fresh process starts: the service must raise it

    async def polling() -> None:
        await until(lambda: sample("apply_redis_up") == 1)
        assert sample("apply_permit_wait_deadline_seconds") == 0.75
        await until(lambda: sample("apply_keyspace_notifications_active", configured="detect") == 0)

    # The test server publishes no keyspace events: "detect" finds them off.
    await _running(redis_server, redis, polling, permit_wait_ms=750)

    async def notified() -> None:
        await until(lambda: sample("apply_keyspace_notifications_active", configured="enable") == 1)

    await _running(redis_server, redis, notified, keyspace_events="enable")


async def test_pending_entries_and_the_oldest_ones_age(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    """Another consumer read an entry two minutes old and never acknowledged it."""

    old_ms = int(time.time() * 1000) - 120_000
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    await redis.xadd(K.PLAN_STREAM, {"plan_id": "ghost"}, id=f"{old_ms}-0")
    await redis.xreadgroup("apply_layer", "crashed", {K.PLAN_STREAM: ">"}, count=1)

    async def body() -> None:
        await until(lambda: sample("apply_pending_entries") == 1)
        assert 115 < sample("apply_pending_oldest_age_seconds") < 300
        await redis.xack(K.PLAN_STREAM, "apply_layer", f"{old_ms}-0")
        await until(lambda: sample("apply_pending_entries") == 0)
        assert sample("apply_pending_oldest_age_seconds") == 0

    await _running(redis_server, redis, body)
