"""Sizing: safe_qty, bounded by pct of the position, rounded down to the lot step."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apply_layer.executors.base import OrderRequest
from apply_layer.executors.paper import PaperExecutor
from apply_layer.sizing import LotFilter, size_close

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


@pytest.mark.parametrize("amount", ["1e999999999", "-1e999999999", "1e15", "NaN", "-Infinity"])
def test_an_absurd_position_is_refused_not_computed_with(amount: str) -> None:
    # 1e999999999 raised decimal.Overflow out of sizing (issue 13).
    for reported, live in ((D(amount), None), (D("0.01"), D(amount))):
        s = size_close(safe_qty=D("1"), pct=D(75), reported_amt=reported, live_amt=live, lot=BTC)
        assert (s.ok, s.error, s.qty) == (False, "invalid_position_amt", D(0))


def test_a_lot_step_too_fine_to_compute_sends_nothing() -> None:
    fine = LotFilter(step_size=D("1e-40"), min_qty=D(0))
    s = size_close(safe_qty=D("1"), pct=D(100), reported_amt=D("123456789"), lot=fine)
    assert (s.ok, s.error) == (False, "unsizable")


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

    class Log:
        async def attempts(self) -> list[int]:
            return []

        async def record_attempt(self, sent_at_ms: int, *, quantity: Decimal, side: str) -> None:
            return None

    def order(plan: str, reported: str) -> OrderRequest:
        return OrderRequest(plan, "BTCUSDT", "CLOSE_FULL", D(100), D("0.005"), D(reported))

    poison = await exchange.execute(order("p1", "1e999999999"), Log())
    assert (poison.status, poison.error) == ("REJECTED", "invalid_position_amt")
    assert "BTCUSDT" not in exchange.positions
    fine = await exchange.execute(order("p2", "0.01"), Log())
    assert (fine.status, fine.quantity) == ("EXECUTED", D("0.005"))
    assert exchange.positions["BTCUSDT"] == D("0.005")
