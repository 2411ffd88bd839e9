"""The testnet executor against the fake exchange: sizing, exchange rules, checks, secrets.

The faults of a send are in test_binance_faults.py, resuming and adopting in
test_binance_resume.py.

Tests by name: executors/base.py and the binance executor's parts:
executors/binance/close_size.py, executors/binance/market.py,
executors/binance/preflight.py, executors/binance/adoption.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from apply_layer.core.errors import BinanceConfigError, ExchangeInfoInvalid
from apply_layer.core.outcomes import StepResult
from apply_layer.executors.binance.executor import BinanceExecutor
from apply_layer.logs import setup_logging
from apply_layer.settings import Settings
from tests.executors.binance.executor_helpers import Make, posts, request
from tests.fake_binance import (
    API_KEY,
    API_SECRET,
    ORDER,
    FakeBinance,
    Fault,
    dropped,
    rejected,
    unknown_503,
)
from tests.harness import MemoryLog


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
