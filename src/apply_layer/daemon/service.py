"""``apply-layer run``: the long-running service around the gate.

This module's job is the service's wiring, its start and stop, and the
intake loop. The loop reads the plan stream with a blocking ``XREADGROUP``
that returns at once when plans arrive and otherwise wakes every
``APPLY_POLL_SEC`` for ``housekeeping`` (heartbeat, claims of idle
entries). Each entry becomes a task (``entry_tasks``), at most
``APPLY_MAX_IN_FLIGHT`` at once, so a plan waiting 1200 ms for P3.3 never
holds up the plans behind it. An entry is acknowledged only after its
outcome is published; a Redis outage (``redis_health``: one line per
outage) leaves it pending, and once Redis is back this consumer re-reads
its own pending entries and resumes each from its journal state.

Memory does not follow what the stream holds: reads are parsed as they
arrive (``stream_reader``), an entry past 64 KiB keeps only its short echo
fields and ends REJECTED ``invalid_plan:oversized_entry``, and each read asks
for no more entries than :data:`HELD_ENTRIES_BUDGET` still has room for
(docs/RELIABILITY.md, "Staying bounded").
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from apply_layer import __version__, metrics
from apply_layer.core import keys as K
from apply_layer.core.errors import ConfigError, FunctionLibraryMissing
from apply_layer.daemon import metrics_http, systemd
from apply_layer.daemon.entry_tasks import EntryTasks
from apply_layer.daemon.housekeeping import Housekeeping
from apply_layer.daemon.metrics_http import MetricsServer
from apply_layer.daemon.processing import Processor
from apply_layer.daemon.redis_health import MAX_BACKOFF_SEC, RedisHealth
from apply_layer.executors import create_executor
from apply_layer.executors.base import Executor
from apply_layer.logs import get_logger
from apply_layer.settings import Settings, unknown_env_vars
from apply_layer.store import stream_reader
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import close_redis, redis_for
from apply_layer.store.functions import LIBRARY
from apply_layer.store.gate import GateConfig, PermitGate
from apply_layer.store.gate_lane import GateLane
from apply_layer.store.identity import IdentityTracker, state_file
from apply_layer.store.journal import Journal
from apply_layer.store.keyspace import KeyspaceWatcher
from apply_layer.store.republish import RecentResults, republish_after_changes
from apply_layer.store.stream_reply import StreamEntry

log = get_logger()

DRAIN_TIMEOUT_SEC = 25.0
# Entries held at once (read and not yet finished) cost at most this many
# bytes, whatever the stream holds: each read asks for no more entries than
# the room left allows at stream_reply.ENTRY_COST_MAX each (entry_tasks keeps
# the count).
HELD_ENTRIES_BUDGET = 48 << 20
MAX_READ_COUNT = 256


class ApplyService:
    def __init__(self, settings: Settings, executor: Executor | None = None) -> None:
        self.settings = settings
        self.executor = executor or create_executor(settings)
        name = f"apply_layer:{settings.consumer_name}"
        # Every connection reports the server it reached: a different one may have lost
        # writes, and the executor then looks orders up before sending (store/identity.py).
        self.identity = IdentityTracker(state_path=state_file(settings.state_dir))
        self.redis: Redis = redis_for(settings, name=name, identity=self.identity)
        self.reader: Redis = redis_for(
            settings, name=f"{name}:reader", block_sec=settings.poll_sec, identity=self.identity
        )
        config = GateConfig.from_settings(settings)
        self.watcher = KeyspaceWatcher(
            self.redis, config.watch_patterns(), settings.keyspace_events
        )
        # The hot path's scripts share round trips (see batching.py), as functions of
        # the library an admin loaded (functions.py): the daemon's user may not EVAL.
        self.scripts = ScriptBatcher(self.redis, library=LIBRARY)
        # No events, no lane: with APPLY_KEYSPACE_EVENTS=off the gate only polls.
        lane_on = settings.gate_lane and settings.keyspace_events != "off"
        self.lane = GateLane(self.redis, config.watch_patterns(), self.watcher) if lane_on else None
        self.gate = PermitGate(self.redis, config, self.watcher, self.scripts, self.lane)
        self.journal = Journal(
            self.redis,
            dedupe_ttl_sec=settings.dedupe_ttl_sec,
            journal_ttl_sec=settings.journal_ttl_sec,
            group=settings.consumer_group,
            scripts=self.scripts,
            identity=self.identity,
            recent=RecentResults(),
            wait_replicas=settings.redis_wait_replicas,
        )
        self._identity_changed = asyncio.Event()
        self.identity.listeners.append(self._identity_changed.set)
        self.processor = Processor(
            settings, self.redis, self.gate, self.journal, self.executor, self.scripts
        )
        self._stopping = asyncio.Event()
        self.health = RedisHealth(settings.mode, self._pause)
        self.entries = EntryTasks(
            self.processor,
            self.identity,
            max_in_flight=settings.max_in_flight,
            budget_bytes=HELD_ENTRIES_BUDGET,
            stopping=self._stopping,
            pause=self._pause,
            redis_failed=self._redis_failed,
        )
        self.counts = self.entries.counts  # by HandledKind, for the "stopped" line
        self.housekeeping = Housekeeping(
            settings,
            self.redis,
            self.watcher,
            in_flight=self.entries.in_flight,
            room=self.entries.room,
            spawn=self.entries.spawn,
            lane=self.lane,
        )
        self._backlog = True  # read our own pending entries first
        self._backlog_cursor = "0"
        self._group_ready = False
        self._alive = time.monotonic()

    # ---- lifecycle -----------------------------------------------------------------

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping", in_flight=len(self.entries.in_flight))
            systemd.notify("STOPPING=1")
            self._stopping.set()

    async def _start_executor(self) -> None:
        """A configuration error stops the start (exit 2); an unreachable exchange does
        not: plans then end FAILED ``exchange_unavailable`` until it answers again."""
        try:
            await self.executor.start()
        except ConfigError:
            await close_redis(self.redis)
            await close_redis(self.reader)
            raise
        except Exception as exc:
            log.error("executor_start_failed", mode=self.settings.mode, error=str(exc))

    async def _start_metrics(self) -> MetricsServer | None:
        """First: a port in use stops the start (ConfigError naming it, exit 2) before the rest."""
        try:
            return await metrics_http.serve(self.settings.metrics_port, self.settings.metrics_bind)
        except ConfigError:
            await close_redis(self.redis)
            await close_redis(self.reader)
            raise

    async def run(self) -> int:
        endpoint = await self._start_metrics()
        metrics_on = endpoint is not None
        try:
            await self._start_executor()
            scripts = await self._prepare_scripts()
        except ConfigError:
            if endpoint is not None:
                await endpoint.close()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        for name in unknown_env_vars():
            log.warning("unknown_setting", variable=name, hint="not read by apply-layer: a typo?")
        metrics.PERMIT_DEADLINE.set(self.settings.permit_wait_ms / 1000)
        keyspace = await self._start_watcher()
        lane = await self.lane.start() if self.lane is not None else "off"
        metrics.REDIS_UP.set(1 if self.health.up else 0)  # a failed read sets it to 0
        log.info(
            "apply_layer_started",
            version=__version__,
            mode=self.settings.mode,
            consumer=self.settings.consumer_name,
            group=self.settings.consumer_group,
            required=",".join(self.settings.required_permits),
            keyspace_events=keyspace,
            gate_lane=lane,
            metrics_port=self.settings.metrics_port if metrics_on else "off",
            metrics_bind=self.settings.metrics_bind if metrics_on else "off",
            permit_signing=self.processor.signatures.describe(),
            scripts=scripts,
        )
        systemd.notify(f"READY=1\nSTATUS=mode={self.settings.mode}")
        watchdog = asyncio.create_task(self._watchdog())
        republisher = asyncio.create_task(
            republish_after_changes(
                self.journal.results,
                self._identity_changed,
                on_error=self._redis_failed,
                pause=self._pause,
                stopping=self._stopping,
                max_backoff=MAX_BACKOFF_SEC,
            )
        )
        intake = asyncio.create_task(self._intake())
        await self._stopping.wait()
        # The intake loop stops by itself within one blocking read; cancelling a
        # task inside a redis-py read can be swallowed on Python 3.11, so it is
        # only the fallback.
        done, _ = await asyncio.wait({intake}, timeout=self.settings.poll_sec + 5)
        if not done:
            intake.cancel()
            await asyncio.wait({intake}, timeout=5)
        await self.entries.drain(DRAIN_TIMEOUT_SEC)
        watchdog.cancel()
        republisher.cancel()
        if self.lane is not None:
            await self.lane.stop()
        await self.watcher.stop()
        await self.scripts.aclose()
        await self.executor.close()
        await close_redis(self.redis)
        await close_redis(self.reader)
        if endpoint is not None:
            await endpoint.close()
        log.info("stopped", **self.counts)
        return 0

    async def _prepare_scripts(self) -> str:
        """The function library (functions.py): missing and not loadable by this user stops
        the start (exit 2, one line); Redis down does not (calls fail closed until it is)."""
        try:
            return await self.scripts.prepare()
        except FunctionLibraryMissing as exc:
            await self.executor.close()
            await close_redis(self.redis)
            await close_redis(self.reader)
            raise ConfigError(str(exc)) from None
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return "unknown (Redis unreachable at start)"

    async def _start_watcher(self) -> str:
        try:
            return await self.watcher.start()
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return "unknown (Redis unreachable at start): polling"

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        stale_after = self.settings.poll_sec + 2 * interval + 5
        while True:
            if time.monotonic() - self._alive < stale_after:
                systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # ---- Redis health ----------------------------------------------------------------

    def _redis_failed(self, exc: BaseException) -> None:
        """Any part's Redis failure: reported (once per outage), and the intake
        loop re-reads this consumer's own pending entries first once it is back."""
        self.health.failed(exc)
        self._backlog, self._backlog_cursor = True, "0"

    async def _pause(self, seconds: float, event: asyncio.Event | None = None) -> None:
        """Sleep up to ``seconds``, waking early on stop (or on ``event``)."""
        waiters = {asyncio.ensure_future(self._stopping.wait())}
        if event is not None:
            waiters.add(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # ---- intake ------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                K.PLAN_STREAM, self.settings.consumer_group, id="$", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _intake(self) -> None:
        while not self._stopping.is_set():
            self._alive = time.monotonic()
            try:
                if not self._group_ready:
                    await self._ensure_group()
                await self.housekeeping.run_if_due()
                count = min(self.entries.room(), MAX_READ_COUNT)
                if count <= 0:
                    self.entries.slot_freed.clear()
                    await self._pause(self.settings.poll_sec, self.entries.slot_freed)
                    continue
                entries = await self._read(count)
                self.health.ok()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._group_ready = False
                    continue
                self._redis_failed(exc)
                await self.health.pause_after_failure()
                continue
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
                await self.health.pause_after_failure()
                continue
            for entry in entries:
                if entry.entry_id not in self.entries.in_flight:
                    self.entries.spawn(entry)

    async def _read(self, count: int) -> list[StreamEntry]:
        group, consumer = self.settings.consumer_group, self.settings.consumer_name
        if self._backlog:
            entries = await stream_reader.xreadgroup(
                self.reader, group, consumer, K.PLAN_STREAM, self._backlog_cursor, count=count
            )
            if len(entries) < count:
                self._backlog = False
            if entries:
                self._backlog_cursor = entries[-1].entry_id
            return entries
        block_ms = int(self.settings.poll_sec * 1000)
        return await stream_reader.xreadgroup(
            self.reader, group, consumer, K.PLAN_STREAM, ">", count=count, block_ms=block_ms
        )
