"""What an order is sized against: the symbol's lot rules and the account's position.

The lot rules come from ``GET /fapi/v1/exchangeInfo``: loaded at start, and
loaded again when an order needs them and the copy is older than the TTL
(15 min by default). If that reload fails, the stale copy is used (it beats
none); only with no copy at all does the failure reach the order. The
position is read fresh before every order, and only in one-way mode: in
hedge mode a reduce-only close cannot be sent, so :class:`HedgeMode` is
raised instead of guessing which side to close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal, localcontext

from apply_layer.core.errors import BinanceError, HedgeMode
from apply_layer.core.sizing import SIZING_CONTEXT
from apply_layer.executors.binance.client import BinanceClient
from apply_layer.executors.binance.model import ExchangeRules, SymbolRules
from apply_layer.logs import get_logger

_log = get_logger("apply_layer.binance")


class Market:
    """The exchange's lot rules (cached) and the account's position, through ``client``."""

    def __init__(
        self, client: BinanceClient, *, ttl_sec: float, clock: Callable[[], float]
    ) -> None:
        self.client, self._ttl, self._clock = client, ttl_sec, clock
        self.rules = ExchangeRules()  # as last loaded
        self._rules_at: float | None = None
        self._rules_lock = asyncio.Lock()

    async def load_rules(self) -> None:
        async with self._rules_lock:
            self.rules = await self.client.exchange_rules()
            self._rules_at = self._clock()

    async def rules_for(self, symbol: str) -> SymbolRules | None:
        """Cached filters, refreshed when older than the TTL (stale ones beat none)."""
        stale = self._rules_at is None or self._clock() - self._rules_at >= self._ttl
        if stale:
            try:
                await self.load_rules()
            except BinanceError as exc:
                if not self.rules:
                    raise
                _log.warning("binance_exchange_info_stale", reason=str(exc))
        return self.rules.get(symbol)

    async def position(self, symbol: str) -> Decimal:
        """The account's signed position in ``symbol`` now (one-way mode only)."""
        rows = await self.client.position_rows(symbol)
        if any(side != "BOTH" for side, _ in rows):
            raise HedgeMode("account is in hedge mode; only one-way mode is supported")
        with localcontext(SIZING_CONTEXT):  # toward zero: a sum never grows a position
            return sum((amt for _, amt in rows), Decimal(0))
