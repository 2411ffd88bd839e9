"""The gate lane's callbacks alone: bytes as the server sends them, parsed by hiredis.

No server: each wire of the lane (store/gate_lane.py; the sockets' protocol
is store/lane_wire.py) gets a transport that records what is written and
whether it was closed, and the tests feed it replies the way the socket
would. The cases are the ones a real server
cannot be made to send on demand (a reply to nothing, a push on the command
connection, READONLY from a demoted primary).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import hiredis
import pytest
from redis.asyncio import Redis

from apply_layer import metrics
from apply_layer.core import keys as K
from apply_layer.core.errors import GateLaneDown
from apply_layer.store.gate import GateConfig
from apply_layer.store.gate_lane import GateLane
from apply_layer.store.lane_wire import LaneWire

pytestmark = pytest.mark.unit

KEY = "quantum:permit:p33:u1"
OTHER = "quantum:permit:p33:someone-else"
CALL = hiredis.pack_command(("FCALL", "gate", "1", KEY))  # type: ignore[arg-type]
WAIT = b"*1\r\n$4\r\nWAIT\r\n"
ALLOW = b"*2\r\n$5\r\nALLOW\r\n:1\r\n"


class Recorder(asyncio.Transport):
    """A socket that keeps what is written and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Wired:
    """A lane as ``_open`` leaves it once subscribed, on recording transports."""

    def __init__(self) -> None:
        self.lane = GateLane(Redis(), GateConfig().watch_patterns())
        lane = self.lane
        self.events = LaneWire(lane._on_event, lane._lost, lane._flush)
        self.commands = LaneWire(lane._on_reply, lane._lost)
        self.events_out, self.commands_out = Recorder(), Recorder()
        self.events.transport, self.commands.transport = self.events_out, self.commands_out
        lane._events, lane._commands = self.events, self.commands
        lane._down = asyncio.get_running_loop().create_future()
        lane._set_active(True)

    def event(self, key: str) -> None:
        channel = K.keyspace_channel(key, 0)
        message = ("pmessage", "__keyspace@0__:quantum:permit:*", channel, "set")
        self.events.data_received(hiredis.pack_command(message))  # type: ignore[arg-type]

    def reply(self, data: bytes) -> None:
        self.commands.data_received(data)

    def down(self) -> str:
        """Why the lane went down ("" while it is up)."""
        assert self.lane._down is not None
        if not self.lane._down.done():
            return ""
        exc = self.lane._down.exception()
        assert isinstance(exc, GateLaneDown)
        return str(exc)

    def finish(self) -> None:
        """Cancel the late-reply timer a call left, and the process-wide gauge it set."""
        if self.lane._late is not None:
            self.lane._late.cancel()
        metrics.GATE_LANE_ACTIVE.set(0)


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    wired = Wired()
    yield wired
    wired.finish()


async def test_a_waited_key_s_event_writes_the_call_and_a_wait_reply_changes_nothing(
    wired: Wired,
) -> None:
    with wired.lane.watch([KEY], lambda: CALL) as waiter:
        wired.event(KEY)
        assert wired.commands_out.written == [CALL] and wired.lane.calls == 1
        wired.reply(WAIT)
        assert not waiter.event.is_set() and waiter.decision is None
        assert wired.lane.active and not wired.lane._sent and wired.down() == ""
        wired.event(KEY)
        wired.reply(ALLOW)
        assert waiter.decision == ["ALLOW", 1] and waiter.event.is_set()
    assert (wired.lane.calls, wired.lane.decisions) == (2, 1)
    assert wired.lane.active and not wired.commands_out.closed


async def test_an_event_for_a_key_nobody_waits_on_sends_nothing(wired: Wired) -> None:
    with wired.lane.watch([KEY], lambda: CALL) as waiter:
        wired.event(OTHER)
    assert wired.commands_out.written == [] and wired.lane.calls == 0
    assert not waiter.event.is_set() and wired.lane.active


async def test_readonly_takes_the_lane_down_and_wakes_the_waiter(wired: Wired) -> None:
    with (
        wired.lane.watch([KEY], lambda: CALL) as waiter,
        wired.lane.watch([OTHER], lambda: CALL) as bystander,
    ):
        wired.event(KEY)
        wired.reply(b"-READONLY You can't write against a read only replica.\r\n")
        assert waiter.event.is_set() and waiter.decision is None
        assert bystander.event.is_set()  # every waiter calls by its own path now
    assert wired.down() == "the server answered READONLY"
    assert not wired.lane.active
    assert wired.events_out.closed and wired.commands_out.closed


async def test_another_error_reply_wakes_the_waiter_and_leaves_the_lane_up(wired: Wired) -> None:
    with wired.lane.watch([KEY], lambda: CALL) as waiter:
        wired.event(KEY)
        wired.reply(b"-ERR Function not found\r\n")
        assert waiter.event.is_set() and waiter.decision is None
    assert wired.down() == "" and wired.lane.active and not wired.commands_out.closed


async def test_a_reply_to_no_call_takes_the_lane_down(wired: Wired) -> None:
    with wired.lane.watch([KEY], lambda: CALL) as waiter:
        wired.reply(ALLOW)  # nothing was sent
        assert waiter.event.is_set() and waiter.decision is None
    assert wired.down() == "a reply to no call (the connection is out of step)"
    assert not wired.lane.active and wired.commands_out.closed


async def test_a_push_on_the_command_wire_is_not_a_reply(wired: Wired) -> None:
    with wired.lane.watch([KEY], lambda: CALL) as waiter:
        wired.event(KEY)
        wired.reply(b">3\r\n$10\r\ninvalidate\r\n$1\r\nx\r\n$1\r\ny\r\n")  # RESP3 push
        assert not waiter.event.is_set() and len(wired.lane._sent) == 1
        wired.reply(ALLOW)  # the call's own reply still pairs with it
        assert waiter.decision == ["ALLOW", 1]
    assert wired.down() == "" and wired.lane.active


async def test_a_command_that_raises_wakes_that_waiter_only(wired: Wired) -> None:

    def broken() -> bytes:
        raise ValueError("an argument hiredis cannot pack")

    with (
        wired.lane.watch([KEY], broken) as failing,
        wired.lane.watch([KEY], lambda: CALL) as fine,
    ):
        wired.event(KEY)
        assert failing.event.is_set() and failing.decision is None
        assert not fine.event.is_set()
        assert wired.commands_out.written == [CALL] and wired.lane.calls == 1
        assert [w for w, _ in wired.lane._sent] == [fine]
    assert wired.down() == "" and wired.lane.active


async def test_a_reply_later_than_the_timeout_takes_it_down(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apply_layer.store import gate_lane

    monkeypatch.setattr(gate_lane, "REPLY_TIMEOUT_SEC", 0.05)
    with wired.lane.watch([KEY], lambda: CALL) as waiter:
        wired.event(KEY)
        await asyncio.wait_for(waiter.event.wait(), timeout=2)
    assert wired.down() == "no reply in 0.05 s"
    assert not wired.lane.active and wired.commands_out.closed
