"""The gate's lane taken down every way its module names, and back.

Its connections killed, a Redis restart, a function library flushed (an error
reply), a reply later than its timeout: each time the gate still decides by
its own path, the watcher takes the gate's channels back while the lane is
down, and the lane returns (tests/lane_stack.py wires the gates).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from decimal import Decimal
from typing import Any

import hiredis
import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store import gate_lane
from apply_layer.store.connection import create_redis
from tests.harness import sample, until
from tests.lane_stack import (
    GATE_CHANNELS,
    GOV_KEY,
    GOV_OK,
    LANE_CHANNELS,
    P33_KEY,
    P33_OK,
    SLOW_STEP,
    Stack,
    StackFactory,
    counts_are,
    lane_addrs,
    lane_pattern_count,
    put,
)


async def test_the_lanes_connections_killed_mid_wait(
    events: Redis, stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held down long enough to see the watcher take the gate's channels back.
    monkeypatch.setattr(gate_lane, "FIRST_BACKOFF_SEC", 1.5)
    await put(events, GOV_KEY("l4"), GOV_OK)
    stack = await stacks("lane-kill")
    lane = stack.the_lane()
    # The watcher leaves the gate's channels to the lane at its next read (within a second).
    await until(lambda: counts_are(events, "lane-kill", [1, LANE_CHANNELS]), timeout=5)
    assert await lane_pattern_count(events, lane) == LANE_CHANNELS
    task = stack.wait("l4")
    await stack.waiting("l4")
    addrs = lane_addrs(lane)
    ids = [c["id"] for c in await events.client_list() if c["addr"] in addrs]
    assert len(ids) == 2
    async with events.pipeline(transaction=True) as both:  # at once: the lane closes the other
        for client_id in ids:
            both.client_kill_filter(_id=client_id)
        assert await both.execute() == [1, 1]
    await until(lambda: not lane.active, timeout=5)
    assert sample("apply_gate_lane_active") == 0
    # The watcher took the gate's channels back: one connection with them all.
    await until(lambda: counts_are(events, "lane-kill", [GATE_CHANNELS + 1]), timeout=5)
    assert not task.done()  # still waiting, by the watcher now
    written = time.monotonic()
    await put(events, P33_KEY("l4"), P33_OK)
    result = await task
    assert time.monotonic() - written < 1.0  # woken by the watcher, not the 3 s poll
    assert result.allowed and result.owner and result.safe_qty == Decimal("0.002")
    assert lane.decisions == 0  # the lane had no part in it
    assert "no reply" not in lane.error and lane.error  # why it is down, e.g. "closed"
    await until(lambda: lane.active, timeout=10)
    assert sample("apply_gate_lane_active") == 1
    await until(lambda: counts_are(events, "lane-kill", [1, LANE_CHANNELS]), timeout=5)
    # And it decides again.
    await put(events, GOV_KEY("l4b"), GOV_OK)
    again = stack.wait("l4b")
    await stack.waiting("l4b")
    await put(events, P33_KEY("l4b"), P33_OK)
    assert (await again).allowed and lane.decisions == 1


async def test_a_function_flush_during_the_wait_the_gate_reloads_and_the_lane_stays(
    events: Redis, stacks: StackFactory
) -> None:
    await put(events, GOV_KEY("l5"), GOV_OK)
    stack = await stacks("lane-flush")
    lane = stack.the_lane()
    task = stack.wait("l5")
    await stack.waiting("l5")
    await events.execute_command("FUNCTION", "FLUSH")  # type: ignore[no-untyped-call]
    assert await events.execute_command("FUNCTION", "LIST") == []  # type: ignore[no-untyped-call]
    reloads = stack.scripts.stats.reloads
    await put(events, P33_KEY("l5"), P33_OK)
    result = await task
    # The lane's FCALL got "Function not found": it woke the gate, whose own call
    # loaded the library and decided.
    assert (lane.calls, lane.decisions) == (1, 0)
    assert stack.scripts.stats.reloads == reloads + 1
    assert await events.execute_command("FUNCTION", "LIST") != []  # type: ignore[no-untyped-call]
    assert result.allowed and result.owner and result.safe_qty == Decimal("0.002")
    assert result.wait_ms < SLOW_STEP.step_ms
    assert lane.active and sample("apply_gate_lane_active") == 1


async def test_the_lane_comes_back_after_a_redis_restart_and_decides_again(
    own_redis_server: EmbeddedRedis,
) -> None:
    admin = create_redis(own_redis_server.url, name="admin")
    stack = Stack(own_redis_server.url, "lane-restart", SLOW_STEP)
    try:
        await admin.config_set("notify-keyspace-events", "K$h")
        await stack.start()
        lane = stack.the_lane()
        assert lane.active
        own_redis_server.restart(kill=True)
        await until(lambda: not lane.active, timeout=5)
        await admin.config_set("notify-keyspace-events", "K$h")  # a restart forgets CONFIG SET
        await until(lambda: lane.active and stack.watcher.active, timeout=15)
        await stack.scripts.prepare()  # the library, if the restart lost it
        await until(lambda: counts_are(admin, "lane-restart", [1, LANE_CHANNELS]), timeout=5)
        with stack.watcher.watch([GOV_KEY("l7")]) as seen:  # its event read before the wait
            await put(admin, GOV_KEY("l7"), GOV_OK)
            await asyncio.wait_for(seen.wait(), timeout=5)
        calls = lane.calls
        task = stack.wait("l7")
        await stack.waiting("l7")
        await put(admin, P33_KEY("l7"), P33_OK)
        result = await task
    finally:
        await stack.close()
        await admin.aclose()
    assert result.allowed and result.owner and result.wait_ms < SLOW_STEP.step_ms
    assert (lane.calls - calls, lane.decisions) == (1, 1)


# A script that holds the server for half a second (DEBUG is off on Redis 7 by default).
_BUSY = (
    "local s = redis.call('TIME') local n repeat n = redis.call('TIME') "
    "until (n[1] - s[1]) * 1000000 + (n[2] - s[2]) >= 500000 return 1"
)


async def test_a_reply_later_than_the_timeout_takes_the_lane_down_and_it_comes_back(
    redis_server: EmbeddedRedis,
    events: Redis,
    stacks: StackFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gate_lane, "REPLY_TIMEOUT_SEC", 0.2)
    stream = io.StringIO()
    setup_logging("INFO", "json", stream)
    await put(events, GOV_KEY("l6"), GOV_OK)
    stack = await stacks("lane-late")
    lane = stack.the_lane()
    task = stack.wait("l6")
    await stack.waiting("l6")
    busy = socket.create_connection(("127.0.0.1", redis_server.port))
    own_args = stack.gate.script_args
    armed = [True]

    def script_args(plan_id: str, symbol: str, token: str, *, final: bool) -> list[Any]:
        """The lane packs its call here: the server is made busy before the call reaches it."""
        if armed[0] and not final:
            armed[0] = False
            busy.sendall(hiredis.pack_command(("EVAL", _BUSY, 0)))  # type: ignore[arg-type]
            time.sleep(0.05)  # the server has read the script and runs it when the call lands
        return own_args(plan_id, symbol, token, final=final)

    monkeypatch.setattr(stack.gate, "script_args", script_args)
    try:
        await put(events, P33_KEY("l6"), P33_OK)
        result = await task
        assert not armed[0]  # the lane's call was the one made late
        assert busy.recv(64) == b":1\r\n"
    finally:
        busy.close()
    assert result.allowed and result.owner and result.safe_qty == Decimal("0.002")
    assert lane.calls == 1
    assert await events.exists(GOV_KEY("l6"), P33_KEY("l6")) == 0
    await until(lambda: lane.active, timeout=10)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    down = [line for line in lines if line["message"] == "gate_lane_down"]
    assert [line["error"] for line in down] == ["no reply in 0.2 s"]
    assert [line["message"] for line in lines].count("gate_lane_back") == 1


async def test_the_heartbeat_check_keeps_a_hearing_lane_and_takes_down_a_deaf_one(
    events: Redis, stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The housekeeping's tick (``check`` and ``canary_write`` around the heartbeat's SET):
    a lane whose events connection hears the heartbeat stays up and its PING is answered;
    one whose events connection has stopped reading is taken down, and comes back."""
    monkeypatch.setattr(gate_lane, "CANARY_SEC", 0.3)
    monkeypatch.setattr(gate_lane, "FIRST_BACKOFF_SEC", 0.05)
    stack = await stacks("lane-canary")
    lane = stack.the_lane()
    heartbeat = K.HEARTBEAT_KEY

    async def tick() -> None:
        lane.check()
        with lane.canary_write():
            await events.set(heartbeat, "beat", ex=15)

    for _ in range(3):  # healthy: the event arrives, the PING is answered
        await tick()
        await asyncio.sleep(0.4)
    lane.check()
    await until(lambda: not lane._sent, timeout=5)  # the PING's answer came
    assert lane.active and lane._awaiting is None

    events_wire = lane._events
    assert events_wire is not None and events_wire.transport is not None
    events_wire.transport.pause_reading()  # deaf: connected, but hears nothing more
    await tick()
    assert lane._awaiting is not None  # the write's event was not heard
    await asyncio.sleep(0.4)
    lane.check()
    assert not lane.active  # taken down by the missing event, not by the PING
    await until(lambda: lane.active, timeout=10)  # and back on new connections
    await tick()
    await until(lambda: lane._awaiting is None, timeout=5)
