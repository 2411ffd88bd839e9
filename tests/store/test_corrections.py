"""A published result that turned out wrong is corrected (corrections.py, lua/correct.lua).

On a real server, through the journal's own publish path: the one that both a
plan's processing and the results written again after a loss go through.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.outcomes import Outcome, StepResult, blocked, result_fields, skipped
from apply_layer.core.statuses import OutcomeStatus, StepStatus
from apply_layer.store.journal import Journal
from apply_layer.store.republish import RecentResults

PLAN, SYMBOL = "cx1", "BTCUSDT"
FILL = StepResult(
    "CLOSE_PARTIAL_75",
    StepStatus.EXECUTED,
    order_id="9001",
    client_order_id=f"al75-{PLAN}",
    side="SELL",
    quantity=Decimal("0.009"),
    executed_qty=Decimal("0.009"),
    avg_price=Decimal(65000),
    order_status="FILLED",
)
EXECUTED = Outcome(OutcomeStatus.EXECUTED, "", True, 40, (FILL,))


def fields(outcome: Outcome) -> dict[str, str]:
    return result_fields(
        plan_id=PLAN, symbol=SYMBOL, plan_decision="EXECUTE", outcome=outcome, mode="testnet"
    )


async def publish(journal: Journal, outcome: Outcome) -> tuple[str, bool]:
    reply = await journal.results.publish(
        PLAN, SYMBOL, outcome.state, fields(outcome), cooldown=outcome.executed
    )
    return reply.result_id, reply.new


async def stream(redis: Redis) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(K.RESULT_STREAM)
    return [dict(f, _id=i) for i, f in entries]


async def test_an_executed_result_corrects_a_published_block(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    wrong_id, new = await publish(journal, blocked("permit_timeout_or_missing:missing_all", 1200))
    assert new and await redis.get(K.cooldown(SYMBOL)) is None
    right_id, corrected = await publish(journal, EXECUTED)
    assert corrected and right_id != wrong_id
    _, right = await stream(redis)
    sent = fields(EXECUTED)
    for clock in ("timestamp", "ts"):  # the time of each call to result_fields
        right.pop(clock), sent.pop(clock)
    assert right == {
        **sent,
        "_id": right_id,
        "corrects": wrong_id,
        "corrected_status": "BLOCKED",
        "corrected_error": "permit_timeout_or_missing:missing_all",
    }
    assert (right["executed"], right["decision"], right["filled_qty"]) == (
        "True",
        "EXECUTE",
        "0.009",
    )
    journal_now = await redis.hgetall(K.journal(PLAN))
    assert journal_now["state"] == "executed" and journal_now["result_id"] == right_id
    assert journal_now["outcome_status"] == "EXECUTED"
    assert journal_now["corrected_result_id"] == wrong_id
    assert journal_now["corrected_status"] == "BLOCKED"
    assert await redis.ttl(K.journal(PLAN)) > 0
    assert 0 < await redis.ttl(K.cooldown(SYMBOL)) <= K.COOLDOWN_TTL_SEC


async def test_a_correction_is_written_once_and_never_undone(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    await publish(journal, skipped("stale_plan"))
    first, corrected = await publish(journal, EXECUTED)
    assert corrected
    # The same executed result again (a second instance, a resent script): nothing new.
    assert await publish(journal, EXECUTED) == (first, False)
    # "No order" never corrects anything: only an order found is evidence.
    assert await publish(journal, blocked("kill_switch")) == (first, False)
    assert len(await stream(redis)) == 2


async def test_an_executed_result_is_never_corrected(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    first, _ = await publish(journal, EXECUTED)
    assert await publish(journal, EXECUTED) == (first, False)
    assert await publish(journal, blocked("permit_timeout_or_missing:missing_p33")) == (
        first,
        False,
    )
    (only,) = await stream(redis)
    assert "corrects" not in only


async def test_results_written_again_after_a_loss_correct_what_they_meet(redis: Redis) -> None:
    """republish_recent (after Redis changed) goes through the same path."""
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600, recent=RecentResults())
    await publish(journal, EXECUTED)  # remembered
    await redis.delete(K.journal(PLAN), K.RESULT_STREAM)  # the loss
    other = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)  # another instance
    wrong_id, _ = await publish(other, blocked("permit_timeout_or_missing:missing_all", 1200))
    assert await journal.results.republish_recent() == 1
    wrong, right = await stream(redis)
    assert (wrong["status"], right["status"], right["corrects"]) == (
        "BLOCKED",
        "EXECUTED",
        wrong_id,
    )


async def test_a_journal_state_written_over_a_published_result_is_set_back(redis: Redis) -> None:
    """A gate that ran for a copy of the plan redelivered after a loss writes its state
    over a journal whose result is already out (seen in a nightly failover run: the
    result EXECUTED, the journal ``blocked``); the publish that finds the result out
    sets the state back to the result's, and publishes nothing."""
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    first, _ = await publish(journal, EXECUTED)
    await redis.hset(K.journal(PLAN), "state", "blocked")  # what gate.lua writes
    assert await publish(journal, EXECUTED) == (first, False)
    assert await redis.hget(K.journal(PLAN), "state") == "executed"
    await redis.hset(K.journal(PLAN), "state", "permitted")
    assert await publish(journal, blocked("permit_timeout_or_missing:missing_all")) == (
        first,
        False,
    )
    assert await redis.hget(K.journal(PLAN), "state") == "executed"
    assert len(await stream(redis)) == 1
