"""Plan parsing: valid entries become Plans; anything odd is rejected, not guessed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apply_layer.core.errors import InvalidPlan
from apply_layer.core.plans import Step, close_in_content, parse_plan, safe_plan_id

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
        ({"symbol": "B"}, "bad_symbol"),
        ({"symbol": "A" * 31}, "bad_symbol"),
        ({"decision": None}, "missing_field:decision"),
        ({"decision": "YOLO"}, "bad_decision"),
        ({"timestamp": None}, "missing_field:timestamp"),
        ({"timestamp": "nan"}, "bad_timestamp"),
        ({"timestamp": "-5"}, "bad_timestamp"),
        ({"timestamp": "1e30"}, "bad_timestamp"),
        ({"steps": None, "action": "UPDATE_SL"}, "missing_field:steps"),
        ({"steps": None, "action": None}, "missing_field:steps"),
        ({"steps": "", "action": "ENTRY_PROPOSED"}, "missing_field:steps"),
        ({"steps": None, "action": "partial_75"}, "missing_field:steps"),
        ({"timestamp": "100000000000001"}, "bad_timestamp"),
        ({"timestamp": "0"}, "bad_timestamp"),
        ({"timestamp": "1769301008.9\n"}, None),
        ({"plan_id": "67e6da21fa9fe506\n"}, "bad_plan_id"),
        ({"symbol": "BTCUSDT\n"}, "bad_symbol"),
        ({"steps": json.dumps([{"step": "CLOSE_FULL\n"}])}, "bad_step:name"),
        ({"steps": json.dumps([{**STEP75, "pct": 0}])}, "bad_step:CLOSE_PARTIAL_75:pct"),
        ({"steps": json.dumps([{**STEP75, "pct": -25}])}, "bad_step:CLOSE_PARTIAL_75:pct"),
        ({"steps": json.dumps([{**STEP75, "pct": 100.5}])}, "bad_step:CLOSE_PARTIAL_75:pct"),
        ({"steps": json.dumps([{**STEP75, "pct": True}])}, "bad_step:CLOSE_PARTIAL_75:pct"),
        (
            {"steps": '[{"step": "CLOSE_FULL", "pct": ' + "9" * 400 + "}]"},
            "bad_step:CLOSE_FULL:pct",
        ),
        ({"steps": '[{"step": "CLOSE_FULL", "pct": 1e999}]'}, "bad_step:CLOSE_FULL:pct"),
        ({"steps": json.dumps([{"step": "PARTIAL_33", "pct": 33}])}, "no_close_step"),
        ({"steps": json.dumps([{"step": "PARTIAL_75"}, STEP75])}, "multiple_close_steps"),
        ({"steps": "[not json"}, "bad_steps_json"),
        ({"steps": "{}"}, "steps_not_a_list"),
        ({"steps": "[]"}, "no_steps"),
        ({"steps": json.dumps(["CLOSE_FULL"])}, "bad_step:not_an_object"),
        ({"steps": json.dumps([{"step": "close full"}])}, "bad_step:name"),
        ({"steps": json.dumps([{"step": "UPDATE_SL"}])}, "no_close_step"),
        ({"steps": json.dumps([STEP75, {"step": "CLOSE_FULL"}])}, "multiple_close_steps"),
        ({"steps": json.dumps([{**STEP75, "pct": "75"}])}, "bad_step:CLOSE_PARTIAL_75:pct"),
        ({"steps": json.dumps([{**STEP75, "type": "limit"}])}, "bad_step:CLOSE_PARTIAL_75:type"),
        ({"steps": json.dumps([{**STEP75, "side": "open"}])}, "bad_step:CLOSE_PARTIAL_75:side"),
        ({"steps": json.dumps([STEP75] * 17)}, "too_many_steps"),
        ({"reason_codes": "x" * 9000}, "oversized_field:reason_codes"),
    ],
)
def test_rejections(overrides: dict[str, Any], detail: str | None) -> None:
    fields = entry()
    for key, value in overrides.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    if detail is None:  # accepted: float() itself allows surrounding whitespace
        assert parse_plan(fields).plan_id == "67e6da21fa9fe506"
        return
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


# ---- the running system's writers (docs/CONTRACT.md, "Plans") ---------------------


def rotation_close(**overrides: str) -> dict[str, str]:
    """The governor's rotation close plan: no steps, the close named by ``action``."""
    fields = {
        "plan_id": "rot_1a2b3c4d_ETHUSDT",
        "symbol": "ETHUSDT",
        "action": "FULL_CLOSE_PROPOSED",
        "side": "CLOSE",
        "qty": "0",
        "reduceOnly": "true",
        "decision": "EXECUTE",
        "source": "governor",
        "kill_score": "0",
        "rotation_trigger": "true",
        "new_symbol": "SOLUSDT",
        "new_plan_id": "1a2b3c4d5e6f7a8b",
        "timestamp": "1795977136.52",
    }
    fields.update(overrides)
    return fields


@pytest.mark.parametrize(
    ("action", "step", "pct"),
    [
        ("FULL_CLOSE_PROPOSED", "CLOSE_FULL", 100),
        ("CLOSE_FULL", "CLOSE_FULL", 100),
        ("FULL_CLOSE", "CLOSE_FULL", 100),
        ("PARTIAL_75", "CLOSE_PARTIAL_75", 75),
        ("PARTIAL_50", "CLOSE_PARTIAL_50", 50),
        ("PARTIAL_25", "CLOSE_PARTIAL_25", 25),
    ],
)
def test_a_plan_without_steps_closes_what_its_action_says(action: str, step: str, pct: int) -> None:
    plan = parse_plan(rotation_close(action=action))
    assert plan.close_step is not None
    assert (plan.close_step.name, plan.close_step.pct, plan.close_step.warning) == (
        step,
        Decimal(pct),
        "",
    )
    assert plan.steps == (plan.close_step,) and plan.action == action
    assert plan.extra["rotation_trigger"] == "true" and plan.extra["new_symbol"] == "SOLUSDT"


def test_steps_win_over_the_action_when_present() -> None:
    plan = parse_plan(entry(action="FULL_CLOSE_PROPOSED"))
    assert plan.close_step is not None and plan.close_step.pct == Decimal(75)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1795977136", 1795977136.0),  # integer seconds (planner, harvest_v2)
        ("1795977136.52", 1795977136.52),  # float seconds (governor)
        ("1795977136520", 1795977136.52),  # milliseconds
        ("99999999999", 99999999999.0),  # the last value read as seconds
        ("100000000001", 100000000.001),  # the first read as milliseconds
    ],
)
def test_timestamps_in_seconds_or_milliseconds(text: str, seconds: float) -> None:
    assert parse_plan(rotation_close(timestamp=text)).timestamp == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("name", "pct"),
    [
        ("CLOSE_FULL", 100),
        ("CLOSE_PARTIAL_75", 75),
        ("CLOSE_PARTIAL_50", 50),
        ("CLOSE_PARTIAL_25", 25),
        ("PARTIAL_75", 75),
        ("PARTIAL_50", 50),
        ("PARTIAL_25", 25),
    ],
)
def test_every_close_step_name_and_its_share(name: str, pct: int) -> None:
    for given_pct in (pct, float(pct), None):
        step: dict[str, Any] = {"step": name, "type": "market_reduce_only", "side": "close"}
        if given_pct is not None:
            step["pct"] = given_pct
        plan = parse_plan(entry(steps=json.dumps([step])))
        assert plan.close_step is not None
        assert (plan.close_step.pct, plan.close_step.warning) == (Decimal(pct), "")


@pytest.mark.parametrize(
    ("name", "given", "closing"),
    [
        ("PARTIAL_75", 25.0, "25"),  # harvest_v2's incremental stage: pct 25 under PARTIAL_75
        ("PARTIAL_50", 25.0, "25"),
        ("CLOSE_PARTIAL_75", 50, "50"),
        ("CLOSE_FULL", 99.5, "99.5"),
        ("CLOSE_PARTIAL_25", 75, "25"),  # pct larger than the name: the name's share
        ("CLOSE_PARTIAL_50", 100, "50"),
    ],
)
def test_name_and_pct_disagree_close_the_smaller_share(
    name: str, given: float, closing: str
) -> None:
    step = {"step": name, "type": "market_reduce_only", "side": "close", "pct": given}
    plan = parse_plan(entry(steps=json.dumps([step])))
    assert plan.close_step is not None
    assert plan.close_step.pct == Decimal(closing)
    implied = name.rsplit("_", 1)[-1].replace("FULL", "100")
    assert plan.close_step.warning == (
        f"pct_mismatch:name={implied},pct={Decimal(str(given)).normalize():f},closing={closing}"
    )


def test_only_non_close_steps_are_rejected_even_with_a_close_action() -> None:
    steps = json.dumps([{"step": "UPDATE_SL", "type": "stop_loss_order", "price": 1.0}])
    with pytest.raises(InvalidPlan) as info:
        parse_plan(entry(steps=steps, action="FULL_CLOSE_PROPOSED"))
    assert info.value.detail == "no_close_step"


# ---- what a rejection carries, and the exact edges of every bound -------------------------


@pytest.mark.parametrize(
    ("overrides", "detail", "plan_id", "symbol"),
    [
        ({"plan_id": None}, "missing_field:plan_id", "", ""),
        ({"plan_id": "bad id"}, "bad_plan_id", "", ""),
        ({"symbol": None}, "missing_field:symbol", "67e6da21fa9fe506", ""),
        ({"symbol": "btc"}, "bad_symbol", "67e6da21fa9fe506", ""),
        ({"decision": None}, "missing_field:decision", "67e6da21fa9fe506", "BTCUSDT"),
        ({"decision": "MAYBE"}, "bad_decision", "67e6da21fa9fe506", "BTCUSDT"),
        ({"timestamp": None}, "missing_field:timestamp", "67e6da21fa9fe506", "BTCUSDT"),
        ({"timestamp": "soon"}, "bad_timestamp", "67e6da21fa9fe506", "BTCUSDT"),
        ({"steps": "[1]"}, "bad_step:not_an_object", "67e6da21fa9fe506", "BTCUSDT"),
    ],
)
def test_a_rejection_names_what_it_could_read(
    overrides: dict[str, Any], detail: str, plan_id: str, symbol: str
) -> None:
    fields = entry()
    for key, value in overrides.items():
        if value is None:
            fields.pop(key)
        else:
            fields[key] = value
    with pytest.raises(InvalidPlan) as info:
        parse_plan(fields)
    assert (info.value.detail, info.value.plan_id, info.value.symbol) == (detail, plan_id, symbol)
    assert str(info.value) == detail


def test_field_and_entry_size_bounds_to_the_byte() -> None:
    """The documented bounds, as numbers: a changed constant must fail here."""
    # One field (key + value) of exactly 8192 is accepted; one byte more is not.
    at_limit = entry(reason_codes="x" * (8192 - len("reason_codes")))
    assert parse_plan(at_limit).extra["reason_codes"] == "x" * (8192 - 12)
    over = entry(reason_codes="x" * (8192 - len("reason_codes") + 1))
    with pytest.raises(InvalidPlan) as info:
        parse_plan(over)
    assert (info.value.detail, info.value.plan_id) == (
        "oversized_field:reason_codes",
        "67e6da21fa9fe506",
    )
    long_key = "k" * 40
    with pytest.raises(InvalidPlan) as info:
        parse_plan(entry(**{long_key: "v" * 8192}))
    assert info.value.detail == "oversized_field:" + "k" * 32
    # Many fields, each small, that add up past the entry's bound.
    base = entry()
    used = sum(len(k.encode()) + len(v.encode()) for k, v in base.items())
    per = 8000
    count, rest = divmod(65536 - used, per)
    fields = dict(base)
    for i in range(count):
        fields[f"f{i:03d}"] = "y" * (per - 4)
    fields["last"] = "z" * (rest - 4)
    assert sum(len(k) + len(v) for k, v in fields.items()) == 65536
    assert parse_plan(fields).plan_id == "67e6da21fa9fe506"  # exactly at the bound
    fields["last"] += "z"
    with pytest.raises(InvalidPlan) as info:
        parse_plan(fields)
    assert (info.value.detail, info.value.plan_id) == ("oversized_entry", "67e6da21fa9fe506")


@pytest.mark.parametrize(
    ("plan_id", "kept"),
    [("67e6da21fa9fe506", "67e6da21fa9fe506"), ("x" * 64, "x" * 64), ("bad id", ""), ("", "")],
)
def test_an_oversized_entry_keeps_only_a_valid_plan_id(plan_id: str, kept: str) -> None:
    with pytest.raises(InvalidPlan) as info:
        parse_plan(entry(plan_id=plan_id, reason_codes="x" * 9000))
    assert info.value.plan_id == kept


def test_sixty_four_character_ids_and_sixteen_steps() -> None:
    assert parse_plan(entry(plan_id="a" * 64)).plan_id == "a" * 64
    steps = [STEP75] + [{"step": "UPDATE_SL"}] * 15
    plan = parse_plan(entry(steps=json.dumps(steps)))
    assert len(plan.steps) == 16 and len(plan.unsupported_steps) == 15


@pytest.mark.parametrize("decision", ["BLOCKED", "ERROR", "SKIP"])
def test_every_decision_parses(decision: str) -> None:
    plan = parse_plan(entry(decision=decision))
    assert (plan.decision, plan.steps) == (decision, ())  # steps are read for EXECUTE only


def test_known_fields_are_not_extra_and_action_defaults_to_empty() -> None:
    plan = parse_plan(entry(action=None))
    assert plan.action == ""
    assert set(plan.extra) == {"kill_score", "qty"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0.5", 0.5),
        ("100000000000", 1e11),  # exactly the threshold: still seconds
        ("100000000000000", 1e11),  # the largest accepted, in ms
    ],
)
def test_timestamp_edges(text: str, seconds: float) -> None:
    assert parse_plan(entry(timestamp=text)).timestamp == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("name", "pct", "share"),
    [("CLOSE_FULL", 33.3, "33.3"), ("CLOSE_FULL", 0.5, "0.5"), ("PARTIAL_50", 50, "50")],
)
def test_the_share_is_the_pct_as_written(name: str, pct: float, share: str) -> None:
    plan = parse_plan(entry(steps=json.dumps([{"step": name, "pct": pct}])))
    assert plan.close_step is not None
    assert (plan.close_step.name, plan.close_step.pct) == (name, Decimal(share))
    assert str(plan.close_step.pct) == share


def test_close_steps_keep_their_names() -> None:
    for name in ("CLOSE_FULL", "CLOSE_PARTIAL_25", "PARTIAL_50"):
        plan = parse_plan(entry(steps=json.dumps([{"step": name}])))
        assert plan.close_step is not None and plan.close_step.name == name


def test_an_oversized_entry_without_a_plan_id_names_none() -> None:
    fields = entry(reason_codes="x" * 9000)
    del fields["plan_id"]
    with pytest.raises(InvalidPlan) as info:
        parse_plan(fields)
    assert (info.value.detail, info.value.plan_id) == ("oversized_field:reason_codes", "")


def test_the_action_is_a_known_field_not_an_extra() -> None:
    plan = parse_plan(entry(action="PARTIAL_75"))
    assert plan.action == "PARTIAL_75" and "action" not in plan.extra and "steps" not in plan.extra


def test_an_oversized_field_is_named_log_safe() -> None:
    """The field name is echoed in the result's error and the log line."""
    with pytest.raises(InvalidPlan) as exc:
        parse_plan({"plan_id": "p1", "bad\nname {x}": "x" * 9000})
    assert exc.value.detail == "oversized_field:bad_name__x_"
    assert exc.value.plan_id == "p1"


@pytest.mark.parametrize(
    ("fields", "echoed"),
    [
        ({"plan_id": "p-1_A"}, "p-1_A"),
        ({"plan_id": "bad id"}, ""),  # not a plan id: nothing to journal by
        ({"plan_id": "p" * 65}, ""),
        ({"plan": "p1"}, ""),
        ({"symbol": "p1"}, ""),  # another field's value is never taken for the id
    ],
)
def test_safe_plan_id(fields: dict[str, str], echoed: str) -> None:
    assert safe_plan_id(fields) == echoed


def test_the_close_in_a_journalled_content_reads_back_as_the_plan_closes() -> None:
    plan = parse_plan(entry())
    assert plan.content == "BTCUSDT EXECUTE CLOSE_PARTIAL_75 75"
    assert close_in_content(plan.content) == Step("CLOSE_PARTIAL_75", Decimal("75"))
    full = {"step": "CLOSE_FULL", "type": "market_reduce_only", "side": "close", "pct": 100}
    assert close_in_content(parse_plan(entry(steps=json.dumps([full]))).content) == Step(
        "CLOSE_FULL", Decimal("100")
    )
    odd = {**STEP75, "pct": 12.5}
    assert close_in_content(parse_plan(entry(steps=json.dumps([odd]))).content) == Step(
        "CLOSE_PARTIAL_75", Decimal("12.5")
    )


@pytest.mark.parametrize(
    "content",
    [
        "",
        "invalid",
        "BTCUSDT EXECUTE",
        "BTCUSDT EXECUTE CLOSE_FULL",
        "BTCUSDT EXECUTE CLOSE_FULL 100 extra",
        "BTCUSDT EXECUTE CLOSE_FULL abc",
        "BTCUSDT EXECUTE CLOSE_FULL NaN",
        "BTCUSDT EXECUTE CLOSE_FULL Infinity",
        "BTCUSDT EXECUTE CLOSE_FULL 0",
        "BTCUSDT EXECUTE CLOSE_FULL -5",
        "BTCUSDT EXECUTE CLOSE_FULL 100.01",
        "BTCUSDT EXECUTE close:full 100",
    ],
)
def test_a_content_without_a_readable_close_gives_none(content: str) -> None:
    assert close_in_content(content) is None


def test_a_close_of_exactly_the_edges_is_read() -> None:
    assert close_in_content("X EXECUTE CLOSE_FULL 100") == Step("CLOSE_FULL", Decimal("100"))
    assert close_in_content("X EXECUTE CLOSE_A 0.0001") == Step("CLOSE_A", Decimal("0.0001"))
