"""Wake permit waiters when a permit key changes (Redis keyspace notifications).

One pub/sub connection per process pattern-subscribes to the keyspace
channels of the permit, governor-block and kill-switch keys. A waiter
registers the keys it cares about and gets an :class:`asyncio.Event` that is
set as soon as any of them is written, so the gate re-checks within about a
millisecond instead of at the next poll tick.

Notifications are a latency optimisation, never a correctness one: waiters
keep polling every ``APPLY_PERMIT_STEP_MS``, so a lost message, a dropped
pub/sub connection or a server with notifications off costs latency only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from apply_layer.logs import get_logger
from apply_layer.redis_client import redis_db

log = get_logger()

# Event classes we need: K (keyspace channel), $ (string writes), h (hash writes).
# Not g: DEL and EXPIRE events would double the traffic and never wake anyone.
REQUIRED_CLASSES = "K$h"


def covers(flags: str, needed: str = REQUIRED_CLASSES) -> bool:
    """Whether a ``notify-keyspace-events`` value publishes every class in ``needed``."""
    expanded = flags.replace("A", "g$lshzxetd")
    return all(c in expanded for c in needed)


def merged_flags(flags: str, needed: str = REQUIRED_CLASSES) -> str:
    """``flags`` plus whatever of ``needed`` it lacks, keeping what others rely on."""
    return flags + "".join(c for c in needed if not covers(flags, c))


class KeyspaceWatcher:
    """Process-wide keyspace listener with per-key waiter events."""

    def __init__(self, redis: Redis, patterns: Iterable[str], mode: str = "detect") -> None:
        self._redis = redis
        self._db = redis_db(redis)
        self._patterns = sorted(set(patterns))
        self._prefix = f"__keyspace@{self._db}__:"
        self._mode = mode
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.status = "off" if mode == "off" else "starting"

    @property
    def active(self) -> bool:
        """True while events are flowing; waiters may then rely on them for latency."""
        return self._subscribed.is_set()

    async def start(self) -> str:
        """Detect (or enable) notifications and subscribe; returns a one-line status."""
        if self._mode == "off":
            self.status = "off (APPLY_KEYSPACE_EVENTS=off): polling only"
            return self.status
        flags = await self._server_flags()
        if flags is None:
            self.status = "unknown (CONFIG GET refused): polling only"
            return self.status
        if not covers(flags):
            if self._mode != "enable":
                self.status = (
                    f"off on the server (notify-keyspace-events={flags!r}): polling only; "
                    "set APPLY_KEYSPACE_EVENTS=enable or add 'K$h' to react in ~1 ms"
                )
                return self.status
            try:
                await self._redis.config_set("notify-keyspace-events", merged_flags(flags))
            except RedisError as exc:
                self.status = f"could not enable ({exc}): polling only"
                return self.status
        self._task = asyncio.create_task(self._run(), name="keyspace-watcher")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2.0)
        self.status = "on" if self.active else "subscribing (polling meanwhile)"
        return self.status

    async def _server_flags(self) -> str | None:
        try:
            reply = await self._redis.config_get("notify-keyspace-events")
        except (ResponseError, RedisError):
            return None
        return str(reply.get("notify-keyspace-events") or "")

    async def _ensure_enabled(self) -> None:
        flags = await self._server_flags()
        if flags is not None and not covers(flags):
            await self._redis.config_set("notify-keyspace-events", merged_flags(flags))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._subscribed.clear()

    @contextlib.contextmanager
    def watch(self, keys: Iterable[str]) -> Iterator[asyncio.Event]:
        """Register interest in ``keys`` for the duration of the block."""
        event = asyncio.Event()
        keys = list(keys)
        for key in keys:
            self._waiters.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            for key in keys:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[key]

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _run(self) -> None:
        backoff = 0.1
        channels = [self._prefix + p for p in self._patterns]
        while True:
            pubsub = self._redis.pubsub()
            try:
                if self._mode == "enable":
                    await self._ensure_enabled()  # after a failover, the new primary's too
                await pubsub.psubscribe(*channels)
                self._subscribed.set()
                self._wake_all()  # re-check anything written while we were away
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    key = str(message["channel"]).removeprefix(self._prefix)
                    for event in self._waiters.get(key, ()):
                        event.set()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._subscribed.is_set():
                    log.warning("keyspace_watcher_lost", error=str(exc))
                self._subscribed.clear()
                self._wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
