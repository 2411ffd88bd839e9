"""Entries that used to never finish: each now ends with exactly one outcome.

Every case here was redelivered forever by the previous release (found by
the hostile-input run, issue 13): the real daemon must end each one with one
result, acknowledge it, and carry on with the valid plans behind it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.daemon import processing
from apply_layer.daemon.processing import Processor
from apply_layer.executors.paper import PaperExecutor
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.gate import GateConfig, PermitGate
from apply_layer.store.journal import Journal
from tests.harness import (
    Daemon,
    grant,
    pending_count,
    pending_entry,
    publish_plan,
    results,
    settings_for,
    wait_result,
)

DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemons(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[DaemonFactory]:
    made: list[Daemon] = []

    def make(**settings: Any) -> Daemon:
        daemon = Daemon(redis_server.url, tmp_path, f"d{len(made) + 1}", **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


async def test_keys_of_the_wrong_type_end_the_entry_not_the_service(
    redis: Redis, daemons: DaemonFactory
) -> None:
    """WRONGTYPE from the claim script was taken for an outage, every cycle."""
    daemon = await daemons(permit_wait_ms=300).start().ready(redis)
    await redis.rpush(K.claim("wt-claim"), "x")
    await redis.sadd(K.journal("wt-journal"), "x")
    await redis.hset(K.symbol_lease("ETHUSDT"), "x", "1")
    for plan_id in ("wt-claim", "wt-journal"):
        await grant(redis, plan_id)
        await publish_plan(redis, plan_id)
    # The poison goes in before the plan: a daemon that read the plan first would
    # have written a journal of its own there, and ZADD met WRONGTYPE (CI, once).
    await redis.zadd(K.journal("wt-invalid"), {"x": 1})
    await publish_plan(redis, "wt-invalid", steps="[oops")
    await grant(redis, "wt-lease", symbol="ETHUSDT")
    await publish_plan(redis, "wt-lease", symbol="ETHUSDT")
    expected = {
        "wt-claim": ("REJECTED", "key_wrong_type:claim"),
        "wt-journal": ("REJECTED", "key_wrong_type:journal"),
        "wt-invalid": ("REJECTED", "invalid_plan:bad_steps_json"),
        # The permits were consumed, no order was sent: it cannot go on, and says so.
        "wt-lease": ("FAILED", "key_wrong_type:lease"),
    }
    for plan_id, (status, error) in expected.items():
        result = await wait_result(redis, plan_id)
        assert (result["status"], result["error"], result["executed"]) == (status, error, "False")
    await grant(redis, "after")
    await publish_plan(redis, "after")
    assert (await wait_result(redis, "after"))["status"] == "EXECUTED"
    assert len(await results(redis)) == len(expected) + 1
    assert await pending_count(redis) == 0
    log = daemon.log()
    assert "redis_unavailable" not in log and "redis_recovered" not in log
    events = [r.get("event", r.get("message")) for r in daemon.records()]
    assert events.count("key_wrong_type") >= 4  # the key is named for the operator


async def test_a_deeply_nested_governor_marker_gets_its_result(
    redis: Redis, daemons: DaemonFactory
) -> None:
    """RecursionError after the gate consumed the permits: no result, ever."""
    await daemons().start().ready(redis)
    await grant(redis, "deep")
    await redis.set(K.governor_block("deep"), "[" * 2000 + "]" * 2000)
    await publish_plan(redis, "deep")
    result = await wait_result(redis, "deep")
    assert result["status"] == "BLOCKED" and result["error"].startswith("governor_blocked:")
    assert await pending_count(redis) == 0


async def test_a_309_digit_pct_is_rejected_through_the_daemon(
    redis: Redis, daemons: DaemonFactory
) -> None:
    """OverflowError in plan parsing (math.isfinite on a huge int); fixed in parsing."""
    await daemons().start().ready(redis)
    step = {"step": "CLOSE_FULL", "type": "market_reduce_only", "side": "close"}
    steps = json.dumps([step])[:-2] + ', "pct": ' + "9" * 309 + "}]"
    await grant(redis, "bigpct")
    await publish_plan(redis, "bigpct", steps=steps)
    result = await wait_result(redis, "bigpct")
    assert result["status"] == "REJECTED"
    assert result["error"] == "invalid_plan:bad_step:CLOSE_FULL:pct"
    assert await pending_count(redis) == 0


# ---- the last line of defence: an exception nobody foresaw ---------------------------


def _processor(redis: Redis, redis_server: EmbeddedRedis) -> Processor:
    settings = settings_for(redis_server)
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    gate = PermitGate(redis, GateConfig(wait_ms=200, step_ms=20))
    return Processor(settings, redis, gate, journal, PaperExecutor())


def _explode(_: Any) -> Any:
    raise ZeroDivisionError("a bug")


async def test_an_unforeseen_exception_ends_the_entry_failed_once(
    redis: Redis, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = _processor(redis, redis_server)
    monkeypatch.setattr(processing, "parse_plan", _explode)
    entry_id, fields = await pending_entry(redis, "bug1")
    handled = await processor.handle(entry_id, fields)
    assert handled.kind == "published"
    (result,) = await results(redis)
    assert (result["plan_id"], result["status"]) == ("bug1", "FAILED")
    assert result["error"] == "internal_error:ZeroDivisionError"
    assert await pending_count(redis) == 0
    again = await processor.handle(entry_id, fields)  # redelivered: nothing twice
    assert again.kind == "done" and len(await results(redis)) == 1


async def test_an_unforeseen_exception_never_guesses_when_an_order_may_be_out(
    redis: Redis, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = _processor(redis, redis_server)
    entry_id, fields = await pending_entry(redis, "bug2")
    await redis.hset(K.journal("bug2"), mapping={"state": "submitting", "stream_id": entry_id})
    monkeypatch.setattr(processing, "parse_plan", _explode)
    with pytest.raises(ZeroDivisionError):
        await processor.handle(entry_id, fields)
    assert await results(redis) == [] and await pending_count(redis) == 1


async def test_an_entry_without_a_plan_id_is_acknowledged_with_its_result(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    processor = _processor(redis, redis_server)
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    await redis.xadd(K.PLAN_STREAM, {"junk": "1"})
    reply: Any = await redis.xreadgroup("apply_layer", "c", {K.PLAN_STREAM: ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    handled = await processor.handle(entry_id, dict(fields))
    assert handled.kind == "published" and await pending_count(redis) == 0  # acked with it
    assert (await processor.handle(entry_id, dict(fields))).kind == "done"  # a resend
    (result,) = await results(redis)
    assert result["error"] == "invalid_plan:missing_field:plan_id"


async def test_a_hostile_claim_key_value_is_not_logged_whole(
    redis: Redis, redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    processor = _processor(redis, redis_server)
    entry_id, fields = await pending_entry(redis, "claimed")
    await redis.set(K.claim("claimed"), "9" * 1_000_000)  # someone else's "entry id"
    handled = await processor.handle(entry_id, fields)
    assert handled.kind == "duplicate"
    (record,) = [r for r in caplog.records if "duplicate plan=claimed" in r.getMessage()]
    assert len(str(record.__dict__)) < 2000
