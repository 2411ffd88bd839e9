"""The gate's lane: a permit's event answered with the gate's call from the socket's callback.

One plan at a time, the daemon is idle when P3.3's permit lands, and every
piece of Python between the event and the gate's call runs cold (about ten
times its warm cost on a VM; docs/PERFORMANCE.md, "What bounds the missed
targets"). Through the watcher (``keyspace.py``) that piece is redis-py's
pub/sub read in the watcher's task, the waiter's event, the gate's task,
the batcher's flush and a pooled connection: about a quarter of a
millisecond. The lane leaves out all of it: the event is parsed (hiredis) in
the pub/sub socket's own callback, and the waiting plan's ``gate.lua`` call,
packed there, is written at once on a connection of the lane's own. The
gate's task wakes only for the reply, with the decision in hand.

Two connections of the client's own pool, so they come connected the way
every other one does: authenticated, on the primary the sentinels name,
and seen by the identity tracker before they carry a command. The lane
then hands each socket's transport to a protocol of its own (asyncio's
public ``set_protocol``); the connections never go back to the pool as they
are (they are disconnected first). The one piece of redis-py it relies on
past its public API is the connection's ``_writer`` stream: if a redis-py
release moves it, the lane says so once and stays off (the tests check it
is on with the locked version).

The lane is a latency path, never a correctness one; the gate keeps all of
its own:

- A lane call is ``gate.lua`` with the plan's own caller token and
  ``final=0``: the script decides or answers ``WAIT``, and replays a
  decision to the same token, so a lane call racing the gate's own call (or
  another instance's) gets the same decision, or learns it is not the owner.
- ``WAIT`` is dropped (the gate keeps waiting); a decision wakes the gate
  with it. Anything else (an error reply such as ``NOSCRIPT``, ``READONLY``,
  a function not loaded) wakes the gate to call by its own path, which
  knows how to load, retry and fail closed.
- The deadline's final call, the first call and the step poll stay the
  gate's (``gate.py``). A lost connection, a reply not in within
  ``REPLY_TIMEOUT_SEC`` or a reply out of order takes the lane down: every
  waiter is woken to call by its own path, and the gate uses the watcher
  until the lane is back (reconnected with a doubling pause).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from apply_layer import metrics
from apply_layer.core import keys as K
from apply_layer.core.errors import GateLaneDown, GateLaneUnsupported
from apply_layer.logs import get_logger
from apply_layer.store.connection import COMMAND_TIMEOUT_SEC, redis_db
from apply_layer.store.keyspace import (
    CANARY_KEY,
    CANARY_SEC,
    MAX_REFUSED_BACKOFF_SEC,
    KeyspaceWatcher,
    channels,
)
from apply_layer.store.lane_wire import LaneWire, transport_of
from apply_layer.store.waiters import registered

log = get_logger()

SUBSCRIBE_TIMEOUT_SEC = 5.0
START_WAIT_SEC = 2.0
REPLY_TIMEOUT_SEC = COMMAND_TIMEOUT_SEC  # as long as any command of the daemon's may take
FIRST_BACKOFF_SEC = 0.1
MAX_BACKOFF_SEC = 5.0
WATCHER_CHECK_SEC = 1.0  # how often a lane waiting for the watcher's events looks again

# Redis' answers that say this server no longer takes the gate's writes: the lane's
# connections are to a demoted primary (a failover), so it reconnects through the pool.
_LEAVE_SERVER = ("READONLY", "MASTERDOWN", "LOADING")


_FALLBACK = "the keyspace watcher wakes the gate meanwhile (it calls by its own path)"


class LaneWaiter:
    """One waiting plan: how to call the gate for it, and the decision the lane got."""

    __slots__ = ("command", "decision", "event")

    def __init__(self, command: Callable[[], bytes]) -> None:
        self.command = command  # packs the plan's gate.lua call (its "now" read at the event)
        self.event = asyncio.Event()  # set on a decision, or when the gate must call itself
        self.decision: list[Any] | None = None


class GateLane:
    """Pattern-subscribes to the gate's keys and answers their events with gate calls."""

    def __init__(
        self, redis: Redis, patterns: Iterable[str], watcher: KeyspaceWatcher | None = None
    ) -> None:
        self._redis = redis
        self._watcher = watcher
        db = redis_db(redis)
        # The gate's channels, and the heartbeat's: its event, each housekeeping tick,
        # proves that this connection still hears (check()).
        self._canary = K.keyspace_channel(CANARY_KEY, db)
        self._channels = channels(patterns, db)  # the watcher's very channels
        self._prefix = K.keyspace_channel("", db)
        self._awaiting: float | None = None  # a heartbeat write whose event is not in yet
        self._ping = LaneWaiter(lambda: b"")  # the check's PING, in the reply order
        self._waiters: dict[str, set[LaneWaiter]] = {}
        self._sent: deque[tuple[LaneWaiter, float]] = deque()  # calls out, in reply order
        self._outbox: list[bytes] = []
        self._confirming: set[str] = set()
        self._conns: list[AbstractConnection] = []
        self._events: LaneWire | None = None
        self._commands: LaneWire | None = None
        self._down: asyncio.Future[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._late: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._tried = asyncio.Event()
        self._refused = False  # the last subscribe was refused (an ACL): retry slowly
        self.active = False
        self.status = "off"
        self.error = ""
        self.calls = 0  # gate calls the lane has written (tests and the benchmark read it)
        self.decisions = 0  # decision replies it received (each handed to its waiter, if waiting)

    async def start(self) -> str:
        """Connect and subscribe (in the background from then on); a one-line status."""
        self._task = asyncio.create_task(self._run(), name="gate-lane")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), timeout=START_WAIT_SEC)
        if self.active:
            self.status = "on"
        elif self._task.done():
            self.status = f"off ({self.error})"
        else:
            self.status = f"connecting ({self.error or 'not yet'}): the watcher meanwhile"
        return self.status

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def watch(
        self, keys: Iterable[str], command: Callable[[], bytes]
    ) -> contextlib.AbstractContextManager[LaneWaiter]:
        """Answer every event on ``keys`` with ``command()`` for the duration of the block."""
        return registered(self._waiters, keys, LaneWaiter(command))

    def check(self) -> None:
        """Each housekeeping tick: is the lane still connected and hearing? Down if not.

        The heartbeat's event must have reached the lane's events connection
        within ``CANARY_SEC`` of the write (as the watcher's canary, which
        proves the watcher's connection, not this one). A PING on the command
        connection must be answered within ``REPLY_TIMEOUT_SEC``; it also keeps
        a server's idle ``timeout`` from closing that connection.
        """
        if not self.active or self._commands is None:
            return
        now = asyncio.get_running_loop().time()
        if self._awaiting is not None and now - self._awaiting >= CANARY_SEC:
            quiet = now - self._awaiting
            self._lose(
                GateLaneDown(f"the heartbeat's event did not reach the lane in {quiet:.1f} s")
            )
            return
        self._outbox.append(hiredis.pack_command(("PING",)))
        self._sent.append((self._ping, now))
        try:
            self._flush()
        except GateLaneDown as exc:
            self._lose(exc)

    @contextlib.contextmanager
    def canary_write(self) -> Iterator[None]:
        """Wrap the heartbeat's ``SET``: its event is then expected on the lane too.

        Armed before the write (the event may come before the write's reply),
        and disarmed if the write fails (no write, no event).
        """
        armed = self.active and self._awaiting is None
        if armed:
            self._awaiting = asyncio.get_running_loop().time()
        try:
            yield
        except BaseException:
            if armed:
                self._awaiting = None
            raise

    # ---- the callbacks (the hot path) -------------------------------------------------

    def _on_event(self, message: Any) -> None:
        # RESP2 gives a list, RESP3 (redis-py 8's default) a PushNotification, a list too.
        if not isinstance(message, list) or len(message) < 3:
            if isinstance(message, Exception):  # a refused PSUBSCRIBE (ACL)
                self._refused = True
                raise GateLaneDown(f"PSUBSCRIBE refused: {message}")
            return
        kind = message[0]
        if kind == "pmessage":
            channel = message[2]
            if channel == self._canary:
                self._awaiting = None
                return
            if not channel.startswith(self._prefix):
                return
            key = channel[len(self._prefix) :]
            for waiter in self._waiters.get(key, ()):
                self._call(waiter)
            if self._watcher is not None:  # its waiters too: it left these channels to us
                self._watcher.wake(key)
        elif kind == "psubscribe":
            self._confirming.discard(message[1])
            if not self._confirming and self._subscribed and not self._subscribed.done():
                self._subscribed.set_result(None)

    def _call(self, waiter: LaneWaiter) -> None:
        try:
            packed = waiter.command()
        except Exception:  # an argument that cannot be packed: the gate's own call says why
            waiter.event.set()
            return
        self._outbox.append(packed)
        self._sent.append((waiter, asyncio.get_running_loop().time()))
        self.calls += 1

    def _flush(self) -> None:
        """After each chunk of events: their calls in one write."""
        if not self._outbox:
            return
        out, self._outbox = b"".join(self._outbox), []
        assert self._commands is not None
        self._commands.write(out)
        if self._late is None:
            self._late = asyncio.get_running_loop().call_later(REPLY_TIMEOUT_SEC, self._check_late)

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, hiredis.PushNotification):
            return  # RESP3 out of band (nothing this connection asked for): not a reply
        if not self._sent:
            raise GateLaneDown("a reply to no call (the connection is out of step)")
        waiter, _ = self._sent.popleft()
        if isinstance(reply, list) and reply:
            if reply[0] == "WAIT":
                return
            if waiter.decision is None:
                waiter.decision = reply
                self.decisions += 1
            waiter.event.set()
            return
        waiter.event.set()  # not a decision: the gate calls by its own path
        if isinstance(reply, Exception) and str(reply).startswith(_LEAVE_SERVER):
            raise GateLaneDown(f"the server answered {str(reply).split(' ', 1)[0]}")

    def _check_late(self) -> None:
        self._late = None
        if not self._sent:
            return
        loop = asyncio.get_running_loop()
        waited = loop.time() - self._sent[0][1]
        if waited >= REPLY_TIMEOUT_SEC:
            self._lose(GateLaneDown(f"no reply in {REPLY_TIMEOUT_SEC:g} s"))
        else:
            self._late = loop.call_later(REPLY_TIMEOUT_SEC - waited, self._check_late)

    def _lose(self, exc: BaseException) -> None:
        """Take the lane down: every waiter calls by its own path from now on."""
        if self._down is not None and not self._down.done():
            self._down.set_exception(exc if isinstance(exc, Exception) else GateLaneDown(str(exc)))
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_exception(GateLaneDown(str(exc) or type(exc).__name__))
        self._set_active(False)
        for wire in (self._events, self._commands):
            if wire is not None and wire.transport is not None:
                wire.transport.close()
        self._sent.clear()
        self._outbox.clear()
        if self._late is not None:
            self._late.cancel()
            self._late = None
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.event.set()

    def _lost(self, exc: BaseException, wire: LaneWire) -> None:
        """A wire's error or close: the lane's down, unless the wire is one it already left."""
        if wire is self._events or wire is self._commands:
            self._lose(exc)

    def _set_active(self, on: bool) -> None:
        self.active = on
        metrics.GATE_LANE_ACTIVE.set(1 if on else 0)
        if self._watcher is not None:
            self._watcher.hand_over(on)

    # ---- the connections --------------------------------------------------------------

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_SEC
        failing = False
        while True:
            if self._watcher is not None and not self._watcher.active:
                # No events flow (off, refused, lost): nothing to answer. Waiting here
                # also keeps a refused ACL from being asked twice as often.
                self.error = "waiting for the keyspace watcher's events"
                self._tried.set()
                await asyncio.sleep(WATCHER_CHECK_SEC)
                continue
            self._refused = False
            try:
                await self._open()
                self._awaiting = None
                self._set_active(True)
                self.error = ""
                self._tried.set()
                if failing:
                    log.info("gate_lane_back")
                    failing = False
                backoff = FIRST_BACKOFF_SEC
                assert self._down is not None
                await self._down
            except asyncio.CancelledError:
                raise
            except GateLaneUnsupported as exc:
                self.error = str(exc)
                log.warning("gate_lane_unavailable", error=self.error, hint=_FALLBACK)
                self._tried.set()
                return
            except Exception as exc:  # RedisError, OSError, GateLaneDown, or a bug of ours
                self.error = str(exc) or type(exc).__name__
                if not failing:
                    failing = True
                    log.warning("gate_lane_down", error=self.error, hint=_FALLBACK)
                self._tried.set()
            finally:
                self._lose(GateLaneDown("closed"))
                await self._release()
            await asyncio.sleep(backoff)
            cap = MAX_REFUSED_BACKOFF_SEC if self._refused else MAX_BACKOFF_SEC
            backoff = min(backoff * 2, cap)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._down = loop.create_future()
        self._subscribed = loop.create_future()
        self._down.add_done_callback(_retrieve)
        self._subscribed.add_done_callback(_retrieve)
        self._events = await self._take(LaneWire(self._on_event, self._lost, self._flush))
        self._commands = await self._take(LaneWire(self._on_reply, self._lost))
        self._confirming = set(self._channels)
        self._events.write(hiredis.pack_command(("PSUBSCRIBE", *self._channels)))  # type: ignore[arg-type]
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SEC):
            await self._subscribed

    async def _take(self, wire: LaneWire) -> LaneWire:
        conn = await self._redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        self._conns.append(conn)
        transport = transport_of(conn)
        if transport is None:
            raise GateLaneUnsupported("this redis-py keeps no asyncio stream on its connections")
        wire.previous = transport.get_protocol()
        transport.set_protocol(wire)
        wire.transport = transport
        return wire

    async def _release(self) -> None:
        """Give the connections back closed (the pool opens new ones when it needs them)."""
        conns, self._conns = self._conns, []
        self._events = self._commands = None
        pool = self._redis.connection_pool
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            with contextlib.suppress(Exception):
                await pool.release(conn)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # read, so asyncio does not log it as never retrieved
