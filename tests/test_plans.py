"""Plan parsing: valid entries become Plans; anything odd is rejected, not guessed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apply_layer.plans import InvalidPlan, parse_plan

STEP75 = {"step": "CLOSE_PARTIAL_75", "type": "market_reduce_only", "side": "close", "pct": 75.0}


def entry(**overrides: Any) -> dict[str, str]:
    fields = {
        "plan_id": "67e6da21fa9fe506",
        "symbol": "BTCUSDT",
        "decision": "EXECUTE",
        "action": "PARTIAL_75",
        "steps": json.dumps([STEP75]),
        "timestamp": "1769301008.9",
        "kill_score": "0.7",
        "qty": "999",
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return {k: v for k, v in fields.items() if overrides.get(k, "") is not None}


def test_a_contract_plan() -> None:
    plan = parse_plan(entry())
    assert (plan.plan_id, plan.symbol, plan.decision, plan.action) == (
        "67e6da21fa9fe506",
        "BTCUSDT",
        "EXECUTE",
        "PARTIAL_75",
    )
    assert plan.close_step is not None and plan.close_step.pct == Decimal(75)
    assert plan.timestamp == pytest.approx(1769301008.9)
    assert plan.extra["qty"] == "999"  # kept for the record, never used for sizing


def test_non_execute_plans_need_no_steps() -> None:
    plan = parse_plan(entry(decision="SKIP", steps=None))
    assert plan.decision == "SKIP" and plan.steps == ()


def test_unsupported_steps_are_reported_beside_the_close() -> None:
    steps = [STEP75, {"step": "UPDATE_SL", "price": 1.0}]
    plan = parse_plan(entry(steps=json.dumps(steps)))
    assert [s.name for s in plan.unsupported_steps] == ["UPDATE_SL"]


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"plan_id": None}, "missing_field:plan_id"),
        ({"plan_id": "has space"}, "bad_plan_id"),
        ({"plan_id": "x" * 65}, "bad_plan_id"),
        ({"symbol": None}, "missing_field:symbol"),
        ({"symbol": "btcusdt"}, "bad_symbol"),
        ({"decision": None}, "missing_field:decision"),
        ({"decision": "YOLO"}, "bad_decision"),
        ({"timestamp": None}, "missing_field:timestamp"),
        ({"timestamp": "nan"}, "bad_timestamp"),
        ({"timestamp": "-5"}, "bad_timestamp"),
        ({"timestamp": "1e30"}, "bad_timestamp"),
        ({"steps": None}, "missing_field:steps"),
        ({"steps": "[not json"}, "bad_steps_json"),
        ({"steps": "{}"}, "steps_not_a_list"),
        ({"steps": "[]"}, "no_steps"),
        ({"steps": json.dumps(["CLOSE_FULL"])}, "bad_step:not_an_object"),
        ({"steps": json.dumps([{"step": "close full"}])}, "bad_step:name"),
        ({"steps": json.dumps([{"step": "UPDATE_SL"}])}, "no_close_step"),
        ({"steps": json.dumps([STEP75, {"step": "CLOSE_FULL"}])}, "multiple_close_steps"),
        ({"steps": json.dumps([{**STEP75, "pct": 50}])}, "bad_step:CLOSE_PARTIAL_75:pct_mismatch"),
        ({"steps": json.dumps([{**STEP75, "pct": "75"}])}, "bad_step:CLOSE_PARTIAL_75:pct"),
        ({"steps": json.dumps([{**STEP75, "type": "limit"}])}, "bad_step:CLOSE_PARTIAL_75:type"),
        ({"steps": json.dumps([{**STEP75, "side": "open"}])}, "bad_step:CLOSE_PARTIAL_75:side"),
        ({"steps": json.dumps([STEP75] * 17)}, "too_many_steps"),
        ({"reason_codes": "x" * 9000}, "oversized_field:reason_codes"),
    ],
)
def test_rejections(overrides: dict[str, Any], detail: str) -> None:
    fields = entry()
    for key, value in overrides.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    with pytest.raises(InvalidPlan) as info:
        parse_plan(fields)
    assert info.value.detail == detail


def test_a_rejection_keeps_the_plan_id_when_it_is_valid() -> None:
    with pytest.raises(InvalidPlan) as info:
        parse_plan(entry(steps="[oops"))
    assert (info.value.plan_id, info.value.symbol) == ("67e6da21fa9fe506", "BTCUSDT")


def test_implied_pct_when_absent() -> None:
    plan = parse_plan(entry(steps=json.dumps([{"step": "CLOSE_FULL"}])))
    assert plan.close_step is not None and plan.close_step.pct == Decimal(100)


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=200), max_size=12))
def test_never_crashes_on_arbitrary_entries(fields: dict[str, str]) -> None:
    try:
        plan = parse_plan(fields)
    except InvalidPlan as exc:
        assert exc.detail  # noqa: PT017 - any input: either outcome is fine
    else:
        assert plan.decision in ("EXECUTE", "SKIP", "BLOCKED", "ERROR")
        if plan.decision == "EXECUTE":
            assert plan.close_step is not None
