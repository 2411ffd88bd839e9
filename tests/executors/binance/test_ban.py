"""After a 418 (IP ban) or a 429, nothing reaches the exchange until the end it gave.

Issue 23: under a 418 the daemon sent 304 more requests in 40 s, and Binance
lengthens the ban of an IP that keeps sending. The fake exchange bans like
Binance (every request answered 418 with ``Retry-After`` and "IP banned until
<ms>"), over real HTTP, and records every request it receives: the assertions
count what actually arrived. POLICY waits out at most 5 s
(``max_retry_after_sec``); a longer ban ends the steps at once, FAILED
``exchange_unavailable`` (nothing was sent, so nothing is unknown).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from apply_layer.core.errors import RateLimited
from apply_layer.executors.binance.ban import ExchangeBan, ban_end_ms
from tests.executors.binance.executor_helpers import POLICY, Make, request
from tests.fake_binance import ORDER, FakeBinance
from tests.harness import MemoryLog

PLANS = 8  # per burst: the fake's listen backlog is 5, more would time out connecting


def _blocked_until(status: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "apply_exchange_blocked_until_timestamp_seconds", {"http_status": status}
        )
        or 0.0
    )


async def test_an_ip_ban_stops_every_request_of_every_symbol_until_its_end(
    make: Make, fake: FakeBinance, caplog: pytest.LogCaptureFixture
) -> None:
    fake.positions["ETHUSDT"] = Decimal("0.50")
    ex = make()
    await ex.start()
    ban_seconds = POLICY.max_retry_after_sec + 1.5  # longer than a step may wait
    end_ms = fake.ban(ban_seconds)
    banned_at = fake.now_ms()
    plans = [request(f"ban-{n}", symbol=("BTCUSDT", "ETHUSDT")[n % 2]) for n in range(PLANS)]
    started = time.monotonic()
    results = await asyncio.gather(*(ex.execute(plan, MemoryLog()) for plan in plans))
    took = time.monotonic() - started
    # Requests already on their way when the first 418 came back cannot be called
    # back: at most one per plan (its first lookup), and no retry of any of them.
    onset = fake.requests_between(banned_at, end_ms)
    assert 1 <= len(onset) <= len(plans), onset
    assert len({s.params.get("origClientOrderId") for s in onset}) == len(onset)
    assert {(r.status, r.error) for r in results} == {("FAILED", "exchange_unavailable")}
    assert took < 2.0, took  # ended at once, not after waiting the ban out
    # Once the ban is known, more plans of both symbols send nothing at all.
    more = [request(f"ban2-{n}", symbol=("BTCUSDT", "ETHUSDT")[n % 2]) for n in range(PLANS)]
    results = await asyncio.gather(*(ex.execute(plan, MemoryLog()) for plan in more))
    assert {(r.status, r.error) for r in results} == {("FAILED", "exchange_unavailable")}
    assert len(fake.requests_between(banned_at, end_ms)) == len(onset)
    assert fake.orders == []
    # The ban's end, in the metric and the log (Retry-After rounds up to a second).
    assert abs(_blocked_until("418") - end_ms / 1000) <= 1.5
    paused = [r for r in caplog.records if r.getMessage() == "binance_requests_paused"]
    assert len(paused) == 1, paused  # one line per ban, not one per refused request
    assert getattr(paused[0], "http_status", None) == 418
    assert str(getattr(paused[0], "until", "")).startswith("20")  # an ISO time, UTC
    # A plan arriving with 3 s of the ban left waits it out (within the policy's
    # 5 s), sends nothing before its end, then executes.
    await asyncio.sleep(max(0.0, (end_ms - fake.now_ms()) / 1000 - 3.0))
    result = await ex.execute(request("after-ban"), MemoryLog())
    assert result.executed, result
    assert len(fake.requests_between(banned_at, end_ms)) == len(onset)
    assert fake.order_count(request("after-ban").client_order_id) == 1
    assert fake.orders[0]["updateTime"] >= end_ms


async def test_a_short_429_back_off_is_waited_out_by_every_symbol_at_once(
    make: Make, fake: FakeBinance
) -> None:
    fake.positions["ETHUSDT"] = Decimal("0.50")
    ex = make()
    await ex.start()
    end_ms = fake.ban(1.5, status=429)
    start_ms = fake.now_ms()
    plans = [request("bo-btc"), request("bo-eth", symbol="ETHUSDT", safe="0.50", reported="0.50")]
    results = await asyncio.gather(*(ex.execute(plan, MemoryLog()) for plan in plans))
    assert all(r.executed for r in results), results
    # The two plans waited: the back-off met at most their first lookups (on their
    # way together), no retry, nothing else.
    during = fake.requests_between(start_ms, end_ms)
    assert 1 <= len(during) <= 2, during
    assert len({s.params.get("origClientOrderId") for s in during}) == len(during)
    assert _blocked_until("429") >= end_ms / 1000 - 1.5
    assert len(fake.orders) == 2


async def test_the_ban_end_in_the_message_counts_without_retry_after(
    make: Make, fake: FakeBinance
) -> None:
    ex = make()
    await ex.start()
    end_ms = fake.ban(2.0, retry_after=False)
    with pytest.raises(RateLimited) as info:
        await ex.client.query_order("BTCUSDT", "x")
    # Not the 120 s default for a 418 without Retry-After: the message's end.
    assert info.value.retry_after_sec is not None
    assert 1.0 < info.value.retry_after_sec <= 2.5
    assert abs(_blocked_until("418") - end_ms / 1000) < 0.5
    assert len(fake.requests("GET", ORDER)) == 1
    with pytest.raises(RateLimited, match="not sent"):
        await ex.client.query_order("BTCUSDT", "x")
    assert len(fake.requests("GET", ORDER)) == 1


def test_the_pause_is_the_longest_end_told() -> None:
    now = [100.0]
    ban = ExchangeBan(clock=lambda: now[0])
    assert ban.record(429, 2.0, "", 0) == 2.0
    assert ban.record(429, None, "", 0) == 1.0  # no header: 1 s, not shorter than told
    assert ban.remaining() == 2.0
    assert ban.record(418, None, "", 0) == 120.0  # a 418 without an end: Binance's shortest ban
    with pytest.raises(RateLimited) as info:
        ban.refuse()
    assert info.value.http_status == 418 and info.value.retry_after_sec == 120.0
    now[0] += 120.0
    ban.refuse()  # over: no exception
    assert ban_end_ms("Way too many requests; IP(1.2.3.4) banned until 1659146400000.") == (
        1659146400000
    )
    assert ban_end_ms("Too many requests") is None
