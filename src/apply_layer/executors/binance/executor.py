"""``testnet``: a reduce-only MARKET close on Binance USD-M futures, sent exactly once.

The exactly-once rules, decided here and in the modules this one drives
(docs/BINANCE.md explains them against Binance's docs): the send loop and what
each failed send means in ``send``, the lookups before a send in ``adoption``,
the sizing in ``close_size``, the lookups they rely on in ``lookup``, the lot
rules and the position an order is sized against in ``market``:

1. Every send is journalled first (``OrderLog.record_attempt``); if the journal
   cannot be written, nothing is sent and the journal's exception propagates
   (the service leaves the plan pending for recovery; it is not an exchange
   answer, so it is not turned into a final result here).
2. A send whose fate is unknown (timeout, dropped connection, 503 "Unknown
   error", ``-1006``/``-1007``, other 5xx) is never repeated blindly: the order is
   looked up by its client order id until it is found, or until the last
   send's ``recvWindow`` (plus a clock margin) has closed and Binance still
   says ``-2013``. Binance rejects a request once ``serverTime - timestamp >
   recvWindow``, so only then can that send no longer execute, and only then
   is the same client order id sent again (a bounded number of times).
3. ``execute`` starts by reading earlier attempts: after a crash mid-send the
   order is looked up first and, if absent, sent only once the window of the
   last attempt has closed.
4. Before the first send the journal knows of, the order is looked up too:
   Redis may have lost the record of an earlier send (a restart from an
   older state, a failover), and Binance accepts a client order id again
   once its first order is filled. An order found is *adopted* (reported,
   with ``adopted``, never sent again). The journal says until when a send
   may have been made unseen (``OrderLog.unrecorded_until_ms``); a
   "no such order" answer counts only once that moment's window has closed,
   and if the journal's Redis changes between the lookup and the send, the
   lookup is made again.
5. Definite rejections end the step as ``REJECTED``; 429/418 wait out
   ``Retry-After``; nothing is ever guessed: what cannot be determined ends
   ``FAILED order_unknown``; sends that provably never executed, given up on
   after a bounded number, end ``FAILED order_not_placed``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any

import httpx
from pydantic import SecretStr

from apply_layer.core.check_line import CheckLine
from apply_layer.core.errors import BinanceConfigError, RetryLater, SendRecordRefused
from apply_layer.core.outcomes import StepResult
from apply_layer.executors.base import OrderLog, OrderRef, OrderRequest, Prepared, SendWatch
from apply_layer.executors.binance import adoption
from apply_layer.executors.binance.client import KEEPALIVE_SEC, BinanceClient
from apply_layer.executors.binance.close_size import size_order
from apply_layer.executors.binance.lookup import OrderLookup, RetryPolicy
from apply_layer.executors.binance.market import Market
from apply_layer.executors.binance.model import SymbolRules
from apply_layer.executors.binance.preflight import preflight
from apply_layer.executors.binance.readahead import ReadAhead
from apply_layer.executors.binance.send import Sender
from apply_layer.logs import get_logger
from apply_layer.settings import Settings

_log = get_logger("apply_layer.binance")


# Reads overtaken by another instance's record (AttemptsChanged, PositionMoved) are made
# again under the lease, where that cannot happen again; this bounds it all the same.
MAX_READ_AGAIN = 3
# Plans read ahead for and then not sent in any minute (blocked): weight 6 each
# (positionRisk 5, lookup 1), so at most 360 of the IP's 2,400 a minute go for nothing.
WASTED_PER_MIN = 60


class BinanceExecutor:
    """Executor protocol over :class:`BinanceClient` (see the module docstring)."""

    mode = "testnet"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr | None,
        api_secret: SecretStr | None,
        recv_window_ms: int = 5000,
        allowlist: Iterable[str] = ("BTCUSDT",),
        http_timeout_sec: float | httpx.Timeout = 10.0,
        exchange_info_ttl_sec: float = 900.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        keepalive_sec: float = KEEPALIVE_SEC,
        wasted_per_min: int = WASTED_PER_MIN,
    ) -> None:
        timeout = (
            http_timeout_sec
            if isinstance(http_timeout_sec, httpx.Timeout)
            else httpx.Timeout(http_timeout_sec, connect=min(http_timeout_sec, 5.0))
        )
        self.client = BinanceClient(
            base_url=base_url,
            api_key=api_key,
            api_secret=api_secret,
            recv_window_ms=recv_window_ms,
            timeout=timeout,
            clock=clock,
            transport=transport,
            keepalive_sec=keepalive_sec,
        )
        self.allowlist = tuple(allowlist)
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self.lookup = OrderLookup(self.client, self.policy, sleep)
        self.market = Market(self.client, ttl_sec=exchange_info_ttl_sec, clock=clock)
        self.sender = Sender(self.client, self.lookup, self.market, self.policy, sleep)
        self.wasted_per_min = wasted_per_min
        self._wasted: deque[float] = deque()  # when each read ahead for nothing was dropped

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BinanceExecutor:
        kwargs: dict[str, Any] = {
            "base_url": settings.binance_base_url,
            "api_key": settings.binance_api_key,
            "api_secret": settings.binance_api_secret,
            "recv_window_ms": settings.binance_recv_window_ms,
            "http_timeout_sec": settings.binance_http_timeout_sec,
            "keepalive_sec": settings.binance_keepalive_sec,
            "allowlist": tuple(settings.allowlist),
        }
        return cls(**(kwargs | overrides))

    async def start(self) -> None:
        if not self.client.has_credentials:
            raise BinanceConfigError(
                "testnet mode needs APPLY_BINANCE_API_KEY and APPLY_BINANCE_API_SECRET "
                "(or BINANCE_TESTNET_API_KEY / BINANCE_TESTNET_API_SECRET)"
            )
        await self.client.open()
        await self.client.sync_time()
        await self.market.load_rules()

    async def close(self) -> None:
        await self.client.aclose()

    async def preflight(self) -> list[CheckLine]:
        return await preflight(self.client, self.market, self.allowlist)

    def prepare(
        self, plan_id: str, symbol: str, client_order_id: str, watch: SendWatch
    ) -> ReadAhead | None:
        """Start the lookup and the position read of a claimed plan's order, side by
        side, while it waits for its permits (``readahead``).

        A plan read ahead for and then blocked (a permit denied or missing) spent
        weight 6 of the IP's 2,400 a minute that P3.3 shares, for nothing: once
        ``wasted_per_min`` such plans were counted in the last minute, plans read
        after their permits, as before (None), until the minute has passed.
        """
        now = time.monotonic()
        while self._wasted and now - self._wasted[0] >= 60.0:
            self._wasted.popleft()
        if len(self._wasted) >= self.wasted_per_min:
            _log.info(
                "binance_read_ahead_skipped", plan=plan_id, wasted_per_min=self.wasted_per_min
            )
            return None
        return ReadAhead(
            self.lookup,
            self.market,
            symbol,
            client_order_id,
            watch,
            on_waste=lambda: self._wasted.append(time.monotonic()),
        )

    async def execute(
        self, order: OrderRequest, log: OrderLog, prepared: Prepared | None = None
    ) -> StepResult:
        ahead = prepared if isinstance(prepared, ReadAhead) else None
        if ahead is not None and ahead.client_order_id != order.client_order_id:
            ahead = None  # read for another id (a resumed order's): of no use here
        if ahead is not None:
            ahead.used = True  # its weight was not wasted, whatever it is still worth
        try:
            for _ in range(MAX_READ_AGAIN):
                try:
                    return await self._execute(order, log, ahead)
                except SendRecordRefused as exc:
                    # Nothing was recorded or sent: what was read is overtaken. Read
                    # again under the lease (where no other instance can record).
                    _log.warning("binance_reads_overtaken", plan=order.plan_id, reason=str(exc))
                    ahead = None
            raise RetryLater(f"{order.client_order_id}: reads overtaken {MAX_READ_AGAIN} times")
        finally:
            if prepared is not None:
                prepared.cancel()

    async def _execute(
        self, order: OrderRequest, log: OrderLog, ahead: ReadAhead | None
    ) -> StepResult:
        earlier = await log.attempts()  # journal errors propagate: the service retries later
        unseen = log.unrecorded_until_ms()
        if earlier:
            # A previous run sent (or was about to send) this order, then stopped.
            resumed = await adoption.resume(self.lookup, order, earlier, unseen)
            if resumed is not None:
                return resumed
            ahead = None  # its position was read before this order was sent: read again
        else:
            adopted = await adoption.adopt_existing(self.lookup, order, unseen, ahead)
            if adopted is not None:
                return adopted
        sized = await size_order(self.market, order, unseen, ahead)
        if isinstance(sized, StepResult):
            return sized
        return await self.sender.send(order, log, sized, checked_until=unseen)

    async def position(self, symbol: str) -> Decimal:
        """The account's signed position in ``symbol`` now (one-way mode only)."""
        return await self.market.position(symbol)

    def rules(self, symbol: str) -> SymbolRules | None:
        """The symbol's lot rules as last loaded (``start`` loads them)."""
        return self.market.rules.get(symbol)

    async def find_order(self, ref: OrderRef, unseen_ms: int) -> StepResult | None:
        """Before a plan ends without an order: one the journal lost, found and adopted
        (``adoption.find_order``); a lookup that cannot be completed is a FAILED
        ``order_unknown`` step, never a guess."""
        return await adoption.find_order(self.lookup, ref, unseen_ms)
