"""The status enums are their wire text: everywhere a bare string went, the same bytes go."""

from __future__ import annotations

import io
import json
import logging
from enum import StrEnum
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from apply_layer.core import statuses
from apply_layer.core.statuses import (
    FINAL_STATES,
    RESULT_DECISIONS,
    STATES,
    GateStatus,
    HandledKind,
    JournalState,
    OutcomeStatus,
    ResultDecision,
    StepStatus,
)
from apply_layer.logs import get_logger, setup_logging

ENUMS: tuple[type[StrEnum], ...] = (
    OutcomeStatus,
    ResultDecision,
    JournalState,
    StepStatus,
    GateStatus,
    HandledKind,
)
MEMBERS = [member for enum in ENUMS for member in enum]


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: f"{type(m).__name__}.{m.name}")
def test_a_member_prints_as_its_value(member: StrEnum) -> None:
    value = member.value
    assert str(member) == value and f"{member}" == value and format(member, "") == value
    assert json.dumps({"k": member}) == json.dumps({"k": value})
    assert member == value and hash(member) == hash(value)


def test_every_member_is_documented() -> None:
    """Each member has a ``#:`` line above it saying when it happens."""
    source = Path(statuses.__file__).read_text(encoding="utf-8").splitlines()
    for member in MEMBERS:
        line = next(
            i
            for i, text in enumerate(source)
            if text.strip().startswith(f"{member.name} = ")
            and _owner(source, i) == type(member).__name__
        )
        assert source[line - 1].strip().startswith("#:"), member


def _owner(source: list[str], line: int) -> str:
    for text in reversed(source[:line]):
        if text.startswith("class "):
            return text.split()[1].split("(")[0]
    return ""


def test_the_wire_values_are_the_documented_ones() -> None:
    assert [*OutcomeStatus] == ["EXECUTED", "BLOCKED", "SKIPPED", "REJECTED", "FAILED"]
    assert [*ResultDecision] == ["EXECUTE", "BLOCKED", "SKIP", "ERROR"]
    assert [*JournalState] == [
        "received",
        "permitted",
        "submitting",
        "executed",
        "rejected",
        "failed",
        "blocked",
        "skipped",
    ]
    assert sorted(FINAL_STATES) == ["blocked", "executed", "failed", "rejected", "skipped"]
    assert [*StepStatus] == ["EXECUTED", "DRY_RUN", "REJECTED", "FAILED", "UNSUPPORTED"]
    assert [*GateStatus] == ["ALLOW", "DENY", "GOV_BLOCK", "KILL", "TIMEOUT", "MISMATCH", "WAIT"]
    assert [*HandledKind] == ["published", "duplicate", "done"]
    assert {s: str(STATES[s]) for s in OutcomeStatus} == {s: s.lower() for s in OutcomeStatus}
    assert set(RESULT_DECISIONS) == set(OutcomeStatus) == set(STATES)


def test_a_metric_label_is_the_value() -> None:
    registry = CollectorRegistry()
    counter = Counter("plans", "x", ["status"], registry=registry)
    counter.labels(OutcomeStatus.SKIPPED).inc()
    assert 'plans_total{status="SKIPPED"} 1.0' in generate_latest(registry).decode()


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_log_field_is_the_value(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging("INFO", fmt, stream=stream)
    try:
        get_logger().info("plan_outcome", status=OutcomeStatus.FAILED, state=JournalState.FAILED)
    finally:
        setup_logging("DEBUG", "console")
    line = stream.getvalue()
    if fmt == "json":
        data = json.loads(line)
        assert (data["status"], data["state"]) == ("FAILED", "failed")
    else:
        assert "status=FAILED state=failed" in line
    logging.getLogger("apply_layer").handlers.clear()
