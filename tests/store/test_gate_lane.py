"""The gate's lane (store/gate_lane.py) against a real redis-server: it decides.

Each gate is wired as daemon/service.py wires the daemon's (tests/lane_stack.py).
These prove the lane decides a plan whose permit, deny, kill switch or
governor block lands during the wait, long before the step; that many
daemons racing one plan (some with the lane off) agree and exactly one owns
the decision; that the watcher's waiters are still woken while the lane reads
the gate's channels; and that the daemon starts it as configured. The lane
taken down is in test_gate_lane_down.py, its callbacks alone in
test_gate_lane_callbacks.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.gate import GateConfig
from tests.harness import sample, settings_for, until
from tests.lane_stack import (
    GOV_KEY,
    GOV_OK,
    LANE_CHANNELS,
    P33_KEY,
    P33_OK,
    SLOW_STEP,
    Stack,
    StackFactory,
    equal,
    lane_addrs,
    lane_pattern_count,
    pattern_counts,
    put,
)

# ---- the lane decides ------------------------------------------------------------


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
            "connecting (waiting for the keyspace watcher's events): the watcher meanwhile"
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


# ---- many daemons, one plan ------------------------------------------------------


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


# ---- the watcher's waiters while the lane reads its channels -------------------------


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
    await until(lambda: equal(watcher_side(), [1]), timeout=5)
    assert await lane_pattern_count(events, lane) == LANE_CHANNELS
    with stack.watcher.watch([P33_KEY("l8")]) as woken:
        await put(events, P33_KEY("l8"), P33_OK)
        await asyncio.wait_for(woken.wait(), timeout=2)  # the lane read the event
    assert lane.calls == 0  # nobody waited on the lane for this key


# ---- the daemon ------------------------------------------------------------------


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
