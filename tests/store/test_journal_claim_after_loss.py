"""claim.lua after lost writes: a journal that no claim opened (the gate's write
survived, the claim's was lost; or a split brain put them on two servers) is
driven by the entry that claims it next, not left to nobody.

Seen in a split-brain chaos run (``--split-brain``): the plan's gate ALLOW was
on one server, its claim on the other; every later copy was logged
``duplicate ... first_status=in_progress`` of an empty holder and acknowledged,
and the plan never got a result.
"""

from __future__ import annotations

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.store.journal import Journal

PLAN = "cl1"


async def test_a_journal_no_claim_opened_is_taken_by_the_next_claim(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    # What gate.lua leaves on its own: state and permits, no stream_id.
    await redis.hset(
        K.journal(PLAN), mapping={"plan_id": PLAN, "symbol": "BTCUSDT", "state": "permitted"}
    )
    first = await journal.claim(PLAN, "BTCUSDT", "100-0")
    assert first.owned_by("100-0") and first.state == "permitted" and not first.result_id
    assert await redis.hget(K.journal(PLAN), "stream_id") == "100-0"
    # From then on it is an ordinary journal: another copy is its duplicate.
    second = await journal.claim(PLAN, "BTCUSDT", "200-0")
    assert not second.owned_by("200-0") and second.holder == "100-0"


async def test_a_journal_with_its_claim_is_left_as_it_is(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    assert (await journal.claim(PLAN, "BTCUSDT", "100-0")).owned_by("100-0")
    other = await journal.claim(PLAN, "BTCUSDT", "200-0")
    assert other.holder == "100-0" and other.state == "received"
    assert await redis.hget(K.journal(PLAN), "stream_id") == "100-0"


async def test_a_finished_journal_no_claim_opened_stays_a_duplicate_of_its_result(
    redis: Redis,
) -> None:
    """A result written again after a loss opens a journal without a claim too; a copy
    of that plan is still a duplicate, logged with the result's status."""
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    await redis.hset(
        K.journal(PLAN),
        mapping={"state": "executed", "result_id": "5-0", "outcome_status": "EXECUTED"},
    )
    claim = await journal.claim(PLAN, "BTCUSDT", "100-0")
    assert not claim.owned_by("100-0") and claim.first_status == "EXECUTED"
    assert await redis.hget(K.journal(PLAN), "stream_id") is None
