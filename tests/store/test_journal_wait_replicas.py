"""APPLY_REDIS_WAIT_REPLICAS: a send record must reach N replicas before the order leaves.

A real primary and replica (``REPLICAOF``); the journal's order log and the
testnet executor against the fake Binance.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.errors import NotReplicated
from apply_layer.executors.base import OrderRequest
from apply_layer.executors.binance.executor import BinanceExecutor
from apply_layer.executors.paper import PaperExecutor
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from apply_layer.store.journal import WAIT_TIMEOUT_MS, Journal, JournalOrderLog
from tests.fake_binance import API_KEY, API_SECRET, ORDER, FakeBinance
from tests.harness import PrimaryAndReplica

TOKEN = "holder:token"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[EmbeddedRedis, EmbeddedRedis, Redis]]:
    async with PrimaryAndReplica() as (primary, replica):
        client = create_redis(primary.url, name="tests")
        try:
            yield primary, replica, client
        finally:
            await client.aclose()


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance() as exchange:
        exchange.positions["BTCUSDT"] = Decimal("0.010")
        yield exchange


async def order_log(client: Redis, plan_id: str, wait: int) -> JournalOrderLog:
    """A plan past the gate, its symbol's lease held: what the executor gets."""
    await client.hset(K.journal(plan_id), mapping={"state": "permitted", "plan_id": plan_id})
    await client.set(K.symbol_lease("BTCUSDT"), TOKEN, px=60_000)
    journal = Journal(client, dedupe_ttl_sec=300, journal_ttl_sec=3600, wait_replicas=wait)
    return journal.order_log(plan_id, f"alF-{plan_id}", symbol="BTCUSDT", lease_token=TOKEN)


async def test_a_record_reaches_the_replica_before_the_call_returns(
    pair: tuple[EmbeddedRedis, EmbeddedRedis, Redis],
) -> None:
    _, replica, client = pair
    log = await order_log(client, "w1", wait=1)
    await log.record_attempt(123, quantity=Decimal("0.01"), side="SELL")
    assert await log.attempts() == [123]
    on_replica = Redis(port=replica.port, decode_responses=True)
    try:  # WAIT returned: the replica has it, read right away
        assert await on_replica.hget(K.journal("w1"), "order.attempts") == "123"
    finally:
        await on_replica.aclose()


async def test_the_fence_still_refuses_with_wait_on(
    pair: tuple[EmbeddedRedis, EmbeddedRedis, Redis],
) -> None:
    _, _, client = pair
    log = await order_log(client, "w2", wait=1)
    await client.set(K.symbol_lease("BTCUSDT"), "someone-else")
    with pytest.raises(Exception, match="FENCED"):
        await log.record_attempt(1, quantity=Decimal("0.01"), side="SELL")
    assert await log.attempts() == []


@pytest.mark.parametrize("cause", ["replica-down", "asks-for-two"])
async def test_without_enough_replicas_nothing_is_sent(
    pair: tuple[EmbeddedRedis, EmbeddedRedis, Redis], fake: FakeBinance, cause: str
) -> None:
    _, replica, client = pair
    wait = 2 if cause == "asks-for-two" else 1
    if cause == "replica-down":
        replica.stop(kill=True)
    log = await order_log(client, "w3", wait=wait)
    started = time.monotonic()
    with pytest.raises(NotReplicated, match=f"of {wait} replica"):
        await log.record_attempt(1, quantity=Decimal("0.01"), side="SELL")
    assert time.monotonic() - started >= WAIT_TIMEOUT_MS / 1000 - 0.05  # it waited
    executor = BinanceExecutor(
        base_url=fake.url, api_key=SecretStr(API_KEY), api_secret=SecretStr(API_SECRET)
    )
    await executor.start()
    try:
        order = OrderRequest("w3", "BTCUSDT", "CLOSE_FULL", Decimal(100), Decimal("0.01"), None)
        result = await executor.execute(order, log)
    finally:
        await executor.close()
    assert (result.status, result.error) == ("FAILED", "journal_not_replicated")
    assert "nothing was sent" in result.message
    assert fake.requests("POST", ORDER) == [] and fake.orders == []


async def test_paper_mode_sends_nothing_either(
    pair: tuple[EmbeddedRedis, EmbeddedRedis, Redis],
) -> None:
    _, replica, client = pair
    replica.stop(kill=True)
    log = await order_log(client, "w4", wait=1)
    exchange = PaperExecutor()
    order = OrderRequest("w4", "BTCUSDT", "CLOSE_FULL", Decimal(100), Decimal("0.01"), Decimal(1))
    result = await exchange.execute(order, log)
    assert (result.status, result.error) == ("FAILED", "journal_not_replicated")
    assert exchange.orders == {}  # no simulated fill
    # Untouched: nothing simulated (the book keeps no position it did not trade).
    assert exchange.positions.get("BTCUSDT", Decimal(1)) == Decimal(1)
