"""``apply-layer check``'s Binance lines: clock, credentials, position mode, filters."""

from __future__ import annotations

from collections.abc import Iterable

from apply_layer.core.check_line import CheckLine
from apply_layer.core.errors import BinanceError
from apply_layer.executors.binance.client import BinanceClient
from apply_layer.executors.binance.market import Market

HEDGE_REFUSED = (
    "hedge mode (dualSidePosition=true) is refused: reduce-only closes need one-way mode; "
    "switch the account to one-way"
)


async def preflight(
    client: BinanceClient, market: Market, allowlist: Iterable[str]
) -> list[CheckLine]:
    """What ``check`` reports for the exchange (docs/BINANCE.md, "apply-layer check")."""
    await client.open()
    lines: list[CheckLine] = []
    try:
        offset = await client.sync_time()
        detail = f"{offset:+d} ms (round trip {client.rtt_ms} ms), compensated"
        lines.append(CheckLine("binance clock offset", True, detail))
    except BinanceError as exc:
        lines.append(CheckLine("binance clock offset", False, f"GET /fapi/v1/time: {exc}"))
    if not client.has_credentials:
        lines.append(
            CheckLine("binance credentials", False, "APPLY_BINANCE_API_KEY/SECRET not set")
        )
    else:
        try:
            dual = await client.dual_side_position()
        except BinanceError as exc:
            lines.append(CheckLine("binance credentials", False, f"signed call: {exc}"))
        else:
            lines.append(CheckLine("binance credentials", True, "signed call accepted"))
            detail = HEDGE_REFUSED if dual else "one-way"
            lines.append(CheckLine("binance position mode", not dual, detail))
    try:
        await market.load_rules()
    except BinanceError as exc:
        lines.append(CheckLine("binance exchangeInfo", False, str(exc)))
        return lines
    for symbol in allowlist:
        rules = market.rules.get(symbol)
        problem = market.rules.problem(symbol) or "not listed on the exchange"
        detail = rules.describe() if rules else problem
        lines.append(CheckLine(f"binance filters {symbol}", rules is not None, detail))
    return lines
