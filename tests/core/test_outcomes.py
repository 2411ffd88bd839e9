"""The result entry (pure): the system's schema, field by field."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from apply_layer.core.outcomes import (
    Outcome,
    StepResult,
    blocked,
    close_action,
    rejected,
    result_fields,
    skipped,
)
from apply_layer.core.statuses import OutcomeStatus, StepStatus
from tests.harness import check_result_schema

NOW = 1795977136.527

FILLED = StepResult(
    step="CLOSE_PARTIAL_75",
    status=StepStatus.EXECUTED,
    order_id="8389765",
    client_order_id="al75-p1",
    side="SELL",
    quantity=Decimal("0.009"),
    executed_qty=Decimal("0.009"),
    avg_price=Decimal("61234.5"),
    order_status="FILLED",
)


def fields(outcome: Outcome, close_pct: Decimal | None = Decimal(75)) -> dict[str, str]:
    return result_fields(
        plan_id="p1",
        symbol="BTCUSDT",
        plan_decision="EXECUTE",
        outcome=outcome,
        mode="testnet",
        close_pct=close_pct,
        now=NOW,
    )


def test_an_executed_result_carries_the_order_at_top_level() -> None:
    unsupported = StepResult("UPDATE_SL", StepStatus.UNSUPPORTED)
    result = fields(Outcome(OutcomeStatus.EXECUTED, "", True, 3, (unsupported, FILLED)))
    check_result_schema(result)
    assert result == {
        "plan_id": "p1",
        "symbol": "BTCUSDT",
        "decision": "EXECUTE",
        "plan_decision": "EXECUTE",
        "status": "EXECUTED",
        "executed": "True",
        "would_execute": "True",
        "error": "",
        "wait_ms": "3",
        "steps_results": json.dumps([unsupported.as_dict(), FILLED.as_dict()]),
        "reduceOnly": "true",
        "mode": "testnet",
        "event_type": "apply.result",
        "source": "apply_layer",
        "timestamp": "1795977136.527",
        "ts": "1795977136",
        "side": "SELL",
        "qty": "0.009",
        "order_id": "8389765",
        "filled_qty": "0.009",
        "avg_price": "61234.5",
        "order_status": "FILLED",
        "close_qty": "0.009",
        "close_pct": "75",
        "action": "PARTIAL_CLOSE",
    }
    assert json.loads(result["steps_results"])[-1]["order_status"] == "FILLED"


REFUSED = StepResult(
    "CLOSE_FULL", StepStatus.REJECTED, "qty_below_min", side="SELL", order_status=""
)


@pytest.mark.parametrize(
    ("make", "expected", "decision", "state"),
    [
        (
            lambda: blocked("kill_switch"),
            ("BLOCKED", "kill_switch", False, 0),
            "BLOCKED",
            "blocked",
        ),
        (
            lambda: blocked("permit_timeout_or_missing:missing_p33", 1200),
            ("BLOCKED", "permit_timeout_or_missing:missing_p33", False, 1200),
            "BLOCKED",
            "blocked",
        ),
        (
            lambda: skipped("not_execute:SKIP"),
            ("SKIPPED", "not_execute:SKIP", False, 0),
            "SKIP",
            "skipped",
        ),
        (lambda: skipped("stale_plan"), ("SKIPPED", "stale_plan", False, 0), "SKIP", "skipped"),
        (
            lambda: Outcome(OutcomeStatus.SKIPPED, "dry_run", True),
            ("SKIPPED", "dry_run", True, 0),
            "SKIP",
            "skipped",
        ),
        (
            lambda: rejected("invalid_plan:no_close_step"),
            ("REJECTED", "invalid_plan:no_close_step", False, 0),
            "ERROR",
            "rejected",
        ),
        (
            lambda: Outcome(OutcomeStatus.REJECTED, "qty_below_min", True, 4, (REFUSED,)),
            ("REJECTED", "qty_below_min", True, 4),
            "ERROR",
            "rejected",
        ),
        (
            lambda: Outcome(OutcomeStatus.FAILED, "exchange_unavailable", True),
            ("FAILED", "exchange_unavailable", True, 0),
            "ERROR",
            "failed",
        ),
    ],
)
def test_a_result_that_did_not_execute_says_what_happened(
    make: Any, expected: tuple[str, str, bool, int], decision: str, state: str
) -> None:
    outcome: Outcome = make()  # built inside the test, so that mutation testing sees it
    assert (outcome.status, outcome.error, outcome.would_execute, outcome.wait_ms) == expected
    assert not outcome.executed
    result = fields(outcome)
    check_result_schema(result)
    assert (result["decision"], result["plan_decision"], result["executed"]) == (
        decision,
        "EXECUTE",
        "False",
    )
    assert result["error"] == outcome.error and outcome.state == state
    assert result["wait_ms"] == str(outcome.wait_ms) and result["status"] == outcome.status
    assert result["would_execute"] == ("True" if outcome.would_execute else "False")
    for name in ("side", "qty", "order_id", "filled_qty", "order_status", "action", "close_pct"):
        assert name not in result


def test_the_timestamp_is_now_unless_given() -> None:
    before = time.time()
    result = result_fields(
        plan_id="p", symbol="BTCUSDT", plan_decision="EXECUTE", outcome=blocked("x"), mode="paper"
    )
    assert before - 1 <= float(result["timestamp"]) <= time.time() + 1
    assert abs(int(result["ts"]) - before) <= 2


def test_an_outcome_that_did_not_execute_must_say_why() -> None:
    with pytest.raises(ValueError, match="needs an error"):
        Outcome(OutcomeStatus.BLOCKED)
    with pytest.raises(ValueError, match="unknown outcome status"):
        Outcome("DONE", "x")  # type: ignore[arg-type]  # what a typo at runtime meets


@pytest.mark.parametrize(
    ("pct", "action"), [(100, "FULL_CLOSE"), (75, "PARTIAL_CLOSE"), (25, "PARTIAL_CLOSE")]
)
def test_close_action(pct: int, action: str) -> None:
    assert close_action(Decimal(pct)) == action


def test_a_full_close_and_reason_classes() -> None:
    result = fields(Outcome(OutcomeStatus.EXECUTED, "", True, 0, (FILLED,)), Decimal("100.0"))
    assert (result["close_pct"], result["action"]) == ("100", "FULL_CLOSE")
    assert blocked("p33_permit_denied:reconcile").reason_class == "p33_permit_denied"
    assert Outcome(OutcomeStatus.EXECUTED).reason_class == "none"


def test_the_step_warning_and_status_reach_steps_results() -> None:
    warned = StepResult(**{**FILLED.__dict__, "warning": "pct_mismatch:name=75,pct=25,closing=25"})
    (step,) = json.loads(
        fields(Outcome(OutcomeStatus.EXECUTED, "", True, 0, (warned,)))["steps_results"]
    )
    assert step["warning"] == "pct_mismatch:name=75,pct=25,closing=25"
    assert (step["order_status"], step["executed_qty"], step["avg_price"]) == (
        "FILLED",
        "0.009",
        "61234.5",
    )


def test_a_bare_status_becomes_the_enum() -> None:
    outcome = Outcome("EXECUTED", steps=(FILLED,))  # type: ignore[arg-type]  # as a caller might
    assert outcome.status is OutcomeStatus.EXECUTED


def test_an_adopted_order_is_said_at_top_level_and_in_its_step() -> None:
    adopted = StepResult(
        step="CLOSE_FULL",
        status=StepStatus.EXECUTED,
        order_id="9",
        client_order_id="al100-p1",
        side="BUY",
        quantity=Decimal("0.5"),
        executed_qty=Decimal("0.5"),
        avg_price=Decimal(2),
        adopted=True,
    )
    out = fields(Outcome(OutcomeStatus.EXECUTED, steps=(adopted,)), Decimal(100))
    assert out["adopted"] == "True"
    assert json.loads(out["steps_results"])[-1]["adopted"] is True
    assert "adopted" not in fields(Outcome(OutcomeStatus.EXECUTED, steps=(FILLED,)))


def test_a_step_reports_its_order_only_when_one_was_placed() -> None:
    assert FILLED.as_dict() == {
        "step": "CLOSE_PARTIAL_75",
        "status": "EXECUTED",
        "order_id": "8389765",
        "client_order_id": "al75-p1",
        "side": "SELL",
        "quantity": "0.009",
        "executed_qty": "0.009",
        "avg_price": "61234.5",
        "reduce_only": True,
        "order_status": "FILLED",
    }
    rejected_step = StepResult(
        "CLOSE_FULL",
        StepStatus.REJECTED,
        "exchange_rejected:-2022",
        order_id="",
        client_order_id="al100-p1",
        side="SELL",
        quantity=Decimal("0.5"),
        reduce_only=False,
        message="ReduceOnly Order is rejected.",
        warning="pct_mismatch:x",
    )
    assert rejected_step.as_dict() == {
        "step": "CLOSE_FULL",
        "status": "REJECTED",
        "error": "exchange_rejected:-2022",
        "order_id": "",
        "client_order_id": "al100-p1",
        "side": "SELL",
        "quantity": "0.5",
        "executed_qty": "none",  # nothing filled: said as none, not as a zero fill
        "avg_price": "none",
        "reduce_only": False,
        "message": "ReduceOnly Order is rejected.",
        "warning": "pct_mismatch:x",
    }
    # No side: nothing was sized, so no order fields at all.
    assert StepResult("CLOSE_FULL", StepStatus.FAILED, "qty_below_min").as_dict() == {
        "step": "CLOSE_FULL",
        "status": "FAILED",
        "error": "qty_below_min",
    }
    assert StepResult("PARTIAL_X", StepStatus.UNSUPPORTED, side="SELL").as_dict() == {
        "step": "PARTIAL_X",
        "status": "UNSUPPORTED",
    }
