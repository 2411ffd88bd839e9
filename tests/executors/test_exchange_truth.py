"""The rule of exchange_truth.py, as tables: when a plan about to end without an
order is checked against the exchange first, and what the answer makes of it."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from apply_layer.core.outcomes import Outcome, StepResult, blocked, rejected, skipped
from apply_layer.core.plans import Plan, Step
from apply_layer.core.statuses import OutcomeStatus, StepStatus
from apply_layer.executors import exchange_truth as xt
from apply_layer.executors.base import OrderRef
from apply_layer.executors.dry_run import DryRunExecutor
from apply_layer.executors.paper import PaperExecutor
from tests.harness import StubExecutor

pytestmark = pytest.mark.unit  # scripts/test.sh --fast

CHANGED_MS = 1_795_977_136_000  # when Redis changed (or the process first met it)
ALLOW = frozenset({"BTCUSDT"})
MARGIN = xt.CLOCK_MARGIN_MS
CLOSE = Step("CLOSE_PARTIAL_75", Decimal(75))


def plan(
    at_ms: int = CHANGED_MS - 10_000,
    decision: str = "EXECUTE",
    symbol: str = "BTCUSDT",
    steps: tuple[Step, ...] = (CLOSE,),
) -> Plan:
    return Plan("p1", symbol, decision, at_ms / 1000, steps=steps)


def entry(at_ms: int) -> str:
    return f"{at_ms}-0"


NEW = CHANGED_MS + MARGIN + 1  # first written after the change, past the clock margin
OLD = CHANGED_MS - 10_000


@pytest.mark.parametrize(
    ("given", "entry_at", "unseen", "expected"),
    [
        (plan(OLD), OLD, CHANGED_MS, True),  # written before the change: may be unseen
        (plan(NEW), NEW, CHANGED_MS, False),  # written after it: the journal shows all
        (plan(NEW), NEW, 0, False),  # nothing can have been lost
        (plan(OLD), NEW, CHANGED_MS, True),  # a copy read later, of an older plan
        (plan(NEW), OLD, CHANGED_MS, True),  # an old entry with a newer timestamp
        (plan(CHANGED_MS + MARGIN), NEW, CHANGED_MS, True),  # within the margin: look
        (plan(OLD, decision="SKIP"), OLD, CHANGED_MS, False),  # never acted on
        (plan(OLD, symbol="ETHUSDT"), OLD, CHANGED_MS, False),  # not allowlisted: no order
        (plan(OLD, steps=(Step("UPDATE_SL", None),)), OLD, CHANGED_MS, False),  # no close
    ],
)
def test_when_an_order_may_exist_unseen(
    given: Plan, entry_at: int, unseen: int, expected: bool
) -> None:
    assert xt.may_be_unseen(given, entry(entry_at), unseen_ms=unseen, allowlist=ALLOW) is expected


def test_an_unreadable_entry_id_counts_as_old() -> None:
    assert xt.entry_ms("not-an-id") == 0
    assert xt.may_be_unseen(plan(NEW), "garbage", unseen_ms=CHANGED_MS, allowlist=ALLOW)


class Finder(StubExecutor):
    """Answers find_order with a fixed step result, recording what it was asked."""

    def __init__(self, answer: StepResult | None) -> None:
        self.answer = answer
        self.asked: list[tuple[OrderRef, int]] = []

    async def find_order(self, ref: OrderRef, unseen_ms: int) -> StepResult | None:
        self.asked.append((ref, unseen_ms))
        return self.answer


FILLED = StepResult(
    "CLOSE_PARTIAL_75",
    StepStatus.EXECUTED,
    order_id="42",
    client_order_id="al75-p1",
    side="SELL",
    quantity=Decimal("0.009"),
    executed_qty=Decimal("0.009"),
    avg_price=Decimal(65000),
    order_status="FILLED",
    adopted=True,
)
UNKNOWN = StepResult(
    "CLOSE_PARTIAL_75", StepStatus.FAILED, "order_unknown", message="lookups failed"
)


@pytest.mark.parametrize(
    "ending",
    [
        blocked("permit_timeout_or_missing:missing_all", 1200),
        skipped("stale_plan"),
        rejected("invalid_plan:timestamp_in_future"),
        blocked("kill_switch", 3),
    ],
)
async def test_an_order_found_ends_the_plan_executed_adopted(ending: Outcome) -> None:
    finder = Finder(FILLED)
    settled = await xt.settle(
        ending, plan(), entry(OLD), finder, unseen_ms=CHANGED_MS, allowlist=ALLOW
    )
    assert settled.status == OutcomeStatus.EXECUTED and settled.executed
    assert settled.steps[-1] == FILLED and settled.steps[-1].adopted
    assert settled.wait_ms == ending.wait_ms
    ((ref, unseen),) = finder.asked
    assert ref == OrderRef("p1", "BTCUSDT", "CLOSE_PARTIAL_75", "al75-p1")
    assert unseen == CHANGED_MS


async def test_no_order_keeps_the_ending_and_an_unknown_fate_is_not_guessed() -> None:
    ending = blocked("permit_timeout_or_missing:missing_all", 1200)
    kept = await xt.settle(
        ending, plan(), entry(OLD), Finder(None), unseen_ms=CHANGED_MS, allowlist=ALLOW
    )
    assert kept == ending
    unknown = await xt.settle(
        ending, plan(), entry(OLD), Finder(UNKNOWN), unseen_ms=CHANGED_MS, allowlist=ALLOW
    )
    assert (unknown.status, unknown.error) == (OutcomeStatus.FAILED, "order_unknown")
    assert unknown.would_execute is False  # the gate blocked it: only its fate is unknown
    assert unknown.steps[-1].message == "lookups failed"


async def test_the_exchange_is_not_asked_when_nothing_can_be_unseen() -> None:
    finder = Finder(FILLED)
    ending = blocked("permit_timeout_or_missing:missing_all", 1200)
    for given, entry_id, unseen in [
        (plan(NEW), entry(NEW), CHANGED_MS),  # first written after the change
        (plan(), entry(OLD), 0),  # nothing lost
    ]:
        assert (
            await xt.settle(ending, given, entry_id, finder, unseen_ms=unseen, allowlist=ALLOW)
            == ending
        )
    failed = Outcome(OutcomeStatus.FAILED, "key_wrong_type:lease")  # not an ASKED ending
    assert (
        await xt.settle(failed, plan(), entry(OLD), finder, unseen_ms=CHANGED_MS, allowlist=ALLOW)
        == failed
    )
    assert finder.asked == []


async def test_paper_finds_only_its_own_orders_and_dry_run_none() -> None:
    paper = PaperExecutor()
    ref = OrderRef("p1", "BTCUSDT", "CLOSE_PARTIAL_75", "al75-p1")
    assert await paper.find_order(ref, CHANGED_MS) is None
    paper.orders["al75-p1"] = replace(FILLED, adopted=False)
    found = await paper.find_order(ref, CHANGED_MS)
    assert found is not None and found.adopted and found.order_id == "42"
    assert await DryRunExecutor().find_order(ref, CHANGED_MS) is None
