"""What Binance's USD-M answers mean, as values: no I/O here.

The error classes every answer is sorted into (``client`` explains the
sorting), the error codes that decide it, a symbol's lot rules from
``exchangeInfo``, an order as Binance reports it, and the plan step's
outcome that order means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from apply_layer.core.errors import BinanceError, ExchangeInfoInvalid, StatusUnknown
from apply_layer.core.log_format import format_qty
from apply_layer.core.outcomes import StepResult
from apply_layer.core.sizing import LotFilter, exact_normalize
from apply_layer.core.statuses import StepStatus

INVALID_TIMESTAMP = -1021
NO_SUCH_ORDER = -2013
UNKNOWN_STATUS_CODES = frozenset({-1006, -1007})  # "execution status unknown"
RETRYABLE_CODES = frozenset({-1001, -1008})  # internal error / overloaded: not processed
FINAL_STATUSES = frozenset({"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"})


@dataclass(frozen=True)
class SymbolRules:
    """A symbol's quantity filters, and the one a MARKET order must meet (the stricter)."""

    symbol: str
    lot_size: LotFilter | None
    market_lot_size: LotFilter | None
    lot: LotFilter

    def describe(self) -> str:
        return (
            f"step={format_qty(self.lot.step_size)} min={format_qty(self.lot.min_qty)} "
            f"max={format_qty(self.lot.max_qty)} (LOT_SIZE and MARKET_LOT_SIZE, stricter)"
        )


@dataclass(frozen=True)
class OrderInfo:
    """The fields of an order answer (``POST``/``GET /fapi/v1/order``) that we report."""

    order_id: str
    client_order_id: str
    symbol: str
    side: str
    status: str
    orig_qty: Decimal
    executed_qty: Decimal
    avg_price: Decimal | None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def from_json(cls, data: Any) -> OrderInfo:
        try:
            return cls(
                order_id=str(data["orderId"]),
                client_order_id=str(data["clientOrderId"]),
                symbol=str(data.get("symbol", "")),
                side=str(data["side"]),
                status=str(data["status"]),
                orig_qty=Decimal(str(data["origQty"])),
                executed_qty=Decimal(str(data.get("executedQty", "0"))),
                avg_price=Decimal(str(data["avgPrice"])) if data.get("avgPrice") else None,
            )
        except (KeyError, TypeError, AttributeError, InvalidOperation):
            raise StatusUnknown("order answer without the expected fields") from None


def _lot(raw: Any) -> LotFilter | None:
    """One lot filter, exactly as the exchange gave it (``decimal.Inexact`` if it
    cannot be kept exact: the symbol is then invalid, never rounded)."""
    step = exact_normalize(Decimal(str(raw["stepSize"])))
    if step <= 0:
        return None  # a zero step disables the rule
    max_qty = exact_normalize(Decimal(str(raw["maxQty"])))
    return LotFilter(
        step, exact_normalize(Decimal(str(raw["minQty"]))), max_qty if max_qty > 0 else None
    )


def stricter(symbol: str, *filters: LotFilter | None) -> LotFilter:
    """The filter that satisfies all given ones: largest step and min, smallest max."""
    present = [f for f in filters if f is not None]
    if not present:
        raise BinanceError(f"{symbol}: no LOT_SIZE or MARKET_LOT_SIZE filter")
    step = max(f.step_size for f in present)
    if any(step % f.step_size for f in present):
        raise BinanceError(f"{symbol}: lot steps {[str(f.step_size) for f in present]} do not nest")
    maxes = [f.max_qty for f in present if f.max_qty is not None]
    return LotFilter(step, max(f.min_qty for f in present), min(maxes) if maxes else None)


class ExchangeRules(dict[str, SymbolRules]):
    """Lot rules by symbol; ``invalid`` names the symbols whose entry could not be read.

    A symbol in ``invalid`` is listed but unusable (``exchange_info_invalid``);
    ``unreadable`` counts entries that did not even name a symbol: while there
    are any, a symbol that is absent may be one of them, so it is not called
    unlisted either.
    """

    def __init__(self) -> None:
        super().__init__()
        self.invalid: dict[str, str] = {}
        self.unreadable = 0

    def problem(self, symbol: str) -> str:
        """Why ``symbol`` has no rules although the exchange may list it ("" if unlisted)."""
        if symbol in self.invalid:
            return f"{symbol}: {self.invalid[symbol]}"
        if symbol not in self and self.unreadable:
            return f"{self.unreadable} exchangeInfo entries name no symbol"
        return ""


def _symbol_rules(symbol: str, entry: Mapping[str, Any]) -> SymbolRules:
    filters = entry.get("filters", [])
    if not isinstance(filters, list):
        raise BinanceError("filters is not a list")
    by_type = {
        f["filterType"]: f
        for f in filters
        if isinstance(f, dict) and isinstance(f.get("filterType"), str)
    }
    lot = _lot(by_type["LOT_SIZE"]) if "LOT_SIZE" in by_type else None
    market = _lot(by_type["MARKET_LOT_SIZE"]) if "MARKET_LOT_SIZE" in by_type else None
    return SymbolRules(symbol, lot, market, stricter(symbol, lot, market))


def parse_exchange_info(data: Any) -> ExchangeRules:
    """Per-symbol lot rules from ``GET /fapi/v1/exchangeInfo``.

    Raises :class:`ExchangeInfoInvalid` when the answer is not a list of
    symbols; a symbol whose own entry cannot be read is recorded as invalid,
    and the others are kept.
    """
    symbols = data.get("symbols") if isinstance(data, dict) else None
    if not isinstance(symbols, list):
        raise ExchangeInfoInvalid("exchangeInfo answer without a list of symbols")
    rules = ExchangeRules()
    for entry in symbols:
        symbol = entry.get("symbol") if isinstance(entry, dict) else None
        if not isinstance(symbol, str) or not symbol:
            rules.unreadable += 1
            continue
        try:
            rules[symbol] = _symbol_rules(symbol, entry)
        except (KeyError, TypeError, AttributeError, ArithmeticError, ValueError) as exc:
            rules.invalid[symbol] = f"unreadable lot filters ({type(exc).__name__})"
        except BinanceError as exc:
            rules.invalid[symbol] = str(exc).removeprefix(f"{symbol}: ")
    return rules


def step_result(step: str, info: OrderInfo) -> StepResult:
    """A plan step's outcome from the order Binance reports (after any settling)."""
    executed = info.executed_qty > 0
    fields: dict[str, Any] = {
        "step": step,
        "order_id": info.order_id,
        "client_order_id": info.client_order_id,
        "side": info.side,
        "quantity": info.orig_qty,
        "executed_qty": info.executed_qty,
        "avg_price": info.avg_price if executed else None,
        "order_status": info.status,
    }
    if executed:
        note = "" if info.status == "FILLED" else f"order {info.status}, partly filled"
        return StepResult(status=StepStatus.EXECUTED, message=note, **fields)
    if info.status in ("EXPIRED", "EXPIRED_IN_MATCH"):
        return StepResult(status=StepStatus.REJECTED, error="exchange_expired", **fields)
    if info.status in ("CANCELED", "REJECTED"):
        return StepResult(
            status=StepStatus.REJECTED, error=f"exchange_{info.status.lower()}", **fields
        )
    note = f"order accepted but not filled (status {info.status})"
    return StepResult(status=StepStatus.FAILED, error="order_not_final", message=note, **fields)
