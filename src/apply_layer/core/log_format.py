"""The marker line's format and the escaping of log values (pure).

Operators grep journald for ``[PERMIT_WAIT]`` and ``apply-layer stats``
parses those lines, so their text is a contract (docs/CONTRACT.md): it is
written here, once, with no logging setup in sight, so that the pure core
(outcomes, marker_stats, the Binance model) can use it without importing structlog.
``logs.py`` holds the setup only; callers import these names from here.

No value reaches a log line with a control character in it (issue 21,
finding 6): :func:`escape_controls` writes each such character as its Python
escape (``\\n``, ``\\x1b``, ``\\u2028``).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

PERMIT_WAIT = "[PERMIT_WAIT]"


def escape_controls(text: str) -> str:
    """``text`` with every character that is not printable written as its escape.

    "Not printable" is :meth:`str.isprintable`'s: the C0 and C1 controls
    (``\\n``, ``\\r``, ``\\t``, ESC, NEL U+0085), DEL, the line and paragraph
    separators U+2028/U+2029, format characters such as the bidi overrides,
    and every space but the ASCII one. Ordinary text comes back unchanged.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    return repr(ch)[1:-1]  # '\\n', '\\x1b', '\\x85', '\\u2028': never a quote (printable)


def format_qty(value: Decimal | None) -> str:
    """A quantity as plain decimal text: no exponent, no float artefacts."""
    if value is None:
        return "none"
    text = format(value, "f")  # always a digit before any point: never empty
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def permit_ok_line(plan_id: str, symbol: str, wait_ms: int, safe_qty: Decimal | None) -> str:
    return (
        f"{PERMIT_WAIT} OK plan={plan_id} symbol={symbol} wait_ms={wait_ms} "
        f"safe_qty={format_qty(safe_qty)}"
    )


def permit_block_line(
    plan_id: str, symbol: str, wait_ms: int, reason: str, ttls: Mapping[str, int]
) -> str:
    tail = "".join(f" {issuer}_ttl={ttl}" for issuer, ttl in ttls.items())
    return (
        f"{PERMIT_WAIT} BLOCK plan={plan_id} symbol={symbol} wait_ms={wait_ms} "
        f"reason={reason}{tail}"
    )
