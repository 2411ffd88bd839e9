"""The housekeeping tick drives the gate lane's own checks (``daemon/housekeeping.py``):
``check`` once a tick, and ``canary_write`` around the heartbeat's SET, so the lane
expects that write's keyspace event (``store/gate_lane.py``; the lane's side of it
is in ``tests/store/test_gate_lane_down.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import cast

import pytest
from redis.exceptions import OutOfMemoryError

from apply_layer.core import keys as K
from apply_layer.daemon.housekeeping import Housekeeping
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GateConfig
from apply_layer.store.gate_lane import GateLane
from apply_layer.store.keyspace import KeyspaceWatcher
from tests.harness import settings_for


class RecordingLane:
    """What the tick asks of the lane, in order (``armed``/``written``/``failed``: the
    canary context entered, left after the SET, left by the SET's error)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def check(self) -> None:
        self.calls.append("check")

    @contextlib.contextmanager
    def canary_write(self) -> Iterator[None]:
        self.calls.append("armed")
        try:
            yield
        except BaseException:
            self.calls.append("failed")
            raise
        self.calls.append("written")


async def test_each_tick_checks_the_lane_and_arms_it_around_the_heartbeat(
    own_redis_server: EmbeddedRedis,
) -> None:
    admin = create_redis(own_redis_server.url, name="admin")
    await admin.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    client = create_redis(own_redis_server.url, name="tests")
    watcher = KeyspaceWatcher(client, GateConfig().watch_patterns(), mode="off")
    lane = RecordingLane()
    chores = Housekeeping(
        settings_for(own_redis_server, poll_sec=0.01),
        client,
        watcher,
        in_flight=(),
        room=lambda: 0,
        spawn=lambda entry: None,
        lane=cast(GateLane, lane),
    )
    try:
        await chores.run_if_due()
        assert lane.calls == ["check", "armed", "written"]
        assert await admin.exists(K.HEARTBEAT_KEY) == 1
        # A refused heartbeat: the lane is told the write failed (no event will come).
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")
        await asyncio.sleep(0.02)  # past poll_sec: the tick is due
        lane.calls.clear()
        with pytest.raises(OutOfMemoryError):
            await chores.run_if_due()
        assert lane.calls == ["check", "armed", "failed"]
    finally:
        await admin.config_set("maxmemory", "0")
        await client.aclose()
        await admin.aclose()
