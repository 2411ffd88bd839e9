"""What the service's intake loop does between reads, once per ``APPLY_POLL_SEC``.

- The heartbeat (``quantum:svc:apply_layer:heartbeat``, expiring after three
  ticks, 15 s at least): operators see which daemons are alive, and the
  keyspace watcher expects the write's own keyspace event (its canary).
- The group's pending entries and its lag (entries not yet delivered to it),
  exported for the alerts (``XPENDING``, ``XINFO GROUPS``); while Redis
  cannot be read they are NaN (:func:`mark_unknown`), not their last value.
- The kill switch, read (``TYPE``/``GET`` of its keys) so its gauge clears
  within a tick of the key's deletion.
- Whether keyspace events flow (``KeyspaceWatcher.check``: the last
  heartbeat's event, and the server's setting where ``CONFIG GET`` is allowed).
- ``XAUTOCLAIM`` of entries idle past ``APPLY_CLAIM_IDLE_SEC`` in *any*
  consumer's pending list: a crashed instance's plans (and ours, if a try was
  deferred) are resumed from their journal state. This, with the service's
  re-read of its own pending entries, is how no plan is lost
  (docs/RELIABILITY.md).
- Once a minute, consumers gone for an hour with nothing pending are
  forgotten: names carry the pid, so every restart adds one, and the group
  must not grow without end.

It runs inside the intake loop, not beside it, so a Redis error here is
handled like a failed read (the loop backs off and tries again).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Collection
from typing import Any

from redis.asyncio import Redis

from apply_layer import __version__, metrics
from apply_layer.core import keys as K
from apply_layer.core.permits import kill_on
from apply_layer.logs import get_logger
from apply_layer.settings import Settings
from apply_layer.store import stream_reader
from apply_layer.store.batching import run_packed
from apply_layer.store.gate_lane import GateLane
from apply_layer.store.keyspace import KeyspaceWatcher
from apply_layer.store.stream_reply import StreamEntry

log = get_logger()

# A consumer with nothing pending and not seen for this long is forgotten
# (names carry the pid, so every restart adds one; the group must not grow).
FORGET_CONSUMER_MS = 3_600_000
FORGET_EVERY_SEC = 60.0
MAX_CLAIM_COUNT = 100
# When XINFO GROUPS cannot tell the lag (entries deleted past the group's
# position), the undelivered entries are counted, up to this many.
LAG_COUNT_CAP = 1000
UNKNOWN = float("nan")


def mark_unknown() -> None:
    """Redis cannot be read: the backlog and kill switch gauges say so (NaN).

    A gauge left at its last value during an outage tells a story nobody
    measured (issue 23): NaN compares false, so the backlog and kill-switch
    alerts go quiet and ApplyLayerRedisDown speaks for the outage.
    """
    for gauge in (metrics.PENDING, metrics.PENDING_OLDEST, metrics.STREAM_LAG):
        gauge.set(UNKNOWN)
    metrics.KILL_SWITCH_ON.set(UNKNOWN)


class Housekeeping:
    """The periodic chores of one consumer.

    ``in_flight`` is the service's live view of the entry ids it is working
    on, ``room`` how many more it may take now, and ``spawn`` starts work on
    one (claimed entries go through the same slots and budget as read ones).
    """

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        watcher: KeyspaceWatcher,
        *,
        in_flight: Collection[str],
        room: Callable[[], int],
        spawn: Callable[[StreamEntry], None],
        lane: GateLane | None = None,
    ) -> None:
        self.settings, self.redis = settings, redis
        self.watcher, self._in_flight = watcher, in_flight
        self.lane = lane
        self._room, self._spawn = room, spawn
        self._next_run = 0.0
        self._claim_cursor = "0-0"
        self._next_forget = 0.0

    async def run_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_run:
            return
        self._next_run = now + self.settings.poll_sec
        await self.watcher.check()
        if self.lane is not None:
            self.lane.check()
        metrics.KEYSPACE_ACTIVE.labels(self.settings.keyspace_events).set(
            1 if self.watcher.active else 0
        )
        beat = {
            "ts": round(time.time(), 3),
            "consumer": self.settings.consumer_name,
            "mode": self.settings.mode,
            "version": __version__,
            "in_flight": len(self._in_flight),
        }
        ttl = max(15, int(self.settings.poll_sec * 3))
        lane = self.lane.canary_write() if self.lane else contextlib.nullcontext()
        with self.watcher.canary_write(), lane:
            await self.redis.set(K.HEARTBEAT_KEY, json.dumps(beat), ex=ttl)
        await self._export_backlog()
        await self._export_kill_switch()
        await self._claim_idle()
        if now >= self._next_forget:
            self._next_forget = now + FORGET_EVERY_SEC
            await self._forget_idle_consumers()

    async def _export_backlog(self) -> None:
        """The group's unacknowledged entries, for the pending-entries alerts (one XPENDING)."""
        info: Any = await self.redis.xpending(K.PLAN_STREAM, self.settings.consumer_group)
        metrics.PENDING.set(int(info["pending"]))
        oldest = str(info.get("min") or "")
        ms = oldest.partition("-")[0]
        age = time.time() - int(ms) / 1000 if ms.isdigit() else 0.0
        metrics.PENDING_OLDEST.set(max(0.0, age))
        metrics.STREAM_LAG.set(await self._lag())

    async def _lag(self) -> float:
        """Entries the group has not been given yet (a backlog before the daemon reads it)."""
        group = self.settings.consumer_group
        groups: Any = await self.redis.xinfo_groups(K.PLAN_STREAM)
        mine = next((g for g in groups if str(g.get("name")) == group), None)
        if mine is None:
            return UNKNOWN
        if mine.get("lag") is not None:
            return float(mine["lag"])
        last = str(mine.get("last-delivered-id") or "0-0")
        after: Any = await self.redis.xrange(K.PLAN_STREAM, f"({last}", "+", count=LAG_COUNT_CAP)
        return float(len(after))

    async def _export_kill_switch(self) -> None:
        """1 while any kill switch is on (the gate's rule, ``permits.kill_on``), else 0."""
        on = self.settings.kill_switch
        for key in K.KILL_SWITCH_KEYS:
            if on:
                break
            kind = str(await self.redis.type(key))
            value: Any = await self.redis.get(key) if kind == "string" else None
            on = kill_on(kind, value)
        metrics.KILL_SWITCH_ON.set(1 if on else 0)

    async def _forget_idle_consumers(self) -> None:
        consumers: Any = await self.redis.xinfo_consumers(
            K.PLAN_STREAM, self.settings.consumer_group
        )
        for consumer in consumers:
            name = str(consumer.get("name"))
            idle = int(consumer.get("idle", 0))
            mine = name == self.settings.consumer_name
            if not mine and not int(consumer.get("pending", 0)) and idle > FORGET_CONSUMER_MS:
                await self.redis.xgroup_delconsumer(
                    K.PLAN_STREAM, self.settings.consumer_group, name
                )
                log.info("consumer_forgotten", consumer=name, idle_ms=idle)

    async def _claim_idle(self) -> None:
        """Take over entries idle past APPLY_CLAIM_IDLE_SEC in any consumer's pending list.

        A crashed instance's plans (and our own, if a try was deferred) are
        resumed from their journal state; ones still being worked on here are
        skipped. One page per tick keeps the tick short.
        """
        count = min(self._room(), MAX_CLAIM_COUNT)
        if count <= 0:
            return
        # JUSTID: the entries themselves are read bounded, one by one (stream_reader).
        command: list[str | int] = ["XAUTOCLAIM", K.PLAN_STREAM, self.settings.consumer_group]
        command += [self.settings.consumer_name, int(self.settings.claim_idle_sec * 1000)]
        command += [self._claim_cursor, "COUNT", count, "JUSTID"]
        (reply,) = await run_packed(self.redis, [command])
        if isinstance(reply, Exception):
            raise reply
        self._claim_cursor = str(reply[0])
        for entry_id in reply[1]:
            if entry_id not in self._in_flight:
                log.info("entry_claimed", entry_id=entry_id)
                self._spawn(await stream_reader.xrange_one(self.redis, K.PLAN_STREAM, entry_id))
