"""Results the daemon published are written again after Redis lost them, never twice."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.store.journal import Journal
from apply_layer.store.republish import Published, RecentResults
from tests.harness import results

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


def item(plan_id: str, at: float) -> Published:
    return Published(plan_id, "BTCUSDT", "executed", (("plan_id", plan_id),), True, "", at)


def test_recent_results_are_bounded_in_count_and_age() -> None:
    recent = RecentResults(max_items=3, max_age_sec=60)
    now = time.monotonic()
    for n in range(5):
        recent.add(item(f"p{n}", now))
    assert [i.plan_id for i in recent.current()] == ["p2", "p3", "p4"]
    recent.add(item("p2", now))  # published again: moves to the newest end
    assert [i.plan_id for i in recent.current()] == ["p3", "p4", "p2"]
    old = RecentResults(max_age_sec=60)
    old.add(item("stale", now - 61))
    old.add(item("fresh", now))
    assert [i.plan_id for i in old.current()] == ["fresh"] and len(old) == 1


async def test_a_lost_result_comes_back_once(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600, recent=RecentResults())
    fields = {"plan_id": "rp", "symbol": "BTCUSDT", "status": "EXECUTED", "error": ""}
    await journal.results.publish("rp", "BTCUSDT", "executed", fields, cooldown=True)
    await journal.results.publish(
        "kept", "BTCUSDT", "blocked", {"plan_id": "kept", "status": "BLOCKED"}
    )
    assert await journal.results.republish_recent() == 0  # nothing lost: nothing written
    # Redis loses the first plan's result and journal (a failover, a restore) ...
    await redis.delete(K.journal("rp"))
    await redis.xtrim(K.RESULT_STREAM, maxlen=0)
    await redis.xadd(K.RESULT_STREAM, {"plan_id": "kept", "status": "BLOCKED"})
    assert await journal.results.republish_recent() == 1  # ... and gets it back, unchanged
    assert await journal.results.republish_recent() == 0
    by_plan = [r["plan_id"] for r in await results(redis)]
    assert sorted(by_plan) == ["kept", "rp"]
    back = next(r for r in await results(redis) if r["plan_id"] == "rp")
    assert back == fields
    assert (await redis.hgetall(K.journal("rp")))["state"] == "executed"
