"""The chaos run where Redis itself loses writes: failovers and rollbacks.

:class:`FailoverChaos` runs the daemons against a Sentinel setup (one
primary, one replica, three sentinels; ``tests/sentinels.py``) and kills the
primary with SIGKILL while plans flow, each time half a second after cutting
its link to the replica, so that the replica lags and the last writes are
lost; the daemons must follow each new primary without a restart.
:class:`RollbackChaos` keeps taking RDB snapshots of a Redis without AOF
and, at random moments, brings it back from the latest one, so the last
second or two of writes are gone.

Both check what ``tests/chaos.py`` checks, with one difference that losing
writes forces: a plan Redis acknowledged and then lost before any daemon
read it cannot have a result (no one knows of it any more); such plans are
counted apart (``lost_by_redis``), and so are permits whose writes were lost
and, where daemons are killed too, plans whose entry Redis lost while the
daemon that had read them was killed before finishing them (a double fault:
``lost_with_killed_daemon``).
Every other plan must end with one result, and no plan may have two orders
or an order without its permits.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis, create_sentinel_redis
from tests.chaos import Chaos, ChaosConfig, Report
from tests.harness import Snapshots
from tests.sentinels import SERVICE, RedisSentinels

# The daemons get a URL whose host nothing listens on: with sentinels set, only its
# database, user and password count.
UNUSED_URL = "redis://127.0.0.1:1/0"


class FailoverChaos(Chaos):
    """Plans flowing while the Sentinel setup's primary is killed ``failovers`` times.

    Each kill comes ``lag_sec`` after the primary's link to its replica was cut, so
    the writes of that moment are lost with it (a replica that lagged).
    """

    loses_writes = True
    lag_sec = 0.5

    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        super().__init__(config, workdir)
        self.sentinels = RedisSentinels(replicas=1, sentinels=3, down_after_ms=config.down_after_ms)
        self.failover_secs: list[float] = []

    async def _start_redis(self) -> Redis:
        await self.sentinels.start()
        return create_sentinel_redis(
            [("127.0.0.1", s.port) for s in self.sentinels.sentinels],
            SERVICE,
            url=UNUSED_URL,
            name="chaos",
        )

    def _stop_redis(self) -> None:
        self.sentinels.close()
        self.redis_server.close()  # the standalone server of the base run, never started here

    def _redis_url(self) -> str:
        return UNUSED_URL

    def _redis_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "redis_sentinels": self.sentinels.addresses,
            "redis_sentinel_service": SERVICE,
        }
        if self.c.wait_replicas:
            settings["redis_wait_replicas"] = self.c.wait_replicas
        return settings

    def _redis_events(self) -> int:
        return self.c.failovers

    async def _redis_event(self, what: str) -> None:
        fail = self.sentinels.pause_primary if self.c.split_brain else self.sentinels.kill_primary
        self.failover_secs.append(await fail(lag_sec=self.lag_sec))
        self.report.failovers += 1


class RollbackChaos(Chaos):
    """Plans flowing while Redis is brought back from a snapshot ``rollbacks`` times."""

    loses_writes = True
    snapshot_every_sec = 1.5

    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        super().__init__(config, workdir)
        self.snapshots = Snapshots(self.redis_server, workdir)
        self._lock = asyncio.Lock()
        self._snapshotter: asyncio.Task[None] | None = None

    def _new_redis_server(self) -> EmbeddedRedis:
        return EmbeddedRedis(appendonly=False, notify_keyspace_events="K$h")  # snapshots only

    async def _start_redis(self) -> Redis:
        self.redis_server.start()
        redis = create_redis(self.redis_server.url, name="chaos")
        await self.snapshots.take(redis)
        self._snapshotter = asyncio.create_task(self._keep_snapshotting(redis))
        return redis

    def _stop_redis(self) -> None:
        if self._snapshotter is not None:
            self._snapshotter.cancel()
        super()._stop_redis()

    async def _keep_snapshotting(self, redis: Redis) -> None:
        while True:
            await asyncio.sleep(self.snapshot_every_sec)
            async with self._lock:
                with contextlib.suppress(RedisError, OSError):
                    await self.snapshots.take(redis)

    def _redis_events(self) -> int:
        return self.c.rollbacks

    async def _redis_event(self, what: str) -> None:
        async with self._lock:
            self.snapshots.restore()  # what was written since the last snapshot is gone
        self.report.rollbacks += 1


async def run_failover_chaos(config: ChaosConfig, workdir: Path) -> Report:
    return await FailoverChaos(replace(config, redis_restarts=0), workdir).run()


async def run_rollback_chaos(config: ChaosConfig, workdir: Path) -> Report:
    return await RollbackChaos(replace(config, redis_restarts=0), workdir).run()
