"""Bounded stream reads against a real redis-server, in both protocols.

Tests by name: store/stream_reply.py, which parses the reply as it arrives.
"""

from __future__ import annotations

import asyncio
import signal
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer.core.plans import MAX_ENTRY_BYTES
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store import read_deadline, stream_reader
from apply_layer.store.stream_reader import xrange_one
from apply_layer.store.stream_reply import (
    ENTRY_COST_MAX,
    FAST_REPLY_MAX,
    MAX_ENTRY_FIELDS,
    StreamEntry,
)
from tests.harness import blocked_in, until

S, G, C = "s", "g", "c"
PLAN = {
    "plan_id": "67e6da21fa9fe506",
    "symbol": "BTCUSDT",
    "decision": "EXECUTE",
    "steps": '[{"step": "CLOSE_FULL"}]',
    "timestamp": "1769301008",
    "empty": "",
}


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
async def client(request: Any, redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    """A client like the daemon's reader, speaking RESP2 or RESP3."""
    r = Redis.from_url(redis_server.url, decode_responses=True, protocol=request.param)
    await r.flushall()
    await r.xgroup_create(S, G, id="0", mkstream=True)
    try:
        yield r
    finally:
        await r.aclose()


async def read(client: Redis, count: int = 100, last_id: str = ">") -> list[StreamEntry]:
    return await stream_reader.xreadgroup(client, G, C, S, last_id, count=count)


async def test_plans_read_as_redis_py_reads_them(client: Redis) -> None:
    ids = [await client.xadd(S, PLAN) for _ in range(3)]  # type: ignore[arg-type]
    entries = await read(client)
    assert [e.entry_id for e in entries] == ids
    assert all(e.fields == PLAN and not e.oversized for e in entries)
    assert entries[0].size == sum(len(k) + len(v) for k, v in PLAN.items())
    assert await read(client, last_id="0") == entries  # the backlog form
    assert await read(client) == []  # nothing new
    assert await client.ping()  # the pooled connection is still in step


async def test_an_entry_past_the_byte_limit_keeps_only_its_short_echo_fields(
    client: Redis,
) -> None:
    big = {**PLAN, "blob": "x" * MAX_ENTRY_BYTES}
    await client.xadd(S, big)  # type: ignore[arg-type]
    await client.xadd(S, PLAN)  # type: ignore[arg-type]
    first, second = await read(client)
    assert first.oversized and first.size == sum(len(k) + len(v) for k, v in big.items())
    assert first.fields == {"plan_id": PLAN["plan_id"], "symbol": "BTCUSDT", "decision": "EXECUTE"}
    assert second.fields == PLAN and not second.oversized
    assert first.cost < 2000 <= ENTRY_COST_MAX


async def test_an_entry_with_too_many_fields_is_oversized(client: Redis) -> None:
    many = {f"f{i}": "1" for i in range(MAX_ENTRY_FIELDS + 1)} | {"plan_id": "p1"}
    await client.xadd(S, many)  # type: ignore[arg-type]
    (entry,) = await read(client)
    assert entry.oversized and entry.fields == {"plan_id": "p1"}


async def test_long_echo_fields_are_not_kept(client: Redis) -> None:
    await client.xadd(S, {"plan_id": "p" * 200, "symbol": "BTCUSDT", "x": "y" * 70_000})
    (entry,) = await read(client)
    assert entry.oversized and entry.fields == {"symbol": "BTCUSDT"}


async def test_a_reply_past_the_fast_path_is_streamed_and_stays_correct(client: Redis) -> None:
    """Replies over FAST_REPLY_MAX are parsed by the streaming parser, from the first byte."""
    blob = "z" * (FAST_REPLY_MAX // 2)
    order = ["small", "big", "small", "big", "big", "small"]
    for n, kind in enumerate(order):
        fields = {**PLAN, "plan_id": f"p{n}"} | ({"blob": blob} if kind == "big" else {})
        await client.xadd(S, fields)  # type: ignore[arg-type]
    entries = await read(client)
    assert [e.oversized for e in entries] == [k == "big" for k in order]
    for n, entry in enumerate(entries):
        expected = {**PLAN, "plan_id": f"p{n}"}
        if entry.oversized:
            expected = {k: expected[k] for k in ("plan_id", "symbol", "decision")}
        assert entry.fields == expected
    assert await client.ping()


async def test_bytes_that_are_not_utf8_are_replaced_not_fatal(
    client: Redis, redis_server: EmbeddedRedis
) -> None:
    raw = Redis.from_url(redis_server.url)  # bytes in, as any writer may send them
    try:
        await raw.xadd(S, {b"plan_id": b"p\xff1", b"\xfe": b"v"})
    finally:
        await raw.aclose()
    (entry,) = await read(client)
    assert entry.fields == {"plan_id": "p\ufffd1", "\ufffd": "v"}


async def test_a_deleted_pending_entry_reads_as_empty(client: Redis) -> None:
    entry_id = str(await client.xadd(S, PLAN))  # type: ignore[arg-type]
    await read(client)
    await client.xdel(S, entry_id)
    (gone,) = await read(client, last_id="0")
    assert gone == StreamEntry(entry_id, {}, 0)
    assert (await xrange_one(client, S, entry_id)).fields == {}


async def test_xrange_one_reads_a_claimed_entry(client: Redis) -> None:
    entry_id = str(await client.xadd(S, PLAN | {"blob": "b" * 100_000}))  # type: ignore[arg-type]
    entry = await xrange_one(client, S, entry_id)
    assert entry.entry_id == entry_id and entry.oversized and entry.fields["plan_id"]


async def test_errors_and_timeouts_leave_the_connection_usable(client: Redis) -> None:
    with pytest.raises(ResponseError, match="NOGROUP"):
        await stream_reader.xreadgroup(client, "nogroup", C, S, ">", count=1)
    started = asyncio.get_running_loop().time()
    assert await stream_reader.xreadgroup(client, G, C, S, ">", count=1, block_ms=200) == []
    assert asyncio.get_running_loop().time() - started >= 0.19
    waiting = asyncio.ensure_future(
        stream_reader.xreadgroup(client, G, C, S, ">", count=1, block_ms=5000)
    )
    await until(lambda: blocked_in(client, "xreadgroup"))  # the read waits at the server
    waiting.cancel()  # a stop during the blocking read: that connection is dropped
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await client.xadd(S, PLAN)  # type: ignore[arg-type]
    (entry,) = await read(client)
    assert entry.fields == PLAN


async def test_memory_held_while_reading_huge_entries_is_bounded(client: Redis) -> None:
    """Eight 8 MiB entries in one read: 64 MiB of reply, a few MiB held."""
    blob = "h" * (8 << 20)
    for n in range(8):
        await client.xadd(S, {"plan_id": f"h{n}", "blob": blob})
    del blob
    tracemalloc.start()
    try:
        entries = await read(client, count=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e.fields for e in entries] == [{"plan_id": f"h{n}"} for n in range(8)]
    print(f"peak Python allocation while reading 8 x 8 MiB: {peak / 2**20:.1f} MiB")
    assert peak < 3 * FAST_REPLY_MAX, f"{peak / 2**20:.1f} MiB held"  # it was 64 MiB and more


async def test_a_loop_stalled_past_the_deadline_still_reads_the_waiting_reply(
    client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop not running through a read's deadline (as in a SIGSTOP: the
    clock runs on) is no timeout when the reply is in the socket (issue 23)."""
    monkeypatch.setattr(stream_reader, "COMMAND_TIMEOUT_SEC", 0.3)
    for _ in range(3):
        reading = asyncio.ensure_future(
            stream_reader.xreadgroup(client, G, C, S, ">", count=1, block_ms=100)
        )
        await asyncio.sleep(0.05)  # sent; its (empty) reply comes after the 0.1 s block
        time.sleep(1.5)  # noqa: ASYNC251 - the point: the loop stands still past the 0.4 s deadline
        assert await reading == []
    await client.xadd(S, PLAN)  # type: ignore[arg-type]
    (entry,) = await read(client)  # and the connection is still in step
    assert entry.fields == PLAN


async def test_a_server_that_stops_answering_still_times_out_on_time(
    own_redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stall grace does not delay a real timeout: a silent server (stopped)."""
    monkeypatch.setattr(stream_reader, "COMMAND_TIMEOUT_SEC", 0.3)
    r = Redis.from_url(own_redis_server.url, decode_responses=True)
    await r.xgroup_create(S, G, id="0", mkstream=True)
    assert own_redis_server.proc is not None
    own_redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await stream_reader.xreadgroup(r, G, C, S, ">", count=1, block_ms=100)
        took = time.monotonic() - started
    finally:
        own_redis_server.proc.send_signal(signal.SIGCONT)
        await r.aclose()
    assert 0.39 <= took < 0.4 + read_deadline.STALL_SEC, took
