"""The executor at the edges of its retry bounds, and against the real Redis journal.

Each bound of ``RetryPolicy`` is driven past its limit over real HTTP (the
fake exchange), and the executor's view of the journal is the service's own
``JournalOrderLog`` on a real redis-server, with its fence: a send that the
journal refuses never leaves.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.errors import RetryLater
from apply_layer.core.order_ids import CLIENT_ORDER_ID_MAX, client_order_id
from apply_layer.executors.base import OrderRequest
from apply_layer.executors.binance.ban import ExchangeBan
from apply_layer.executors.binance.executor import BinanceExecutor
from apply_layer.executors.binance.lookup import RetryPolicy
from apply_layer.store.journal import Journal
from tests.fake_binance import (
    API_KEY,
    API_SECRET,
    ORDER,
    FakeBinance,
    Fault,
    rate_limited,
    rejected,
    unknown_503,
)

POLICY = RetryPolicy(
    clock_margin_ms=50,
    lookup_backoff_sec=0.01,
    lookup_backoff_max_sec=0.02,
    max_lookup_errors=2,
    max_resend_cycles=1,
    max_rate_limit_waits=2,
    max_retry_after_sec=5.0,
    max_not_processed_retries=2,
)
BUSY = Fault(status=503, body={"code": -1008, "msg": "Service Unavailable."})
SKEWED = "Timestamp for this request is outside of the recvWindow."
BINANCE_CID = re.compile(r"[\.A-Z\:/a-z0-9_-]{1,36}")  # newClientOrderId, Binance's rule


class Sleeps:
    """Records the executor's waits instead of sleeping them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    def clock(self) -> float:
        """Monotonic time as if the waits had been slept: the client's ban (ban.py)
        sees a Retry-After waited out, as it would in real time."""
        return time.monotonic() + sum(self.waits)


def request(plan: str = "p1") -> OrderRequest:
    return OrderRequest(
        plan, "BTCUSDT", "CLOSE_FULL", Decimal(100), Decimal("0.010"), Decimal("0.010")
    )


@pytest.fixture
async def ex(fake: FakeBinance) -> AsyncIterator[BinanceExecutor]:
    executor = BinanceExecutor(
        base_url=fake.url,
        api_key=SecretStr(API_KEY),
        api_secret=SecretStr(API_SECRET),
        recv_window_ms=300,
        allowlist=("BTCUSDT",),
        http_timeout_sec=httpx.Timeout(1.0, read=0.3),
        policy=POLICY,
        sleep=Sleeps(),
    )
    sleeper = executor._sleep
    assert isinstance(sleeper, Sleeps)
    executor.client.ban = ExchangeBan(clock=sleeper.clock)
    await executor.start()
    yield executor
    await executor.close()


@pytest.fixture
async def journal(redis: Redis) -> Journal:
    return Journal(redis, dedupe_ttl_sec=60, journal_ttl_sec=600)


async def order_log(redis: Redis, journal: Journal, plan: str = "p1", token: str = "mine") -> Any:
    """The service's journal view of a permitted plan whose caller holds the lease."""
    await journal.claim(plan, "BTCUSDT", "1-0")
    await redis.hset(K.journal(plan), "state", "permitted")
    await redis.set(K.symbol_lease("BTCUSDT"), token)
    return journal.order_log(
        plan, request(plan).client_order_id, symbol="BTCUSDT", lease_token=token
    )


def sleeps(ex: BinanceExecutor) -> list[float]:
    sleeper = ex._sleep
    assert isinstance(sleeper, Sleeps)
    return sleeper.waits


# ---- rate limits -----------------------------------------------------------------------


async def test_repeated_429s_past_the_limit_fail_without_an_order(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    fake.inject("POST", ORDER, *[rate_limited(1) for _ in range(POLICY.max_rate_limit_waits + 1)])
    log = await order_log(redis, journal)
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "rate_limited:429")
    assert fake.orders == [] and sleeps(ex) == [1.0] * POLICY.max_rate_limit_waits
    # Every try was journalled before it left: 1 + the waits allowed.
    assert len(await log.attempts()) == POLICY.max_rate_limit_waits + 1


async def test_a_429_without_retry_after_waits_one_second_then_resends(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    no_header = rate_limited(1)
    no_header.headers = {}
    fake.inject("POST", ORDER, no_header)
    log = await order_log(redis, journal)
    result = await ex.execute(request(), log)
    assert result.executed and sleeps(ex) == [1.0]
    assert fake.order_count(request().client_order_id) == 1


async def test_a_retry_after_beyond_the_bound_fails_at_once(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    fake.inject("POST", ORDER, rate_limited(int(POLICY.max_retry_after_sec) + 1))
    result = await ex.execute(request(), await order_log(redis, journal))
    assert (result.status, result.error) == ("FAILED", "rate_limited:429")
    assert sleeps(ex) == [] and fake.orders == []


async def test_rate_limited_lookups_wait_retry_after_and_then_find_the_order(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    fake.inject("POST", ORDER, unknown_503(place=True))
    fake.inject("GET", ORDER, Fault(), rate_limited(2))  # the first: the look before sending
    result = await ex.execute(request(), await order_log(redis, journal))
    assert result.executed and 2.0 in sleeps(ex)
    assert fake.order_count(request().client_order_id) == 1 and len(fake.orders) == 1


async def test_rate_limited_lookups_past_the_bound_leave_the_fate_unknown(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    fake.inject("POST", ORDER, unknown_503(place=False))
    fake.inject(
        "GET", ORDER, Fault(), *[rate_limited(1) for _ in range(POLICY.max_lookup_errors + 1)]
    )
    log = await order_log(redis, journal)
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "order_unknown")
    assert len(fake.requests("POST", ORDER)) == 1 and len(await log.attempts()) == 1


# ---- not processed, clock, exchange reads ------------------------------------------------


async def test_running_out_of_not_processed_retries(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    fake.inject("POST", ORDER, *[BUSY for _ in range(POLICY.max_not_processed_retries + 1)])
    log = await order_log(redis, journal)
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "exchange_unavailable")
    assert fake.orders == []
    assert len(fake.requests("POST", ORDER)) == POLICY.max_not_processed_retries + 1
    assert len(await log.attempts()) == POLICY.max_not_processed_retries + 1


async def test_a_second_minus_1021_after_the_resync_is_a_rejection(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    fake.inject("POST", ORDER, rejected(-1021, SKEWED), rejected(-1021, SKEWED))
    syncs_before = ex.client.time_syncs
    result = await ex.execute(request(), await order_log(redis, journal))
    assert (result.status, result.error) == ("REJECTED", "exchange_rejected:-1021")
    assert ex.client.time_syncs == syncs_before + 1  # one resync, not a loop
    assert fake.orders == [] and len(fake.requests("POST", ORDER)) == 2


@pytest.mark.parametrize("path", ["/fapi/v3/positionRisk", "/fapi/v1/exchangeInfo"])
async def test_failing_exchange_reads_end_exchange_unavailable_and_send_nothing(
    fake: FakeBinance, redis: Redis, journal: Journal, path: str
) -> None:
    executor = BinanceExecutor(
        base_url=fake.url,
        api_key=SecretStr(API_KEY),
        api_secret=SecretStr(API_SECRET),
        allowlist=("BTCUSDT",),
        http_timeout_sec=httpx.Timeout(1.0, read=0.3),
        policy=POLICY,
        sleep=Sleeps(),
        exchange_info_ttl_sec=0.0,  # every execute reads exchangeInfo
    )
    try:
        if path.endswith("exchangeInfo"):  # no filters cached yet: nothing to fall back on
            fake.inject("GET", path, *[Fault(status=502, body={"code": -1000, "msg": "bad"})] * 3)
        else:
            await executor.start()
            fake.inject("GET", path, Fault(status=500, body={"code": -1000, "msg": "internal"}))
        log = await order_log(redis, journal)
        result = await executor.execute(request(), log)
        assert (result.status, result.error) == ("FAILED", "exchange_unavailable")
        assert await log.attempts() == [] and fake.requests("POST", ORDER) == []
    finally:
        await executor.close()


# ---- the real journal's fence ------------------------------------------------------------


async def test_a_send_the_journal_fences_never_leaves(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    log = await order_log(redis, journal)
    await redis.set(K.symbol_lease("BTCUSDT"), "another-instance")  # the lease moved on
    with pytest.raises(RetryLater, match="FENCED"):
        await ex.execute(request(), log)
    assert fake.requests("POST", ORDER) == [] and await log.attempts() == []


async def test_a_plan_no_longer_permitted_cannot_send(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    log = await order_log(redis, journal)
    await redis.hset(K.journal("p1"), "state", "blocked")
    with pytest.raises(RetryLater, match="not permitted"):
        await ex.execute(request(), log)
    assert fake.requests("POST", ORDER) == []


async def test_the_journal_records_each_send_before_it_leaves(
    ex: BinanceExecutor, fake: FakeBinance, redis: Redis, journal: Journal
) -> None:
    fake.inject("POST", ORDER, BUSY)
    log = await order_log(redis, journal)
    result = await ex.execute(request(), log)
    assert result.executed
    sent = [r.at_ms for r in fake.requests("POST", ORDER)]
    recorded = await log.attempts()
    assert len(recorded) == len(sent) == 2
    assert all(r <= s for r, s in zip(recorded, sent, strict=True))
    j = await redis.hgetall(K.journal("p1"))
    assert (j["state"], j["order.client_order_id"], j["order.quantity"], j["order.side"]) == (
        "submitting",
        request().client_order_id,
        "0.01",
        "SELL",
    )


# ---- the client order id -------------------------------------------------------------------

STEPS = ("CLOSE_FULL", "CLOSE_PARTIAL_75", "CLOSE_PARTIAL_50", "CLOSE_PARTIAL_25", "PARTIAL_75")


@pytest.mark.parametrize(
    ("plan", "step", "cid"),
    [
        ("67e6da21fa9fe506", "CLOSE_PARTIAL_75", "al75-67e6da21fa9fe506"),
        ("p1", "CLOSE_FULL", "alF-p1"),
        ("p1", "CLOSE_PARTIAL_50", "al50-p1"),
        ("p1", "CLOSE_PARTIAL_25", "al25-p1"),
        ("p1", "PARTIAL_25", "al25-p1"),
    ],
)
def test_readable_client_order_ids(plan: str, step: str, cid: str) -> None:
    assert client_order_id(plan, step) == cid


def test_a_long_plan_id_is_hashed_into_36_characters() -> None:
    long_id = "rot_1a2b3c4d_" + "X" * 40
    cid = client_order_id(long_id, "CLOSE_FULL")
    assert len(cid) <= CLIENT_ORDER_ID_MAX == 36 and BINANCE_CID.fullmatch(cid)
    assert long_id not in cid and cid == client_order_id(long_id, "CLOSE_FULL")
    assert cid != client_order_id(long_id + "Y", "CLOSE_FULL")


@given(
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
        min_size=1,
        max_size=64,
    ),
    st.sampled_from(STEPS),
)
def test_every_client_order_id_is_valid_for_binance(plan: str, step: str) -> None:
    cid = client_order_id(plan, step)
    assert BINANCE_CID.fullmatch(cid), cid
    assert cid == client_order_id(plan, step)  # deterministic: a resend reuses it


def test_the_readable_form_is_kept_up_to_exactly_36_characters() -> None:
    fits = "a" * 31  # "al75-" + 31 = 36
    assert client_order_id(fits, "CLOSE_PARTIAL_75") == "al75-" + fits
    too_long = "a" * 32  # 37 readable characters: hashed instead
    hashed = client_order_id(too_long, "CLOSE_PARTIAL_75")
    assert len(hashed) <= 36 and too_long not in hashed and hashed.startswith("al75")
