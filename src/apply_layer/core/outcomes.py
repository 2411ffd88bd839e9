"""Outcomes (pure): what happened to a plan and to its steps, and the result entry
that says so. (The statuses themselves are in ``statuses.py``.)

The result entry follows the running system's own schema for
``quantum:stream:apply.result`` (docs/CONTRACT.md, "Results"), because its
readers act on it: P3.3 updates its ledger when ``executed`` is exactly
``"True"`` and reads the *last* step of ``steps_results``; the trade-history
logger records a closure when ``executed`` and ``reduceOnly`` are true; the
decision-intelligence service counts by ``decision``; the reconcile engine
reads the top-level ``filled_qty``, ``side``, ``order_id`` and integer ``ts``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from apply_layer.core.log_format import format_qty
from apply_layer.core.statuses import (
    RESULT_DECISIONS,
    STATES,
    JournalState,
    OutcomeStatus,
    ResultDecision,
    StepStatus,
)

# Step statuses that report the order an executor sized (and perhaps sent).
_ORDER_STATUSES = (StepStatus.EXECUTED, StepStatus.DRY_RUN, StepStatus.REJECTED, StepStatus.FAILED)


@dataclass(frozen=True)
class StepResult:
    """The outcome of one plan step, as ``steps_results`` reports it (docs/CONTRACT.md 2).

    Executors return one for the close step; the other steps are reported UNSUPPORTED.
    """

    step: str
    status: StepStatus
    error: str = ""  # e.g. "qty_below_min", "exchange_rejected:-2022"
    order_id: str = ""
    client_order_id: str = ""
    side: str = ""
    quantity: Decimal | None = None
    executed_qty: Decimal | None = None
    avg_price: Decimal | None = None
    reduce_only: bool = True
    message: str = ""  # the exchange's own words on a rejection, for operators
    order_status: str = ""  # the exchange's order status (FILLED, ...) when it reported one
    warning: str = ""  # what the plan said that was not done as written (pct_mismatch:...)
    adopted: bool = False  # an earlier run's order, found at the exchange: nothing was sent

    @property
    def executed(self) -> bool:
        return self.status == StepStatus.EXECUTED

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"step": self.step, "status": self.status}
        if self.error:
            data["error"] = self.error
        if self.status in _ORDER_STATUSES and self.side:
            data.update(
                order_id=self.order_id,
                client_order_id=self.client_order_id,
                side=self.side,
                quantity=format_qty(self.quantity),
                executed_qty=format_qty(self.executed_qty),
                avg_price=format_qty(self.avg_price),
                reduce_only=self.reduce_only,
            )
            if self.order_status:
                data["order_status"] = self.order_status
        if self.adopted:
            data["adopted"] = True
        if self.message:
            data["message"] = self.message
        if self.warning:
            data["warning"] = self.warning
        return data


@dataclass(frozen=True)
class Outcome:
    """A plan's final outcome."""

    status: OutcomeStatus
    error: str = ""
    would_execute: bool = False
    wait_ms: int = 0
    steps: tuple[StepResult, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.status not in STATES:
            raise ValueError(f"unknown outcome status {self.status!r}")
        object.__setattr__(self, "status", OutcomeStatus(self.status))  # a bare str, too
        if self.status != OutcomeStatus.EXECUTED and not self.error:
            raise ValueError(f"a {self.status} outcome needs an error (the schema requires one)")

    @property
    def executed(self) -> bool:
        return self.status == OutcomeStatus.EXECUTED

    @property
    def state(self) -> JournalState:
        return STATES[self.status]

    @property
    def decision(self) -> ResultDecision:
        """What happened, in the result's ``decision`` field (not the plan's own)."""
        return RESULT_DECISIONS[self.status]

    @property
    def reason_class(self) -> str:
        """A low-cardinality reason for metric labels (no free text)."""
        return self.error.split(":", 1)[0] if self.error else "none"


def skipped(reason: str) -> Outcome:
    return Outcome(OutcomeStatus.SKIPPED, reason)


def rejected(reason: str) -> Outcome:
    return Outcome(OutcomeStatus.REJECTED, reason)


def blocked(reason: str, wait_ms: int = 0) -> Outcome:
    return Outcome(OutcomeStatus.BLOCKED, reason, wait_ms=wait_ms)


def _bool(value: bool) -> str:
    return "True" if value else "False"


def close_action(pct: Decimal) -> str:
    """The result's ``action`` for a close of ``pct`` percent of the position."""
    return "FULL_CLOSE" if pct == 100 else "PARTIAL_CLOSE"


def _executed_fields(step: StepResult, close_pct: Decimal | None) -> dict[str, str]:
    """The top-level copy of the placed order that the reconcile engine reads."""
    filled = format_qty(step.executed_qty)
    fields = {
        "side": step.side,
        "qty": format_qty(step.quantity),
        "order_id": step.order_id,
        "filled_qty": filled,
        "avg_price": format_qty(step.avg_price),
        "order_status": step.order_status,
        "close_qty": filled,
    }
    if close_pct is not None:
        fields["close_pct"] = format_qty(close_pct)
        fields["action"] = close_action(close_pct)
    return fields


def result_fields(
    *,
    plan_id: str,
    symbol: str,
    plan_decision: str,
    outcome: Outcome,
    mode: str,
    close_pct: Decimal | None = None,
    now: float | None = None,
) -> dict[str, str]:
    """The result stream entry for a plan (docs/CONTRACT.md; every value a string).

    ``plan_decision`` is the plan's own ``decision``; ``close_pct`` the share
    of the position its close step asked for (None for plans without one).
    ``adopted`` (``True``) appears only when the order was found at the exchange
    instead of sent: an earlier run's, which Redis had lost from the journal.
    """
    stamp = time.time() if now is None else now
    fields = {
        "plan_id": plan_id,
        "symbol": symbol,
        "decision": outcome.decision,
        "plan_decision": plan_decision,
        "status": outcome.status,
        "executed": _bool(outcome.executed),
        "would_execute": _bool(outcome.would_execute),
        "error": outcome.error,
        "wait_ms": str(outcome.wait_ms),
        # The close step is last: P3.3 and the trade-history logger read steps[-1].
        "steps_results": json.dumps([step.as_dict() for step in outcome.steps]),
        "reduceOnly": "true",
        "mode": mode,
        "event_type": "apply.result",
        "source": "apply_layer",
        "timestamp": f"{stamp:.3f}",
        "ts": str(int(stamp)),
    }
    if outcome.executed and outcome.steps:
        fields.update(_executed_fields(outcome.steps[-1], close_pct))
    if any(step.adopted for step in outcome.steps):
        fields["adopted"] = "True"
    return fields
