"""The processor's paths that end an entry without reaching the gate, on fakeredis.

Every path ends the entry once: one published result (acknowledged in the
same script), or, for a duplicate or a result already out, one
acknowledgement and (for a duplicate) one log line. The gate, the lease and
the executors are exercised on a real server (tests/daemon, tests/store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from apply_layer.core import keys as K
from apply_layer.daemon import processing
from apply_layer.daemon.processing import Processor
from apply_layer.executors.paper import PaperExecutor
from apply_layer.settings import load_settings
from apply_layer.store.gate import GateConfig, PermitGate
from apply_layer.store.journal import Journal
from tests.harness import pending_count, publish_plan, results

pytestmark = pytest.mark.unit  # scripts/test.sh --fast

GROUP = "apply_layer"


@pytest.fixture
async def fake() -> AsyncIterator[Redis]:
    client: Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    await client.xgroup_create(K.PLAN_STREAM, GROUP, id="$", mkstream=True)
    try:
        yield client
    finally:
        await client.aclose()


def processor(redis: Redis) -> Processor:
    settings = load_settings(
        redis_url="redis://127.0.0.1:1/0",
        mode="paper",
        metrics_port=0,
        allowlist="BTCUSDT,ETHUSDT",
        consumer_name="unit",
    )
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600, group=GROUP)
    gate = PermitGate(redis, GateConfig(wait_ms=50, step_ms=10))
    return Processor(settings, redis, gate, journal, PaperExecutor())


async def read_one(redis: Redis) -> tuple[str, dict[str, str]]:
    reply: Any = await redis.xreadgroup(GROUP, "c", {K.PLAN_STREAM: ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    return str(entry_id), dict(fields)


async def test_an_invalid_plan_is_rejected_and_published_once(fake: Redis) -> None:
    await publish_plan(fake, "bad1", decision="MAYBE")
    entry_id, fields = await read_one(fake)
    proc = processor(fake)
    handled = await proc.handle(entry_id, fields)
    assert handled.kind == "published"
    assert handled.outcome is not None and handled.outcome.status == "REJECTED"
    (result,) = await results(fake)
    assert (result["plan_id"], result["status"]) == ("bad1", "REJECTED")
    assert result["error"].startswith("invalid_plan:")
    assert await pending_count(fake) == 0  # acknowledged with its result
    again = await proc.handle(entry_id, fields)  # redelivered: nothing twice
    assert again.kind == "done" and len(await results(fake)) == 1


async def test_an_entry_without_a_plan_id_is_published_unjournalled(fake: Redis) -> None:
    await fake.xadd(K.PLAN_STREAM, {"junk": "1"})
    entry_id, fields = await read_one(fake)
    proc = processor(fake)
    with capture_logs() as logs:
        handled = await proc.handle(entry_id, fields)
    assert handled.kind == "published" and await pending_count(fake) == 0
    (result,) = await results(fake)
    assert result["error"] == "invalid_plan:missing_field:plan_id"
    assert [e["event"] for e in logs] == ["plan_rejected"]
    assert (await proc.handle(entry_id, fields)).kind == "done"  # no longer pending
    assert len(await results(fake)) == 1


async def test_a_duplicate_entry_is_logged_once_and_acknowledged(fake: Redis) -> None:
    proc = processor(fake)
    await publish_plan(fake, "dup1", decision="SKIP")
    await publish_plan(fake, "dup1", decision="SKIP")
    first_id, first = await read_one(fake)
    second_id, second = await read_one(fake)
    assert (await proc.handle(first_id, first)).kind == "published"
    with capture_logs() as logs:
        handled = await proc.handle(second_id, second)
    assert handled.kind == "duplicate"
    (line,) = logs
    assert line["event"] == "duplicate plan=dup1 first_status=SKIPPED"
    assert (line["first_entry_id"], line["entry_id"]) == (first_id, second_id)
    assert line["first_status"] == "SKIPPED"
    assert len(await results(fake)) == 1
    assert await pending_count(fake) == 0  # the duplicate is acknowledged too


async def test_a_result_out_with_the_entry_still_pending_is_acknowledged(fake: Redis) -> None:
    proc = processor(fake)
    await publish_plan(fake, "done2", decision="SKIP")
    entry_id, fields = await read_one(fake)
    journal = Journal(fake, dedupe_ttl_sec=300, journal_ttl_sec=3600, group=GROUP)
    await journal.claim("done2", "BTCUSDT", entry_id)
    # Published without the ack (entry_id ""): the crash came between the two.
    await journal.results.publish(
        "done2", "BTCUSDT", "skipped", {"plan_id": "done2", "status": "SKIPPED"}
    )
    assert await pending_count(fake) == 1
    handled = await proc.handle(entry_id, fields)
    assert handled.kind == "done"
    assert await pending_count(fake) == 0
    assert len(await results(fake)) == 1


async def test_a_claim_key_of_another_type_rejects_with_key_wrong_type(fake: Redis) -> None:
    await fake.lpush(K.claim("wt1"), "x")
    await publish_plan(fake, "wt1")
    entry_id, fields = await read_one(fake)
    with capture_logs() as logs:
        handled = await processor(fake).handle(entry_id, fields)
    assert handled.kind == "published"
    (result,) = await results(fake)
    assert (result["status"], result["error"]) == ("REJECTED", "key_wrong_type:claim")
    assert await pending_count(fake) == 0
    wrong = [e for e in logs if e["event"] == "key_wrong_type"]
    assert [e["key"] for e in wrong] == [K.claim("wt1")]
    assert [e["event"] for e in logs if e["event"].startswith("plan_")] == ["plan_rejected"]


async def test_a_journal_key_of_another_type_rejects_with_key_wrong_type(fake: Redis) -> None:
    await fake.set(K.journal("wt2"), "x")
    await publish_plan(fake, "wt2")
    entry_id, fields = await read_one(fake)
    handled = await processor(fake).handle(entry_id, fields)
    assert handled.kind == "published"
    (result,) = await results(fake)
    assert result["error"] == "key_wrong_type:journal"
    assert await pending_count(fake) == 0


def _explode(_: Any) -> Any:
    raise ZeroDivisionError("a bug")


async def test_an_unforeseen_exception_ends_the_entry_failed_internal_error(
    fake: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = processor(fake)
    monkeypatch.setattr(processing, "parse_plan", _explode)
    await publish_plan(fake, "bug1")
    entry_id, fields = await read_one(fake)
    with capture_logs() as logs:
        handled = await proc.handle(entry_id, fields)
    assert handled.kind == "published"
    assert handled.outcome is not None and handled.outcome.status == "FAILED"
    (result,) = await results(fake)
    assert (result["plan_id"], result["status"]) == ("bug1", "FAILED")
    assert result["error"] == "internal_error:ZeroDivisionError"
    assert await pending_count(fake) == 0
    assert [e["event"] for e in logs] == ["plan_internal_error", "plan_outcome"]
    again = await proc.handle(entry_id, fields)
    assert again.kind == "done" and len(await results(fake)) == 1


async def test_an_unforeseen_exception_never_guesses_while_an_order_may_be_out(
    fake: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = processor(fake)
    await publish_plan(fake, "bug2")
    entry_id, fields = await read_one(fake)
    await fake.hset(K.journal("bug2"), mapping={"state": "submitting", "stream_id": entry_id})
    monkeypatch.setattr(processing, "parse_plan", _explode)
    with pytest.raises(ZeroDivisionError):
        await proc.handle(entry_id, fields)
    assert await results(fake) == [] and await pending_count(fake) == 1


async def test_a_gone_entry_is_logged_and_acknowledged(fake: Redis) -> None:
    await publish_plan(fake, "gone1")
    entry_id, _ = await read_one(fake)
    with capture_logs() as logs:
        await processor(fake).drop_gone(entry_id)
    assert [(e["event"], e["entry_id"]) for e in logs] == [("pending_entry_gone", entry_id)]
    assert await pending_count(fake) == 0 and await results(fake) == []
