"""One stream entry to one ending: parse, claim, hand the plan on, publish, acknowledge.

Every path ends in exactly one published result, or, for a plan id that
another entry already drives, in one ``duplicate plan=... first_status=...``
log line, and the entry is acknowledged: a result together with it (in the
publish script), anything else after its log line (``Journal.ack``). A
Redis failure anywhere raises: the entry stays pending and is resumed from
its journal state, so nothing is lost and nothing is done twice.

Nothing an entry holds may keep it from ending: an oversized entry is
rejected before it is parsed, a claim or journal key of the wrong Redis type
ends the entry REJECTED ``key_wrong_type:<key>`` (it is not an outage), and
any other exception ends it FAILED ``internal_error:<type>``, unless an order
may be out (journal state ``submitting``): that fate is recovery's to find,
never guessed.

This module's one job is the entry's bookkeeping: parse, claim, duplicates,
the ending of an entry that cannot run, and publication. A claimed plan is
advanced to its outcome (screening, the permit wait, the lease, the executor)
by ``order_path.py``; the decisions themselves are pure functions in
``core/lifecycle.py``. Every result leaves through one method,
:meth:`Processor._finish`; an order's result is published while its symbol
lease is still held (and renewed), and the publish script releases the lease
in the same step. Acknowledging entries is the processor's alone: the
service never XACKs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from decimal import Decimal

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from apply_layer import metrics
from apply_layer.core import keys as K
from apply_layer.core import lifecycle
from apply_layer.core.errors import AlreadyFinal, InvalidPlan, OrderMayBeOut, RetryLater
from apply_layer.core.lifecycle import echo
from apply_layer.core.outcomes import Outcome, rejected, result_fields
from apply_layer.core.plans import INVALID_CONTENT, Plan, parse_plan, safe_plan_id
from apply_layer.core.statuses import HandledKind, OutcomeStatus
from apply_layer.daemon.order_path import OrderPath
from apply_layer.daemon.signature_policy import SignaturePolicy
from apply_layer.executors import exchange_truth
from apply_layer.executors.base import Executor
from apply_layer.logs import get_logger
from apply_layer.settings import Settings
from apply_layer.store.batching import ScriptHost
from apply_layer.store.gate import PermitGate
from apply_layer.store.journal import Claim, Journal
from apply_layer.store.lease import Lease, SymbolLeases

log = get_logger()


@dataclass(frozen=True)
class Handled:
    """How an entry ended, for the caller's counters; the entry is acknowledged by then."""

    kind: HandledKind
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Ending:
    """One entry's result, before it is published: the outcome and what it echoes."""

    plan_id: str
    symbol: str
    plan_decision: str  # the plan's own ``decision`` (echoed, for an invalid entry)
    outcome: Outcome
    close_pct: Decimal | None = None
    # False: no usable journal (no valid plan id, or a key of another type in the
    # way); the result is published while the entry is pending, and acknowledged.
    journalled: bool = True
    # Publish nothing while an order may be out (raises ``OrderMayBeOut``).
    unless_sent: bool = False


def _plan_ending(plan: Plan, outcome: Outcome) -> Ending:
    step = plan.close_step
    return Ending(plan.plan_id, plan.symbol, plan.decision, outcome, step.pct if step else None)


class Processor:
    """Ends stream entries, one result or duplicate line each; one instance per service."""

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
        self.signatures = SignaturePolicy.from_settings(settings)  # ConfigError: exit 2
        self.orders = OrderPath(
            settings,
            gate,
            journal,
            executor,
            leases=self.leases,
            signatures=self.signatures,
            allowlist=self.allowlist,
        )

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

    async def drop_gone(self, entry_id: str) -> None:
        """An entry trimmed from the stream while pending: nothing left to handle."""
        log.warning("pending_entry_gone", entry_id=entry_id)
        await self.journal.ack(entry_id)

    async def _handle(self, entry_id: str, fields: dict[str, str], oversized: bool) -> Handled:
        if oversized:  # before anything else: nothing of it is parsed
            return await self._reject_invalid(
                entry_id, fields, InvalidPlan("oversized_entry", safe_plan_id(fields))
            )
        try:
            plan = parse_plan(fields)
        except InvalidPlan as exc:
            return await self._reject_invalid(entry_id, fields, exc)
        claim = await self.journal.claim(plan.plan_id, plan.symbol, entry_id, plan.content)
        if claim.wrong_type:
            self._log_wrong_type(plan.plan_id, claim.wrong_type, entry_id)
            outcome = lifecycle.wrong_type(claim.wrong_type)
            ending = Ending(plan.plan_id, plan.symbol, plan.decision, outcome, journalled=False)
            return await self._finish(entry_id, ending)
        if not claim.owned_by(entry_id):
            return await self._duplicate(plan.plan_id, entry_id, claim, plan.content)
        if claim.result_id:
            return await self._done(entry_id)  # this entry's result is out; the ack was missing
        try:
            # ``held`` keeps the symbol's lease (and its renewal) until the result
            # is out: the publish script releases it in the same step.
            async with contextlib.AsyncExitStack() as held:
                outcome, lease = await self.orders.advance(plan, claim.state, held)
                if lease is None:  # no order placed here: may Redis have lost one?
                    outcome = await self._exchange_truth(plan, entry_id, outcome)
                return await self._finish(entry_id, _plan_ending(plan, outcome), lease)
        except AlreadyFinal:
            return await self._done(entry_id)

    async def _duplicate(self, plan_id: str, entry_id: str, claim: Claim, content: str) -> Handled:
        """Another entry drives this plan id: say so once, with its first decision.

        If the two ask for different things (another symbol, decision, close step
        or share), this is no harmless resend: one of them was forged, or a writer
        is broken, and the first one decided. That is a security event: an error
        line, ``apply_plan_conflicts_total`` and its alert. Neither entry is run again.
        """
        first = claim.first_status or "in_progress"
        if claim.content and claim.content != content:
            metrics.PLAN_CONFLICTS.inc()
            log.error(
                "plan_content_conflict",
                plan_id=plan_id,
                entry_id=entry_id,
                first_entry_id=claim.holder,
                first_content=claim.content,
                content=content,
                first_status=first,
            )
            await self.journal.ack(entry_id)
            return Handled(HandledKind.DUPLICATE)
        log.info(
            f"duplicate plan={plan_id} first_status={first}",
            plan_id=plan_id,
            entry_id=entry_id,
            first_entry_id=claim.holder,
            first_status=first,
        )
        await self.journal.ack(entry_id)
        return Handled(HandledKind.DUPLICATE)

    async def _done(self, entry_id: str) -> Handled:
        """The entry's result is already out: only its acknowledgement may be missing."""
        await self.journal.ack(entry_id)
        return Handled(HandledKind.DONE)

    def _log_wrong_type(self, plan_id: str, which: str, entry_id: str) -> None:
        key = K.claim(plan_id) if which == "claim" else K.journal(plan_id)
        log.error("key_wrong_type", key=key, plan_id=plan_id, entry_id=entry_id)

    async def _give_up(self, entry_id: str, fields: dict[str, str], exc: Exception) -> Handled:
        """End an entry whose handling raised: FAILED ``internal_error``, unless an order
        may be out (then re-raise: the entry stays pending for recovery's lookup)."""
        log.error("plan_internal_error", entry_id=entry_id, exc_info=exc)
        plan_id = safe_plan_id(fields)
        ending = Ending(
            plan_id or echo(fields.get("plan_id", "")),
            echo(fields.get("symbol", "")),
            echo(fields.get("decision", "")),
            lifecycle.internal_error(exc),
            journalled=bool(plan_id),
            unless_sent=True,
        )
        if ending.journalled:
            try:
                return await self._finish(entry_id, ending)
            except OrderMayBeOut:
                raise exc from None
            except ResponseError:  # the journal key holds another type
                ending = replace(ending, journalled=False)
        return await self._finish(entry_id, ending)

    async def _reject_invalid(
        self, entry_id: str, fields: dict[str, str], exc: InvalidPlan
    ) -> Handled:
        outcome = rejected(f"invalid_plan:{exc.detail}")
        decision = echo(fields.get("decision", ""))
        if not exc.plan_id:  # no usable plan id: nothing to journal or dedupe by
            plan_id, symbol = echo(fields.get("plan_id", "")), echo(fields.get("symbol", ""))
            return await self._finish(
                entry_id, Ending(plan_id, symbol, decision, outcome, journalled=False)
            )
        ending = Ending(exc.plan_id, exc.symbol, decision, outcome)
        claim = await self.journal.claim(exc.plan_id, exc.symbol, entry_id, INVALID_CONTENT)
        if claim.wrong_type:
            self._log_wrong_type(exc.plan_id, claim.wrong_type, entry_id)
            return await self._finish(entry_id, replace(ending, journalled=False))
        if not claim.owned_by(entry_id):
            return await self._duplicate(exc.plan_id, entry_id, claim, INVALID_CONTENT)
        if claim.result_id:
            return await self._done(entry_id)
        return await self._finish(entry_id, ending)

    async def _exchange_truth(self, plan: Plan, entry_id: str, outcome: Outcome) -> Outcome:
        """The exchange is asked before a plan ends without an order, when Redis may
        have lost the record of one (exchange_truth.py)."""
        identity = self.journal.identity
        return await exchange_truth.settle(
            outcome,
            plan,
            entry_id,
            self.executor,
            unseen_ms=identity.changed_at_ms if identity is not None else 0,
            allowlist=self.allowlist,
        )

    # ---- publication: every result leaves here ----------------------------------

    async def _finish(self, entry_id: str, ending: Ending, lease: Lease | None = None) -> Handled:
        """Publish ``ending`` once and acknowledge its entry in the same step (and
        release ``lease``, under which an order was placed, in that step too).

        PUBLISHED if this call wrote the result, DONE if it was already out.
        """
        outcome = ending.outcome
        fields = result_fields(
            plan_id=ending.plan_id,
            symbol=ending.symbol,
            plan_decision=ending.plan_decision,
            outcome=outcome,
            mode=self.settings.mode,
            close_pct=ending.close_pct,
        )
        if not ending.journalled:
            if not await self.journal.results.publish_unjournalled(fields, entry_id):
                return Handled(HandledKind.DONE)  # no longer pending: its result is out
            metrics.child(metrics.PLANS, outcome.status, outcome.reason_class).inc()
            event = "plan_rejected" if outcome.status == OutcomeStatus.REJECTED else "plan_outcome"
            log.warning(event, entry_id=entry_id, plan_id=ending.plan_id, error=outcome.error)
            return Handled(HandledKind.PUBLISHED, outcome)
        reply = await self.journal.results.publish(
            ending.plan_id,
            ending.symbol,
            outcome.state,
            fields,
            cooldown=outcome.executed,
            entry_id=entry_id,
            lease=lease,
            unless_sent=ending.unless_sent,
        )
        if reply.lease_released and lease is not None:
            self.leases.released_with(lease)
        if not reply.new:
            return Handled(HandledKind.DONE, outcome)
        metrics.child(metrics.PLANS, outcome.status, outcome.reason_class).inc()
        log.info(
            "plan_outcome",
            plan_id=ending.plan_id,
            symbol=ending.symbol,
            status=outcome.status,
            error=outcome.error,
            wait_ms=outcome.wait_ms,
        )
        return Handled(HandledKind.PUBLISHED, outcome)
