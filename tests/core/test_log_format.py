"""The marker lines and the escaping of log values (pure), as exact text.

The ``[PERMIT_WAIT]`` lines are a contract (docs/CONTRACT.md): operators grep
for them and ``apply-layer stats`` parses them, so they are compared here byte
for byte. tests/test_logs.py holds the same lines against structlog.
"""

from __future__ import annotations

from decimal import Decimal

from apply_layer.core.log_format import (
    PERMIT_WAIT,
    escape_controls,
    format_qty,
    permit_block_line,
    permit_ok_line,
)


def test_printable_text_comes_back_unchanged() -> None:
    for text in ("", "plain", "plan=p1 reason=a:b", "€ ü 漢", "'\"\\"):
        assert escape_controls(text) == text


def test_each_control_character_becomes_its_escape() -> None:
    assert escape_controls("\n") == "\\n"
    assert escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_controls("\x1b[31mred") == "\\x1b[31mred"
    assert escape_controls("x\x85y\x7f") == "x\\x85y\\x7f"
    assert escape_controls("\u2028\u2029") == "\\u2028\\u2029"
    assert escape_controls("\u202eevil") == "\\u202eevil"
    assert escape_controls("a\xa0b") == "a\\xa0b"  # a space, but not the ASCII one
    assert escape_controls("it's\n") == "it's\\n"  # the quote stays itself


def test_printable_characters_beside_a_control_stay_themselves() -> None:
    # Only the unprintable ones are escaped: a backslash (whose repr is doubled)
    # and quotes keep their one character even when the text also needs escaping.
    assert escape_controls("C:\\dir\n") == "C:\\dir\\n"
    assert escape_controls("\\\x00\"'") == "\\\\x00\"'"
    assert escape_controls("é\t漢") == "é\\t漢"


def test_a_quantity_is_plain_decimal_text() -> None:
    assert format_qty(None) == "none"
    assert format_qty(Decimal("1.500")) == "1.5"
    assert format_qty(Decimal("0.002")) == "0.002"
    assert format_qty(Decimal("2.0")) == "2"
    assert format_qty(Decimal(100)) == "100"  # no point: trailing zeros are digits
    assert format_qty(Decimal("1E+2")) == "100"
    assert format_qty(Decimal("1E-8")) == "0.00000001"
    assert format_qty(Decimal("-0.50")) == "-0.5"
    assert format_qty(Decimal("0.000")) == "0"
    assert format_qty(Decimal(0)) == "0"


def test_the_ok_line_written_out() -> None:
    assert PERMIT_WAIT == "[PERMIT_WAIT]"
    line = permit_ok_line("p1", "BTCUSDT", 120, Decimal("0.0020"))
    assert line == "[PERMIT_WAIT] OK plan=p1 symbol=BTCUSDT wait_ms=120 safe_qty=0.002"
    assert permit_ok_line("p2", "ETHUSDT", 0, None) == (
        "[PERMIT_WAIT] OK plan=p2 symbol=ETHUSDT wait_ms=0 safe_qty=none"
    )


def test_the_block_line_written_out_with_each_ttl_in_order() -> None:
    line = permit_block_line("p1", "BTCUSDT", 1200, "missing_p33", {"governor": 55, "p33": -2})
    assert line == (
        "[PERMIT_WAIT] BLOCK plan=p1 symbol=BTCUSDT wait_ms=1200 reason=missing_p33"
        " governor_ttl=55 p33_ttl=-2"
    )
    assert permit_block_line("p1", "BTCUSDT", 5, "kill_switch", {}) == (
        "[PERMIT_WAIT] BLOCK plan=p1 symbol=BTCUSDT wait_ms=5 reason=kill_switch"
    )
