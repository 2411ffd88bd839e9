"""Order sizing (pure, Decimal): how much to close, and on which side.

The quantity is P3.3's ``safe_qty``, never more than the step's ``pct`` of
the position (P3.3's reported one, and the live one where the executor knows
it), rounded *down* to the symbol's lot step and capped at its maximum. Below
the minimum nothing is sent. Nothing here guesses: a missing position or
filter is an explicit refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import (
    ROUND_DOWN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)

# No position comes near this; past it an amount is a mistake, not a position
# (P3.3's ``exchange_position_amt`` of ``1e999999999`` overflowed the arithmetic).
MAX_POSITION_AMT = Decimal("1e15")
# Every error size_close can return: a plan ends REJECTED with one of them
# (apply_plans_total's reason), and the ApplyLayerSizingRefusals alert counts them.
REFUSALS = (
    "qty_below_min",
    "no_position",
    "position_mismatch",
    "invalid_safe_qty",
    "invalid_pct",
    "invalid_position_amt",
    "unsizable",
)

# The arithmetic of sizing. Decimal's default context keeps 28 digits and rounds
# half-even, so a 34-digit safe_qty of 0.0049999... divided by a lot step of 0.001
# became 5.000... *before* it was rounded down, and 0.005 was ordered. Here every
# operation rounds toward zero (all operands are positive), so no intermediate
# result can exceed its exact value, and 60 digits keep the integer number of lot
# steps exact (a position below 1e15 in steps of 1e-20 needs 35).
SIZING_CONTEXT = Context(
    prec=60, rounding=ROUND_DOWN, traps=[InvalidOperation, DivisionByZero, Overflow]
)
# For values read from outside (the exchange's filters): normalised, never rounded.
_EXACT = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


def exact_normalize(value: Decimal) -> Decimal:
    """``value`` without trailing zeros; raises ``decimal.Inexact`` rather than round it.

    ``Decimal.normalize`` rounds to the context's 28 digits (half-even, so up as
    often as down): a lot filter of 34 digits would not be the exchange's.
    """
    return value.normalize(_EXACT)


@dataclass(frozen=True)
class LotFilter:
    """A symbol's quantity rules (Binance ``LOT_SIZE`` / ``MARKET_LOT_SIZE``)."""

    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal | None = None

    def __post_init__(self) -> None:
        if not (self.step_size > 0 and self.min_qty >= 0):
            raise ValueError(f"bad lot filter {self}")

    def round_down(self, qty: Decimal) -> Decimal:
        """The largest multiple of the step that is not above ``qty`` (qty >= 0)."""
        with localcontext(SIZING_CONTEXT):
            steps = qty // self.step_size  # divide-integer: exact, or it raises
            return (steps * self.step_size).quantize(self.step_size)


@dataclass(frozen=True)
class Sizing:
    """The decision: ``qty > 0`` and a ``side``, or ``error`` and no order."""

    qty: Decimal
    side: str  # "SELL" closes a long, "BUY" closes a short
    error: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def close_side(position_amt: Decimal) -> str:
    """The order side that reduces a signed position (negative is a short)."""
    return "SELL" if position_amt > 0 else "BUY"


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


def size_close(
    *,
    safe_qty: Decimal,
    pct: Decimal,
    reported_amt: Decimal | None,
    lot: LotFilter,
    live_amt: Decimal | None = None,
) -> Sizing:
    """Size a reduce-only close.

    ``reported_amt`` is P3.3's signed ``exchange_position_amt``; ``live_amt``
    the position the executor sees now (paper book or exchange), when it
    knows one. The live position picks the side; the quantity is bounded by
    ``pct`` percent of the smaller of the two. If they disagree in sign, or
    neither is known, or the position is flat, nothing is sent. An absurd
    amount (not finite, or past :data:`MAX_POSITION_AMT`) is refused, never
    computed with.
    """
    if not (safe_qty.is_finite() and safe_qty > 0):
        return Sizing(Decimal(0), "", "invalid_safe_qty")
    if not (pct.is_finite() and Decimal(0) < pct <= Decimal(100)):
        return Sizing(Decimal(0), "", "invalid_pct")
    for amount in (reported_amt, live_amt):
        if amount is not None and not (amount.is_finite() and amount.copy_abs() < MAX_POSITION_AMT):
            return Sizing(Decimal(0), "", "invalid_position_amt", f"position {amount:.6g}")
    try:
        with localcontext(SIZING_CONTEXT):
            return _size(safe_qty, pct, reported_amt, live_amt, lot)
    except ArithmeticError as exc:  # e.g. a lot step too fine for 60 digits: send nothing
        return Sizing(Decimal(0), "", "unsizable", f"{type(exc).__name__} with lot {lot}")


def _size(
    safe_qty: Decimal,
    pct: Decimal,
    reported_amt: Decimal | None,
    live_amt: Decimal | None,
    lot: LotFilter,
) -> Sizing:
    reference = live_amt if live_amt is not None else reported_amt
    if reference is None:
        return Sizing(Decimal(0), "", "no_position", "position size unknown")
    if reference == 0:
        return Sizing(Decimal(0), "", "no_position", "position is flat")
    if reported_amt is not None and live_amt is not None and _sign(reported_amt) != _sign(live_amt):
        return Sizing(
            Decimal(0), "", "position_mismatch", f"P3.3 saw {reported_amt}, exchange has {live_amt}"
        )
    smallest = min(abs(a) for a in (reported_amt, live_amt) if a is not None)
    wanted = min(safe_qty, smallest * pct / Decimal(100))
    if lot.max_qty is not None:
        wanted = min(wanted, lot.max_qty)
    qty = lot.round_down(wanted)
    side = close_side(reference)
    if qty <= 0 or qty < lot.min_qty:
        return Sizing(qty, side, "qty_below_min", f"{wanted} rounds to {qty} < min {lot.min_qty}")
    return Sizing(qty, side)
