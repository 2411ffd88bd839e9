"""The plan lifecycle's decisions (pure): no I/O, the time is an argument.

``processing.Processor`` does the I/O (claim, gate, lease, executor,
publish) and asks these functions what each step means:

- :func:`screen`: may a received plan go to the gate at all?
- :func:`stale_authorization`: may a plan the gate already permitted (an
  earlier run consumed its permits, then stopped) still execute?
- :func:`step_outcome`: the executor's answer for the close step, as the
  plan's outcome (with its ``steps_results``).
- :func:`reported_position`: P3.3's signed position, from the consumed permits.
- :func:`executor_error`, :func:`internal_error`, :func:`wrong_type`: the
  outcomes of the failures the processor catches.

The result entry itself is :func:`apply_layer.core.outcomes.result_fields`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from apply_layer.core.outcomes import Outcome, StepResult, blocked, rejected, skipped
from apply_layer.core.plans import Plan
from apply_layer.core.statuses import OutcomeStatus, StepStatus

if TYPE_CHECKING:
    from apply_layer.core.permits import PermitVerdict

#: A consumed authorization is good for as long as the permit was.
PERMIT_TTL_MS = 60_000
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def screen(
    plan: Plan, *, allowlist: frozenset[str], max_age_sec: float, now: float
) -> Outcome | None:
    """The outcome of a received plan that must not reach the gate, or None.

    A plan exactly ``max_age_sec`` old (or ahead) still passes: only older
    plans are stale, only later timestamps are in the future.
    """
    if plan.decision != "EXECUTE":
        return skipped(f"not_execute:{plan.decision}")
    if plan.symbol not in allowlist:
        return skipped("symbol_not_allowed")
    age = now - plan.timestamp
    if age > max_age_sec:
        return skipped("stale_plan")
    if -age > max_age_sec:
        return rejected("invalid_plan:timestamp_in_future")
    return None


def stale_authorization(gate_at_ms: int, now_ms: int) -> Outcome | None:
    """BLOCKED ``stale_authorization`` when the gate's ALLOW (at ``gate_at_ms``) is
    older than :data:`PERMIT_TTL_MS` (exactly that old is still good), else None."""
    if now_ms - gate_at_ms > PERMIT_TTL_MS:
        return blocked("stale_authorization")
    return None


def executor_error(step: str, exc: BaseException) -> StepResult:
    """The step result when the executor raised before anything was sent."""
    return StepResult(step, StepStatus.FAILED, f"executor_error:{type(exc).__name__}")


def step_outcome(plan: Plan, result: StepResult, wait_ms: int) -> Outcome:
    """The plan's outcome from its close step's result.

    The plan's other steps come first as UNSUPPORTED and the close last
    (readers take ``steps_results[-1]``); a close step whose name and pct
    disagreed carries its warning. EXECUTED ends EXECUTED, DRY_RUN ends
    SKIPPED ``dry_run``, REJECTED ends REJECTED, anything else FAILED
    (with the step's error, or ``order_failed``).
    """
    step = plan.close_step
    if step is not None and step.warning:
        result = replace(result, warning=step.warning)
    unsupported = tuple(StepResult(s.name, StepStatus.UNSUPPORTED) for s in plan.unsupported_steps)
    steps = (*unsupported, result)
    if result.status == StepStatus.EXECUTED:
        return Outcome(OutcomeStatus.EXECUTED, "", True, wait_ms, steps)
    if result.status == StepStatus.DRY_RUN:
        return Outcome(OutcomeStatus.SKIPPED, "dry_run", True, wait_ms, steps)
    status = (
        OutcomeStatus.REJECTED if result.status == StepStatus.REJECTED else OutcomeStatus.FAILED
    )
    return Outcome(status, result.error or "order_failed", True, wait_ms, steps)


def internal_error(exc: BaseException) -> Outcome:
    """FAILED ``internal_error:<type>``: handling raised something nobody foresaw."""
    return Outcome(OutcomeStatus.FAILED, f"internal_error:{type(exc).__name__}")


def wrong_type(which: str) -> Outcome:
    """REJECTED ``key_wrong_type:<which>``: a claim or journal key holds another type."""
    return rejected(f"key_wrong_type:{which}")


def lease_wrong_type(wait_ms: int) -> Outcome:
    """FAILED ``key_wrong_type:lease``: no lease can be taken, and no order was out."""
    return Outcome(OutcomeStatus.FAILED, "key_wrong_type:lease", wait_ms=wait_ms)


def signed_decimal(value: Any) -> Decimal | None:
    """A permit's signed amount (P3.3's ``exchange_position_amt``), or None if unusable.

    JSON ``true``/``false`` need no test of their own: ``Decimal("True")`` is invalid.
    """
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def reported_position(permits: Mapping[str, PermitVerdict]) -> Decimal | None:
    """P3.3's signed ``exchange_position_amt`` among the consumed permits (the one field
    of a permit the executor uses besides ``safe_qty``), or None if it gave none usable.

    The one place that knows which permit carries it and under what name: the
    processor asks for the position, not for a permit's fields.
    """
    p33 = permits.get("p33")
    return signed_decimal(p33.fields.get("exchange_position_amt")) if p33 else None


def echo(value: str) -> str:
    """A field echoed from an invalid entry: short and log-safe."""
    return _UNSAFE.sub("_", value)[:64]
