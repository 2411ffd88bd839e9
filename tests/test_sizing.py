"""Sizing: safe_qty, bounded by pct of the position, rounded down to the lot step."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

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
