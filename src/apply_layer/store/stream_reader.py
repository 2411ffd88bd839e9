"""Reads of the plan stream whose memory does not follow what the stream holds.

The service's reads (``XREADGROUP``, and ``XRANGE`` for a claimed entry)
send their command over one of the client's pooled connections and parse
the reply from the socket as it arrives (``stream_reply``: at most 64 KiB
and 256 fields kept of an entry, an entry past that comes back
``oversized`` with its short echo fields), so a read of ``count`` entries
holds at most ``count * ENTRY_COST_MAX`` bytes of them, and ``service``
sizes ``count`` from that (docs/RELIABILITY.md, "Staying bounded").

This module's job is the command and its connection: the connection is
left clean after a complete reply, and closed after anything else. A read
is not retried here: a connection lost mid-reply may have delivered entries
we never saw, and the service's outage path re-reads its own pending
entries before anything new. A read's deadline counts the time the event
loop ran, not the time the process was stopped (``read_deadline``, issue 23).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer.store.connection import COMMAND_TIMEOUT_SEC
from apply_layer.store.read_deadline import ReadDeadline
from apply_layer.store.stream_reply import StreamEntry, read_reply


async def _run(
    redis: Redis, command: Sequence[str | int], *, wait_sec: float, xreadgroup: bool
) -> list[StreamEntry]:
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    clean = False
    try:
        await conn.send_command(*command)
        reader = conn._reader  # the socket's StreamReader: the reply is parsed from it here
        if reader is None:
            raise RedisConnectionError("connection closed before the stream reply")
        async with asyncio.timeout(None) as timeout:
            deadline = ReadDeadline(timeout, wait_sec + COMMAND_TIMEOUT_SEC, COMMAND_TIMEOUT_SEC)
            try:
                entries = await read_reply(reader, deadline, xreadgroup)
            finally:
                deadline.cancel()
        clean = True
        return entries
    except ResponseError:
        clean = True  # an error reply is a whole reply: the connection is still in step
        raise
    except TimeoutError:
        raise RedisTimeoutError("no complete stream reply in time") from None
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise RedisConnectionError(f"stream read failed: {exc!r}") from None
    finally:
        if not clean:
            await conn.disconnect(nowait=True)
        await pool.release(conn)


async def xreadgroup(
    redis: Redis,
    group: str,
    consumer: str,
    stream: str,
    last_id: str,
    *,
    count: int,
    block_ms: int | None = None,
) -> list[StreamEntry]:
    """``XREADGROUP`` of up to ``count`` entries, bounded as the module says."""
    command: list[str | int] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        command += ["BLOCK", block_ms]
    command += ["STREAMS", stream, last_id]
    wait = (block_ms or 0) / 1000
    return await _run(redis, command, wait_sec=wait, xreadgroup=True)


async def xrange_one(redis: Redis, stream: str, entry_id: str) -> StreamEntry:
    """One entry by id (``XRANGE id id``), bounded; empty fields if it is gone."""
    entries = await _run(
        redis, ["XRANGE", stream, entry_id, entry_id], wait_sec=0.0, xreadgroup=False
    )
    return entries[0] if entries else StreamEntry(entry_id, {}, 0)
