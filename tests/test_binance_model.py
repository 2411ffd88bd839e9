"""What an order answer means for the plan step: the pure mapping in binance_model."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apply_layer.binance_model import OrderInfo, step_result


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
