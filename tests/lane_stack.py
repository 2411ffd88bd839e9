"""One daemon's gate for the gate lane's tests, wired as daemon/service.py wires it.

A client, its keyspace watcher, a script batcher with the function library,
and the lane (store/gate_lane.py) on the same client; and what the tests read
of the server to see who subscribes to what (CLIENT LIST).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from apply_layer.core.keys import ISSUERS
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import create_redis
from apply_layer.store.functions import LIBRARY
from apply_layer.store.gate import GateConfig, GateResult, PermitGate
from apply_layer.store.gate_lane import GateLane
from apply_layer.store.keyspace import KeyspaceWatcher
from tests.harness import until

SYM = "BTCUSDT"
GOV_KEY = ISSUERS["governor"].key
P33_KEY = ISSUERS["p33"].key
GOV_OK = {"granted": True, "symbol": SYM, "decision": "EXECUTE"}
P33_OK = {"allow": True, "symbol": SYM, "safe_qty": 0.002, "exchange_position_amt": 0.002}
# The governor's permit is written before a gate's lane starts: its event, read after
# the gate's first call, would be answered with a call (WAIT) and upset the counts.
# A step far longer than any wake: a decision well inside it came from an event, not the poll.
SLOW_STEP = GateConfig(wait_ms=6000, step_ms=3000)
GATE_CHANNELS = len(GateConfig().watch_patterns())  # the gate's patterns (the canary is not one)
LANE_CHANNELS = GATE_CHANNELS + 1  # the lane's: the gate's and the heartbeat's (its own canary)


async def put(redis: Redis, key: str, value: Any) -> None:
    await redis.set(key, value if isinstance(value, str) else json.dumps(value), ex=60)


class Stack:
    """One daemon's gate, wired as ``ApplyService.__init__`` and ``run`` wire it."""

    def __init__(self, url: str, name: str, config: GateConfig, *, lane: bool = True) -> None:
        self.name = name
        self.redis = create_redis(url, name=name)
        patterns = config.watch_patterns()
        self.watcher = KeyspaceWatcher(self.redis, patterns, "detect")
        self.scripts = ScriptBatcher(self.redis, library=LIBRARY)
        self.lane = GateLane(self.redis, patterns, self.watcher) if lane else None
        self.gate = PermitGate(self.redis, config, self.watcher, self.scripts, self.lane)
        self.lane_status = ""

    async def start(self) -> Stack:
        await self.scripts.prepare()
        assert await self.watcher.start() == "on"
        self.lane_status = await self.lane.start() if self.lane is not None else "off"
        return self

    async def close(self) -> None:
        if self.lane is not None:
            await self.lane.stop()
        await self.watcher.stop()
        await self.scripts.aclose()
        await self.redis.aclose()

    def the_lane(self) -> GateLane:
        assert self.lane is not None
        return self.lane

    async def waiting(self, plan_id: str) -> None:
        """Until the gate waits for ``plan_id``: its first call answered WAIT, it listens."""
        keys = set(self.gate.config.keys(plan_id))

        def listening() -> bool:
            if self.lane is not None and self.gate._lane_on():
                listens = keys <= set(self.lane._waiters)
            else:
                listens = keys <= set(self.watcher._waiters)
            idle = not self.scripts._sending and not self.scripts._queue
            return listens and idle and self.scripts.stats.calls >= 1

        await until(listening, timeout=10)

    def wait(self, plan_id: str, token: str | None = None) -> asyncio.Task[GateResult]:
        return asyncio.create_task(self.gate.wait_and_consume(plan_id, SYM, token=token))


StackFactory = Callable[..., Awaitable[Stack]]


def lane_addrs(lane: GateLane) -> set[str]:
    """The lane's connections as CLIENT LIST names them (``addr``: our end of the socket)."""
    addrs = set()
    for conn in lane._conns:
        writer = conn._writer
        assert writer is not None
        host, port = writer.get_extra_info("sockname")[:2]
        addrs.add(f"{host}:{port}")
    return addrs


async def pattern_counts(redis: Redis, name: str) -> list[int]:
    """``psub`` of every connection named ``name`` that has pattern subscriptions, sorted."""
    clients = await redis.client_list()
    return sorted(int(c["psub"]) for c in clients if c["name"] == name and int(c["psub"]) > 0)


async def lane_pattern_count(redis: Redis, lane: GateLane) -> int:
    addrs = lane_addrs(lane)
    return sum(int(c["psub"]) for c in await redis.client_list() if c["addr"] in addrs)


async def counts_are(redis: Redis, name: str, expected: list[int]) -> bool:
    return await pattern_counts(redis, name) == expected


async def equal(value: Awaitable[list[int]], expected: list[int]) -> bool:
    return await value == expected
