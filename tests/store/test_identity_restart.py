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

from redis.asyncio import Redis

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
        held = await pool.get_connection()  # type: ignore[no-untyped-call]
        own_redis_server.restart()
        await client.ping()  # another connection notices the change first
        changed = tracker.changed_at_ms
        await asyncio.sleep(0.05)
        await held.disconnect()
        await held.connect()  # as pub/sub reconnects its connection, without a return
        assert tracker.changes == 1  # the same server: no change of server counted
        assert tracker.changed_at_ms > changed and calls == [changed, tracker.changed_at_ms]
        await pool.release(held)
    finally:
        await close_redis(client)
