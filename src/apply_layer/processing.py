"""One stream entry to one outcome: parse, claim, screen, gate, execute, publish.

Every path ends in exactly one published result, or, for a plan id that
another entry already drives, in one ``duplicate plan=... first_status=...``
log line; both are written before the caller acknowledges the entry. A
Redis failure anywhere raises: the entry stays pending and is resumed from
its journal state, so nothing is lost and nothing is done twice.

Nothing an entry holds may keep it from ending: an oversized entry is
rejected before it is parsed, a claim or journal key of the wrong Redis type
ends the entry REJECTED ``key_wrong_type:<key>`` (it is not an outage), and
any other exception ends it FAILED ``internal_error:<type>``, unless an order
may be out (journal state ``submitting``): that fate is recovery's to find,
never guessed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from apply_layer import keys as K
from apply_layer import metrics
from apply_layer.batching import ScriptHost
from apply_layer.errors import RetryLater
from apply_layer.executors.base import Executor, OrderRequest, StepResult
from apply_layer.gate import GateResult, PermitGate
from apply_layer.journal import Claim, Journal, OrderMayBeOut
from apply_layer.lease import AlreadyFinal, KillSwitchOn, Lease, LeaseKeyWrongType, SymbolLeases
from apply_layer.logs import get_logger
from apply_layer.outcomes import Outcome, blocked, rejected, result_fields, skipped
from apply_layer.permit_signatures import SignaturePolicy
from apply_layer.plans import InvalidPlan, Plan, parse_plan, safe_plan_id
from apply_layer.settings import Settings

log = get_logger()

PERMIT_TTL_MS = 60_000  # a consumed authorization is good for as long as the permit was
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True)
class Handled:
    """How an entry ended, for the caller's counters."""

    kind: str  # "published", "duplicate", "done" (result already out)
    outcome: Outcome | None = None
    acked: bool = False  # the publish script already acknowledged the entry


def _signed_decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _echo(value: str) -> str:
    """A field echoed from an invalid entry: short and log-safe."""
    return _UNSAFE.sub("_", value)[:64]


class Processor:
    """Drives plans through their lifecycle; one instance per service."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        gate: PermitGate,
        journal: Journal,
        executor: Executor,
        scripts: ScriptHost | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.gate = gate
        self.journal = journal
        self.executor = executor
        self.allowlist = frozenset(settings.allowlist)
        self.leases = SymbolLeases(
            redis,
            lease_ms=settings.lease_ms,
            owner=settings.consumer_name,
            kill_switch=settings.kill_switch,
            scripts=scripts,
        )
        self._symbol_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.signatures = SignaturePolicy.from_settings(settings)  # ConfigError: exit 2

    async def handle(
        self, entry_id: str, fields: dict[str, str], *, oversized: bool = False
    ) -> Handled:
        """End one entry; ``oversized``: the reader kept only its short fields.

        Raises only for Redis (and ``RetryLater``): the entry then stays
        pending and is resumed.
        """
        try:
            return await self._handle(entry_id, fields, oversized)
        except (RedisError, OSError, RetryLater):
            raise
        except Exception as exc:  # a bug, or an input nobody foresaw: end it once, cleanly
            return await self._give_up(entry_id, fields, exc)

    async def _handle(self, entry_id: str, fields: dict[str, str], oversized: bool) -> Handled:
        if oversized:  # before anything else: nothing of it is parsed
            return await self._reject_invalid(
                entry_id, fields, InvalidPlan("oversized_entry", safe_plan_id(fields))
            )
        try:
            plan = parse_plan(fields)
        except InvalidPlan as exc:
            return await self._reject_invalid(entry_id, fields, exc)
        claim = await self.journal.claim(plan.plan_id, plan.symbol, entry_id)
        if claim.wrong_type:
            outcome = self._wrong_type(plan.plan_id, claim.wrong_type, entry_id)
            return await self._publish_unjournalled(
                entry_id, plan.plan_id, plan.symbol, plan.decision, outcome
            )
        if not claim.owned_by(entry_id):
            return self._duplicate(plan.plan_id, entry_id, claim)
        if claim.result_id:
            return Handled("done")  # this entry's result is out; only the ack was missing
        try:
            advanced = await self._advance(plan, claim.state, entry_id)
        except AlreadyFinal:
            return Handled("done")
        if isinstance(advanced, Handled):
            return advanced
        await self._publish(plan, advanced, entry_id)
        return Handled("published", advanced, acked=True)

    def _duplicate(self, plan_id: str, entry_id: str, claim: Claim) -> Handled:
        """Another entry drives this plan id: say so once, with its first decision."""
        first = claim.first_status or "in_progress"
        log.info(
            f"duplicate plan={plan_id} first_status={first}",
            plan_id=plan_id,
            entry_id=entry_id,
            first_entry_id=claim.holder,
            first_status=first,
        )
        return Handled("duplicate")

    def _wrong_type(self, plan_id: str, which: str, entry_id: str) -> Outcome:
        key = K.claim(plan_id) if which == "claim" else K.journal(plan_id)
        log.error("key_wrong_type", key=key, plan_id=plan_id, entry_id=entry_id)
        return rejected(f"key_wrong_type:{which}")

    async def _give_up(self, entry_id: str, fields: dict[str, str], exc: Exception) -> Handled:
        """End an entry whose handling raised: FAILED ``internal_error``, unless an order
        may be out (then re-raise: the entry stays pending for recovery's lookup)."""
        log.error("plan_internal_error", entry_id=entry_id, exc_info=exc)
        outcome = Outcome("FAILED", f"internal_error:{type(exc).__name__}")
        plan_id, symbol = safe_plan_id(fields), _echo(fields.get("symbol", ""))
        decision = _echo(fields.get("decision", ""))
        if plan_id:
            result = self._fields(plan_id, symbol, decision, outcome)
            try:
                new = await self._publish_fields(
                    plan_id, symbol, outcome, result, entry_id, unless_sent=True
                )
                return Handled("published" if new else "done", outcome, acked=True)
            except OrderMayBeOut:
                raise exc from None
            except ResponseError:  # the journal key holds another type
                pass
        return await self._publish_unjournalled(
            entry_id, plan_id or _echo(fields.get("plan_id", "")), symbol, decision, outcome
        )

    # ---- the lifecycle ---------------------------------------------------------

    async def _advance(self, plan: Plan, state: str, entry_id: str) -> Outcome | Handled:
        """The outcome to publish, or ``Handled`` when execution published it itself."""
        if state == "received":
            screened = self._screen(plan)
            if screened is not None:
                return screened
        elif state == "permitted":
            journal = await self.journal.read(plan.plan_id)
            age_ms = int(time.time() * 1000) - int(journal.get("gate_at_ms", "0"))
            if age_ms > PERMIT_TTL_MS:
                return blocked("stale_authorization")
        decision = await self.gate.wait_and_consume(plan.plan_id, plan.symbol)
        metrics.PERMIT_WAIT.labels("ok" if decision.allowed else "block").observe(
            decision.wait_ms / 1000
        )
        if not decision.allowed:
            return blocked(decision.error, decision.wait_ms)
        # Signed permits (APPLY_PERMIT_SIGNING), checked on the consumed permits. Not
        # once an order may be out ("submitting"): its fate must be found, not blocked.
        refused = "" if state == "submitting" else self.signatures.check(decision)
        if refused:
            return blocked(refused, decision.wait_ms)
        return await self._execute(plan, decision, entry_id, sent_before=state == "submitting")

    def _screen(self, plan: Plan) -> Outcome | None:
        if plan.decision != "EXECUTE":
            return skipped(f"not_execute:{plan.decision}")
        if plan.symbol not in self.allowlist:
            return skipped("symbol_not_allowed")
        age = time.time() - plan.timestamp
        if age > self.settings.plan_max_age_sec:
            return skipped("stale_plan")
        if -age > self.settings.plan_max_age_sec:
            return rejected("invalid_plan:timestamp_in_future")
        return None

    async def _execute(
        self, plan: Plan, decision: GateResult, entry_id: str, *, sent_before: bool
    ) -> Outcome | Handled:
        """Place the close under the symbol's lease and publish its outcome.

        ``sent_before``: an earlier run may have sent it already, so its fate
        must be found out (the executor looks it up); the kill switch stops new
        orders, not the lookup of one that may be out.
        """
        step = plan.close_step
        assert step is not None and step.pct is not None  # parse_plan guarantees one close step
        assert decision.safe_qty is not None  # an ALLOW always carries P3.3's quantity
        wait_ms = decision.wait_ms
        p33 = decision.permits.get("p33")
        order = OrderRequest(
            plan_id=plan.plan_id,
            symbol=plan.symbol,
            step=step.name,
            pct=step.pct,
            safe_qty=decision.safe_qty,
            reported_amt=_signed_decimal(p33.fields.get("exchange_position_amt")) if p33 else None,
            sent_client_order_id=(
                await self.journal.sent_client_order_id(plan.plan_id) if sent_before else ""
            ),
        )
        lease_wait = 2 * self.settings.lease_ms / 1000
        async with self._symbol_locks[plan.symbol]:
            try:
                async with self.leases.hold(
                    plan.symbol, plan.plan_id, wait_sec=lease_wait, new_order=not sent_before
                ) as lease:
                    outcome = await self._place(plan, order, wait_ms, lease)
                    await self._publish(plan, outcome, entry_id, lease)
                    return Handled("published", outcome, acked=True)
            except KillSwitchOn:
                return blocked("kill_switch", wait_ms)
            except LeaseKeyWrongType as exc:
                log.error("key_wrong_type", key=str(exc), plan_id=plan.plan_id)
                if sent_before:  # an order may be out: its fate is found under the lease
                    raise RetryLater(f"{exc} holds another Redis type") from None
                return Outcome("FAILED", "key_wrong_type:lease", wait_ms=wait_ms)

    async def _place(self, plan: Plan, order: OrderRequest, wait_ms: int, lease: Lease) -> Outcome:
        step = plan.close_step
        assert step is not None
        order_log = self.journal.order_log(
            plan.plan_id, order.client_order_id, symbol=plan.symbol, lease_token=lease.token
        )
        try:
            result = await self.executor.execute(order, order_log)
        except (RedisError, OSError, RetryLater):
            raise
        except Exception as exc:
            if await order_log.attempts():
                raise  # something may have been sent: leave it to recovery's lookup
            log.exception("executor_error", plan_id=plan.plan_id)
            result = StepResult(step.name, "FAILED", f"executor_error:{type(exc).__name__}")
        metrics.ORDERS.labels(result.status).inc()
        if step.warning:
            log.warning("step_pct_mismatch", plan_id=plan.plan_id, detail=step.warning)
            result = replace(result, warning=step.warning)
        unsupported = tuple(StepResult(s.name, "UNSUPPORTED") for s in plan.unsupported_steps)
        steps = (*unsupported, result)  # the close last: readers take steps_results[-1]
        if result.status == "EXECUTED":
            metrics.LAST_SUCCESS.labels(plan.symbol).set(time.time())
            return Outcome("EXECUTED", "", True, wait_ms, steps)
        if result.status == "DRY_RUN":
            return Outcome("SKIPPED", "dry_run", True, wait_ms, steps)
        status = "REJECTED" if result.status == "REJECTED" else "FAILED"
        return Outcome(status, result.error or "order_failed", True, wait_ms, steps)

    # ---- publication -------------------------------------------------------------

    def _fields(
        self,
        plan_id: str,
        symbol: str,
        plan_decision: str,
        outcome: Outcome,
        close_pct: Decimal | None = None,
    ) -> dict[str, str]:
        return result_fields(
            plan_id=plan_id,
            symbol=symbol,
            plan_decision=plan_decision,
            outcome=outcome,
            mode=self.settings.mode,
            close_pct=close_pct,
        )

    async def _publish(
        self, plan: Plan, outcome: Outcome, entry_id: str, lease: Lease | None = None
    ) -> None:
        step = plan.close_step
        fields = self._fields(
            plan.plan_id, plan.symbol, plan.decision, outcome, step.pct if step else None
        )
        await self._publish_fields(plan.plan_id, plan.symbol, outcome, fields, entry_id, lease)

    async def _publish_fields(
        self,
        plan_id: str,
        symbol: str,
        outcome: Outcome,
        fields: dict[str, str],
        entry_id: str,
        lease: Lease | None = None,
        *,
        unless_sent: bool = False,
    ) -> bool:
        """Publish once; True if this call published (False: the result was already out)."""
        _, new = await self.journal.publish(
            plan_id,
            symbol,
            outcome.state,
            fields,
            cooldown=outcome.executed,
            entry_id=entry_id,
            lease=lease,
            unless_sent=unless_sent,
        )
        if new:
            metrics.PLANS.labels(outcome.status, outcome.reason_class).inc()
            log.info(
                "plan_outcome",
                plan_id=plan_id,
                symbol=symbol,
                status=outcome.status,
                error=outcome.error,
                wait_ms=outcome.wait_ms,
            )
        return new

    async def _reject_invalid(
        self, entry_id: str, fields: dict[str, str], exc: InvalidPlan
    ) -> Handled:
        outcome = rejected(f"invalid_plan:{exc.detail}")
        decision = _echo(fields.get("decision", ""))
        if exc.plan_id:
            claim = await self.journal.claim(exc.plan_id, exc.symbol, entry_id)
            if not claim.wrong_type:
                if not claim.owned_by(entry_id):
                    return self._duplicate(exc.plan_id, entry_id, claim)
                if claim.result_id:
                    return Handled("done")
                fields = self._fields(exc.plan_id, exc.symbol, decision, outcome)
                await self._publish_fields(exc.plan_id, exc.symbol, outcome, fields, entry_id)
                return Handled("published", outcome, acked=True)
            self._wrong_type(exc.plan_id, claim.wrong_type, entry_id)
            return await self._publish_unjournalled(
                entry_id, exc.plan_id, exc.symbol, decision, outcome
            )
        # No usable plan id: nothing to journal or dedupe by.
        plan_id, symbol = _echo(fields.get("plan_id", "")), _echo(fields.get("symbol", ""))
        return await self._publish_unjournalled(entry_id, plan_id, symbol, decision, outcome)

    async def _publish_unjournalled(
        self, entry_id: str, plan_id: str, symbol: str, decision: str, outcome: Outcome
    ) -> Handled:
        """The result of an entry with no usable journal, acknowledged in the same step."""
        result = self._fields(plan_id, symbol, decision, outcome)
        if not await self.journal.publish_unjournalled(result, entry_id):
            return Handled("done", acked=True)  # no longer pending: its result is out
        metrics.PLANS.labels(outcome.status, outcome.reason_class).inc()
        event = "plan_rejected" if outcome.status == "REJECTED" else "plan_outcome"
        log.warning(event, entry_id=entry_id, plan_id=plan_id, error=outcome.error)
        return Handled("published", outcome, acked=True)
