"""One task per stream entry read, within the in-flight and memory budgets.

Why a module of its own: the intake loop only reads; this is what keeps the
entries it read alive until each has ended. Each entry becomes a task, at most
``APPLY_MAX_IN_FLIGHT`` at once and at most ``service.HELD_ENTRIES_BUDGET``
bytes of them held (:attr:`StreamEntry.cost`), so a plan waiting 1200 ms for P3.3
never holds up the plans behind it and memory does not follow what the stream
holds. A task hands its entry to the processor (which publishes and
acknowledges it) and keeps it through a Redis outage, trying again; a stop
waits for the tasks up to a drain timeout, and what is left stays pending,
resumed from its journal on restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, KeysView

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer import metrics
from apply_layer.core.errors import RetryLater
from apply_layer.core.statuses import HandledKind
from apply_layer.daemon.processing import Processor
from apply_layer.daemon.redis_health import MAX_BACKOFF_SEC
from apply_layer.logs import get_logger
from apply_layer.store.identity import IdentityTracker
from apply_layer.store.stream_reply import ENTRY_COST_MAX, StreamEntry

log = get_logger()


class EntryTasks:
    """The entries in flight: their tasks, their memory, and how each one ends."""

    def __init__(
        self,
        processor: Processor,
        identity: IdentityTracker,
        *,
        max_in_flight: int,
        budget_bytes: int,
        stopping: asyncio.Event,
        pause: Callable[[float], Awaitable[None]],
        redis_failed: Callable[[BaseException], None],
    ) -> None:
        self.processor = processor
        self.identity = identity
        self.max_in_flight = max_in_flight
        self.budget_bytes = budget_bytes
        self._stopping = stopping
        self._pause = pause  # sleeps, waking early on stop
        self._redis_failed = redis_failed  # logged once per outage (redis_health)
        self.counts: dict[str, int] = {kind.value: 0 for kind in HandledKind}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._held = 0  # bytes held by the entries in self._tasks (StreamEntry.cost)
        # Set when a task ends: the intake loop, out of room, waits for it.
        self.slot_freed = asyncio.Event()

    @property
    def in_flight(self) -> KeysView[str]:
        """The ids of the entries being worked on: a live view."""
        return self._tasks.keys()

    def room(self) -> int:
        """How many more entries may be read now: free slots, and room in the budget."""
        free = self.max_in_flight - len(self._tasks)
        return min(free, (self.budget_bytes - self._held) // ENTRY_COST_MAX)

    def spawn(self, entry: StreamEntry) -> None:
        entry_id, cost = entry.entry_id, entry.cost
        task = asyncio.create_task(self._process(entry), name=f"plan:{entry_id}")
        self._tasks[entry_id] = task
        self._held += cost
        metrics.IN_FLIGHT.set(len(self._tasks))

        def _done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(entry_id, None)
            self._held -= cost
            metrics.IN_FLIGHT.set(len(self._tasks))
            self.slot_freed.set()

        task.add_done_callback(_done)

    async def drain(self, timeout_sec: float) -> None:
        """Wait for the tasks in flight, up to ``timeout_sec``; cancel the rest."""
        if not self._tasks:
            return
        log.info("draining", in_flight=len(self._tasks))
        _, pending = await asyncio.wait(list(self._tasks.values()), timeout=timeout_sec)
        for task in pending:  # their entries stay pending and are resumed on restart
            task.cancel()
        if pending:
            log.warning("drain_timeout", abandoned=len(pending))

    async def _process(self, entry: StreamEntry) -> None:
        """Handle one entry; through a Redis outage, keep it and try again.

        A plan read from Redis is finished here even if Redis loses it
        afterwards: a failover to a replica that had not yet received the
        entry (or the claim, or the result) would otherwise leave it with no
        result at all, since the stream would never hand it out again. Every
        step resumes from the journal, so trying again is what recovery
        would do anyway. A plan refused (``RetryLater``) by a Redis that
        changed since it was read is tried again too; other refusals, a
        command error and a stop leave the entry pending for recovery.
        """
        entry_id = entry.entry_id
        backoff = 0.2
        redis_since = self.identity.changed_at_ms
        while True:
            try:
                await self._process_once(entry)
                return
            except RetryLater as exc:
                if self.identity.changed_at_ms != redis_since and not self._stopping.is_set():
                    # Refused by a Redis that lost writes since we read the plan (the lease
                    # or the journal state went back): the entry may be gone, try again.
                    redis_since = self.identity.changed_at_ms
                    log.warning("plan_retried_after_redis_change", entry_id=entry_id, why=str(exc))
                    await self._pause(backoff)
                    continue
                log.warning("plan_deferred", entry_id=entry_id, why=str(exc))
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._redis_failed(exc)  # logged once per outage
                if self._stopping.is_set():
                    return  # the entry stays pending; resumed from its journal
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SEC)
            except RedisError as exc:
                self._redis_failed(exc)  # the entry stays pending; resumed from its journal
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("plan_processing_error", entry_id=entry_id)
                return

    async def _process_once(self, entry: StreamEntry) -> None:
        """Hand one entry to the processor, which also acknowledges it."""
        entry_id = entry.entry_id
        if not entry.fields and not entry.oversized:  # trimmed while pending: nothing left
            await self.processor.drop_gone(entry_id)
            return
        handled = await self.processor.handle(entry_id, entry.fields, oversized=entry.oversized)
        self.counts[handled.kind] += 1
        if handled.kind == HandledKind.DUPLICATE:
            metrics.DUPLICATES.inc()
