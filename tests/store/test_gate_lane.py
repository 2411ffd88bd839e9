"""The gate's lane (store/gate_lane.py) against a real redis-server, and its callbacks alone.

Each gate here is built as daemon/service.py builds the daemon's: one client,
its keyspace watcher, a script batcher with the function library, and the
lane on the same client. The first tests prove the lane decides (and fast);
the others take it down every way the module names (connections killed, a
late reply, an error reply, a reply out of step) and check that the gate
still decides by its own path, the watcher takes the gate's channels back,
and the lane returns. The unit tests at the end feed the callbacks bytes as
the server would send them, through hiredis, with no server.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import hiredis
import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.keys import ISSUERS
from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store import gate_lane
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import create_redis
from apply_layer.store.functions import LIBRARY
from apply_layer.store.gate import GateConfig, GateResult, PermitGate
from apply_layer.store.gate_lane import GateLane
from apply_layer.store.keyspace import KeyspaceWatcher
from tests.harness import sample, settings_for, until

SYM = "BTCUSDT"
GOV_KEY = ISSUERS["governor"].key
P33_KEY = ISSUERS["p33"].key
GOV_OK = {"granted": True, "symbol": SYM, "decision": "EXECUTE"}
P33_OK = {"allow": True, "symbol": SYM, "safe_qty": 0.002, "exchange_position_amt": 0.002}
# The governor's permit is written before a gate's lane starts: its event, read after
# the gate's first call, would be answered with a call (WAIT) and upset the counts.
# A step far longer than any wake: a decision well inside it came from an event, not the poll.
SLOW_STEP = GateConfig(wait_ms=6000, step_ms=3000)
GATE_CHANNELS = len(GateConfig().watch_patterns())  # the lane's patterns (the canary is not one)


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


@pytest.fixture
async def events(redis: Redis) -> Redis:
    """The shared server publishing what the gate needs (the fixture turns it off)."""
    await redis.config_set("notify-keyspace-events", "K$h")
    return redis


@pytest.fixture
async def stacks(redis_server: EmbeddedRedis, events: Redis) -> AsyncIterator[StackFactory]:
    made: list[Stack] = []

    async def make(name: str, config: GateConfig = SLOW_STEP, *, lane: bool = True) -> Stack:
        stack = Stack(redis_server.url, name, config, lane=lane)
        made.append(stack)
        return await stack.start()

    yield make
    await asyncio.gather(*(stack.close() for stack in made))


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


# ---- 1, 2: the lane decides --------------------------------------------------------


async def test_the_lane_is_on_and_decides_a_plan_whose_permits_land_during_the_wait(
    events: Redis, stacks: StackFactory
) -> None:
    await put(events, GOV_KEY("l1"), GOV_OK)
    stack = await stacks("lane-on")
    lane = stack.the_lane()
    assert stack.lane_status == "on" and lane.active  # the locked redis-py keeps _writer
    assert sample("apply_gate_lane_active") == 1
    task = stack.wait("l1")
    await stack.waiting("l1")
    assert (lane.calls, lane.decisions) == (0, 0)
    await put(events, P33_KEY("l1"), P33_OK)
    result = await task
    assert (lane.calls, lane.decisions) == (1, 1)  # its one call decided
    assert result.allowed and result.owner and result.safe_qty == Decimal("0.002")
    assert result.wait_ms < SLOW_STEP.step_ms  # not the poll
    assert await events.exists(GOV_KEY("l1"), P33_KEY("l1")) == 0
    journal = await events.hgetall(K.journal("l1"))
    assert journal["gate_status"] == "ALLOW" and journal["p.p33.consumed"] == "1"


async def test_a_deny_written_during_the_wait_blocks_at_once_through_the_lane(
    events: Redis, stacks: StackFactory
) -> None:
    await put(events, GOV_KEY("l2"), GOV_OK)
    stack = await stacks("lane-deny", GateConfig(wait_ms=3000, step_ms=1000))
    lane = stack.the_lane()
    task = stack.wait("l2")
    await stack.waiting("l2")
    await put(events, P33_KEY("l2"), {"allow": False, "reason": "no_position"})
    result = await task
    assert result.status == "DENY" and result.error == "p33_permit_denied:no_position"
    assert result.owner and lane.decisions == 1
    assert result.wait_ms < 500  # the step is 1000 ms
    assert (await events.hgetall(K.journal("l2")))["p.p33.consumed"] == "1"


@pytest.mark.parametrize(
    ("key", "value", "status", "error"),
    [
        ("quantum:kill", "on", "KILL", "kill_switch"),
        ("quantum:global:kill_switch", "true", "KILL", "kill_switch"),
        (K.governor_block("l3"), json.dumps({"reason": "daily loss"}), "GOV_BLOCK", None),
    ],
    ids=["kill", "global-kill", "governor-block"],
)
async def test_a_kill_switch_or_governor_block_during_the_wait_ends_it_through_the_lane(
    events: Redis, stacks: StackFactory, key: str, value: str, status: str, error: str | None
) -> None:
    await put(events, GOV_KEY("l3"), GOV_OK)
    stack = await stacks("lane-stop", GateConfig(wait_ms=3000, step_ms=1000))
    lane = stack.the_lane()
    task = stack.wait("l3")
    await stack.waiting("l3")
    await events.set(key, value, ex=60)
    result = await task
    assert result.status == status and result.owner and lane.decisions == 1
    assert result.error == (error or "governor_blocked:daily_loss")
    assert result.wait_ms < 500  # the step is 1000 ms


async def test_with_events_off_on_the_server_the_lane_waits_for_the_watcher(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """The watcher finds events off: the lane waits for it, the poll decides; then events on."""
    await put(redis, GOV_KEY("l3off"), GOV_OK)
    stack = Stack(redis_server.url, "lane-silent", GateConfig(wait_ms=3000, step_ms=600))
    try:
        await stack.scripts.prepare()
        assert (await stack.watcher.start()).startswith("off on the server")
        lane = stack.the_lane()
        status = await lane.start()
        assert status == (
            "connecting (waiting for the keyspace watcher's subscription): the watcher meanwhile"
        )
        assert not lane.active and await pattern_counts(redis, "lane-silent") == []
        task = stack.wait("l3off")
        await stack.waiting("l3off")
        await put(redis, P33_KEY("l3off"), P33_OK)
        result = await task
        await put(redis, GOV_KEY("l3on"), GOV_OK)
        await redis.config_set("notify-keyspace-events", "K$h")
        await stack.watcher.check()  # the housekeeping's tick: it subscribes now
        await until(lambda: lane.active, timeout=10)
        late = stack.wait("l3on")
        await stack.waiting("l3on")
        await put(redis, P33_KEY("l3on"), P33_OK)
        turned_on = await late
    finally:
        await stack.close()
    assert result.allowed and result.owner
    assert lane.calls == 1  # none while events were off; one for l3on's permit
    assert result.wait_ms >= 550  # found by the 600 ms poll
    assert turned_on.allowed and turned_on.owner and lane.decisions == 1


# ---- 3: many daemons, one plan ----------------------------------------------------


@pytest.mark.parametrize("lanes_off", [0, 6], ids=["all-lanes", "half-lanes-off"])
async def test_twelve_daemons_race_one_plan_and_exactly_one_owns_it(
    events: Redis, stacks: StackFactory, lanes_off: int
) -> None:
    config = GateConfig(wait_ms=8000, step_ms=4000)
    plan = f"race{lanes_off}"
    await put(events, GOV_KEY(plan), GOV_OK)
    racers = await asyncio.gather(
        *(stacks(f"racer{i}", config, lane=i >= lanes_off) for i in range(12))
    )
    tokens = [f"tok-{i}" for i in range(12)]
    tasks = [s.wait(plan, token) for s, token in zip(racers, tokens, strict=True)]
    await asyncio.gather(*(s.waiting(plan) for s in racers))
    await put(events, P33_KEY(plan), P33_OK)
    results = await asyncio.gather(*tasks)
    owners = [i for i, r in enumerate(results) if r.owner]
    assert len(owners) == 1, owners
    assert {r.status for r in results} == {"ALLOW"}
    assert {r.safe_qty for r in results} == {Decimal("0.002")}
    assert len({r.decided_at_ms for r in results}) == 1
    journal = await events.hgetall(K.journal(plan))
    assert journal["gate_token"] == tokens[owners[0]]  # recorded once, by the owner's call
    assert journal["p.p33.consumed"] == journal["p.governor.consumed"] == "1"
    assert await events.exists(GOV_KEY(plan), P33_KEY(plan)) == 0
    with_lanes = [s.the_lane() for s in racers if s.lane is not None]
    assert len(with_lanes) == 12 - lanes_off
    # Every lane answered the permit's event with one call, and got the decision
    # (the owner's, or its replay): all of them, long before the 4 s poll.
    assert [(lane.calls, lane.decisions) for lane in with_lanes] == [(1, 1)] * len(with_lanes)
    assert max(r.wait_ms for r in results) < config.step_ms


# ---- 4-6: the lane down, and back --------------------------------------------------


async def test_the_lanes_connections_killed_mid_wait(
    events: Redis, stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held down long enough to see the watcher take the gate's channels back.
    monkeypatch.setattr(gate_lane, "FIRST_BACKOFF_SEC", 1.5)
    await put(events, GOV_KEY("l4"), GOV_OK)
    stack = await stacks("lane-kill")
    lane = stack.the_lane()
    # The watcher leaves the gate's channels to the lane at its next read (within a second).
    await until(lambda: _counts_are(events, "lane-kill", [1, GATE_CHANNELS]), timeout=5)
    assert await lane_pattern_count(events, lane) == GATE_CHANNELS
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
    await until(lambda: _counts_are(events, "lane-kill", [GATE_CHANNELS + 1]), timeout=5)
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
    await until(lambda: _counts_are(events, "lane-kill", [1, GATE_CHANNELS]), timeout=5)
    # And it decides again.
    await put(events, GOV_KEY("l4b"), GOV_OK)
    again = stack.wait("l4b")
    await stack.waiting("l4b")
    await put(events, P33_KEY("l4b"), P33_OK)
    assert (await again).allowed and lane.decisions == 1


async def _counts_are(redis: Redis, name: str, expected: list[int]) -> bool:
    return await pattern_counts(redis, name) == expected


async def _equal(value: Awaitable[list[int]], expected: list[int]) -> bool:
    return await value == expected


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
        await until(lambda: _counts_are(admin, "lane-restart", [1, GATE_CHANNELS]), timeout=5)
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


# ---- 8: the watcher's waiters while the lane reads its channels -----------------------


async def test_with_the_lane_up_the_watcher_keeps_the_canary_and_its_waiters_wake(
    events: Redis, stacks: StackFactory
) -> None:
    stack = await stacks("lane-watch")
    lane = stack.the_lane()
    assert lane.active

    async def watcher_side() -> list[int]:
        clients = await events.client_list()
        lanes = lane_addrs(lane)
        return [
            int(c["psub"])
            for c in clients
            if c["name"] == "lane-watch" and int(c["psub"]) and c["addr"] not in lanes
        ]

    # The canary's channel only, once the watcher has read again (within a second).
    await until(lambda: _equal(watcher_side(), [1]), timeout=5)
    assert await lane_pattern_count(events, lane) == GATE_CHANNELS
    with stack.watcher.watch([P33_KEY("l8")]) as woken:
        await put(events, P33_KEY("l8"), P33_OK)
        await asyncio.wait_for(woken.wait(), timeout=2)  # the lane read the event
    assert lane.calls == 0  # nobody waited on the lane for this key


# ---- 9: the daemon ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({}, "on"), ({"keyspace_events": "off"}, "off"), ({"gate_lane": False}, "off")],
    ids=["default", "events-off", "lane-off"],
)
async def test_the_daemons_started_line_names_the_lane(
    redis_server: EmbeddedRedis, events: Redis, overrides: dict[str, Any], expected: str
) -> None:
    from apply_layer.daemon.service import ApplyService

    stream = io.StringIO()
    setup_logging("INFO", "json", stream)
    service = ApplyService(settings_for(redis_server, **overrides))
    assert (service.lane is not None) == (expected == "on")
    assert (service.gate.lane is not None) == (expected == "on")
    runner = asyncio.create_task(service.run())
    try:
        await until(lambda: service._group_ready)
    finally:
        service.request_stop()
    assert await runner == 0
    records = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    started = next(r for r in records if r["message"] == "apply_layer_started")
    assert started["gate_lane"] == expected, started


@pytest.mark.parametrize(("value", "parsed"), [("true", True), ("false", False), (None, True)])
def test_apply_gate_lane_parses(
    monkeypatch: pytest.MonkeyPatch, value: str | None, parsed: bool
) -> None:
    from apply_layer.settings import load_settings

    monkeypatch.delenv("APPLY_GATE_LANE", raising=False)
    if value is not None:
        monkeypatch.setenv("APPLY_GATE_LANE", value)
    assert load_settings().gate_lane is parsed


def test_apply_gate_lane_refuses_what_is_not_a_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    from apply_layer.core.errors import SettingsError
    from apply_layer.settings import load_settings

    monkeypatch.setenv("APPLY_GATE_LANE", "perhaps")
    with pytest.raises(SettingsError, match="APPLY_GATE_LANE"):
        load_settings()
