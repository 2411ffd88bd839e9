"""Recovery and scale-out: takeover of a dead instance's plans, one execution per symbol.

Tests by name: daemon/order_path.py resuming a plan from its journal.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.daemon.service import ApplyService
from apply_layer.ops.embedded_redis import EmbeddedRedis
from tests.harness import (
    Daemon,
    SlowExecutor,
    grant,
    pending_count,
    publish_plan,
    results,
    settings_for,
    wait_result,
)


async def test_a_dead_instances_plan_is_taken_over(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path
) -> None:
    victim = Daemon(redis_server.url, tmp_path, "victim", permit_wait_ms=20000)
    survivor = Daemon(redis_server.url, tmp_path, "survivor", claim_idle_sec=1, permit_wait_ms=3000)
    try:
        await victim.start().ready(redis)
        await publish_plan(redis, "orphan")
        for _ in range(300):
            if (await redis.hget(K.journal("orphan"), "state")) == "received":
                break
            await asyncio.sleep(0.02)
        victim.kill()
        info = await redis.xpending_range(K.PLAN_STREAM, "apply_layer", "-", "+", 10)
        assert [p["consumer"] for p in info] == ["victim"]
        await grant(redis, "orphan")
        await survivor.start().ready(redis)
        result = await wait_result(redis, "orphan", timeout=20)
        assert result["status"] == "EXECUTED"
        assert "entry_claimed" in [r["message"] for r in survivor.records()]
        assert [r["plan_id"] for r in await results(redis)].count("orphan") == 1
        assert await pending_count(redis) == 0
    finally:
        victim.stop()
        survivor.stop()


async def test_two_instances_never_execute_one_symbol_at_once(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    executor = SlowExecutor()  # shared, so it sees both instances' orders
    services = [
        ApplyService(settings_for(redis_server, consumer_name=name), executor=executor)
        for name in ("one", "two")
    ]
    runners = [asyncio.create_task(s.run()) for s in services]
    try:
        for _ in range(100):
            if await redis.exists(K.PLAN_STREAM):
                break
            await asyncio.sleep(0.02)
        plans = [f"s{i}" for i in range(8)]
        for plan_id in plans:
            await grant(redis, plan_id)
            await publish_plan(redis, plan_id)
        for plan_id in plans:
            assert (await wait_result(redis, plan_id))["status"] == "EXECUTED"
    finally:
        for service in services:
            service.request_stop()
        assert await asyncio.gather(*runners) == [0, 0]
    assert executor.max_per_symbol["BTCUSDT"] == 1
    consumers = {s.settings.consumer_name: s.counts["published"] for s in services}
    assert sum(consumers.values()) == 8
    assert all(count > 0 for count in consumers.values()), consumers  # both took work
    assert await redis.exists(K.symbol_lease("BTCUSDT")) == 0  # released
