"""The daemon in testnet mode against the fake Binance, crashes included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis
from tests.fake_binance import API_KEY, API_SECRET, ORDER, FakeBinance, slow
from tests.harness import (
    Daemon,
    FakeBinanceDaemons,
    all_acked,
    grant,
    pending_count,
    publish_plan,
    results,
    until,
    wait_result,
)

COID = "al75-{}"


@pytest.fixture
def testnet(
    redis_server: EmbeddedRedis, tmp_path: Path, fake: FakeBinance
) -> Iterator[Callable[[str], Daemon]]:
    daemons = FakeBinanceDaemons(
        redis_server.url,
        tmp_path,
        fake.url,
        binance_recv_window_ms=1000,
        lease_ms=3000,  # a killed holder's lease must expire before the restart may send
    )
    yield daemons
    daemons.stop()


async def test_testnet_happy_path(
    redis: Redis, fake: FakeBinance, testnet: Callable[[str], Daemon]
) -> None:
    daemon = await testnet("t1").start().ready(redis)
    await grant(redis, "live", safe_qty=0.01, position=0.012)
    await publish_plan(redis, "live")
    result = await wait_result(redis, "live")
    assert (result["status"], result["mode"], result["executed"]) == ("EXECUTED", "testnet", "True")
    (step,) = json.loads(result["steps_results"])
    assert step["client_order_id"] == COID.format("live")
    assert (step["side"], step["quantity"], step["executed_qty"]) == ("SELL", "0.009", "0.009")
    assert step["order_id"] == str(fake.orders[0]["orderId"])
    assert fake.order_count(COID.format("live")) == 1
    assert fake.positions["BTCUSDT"] == Decimal("0.003")
    assert API_SECRET not in daemon.log() and API_KEY not in daemon.log()


@pytest.mark.parametrize("placed", [True, False], ids=["order-placed", "order-lost"])
async def test_kill_9_between_send_and_response(
    redis: Redis, fake: FakeBinance, testnet: Callable[[str], Daemon], placed: bool
) -> None:
    """The process dies with the order's fate unknown; the restart finds out, never doubles."""
    coid = COID.format("k9")
    first = await testnet("same").start().ready(redis)
    fake.inject("POST", ORDER, slow(30.0, place=placed))  # the answer never comes in time
    await grant(redis, "k9")
    await publish_plan(redis, "k9")
    await until(lambda: fake.requests("POST", ORDER))
    if placed:
        await until(lambda: fake.order_count(coid) == 1)
    first.kill()
    journal = await redis.hgetall(K.journal("k9"))
    assert journal["state"] == "submitting" and journal["order.attempts"]
    assert await pending_count(redis) == 1

    await testnet("same").start().ready(redis)
    result = await wait_result(redis, "k9", timeout=30)
    assert result["status"] == "EXECUTED"
    assert fake.order_count(coid) == 1  # found (placed) or sent again only once provably dead
    assert fake.positions["BTCUSDT"] == Decimal("0.003")
    assert [r["plan_id"] for r in await results(redis)].count("k9") == 1
    assert (await redis.hgetall(K.journal("k9")))["state"] == "executed"
    await until(lambda: all_acked(redis))  # the ack follows the result


@pytest.mark.parametrize("kept", [True, False], ids=["identity-kept", "no-state-dir"])
async def test_a_restart_against_an_unchanged_redis_sends_without_waiting(
    redis: Redis,
    fake: FakeBinance,
    testnet: Callable[[str], Daemon],
    tmp_path: Path,
    kept: bool,
) -> None:
    """A plan published while the daemon was down: with the Redis identity kept in the
    state directory, its lookup's "no such order" counts at once (one lookup, then the
    order); without it, not before the new start's recvWindow (+ 1 s) has passed."""
    state = {"state_dir": tmp_path / "state"} if kept else {}
    (tmp_path / "state").mkdir()
    first = await testnet("rs", **state).start().ready(redis)
    # A send the first run's predecessor made, lost with the Redis it was on, could still
    # execute until recvWindow + 1 s after the first run met this Redis: wait that out.
    await asyncio.sleep((1000 + 1000 + 300) / 1000)
    first.stop()
    await grant(redis, "rs1", safe_qty=0.01, position=0.012)
    await publish_plan(redis, "rs1")
    second = await testnet("rs", **state).start().ready(redis)
    result = await wait_result(redis, "rs1")
    assert result["status"] == "EXECUTED" and fake.order_count(COID.format("rs1")) == 1
    lookups = len(fake.requests("GET", ORDER))
    if kept:
        assert "redis_identity_unchanged" in second.log() and lookups == 1
    else:
        assert "redis_identity_unchanged" not in second.log() and lookups > 1
