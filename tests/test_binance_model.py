"""What an order answer means for the plan step: the pure mapping in binance_model."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apply_layer.binance_model import (
    ExchangeInfoInvalid,
    OrderInfo,
    parse_exchange_info,
    step_result,
)


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


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from(["LOT_SIZE", "MARKET_LOT_SIZE", "0.001", "1e999999999", "-1", "NaN", "0"])
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["symbol", "filters", "filterType", "stepSize", "minQty", "maxQty", "x"]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@given(st.one_of(json_values, st.builds(lambda s: {"symbols": s}, st.lists(json_values))))
def test_any_exchange_info_answer_parses_or_is_refused_cleanly(data: object) -> None:
    try:
        rules = parse_exchange_info(data)
    except ExchangeInfoInvalid:
        return
    for symbol, rule in rules.items():
        assert rule.symbol == symbol and rule.lot.step_size > 0
        assert symbol not in rules.invalid
