"""The symbol lease: one holder, released with the result, refusing finished plans and kills.

Tests by name: store/results.py (the publish that releases the lease).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.errors import AlreadyFinal, KillSwitchOn, LeaseBusy, RetryLater
from apply_layer.store.journal import Journal
from apply_layer.store.lease import (
    ACQUIRE_SCRIPT,
    RELEASE_SCRIPT,
    RENEW_SCRIPT,
    Lease,
    SymbolLeases,
)

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


def leases(redis: Redis, owner: str = "me", kill: bool = False) -> SymbolLeases:
    return SymbolLeases(redis, lease_ms=1000, owner=owner, kill_switch=kill)


async def test_one_holder_at_a_time_and_release_on_exit(redis: Redis) -> None:
    mine, theirs = leases(redis), leases(redis, "other")
    async with mine.hold("BTCUSDT", "p1", wait_sec=1, new_order=True) as lease:
        assert await redis.get(K.symbol_lease("BTCUSDT")) == lease.token
        with pytest.raises(LeaseBusy):
            async with theirs.hold("BTCUSDT", "p2", wait_sec=0.05, new_order=True):
                pass
        async with theirs.hold("ETHUSDT", "p3", wait_sec=0.05, new_order=True):
            pass  # other symbols are free
    assert await redis.exists(K.symbol_lease("BTCUSDT")) == 0


async def test_a_long_hold_is_renewed(redis: Redis) -> None:
    async with leases(redis).hold("BTCUSDT", "p1", wait_sec=1, new_order=True) as lease:
        await asyncio.sleep(1.5)  # past the 1000 ms lease: the renewer kept it
        assert await redis.get(K.symbol_lease("BTCUSDT")) == lease.token


async def test_refuses_a_finished_plan(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=60, journal_ttl_sec=60)
    await journal.claim("done", "BTCUSDT", "1-0")
    await journal.results.publish("done", "BTCUSDT", "skipped", {"status": "SKIPPED"})
    with pytest.raises(AlreadyFinal):
        async with leases(redis).hold("BTCUSDT", "done", wait_sec=1, new_order=True):
            pass
    assert await redis.exists(K.symbol_lease("BTCUSDT")) == 0


async def test_a_finished_plan_a_late_gate_wrote_over_gets_its_state_back(redis: Redis) -> None:
    """A copy redelivered after Redis lost writes can pass its gate (state 'permitted')
    while its result is written again; the lease then refuses it, and the journal's
    state says what the result says again, as the publish script would make it."""
    journal = Journal(redis, dedupe_ttl_sec=60, journal_ttl_sec=60)
    await journal.claim("again", "BTCUSDT", "1-0")
    await journal.results.publish("again", "BTCUSDT", "executed", {"status": "EXECUTED"})
    await redis.hset(K.journal("again"), "state", "permitted")  # the late gate's write
    with pytest.raises(AlreadyFinal):
        async with leases(redis).hold("BTCUSDT", "again", wait_sec=1, new_order=True):
            pass
    assert await redis.hget(K.journal("again"), "state") == "executed"


@pytest.mark.parametrize("source", ["env", "quantum:kill", "quantum:global:kill_switch"])
async def test_the_kill_switch_stops_new_orders_not_lookups(redis: Redis, source: str) -> None:
    if source != "env":
        await redis.set(source, "ON")
    with pytest.raises(KillSwitchOn):
        async with leases(redis, kill=source == "env").hold(
            "BTCUSDT", "p1", wait_sec=1, new_order=True
        ):
            pass
    async with leases(redis, kill=source == "env").hold(
        "BTCUSDT", "p1", wait_sec=1, new_order=False
    ) as lease:
        assert lease.token  # an order that may be out must still be looked up


async def test_publish_releases_the_lease_and_acks_in_one_step(redis: Redis) -> None:
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    entry = await redis.xadd(K.PLAN_STREAM, {"plan_id": "p1"})
    await redis.xreadgroup("apply_layer", "c", {K.PLAN_STREAM: ">"})
    journal = Journal(redis, dedupe_ttl_sec=60, journal_ttl_sec=60)
    await journal.claim("p1", "BTCUSDT", str(entry))
    async with leases(redis).hold("BTCUSDT", "p1", wait_sec=1, new_order=True) as lease:
        reply = await journal.results.publish(
            "p1", "BTCUSDT", "executed", {"status": "EXECUTED"}, entry_id=str(entry), lease=lease
        )
        assert reply.lease_released and not lease.released  # a fact; the holder records it
        assert await redis.exists(K.symbol_lease("BTCUSDT")) == 0
        assert (await redis.xpending(K.PLAN_STREAM, "apply_layer"))["pending"] == 0


async def test_a_resent_acquisition_is_answered_ok_not_busy(redis: Redis) -> None:
    # redis-py resends a script whose reply was lost; the lease it took is ours.
    acquire = redis.register_script(ACQUIRE_SCRIPT)
    keys = [K.symbol_lease("BTCUSDT"), K.journal("p1"), *K.KILL_SWITCH_KEYS]
    assert await acquire(keys=keys, args=["me:1", 1000, 0, 1]) == "OK"
    assert await acquire(keys=keys, args=["me:1", 1000, 0, 1]) == "OK"
    assert await acquire(keys=keys, args=["other:1", 1000, 0, 1]) == "BUSY"


async def test_only_the_holder_renews_or_releases(redis: Redis) -> None:
    key = K.symbol_lease("BTCUSDT")
    release, renew = redis.register_script(RELEASE_SCRIPT), redis.register_script(RENEW_SCRIPT)
    await redis.set(key, "other:1", px=1000)
    assert await renew(keys=[key], args=["me:1", 60_000]) == 0
    assert await release(keys=[key], args=["me:1"]) == 0
    assert await redis.get(key) == "other:1" and await redis.pttl(key) <= 1000
    assert await renew(keys=[key], args=["other:1", 60_000]) == 1
    assert await redis.pttl(key) > 1000
    assert await release(keys=[key], args=["other:1"]) == 1
    assert await redis.exists(key) == 0


async def test_a_lease_taken_over_fences_the_old_holder_and_is_left_to_the_new(
    redis: Redis,
) -> None:
    # Ours expired while we were paused, and another instance took the symbol:
    # the journal's scripts (composed with lease.lua) must neither record our
    # send nor release their lease with our result.
    journal = Journal(redis, dedupe_ttl_sec=60, journal_ttl_sec=60)
    await journal.claim("p1", "BTCUSDT", "1-0")
    await redis.hset(K.journal("p1"), "state", "permitted")
    ours = Lease(K.symbol_lease("BTCUSDT"), "me:1")
    await redis.set(ours.key, "other:1", px=60_000)
    log = journal.order_log("p1", "coid-p1", symbol="BTCUSDT", lease_token=ours.token)
    with pytest.raises(RetryLater, match="FENCED"):
        await log.record_attempt(1, quantity=Decimal(1), side="SELL")
    assert await log.attempts() == []
    await redis.set(ours.key, ours.token, px=60_000)  # the holder's token passes
    await log.record_attempt(7, quantity=Decimal(1), side="SELL")
    assert await log.attempts() == [7]
    await redis.set(ours.key, "other:2", px=60_000)
    await journal.results.publish("p1", "BTCUSDT", "failed", {"status": "FAILED"}, lease=ours)
    assert await redis.get(ours.key) == "other:2"
