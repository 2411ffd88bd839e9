"""Before a plan ends without an order, the exchange is asked whether it has one.

The rule (docs/RELIABILITY.md, "A result never contradicts the exchange"):
while an order for a plan's client order id may exist that the journal does
not show, the plan does not end BLOCKED, REJECTED or SKIPPED before the
exchange is asked. An order found ends the plan EXECUTED, *adopted*, with
the order's real fill; an exchange that cannot be asked ends it FAILED
``order_unknown``: neither answer is guessed.

Why: when Redis loses writes (a failover to a lagging replica, a restart
from an older state), a plan that one instance already executed can come
back unread, its permits, claim, journal and result gone. Another instance
then decides it afresh: no permit, so BLOCKED, while the exchange holds the
filled close. P3.3's ledger, the governor and the trade-history logger would
believe the position still open (issue 25). The executor's lookup before a
first send (rule 4 of docs/BINANCE.md) keeps such a plan from being sent
twice; this module keeps it from being *reported* wrongly.

When "may exist unseen" holds (:func:`may_be_unseen`): the Redis behind the
journal changed, or this process first met it, at ``unseen_ms``
(``store.identity.IdentityTracker.changed_at_ms``), and the plan existed
before that: its stream entry or its own ``timestamp`` is older than that
moment (give or take :data:`CLOCK_MARGIN_MS` of clock skew between the
planner, Redis and this host). A plan first written after the change was
handled only by the Redis in use now, so its journal shows every send.
Only an EXECUTE plan with a close step on an allowlisted symbol can have an
order at all; other plans are never looked up.

What it does not see: a copy of a plan republished after the change with a
new ``timestamp`` while the first copy, which an instance executed, was
lost. Then the instance that placed the order writes its remembered result
again, and the result it finds is corrected (``corrections.py``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from apply_layer.core.lifecycle import step_outcome
from apply_layer.core.order_ids import client_order_id
from apply_layer.core.outcomes import Outcome, StepResult
from apply_layer.core.plans import Plan
from apply_layer.core.statuses import OutcomeStatus
from apply_layer.executors.base import OrderRef
from apply_layer.logs import get_logger

log = get_logger()

#: Skew allowed between the clocks that stamp a plan (the planner's ``timestamp``,
#: Redis's stream entry id) and this host's, which stamps ``unseen_ms``. Too much
#: costs a lookup, never a wrong result.
CLOCK_MARGIN_MS = 2000

#: Endings that say "no order": each must be checked against the exchange first.
ASKED = frozenset({OutcomeStatus.BLOCKED, OutcomeStatus.REJECTED, OutcomeStatus.SKIPPED})


class OrderFinder(Protocol):
    """The part of an executor this module uses (``Executor.find_order``)."""

    async def find_order(self, ref: OrderRef, unseen_ms: int) -> StepResult | None: ...


def entry_ms(entry_id: str) -> int:
    """The milliseconds part of a stream entry id; 0 (oldest: look) when unreadable."""
    head = entry_id.partition("-")[0]
    return int(head) if head.isdigit() else 0


def may_be_unseen(plan: Plan, entry_id: str, *, unseen_ms: int, allowlist: frozenset[str]) -> bool:
    """May an order for ``plan`` exist that its journal does not show?

    ``unseen_ms``: when the Redis behind the journal last changed (or this
    process first met it); 0 when nothing can have been lost.
    """
    if unseen_ms <= 0 or plan.decision != "EXECUTE" or plan.close_step is None:
        return False
    if plan.symbol not in allowlist:
        return False  # no instance places an order for it (one allowlist for all)
    first_ms = min(entry_ms(entry_id), int(plan.timestamp * 1000))
    return first_ms <= unseen_ms + CLOCK_MARGIN_MS


async def settle(
    outcome: Outcome,
    plan: Plan,
    entry_id: str,
    executor: OrderFinder,
    *,
    unseen_ms: int,
    allowlist: frozenset[str],
) -> Outcome:
    """``outcome``, unless the exchange says otherwise: an order found is adopted.

    Only for an outcome that says "no order" (:data:`ASKED`) and a plan for
    which :func:`may_be_unseen` holds; the exchange is asked with the
    executor's own lookup (``Executor.find_order``), which sends nothing.
    """
    step = plan.close_step
    if outcome.status not in ASKED or step is None:
        return outcome
    if not may_be_unseen(plan, entry_id, unseen_ms=unseen_ms, allowlist=allowlist):
        return outcome
    ref = OrderRef(plan.plan_id, plan.symbol, step.name, client_order_id(plan.plan_id, step.name))
    found = await executor.find_order(ref, unseen_ms)
    if found is None:
        return outcome
    log.warning(
        "plan_outcome_from_exchange",
        plan_id=plan.plan_id,
        instead_of=f"{outcome.status} {outcome.error}",
        step_status=found.status,
        error=found.error,
        why="Redis may have lost the record of an order for this plan: the exchange was "
        "asked before the plan could end without one",
    )
    settled = step_outcome(plan, found, outcome.wait_ms)
    if settled.executed:
        return settled
    # The exchange could not be asked (FAILED order_unknown): the gate's verdict stands
    # for would_execute; the plan's fate at the exchange is what is unknown.
    return replace(settled, would_execute=outcome.would_execute)
