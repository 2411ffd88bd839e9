"""The chaos report's per-plan invariant (tests/chaos.py ``judge``): the last result
agrees with the exchange, in every mode. Issue 25's plan is the second case."""

from __future__ import annotations

import pytest

from tests.chaos import Verdict, judge

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


def result(entry_id: str, status: str, error: str = "", **extra: str) -> dict[str, str]:
    return {"_id": entry_id, "status": status, "error": error, **extra}


EXECUTED = result("1-0", "EXECUTED")
BLOCKED = result("1-0", "BLOCKED", "permit_timeout_or_missing:missing_all")
CORRECTION = result(
    "2-0", "EXECUTED", corrects="1-0", corrected_status="BLOCKED", corrected_error="x"
)


def journal(state: str, result_id: str) -> dict[str, str]:
    return {"state": state, "result_id": result_id}


@pytest.mark.parametrize(
    ("results", "placed", "journal_now", "duplicates", "corrected", "agrees"),
    [
        ([EXECUTED], 1, journal("executed", "1-0"), 0, 0, True),
        # issue 25: a filled close, and the only result says BLOCKED
        ([BLOCKED], 1, journal("blocked", "1-0"), 0, 0, False),
        ([BLOCKED], 0, journal("blocked", "1-0"), 0, 0, True),
        ([EXECUTED], 0, journal("executed", "1-0"), 0, 0, False),  # executed, no order
        # the wrong result followed by its correction: the last one agrees
        ([BLOCKED, CORRECTION], 1, journal("executed", "2-0"), 0, 1, True),
        # a correction the journal does not hold: not the plan's result
        ([BLOCKED, CORRECTION], 1, journal("blocked", "1-0"), 0, 1, False),
        # two plain results, or a "correction" of another entry: duplicates
        ([BLOCKED, result("2-0", "BLOCKED", "y")], 0, journal("blocked", "1-0"), 1, 0, False),
        (
            [BLOCKED, result("2-0", "EXECUTED", corrects="9-0")],
            1,
            journal("executed", "2-0"),
            1,
            1,
            True,
        ),
        # a "correction" that says no order is not one
        ([EXECUTED, result("2-0", "BLOCKED", "z", corrects="1-0")], 1, {}, 1, 1, False),
    ],
)
def test_the_last_result_agrees_with_the_exchange(
    results: list[dict[str, str]],
    placed: int,
    journal_now: dict[str, str],
    duplicates: int,
    corrected: int,
    agrees: bool,
) -> None:
    verdict = judge("p1", results, placed, journal_now)
    assert (verdict.duplicates, verdict.corrected, verdict.agrees) == (
        duplicates,
        corrected,
        agrees,
    )
    assert bool(verdict.detail) is not agrees
    if not agrees:
        assert verdict.detail.startswith("p1: last result")
    assert isinstance(verdict, Verdict)
