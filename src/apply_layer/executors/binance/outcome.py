"""A step's result from what the exchange said, logged once: the two ways a Binance
step ends (an order to report, or an outcome without one).

Every path of the executor (send, resume, adoption, ``find_order``) ends
through these two functions, so each result is logged by one line of one shape
(``binance_order_result`` / ``binance_order_outcome``).
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from apply_layer.core.log_format import format_qty
from apply_layer.core.outcomes import StepResult
from apply_layer.core.statuses import StepStatus
from apply_layer.executors.base import OrderRef, OrderRequest
from apply_layer.executors.binance.model import OrderInfo, step_result
from apply_layer.logs import get_logger

_log = get_logger("apply_layer.binance")


def report(order: OrderRequest | OrderRef, info: OrderInfo, *, adopted: bool = False) -> StepResult:
    """The step as the order at the exchange shows it (``adopted``: found, not sent)."""
    result = step_result(order.step, info)
    if adopted:
        note = "adopted: an earlier run's order, found at the exchange; nothing was sent"
        message = f"{note}; {result.message}" if result.message else note
        result = replace(result, adopted=True, message=message)
    _log.info(
        "binance_order_result",
        plan=order.plan_id,
        cid=info.client_order_id,
        status=info.status,
        executed_qty=format_qty(info.executed_qty),
        adopted=adopted,
    )
    return result


def outcome(
    order: OrderRequest | OrderRef,
    status: StepStatus,
    error: str,
    message: str = "",
    side: str = "",
    qty: Decimal | None = None,
) -> StepResult:
    """The step ended without an order to report (rejected, failed, unknown)."""
    if status != StepStatus.EXECUTED:
        _log.warning(
            "binance_order_outcome",
            plan=order.plan_id,
            status=status,
            error=error,
            detail=message,
        )
    return StepResult(
        step=order.step,
        status=status,
        error=error,
        client_order_id=order.client_order_id,
        side=side,
        quantity=qty,
        message=message,
    )
