"""The daemon end to end: a real subprocess, a real redis-server, simulated upstreams.

Tests by name: executors/paper.py, executors/dry_run.py and executors/in_process.py;
daemon/order_path.py, each claimed plan's way to its outcome (screening, the permit
wait, the lease, the executor).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GateConfig, PermitGate
from apply_layer.store.journal import Journal
from tests.harness import (
    Daemon,
    all_acked,
    grant,
    pending_count,
    publish_plan,
    results,
    until,
    wait_result,
)

DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemons(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[DaemonFactory]:
    made: list[Daemon] = []

    def make(url: str | None = None, name: str | None = None, **settings: Any) -> Daemon:
        daemon = Daemon(url or redis_server.url, tmp_path, name or f"d{len(made) + 1}", **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


async def test_paper_happy_path(redis: Redis, daemons: DaemonFactory) -> None:
    daemon = await daemons().start().ready(redis)
    await publish_plan(redis, "happy")
    await grant(redis, "happy", safe_qty=0.01, position=0.012)
    result = await wait_result(redis, "happy")
    assert (result["status"], result["executed"], result["would_execute"]) == (
        "EXECUTED",
        "True",
        "True",
    )
    assert result["error"] == "" and result["mode"] == "paper" and result["reduceOnly"] == "true"
    (step,) = json.loads(result["steps_results"])
    assert step["client_order_id"] == "al75-happy"
    assert (step["side"], step["quantity"], step["executed_qty"]) == ("SELL", "0.009", "0.009")
    assert step["order_id"] and step["reduce_only"] is True
    assert 3540 < await redis.ttl(K.cooldown("BTCUSDT")) <= 3600  # EX 3600: docs/CONTRACT.md
    assert (await redis.hgetall(K.journal("happy")))["state"] == "executed"
    assert await pending_count(redis) == 0
    lines = [r["message"] for r in daemon.records() if r["message"].startswith("[PERMIT_WAIT]")]
    assert len(lines) == 1 and lines[0].startswith("[PERMIT_WAIT] OK plan=happy symbol=BTCUSDT")
    beat = json.loads(await redis.get(K.HEARTBEAT_KEY) or "{}")
    assert beat["consumer"] == "d1" and beat["mode"] == "paper" and beat["version"]
    assert 0 < await redis.ttl(K.HEARTBEAT_KEY) <= 15


async def test_dry_run_decides_but_places_nothing(redis: Redis, daemons: DaemonFactory) -> None:
    await daemons(mode="dry_run").start().ready(redis)
    await publish_plan(redis, "dry")
    await grant(redis, "dry")
    result = await wait_result(redis, "dry")
    assert (result["status"], result["error"]) == ("SKIPPED", "dry_run")
    assert (result["executed"], result["would_execute"], result["mode"]) == (
        "False",
        "True",
        "dry_run",
    )
    (step,) = json.loads(result["steps_results"])
    assert (step["status"], step["quantity"], step["order_id"]) == ("DRY_RUN", "0.009", "")
    assert await redis.exists(K.cooldown("BTCUSDT")) == 0


async def test_every_skip_reject_and_block_path(redis: Redis, daemons: DaemonFactory) -> None:
    await daemons(permit_wait_ms=400).start().ready(redis)
    await publish_plan(redis, "skip", decision="SKIP")
    await publish_plan(redis, "notallowed", symbol="SOLUSDT")
    await publish_plan(redis, "stale", age=120)
    await publish_plan(redis, "badsteps", steps="[oops")
    await redis.xadd(K.PLAN_STREAM, {"symbol": "BTCUSDT", "decision": "EXECUTE"})
    await grant(redis, "tiny", safe_qty=0.0005)
    await publish_plan(redis, "tiny")
    await grant(redis, "nop33", p33=False)
    await publish_plan(redis, "nop33")
    await grant(redis, "deny", p33=False)
    await redis.set(
        K.ISSUERS["p33"].key("deny"), json.dumps({"allow": False, "reason": "reconcile_required"})
    )
    await publish_plan(redis, "deny")
    await grant(redis, "govblock")
    await redis.set(K.governor_block("govblock"), json.dumps({"reason": "exposure"}))
    await publish_plan(redis, "govblock")
    expected = {
        "skip": ("SKIPPED", "not_execute:SKIP"),
        "notallowed": ("SKIPPED", "symbol_not_allowed"),
        "stale": ("SKIPPED", "stale_plan"),
        "badsteps": ("REJECTED", "invalid_plan:bad_steps_json"),
        "": ("REJECTED", "invalid_plan:missing_field:plan_id"),
        "tiny": ("REJECTED", "qty_below_min"),
        "nop33": ("BLOCKED", "permit_timeout_or_missing:missing_p33"),
        "deny": ("BLOCKED", "p33_permit_denied:reconcile_required"),
        "govblock": ("BLOCKED", "governor_blocked:exposure"),
    }
    for plan_id, (status, error) in expected.items():
        result = await wait_result(redis, plan_id)
        assert (result["status"], result["error"]) == (status, error), plan_id
        assert result["executed"] == "False"
    assert len(await results(redis)) == len(expected)
    assert await redis.exists(K.ISSUERS["governor"].key("nop33")) == 1  # a timeout consumes nothing
    assert await pending_count(redis) == 0


async def test_kill_switch_blocks_everything_and_consumes_nothing(
    redis: Redis, daemons: DaemonFactory
) -> None:
    await redis.set("quantum:kill", "true")
    await daemons().start().ready(redis)
    await grant(redis, "killed")
    await publish_plan(redis, "killed")
    result = await wait_result(redis, "killed")
    assert (result["status"], result["error"]) == ("BLOCKED", "kill_switch")
    assert (
        await redis.exists(K.ISSUERS["p33"].key("killed"), K.ISSUERS["governor"].key("killed")) == 2
    )


async def test_republished_duplicates_get_one_result(redis: Redis, daemons: DaemonFactory) -> None:
    daemon = await daemons().start().ready(redis)
    await grant(redis, "dup")
    for _ in range(3):
        await publish_plan(redis, "dup")
    await wait_result(redis, "dup")
    await publish_plan(redis, "dup")  # after the decision too
    # Each copy past the first is accounted for by its duplicate line: wait for all three.
    deadline = time.monotonic() + 15
    while len([r for r in daemon.records() if r["message"].startswith("duplicate plan=dup ")]) < 3:
        assert time.monotonic() < deadline, daemon.log()
        await asyncio.sleep(0.05)
    assert [r["plan_id"] for r in await results(redis)].count("dup") == 1
    assert await pending_count(redis) == 0


async def test_a_blocked_plan_does_not_poison_a_new_one(
    redis: Redis, daemons: DaemonFactory
) -> None:
    await daemons(permit_wait_ms=300).start().ready(redis)
    await publish_plan(redis, "first")
    assert (await wait_result(redis, "first"))["status"] == "BLOCKED"
    await grant(redis, "second")
    await publish_plan(redis, "second")
    assert (await wait_result(redis, "second"))["status"] == "EXECUTED"


async def test_a_redelivered_entry_resumes_after_kill_9(
    redis: Redis, daemons: DaemonFactory
) -> None:
    first = await daemons(name="same", permit_wait_ms=20000).start().ready(redis)
    await publish_plan(redis, "crash")
    for _ in range(200):
        if (await redis.hget(K.journal("crash"), "state")) == "received":
            break
        await asyncio.sleep(0.02)
    first.kill()  # mid-wait: the entry stays in this consumer's pending list
    assert await pending_count(redis) == 1
    await grant(redis, "crash")
    await daemons(name="same", permit_wait_ms=2000).start().ready(redis)
    result = await wait_result(redis, "crash")
    assert result["status"] == "EXECUTED"
    await until(lambda: all_acked(redis))  # the ack follows the result
    assert [r["plan_id"] for r in await results(redis)].count("crash") == 1


async def test_a_crash_after_the_gate_resumes_from_permitted(
    redis: Redis, daemons: DaemonFactory
) -> None:
    """The permits were consumed, then the process died: the order is still placed, once."""
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    entry = await publish_plan(redis, "permitted")
    await redis.xreadgroup("apply_layer", "victim", {K.PLAN_STREAM: ">"}, count=1)
    await Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600).claim(
        "permitted", "BTCUSDT", entry
    )
    await grant(redis, "permitted")
    decision = await PermitGate(redis, GateConfig()).wait_and_consume("permitted", "BTCUSDT")
    assert decision.allowed and (await redis.hget(K.journal("permitted"), "state")) == "permitted"
    await daemons(name="victim").start().ready(redis)
    result = await wait_result(redis, "permitted")
    assert result["status"] == "EXECUTED"
    assert (await redis.hget(K.journal("permitted"), "order.attempts")) is not None


async def test_a_slow_plan_does_not_hold_up_fast_ones(redis: Redis, daemons: DaemonFactory) -> None:
    await daemons(permit_wait_ms=2500).start().ready(redis)
    await publish_plan(redis, "slow")
    await _until(lambda: _state(redis, "slow"), "received")  # taken, in its permit wait
    started = time.monotonic()
    await grant(redis, "fast")
    await publish_plan(redis, "fast")
    fast = await wait_result(redis, "fast")
    assert fast["status"] == "EXECUTED" and time.monotonic() - started < 2.0
    assert not [r for r in await results(redis) if r["plan_id"] == "slow"]  # still waiting
    assert (await wait_result(redis, "slow"))["status"] == "BLOCKED"


async def test_sigterm_drains_in_flight_plans_then_exits_0(
    redis: Redis, daemons: DaemonFactory
) -> None:
    daemon = await daemons(permit_wait_ms=1500).start().ready(redis)
    await publish_plan(redis, "drain")
    for _ in range(200):
        if (await redis.hget(K.journal("drain"), "state")) == "received":
            break
        await asyncio.sleep(0.02)
    daemon.signal(signal.SIGTERM)
    for _ in range(500):  # "draining": the intake loop has ended
        if any(r["message"] == "draining" for r in daemon.records()):
            break
        await asyncio.sleep(0.01)
    await publish_plan(redis, "after-term")  # not read: the daemon takes no new plans
    assert daemon.wait(timeout=20) == 0, daemon.log()
    assert (await wait_result(redis, "drain", timeout=1))["status"] == "BLOCKED"
    assert not [r for r in await results(redis) if r["plan_id"] == "after-term"]
    messages = [r["message"] for r in daemon.records()]
    assert "draining" in messages and "stopped" in messages


@pytest.fixture
async def aof_redis() -> AsyncIterator[tuple[EmbeddedRedis, Redis]]:
    server = EmbeddedRedis(appendonly=True)
    server.start()
    client = create_redis(server.url, name="tests")
    try:
        yield server, client
    finally:
        await client.aclose()
        server.close()


async def test_redis_stopped_and_restarted_mid_run(
    aof_redis: tuple[EmbeddedRedis, Redis], daemons: DaemonFactory
) -> None:
    server, redis = aof_redis
    daemon = await daemons(url=server.url, permit_wait_ms=3000).start().ready(redis)
    # A large position: three closes in a row must not shrink it below the lot minimum.
    await grant(redis, "before", position=1.0)
    await publish_plan(redis, "before")
    assert (await wait_result(redis, "before"))["status"] == "EXECUTED"
    await publish_plan(redis, "during")  # waits for permits when Redis dies
    await _until(lambda: _state(redis, "during"), "received")  # claimed, in its permit wait
    server.stop(kill=True)
    deadline = time.monotonic() + 15
    while not any(r["message"] == "redis_unavailable" for r in daemon.records()):
        assert time.monotonic() < deadline, "the daemon never noticed the outage"
        await asyncio.sleep(0.05)
    server.start()
    await grant(redis, "during", position=1.0)
    await grant(redis, "after", position=1.0)
    await publish_plan(redis, "after")
    assert (await wait_result(redis, "after", timeout=20))["status"] == "EXECUTED"
    assert (await wait_result(redis, "during", timeout=20))["status"] == "EXECUTED"
    assert daemon.proc is not None and daemon.proc.poll() is None
    messages = [r["message"] for r in daemon.records()]
    assert messages.count("redis_unavailable") == 1
    assert messages.count("redis_recovered") == 1
    assert [r["plan_id"] for r in await results(redis)].count("during") == 1
    assert await pending_count(redis) == 0


async def test_metrics_endpoint_and_port_0(redis: Redis, daemons: DaemonFactory) -> None:
    off = await daemons(name="off").start().ready(redis)
    started = next(r for r in off.records() if r["message"] == "apply_layer_started")
    assert started["metrics_port"] == "off"
    off.stop()
    port = free_port()
    await daemons(name="on", metrics_port=port).start().ready(redis)
    await grant(redis, "metered")
    await publish_plan(redis, "metered")
    await wait_result(redis, "metered")
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'apply_plans_total{reason="none",status="EXECUTED"} 1.0' in text
    assert 'apply_orders_total{status="EXECUTED"} 1.0' in text
    assert "apply_permit_wait_seconds_bucket" in text
    assert 'apply_last_success_timestamp_seconds{symbol="BTCUSDT"}' in text


async def test_every_key_the_service_writes_expires(redis: Redis, daemons: DaemonFactory) -> None:
    await daemons(permit_wait_ms=300).start().ready(redis)
    await grant(redis, "ttl-ok")
    await publish_plan(redis, "ttl-ok")
    await publish_plan(redis, "ttl-blocked")
    await publish_plan(redis, "ttl-skip", decision="SKIP")
    for plan_id in ("ttl-ok", "ttl-blocked", "ttl-skip"):
        await wait_result(redis, plan_id)
    streams = {K.PLAN_STREAM, K.RESULT_STREAM}
    keys = [key async for key in redis.scan_iter(count=1000)]
    assert {K.journal("ttl-ok"), K.claim("ttl-ok"), K.cooldown("BTCUSDT"), K.HEARTBEAT_KEY} <= set(
        keys
    )
    for key in keys:
        if key in streams:
            continue
        assert await redis.ttl(key) > 0, key


async def _pending_for(redis: Redis, consumer: str, plan_id: str) -> str:
    """A plan read by ``consumer`` (which then 'crashed'): its entry stays pending."""
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    entry = await publish_plan(redis, plan_id)
    await redis.xreadgroup("apply_layer", consumer, {K.PLAN_STREAM: ">"}, count=1)
    await Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600).claim(plan_id, "BTCUSDT", entry)
    return entry


async def test_an_authorization_too_old_to_use_ends_blocked(
    redis: Redis, daemons: DaemonFactory
) -> None:
    await _pending_for(redis, "victim", "old-auth")
    await grant(redis, "old-auth")
    assert (await PermitGate(redis, GateConfig()).wait_and_consume("old-auth", "BTCUSDT")).allowed
    two_minutes_ago = int(time.time() * 1000) - 120_000
    await redis.hset(K.journal("old-auth"), "gate_at_ms", two_minutes_ago)
    await daemons(name="victim").start().ready(redis)
    result = await wait_result(redis, "old-auth")
    assert (result["status"], result["error"]) == ("BLOCKED", "stale_authorization")
    assert await redis.hget(K.journal("old-auth"), "order.attempts") is None  # nothing sent


async def test_a_finished_but_unacknowledged_entry_is_acked_without_a_second_result(
    redis: Redis, daemons: DaemonFactory
) -> None:
    await _pending_for(redis, "victim", "unacked")
    await Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600).results.publish(
        "unacked", "BTCUSDT", "skipped", {"plan_id": "unacked", "status": "SKIPPED"}
    )
    assert await pending_count(redis) == 1
    await daemons(name="victim").start().ready(redis)
    for _ in range(200):
        if await pending_count(redis) == 0:
            break
        await asyncio.sleep(0.02)
    assert await pending_count(redis) == 0
    assert len(await results(redis)) == 1


async def _state(redis: Redis, plan_id: str) -> str:
    return str(await redis.hget(K.journal(plan_id), "state") or "")


async def _until(probe: Callable[[], Awaitable[str]], want: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await probe()) != want:
        assert time.monotonic() < deadline, f"still {got!r}, not {want!r}"
        await asyncio.sleep(0.01)
