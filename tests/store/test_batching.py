"""Automatic pipelining of scripts (batching.py) against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer.core import keys as K
from apply_layer.core.keys import ISSUERS
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.batching import ScriptBatcher, run_packed
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GateConfig, PermitGate
from tests.proxy import DropReplyProxy

ECHO = "return {KEYS[1], ARGV[1]}"
COUNT = "return redis.call('INCR', KEYS[1])"
FAIL_ON_X = "if ARGV[1] == 'x' then return redis.error_reply('BAD x') end return ARGV[1]"
SPIN = "local t = redis.call('TIME') local n = 0 while n < 2000000 do n = n + 1 end return n"
SYM = "BTCUSDT"
GOV_OK = json.dumps({"granted": True, "symbol": SYM})
P33_OK = json.dumps({"allow": True, "symbol": SYM, "safe_qty": 0.002})


async def test_calls_made_in_one_loop_turn_share_one_round_trip(redis: Redis) -> None:
    batcher = ScriptBatcher(redis)
    echo = batcher.register_script(ECHO)
    await redis.script_load(ECHO)  # else the first batch is followed by its reload's resend
    calls0, batches0 = _exported()
    replies = await asyncio.gather(*(echo(keys=[f"k{i}"], args=[i]) for i in range(40)))
    assert replies == [[f"k{i}", str(i)] for i in range(40)]
    assert (batcher.stats.batches, batcher.stats.calls, batcher.stats.largest) == (1, 40, 40)
    calls1, batches1 = _exported()
    assert (calls1 - calls0, batches1 - batches0) == (40, 1)  # what /metrics shows operators


def _exported() -> tuple[float, float]:
    calls = REGISTRY.get_sample_value("apply_redis_script_calls_total")
    batches = REGISTRY.get_sample_value("apply_redis_script_batches_total")
    return calls or 0.0, batches or 0.0


async def test_a_lone_call_leaves_at_once(redis: Redis) -> None:
    batcher = ScriptBatcher(redis)
    echo = batcher.register_script(ECHO)
    await redis.script_load(ECHO)  # not left to whichever test ran before on this server
    for i in range(3):
        assert await echo(keys=["k"], args=[i]) == ["k", str(i)]
    assert (batcher.stats.batches, batcher.stats.largest) == (3, 1)


async def test_a_batch_is_split_at_its_size_limit(redis: Redis) -> None:
    batcher = ScriptBatcher(redis, max_batch=16)
    echo = batcher.register_script(ECHO)
    await redis.script_load(ECHO)  # a reload's resend would be a fourth batch
    replies = await asyncio.gather(*(echo(keys=["k"], args=[i]) for i in range(40)))
    assert [r[1] for r in replies] == [str(i) for i in range(40)]
    assert batcher.stats.batches == 3 and batcher.stats.largest == 16


async def test_a_script_error_fails_only_its_own_call(redis: Redis) -> None:
    batcher = ScriptBatcher(redis)
    script = batcher.register_script(FAIL_ON_X)
    await redis.script_load(FAIL_ON_X)
    replies = await asyncio.gather(
        script(args=["a"]), script(args=["x"]), script(args=["b"]), return_exceptions=True
    )
    assert replies[0] == "a" and replies[2] == "b"
    assert isinstance(replies[1], ResponseError) and "BAD x" in str(replies[1])
    assert batcher.stats.batches == 1
    assert await script(args=["c"]) == "c"  # the connection is still in step


async def test_an_unknown_script_is_loaded_and_runs_exactly_once(redis: Redis) -> None:
    batcher = ScriptBatcher(redis)
    count = batcher.register_script(COUNT)
    await redis.script_flush()
    replies = await asyncio.gather(*(count(keys=[f"n{i}"]) for i in range(5)))
    assert replies == [1] * 5
    assert [int(await redis.get(f"n{i}") or 0) for i in range(5)] == [1] * 5
    assert batcher.stats.reloads == 1


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis: Redis) -> None:
    batcher = ScriptBatcher(redis)
    spin = batcher.register_script(SPIN)
    echo = batcher.register_script(ECHO)
    for script in (SPIN, ECHO):  # the batch must be at the server spinning, not reloading
        await redis.script_load(script)
    tasks = [asyncio.create_task(echo(keys=["k"], args=[i])) for i in range(5)]
    slow = asyncio.create_task(spin())
    await asyncio.sleep(0.005)  # the batch is at the server, spinning
    slow.cancel()
    tasks[2].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert [d for i, d in enumerate(done) if i != 2] == [["k", str(i)] for i in (0, 1, 3, 4)]
    assert await echo(keys=["k"], args=["after"]) == ["k", "after"]


async def test_redis_down_fails_every_call_and_later_calls_recover(
    own_redis_server: EmbeddedRedis,
) -> None:
    client = create_redis(own_redis_server.url, name="down")
    batcher = ScriptBatcher(client)
    count = batcher.register_script(COUNT)
    try:
        assert await count(keys=["n"]) == 1
        own_redis_server.stop()
        failed = await asyncio.gather(
            *(count(keys=["n"]) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(f, RedisConnectionError) for f in failed), failed
        own_redis_server.start()
        # A fresh server knows no script: loaded again, and run once.
        assert await count(keys=["m"]) == 1
    finally:
        await batcher.aclose()
        await client.aclose()


def _permits(plan_id: str) -> dict[str, str]:
    return {ISSUERS["governor"].key(plan_id): GOV_OK, ISSUERS["p33"].key(plan_id): P33_OK}


async def test_a_lost_batch_reply_is_resent_and_each_gate_decides_once(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    plans = [f"lost{i}" for i in range(20)]
    for plan_id in plans:
        await redis.mset(_permits(plan_id))
    config = GateConfig(wait_ms=600, step_ms=20)
    async with DropReplyProxy(redis_server.port) as proxy:
        client = create_redis(proxy.url, name="lossy")
        batcher = ScriptBatcher(client)
        try:
            gate = PermitGate(client, config, scripts=batcher)
            await gate.load()
            proxy.armed = b"EVALSHA"
            results = await asyncio.gather(*(gate.wait_and_consume(p, SYM) for p in plans))
        finally:
            await batcher.aclose()
            await client.aclose()
    assert proxy.dropped == 1  # the server ran the whole batch; its reply was lost
    assert batcher.stats.batches == 1  # resent by redis-py's retry, inside the one send
    assert all(r.allowed and r.owner for r in results), "a resend must replay each decision"
    for plan_id in plans:
        assert await redis.exists(*_permits(plan_id)) == 0
        assert (await redis.hgetall(K.journal(plan_id)))["gate_status"] == "ALLOW"


@pytest.mark.parametrize("batchers", [1, 5])
async def test_racing_callers_in_shared_batches_exactly_one_wins(
    redis_server: EmbeddedRedis, redis: Redis, batchers: int
) -> None:
    clients = [create_redis(redis_server.url, name=f"race{i}") for i in range(batchers)]
    shared = [ScriptBatcher(c) for c in clients]
    config = GateConfig(wait_ms=2000, step_ms=5)
    gates = [PermitGate(c, config, scripts=b) for c, b in zip(clients, shared, strict=True)]
    try:

        async def write_permits() -> None:
            await asyncio.sleep(0.05)
            await redis.mset(_permits("race"))

        writer = asyncio.create_task(write_permits())
        results = await asyncio.gather(
            *(gates[i % batchers].wait_and_consume("race", SYM) for i in range(50))
        )
        await writer
    finally:
        for b in shared:
            await b.aclose()
        await asyncio.gather(*(c.aclose() for c in clients))
    assert sum(r.owner for r in results) == 1
    assert {r.status for r in results} == {"ALLOW"}
    assert await redis.exists(*_permits("race")) == 0


async def test_an_argument_that_cannot_be_packed_fails_its_own_call_only(redis: Redis) -> None:
    batcher = ScriptBatcher(redis)
    echo = batcher.register_script(ECHO)
    await redis.script_load(ECHO)
    replies = await asyncio.gather(
        echo(keys=["k"], args=["a"]),
        echo(keys=["k"], args=[None]),  # type: ignore[list-item]
        echo(keys=["k"], args=["b"]),
        return_exceptions=True,
    )
    assert replies[0] == ["k", "a"] and replies[2] == ["k", "b"]
    assert isinstance(replies[1], TypeError)


async def test_a_caller_cancelled_before_its_batch_leaves_has_nothing_sent(redis: Redis) -> None:
    batcher = ScriptBatcher(redis, max_sending=1)
    spin = batcher.register_script(SPIN)
    count = batcher.register_script(COUNT)
    await redis.script_load(SPIN)
    await redis.script_load(COUNT)
    busy = asyncio.create_task(spin())
    await asyncio.sleep(0.005)  # the one sending slot is taken: the next call waits in the queue
    waiting = asyncio.create_task(count(keys=["n"]))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(busy, waiting, return_exceptions=True)
    await batcher.aclose()
    assert waiting.cancelled()
    assert await redis.get("n") is None  # the INCR never ran


async def test_a_batch_cancelled_while_reloading_its_script_leaves_no_caller_waiting(
    redis: Redis,
) -> None:
    batcher = ScriptBatcher(redis)
    echo = batcher.register_script(ECHO + " ")  # not loaded: NOSCRIPT, then a reload
    loaded = asyncio.Event()
    real_load = redis.script_load

    async def slow_load(source: str) -> str:
        loaded.set()
        await asyncio.sleep(5)
        return str(await real_load(source))

    redis.script_load = slow_load  # type: ignore[method-assign,assignment]
    caller = asyncio.create_task(echo(keys=["k"], args=["x"]))
    await asyncio.wait_for(loaded.wait(), 2)
    for task in list(batcher._sending):
        task.cancel()
    done, _ = await asyncio.wait({caller}, timeout=2)
    assert done and caller.cancelled()


async def test_the_batch_deadline_holds_even_if_the_write_swallows_its_timer(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Redis.from_url(redis_server.url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    await client.ping()  # connected before the patch: the handshake must not be slowed
    real_send = AbstractConnection.send_packed_command

    async def swallowing_send(self: AbstractConnection, command: Any, check_health: bool) -> None:
        # Python 3.11's wait_for (inside redis-py's write) can drop a cancellation that
        # lands as the write completes: the batch's timer fired and nothing noticed.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.4)
        await real_send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", swallowing_send)
    started = time.monotonic()
    try:
        with pytest.raises(RedisTimeoutError):
            await run_packed(client, [("BLPOP", "nothing-here", 3)])
    finally:
        await client.aclose()
    assert time.monotonic() - started < 1.5  # not the 3 s BLPOP: the reads had a deadline too
