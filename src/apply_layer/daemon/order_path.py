"""A claimed plan to its outcome: screening, the permit wait, the lease, the executor.

Why a module of its own: this is the one path that may put an order on the
exchange, so it is kept apart from the entry's bookkeeping (parse, claim,
duplicates, publication, in ``processing.py``) and can be read in one sitting.
It resumes a plan from its journal state (``received``, ``permitted``,
``submitting``): a resumed plan's journal is read once, a stale authorisation
ends it, and a plan whose order may be out (``submitting``) is looked up under
the symbol's lease, never sent again. The decisions are pure functions in
``core/lifecycle.py``; this module does the I/O around them and publishes
nothing: it returns the outcome, and the lease an order was placed under,
which the caller keeps held until the result is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from apply_layer import metrics
from apply_layer.core import lifecycle
from apply_layer.core.errors import (
    KillSwitchOn,
    LeaseKeyWrongType,
    RetryLater,
    SendRefused,
)
from apply_layer.core.order_ids import client_order_id
from apply_layer.core.outcomes import Outcome, blocked
from apply_layer.core.plans import Plan, Step
from apply_layer.core.statuses import JournalState
from apply_layer.daemon.signature_policy import LookupOnly, SignaturePolicy
from apply_layer.executors.base import Executor, OrderLog, OrderRequest, Prepared
from apply_layer.logs import get_logger
from apply_layer.settings import Settings
from apply_layer.store.gate import GateResult, PermitGate
from apply_layer.store.journal import Journal, JournalRecord
from apply_layer.store.lease import Lease, SymbolLeases

log = get_logger()


def _close_step(plan: Plan) -> Step:
    step = plan.close_step
    assert step is not None  # parse_plan guarantees one close step for an EXECUTE plan
    return step


class OrderPath:
    """Advances claimed plans to their outcomes; one instance per processor."""

    def __init__(
        self,
        settings: Settings,
        gate: PermitGate,
        journal: Journal,
        executor: Executor,
        *,
        leases: SymbolLeases,
        signatures: SignaturePolicy,
        allowlist: frozenset[str],
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.journal = journal
        self.executor = executor
        self.leases = leases
        self.signatures = signatures
        self.allowlist = allowlist
        self._symbol_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def advance(
        self, plan: Plan, state: str, held: contextlib.AsyncExitStack
    ) -> tuple[Outcome, Lease | None]:
        """The outcome to publish and, if an order was placed, the lease to publish it
        under (entered into ``held``, which the caller keeps open until it is out).

        A resumed plan's journal is read once, here, and the record passed along.
        """
        record: JournalRecord | None = None
        if state in (JournalState.PERMITTED, JournalState.SUBMITTING):
            record = await self.journal.read(plan.plan_id)
        if state == JournalState.RECEIVED:
            screened = lifecycle.screen(
                plan,
                allowlist=self.allowlist,
                max_age_sec=self.settings.plan_max_age_sec,
                now=time.time(),
            )
            if screened is not None:
                return screened, None
        elif state == JournalState.PERMITTED and record is not None:
            stale = lifecycle.stale_authorization(record.gate_at_ms, int(time.time() * 1000))
            if stale is not None:
                return stale, None
        # The exchange reads the order will need run during the permit wait; they are
        # checked under the lease before any send (executors/base.py), and dropped
        # with ``held`` if the plan ends otherwise.
        prepared = self._read_ahead(plan, state)
        if prepared is not None:
            held.callback(prepared.cancel)
        decision = await self.gate.wait_and_consume(plan.plan_id, plan.symbol)
        metrics.child(metrics.PERMIT_WAIT, "ok" if decision.allowed else "block").observe(
            decision.wait_ms / 1000
        )
        if not decision.allowed:
            return blocked(decision.error, decision.wait_ms), None
        # Signed permits (APPLY_PERMIT_SIGNING), checked on the consumed permits, also
        # for a plan resumed in "submitting" (its journal could say anything): then an
        # order may be out, so it is still looked up, but never sent (LookupOnly).
        sent_before = state == JournalState.SUBMITTING
        refused = self.signatures.check(decision, _close_step(plan))
        if refused and not sent_before:
            return blocked(refused, decision.wait_ms), None
        sent_cid = record.sent_client_order_id if sent_before and record is not None else ""
        return await self._execute(
            plan,
            decision,
            held,
            sent_cid=sent_cid,
            sent_before=sent_before,
            refused=refused,
            prepared=prepared,
        )

    def _read_ahead(self, plan: Plan, state: str) -> Prepared | None:
        """Start the executor's reads for a new order; none for one that may be out
        (its fate is looked up under the lease, from its journal)."""
        step = plan.close_step
        if state == JournalState.SUBMITTING or step is None:
            return None
        cid = client_order_id(plan.plan_id, step.name)
        watch = self.journal.symbol_watch(plan.symbol)
        return self.executor.prepare(plan.plan_id, plan.symbol, cid, watch)

    async def _execute(
        self,
        plan: Plan,
        decision: GateResult,
        held: contextlib.AsyncExitStack,
        *,
        sent_before: bool,
        sent_cid: str = "",
        refused: str = "",
        prepared: Prepared | None = None,
    ) -> tuple[Outcome, Lease | None]:
        """Place the close under the symbol's lease, which stays held in ``held``.

        ``sent_before``: an earlier run may have sent it already, so its fate
        must be found out (the executor looks it up, under ``sent_cid``, the id
        the journal recorded with that send); the kill switch stops new orders,
        not the lookup of one that may be out.
        """
        step = plan.close_step
        assert step is not None and step.pct is not None  # parse_plan guarantees one close step
        assert decision.safe_qty is not None  # an ALLOW always carries P3.3's quantity
        wait_ms = decision.wait_ms
        order = OrderRequest(
            plan_id=plan.plan_id,
            symbol=plan.symbol,
            step=step.name,
            pct=step.pct,
            safe_qty=decision.safe_qty,
            reported_amt=lifecycle.reported_position(decision.permits),
            sent_client_order_id=sent_cid,
        )
        try:
            lease = await held.enter_async_context(
                self._symbol_lease(plan, new_order=not sent_before)
            )
        except KillSwitchOn:
            return blocked("kill_switch", wait_ms), None
        except LeaseKeyWrongType as exc:
            log.error("key_wrong_type", key=str(exc), plan_id=plan.plan_id)
            if sent_before:  # an order may be out: its fate is found under the lease
                raise RetryLater(f"{exc} holds another Redis type") from None
            return lifecycle.lease_wrong_type(wait_ms), None
        return await self._place(plan, order, wait_ms, lease, refused, prepared), lease

    @contextlib.asynccontextmanager
    async def _symbol_lease(self, plan: Plan, *, new_order: bool) -> AsyncIterator[Lease]:
        """This process's lock on the symbol, then the symbol's lease across instances."""
        async with (
            self._symbol_locks[plan.symbol],
            self.leases.hold(
                plan.symbol,
                plan.plan_id,
                wait_sec=2 * self.settings.lease_ms / 1000,
                new_order=new_order,
            ) as lease,
        ):
            yield lease

    async def _place(
        self,
        plan: Plan,
        order: OrderRequest,
        wait_ms: int,
        lease: Lease,
        refused: str = "",
        prepared: Prepared | None = None,
    ) -> Outcome:
        """Execute under the lease; ``refused`` (a block reason): look the order up only;
        ``prepared``: the reads made during the permit wait (checked before any send)."""
        step = plan.close_step
        assert step is not None
        order_log: OrderLog = self.journal.order_log(
            plan.plan_id, order.client_order_id, symbol=plan.symbol, lease_token=lease.token
        )
        if refused:
            order_log = LookupOnly(order_log, refused)
        try:
            result = await self.executor.execute(order, order_log, prepared=prepared)
        except SendRefused as exc:  # no earlier order found, and none may be sent
            log.warning("order_not_sent", plan_id=plan.plan_id, reason=exc.reason)
            return blocked(exc.reason, wait_ms)
        except (RedisError, OSError, RetryLater):
            raise
        except Exception as exc:
            if await order_log.attempts():
                raise  # something may have been sent: leave it to recovery's lookup
            log.exception("executor_error", plan_id=plan.plan_id)
            result = lifecycle.executor_error(step.name, exc)
        metrics.child(metrics.ORDERS, result.status).inc()
        if step.warning:
            log.warning("step_pct_mismatch", plan_id=plan.plan_id, detail=step.warning)
        outcome = lifecycle.step_outcome(plan, result, wait_ms)
        if outcome.executed:
            metrics.child(metrics.LAST_SUCCESS, plan.symbol).set(time.time())
        return outcome
