"""Faults on the send: at most once on the exchange, and an honest result.

Every fault test asserts three things: what the exchange really holds (the
order exists at most once), what the StepResult says, and what the journal
(an in-memory OrderLog) recorded. The counters of unknown fates, failed
lookups, rate limits and rejections are checked here too.

Tests by name: executors/binance/send.py and executors/binance/outcome.py.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from apply_layer.executors.binance.executor import BinanceExecutor
from tests.executors.binance.executor_helpers import (
    MARGIN,
    POLICY,
    RECV_WINDOW,
    Make,
    lookups_after_send,
    posts,
    request,
)
from tests.fake_binance import (
    ORDER,
    FakeBinance,
    Fault,
    dropped,
    late,
    rate_limited,
    rejected,
    slow,
    timeout_1007,
    unknown_503,
)
from tests.harness import MemoryLog

# -- faults: at most once on the exchange, and an honest result -------------


@pytest.mark.parametrize(
    ("fault", "placed"),
    [
        pytest.param(slow(0.6, place=True), True, id="slow-placed"),
        pytest.param(slow(0.6, place=False), False, id="slow-not-placed"),
        pytest.param(dropped(place=True), True, id="dropped-placed"),
        pytest.param(dropped(place=False), False, id="dropped-not-placed"),
        pytest.param(unknown_503(place=True), True, id="503-unknown-placed"),
        pytest.param(unknown_503(place=False), False, id="503-unknown-not-placed"),
        pytest.param(timeout_1007(place=True), True, id="1007-placed"),
        pytest.param(timeout_1007(place=False), False, id="1007-not-placed"),
        pytest.param(
            Fault(place=True, status=500, body={"code": -1006, "msg": "Unexpected"}),
            True,
            id="1006-placed",
        ),
        pytest.param(Fault(status=502, body="Bad Gateway"), False, id="502-not-placed"),
    ],
)
async def test_unknown_fate_is_looked_up_never_blindly_resent(
    ex: BinanceExecutor, fake: FakeBinance, fault: Fault, placed: bool
) -> None:
    fake.inject("POST", ORDER, fault)
    log = MemoryLog()
    result = await ex.execute(request(), log)
    cid = request().client_order_id
    assert result.status == "EXECUTED" and result.executed_qty == Decimal("0.010")
    assert fake.order_count(cid) == 1 and fake.positions["BTCUSDT"] == 0
    assert len(fake.requests("GET", ORDER)) >= 1  # looked up before anything else
    if placed:
        assert len(log.sends) == 1 and posts(fake) == 1
    else:
        # Sent again only once the first send's window had closed.
        assert len(log.sends) == 2 and posts(fake) == 2
        resent_at = fake.requests("POST", ORDER)[1].at_ms
        assert resent_at >= log.sends[0][0] + RECV_WINDOW + MARGIN


async def test_a_late_placement_inside_the_window_is_found_not_doubled(
    make: Make, fake: FakeBinance
) -> None:
    """The order reaches the engine after the client gave up and after a -2013."""
    ex = make(recv_window_ms=700)
    await ex.start()
    fake.inject("POST", ORDER, late(place_after=0.45, delay=0.6))
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert result.executed and len(log.sends) == 1 and posts(fake) == 1
    assert fake.order_count(request().client_order_id) == 1
    lookups = fake.requests("GET", ORDER)
    assert len(lookups) >= 2  # "does not exist" first, then found


async def test_a_late_placement_past_the_window_is_refused_by_the_engine(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    # A large position: after the resend fills, the reduce-only rule would still let a
    # second order through, so only the engine's recvWindow check can stop the late one.
    fake.positions["BTCUSDT"] = Decimal("1.000")
    order = request(reported="1.000")
    fake.inject("POST", ORDER, late(place_after=0.8, delay=0.5))
    log = MemoryLog()
    result = await ex.execute(order, log)
    assert result.executed and len(log.sends) == 2
    deadline = time.monotonic() + 5
    while not fake.late_answers:  # the late placement tries after the resend
        assert time.monotonic() < deadline, "the late placement never reached the engine"
        await asyncio.sleep(0.02)
    ((status, answer),) = fake.late_answers
    assert (status, answer["code"]) == (400, -5028)
    assert fake.order_count(order.client_order_id) == 1
    assert fake.positions["BTCUSDT"] == Decimal("0.990")


async def test_429_waits_out_retry_after_then_resends(make: Make, fake: FakeBinance) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    ex = make(sleep=sleep)
    await ex.start()
    fake.inject("POST", ORDER, rate_limited(1))
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert result.executed and 1.0 in sleeps
    assert len(log.sends) == 2 and fake.order_count(request().client_order_id) == 1


async def test_a_long_ip_ban_fails_the_step_without_waiting(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("POST", ORDER, rate_limited(120, status=418))
    result = await ex.execute(request(), MemoryLog())
    assert (result.status, result.error) == ("FAILED", "rate_limited:418")
    assert fake.orders == []


async def test_service_unavailable_is_resent_without_a_lookup(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject(
        "POST", ORDER, Fault(status=503, body={"code": -1008, "msg": "Service Unavailable."})
    )
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert result.executed and len(log.sends) == 2 and lookups_after_send(fake) == 0


@pytest.mark.parametrize(
    ("code", "msg"),
    [
        (-2022, "ReduceOnly Order is rejected."),
        (-4118, "ReduceOnly Order Failed. Please check your existing position and open orders"),
        (-2019, "Margin is insufficient."),
        (-4164, "Order's notional must be no smaller than 5.0 (unless you choose reduce only)"),
        (-1111, "Precision is over the maximum defined for this asset."),
    ],
)
async def test_definite_rejections(
    ex: BinanceExecutor, fake: FakeBinance, code: int, msg: str
) -> None:
    fake.inject("POST", ORDER, rejected(code, msg))
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert (result.status, result.error, result.message) == (
        "REJECTED",
        f"exchange_rejected:{code}",
        msg,
    )
    assert len(log.sends) == 1 and fake.orders == [] and lookups_after_send(fake) == 0


async def test_expired_market_order_without_fills_is_rejected(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("POST", ORDER, Fault(place=True, fill=Decimal(0)))
    result = await ex.execute(request(), MemoryLog())
    assert (result.status, result.error) == ("REJECTED", "exchange_expired")
    assert result.executed_qty == 0 and result.order_id


async def test_partial_fill_reports_what_executed(ex: BinanceExecutor, fake: FakeBinance) -> None:
    fake.inject("POST", ORDER, Fault(place=True, fill=Decimal("0.5")))
    result = await ex.execute(request(), MemoryLog())
    assert result.status == "EXECUTED" and "partly filled" in result.message
    assert (result.quantity, result.executed_qty) == (Decimal("0.010"), Decimal("0.005"))


@pytest.mark.parametrize("skew_ms", [3000, -3000])
async def test_server_clock_skew_is_absorbed(make: Make, fake: FakeBinance, skew_ms: int) -> None:
    fake.skew_ms = skew_ms
    ex = make()
    await ex.start()
    log = MemoryLog()
    assert (await ex.execute(request(), log)).executed and len(log.sends) == 1


async def test_clock_jump_after_start_resyncs_on_the_first_read(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.skew_ms = 3000
    log = MemoryLog()
    assert (await ex.execute(request(), log)).executed
    assert ex.client.time_syncs == 2 and len(log.sends) == 1


async def test_minus_1021_on_the_order_resyncs_and_resends_once(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject(
        "POST", ORDER, rejected(-1021, "Timestamp for this request is outside of the recvWindow.")
    )
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert result.executed and len(log.sends) == 2 and ex.client.time_syncs == 2
    assert fake.order_count(request().client_order_id) == 1


async def test_when_lookups_keep_failing_the_fate_stays_unknown(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("POST", ORDER, dropped(place=False))
    # The first lookup (before the send) is answered; every one after the send fails.
    fake.inject("GET", ORDER, Fault(), *[unknown_503(place=False) for _ in range(10)])
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "order_unknown")
    assert len(log.sends) == 1 and posts(fake) == 1  # never resent on a guess
    assert result.client_order_id == request().client_order_id and result.side == "SELL"


async def test_resends_are_bounded(ex: BinanceExecutor, fake: FakeBinance) -> None:
    fake.inject("POST", ORDER, *[dropped(place=False) for _ in range(5)])
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "order_not_placed")
    assert "never executed" in result.message
    assert len(log.sends) == posts(fake) == POLICY.max_resend_cycles + 1 and fake.orders == []


@pytest.mark.parametrize("broken", ["read", "write"])
async def test_a_broken_journal_sends_nothing_and_propagates(
    ex: BinanceExecutor, fake: FakeBinance, broken: str
) -> None:
    """Not an exchange answer: the service keeps the plan pending for recovery."""
    with pytest.raises(ConnectionError):
        await ex.execute(request(), MemoryLog(broken=broken))
    assert posts(fake) == 0


async def test_a_journal_refusing_a_resend_stops_before_it(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    class RefuseSecond(MemoryLog):
        async def record_attempt(
            self,
            sent_at_ms: int,
            *,
            quantity: Decimal,
            side: str,
            position_mark: str | None = None,
        ) -> None:
            if self.sends:
                raise ConnectionError("lease lost")
            await super().record_attempt(sent_at_ms, quantity=quantity, side=side)

    fake.inject("POST", ORDER, dropped(place=False))
    log = RefuseSecond()
    with pytest.raises(ConnectionError):
        await ex.execute(request(), log)
    assert posts(fake) == 1 and len(log.sends) == 1 and fake.orders == []


def _exported(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("fault", "resolution"),
    [
        pytest.param(timeout_1007(place=True), "found", id="found"),
        pytest.param(dropped(place=False), "absent", id="absent"),
    ],
)
async def test_unknown_fates_are_counted_by_resolution(
    ex: BinanceExecutor, fake: FakeBinance, fault: Fault, resolution: str
) -> None:
    before = _exported("apply_exchange_unknown_fate_total", resolution=resolution)
    fake.inject("POST", ORDER, fault)
    assert (await ex.execute(request(), MemoryLog())).executed
    after = _exported("apply_exchange_unknown_fate_total", resolution=resolution)
    assert after - before == 1


async def test_an_unresolved_fate_and_its_failed_lookups_are_counted(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    unresolved = _exported("apply_exchange_unknown_fate_total", resolution="unresolved")
    errors = _exported("apply_exchange_lookup_errors_total")
    fake.inject("POST", ORDER, dropped(place=False))
    fake.inject("GET", ORDER, Fault(), *[unknown_503(place=False) for _ in range(10)])
    assert (await ex.execute(request(), MemoryLog())).error == "order_unknown"
    assert _exported("apply_exchange_unknown_fate_total", resolution="unresolved") == unresolved + 1
    assert _exported("apply_exchange_lookup_errors_total") - errors == POLICY.max_lookup_errors + 1


async def test_rate_limits_and_rejections_are_counted(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    limited = _exported("apply_exchange_rate_limited_total", http_status="429")
    banned = _exported("apply_exchange_rate_limited_total", http_status="418")
    refused = _exported("apply_exchange_rejections_total")
    # The rejection first: after the 418 the client sends nothing for 120 s (ban.py).
    fake.inject("POST", ORDER, rejected(-2022, "ReduceOnly Order is rejected."))
    assert (await ex.execute(request("rj"), MemoryLog())).error == "exchange_rejected:-2022"
    fake.inject("POST", ORDER, rate_limited(0), rate_limited(120, status=418))
    assert (await ex.execute(request("rl"), MemoryLog())).error == "rate_limited:418"
    assert _exported("apply_exchange_rate_limited_total", http_status="429") == limited + 1
    assert _exported("apply_exchange_rate_limited_total", http_status="418") == banned + 1
    assert _exported("apply_exchange_rejections_total") == refused + 1
