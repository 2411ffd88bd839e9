"""The send loop (rules 1, 2 and 5 of ``executor``): one journalled attempt per
request, bounded, never blind, and what each failed request means for the step.

:meth:`Sender.send` records an attempt, sends it, and hands a failed request
to :meth:`Sender._after_failure`, the one place that maps the exchange's
answer to an outcome: a final result, or None to send again (after a clock
resync, a ``Retry-After`` wait, a back-off, or a lookup that proved the last
send never executed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from apply_layer import metrics
from apply_layer.core.errors import (
    BinanceError,
    ExchangeRejected,
    NotProcessed,
    NotReplicated,
    RateLimited,
    StatusUnknown,
    TimestampRejected,
)
from apply_layer.core.log_format import format_qty
from apply_layer.core.outcomes import StepResult
from apply_layer.core.statuses import StepStatus
from apply_layer.executors.base import OrderLog, OrderRequest
from apply_layer.executors.binance.client import BinanceClient
from apply_layer.executors.binance.close_size import Sized, size_order
from apply_layer.executors.binance.lookup import OrderLookup, RetryPolicy
from apply_layer.executors.binance.market import Market
from apply_layer.executors.binance.outcome import outcome, report
from apply_layer.logs import get_logger

_log = get_logger("apply_layer.binance")

# What a send can fail with and still leave the step to this loop; anything else
# propagates (journal errors: the service leaves the plan to recovery).
SendFailure = ExchangeRejected | RateLimited | NotProcessed | StatusUnknown
_SEND_FAILURES = (ExchangeRejected, RateLimited, NotProcessed, StatusUnknown)


@dataclass
class _Tries:
    """How often each bounded retry of one step was used."""

    resends: int = 0
    rate_waits: int = 0
    not_processed: int = 0
    resyncs: int = 0


class Sender:
    """Sends one sized close, journalling each attempt first (see the module docstring)."""

    def __init__(
        self,
        client: BinanceClient,
        lookup: OrderLookup,
        market: Market,
        policy: RetryPolicy,
        sleep: Callable[[float], Awaitable[Any]],
    ) -> None:
        self.client, self.lookup, self.market = client, lookup, market
        self.policy, self._sleep = policy, sleep

    async def send(
        self, order: OrderRequest, log: OrderLog, sized: Sized, *, checked_until: int
    ) -> StepResult:
        """The send loop: one journalled attempt per request, bounded, never blind.

        ``checked_until``: the unseen-send moment the last lookup accounted for.
        ``sized.mark``: the symbol's last-send mark the position read followed
        (None: read under the lease), checked by the attempt script.
        """
        qty, side, mark = sized.qty, sized.side, sized.mark
        tries = _Tries()
        while True:
            sent_at = self.client.local_ms()
            # If the journal refuses (Redis down, lease lost) this raises and nothing is sent;
            # the caller leaves the plan to recovery, which resumes through ``attempts()``.
            # AttemptsChanged / PositionMoved: nothing recorded; ``execute`` reads again.
            try:
                await log.record_attempt(sent_at, quantity=qty, side=side, position_mark=mark)
            except NotReplicated as exc:
                return outcome(
                    order, StepStatus.FAILED, "journal_not_replicated", str(exc), side, qty
                )
            mark = None  # recorded under the lease: no other send can come between now
            unseen = log.unrecorded_until_ms()
            if unseen > checked_until:
                # The record went to a Redis other than the one the lookup was made for:
                # look again (this attempt is not sent; the next one is stamped afresh).
                checked_until = unseen
                again = await self._recheck(order, unseen, sized, side, qty)
                if isinstance(again, StepResult):
                    return again
                qty, side = again.qty, again.side
                continue
            _log.info(
                "binance_order_send",
                plan=order.plan_id,
                cid=order.client_order_id,
                side=side,
                qty=format_qty(qty),
                attempt_ms=sent_at,
            )
            try:
                info = await self.client.place_market_close(
                    symbol=order.symbol,
                    side=side,
                    quantity=qty,
                    client_order_id=order.client_order_id,
                    sent_at_ms=sent_at,
                )
            except _SEND_FAILURES as exc:
                ended = await self._after_failure(exc, order, sent_at, side, qty, tries)
                if ended is not None:
                    return ended
                continue
            return report(order, await self.lookup.settle(order.symbol, info))

    async def _recheck(
        self, order: OrderRequest, unseen: int, sized: Sized, side: str, qty: Decimal
    ) -> StepResult | Sized:
        """After the journal's Redis changed under a send: the order looked up again,
        and the position read again if it was read ahead (on the other Redis's word
        that no order had gone out since). A result ends the step."""
        cid = order.client_order_id
        _log.warning("binance_recheck_after_redis_change", plan=order.plan_id, cid=cid)
        found = await self.lookup.resolve(order.symbol, cid, unseen)
        if found.order is not None:
            metrics.ORDERS_ADOPTED.inc()
            return report(order, found.order, adopted=True)
        if not found.gone:
            return outcome(order, StepStatus.FAILED, "order_unknown", found.detail, side, qty)
        if sized.mark is not None:
            return await size_order(self.market, order, unseen)
        return Sized(qty, side, None)

    async def _after_failure(
        self,
        exc: SendFailure,
        order: OrderRequest,
        sent_at: int,
        side: str,
        qty: Decimal,
        tries: _Tries,
    ) -> StepResult | None:
        """What a failed send means: the step's result, or None to send again (after
        waiting, resyncing or proving by lookup that the send never executed)."""
        p, cid = self.policy, order.client_order_id
        if isinstance(exc, ExchangeRejected):
            if isinstance(exc, TimestampRejected) and not tries.resyncs:
                tries.resyncs += 1  # rejected, so it never executed: resync and resend once
                await self.resync()
                return None
            metrics.EXCHANGE_REJECTIONS.inc()
            error = f"exchange_rejected:{exc.tag}"
            return outcome(order, StepStatus.REJECTED, error, exc.msg, side, qty)
        if isinstance(exc, RateLimited):
            tries.rate_waits += 1
            wait = exc.retry_after_sec if exc.retry_after_sec is not None else 1.0
            if tries.rate_waits > p.max_rate_limit_waits or wait > p.max_retry_after_sec:
                error = f"rate_limited:{exc.http_status}"
                return outcome(order, StepStatus.FAILED, error, str(exc), side, qty)
            _log.warning("binance_rate_limited", cid=cid, status=exc.http_status, wait=wait)
            await self._sleep(wait)
            return None
        if isinstance(exc, NotProcessed):
            tries.not_processed += 1
            if tries.not_processed > p.max_not_processed_retries:
                return outcome(
                    order, StepStatus.FAILED, "exchange_unavailable", str(exc), side, qty
                )
            await self._sleep(p.lookup_backoff_sec * tries.not_processed)
            return None
        # StatusUnknown: the send may have executed; look it up, never resend blindly.
        _log.warning("binance_order_status_unknown", cid=cid, reason=str(exc))
        found = await self.lookup.resolve(order.symbol, cid, sent_at)
        metrics.EXCHANGE_UNKNOWN_FATE.labels(found.name).inc()
        if found.order is not None:
            return report(order, found.order)
        if not found.gone:
            return outcome(order, StepStatus.FAILED, "order_unknown", found.detail, side, qty)
        tries.resends += 1
        if tries.resends > p.max_resend_cycles:
            # Known, not unknown: every send provably never executed.
            detail = f"{tries.resends} sends provably never executed; giving up"
            return outcome(order, StepStatus.FAILED, "order_not_placed", detail, side, qty)
        _log.warning("binance_order_resend", cid=cid, after_ms=sent_at)
        return None

    async def resync(self) -> None:
        """Resync the clock with the exchange's; a failure is logged, not raised."""
        try:
            await self.client.sync_time()
        except BinanceError as exc:
            _log.warning("binance_time_sync_failed", reason=str(exc))
