"""The lifecycle's decisions (pure), as tables: every branch and every boundary."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from apply_layer.core import lifecycle
from apply_layer.core.lifecycle import PERMIT_TTL_MS
from apply_layer.core.outcomes import Outcome, StepResult
from apply_layer.core.permits import PermitVerdict
from apply_layer.core.plans import Plan, Step
from apply_layer.core.statuses import OutcomeStatus, StepStatus

NOW = 1_795_977_136.0
MAX_AGE = 30.0
ALLOW = frozenset({"BTCUSDT"})


def plan(
    decision: str = "EXECUTE",
    symbol: str = "BTCUSDT",
    age: float = 0.0,
    steps: tuple[Step, ...] = (Step("CLOSE_PARTIAL_75", Decimal(75)),),
) -> Plan:
    return Plan("p1", symbol, decision, NOW - age, steps=steps)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (plan(), None),
        (plan(decision="SKIP"), ("SKIPPED", "not_execute:SKIP")),
        (plan(decision="BLOCKED"), ("SKIPPED", "not_execute:BLOCKED")),
        (plan(decision="ERROR"), ("SKIPPED", "not_execute:ERROR")),
        (plan(symbol="ETHUSDT"), ("SKIPPED", "symbol_not_allowed")),
        # not EXECUTE is decided before the allowlist, the allowlist before the age
        (plan(decision="SKIP", symbol="ETHUSDT"), ("SKIPPED", "not_execute:SKIP")),
        (plan(symbol="ETHUSDT", age=MAX_AGE + 1), ("SKIPPED", "symbol_not_allowed")),
        (plan(age=MAX_AGE), None),  # exactly at the max age: still fresh
        (plan(age=MAX_AGE + 0.001), ("SKIPPED", "stale_plan")),
        (plan(age=-MAX_AGE), None),  # exactly max age ahead: still accepted
        (plan(age=-MAX_AGE - 0.001), ("REJECTED", "invalid_plan:timestamp_in_future")),
    ],
)
def test_screen(given: Plan, expected: tuple[str, str] | None) -> None:
    outcome = lifecycle.screen(given, allowlist=ALLOW, max_age_sec=MAX_AGE, now=NOW)
    if expected is None:
        assert outcome is None
    else:
        assert outcome is not None and (outcome.status, outcome.error) == expected


@pytest.mark.parametrize(
    ("age_ms", "stale"),
    [
        (0, False),
        (PERMIT_TTL_MS - 1, False),
        (PERMIT_TTL_MS, False),  # exactly the TTL: still good
        (PERMIT_TTL_MS + 1, True),
        (-5_000, False),  # a clock step backwards is not staleness
    ],
)
def test_stale_authorization(age_ms: int, stale: bool) -> None:
    now_ms = 1_795_977_136_000
    outcome = lifecycle.stale_authorization(now_ms - age_ms, now_ms)
    if stale:
        assert outcome == Outcome(OutcomeStatus.BLOCKED, "stale_authorization")
    else:
        assert outcome is None


def test_a_missing_gate_time_is_stale() -> None:
    """The journal read gives 0 when ``gate_at_ms`` is absent: that is long ago."""
    assert lifecycle.stale_authorization(0, 1_795_977_136_000) is not None


FILLED = StepResult("CLOSE_PARTIAL_75", StepStatus.EXECUTED, side="SELL", order_id="9")


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (FILLED, ("EXECUTED", "")),
        (StepResult("CLOSE_PARTIAL_75", StepStatus.DRY_RUN), ("SKIPPED", "dry_run")),
        (
            StepResult("CLOSE_PARTIAL_75", StepStatus.REJECTED, "qty_below_min"),
            ("REJECTED", "qty_below_min"),
        ),
        (StepResult("CLOSE_PARTIAL_75", StepStatus.REJECTED), ("REJECTED", "order_failed")),
        (
            StepResult("CLOSE_PARTIAL_75", StepStatus.FAILED, "order_not_final"),
            ("FAILED", "order_not_final"),
        ),
        (StepResult("CLOSE_PARTIAL_75", StepStatus.FAILED), ("FAILED", "order_failed")),
        # anything else an executor might answer is a failure, never a success
        (StepResult("CLOSE_PARTIAL_75", StepStatus.UNSUPPORTED), ("FAILED", "order_failed")),
    ],
)
def test_step_outcome(step: StepResult, expected: tuple[str, str]) -> None:
    outcome = lifecycle.step_outcome(plan(), step, 120)
    assert (outcome.status, outcome.error) == expected
    assert outcome.would_execute is True and outcome.wait_ms == 120
    assert outcome.steps == (step,)


def test_step_outcome_puts_unsupported_steps_first_and_the_close_last() -> None:
    steps = (Step("MOVE_SL"), Step("CLOSE_PARTIAL_75", Decimal(75)), Step("TRAIL"))
    outcome = lifecycle.step_outcome(plan(steps=steps), FILLED, 0)
    assert [(s.step, s.status) for s in outcome.steps] == [
        ("MOVE_SL", "UNSUPPORTED"),
        ("TRAIL", "UNSUPPORTED"),
        ("CLOSE_PARTIAL_75", "EXECUTED"),
    ]
    assert outcome.steps[-1] is FILLED


@pytest.mark.parametrize("warning", ["", "pct_mismatch:name=75,pct=25,closing=25"])
def test_step_outcome_carries_the_step_warning(warning: str) -> None:
    steps = (Step("CLOSE_PARTIAL_75", Decimal(25), warning),)
    outcome = lifecycle.step_outcome(plan(steps=steps), FILLED, 0)
    assert outcome.steps[-1].warning == warning
    assert outcome.steps[-1].order_id == "9"


# Lambdas, not values: an outcome built at collection time would not see a mutant
# that mutmut switches on later (docs/TESTING.md, "One pitfall").
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: lifecycle.internal_error(ZeroDivisionError()),
            ("FAILED", "internal_error:ZeroDivisionError"),
        ),
        (lambda: lifecycle.wrong_type("claim"), ("REJECTED", "key_wrong_type:claim")),
        (lambda: lifecycle.wrong_type("journal"), ("REJECTED", "key_wrong_type:journal")),
        (lambda: lifecycle.lease_wrong_type(40), ("FAILED", "key_wrong_type:lease")),
    ],
)
def test_failure_outcomes(make: Callable[[], Outcome], expected: tuple[str, str]) -> None:
    outcome = make()
    assert isinstance(outcome.status, OutcomeStatus)
    assert (outcome.status, outcome.error) == expected
    assert not outcome.would_execute


def test_lease_wrong_type_keeps_the_wait() -> None:
    assert lifecycle.lease_wrong_type(40).wait_ms == 40


def test_executor_error() -> None:
    step = lifecycle.executor_error("CLOSE_FULL", KeyError("x"))
    assert step == StepResult("CLOSE_FULL", StepStatus.FAILED, "executor_error:KeyError")


@pytest.mark.parametrize(
    ("raw", "echoed"),
    [
        ("p1", "p1"),
        ("BTC USDT", "BTC_USDT"),
        ("a:b.c-d_e", "a:b.c-d_e"),
        ("x\nlevel=error", "x_level_error"),
        ("é", "_"),
        ("y" * 70, "y" * 64),
        ("", ""),
    ],
)
def test_echo(raw: str, echoed: str) -> None:
    assert lifecycle.echo(raw) == echoed


@pytest.mark.parametrize(
    ("raw", "amount"),
    [
        ("-0.009", Decimal("-0.009")),
        ("12", Decimal(12)),
        (3, Decimal(3)),
        (None, None),
        (True, None),
        ("", None),
        ("abc", None),
        ("NaN", None),
        ("Infinity", None),
        ("-inf", None),
    ],
)
def test_signed_decimal(raw: object, amount: Decimal | None) -> None:
    assert lifecycle.signed_decimal(raw) == amount


def test_reported_position_is_p33s_signed_amount_or_none() -> None:
    def verdict(kind: str, **fields: object) -> PermitVerdict:
        return PermitVerdict(kind, "string", "allow", fields=dict(fields))

    p33 = verdict("p33", exchange_position_amt="-0.009", safe_qty="0.009")
    gov = verdict("gov", exchange_position_amt="5")  # only P3.3's amount counts
    assert lifecycle.reported_position({"gov": gov, "p33": p33}) == Decimal("-0.009")
    assert lifecycle.reported_position({"gov": gov}) is None
    assert lifecycle.reported_position({"p33": verdict("p33")}) is None
    assert lifecycle.reported_position({"p33": verdict("p33", exchange_position_amt="x")}) is None
