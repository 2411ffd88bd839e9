"""The testnet executor against the fake exchange: sizing, faults, exactly-once, resume.

Every fault test asserts three things: what the exchange really holds (the
order exists at most once), what the StepResult says, and what the journal
(an in-memory OrderLog) recorded. recvWindow is 400 ms here so the waits for
a closed window stay short.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from apply_layer.executors.base import OrderRequest
from apply_layer.executors.binance.executor import BinanceConfigError, BinanceExecutor, RetryPolicy
from apply_layer.executors.binance.model import ExchangeInfoInvalid
from apply_layer.logs import setup_logging
from apply_layer.outcomes import Outcome, StepResult, result_fields
from apply_layer.settings import Settings
from apply_layer.statuses import OutcomeStatus
from tests.fake_binance import (
    API_KEY,
    API_SECRET,
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

RECV_WINDOW = 400
MARGIN = 100
POLICY = RetryPolicy(
    clock_margin_ms=MARGIN,
    lookup_backoff_sec=0.03,
    lookup_backoff_max_sec=0.1,
    max_lookup_errors=4,
    max_resend_cycles=2,
    max_retry_after_sec=5.0,
    final_status_polls=3,
)


def request(
    plan: str = "p1",
    *,
    symbol: str = "BTCUSDT",
    pct: str = "100",
    safe: str = "0.010",
    reported: str | None = "0.010",
    step: str = "CLOSE_FULL",
) -> OrderRequest:
    return OrderRequest(
        plan_id=plan,
        symbol=symbol,
        step=step,
        pct=Decimal(pct),
        safe_qty=Decimal(safe),
        reported_amt=Decimal(reported) if reported is not None else None,
    )


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance() as server:
        server.positions["BTCUSDT"] = Decimal("0.010")
        yield server


Make = Callable[..., BinanceExecutor]


@pytest.fixture
async def make(fake: FakeBinance) -> AsyncIterator[Make]:
    made: list[BinanceExecutor] = []

    def factory(**overrides: Any) -> BinanceExecutor:
        kwargs: dict[str, Any] = {
            "base_url": fake.url,
            "api_key": SecretStr(API_KEY),
            "api_secret": SecretStr(API_SECRET),
            "recv_window_ms": RECV_WINDOW,
            "allowlist": ("BTCUSDT", "ETHUSDT"),
            "http_timeout_sec": httpx.Timeout(1.0, read=0.3),
            "policy": POLICY,
        }
        executor = BinanceExecutor(**(kwargs | overrides))
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        await executor.close()


@pytest.fixture
async def ex(make: Make) -> BinanceExecutor:
    executor = make()
    await executor.start()
    return executor


def posts(fake: FakeBinance) -> int:
    return len(fake.requests("POST", ORDER))


def lookups_after_send(fake: FakeBinance) -> int:
    """Order lookups after the first send (the one before it is the adoption check)."""
    with fake.lock:
        seen = list(fake.seen)
    first = next((n for n, s in enumerate(seen) if s.method == "POST" and s.path == ORDER), None)
    if first is None:
        return 0
    return sum(1 for s in seen[first:] if s.method == "GET" and s.path == ORDER)


async def test_happy_path_reports_the_result_fields(ex: BinanceExecutor, fake: FakeBinance) -> None:
    log = MemoryLog()
    result = await ex.execute(request(), log)
    cid = request().client_order_id
    assert result.status == "EXECUTED" and result.error == ""
    assert result.order_id == str(fake.orders[0]["orderId"])
    assert (result.client_order_id, result.side) == (cid, "SELL")
    assert result.quantity == result.executed_qty == Decimal("0.010")
    assert result.avg_price == Decimal("65000.10")
    assert result.as_dict()["quantity"] == "0.01" and result.reduce_only
    sent = fake.requests("POST", ORDER)[0].params
    assert sent["type"] == "MARKET" and sent["reduceOnly"] == "true"
    assert sent["newOrderRespType"] == "RESULT" and sent["newClientOrderId"] == cid
    assert sent["quantity"] == "0.01" and sent["side"] == "SELL"
    assert [(q, s) for _, q, s in log.sends] == [(Decimal("0.010"), "SELL")]
    assert fake.positions["BTCUSDT"] == 0 and fake.order_count(cid) == 1


async def test_a_short_is_closed_with_a_buy_bounded_by_pct(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.positions["BTCUSDT"] = Decimal("-0.013")
    result = await ex.execute(request(pct="50", safe="0.5", reported="-0.013"), MemoryLog())
    assert (result.status, result.side, result.quantity) == ("EXECUTED", "BUY", Decimal("0.006"))
    assert fake.positions["BTCUSDT"] == Decimal("-0.007")


async def test_live_position_bounds_the_quantity(ex: BinanceExecutor, fake: FakeBinance) -> None:
    fake.positions["BTCUSDT"] = Decimal("0.004")  # smaller than P3.3 saw
    result = await ex.execute(request(), MemoryLog())
    assert (result.status, result.side, result.quantity) == ("EXECUTED", "SELL", Decimal("0.004"))


async def test_quantity_rounds_down_to_the_stricter_market_step(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.positions["ETHUSDT"] = Decimal("0.537")
    order = request(symbol="ETHUSDT", safe="1", reported="0.537")
    result = await ex.execute(order, MemoryLog())
    assert result.quantity == Decimal("0.53")
    assert fake.requests("POST", ORDER)[0].params["quantity"] == "0.53"


@pytest.mark.parametrize(
    ("live", "reported", "error"),
    [
        ("0.005", "0.005", "qty_below_min"),  # ETH min is 0.01
        ("0", "0.5", "no_position"),
        ("0.5", "-0.5", "position_mismatch"),
    ],
)
async def test_sizing_refusals_send_nothing(
    ex: BinanceExecutor, fake: FakeBinance, live: str, reported: str, error: str
) -> None:
    fake.positions["ETHUSDT"] = Decimal(live)
    log = MemoryLog()
    result = await ex.execute(request(symbol="ETHUSDT", reported=reported), log)
    assert (result.status, result.error) == ("REJECTED", error)
    assert posts(fake) == 0 and log.sends == []


async def test_exchange_info_is_refreshed_after_its_ttl(make: Make, fake: FakeBinance) -> None:
    ex = make(exchange_info_ttl_sec=1.0)
    await ex.start()
    fake.positions["BTCUSDT"] = Decimal("0.003")
    await ex.execute(request("p1", reported="0.003", safe="0.001"), MemoryLog())
    assert fake.calls("/fapi/v1/exchangeInfo") == 1
    await asyncio.sleep(1.05)
    await ex.execute(request("p2", reported="0.002", safe="0.001"), MemoryLog())
    assert fake.calls("/fapi/v1/exchangeInfo") == 2


def _lot_filter(step: Any) -> dict[str, Any]:
    return {"filterType": "LOT_SIZE", "stepSize": step, "minQty": "0.001", "maxQty": "100"}


def _btc(**entry: Any) -> dict[str, Any]:
    return {"symbols": [{"symbol": "BTCUSDT", "status": "TRADING", **entry}]}


BROKEN_ENTRIES = {
    "filter not an object": _btc(filters=[1]),
    "filters not a list": _btc(filters="LOT_SIZE"),
    "filter type not a string": _btc(filters=[{"filterType": ["LOT_SIZE"]}]),
    "absurd step": _btc(filters=[_lot_filter("1e999999999")]),
    "step not a number": _btc(filters=[_lot_filter({"x": 1})]),
    "no lot filter": _btc(filters=[]),
    "entry not an object": {"symbols": [["BTCUSDT"]]},
}


@pytest.mark.parametrize("info", BROKEN_ENTRIES.values(), ids=BROKEN_ENTRIES.keys())
async def test_a_malformed_exchange_info_entry_ends_the_step_cleanly(
    make: Make, fake: FakeBinance, info: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """It crashed outside the error handling: FAILED executor_error and a traceback."""
    fake.exchange_info = lambda: info  # type: ignore[method-assign]
    ex = make()
    await ex.start()  # the other symbols stay usable
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "exchange_info_invalid")
    assert posts(fake) == 0 and log.sends == []
    line = {line.name: line for line in await ex.preflight()}["binance filters BTCUSDT"]
    assert not line.ok and line.detail != "not listed on the exchange"
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "info", [[], {"symbols": 5}, {"symbols": None}, {"symbols": {"BTCUSDT": 1}}]
)
async def test_an_exchange_info_answer_without_symbols_ends_the_step_cleanly(
    make: Make, fake: FakeBinance, info: Any
) -> None:
    fake.exchange_info = lambda: info  # type: ignore[method-assign]
    ex = make()
    with pytest.raises(ExchangeInfoInvalid):
        await ex.start()
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "exchange_info_invalid")
    assert posts(fake) == 0 and log.sends == []


async def test_an_unlisted_symbol_is_still_rejected_as_unlisted(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    result = await ex.execute(request(symbol="DOGEUSDT"), MemoryLog())
    assert (result.status, result.error) == ("REJECTED", "symbol_not_listed")


async def test_preflight_lines(ex: BinanceExecutor, fake: FakeBinance) -> None:
    lines = {line.name: line for line in await ex.preflight()}
    assert all(line.ok for line in lines.values()), lines
    assert "ms" in lines["binance clock offset"].detail
    assert lines["binance position mode"].detail == "one-way"
    assert "step=0.001 min=0.001 max=120" in lines["binance filters BTCUSDT"].detail
    assert "step=0.01" in lines["binance filters ETHUSDT"].detail


async def test_hedge_mode_is_refused(ex: BinanceExecutor, fake: FakeBinance) -> None:
    fake.dual_side = True
    lines = {line.name: line for line in await ex.preflight()}
    assert not lines["binance position mode"].ok
    assert "hedge mode" in lines["binance position mode"].detail
    result = await ex.execute(request(), MemoryLog())
    assert (result.status, result.error) == ("REJECTED", "hedge_mode") and posts(fake) == 0


async def test_missing_credentials_refuse_to_start(make: Make) -> None:
    ex = make(api_key=None, api_secret=SecretStr(""))
    with pytest.raises(BinanceConfigError, match="APPLY_BINANCE_API_KEY"):
        await ex.start()
    lines = {line.name: line for line in await ex.preflight()}
    assert not lines["binance credentials"].ok and lines["binance clock offset"].ok


async def test_from_settings(fake: FakeBinance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINANCE_TESTNET_API_KEY", API_KEY)
    monkeypatch.setenv("BINANCE_TESTNET_API_SECRET", API_SECRET)
    settings = Settings(mode="testnet", binance_base_url=fake.url, allowlist=["BTCUSDT"])
    ex = BinanceExecutor.from_settings(settings)
    try:
        await ex.start()
        assert ex.mode == "testnet" and ex.client.recv_window_ms == 5000
        assert (await ex.execute(request(), MemoryLog())).executed
    finally:
        await ex.close()


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
        async def record_attempt(self, sent_at_ms: int, *, quantity: Decimal, side: str) -> None:
            if self.sends:
                raise ConnectionError("lease lost")
            await super().record_attempt(sent_at_ms, quantity=quantity, side=side)

    fake.inject("POST", ORDER, dropped(place=False))
    log = RefuseSecond()
    with pytest.raises(ConnectionError):
        await ex.execute(request(), log)
    assert posts(fake) == 1 and len(log.sends) == 1 and fake.orders == []


# -- resume after a crash ---------------------------------------------------


async def test_resume_reports_an_order_that_exists_without_sending(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    cid = request().client_order_id
    fake.add_order("BTCUSDT", "SELL", "0.010", cid)
    log = MemoryLog([int(time.time() * 1000) - 50])
    result = await ex.execute(request(), log)
    assert result.executed and result.client_order_id == cid
    assert posts(fake) == 0 and len(log.sends) == 1
    assert fake.order_count(cid) == 1


async def test_resume_waits_for_the_window_then_sends_once(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    crashed_at = int(time.time() * 1000)  # journalled, then the process died
    log = MemoryLog([crashed_at])
    result = await ex.execute(request(), log)
    assert result.executed and posts(fake) == 1 and len(log.sends) == 2
    assert fake.requests("POST", ORDER)[0].at_ms >= crashed_at + RECV_WINDOW + MARGIN
    assert fake.order_count(request().client_order_id) == 1


async def test_resume_with_an_old_attempt_sends_after_one_lookup(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    log = MemoryLog([int(time.time() * 1000) - 60_000])
    assert (await ex.execute(request(), log)).executed
    assert len(fake.requests("GET", ORDER)) == 1 and posts(fake) == 1


async def test_resume_without_a_definite_lookup_sends_nothing(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("GET", ORDER, *[dropped(place=False) for _ in range(10)])
    result = await ex.execute(request(), MemoryLog([int(time.time() * 1000)]))
    assert (result.status, result.error) == ("FAILED", "order_unknown") and posts(fake) == 0


# -- Redis lost the record of a send -------------------------------------------


async def test_a_first_send_adopts_an_order_the_journal_lost(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    """The journal shows no send, but the exchange has the (filled) order: adopt it."""
    cid = request().client_order_id
    placed = fake.add_order("BTCUSDT", "SELL", "0.010", cid)  # an earlier run's, now forgotten
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert result.executed and result.adopted and result.order_id == str(placed["orderId"])
    assert result.as_dict()["adopted"] is True and "adopted" in result.message
    fields = result_fields(
        plan_id="p1",
        symbol="BTCUSDT",
        plan_decision="EXECUTE",
        outcome=Outcome(OutcomeStatus.EXECUTED, steps=(result,)),
        mode="testnet",
    )
    assert fields["adopted"] == "True" and '"adopted": true' in fields["steps_results"]
    assert posts(fake) == 0 and log.sends == [] and fake.order_count(cid) == 1
    assert fake.positions["BTCUSDT"] == 0  # filled once, by the earlier run


async def test_an_order_sent_normally_is_not_adopted(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    result = await ex.execute(request(), MemoryLog())
    assert result.executed and not result.adopted and "adopted" not in result.as_dict()
    fields = result_fields(
        plan_id="p1",
        symbol="BTCUSDT",
        plan_decision="EXECUTE",
        outcome=Outcome(OutcomeStatus.EXECUTED, steps=(result,)),
        mode="testnet",
    )
    assert "adopted" not in fields
    assert len(fake.requests("GET", ORDER)) == 1  # the one check before the send


async def test_a_lost_send_still_in_flight_is_found_not_doubled(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    """Redis changed just now: a send it lost may still reach the engine in its window."""
    cid = request().client_order_id
    changed_at = int(time.time() * 1000)
    timer = threading.Timer(0.25, fake.add_order, ("BTCUSDT", "SELL", "0.010", cid))
    timer.start()  # the lost send lands 250 ms later, inside its recvWindow (400 ms)
    result = await ex.execute(request(), MemoryLog(unseen_ms=changed_at))
    timer.join()
    assert result.executed and result.adopted
    assert posts(fake) == 0 and fake.order_count(cid) == 1
    assert len(fake.requests("GET", ORDER)) >= 2  # "no such order" first, then found


async def test_after_a_redis_change_a_first_send_waits_out_the_window(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    changed_at = int(time.time() * 1000)
    log = MemoryLog(unseen_ms=changed_at)
    result = await ex.execute(request(), log)
    assert result.executed and not result.adopted and posts(fake) == 1
    assert fake.requests("POST", ORDER)[0].at_ms >= changed_at + RECV_WINDOW + MARGIN


async def test_a_check_that_cannot_complete_sends_nothing(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("GET", ORDER, *[unknown_503(place=False) for _ in range(10)])
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "exchange_unavailable")
    assert "nothing was sent" in result.message
    assert posts(fake) == 0 and log.sends == []


async def test_a_redis_change_between_the_check_and_the_send_checks_again(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    """The record went to a Redis that came back from an older state: look again."""
    cid = request().client_order_id

    class ChangesOnRecord(MemoryLog):
        async def record_attempt(self, sent_at_ms: int, *, quantity: Decimal, side: str) -> None:
            await super().record_attempt(sent_at_ms, quantity=quantity, side=side)
            if len(self.sends) == 1:
                self.unseen_ms = int(time.time() * 1000)
                # ... and a send that Redis lost lands a moment later.
                threading.Timer(0.2, fake.add_order, ("BTCUSDT", "SELL", "0.010", cid)).start()

    log = ChangesOnRecord()
    result = await ex.execute(request(), log)
    assert result.executed and result.adopted
    assert posts(fake) == 0 and fake.order_count(cid) == 1
    assert len(log.sends) == 1  # recorded, then not sent


# -- secrets ----------------------------------------------------------------


async def test_key_secret_and_signatures_never_leak(make: Make, fake: FakeBinance) -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", "console", stream=stream)
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    low = [logging.getLogger(n) for n in ("httpx", "httpcore.http11", "httpcore.connection")]
    levels = [lg.level for lg in low]
    for lg in low:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    texts: list[str] = []
    results: list[StepResult] = []
    try:
        ex = make()
        await ex.start()
        scenarios = [
            None,
            dropped(place=False),
            unknown_503(place=True),
            rejected(-2022, "ReduceOnly Order is rejected."),
            Fault(echo=True),  # an error answer quoting our key and signed request
            Fault(status=502, body=f"upstream saw X-MBX-APIKEY={API_KEY}"),
        ]
        for n, fault in enumerate(scenarios):
            fake.positions["BTCUSDT"] = Decimal("0.010")
            if fault is not None:
                fake.inject("POST", ORDER, fault)
            results.append(await ex.execute(request(f"s{n}"), MemoryLog()))
        bad = make(api_secret=SecretStr("wrong-secret-" + "w" * 40))
        await bad.start()
        results.append(await bad.execute(request("s9"), MemoryLog()))
        texts.extend(f"{line.name} {line.detail}" for line in await bad.preflight())
        wrong_key = make(api_key=SecretStr("bad-key-" + "b" * 40))
        await wrong_key.start()  # only public calls: it starts, then fails where it signs
        texts.extend(f"{line.name} {line.detail}" for line in await wrong_key.preflight())
        results.append(await wrong_key.execute(request("s10"), MemoryLog()))
    finally:
        for lg, level in zip(low, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    statuses = [r.status for r in results]
    assert statuses == ["EXECUTED"] * 3 + ["REJECTED"] * 2 + ["EXECUTED"] + ["FAILED"] * 2
    assert "<redacted>" in results[4].message
    assert "upstream saw X-MBX-APIKEY=<redacted>" in stream.getvalue()  # the 502's log line
    assert "-1022" in results[6].message and "-2015" in results[7].message
    texts += [stream.getvalue(), captured.getvalue()]
    texts += [repr(r) + json.dumps(r.as_dict()) for r in results]
    blob = "\n".join(texts)
    assert "binance_order_send" in blob  # the logs were captured
    signatures = {s.params["signature"] for s in fake.seen if "signature" in s.params}
    assert len(signatures) > 10
    for secret in (API_KEY, API_SECRET, "wrong-secret-", "bad-key-", *signatures):
        assert secret not in blob


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
    fake.inject("POST", ORDER, rate_limited(0), rate_limited(120, status=418))
    assert (await ex.execute(request("rl"), MemoryLog())).error == "rate_limited:418"
    fake.inject("POST", ORDER, rejected(-2022, "ReduceOnly Order is rejected."))
    assert (await ex.execute(request("rj"), MemoryLog())).error == "exchange_rejected:-2022"
    assert _exported("apply_exchange_rate_limited_total", http_status="429") == limited + 1
    assert _exported("apply_exchange_rate_limited_total", http_status="418") == banned + 1
    assert _exported("apply_exchange_rejections_total") == refused + 1
