"""What became of an order: looked up by its client order id, never guessed.

Rule 2 of docs/BINANCE.md, the one the executor's other rules lean on: a
send whose fate is unknown (and, on resume or before a first send, a send
the journal recorded or may have lost) is settled by looking the order up
until it is found, or until Binance's ``-2013`` ("no such order") can be
believed. Binance processes a request only while ``serverTime - timestamp
<= recvWindow`` (the matching engine too: ``-5028``), so ``-2013`` proves
the send can never execute only for a lookup *started* after that window
closed (:meth:`OrderLookup.window_closes_at`, with a clock margin and the
last time-sync round trip on top). Before that, the lookups go on. Lookups
that keep failing end the search with the fate unknown: the caller then
sends nothing.

:class:`RetryPolicy` holds every bound of the executor, the lookups' and the
sends' alike, so that one object says how long a step may take at most.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from apply_layer import metrics
from apply_layer.core.errors import BanActive, BinanceError, OrderNotFound, RateLimited
from apply_layer.executors.binance.client import BinanceClient
from apply_layer.executors.binance.model import OrderInfo
from apply_layer.logs import get_logger

_log = get_logger("apply_layer.binance")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on waiting and resending; the defaults suit the real testnet."""

    clock_margin_ms: int = 1000  # added to recvWindow before a send counts as expired
    lookup_backoff_sec: float = 0.25
    lookup_backoff_max_sec: float = 2.0
    max_lookup_errors: int = 8  # failed lookups (5xx, timeouts) before giving up
    max_resend_cycles: int = 2  # resends after sends that provably never executed
    max_rate_limit_waits: int = 3
    max_retry_after_sec: float = 30.0  # a longer ban fails the step instead of blocking
    max_not_processed_retries: int = 3
    final_status_polls: int = 5  # lookups of an order found still NEW


@dataclass(frozen=True)
class Resolution:
    """What the lookups proved: the order, or that it never executed, or nothing."""

    order: OrderInfo | None = None
    gone: bool = False  # provably never executed: window closed and still -2013
    detail: str = ""

    @property
    def name(self) -> str:
        """For ``apply_exchange_unknown_fate_total{resolution}``."""
        return "found" if self.order is not None else "absent" if self.gone else "unresolved"


class OrderLookup:
    """Looks orders up through ``client``, within ``policy``'s bounds."""

    def __init__(
        self,
        client: BinanceClient,
        policy: RetryPolicy,
        sleep: Callable[[float], Awaitable[Any]],
    ) -> None:
        self.client, self.policy, self._sleep = client, policy, sleep

    def window_closes_at(self, sent_at_ms: int) -> int:
        """Local ms after which a request stamped at ``sent_at_ms`` can no longer execute."""
        margin = self.policy.clock_margin_ms + self.client.rtt_ms
        return sent_at_ms + self.client.recv_window_ms + margin

    async def resolve(self, symbol: str, cid: str, last_sent_ms: int) -> Resolution:
        """Look ``cid`` up until found, or until provably gone, or until lookups fail."""
        p, closes_at = self.policy, self.window_closes_at(last_sent_ms)
        errors, delay = 0, p.lookup_backoff_sec
        while True:
            started = self.client.local_ms()
            try:
                info = await self.client.query_order(symbol, cid)
            except OrderNotFound:
                if started >= closes_at:
                    return Resolution(gone=True)
                wait = min(delay, (closes_at - started) / 1000 + 0.001)
            except BinanceError as exc:
                errors += 1
                if not isinstance(exc, BanActive):  # refused here: the exchange was not asked
                    metrics.EXCHANGE_LOOKUP_ERRORS.inc()
                if errors > p.max_lookup_errors or (
                    isinstance(exc, RateLimited)
                    and (exc.retry_after_sec or 0) > p.max_retry_after_sec
                ):
                    detail = f"fate of {cid} unknown after {errors} failed lookups: {exc}"
                    return Resolution(detail=detail)
                wait = delay
                if isinstance(exc, RateLimited) and exc.retry_after_sec is not None:
                    wait = max(wait, exc.retry_after_sec)
                _log.warning("binance_lookup_failed", cid=cid, reason=str(exc), errors=errors)
            else:
                return Resolution(order=await self.settle(symbol, info))
            await self._sleep(wait)
            delay = min(delay * 2, p.lookup_backoff_max_sec)

    async def settle(self, symbol: str, info: OrderInfo) -> OrderInfo:
        """A MARKET order found NEW is looked at a few more times for its fills."""
        delay = self.policy.lookup_backoff_sec
        for _ in range(self.policy.final_status_polls):
            if info.final:
                break
            await self._sleep(delay)
            try:
                info = await self.client.query_order(symbol, info.client_order_id)
            except BinanceError:
                continue
        return info
