"""Outcomes (pure): what happened to a plan, and the result entry that says so."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from apply_layer.executors.base import StepResult

# Result status -> journal state (CONTRACT 2.1 statuses, lower-cased journal states).
STATES = {
    "EXECUTED": "executed",
    "BLOCKED": "blocked",
    "SKIPPED": "skipped",
    "REJECTED": "rejected",
    "FAILED": "failed",
}


@dataclass(frozen=True)
class Outcome:
    """A plan's final outcome."""

    status: str  # EXECUTED, BLOCKED, SKIPPED, REJECTED, FAILED
    error: str = ""
    would_execute: bool = False
    wait_ms: int = 0
    steps: tuple[StepResult, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.status not in STATES:
            raise ValueError(f"unknown outcome status {self.status!r}")

    @property
    def executed(self) -> bool:
        return self.status == "EXECUTED"

    @property
    def state(self) -> str:
        return STATES[self.status]

    @property
    def reason_class(self) -> str:
        """A low-cardinality reason for metric labels (no free text)."""
        return self.error.split(":", 1)[0] if self.error else "none"


def skipped(reason: str) -> Outcome:
    return Outcome("SKIPPED", reason)


def rejected(reason: str) -> Outcome:
    return Outcome("REJECTED", reason)


def blocked(reason: str, wait_ms: int = 0) -> Outcome:
    return Outcome("BLOCKED", reason, wait_ms=wait_ms)


def _bool(value: bool) -> str:
    return "True" if value else "False"


def result_fields(
    *,
    plan_id: str,
    symbol: str,
    decision: str,
    outcome: Outcome,
    mode: str,
    now: float | None = None,
) -> dict[str, str]:
    """The result stream entry for a plan (CONTRACT 2.1; every value a string).

    ``adopted`` (``True``) appears only when the order was found at the exchange
    instead of sent: an earlier run's, which Redis had lost from the journal.
    """
    fields = {
        "plan_id": plan_id,
        "symbol": symbol,
        "decision": decision,
        "status": outcome.status,
        "executed": _bool(outcome.executed),
        "would_execute": _bool(outcome.would_execute),
        "error": outcome.error,
        "wait_ms": str(outcome.wait_ms),
        "steps_results": json.dumps([step.as_dict() for step in outcome.steps]),
        "reduceOnly": "true",
        "mode": mode,
        "event_type": "apply.result",
        "source": "apply_layer",
        "timestamp": f"{time.time() if now is None else now:.3f}",
    }
    if any(step.adopted for step in outcome.steps):
        fields["adopted"] = "True"
    return fields
