"""Two daemons, one Redis that loses its last writes at a chosen point: the last
result of a plan agrees with the exchange (issue 25; real processes only).

The interleaving the failover chaos run met about one run in four, made
deterministic. Daemon A reads a plan, consumes its permits and places its
order (filled), and publishes EXECUTED. Then A is paused (SIGSTOP) and Redis
loses every write since the plan was published (killed and brought back
from a snapshot, as a failover to a lagging replica would): the permits, the
claim, the journal, the result and the acknowledgement are gone, the plan
entry is unread again. Daemon B reads it, finds no permit and, before this
was fixed, published BLOCKED ``permit_timeout_or_missing:missing_all``; when
A woke up and wrote its remembered result again, the publish script refused
it because the plan was final. The exchange held a filled close; the only
result said BLOCKED.

The rules now: a plan that Redis may have lost writes about does not end
BLOCKED, REJECTED or SKIPPED before the exchange is asked (an order found is
adopted: EXECUTED, with its real fill), and a published result that turns
out wrong is followed by a correcting result entry (docs/CONTRACT.md 2).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis
from tests.fake_binance import ORDER, FakeBinance
from tests.harness import Daemon, FakeBinanceDaemons, Snapshots, grant, publish_plan, until

PLAN = "lw1"
CID = f"al75-{PLAN}"


@pytest.fixture
def testnet(
    own_redis_server: EmbeddedRedis, tmp_path: Path, fake: FakeBinance
) -> Iterator[FakeBinanceDaemons]:
    daemons = FakeBinanceDaemons(
        own_redis_server.url,
        tmp_path,
        fake.url,
        lease_ms=2000,
        claim_idle_sec=1,
        binance_recv_window_ms=500,
        binance_http_timeout_sec=5,
    )
    yield daemons
    for daemon in daemons.made:  # a daemon left paused by a failed assertion stops too
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.signal(signal.SIGCONT)
    daemons.stop()


async def plan_results(redis: Redis, plan_id: str = PLAN) -> list[dict[str, str]]:
    entries: list[tuple[str, dict[str, str]]] = await redis.xrange(K.RESULT_STREAM)  # type: ignore[assignment]
    return [dict(fields, _id=i) for i, fields in entries if fields.get("plan_id") == plan_id]


def lines(daemon: Daemon, message: str) -> list[dict[str, object]]:
    return [r for r in daemon.records() if r.get("message") == message]


async def executed_then_lost(
    client: Redis,
    fake: FakeBinance,
    testnet: FakeBinanceDaemons,
    tmp_path: Path,
    server: EmbeddedRedis,
) -> tuple[Daemon, Daemon, Snapshots]:
    """A executes the plan; B is up; A is paused and Redis loses everything since the
    plan was published. Returns (A, B) with A still paused."""
    snapshots = Snapshots(server, tmp_path)
    await client.xgroup_create(K.PLAN_STREAM, "apply_layer", id="0", mkstream=True)
    await publish_plan(client, PLAN)
    await snapshots.take(client)  # the plan, unread; no permit, claim or journal yet
    a = await testnet("a").start().ready(client)
    await grant(client, PLAN, safe_qty=0.01, position=0.012)
    await until(lambda: plan_results(client))
    (first,) = await plan_results(client)
    assert first["status"] == "EXECUTED", first
    assert fake.order_count(CID) == 1
    b = await testnet("b").start().ready(client)  # B knows the Redis that will be lost
    a.signal(signal.SIGSTOP)
    snapshots.restore()  # permits, claim, journal, result and ack: gone
    return a, b, snapshots


async def test_a_plan_redelivered_after_lost_writes_ends_with_the_exchange_truth(
    own_redis_server: EmbeddedRedis,
    client: Redis,
    fake: FakeBinance,
    testnet: FakeBinanceDaemons,
    tmp_path: Path,
) -> None:
    """B takes the redelivered plan: it asks the exchange before it may end BLOCKED,
    finds A's order and adopts it; A's result written again adds nothing."""
    a, b, _ = await executed_then_lost(client, fake, testnet, tmp_path, own_redis_server)
    await until(lambda: plan_results(client), timeout=30)  # B's decision
    a.signal(signal.SIGCONT)
    await until(lambda: lines(a, "results_republished"), timeout=30)
    await asyncio.sleep(1.0)  # time for a stray order or result, if one were coming
    results = await plan_results(client)
    assert fake.order_count(CID) == 1, b.log()
    assert len(fake.requests("POST", ORDER)) == 1  # B sent nothing
    last = results[-1]
    assert (last["status"], last["executed"]) == ("EXECUTED", "True"), results
    step = json.loads(last["steps_results"])[-1]
    order = fake.orders[0]
    assert step["order_id"] == str(order["orderId"])
    assert Decimal(last["filled_qty"]) == Decimal(str(order["executedQty"])) == Decimal("0.009")
    assert len(results) == 1, results  # B adopted it: nothing wrong was ever published
    assert last.get("adopted") == "True"
    journal = await client.hgetall(K.journal(PLAN))
    assert journal["state"] == "executed" and journal["result_id"] == last["_id"]
    assert fake.positions["BTCUSDT"] == Decimal("0.003")  # filled once


async def test_a_wrong_result_is_corrected_by_the_instance_that_placed_the_order(
    own_redis_server: EmbeddedRedis,
    client: Redis,
    fake: FakeBinance,
    testnet: FakeBinanceDaemons,
    tmp_path: Path,
) -> None:
    """What the lookup cannot see: the plan is gone with the lost writes, and the
    planner publishes it again later with a new timestamp to B, started after the
    loss, so nothing tells B that an order may exist; B publishes BLOCKED. When A wakes up and
    writes its remembered EXECUTED again, the truth is published: a correcting
    result entry, not a refusal."""
    snapshots = Snapshots(own_redis_server, tmp_path)
    await client.xgroup_create(K.PLAN_STREAM, "apply_layer", id="0", mkstream=True)
    await snapshots.take(client)  # before the plan: Redis will lose it whole
    a = await testnet("a").start().ready(client)
    await publish_plan(client, PLAN)
    await grant(client, PLAN, safe_qty=0.01, position=0.012)
    await until(lambda: plan_results(client))
    assert fake.order_count(CID) == 1
    a.signal(signal.SIGSTOP)
    snapshots.restore()
    # B starts after the loss, so it met only this Redis: a plan written later than
    # that (past exchange_truth.CLOCK_MARGIN_MS) cannot have an order it does not see.
    b = await testnet("b").start().ready(client)
    await asyncio.sleep(2.5)
    await publish_plan(client, PLAN)  # the planner's copy; its permits were lost
    await until(lambda: plan_results(client), timeout=30)
    (wrong,) = await plan_results(client)
    assert (wrong["status"], wrong["error"]) == (
        "BLOCKED",
        "permit_timeout_or_missing:missing_all",
    ), wrong
    a.signal(signal.SIGCONT)
    await until(lambda: lines(a, "result_corrected"), timeout=30)
    await asyncio.sleep(1.0)
    results = await plan_results(client)
    assert len(results) == 2, results
    last = results[-1]
    assert (last["status"], last["executed"], last["decision"]) == ("EXECUTED", "True", "EXECUTE")
    assert (last["corrects"], last["corrected_status"], last["corrected_error"]) == (
        wrong["_id"],
        "BLOCKED",
        "permit_timeout_or_missing:missing_all",
    )
    step = json.loads(last["steps_results"])[-1]
    assert step["order_id"] == str(fake.orders[0]["orderId"])
    assert fake.order_count(CID) == 1 and len(fake.requests("POST", ORDER)) == 1
    journal = await client.hgetall(K.journal(PLAN))
    assert journal["state"] == "executed" and journal["result_id"] == last["_id"]
    assert journal["corrected_result_id"] == wrong["_id"]
    assert await client.get(K.cooldown("BTCUSDT")) is not None
    # Another copy of the plan now meets it decided, as EXECUTED.
    await publish_plan(client, PLAN)
    message = f"duplicate plan={PLAN} first_status=EXECUTED"
    await until(lambda: lines(a, message) or lines(b, message), timeout=30)
    assert len(await plan_results(client)) == 2
