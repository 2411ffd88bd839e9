"""A Redis restarted under a running process: its pool's connections reconnect one by
one, as they are next handed out (``store/identity.py``, ``mark_used``).

Only the first reconnect is a change of server. The idle ones that trickle back
later wrote nothing since and hold nothing again (before, each restarted the
lookups' window, and plans went stale behind it: the monitoring e2e's "Redis
stopped" phase fired ApplyLayerStalePlans). One handed out across the restart
still counts.
"""

from __future__ import annotations

import asyncio
import signal

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import close_redis, create_redis
from apply_layer.store.identity import IdentityTracker

CONNECTIONS = 8


async def _hold_connections(client: Redis) -> None:
    """``CONNECTIONS`` commands at once: as many connections out of the pool, then back."""
    await asyncio.gather(*(client.blpop([f"nothing:{i}"], timeout=0.1) for i in range(CONNECTIONS)))


async def _connections(client: Redis) -> int:
    listed = await client.client_list()
    return sum(1 for c in listed if c.get("name") == "tests")


async def _checkout(pool: ConnectionPool) -> Connection:
    conn: Connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    return conn


async def _move(conn: Connection, server: EmbeddedRedis) -> None:
    """Point ``conn`` at ``server`` and reconnect it there, as a failover does."""
    conn.port = server.port
    await conn.disconnect()
    await conn.connect()  # type: ignore[no-untyped-call]


def _tracked() -> tuple[IdentityTracker, list[int]]:
    tracker = IdentityTracker()
    calls: list[int] = []
    tracker.listeners.append(lambda: calls.append(tracker.changed_at_ms))
    return tracker, calls


async def test_idle_connections_that_reconnect_after_a_restart_hold_nothing_again(
    own_redis_server: EmbeddedRedis,
) -> None:
    tracker, calls = _tracked()
    client = create_redis(own_redis_server.url, name="tests", identity=tracker)
    try:
        await _hold_connections(client)
        assert await _connections(client) >= CONNECTIONS
        own_redis_server.restart()
        await client.ping()  # the first reconnect: the change
        assert tracker.changes == 1
        changed = tracker.changed_at_ms
        assert calls == [changed]
        await asyncio.sleep(0.05)  # a later moment, had anything counted again
        await _hold_connections(client)  # every idle connection reconnects now
        assert await _connections(client) >= CONNECTIONS
        assert (tracker.changes, tracker.changed_at_ms, calls) == (1, changed, [changed])
    finally:
        await close_redis(client)


async def test_a_connection_handed_out_across_the_restart_still_counts(
    own_redis_server: EmbeddedRedis,
) -> None:
    """Out of the pool (a blocking read, the keyspace watcher's, the lane's), it may
    have carried a command to the old server after the process moved on: when it
    reconnects in place, the moment counts again for the lookups."""
    tracker, calls = _tracked()
    client = create_redis(own_redis_server.url, name="tests", identity=tracker)
    pool = client.connection_pool
    try:
        await _hold_connections(client)
        held = await _checkout(pool)
        own_redis_server.restart()
        await client.ping()  # another connection notices the change first
        changed = tracker.changed_at_ms
        await asyncio.sleep(0.05)
        await held.disconnect()
        # as pub/sub reconnects its connection, without a return
        await held.connect()  # type: ignore[no-untyped-call]
        assert tracker.changes == 1  # the same server: no change of server counted
        assert tracker.changed_at_ms > changed and calls == [changed, tracker.changed_at_ms]
        await pool.release(held)
    finally:
        await close_redis(client)


# Two live servers: a connection is pointed at the new one as the Sentinel pool points
# it at a promoted replica (``port``), while the old one stays up (a split brain).


async def test_a_connection_used_on_the_old_server_after_the_move_counts(
    own_redis_server: EmbeddedRedis,
) -> None:
    """It wrote to the old side after the process moved on, came back to its pool with
    the reply, and reconnects to the new side when next handed out."""
    new = EmbeddedRedis()
    new.start()
    tracker, calls = _tracked()
    client = create_redis(own_redis_server.url, name="tests", identity=tracker)
    pool = client.connection_pool
    try:
        straggler = await _checkout(pool)
        first = await _checkout(pool)
        await _move(first, new)  # the process moves to the new side
        assert tracker.changes == 1
        changed = tracker.changed_at_ms
        await pool.release(first)
        await straggler.send_command("SET", "written", "on the old side")
        assert await straggler.read_response() == "OK"
        await pool.release(straggler)  # back with its reply, after the move
        await asyncio.sleep(0.05)
        straggler.port = new.port
        await straggler.disconnect()  # demoted: its next checkout reconnects
        again = await _checkout(pool)
        assert again is straggler  # the pool hands out the last one returned first
        assert tracker.changed_at_ms > changed and calls == [changed, tracker.changed_at_ms]
        await pool.release(again)
    finally:
        await close_redis(client)
        new.close()


async def test_a_connection_that_lost_a_reply_before_the_move_still_counts(
    own_redis_server: EmbeddedRedis,
) -> None:
    """A paused old primary: a write's reply times out and its connection comes back
    closed before the process moves on, but the old side runs the write when it
    resumes, after the move. The stamp cannot say when that is, so it counts."""
    new = EmbeddedRedis()
    new.start()
    tracker, calls = _tracked()
    client = create_redis(own_redis_server.url, name="tests", identity=tracker)
    pool = client.connection_pool
    proc = own_redis_server.proc
    assert proc is not None
    try:
        lost = await _checkout(pool)
        first = await _checkout(pool)
        proc.send_signal(signal.SIGSTOP)
        lost.socket_timeout = 0.2
        await lost.send_command("SET", "written", "late")
        with pytest.raises(RedisTimeoutError):
            await lost.read_response()
        await pool.release(lost)  # closed by the timeout
        assert not lost.is_connected
        await _move(first, new)  # the process moves to the new side
        assert tracker.changes == 1
        changed = tracker.changed_at_ms
        await pool.release(first)
        proc.send_signal(signal.SIGCONT)  # the old side runs the write now
        old_side = create_redis(own_redis_server.url, name="admin")
        try:
            assert await old_side.get("written") == "late"
        finally:
            await old_side.aclose()
        await asyncio.sleep(0.05)  # a later moment, for the count to show
        lost.port = new.port
        assert await _checkout(pool) is first  # the last one returned comes first
        again = await _checkout(pool)
        assert again is lost  # reconnects to the new side as it is handed out
        assert tracker.changes == 1
        assert tracker.changed_at_ms > changed and calls == [changed, tracker.changed_at_ms]
        await pool.release(again)
        await pool.release(first)
    finally:
        proc.send_signal(signal.SIGCONT)
        await close_redis(client)
        new.close()
