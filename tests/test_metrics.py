"""The metrics the alert rules need move when what they count happens."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.daemon.service import ApplyService
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.gate import GateConfig, PermitGate
from tests.harness import grant, sample, settings_for, until


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


async def test_keyspace_events_turned_off_on_a_running_server_are_noticed(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    """Issue 23: CONFIG SET notify-keyspace-events "" left the gauge at 1 for minutes."""
    await redis.config_set("notify-keyspace-events", "K$h")
    gauge = {"configured": "detect"}

    async def body() -> None:
        await until(lambda: sample("apply_keyspace_notifications_active", **gauge) == 1)
        started = time.monotonic()
        await redis.config_set("notify-keyspace-events", "")
        await until(lambda: sample("apply_keyspace_notifications_active", **gauge) == 0)
        assert time.monotonic() - started < 2.5  # within a tick or two (poll_sec 0.5)
        await redis.config_set("notify-keyspace-events", "K$h")
        await until(lambda: sample("apply_keyspace_notifications_active", **gauge) == 1)

    await _running(redis_server, redis, body)


async def test_keyspace_events_off_at_start_are_used_once_they_appear(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    gauge = {"configured": "detect"}

    async def body() -> None:
        await until(lambda: sample("apply_keyspace_notifications_active", **gauge) == 0)
        await asyncio.sleep(1.0)  # two ticks: still off
        assert sample("apply_keyspace_notifications_active", **gauge) == 0
        await redis.config_set("notify-keyspace-events", "K$h")
        await until(lambda: sample("apply_keyspace_notifications_active", **gauge) == 1)

    await _running(redis_server, redis, body)


async def test_enable_mode_turns_keyspace_events_back_on(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    async def body() -> None:
        await until(lambda: sample("apply_keyspace_notifications_active", configured="enable") == 1)
        await redis.config_set("notify-keyspace-events", "")

        async def flags() -> str:
            return str((await redis.config_get("notify-keyspace-events"))["notify-keyspace-events"])

        deadline = time.monotonic() + 5
        while "K" not in await flags():
            assert time.monotonic() < deadline, "not turned on again"
            await asyncio.sleep(0.05)
        assert {"K", "$", "h"} <= set(await flags())

    await _running(redis_server, redis, body, keyspace_events="enable")


async def _tick(redis_server: EmbeddedRedis, redis: Redis, **settings: Any) -> None:
    """One housekeeping tick of a consumer with no room (it claims nothing)."""
    from apply_layer.daemon.housekeeping import Housekeeping
    from apply_layer.store.keyspace import KeyspaceWatcher

    watcher = KeyspaceWatcher(redis, [], "off")
    chores = Housekeeping(
        settings_for(redis_server, **settings),
        redis,
        watcher,
        in_flight=(),
        room=lambda: 0,
        spawn=lambda entry: None,
    )
    await chores.run_if_due()


async def test_the_stream_lag_is_the_backlog_not_yet_read(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    ids = [await redis.xadd(K.PLAN_STREAM, {"plan_id": f"lag-{n}"}) for n in range(7)]
    await redis.xreadgroup("apply_layer", "c", {K.PLAN_STREAM: ">"}, count=2)
    await _tick(redis_server, redis)
    assert sample("apply_stream_lag_entries") == 5
    assert sample("apply_pending_entries") == 2
    # An entry deleted past the group's position: Redis can no longer tell the lag
    # (XINFO GROUPS says nil) and the undelivered entries are counted instead.
    await redis.xdel(K.PLAN_STREAM, ids[4])
    groups: Any = await redis.xinfo_groups(K.PLAN_STREAM)
    assert groups[0]["lag"] is None
    await _tick(redis_server, redis)
    assert sample("apply_stream_lag_entries") == 4


async def test_the_kill_switch_gauge_follows_the_key_and_the_setting(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    await redis.set("quantum:kill", "On")
    await _tick(redis_server, redis)
    assert sample("apply_kill_switch_on") == 1
    await redis.delete("quantum:kill")
    await redis.hset("quantum:global:kill_switch", "x", "1")  # not a string: off, as in Lua
    await _tick(redis_server, redis)
    assert sample("apply_kill_switch_on") == 0
    await _tick(redis_server, redis, kill_switch=True)
    assert sample("apply_kill_switch_on") == 1


async def test_the_backlog_is_unknown_while_redis_is_down(
    own_redis_server: EmbeddedRedis,
) -> None:
    """Issue 23: apply_pending_entries stayed at its last value through an outage."""
    from apply_layer.store.connection import create_redis

    client = create_redis(own_redis_server.url, name="tests")
    service = ApplyService(settings_for(own_redis_server, poll_sec=0.2))
    runner = asyncio.create_task(service.run())
    try:
        await until(lambda: service._group_ready)
        await client.xadd(K.PLAN_STREAM, {"plan_id": "x"}, id="1-0")  # not a plan: acked
        await until(lambda: sample("apply_stream_lag_entries") == 0)
        await until(lambda: sample("apply_redis_up") == 1)
        own_redis_server.stop(kill=True)
        await until(lambda: sample("apply_redis_up") == 0, timeout=15)
        for name in ("apply_pending_entries", "apply_stream_lag_entries", "apply_kill_switch_on"):
            assert math.isnan(sample(name)), name
        own_redis_server.start()
        await until(lambda: sample("apply_redis_up") == 1, timeout=30)
        await until(lambda: not math.isnan(sample("apply_pending_entries")), timeout=10)
    finally:
        service.request_stop()
        assert await runner == 0
        await client.aclose()
