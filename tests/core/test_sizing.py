"""Sizing: safe_qty, bounded by pct of the position, rounded down to the lot step."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apply_layer.core.sizing import LotFilter, Sizing, close_side, size_close
from apply_layer.executors.base import OrderRequest
from apply_layer.executors.paper import PaperExecutor
from tests.harness import MemoryLog

BTC = LotFilter(step_size=Decimal("0.001"), min_qty=Decimal("0.001"), max_qty=Decimal("120"))
D = Decimal


def test_safe_qty_rounded_down_to_the_step() -> None:
    s = size_close(safe_qty=D("0.0089"), pct=D(100), reported_amt=D("0.01"), lot=BTC)
    assert (s.ok, s.qty, s.side) == (True, D("0.008"), "SELL")
    assert str(s.qty) == "0.008"


def test_pct_of_the_reported_position_bounds_safe_qty() -> None:
    s = size_close(safe_qty=D("1"), pct=D(75), reported_amt=D("0.010"), lot=BTC)
    assert s.qty == D("0.007")  # 75% of 0.010 = 0.0075, rounded down


def test_a_short_is_closed_with_a_buy() -> None:
    s = size_close(safe_qty=D("0.004"), pct=D(50), reported_amt=D("-0.010"), lot=BTC)
    assert (s.qty, s.side) == (D("0.004"), "BUY")


def test_the_live_position_bounds_and_picks_the_side() -> None:
    s = size_close(
        safe_qty=D("1"), pct=D(100), reported_amt=D("0.010"), live_amt=D("0.004"), lot=BTC
    )
    assert (s.qty, s.side) == (D("0.004"), "SELL")


def test_refusals() -> None:
    below = size_close(safe_qty=D("0.0009"), pct=D(100), reported_amt=D("1"), lot=BTC)
    assert below.error == "qty_below_min" and not below.ok
    assert size_close(safe_qty=D("1"), pct=D(25), reported_amt=D("0.002"), lot=BTC).error == (
        "qty_below_min"
    )
    assert (
        size_close(safe_qty=D("1"), pct=D(100), reported_amt=None, lot=BTC).error == "no_position"
    )
    assert (
        size_close(safe_qty=D("1"), pct=D(100), reported_amt=D(0), lot=BTC).error == "no_position"
    )
    mismatch = size_close(
        safe_qty=D("1"), pct=D(100), reported_amt=D("1"), live_amt=D("-1"), lot=BTC
    )
    assert mismatch.error == "position_mismatch"
    assert (
        size_close(safe_qty=D("1"), pct=D(0), reported_amt=D("1"), lot=BTC).error == "invalid_pct"
    )


def test_max_qty_caps() -> None:
    s = size_close(safe_qty=D("500"), pct=D(100), reported_amt=D("500"), lot=BTC)
    assert s.qty == D("120")


qtys = st.decimals(min_value=D("0.000001"), max_value=D("1000"), places=6)


@given(
    qtys,
    st.sampled_from([D(25), D(50), D(75), D(100)]),
    qtys,
    st.booleans(),
    st.sampled_from([D("0.001"), D("0.01"), D("0.1"), D("1"), D("0.005")]),
)
def test_never_more_than_safe_qty_or_pct_and_always_on_the_step(
    safe: Decimal, pct: Decimal, position: Decimal, short: bool, step: Decimal
) -> None:
    lot = LotFilter(step_size=step, min_qty=step)
    amt = -position if short else position
    s = size_close(safe_qty=safe, pct=pct, reported_amt=amt, lot=lot)
    assert s.qty <= safe
    assert s.qty <= position * pct / 100
    assert s.qty % step == 0
    if s.ok:
        assert s.qty >= lot.min_qty and s.side == ("BUY" if short else "SELL")
    else:
        assert s.error == "qty_below_min"


# ---- every refusal, whole: no quantity, no side, a reason an operator can read -------------

LOT = LotFilter(step_size=D("0.001"), min_qty=D("0.005"), max_qty=D("120"))  # min > step
Z = D(0)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"safe_qty": D(0)}, Sizing(Z, "", "invalid_safe_qty")),
        ({"safe_qty": D("-0.01")}, Sizing(Z, "", "invalid_safe_qty")),
        ({"safe_qty": D("NaN")}, Sizing(Z, "", "invalid_safe_qty")),
        ({"safe_qty": D("Infinity")}, Sizing(Z, "", "invalid_safe_qty")),
        ({"pct": D(0)}, Sizing(Z, "", "invalid_pct")),
        ({"pct": D("-25")}, Sizing(Z, "", "invalid_pct")),
        ({"pct": D("100.01")}, Sizing(Z, "", "invalid_pct")),
        ({"reported_amt": None}, Sizing(Z, "", "no_position", "position size unknown")),
        ({"reported_amt": D(0)}, Sizing(Z, "", "no_position", "position is flat")),
        (
            {"reported_amt": D(1), "live_amt": D(0)},
            Sizing(Z, "", "no_position", "position is flat"),
        ),
        (
            {"reported_amt": D(2), "live_amt": D(-2)},
            Sizing(Z, "", "position_mismatch", "P3.3 saw 2, exchange has -2"),
        ),
        (
            {"reported_amt": D(-2), "live_amt": D("0.5")},
            Sizing(Z, "", "position_mismatch", "P3.3 saw -2, exchange has 0.5"),
        ),
        (
            {"safe_qty": D("0.0049")},
            Sizing(D("0.004"), "SELL", "qty_below_min", "0.0049 rounds to 0.004 < min 0.005"),
        ),
        (
            {"safe_qty": D("0.0009"), "reported_amt": D(-3)},
            Sizing(D("0.000"), "BUY", "qty_below_min", "0.0009 rounds to 0.000 < min 0.005"),
        ),
    ],
)
def test_each_refusal_exactly(kwargs: dict[str, Any], expected: Sizing) -> None:
    args: dict[str, Any] = {"safe_qty": D(1), "pct": D(100), "reported_amt": D(2), "lot": LOT}
    got = size_close(**(args | kwargs))
    assert got == expected and not got.ok


def test_exactly_the_minimum_is_sent() -> None:
    s = size_close(safe_qty=D("0.005"), pct=D(100), reported_amt=D(2), lot=LOT)
    assert s == Sizing(D("0.005"), "SELL") and s.ok


def test_a_zero_minimum_still_refuses_a_zero_order() -> None:
    lot = LotFilter(step_size=D("0.001"), min_qty=D(0))
    s = size_close(safe_qty=D("0.0004"), pct=D(100), reported_amt=D(2), lot=lot)
    assert (s.error, s.qty) == ("qty_below_min", D("0.000"))


def test_a_pct_of_exactly_100_and_a_tiny_one() -> None:
    assert size_close(safe_qty=D(9), pct=D(100), reported_amt=D(2), lot=LOT).qty == D(2)
    small = size_close(safe_qty=D(9), pct=D("0.5"), reported_amt=D(2), lot=LOT)
    assert small == Sizing(D("0.010"), "SELL")  # 0.5 % of 2: a pct below 1 is still a pct


def test_the_live_position_is_used_even_when_p33_reported_none() -> None:
    s = size_close(safe_qty=D(9), pct=D(50), reported_amt=None, live_amt=D(-4), lot=LOT)
    assert s == Sizing(D("2.000"), "BUY")


def test_the_smaller_position_bounds_whichever_reported_it() -> None:
    s = size_close(safe_qty=D(9), pct=D(100), reported_amt=D("1.5"), live_amt=D(4), lot=LOT)
    assert s == Sizing(D("1.500"), "SELL")
    s = size_close(safe_qty=D(9), pct=D(100), reported_amt=D(-4), live_amt=D("-1.5"), lot=LOT)
    assert s == Sizing(D("1.500"), "BUY")


@pytest.mark.parametrize(
    ("amt", "side"),
    [(D("0.3"), "SELL"), (D(1), "SELL"), (D(7), "SELL"), (D("-0.3"), "BUY"), (D(-7), "BUY")],
)
def test_close_side_for_positions_of_every_size(amt: Decimal, side: str) -> None:
    assert close_side(amt) == side
    s = size_close(safe_qty=D("0.1"), pct=D(100), reported_amt=amt, live_amt=amt, lot=LOT)
    assert s == Sizing(D("0.100"), side)


@pytest.mark.parametrize(
    ("step", "minimum"),
    [(D(0), D("0.001")), (D("-0.001"), D("0.001")), (D("0.001"), D("-0.001"))],
)
def test_an_impossible_lot_filter_is_refused(step: Decimal, minimum: Decimal) -> None:
    with pytest.raises(ValueError, match="bad lot filter"):
        LotFilter(step_size=step, min_qty=minimum)


def test_a_zero_minimum_lot_filter_is_allowed() -> None:
    assert LotFilter(step_size=D("0.1"), min_qty=D(0)).min_qty == 0


def test_round_down_keeps_the_step_exponent() -> None:
    assert str(LOT.round_down(D("1.23456"))) == "1.234"
    assert str(LotFilter(step_size=D(1), min_qty=D(1)).round_down(D("7.9"))) == "7"


def test_sign_agreement_for_small_and_zero_positions() -> None:
    flat_at_p33 = size_close(safe_qty=D(9), pct=D(100), reported_amt=D(0), live_amt=D(2), lot=LOT)
    assert flat_at_p33 == Sizing(Z, "", "position_mismatch", "P3.3 saw 0, exchange has 2")
    small = size_close(safe_qty=D(9), pct=D(100), reported_amt=D("0.5"), live_amt=D(2), lot=LOT)
    assert small == Sizing(D("0.500"), "SELL")
    small_short = size_close(
        safe_qty=D(9), pct=D(100), reported_amt=D("-0.5"), live_amt=D(-2), lot=LOT
    )
    assert small_short == Sizing(D("0.500"), "BUY")


def test_p33_flat_and_the_exchange_short_disagree() -> None:
    s = size_close(safe_qty=D(9), pct=D(100), reported_amt=D(0), live_amt=D(-2), lot=LOT)
    assert s == Sizing(Z, "", "position_mismatch", "P3.3 saw 0, exchange has -2")


@pytest.mark.parametrize("amount", ["1e999999999", "-1e999999999", "1e15", "NaN", "-Infinity"])
def test_an_absurd_position_is_refused_not_computed_with(amount: str) -> None:
    # 1e999999999 raised decimal.Overflow out of sizing (issue 13).
    for reported, live in ((D(amount), None), (D("0.01"), D(amount))):
        s = size_close(safe_qty=D("1"), pct=D(75), reported_amt=reported, live_amt=live, lot=BTC)
        # A refusal carries no quantity and no side, and names the amount it refused.
        assert s == Sizing(Z, "", "invalid_position_amt", f"position {D(amount):.6g}")


def test_a_lot_step_too_fine_to_compute_sends_nothing() -> None:
    fine = LotFilter(step_size=D("1e-60"), min_qty=D(0))  # 1e60 steps: past the 60 digits
    s = size_close(safe_qty=D("1"), pct=D(100), reported_amt=D("123456789"), lot=fine)
    assert s == Sizing(Z, "", "unsizable", f"InvalidOperation with lot {fine}")


@given(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.one_of(st.none(), st.decimals(allow_nan=True, allow_infinity=True)),
    st.one_of(st.none(), st.decimals(allow_nan=True, allow_infinity=True)),
)
def test_sizing_never_raises(safe: Decimal, pct: Decimal, reported: Any, live: Any) -> None:
    s = size_close(safe_qty=safe, pct=pct, reported_amt=reported, live_amt=live, lot=BTC)
    assert s.ok == (s.error == "") and (not s.ok or BTC.min_qty <= s.qty <= BTC.max_qty)  # type: ignore[operator]


async def test_an_absurd_amount_does_not_poison_the_paper_book() -> None:
    """It became the simulated position, and every later plan failed until restart."""
    exchange = PaperExecutor()

    def order(plan: str, reported: str) -> OrderRequest:
        return OrderRequest(plan, "BTCUSDT", "CLOSE_FULL", D(100), D("0.005"), D(reported))

    poison = await exchange.execute(order("p1", "1e999999999"), MemoryLog())
    assert (poison.status, poison.error) == ("REJECTED", "invalid_position_amt")
    assert "BTCUSDT" not in exchange.positions
    fine = await exchange.execute(order("p2", "0.01"), MemoryLog())
    assert (fine.status, fine.quantity) == ("EXECUTED", D("0.005"))
    assert exchange.positions["BTCUSDT"] == D("0.005")
