"""Reads made ahead of the lease (during the permit wait), and the races they open.

The lookup and the position read start when a plan is claimed; under the
lease they are used only if nothing overtook them. Each race has its test,
on a real Redis (the journal, the lease, the attempt script) and the fake
exchange over HTTP: another instance records an attempt after the lookup;
another order goes out on the symbol after the position read; the Redis
changes during the wait. In every one, no order is sent twice and none is
sized against a position that moved.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.errors import AttemptsChanged, PositionMoved, StatusUnknown
from apply_layer.executors.base import SendWatch
from apply_layer.executors.binance.client import KEEPALIVE_SEC
from apply_layer.executors.binance.executor import BinanceExecutor
from apply_layer.executors.binance.readahead import ReadAhead
from apply_layer.settings import Settings
from apply_layer.store.identity import IdentityTracker
from apply_layer.store.journal import Journal, JournalOrderLog
from apply_layer.store.lease import Lease, SymbolLeases
from tests.executors.binance.executor_helpers import posts, request
from tests.fake_binance import ORDER, FakeBinance, dropped

POSITION_RISK = "/fapi/v3/positionRisk"
SYMBOL = "BTCUSDT"


def _journal(redis: Redis, identity: IdentityTracker | None = None) -> Journal:
    return Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600, identity=identity)


async def _permitted(redis: Redis, *plans: str) -> None:
    for plan in plans:
        await redis.hset(K.journal(plan), mapping={"state": "permitted"})


@contextlib.asynccontextmanager
async def _instance(redis: Redis, owner: str, plan: str) -> AsyncIterator[Lease]:
    """The symbol's lease, held by ``owner`` (an instance of the daemon) for ``plan``."""
    leases = SymbolLeases(redis, lease_ms=5000, owner=owner, kill_switch=False)
    async with leases.hold(SYMBOL, plan, wait_sec=1, new_order=True) as lease:
        yield lease


async def _other_sends(
    redis: Redis, journal: Journal, fake: FakeBinance, plan: str, cid: str, qty: str
) -> None:
    """Another instance: lease, journalled attempt, the order at the exchange."""
    async with _instance(redis, "other", plan) as lease:
        log = journal.order_log(plan, cid, symbol=SYMBOL, lease_token=lease.token)
        await log.attempts()
        await log.record_attempt(int(time.time() * 1000), quantity=Decimal(qty), side="SELL")
        fake.add_order(SYMBOL, "SELL", qty, cid)


def _ahead(ex: BinanceExecutor, plan: str, symbol: str, cid: str, watch: SendWatch) -> ReadAhead:
    ahead = ex.prepare(plan, symbol, cid, watch)
    assert ahead is not None
    return ahead


def _requests(fake: FakeBinance) -> list[tuple[str, str]]:
    with fake.lock:
        return [(s.method, s.path) for s in fake.seen]


async def test_in_steady_state_only_the_order_leaves_after_the_permits(
    redis: Redis, ex: BinanceExecutor, fake: FakeBinance
) -> None:
    journal, order = _journal(redis), request()
    await _permitted(redis, "p1")
    ahead = _ahead(ex, "p1", SYMBOL, order.client_order_id, journal.symbol_watch(SYMBOL))
    found, read = await ahead.lookup(0), await ahead.position(0)
    assert found is not None and found.gone
    assert read is not None and read.amount == Decimal("0.010")
    before = len(_requests(fake))  # the permits arrive here
    async with _instance(redis, "us", "p1") as lease:
        log = journal.order_log("p1", order.client_order_id, symbol=SYMBOL, lease_token=lease.token)
        result = await ex.execute(order, log, prepared=ahead)
    assert result.executed and result.quantity == Decimal("0.010")
    assert _requests(fake)[before:] == [("POST", ORDER)]
    assert await redis.get(K.last_send(SYMBOL)) == f"{K.journal('p1')}@{(await log.attempts())[0]}"


async def test_an_attempt_another_instance_recorded_after_the_lookup_is_found_not_doubled(
    redis: Redis, ex: BinanceExecutor, fake: FakeBinance
) -> None:
    journal, order = _journal(redis), request()
    cid = order.client_order_id
    await _permitted(redis, "p1")
    ahead = _ahead(ex, "p1", SYMBOL, cid, journal.symbol_watch(SYMBOL))
    found = await ahead.lookup(0)
    assert found is not None and found.gone  # nothing there yet
    # While this plan waits for its lease, another instance sends its order and dies.
    await _other_sends(redis, journal, fake, "p1", cid, "0.010")
    async with _instance(redis, "us", "p1") as lease:
        log = journal.order_log("p1", cid, symbol=SYMBOL, lease_token=lease.token)
        result = await ex.execute(order, log, prepared=ahead)
    assert result.executed and fake.order_count(cid) == 1 and posts(fake) == 0


async def test_the_attempt_script_refuses_a_record_after_attempts_it_did_not_see(
    redis: Redis, ex: BinanceExecutor, fake: FakeBinance
) -> None:
    """The compare-and-set itself: an attempt recorded between this caller's read of the
    attempts and its own record (a second holder the fence cannot tell apart) makes the
    record fail, nothing written; the executor reads again and finds that order."""
    journal, order = _journal(redis), request()
    cid = order.client_order_id
    await _permitted(redis, "p1")

    async with _instance(redis, "us", "p1") as lease:

        class Overtaken(JournalOrderLog):
            async def record_attempt(
                self,
                sent_at_ms: int,
                *,
                quantity: Decimal,
                side: str,
                position_mark: str | None = None,
            ) -> None:
                if not fake.orders:  # the other holder records and sends first
                    twin = journal.order_log("p1", cid, symbol=SYMBOL, lease_token=lease.token)
                    await twin.attempts()
                    await twin.record_attempt(1, quantity=Decimal("0.010"), side="SELL")
                    fake.add_order(SYMBOL, "SELL", "0.010", cid)
                await super().record_attempt(
                    sent_at_ms, quantity=quantity, side=side, position_mark=position_mark
                )

        direct = journal.order_log("p1", cid, symbol=SYMBOL, lease_token=lease.token)
        assert await direct.attempts() == []
        await journal.order_log("p1", cid, symbol=SYMBOL, lease_token=lease.token).record_attempt(
            1, quantity=Decimal("0.010"), side="SELL"
        )
        with pytest.raises(AttemptsChanged):
            await direct.record_attempt(2, quantity=Decimal("0.010"), side="SELL")
        assert await direct.attempts() == [1]  # the refused record wrote nothing

        await redis.hdel(K.journal("p1"), "order.attempts")
        log = Overtaken(journal, "p1", cid, SYMBOL, lease.token)
        result = await ex.execute(order, log)
    assert result.executed and fake.order_count(cid) == 1 and posts(fake) == 0


async def test_an_order_on_the_symbol_after_the_position_read_makes_it_read_again(
    redis: Redis, ex: BinanceExecutor, fake: FakeBinance
) -> None:
    journal, order = _journal(redis), request()
    await _permitted(redis, "p1", "q1")
    ahead = _ahead(ex, "p1", SYMBOL, order.client_order_id, journal.symbol_watch(SYMBOL))
    read = await ahead.position(0)
    assert read is not None and read.amount == Decimal("0.010")
    # Another plan on the symbol closes 0.006 of it (another instance) during the wait.
    await _other_sends(redis, journal, fake, "q1", "alF-q1", "0.006")
    async with _instance(redis, "us", "p1") as lease:
        log = journal.order_log("p1", order.client_order_id, symbol=SYMBOL, lease_token=lease.token)
        with pytest.raises(PositionMoved):  # what the executor meets, and reads again after
            await journal.order_log(
                "p1", order.client_order_id, symbol=SYMBOL, lease_token=lease.token
            ).record_attempt(1, quantity=Decimal("0.010"), side="SELL", position_mark=read.mark)
        result = await ex.execute(order, log, prepared=ahead)
    # Sized against 0.004 (sized against the stale 0.010, Binance would refuse it: -2022).
    assert result.executed and result.quantity == Decimal("0.004"), result
    assert len(fake.requests("GET", POSITION_RISK)) == 2 and posts(fake) == 1
    assert fake.positions[SYMBOL] == 0


async def test_a_position_read_while_another_holds_the_lease_is_not_used(
    redis: Redis, ex: BinanceExecutor, fake: FakeBinance
) -> None:
    """An order may be in flight while the lease is held: that read may miss it."""
    journal, order = _journal(redis), request()
    await _permitted(redis, "p1", "q1")
    async with _instance(redis, "other", "q1"):
        ahead = _ahead(ex, "p1", SYMBOL, order.client_order_id, journal.symbol_watch(SYMBOL))
        assert await ahead.position(0) is None
        fake.add_order(SYMBOL, "SELL", "0.006", "alF-q1")  # its order, in flight during the read
    async with _instance(redis, "us", "p1") as lease:
        log = journal.order_log("p1", order.client_order_id, symbol=SYMBOL, lease_token=lease.token)
        result = await ex.execute(order, log, prepared=ahead)
    assert result.executed and result.quantity == Decimal("0.004"), result


async def test_a_redis_change_during_the_wait_looks_again_and_adopts_a_lost_send(
    redis: Redis, ex: BinanceExecutor, fake: FakeBinance
) -> None:
    identity = IdentityTracker()
    journal, order = _journal(redis, identity), request()
    cid = order.client_order_id
    await _permitted(redis, "p1")
    ahead = _ahead(ex, "p1", SYMBOL, cid, journal.symbol_watch(SYMBOL))
    found = await ahead.lookup(0)
    assert found is not None and found.gone and await ahead.position(0) is not None
    # The Redis changes while the plan waits (it lost an earlier run's record), and that
    # run's send reaches the exchange.
    identity.changed_at_ms = int(time.time() * 1000)
    fake.add_order(SYMBOL, "SELL", "0.010", cid)
    async with _instance(redis, "us", "p1") as lease:
        log = journal.order_log("p1", cid, symbol=SYMBOL, lease_token=lease.token)
        result = await ex.execute(order, log, prepared=ahead)
    assert result.executed and result.adopted and posts(fake) == 0


async def test_a_redis_change_during_the_wait_reads_everything_again_before_sending(
    redis: Redis, ex: BinanceExecutor, fake: FakeBinance
) -> None:
    identity = IdentityTracker()
    journal, order = _journal(redis, identity), request()
    await _permitted(redis, "p1")
    ahead = _ahead(ex, "p1", SYMBOL, order.client_order_id, journal.symbol_watch(SYMBOL))
    assert await ahead.lookup(0) is not None and await ahead.position(0) is not None
    changed = identity.changed_at_ms = int(time.time() * 1000)
    async with _instance(redis, "us", "p1") as lease:
        log = journal.order_log("p1", order.client_order_id, symbol=SYMBOL, lease_token=lease.token)
        result = await ex.execute(order, log, prepared=ahead)
    assert result.executed and posts(fake) == 1
    assert len(fake.requests("GET", POSITION_RISK)) == 2
    # "No such order" was believed only from a lookup begun once a send stamped at the
    # change could no longer execute.
    window = ex.lookup.window_closes_at(changed)
    lookups = [s.at_ms for s in fake.requests("GET", ORDER)]
    assert len(lookups) >= 2 and max(lookups) >= window - 5
    assert fake.requests("POST", ORDER)[0].at_ms >= window - 5


# ---- the connection ---------------------------------------------------------------


def test_idle_connections_are_kept_as_configured() -> None:
    settings = Settings(mode="testnet", binance_keepalive_sec=42)
    executor = BinanceExecutor.from_settings(settings, api_key=None, api_secret=None)
    assert executor.client._limits.keepalive_expiry == 42
    assert Settings().binance_keepalive_sec == KEEPALIVE_SEC == 150  # not httpx's 5 s


async def test_a_read_on_a_connection_the_server_dropped_is_asked_once_more(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("GET", POSITION_RISK, dropped(place=False))
    assert await ex.position(SYMBOL) == Decimal("0.010")
    assert len(fake.requests("GET", POSITION_RISK)) == 2
    fake.inject("GET", POSITION_RISK, dropped(place=False), dropped(place=False))
    with pytest.raises(StatusUnknown):  # twice: no answer, as before
        await ex.position(SYMBOL)


async def test_reads_ahead_for_plans_that_were_not_sent_are_bounded(
    redis: Redis, make: Callable[..., BinanceExecutor], fake: FakeBinance
) -> None:
    """Blocked plans spent what was read ahead for them: past a bound a minute, plans
    read after their permits, as before, and still execute. Plans that are sent do
    not count (their reads were needed anyway)."""
    ex = make(wasted_per_min=2)
    await ex.start()
    journal = _journal(redis)
    watch = journal.symbol_watch(SYMBOL)
    await _permitted(redis, "p1", "p2")
    used = _ahead(ex, "p1", SYMBOL, request("p1").client_order_id, watch)
    async with _instance(redis, "us", "p1") as lease:
        log = journal.order_log("p1", "alF-p1", symbol=SYMBOL, lease_token=lease.token)
        assert (await ex.execute(request("p1"), log, prepared=used)).executed
    used.cancel()  # as processing does once the result is out: not a waste
    for plan in ("a", "b"):  # two plans blocked after their reads
        _ahead(ex, plan, SYMBOL, f"alF-{plan}", watch).cancel()
    assert ex.prepare("p2", SYMBOL, request("p2").client_order_id, watch) is None
    async with _instance(redis, "us", "p2") as lease:
        log = journal.order_log("p2", "alF-p2", symbol=SYMBOL, lease_token=lease.token)
        fake.positions[SYMBOL] = Decimal("0.010")
        assert (await ex.execute(request("p2"), log)).executed
