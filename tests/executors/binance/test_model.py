"""What an order answer means for the plan step: the pure mapping in binance_model."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from apply_layer.core.errors import (
    BinanceError,
    ExchangeInfoInvalid,
    ExchangeRejected,
    RateLimited,
    StatusUnknown,
)
from apply_layer.core.outcomes import StepResult
from apply_layer.core.sizing import LotFilter
from apply_layer.core.statuses import StepStatus
from apply_layer.executors.binance.model import (
    OrderInfo,
    parse_exchange_info,
    step_result,
    stricter,
)

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


def _order(status: str, executed: str) -> OrderInfo:
    return OrderInfo(
        order_id="1",
        client_order_id="qa-abc",
        symbol="BTCUSDT",
        side="SELL",
        status=status,
        orig_qty=Decimal("0.002"),
        executed_qty=Decimal(executed),
        avg_price=Decimal("50000"),
    )


@pytest.mark.parametrize(
    ("status", "executed", "outcome", "error"),
    [
        ("FILLED", "0.002", "EXECUTED", ""),
        ("EXPIRED", "0.001", "EXECUTED", ""),  # partly filled, then expired: it did execute
        ("EXPIRED", "0", "REJECTED", "exchange_expired"),
        ("EXPIRED_IN_MATCH", "0", "REJECTED", "exchange_expired"),
        ("CANCELED", "0", "REJECTED", "exchange_canceled"),
        ("REJECTED", "0", "REJECTED", "exchange_rejected"),
        ("NEW", "0", "FAILED", "order_not_final"),
    ],
)
def test_an_order_answer_maps_to_one_step_outcome(
    status: str, executed: str, outcome: str, error: str
) -> None:
    result = step_result("CLOSE_PARTIAL_75", _order(status, executed))
    assert (result.status, result.error or "") == (outcome, error)
    assert result.step == "CLOSE_PARTIAL_75" and result.client_order_id == "qa-abc"
    # A price is reported only for what was filled.
    assert (result.avg_price is not None) == (Decimal(executed) > 0)


def test_a_partial_fill_says_so() -> None:
    result = step_result("CLOSE_PARTIAL_75", _order("EXPIRED", "0.001"))
    assert result.message == "order EXPIRED, partly filled"
    assert result.executed_qty == Decimal("0.001")


# ---- the whole step result, field by field ---------------------------------------------


def test_an_executed_step_result_carries_every_field() -> None:
    result = step_result("CLOSE_FULL", _order("FILLED", "0.002"))
    assert result == StepResult(
        step="CLOSE_FULL",
        status=StepStatus.EXECUTED,
        order_id="1",
        client_order_id="qa-abc",
        side="SELL",
        quantity=Decimal("0.002"),
        executed_qty=Decimal("0.002"),
        avg_price=Decimal("50000"),
        order_status="FILLED",
    )


@pytest.mark.parametrize(
    ("status", "final"),
    [
        ("FILLED", True),
        ("CANCELED", True),
        ("EXPIRED", True),
        ("EXPIRED_IN_MATCH", True),
        ("REJECTED", True),
        ("NEW", False),
        ("PARTIALLY_FILLED", False),
        ("filled", False),
    ],
)
def test_final_statuses(status: str, final: bool) -> None:
    assert _order(status, "0").final is final


def test_an_unfilled_order_reports_no_price_and_its_status() -> None:
    result = step_result("CLOSE_FULL", _order("NEW", "0"))
    assert (result.avg_price, result.executed_qty, result.order_status) == (
        None,
        Decimal(0),
        "NEW",
    )
    assert result.message == "order accepted but not filled (status NEW)"


# ---- order answers -------------------------------------------------------------------------

ANSWER = {
    "orderId": 8389765,
    "clientOrderId": "al75-p1",
    "symbol": "BTCUSDT",
    "side": "SELL",
    "status": "FILLED",
    "origQty": "0.009",
    "executedQty": "0.009",
    "avgPrice": "65000.10",
}


def test_an_order_answer_is_read_exactly() -> None:
    assert OrderInfo.from_json(ANSWER) == OrderInfo(
        "8389765", "al75-p1", "BTCUSDT", "SELL", "FILLED", Decimal("0.009"), Decimal("0.009"),
        Decimal("65000.10"),
    )  # fmt: skip
    bare = {k: v for k, v in ANSWER.items() if k not in ("symbol", "executedQty", "avgPrice")}
    assert OrderInfo.from_json(bare) == OrderInfo(
        "8389765", "al75-p1", "", "SELL", "FILLED", Decimal("0.009"), Decimal(0), None
    )
    assert OrderInfo.from_json({**ANSWER, "avgPrice": "0"}).avg_price == Decimal(0)
    assert OrderInfo.from_json({**ANSWER, "avgPrice": ""}).avg_price is None


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        "FILLED",
        {k: v for k, v in ANSWER.items() if k != "orderId"},
        {k: v for k, v in ANSWER.items() if k != "clientOrderId"},
        {k: v for k, v in ANSWER.items() if k != "side"},
        {k: v for k, v in ANSWER.items() if k != "status"},
        {k: v for k, v in ANSWER.items() if k != "origQty"},
        {**ANSWER, "origQty": "lots"},
        {**ANSWER, "executedQty": None},
        {**ANSWER, "avgPrice": "n/a"},
    ],
)
def test_an_unreadable_order_answer_is_of_unknown_fate(answer: Any) -> None:
    with pytest.raises(StatusUnknown, match=r"^order answer without the expected fields$"):
        OrderInfo.from_json(answer)


# ---- errors ----------------------------------------------------------------------------------


def test_error_tags_and_texts() -> None:
    err = ExchangeRejected(-2022, "ReduceOnly Order is rejected.", 400)
    assert (err.tag, str(err)) == ("-2022", "HTTP 400 code -2022: ReduceOnly Order is rejected.")
    assert (err.code, err.msg, err.http_status) == (-2022, "ReduceOnly Order is rejected.", 400)
    assert ExchangeRejected(None, "WAF", 403).tag == "http_403"
    limited = RateLimited(429, 3.0, "slow down")
    assert (limited.http_status, limited.retry_after_sec) == (429, 3.0)
    assert str(limited) == "HTTP 429 (retry after 3.0 s): slow down"


# ---- exchangeInfo --------------------------------------------------------------------------


def _symbol(name: str, lot: dict[str, str] | None, market: dict[str, str] | None) -> Any:
    filters: list[dict[str, str]] = [{"filterType": "PRICE_FILTER", "tickSize": "0.10"}]
    if lot is not None:
        filters.append({"filterType": "LOT_SIZE", **lot})
    if market is not None:
        filters.append({"filterType": "MARKET_LOT_SIZE", **market})
    return {"symbol": name, "filters": filters}


def lot(step: str, minimum: str, maximum: str) -> dict[str, str]:
    return {"stepSize": step, "minQty": minimum, "maxQty": maximum}


def test_lot_size_stricter_than_market_lot_size_wins() -> None:
    info = {
        "symbols": [_symbol("BTCUSDT", lot("0.01", "0.02", "50"), lot("0.001", "0.001", "120"))]
    }
    rules = parse_exchange_info(info)["BTCUSDT"]
    assert rules.lot == LotFilter(Decimal("0.01"), Decimal("0.02"), Decimal("50"))
    assert rules.lot_size == LotFilter(Decimal("0.01"), Decimal("0.02"), Decimal("50"))
    assert rules.market_lot_size == LotFilter(Decimal("0.001"), Decimal("0.001"), Decimal("120"))
    assert rules.describe() == (
        "step=0.01 min=0.02 max=50 (LOT_SIZE and MARKET_LOT_SIZE, stricter)"
    )


def test_market_lot_size_stricter_wins_and_each_alone_is_enough() -> None:
    info = {
        "symbols": [
            _symbol("BTCUSDT", lot("0.001", "0.001", "1000"), lot("0.01", "0.01", "120")),
            _symbol("ETHUSDT", lot("0.01", "0.01", "500"), None),
            _symbol("SOLUSDT", None, lot("1", "1", "0")),
        ]
    }
    rules = parse_exchange_info(info)
    assert rules["BTCUSDT"].lot == LotFilter(Decimal("0.01"), Decimal("0.01"), Decimal("120"))
    assert rules["ETHUSDT"].lot == LotFilter(Decimal("0.01"), Decimal("0.01"), Decimal("500"))
    assert rules["SOLUSDT"].lot == LotFilter(Decimal("1"), Decimal("1"), None)  # maxQty 0: none


def test_a_zero_step_disables_that_rule() -> None:
    info = {"symbols": [_symbol("BTCUSDT", lot("0", "0", "0"), lot("0.001", "0.002", "9"))]}
    rules = parse_exchange_info(info)["BTCUSDT"]
    assert rules.lot_size is None
    assert rules.lot == LotFilter(Decimal("0.001"), Decimal("0.002"), Decimal("9"))


def test_one_unreadable_symbol_hides_no_other() -> None:
    good = lot("0.001", "0.001", "100")
    info = {
        "symbols": [
            _symbol("AAAUSDT", good, None),
            _symbol("BADUSDT", {"stepSize": "x", "minQty": "1", "maxQty": "1"}, None),
            _symbol("NOFILTERUSDT", None, None),
            _symbol("NESTUSDT", lot("0.003", "0", "0"), lot("0.002", "0", "0")),
            {"filters": [{"filterType": "LOT_SIZE", **good}]},  # no symbol name
            _symbol("ZZZUSDT", good, None),
        ]
    }
    assert sorted(parse_exchange_info(info)) == ["AAAUSDT", "ZZZUSDT"]


@pytest.mark.parametrize("data", [None, [], {}, "exchangeInfo", {"symbols": "BTCUSDT"}])
def test_an_exchange_info_without_a_list_of_symbols_is_invalid(data: Any) -> None:
    with pytest.raises(
        ExchangeInfoInvalid, match=r"^exchangeInfo answer without a list of symbols$"
    ):
        parse_exchange_info(data)


def test_an_exchange_info_with_no_symbols_lists_none() -> None:
    assert dict(parse_exchange_info({"symbols": []})) == {}


def test_stricter_of_none_and_of_steps_that_do_not_nest() -> None:
    with pytest.raises(BinanceError, match="BTCUSDT: no LOT_SIZE or MARKET_LOT_SIZE filter"):
        stricter("BTCUSDT", None, None)
    with pytest.raises(
        BinanceError, match=r"^BTCUSDT: lot steps \['0.003', '0.002'\] do not nest$"
    ):
        stricter(
            "BTCUSDT",
            LotFilter(Decimal("0.003"), Decimal(0)),
            LotFilter(Decimal("0.002"), Decimal(0)),
        )
    one = LotFilter(Decimal("0.01"), Decimal("0.05"), None)
    assert stricter("BTCUSDT", one, None) == one


def test_a_symbol_without_filters_and_a_fractional_max() -> None:
    info = {
        "symbols": [
            {"symbol": "NOFILTERSUSDT"},
            _symbol("FRACUSDT", lot("0.001", "0.001", "0.5"), None),
        ]
    }
    rules = parse_exchange_info(info)
    assert list(rules) == ["FRACUSDT"]
    assert rules["FRACUSDT"].symbol == "FRACUSDT"
    assert rules["FRACUSDT"].lot == LotFilter(Decimal("0.001"), Decimal("0.001"), Decimal("0.5"))


def test_what_an_unreadable_entry_says_and_what_problem_reports() -> None:
    """The reasons are what operators see in ``exchange_info_invalid`` (issue 13)."""
    good = lot("0.001", "0.001", "100")
    info = {
        "symbols": [
            _symbol("AAAUSDT", good, None),
            _symbol("BADUSDT", {"stepSize": "x", "minQty": "1", "maxQty": "1"}, None),
            _symbol("NOFILTERUSDT", None, None),
            _symbol("NESTUSDT", lot("0.003", "0", "0"), lot("0.002", "0", "0")),
            {"symbol": "LISTUSDT", "filters": "LOT_SIZE"},
            {"symbol": "JUNKUSDT", "filters": ["LOT_SIZE", {"filterType": 5}, good]},
            {"filters": [{"filterType": "LOT_SIZE", **good}]},  # no symbol name
            {"symbol": "", "filters": []},  # an empty name is no name
            ["not", "an", "entry"],
        ]
    }
    rules = parse_exchange_info(info)
    assert list(rules) == ["AAAUSDT"]
    assert rules.invalid == {
        "BADUSDT": "unreadable lot filters (InvalidOperation)",
        "NOFILTERUSDT": "no LOT_SIZE or MARKET_LOT_SIZE filter",
        "NESTUSDT": "lot steps ['0.003', '0.002'] do not nest",
        "LISTUSDT": "filters is not a list",
        "JUNKUSDT": "no LOT_SIZE or MARKET_LOT_SIZE filter",
    }
    assert rules.unreadable == 3
    assert rules.problem("BADUSDT") == "BADUSDT: unreadable lot filters (InvalidOperation)"
    assert rules.problem("AAAUSDT") == ""  # listed and readable
    # Unlisted, while some entries named no symbol: it may be one of them.
    assert rules.problem("ZZZUSDT") == "3 exchangeInfo entries name no symbol"
    clean = parse_exchange_info({"symbols": [_symbol("AAAUSDT", good, None)]})
    assert clean.unreadable == 0
    assert clean.problem("ZZZUSDT") == ""  # simply not listed


def test_a_symbol_without_a_filters_key_has_no_filter() -> None:
    rules = parse_exchange_info({"symbols": [{"symbol": "BAREUSDT"}]})
    assert rules.invalid == {"BAREUSDT": "no LOT_SIZE or MARKET_LOT_SIZE filter"}
