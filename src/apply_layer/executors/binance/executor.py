"""``testnet``: a reduce-only MARKET close on Binance USD-M futures, sent exactly once.

The exactly-once rules, decided here (docs/BINANCE.md explains them against
Binance's docs; the lookups they rely on are in ``lookup``, the lot rules and
the position an order is sized against in ``market``):

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
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import httpx
from pydantic import SecretStr

from apply_layer import metrics
from apply_layer.checks import CheckLine
from apply_layer.errors import (
    AttemptsChanged,
    BinanceConfigError,
    BinanceError,
    ExchangeInfoInvalid,
    ExchangeRejected,
    HedgeMode,
    NotProcessed,
    NotReplicated,
    PositionMoved,
    RateLimited,
    RetryLater,
    StatusUnknown,
    TimestampRejected,
)
from apply_layer.executors.base import OrderLog, OrderRef, OrderRequest, Prepared, SendWatch
from apply_layer.executors.binance.client import KEEPALIVE_SEC, BinanceClient
from apply_layer.executors.binance.lookup import OrderLookup, RetryPolicy
from apply_layer.executors.binance.market import Market
from apply_layer.executors.binance.model import OrderInfo, SymbolRules, step_result
from apply_layer.executors.binance.preflight import preflight
from apply_layer.executors.binance.readahead import ReadAhead
from apply_layer.log_format import format_qty
from apply_layer.logs import get_logger
from apply_layer.outcomes import StepResult
from apply_layer.settings import Settings
from apply_layer.sizing import size_close
from apply_layer.statuses import StepStatus

_log = get_logger("apply_layer.binance")


# Reads overtaken by another instance's record (AttemptsChanged, PositionMoved) are made
# again under the lease, where that cannot happen again; this bounds it all the same.
MAX_READ_AGAIN = 3
# Plans read ahead for and then not sent in any minute (blocked): weight 6 each
# (positionRisk 5, lookup 1), so at most 360 of the IP's 2,400 a minute go for nothing.
WASTED_PER_MIN = 60


@dataclass(frozen=True)
class _Sized:
    """A close sized for sending: side, quantity, and the position read's last-send mark."""

    qty: Decimal
    side: str
    mark: str | None


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
                except (AttemptsChanged, PositionMoved) as exc:
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
        cid = order.client_order_id
        earlier = await log.attempts()  # journal errors propagate: the service retries later
        unseen = log.unrecorded_until_ms()
        if earlier:
            # A previous run sent (or was about to send) this order, then stopped.
            _log.warning("binance_resume", plan=order.plan_id, cid=cid, attempts=len(earlier))
            found = await self.lookup.resolve(order.symbol, cid, max(*earlier, unseen))
            metrics.EXCHANGE_UNKNOWN_FATE.labels(found.name).inc()
            if found.order is not None:
                return self._report(order, found.order)
            if not found.gone:
                return self._result(order, StepStatus.FAILED, "order_unknown", found.detail)
            ahead = None  # its position was read before this order was sent: read again
        else:
            adopted = await self._adopt_existing(order, unseen, ahead)
            if adopted is not None:
                return adopted
        sized = await self._size(order, unseen, ahead)
        if isinstance(sized, StepResult):
            return sized
        return await self._send(order, log, sized, checked_until=unseen)

    async def _size(
        self, order: OrderRequest, unseen_ms: int, ahead: ReadAhead | None = None
    ) -> StepResult | _Sized:
        """The close's side and quantity against the position (read ahead if that read
        still stands, else now), or the step's result if it cannot be sized."""
        try:
            rules = await self.market.rules_for(order.symbol)
            if rules is None:
                problem = self.market.rules.problem(order.symbol)
                if problem:  # listed, perhaps, but its filters cannot be read: never guess them
                    return self._result(order, StepStatus.FAILED, "exchange_info_invalid", problem)
                return self._result(order, StepStatus.REJECTED, "symbol_not_listed", order.symbol)
            read = await ahead.position(unseen_ms) if ahead is not None else None
            live, mark = (
                (read.amount, read.mark)
                if read is not None
                else (await self.market.position(order.symbol), None)
            )
        except HedgeMode as exc:
            return self._result(order, StepStatus.REJECTED, "hedge_mode", str(exc))
        except ExchangeInfoInvalid as exc:
            return self._result(order, StepStatus.FAILED, "exchange_info_invalid", str(exc))
        except BinanceError as exc:
            return self._result(order, StepStatus.FAILED, "exchange_unavailable", str(exc))
        sizing = size_close(
            safe_qty=order.safe_qty,
            pct=order.pct,
            reported_amt=order.reported_amt,
            live_amt=live,
            lot=rules.lot,
        )
        if not sizing.ok:
            return self._result(order, StepStatus.REJECTED, sizing.error, sizing.detail)
        return _Sized(sizing.qty, sizing.side, mark)

    async def _adopt_existing(
        self, order: OrderRequest, unseen_ms: int, ahead: ReadAhead | None = None
    ) -> StepResult | None:
        """Before a first send: an order with this client order id must not exist already.

        The journal shows no send, but Redis may have lost one (see
        ``OrderLog.unrecorded_until_ms``): Binance refuses a duplicate client
        order id only while the first order is open, so a filled one would be
        doubled. If the order exists, it is adopted: reported, never sent
        again. "No such order" counts only once a send stamped at ``unseen_ms``
        could no longer execute; a lookup that cannot be completed sends
        nothing. A lookup read ahead stands if the Redis has not changed since it
        began: the journal showed no attempt after it (the caller's read), and
        the attempt script refuses a record if one is made before the send.
        """
        cid = order.client_order_id
        found = await ahead.lookup(unseen_ms) if ahead is not None else None
        if found is None:
            found = await self.lookup.resolve(order.symbol, cid, unseen_ms)
        if found.order is not None:
            metrics.ORDERS_ADOPTED.inc()
            _log.warning(
                "binance_order_adopted",
                plan=order.plan_id,
                cid=cid,
                order_id=found.order.order_id,
                status=found.order.status,
                why="the order exists at the exchange but not in the journal (Redis lost writes)",
            )
            return self._report(order, found.order, adopted=True)
        if not found.gone:
            detail = f"could not check whether {cid} exists, so nothing was sent: {found.detail}"
            return self._result(order, StepStatus.FAILED, "exchange_unavailable", detail)
        return None

    async def _send(
        self, order: OrderRequest, log: OrderLog, sized: _Sized, *, checked_until: int
    ) -> StepResult:
        """The send loop: one journalled attempt per request, bounded, never blind.

        ``checked_until``: the unseen-send moment the last lookup accounted for.
        ``sized.mark``: the symbol's last-send mark the position read followed
        (None: read under the lease), checked by the attempt script.
        """
        p, cid = self.policy, order.client_order_id
        qty, side, mark = sized.qty, sized.side, sized.mark
        resends = rate_waits = not_processed = resyncs = 0
        while True:
            sent_at = self.client.local_ms()
            # If the journal refuses (Redis down, lease lost) this raises and nothing is sent;
            # the caller leaves the plan to recovery, which resumes through ``attempts()``.
            # AttemptsChanged / PositionMoved: nothing recorded; ``execute`` reads again.
            try:
                await log.record_attempt(sent_at, quantity=qty, side=side, position_mark=mark)
            except NotReplicated as exc:
                return self._result(
                    order, StepStatus.FAILED, "journal_not_replicated", str(exc), side, qty
                )
            mark = None  # recorded under the lease: no other send can come between now
            unseen = log.unrecorded_until_ms()
            if unseen > checked_until:
                # The record went to a Redis other than the one the lookup was made for:
                # look again (this attempt is not sent; the next one is stamped afresh).
                checked_until = unseen
                _log.warning("binance_recheck_after_redis_change", plan=order.plan_id, cid=cid)
                found = await self.lookup.resolve(order.symbol, cid, unseen)
                if found.order is not None:
                    metrics.ORDERS_ADOPTED.inc()
                    return self._report(order, found.order, adopted=True)
                if not found.gone:
                    return self._result(
                        order, StepStatus.FAILED, "order_unknown", found.detail, side, qty
                    )
                if sized.mark is not None:
                    # The position was read ahead, on the other Redis's word that no
                    # order had gone out since: read it again, under the lease.
                    again = await self._size(order, unseen)
                    if isinstance(again, StepResult):
                        return again
                    qty, side = again.qty, again.side
                continue
            _log.info(
                "binance_order_send",
                plan=order.plan_id,
                cid=cid,
                side=side,
                qty=format_qty(qty),
                attempt_ms=sent_at,
            )
            try:
                info = await self.client.place_market_close(
                    symbol=order.symbol,
                    side=side,
                    quantity=qty,
                    client_order_id=cid,
                    sent_at_ms=sent_at,
                )
            except ExchangeRejected as exc:
                if isinstance(exc, TimestampRejected) and not resyncs:
                    resyncs += 1  # rejected, so it never executed: resync and resend once
                    await self._resync()
                    continue
                metrics.EXCHANGE_REJECTIONS.inc()
                error = f"exchange_rejected:{exc.tag}"
                return self._result(order, StepStatus.REJECTED, error, exc.msg, side, qty)
            except RateLimited as exc:
                rate_waits += 1
                wait = exc.retry_after_sec if exc.retry_after_sec is not None else 1.0
                if rate_waits > p.max_rate_limit_waits or wait > p.max_retry_after_sec:
                    error = f"rate_limited:{exc.http_status}"
                    return self._result(order, StepStatus.FAILED, error, str(exc), side, qty)
                _log.warning("binance_rate_limited", cid=cid, status=exc.http_status, wait=wait)
                await self._sleep(wait)
                continue
            except NotProcessed as exc:
                not_processed += 1
                if not_processed > p.max_not_processed_retries:
                    return self._result(
                        order, StepStatus.FAILED, "exchange_unavailable", str(exc), side, qty
                    )
                await self._sleep(p.lookup_backoff_sec * not_processed)
                continue
            except StatusUnknown as exc:
                _log.warning("binance_order_status_unknown", cid=cid, reason=str(exc))
                found = await self.lookup.resolve(order.symbol, cid, sent_at)
                metrics.EXCHANGE_UNKNOWN_FATE.labels(found.name).inc()
                if found.order is not None:
                    return self._report(order, found.order)
                if not found.gone:
                    return self._result(
                        order, StepStatus.FAILED, "order_unknown", found.detail, side, qty
                    )
                resends += 1
                if resends > p.max_resend_cycles:
                    # Known, not unknown: every send provably never executed.
                    detail = f"{resends} sends provably never executed; giving up"
                    return self._result(
                        order, StepStatus.FAILED, "order_not_placed", detail, side, qty
                    )
                _log.warning("binance_order_resend", cid=cid, after_ms=sent_at)
                continue
            return self._report(order, await self.lookup.settle(order.symbol, info))

    async def _resync(self) -> None:
        try:
            await self.client.sync_time()
        except BinanceError as exc:
            _log.warning("binance_time_sync_failed", reason=str(exc))

    async def position(self, symbol: str) -> Decimal:
        """The account's signed position in ``symbol`` now (one-way mode only)."""
        return await self.market.position(symbol)

    def rules(self, symbol: str) -> SymbolRules | None:
        """The symbol's lot rules as last loaded (``start`` loads them)."""
        return self.market.rules.get(symbol)

    async def find_order(self, ref: OrderRef, unseen_ms: int) -> StepResult | None:
        """Before a plan ends without an order: one the journal lost, found and adopted.

        The lookup of rule 4 for a plan that will send nothing
        (``exchange_truth.py``): the order is looked up by its client order
        id until found, or until "no such order" is proved by the window of a
        send made unseen until ``unseen_ms``. Lookups that keep failing are a
        FAILED ``order_unknown`` step: the plan's fate at the exchange is not
        guessed either way.
        """
        found = await self.lookup.resolve(ref.symbol, ref.client_order_id, unseen_ms)
        if found.order is not None:
            metrics.ORDERS_ADOPTED.inc()
            _log.warning(
                "binance_order_adopted",
                plan=ref.plan_id,
                cid=ref.client_order_id,
                order_id=found.order.order_id,
                status=found.order.status,
                why="the plan was ending without an order, but its order exists at the "
                "exchange (Redis lost the record of it)",
            )
            return self._report(ref, found.order, adopted=True)
        if not found.gone:
            # A person must look (ApplyLayerOrderFateUnknown): the order may exist.
            metrics.EXCHANGE_UNKNOWN_FATE.labels(found.name).inc()
            detail = f"could not check whether {ref.client_order_id} exists: {found.detail}"
            return self._result(ref, StepStatus.FAILED, "order_unknown", detail)
        return None

    def _report(
        self, order: OrderRequest | OrderRef, info: OrderInfo, *, adopted: bool = False
    ) -> StepResult:
        result = step_result(order.step, info)
        if adopted:
            note = "adopted: an earlier run's order, found at the exchange; nothing was sent"
            message = f"{note}; {result.message}" if result.message else note
            result = replace(result, adopted=True, message=message)
        _log.info(
            "binance_order_result",
            plan=order.plan_id,
            cid=info.client_order_id,
            status=info.status,
            executed_qty=format_qty(info.executed_qty),
            adopted=adopted,
        )
        return result

    def _result(
        self,
        order: OrderRequest | OrderRef,
        status: StepStatus,
        error: str,
        message: str = "",
        side: str = "",
        qty: Decimal | None = None,
    ) -> StepResult:
        if status != StepStatus.EXECUTED:
            _log.warning(
                "binance_order_outcome",
                plan=order.plan_id,
                status=status,
                error=error,
                detail=message,
            )
        return StepResult(
            step=order.step,
            status=status,
            error=error,
            client_order_id=order.client_order_id,
            side=side,
            quantity=qty,
            message=message,
        )
