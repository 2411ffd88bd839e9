"""The close's side and quantity against the live position, or why it cannot be sized.

The rules (``sizing.size_close``) are pure; what this adds is where the inputs
come from at Binance: the symbol's lot filters (never guessed when they cannot
be read), and the position, read ahead of the lease if that read still stands
(``readahead``), else now.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from apply_layer.core.errors import BinanceError, ExchangeInfoInvalid, HedgeMode
from apply_layer.core.outcomes import StepResult
from apply_layer.core.sizing import size_close
from apply_layer.core.statuses import StepStatus
from apply_layer.executors.base import OrderRequest
from apply_layer.executors.binance.market import Market
from apply_layer.executors.binance.outcome import outcome
from apply_layer.executors.binance.readahead import ReadAhead


@dataclass(frozen=True)
class Sized:
    """A close sized for sending: side, quantity, and the position read's last-send mark."""

    qty: Decimal
    side: str
    mark: str | None


async def size_order(
    market: Market, order: OrderRequest, unseen_ms: int, ahead: ReadAhead | None = None
) -> StepResult | Sized:
    """The close's side and quantity against the position (read ahead if that read
    still stands, else now), or the step's result if it cannot be sized."""
    try:
        rules = await market.rules_for(order.symbol)
        if rules is None:
            problem = market.rules.problem(order.symbol)
            if problem:  # listed, perhaps, but its filters cannot be read: never guess them
                return outcome(order, StepStatus.FAILED, "exchange_info_invalid", problem)
            return outcome(order, StepStatus.REJECTED, "symbol_not_listed", order.symbol)
        read = await ahead.position(unseen_ms) if ahead is not None else None
        live, mark = (
            (read.amount, read.mark)
            if read is not None
            else (await market.position(order.symbol), None)
        )
    except HedgeMode as exc:
        return outcome(order, StepStatus.REJECTED, "hedge_mode", str(exc))
    except ExchangeInfoInvalid as exc:
        return outcome(order, StepStatus.FAILED, "exchange_info_invalid", str(exc))
    except BinanceError as exc:
        return outcome(order, StepStatus.FAILED, "exchange_unavailable", str(exc))
    sizing = size_close(
        safe_qty=order.safe_qty,
        pct=order.pct,
        reported_amt=order.reported_amt,
        live_amt=live,
        lot=rules.lot,
    )
    if not sizing.ok:
        return outcome(order, StepStatus.REJECTED, sizing.error, sizing.detail)
    return Sized(sizing.qty, sizing.side, mark)
