"""Client order ids: deterministic, within Binance's rules, and never shared by two plans."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.errors import RetryLater
from apply_layer.core.order_ids import CLIENT_ORDER_ID_MAX, client_order_id
from apply_layer.core.outcomes import StepResult
from apply_layer.core.plans import CLOSE_STEPS, PLAN_ID_RE
from apply_layer.core.statuses import StepStatus
from apply_layer.daemon.processing import Processor
from apply_layer.executors.base import OrderLog, OrderRequest, Prepared
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.gate import GateConfig, PermitGate
from apply_layer.store.journal import Journal, JournalRecord
from tests.harness import StubExecutor, grant, pending_entry, results, settings_for

BINANCE_CLIENT_ORDER_ID = re.compile(r"[\.A-Z\:/a-z0-9_-]{1,36}")
plan_ids = st.from_regex(PLAN_ID_RE, fullmatch=True)
steps = st.sampled_from(sorted(CLOSE_STEPS))


def _digest(plan_id: str) -> str:
    return hashlib.blake2b(plan_id.encode(), digest_size=12).hexdigest()


def test_short_ids_keep_their_readable_form() -> None:
    # Unchanged across the upgrade: an in-flight plan's order is looked up by it.
    assert client_order_id("67e6da21fa9fe506", "CLOSE_PARTIAL_75") == "al75-67e6da21fa9fe506"
    assert client_order_id("happy", "CLOSE_FULL") == "alF-happy"
    assert client_order_id("h", "PARTIAL_25") == "al25-h"


def test_a_plan_id_equal_to_another_plans_digest_gets_its_own_order_id() -> None:
    long_id = "rotation-" + "x" * 40
    hashed = client_order_id(long_id, "CLOSE_FULL")
    assert hashed == f"alF.{_digest(long_id)}"
    # Before: both were alF-<digest>, and the second plan "adopted" the first one's order.
    assert client_order_id(_digest(long_id), "CLOSE_FULL") == f"alF-{_digest(long_id)}" != hashed


# Every known step's id, written out: the codes are derived from plans.CLOSE_STEPS now,
# and an order in flight is found again only under the id it was sent with.
KNOWN_STEP_IDS = {
    "CLOSE_FULL": "alF-p1",
    "CLOSE_PARTIAL_75": "al75-p1",
    "CLOSE_PARTIAL_50": "al50-p1",
    "CLOSE_PARTIAL_25": "al25-p1",
    "PARTIAL_75": "al75-p1",
    "PARTIAL_50": "al50-p1",
    "PARTIAL_25": "al25-p1",
}


def test_every_known_step_keeps_its_order_id() -> None:
    assert set(KNOWN_STEP_IDS) == set(CLOSE_STEPS)  # a new step must be pinned here too
    for step, cid in KNOWN_STEP_IDS.items():
        assert client_order_id("p1", step) == cid
        hashed = client_order_id("x" * 40, step)
        assert hashed == cid.replace("-p1", f".{_digest('x' * 40)}")
    # A step name no table knows: a 4-hex-digit digest of the name, as before.
    code = hashlib.blake2b(b"TRAILING_STOP", digest_size=2).hexdigest()
    assert client_order_id("p1", "TRAILING_STOP") == f"al{code}-p1"


@given(plan_ids, steps)
def test_within_binance_rules(plan_id: str, step: str) -> None:
    cid = client_order_id(plan_id, step)
    assert len(cid) <= CLIENT_ORDER_ID_MAX and BINANCE_CLIENT_ORDER_ID.fullmatch(cid)
    assert cid == client_order_id(plan_id, step)  # deterministic


@given(plan_ids, plan_ids, steps)
def test_two_plan_ids_never_share_an_order_id(a: str, b: str, step: str) -> None:
    if a != b:
        assert client_order_id(a, step) != client_order_id(b, step)
    # The forms never meet: a readable id holds the plan id and no ".", a hashed one a ".".
    cid = client_order_id(a, step)
    assert (cid.endswith(f"-{a}") and "." not in cid) or cid.endswith(f".{_digest(a)}")


# ---- an in-flight plan keeps the id it was sent with --------------------------------


class _Recorder(StubExecutor):
    """Records the first send, then stops (as a crash mid-send would); later just fills."""

    def __init__(self, stop_after_record: bool) -> None:
        self.stop_after_record = stop_after_record
        self.seen: list[str] = []

    async def execute(
        self, order: OrderRequest, log: OrderLog, prepared: Prepared | None = None
    ) -> StepResult:
        self.seen.append(order.client_order_id)
        if self.stop_after_record:
            await log.record_attempt(1, quantity=Decimal("0.009"), side="SELL")
            raise RetryLater("stopped mid-send")
        return StepResult(
            order.step,
            StepStatus.EXECUTED,
            order_id="7",
            client_order_id=order.client_order_id,
            side="SELL",
            quantity=Decimal("0.009"),
            executed_qty=Decimal("0.009"),
            avg_price=Decimal(1),
            order_status="FILLED",
        )


class _CountingJournal(Journal):
    """Counts the processor's reads of a plan's journal hash."""

    reads = 0

    async def read(self, plan_id: str) -> JournalRecord:
        self.reads += 1
        return await super().read(plan_id)


async def test_a_resumed_order_keeps_the_client_order_id_it_was_sent_with(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    plan_id = "upgrade-" + "y" * 40
    entry_id, fields = await pending_entry(redis, plan_id)
    await grant(redis, plan_id)
    journal = _CountingJournal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    gate = PermitGate(redis, GateConfig(wait_ms=500, step_ms=20))
    first = _Recorder(stop_after_record=True)
    settings = settings_for(redis_server)
    with pytest.raises(RetryLater):  # the entry stays pending, state submitting
        await Processor(settings, redis, gate, journal, first).handle(entry_id, fields)
    assert first.seen == [f"al75.{_digest(plan_id)}"]
    # As if the release before the upgrade had sent it, under the old hashed form.
    old_form = f"al75-{_digest(plan_id)}"
    await redis.hset(K.journal(plan_id), "order.client_order_id", old_form)
    second = _Recorder(stop_after_record=False)
    assert journal.reads == 0  # a new plan reads no journal record
    await Processor(settings, redis, gate, journal, second).handle(entry_id, fields)
    assert second.seen == [old_form]
    assert journal.reads == 1  # the resumed plan's record, read once and passed along
    (result,) = await results(redis)
    assert result["status"] == "EXECUTED"
