"""Wake permit waiters when a permit key changes (Redis keyspace notifications).

One pub/sub connection per process pattern-subscribes to the keyspace
channels of the permit, governor-block and kill-switch keys. A waiter
registers the keys it cares about and gets an :class:`asyncio.Event` that is
set as soon as any of them is written, so the gate re-checks within about a
millisecond instead of at the next poll tick.

Notifications are a latency optimisation, never a correctness one: waiters
keep polling every ``APPLY_PERMIT_STEP_MS``, so a lost message, a dropped
pub/sub connection or a server with notifications off costs latency only.

The watcher counts as subscribed only once Redis has confirmed every
pattern: redis-py's ``psubscribe`` returns as soon as the command is sent,
and an ACL that refuses a channel answers with an error afterwards. A
refused or failed subscribe is logged once and retried with a doubling
pause (up to a minute for a refusal, which an operator has to fix), never
in a tight loop.

A subscription alone does not prove that events flow: ``CONFIG SET
notify-keyspace-events ""`` on a running server leaves it confirmed and
silent. Two signs tell, checked each housekeeping tick (:meth:`KeyspaceWatcher.check`):

- The canary, for every user: the watcher also subscribes to the heartbeat
  key's channel (``keys.keyspace_channel(HEARTBEAT_KEY, db)``), and each
  heartbeat ``SET`` the housekeeping makes (:meth:`KeyspaceWatcher.canary_write`)
  must come back as an event within ``CANARY_SEC``. A write whose event
  never came means events are off (or lost on the way).
- The server's setting, re-read with ``CONFIG GET`` where the user may run it
  (an admin user; the shipped least-privilege user may not, as ``CONFIG GET``
  would show ``requirepass``): it notices within one tick, names the setting,
  sees a missing ``h`` (HASH permits) that a string canary cannot, and lets
  ``enable`` mode turn events on again.

While either says off, the watcher counts as inactive (the gauge shows 0 and
the gate relies on its step poll, as it always can), with one log line when
that starts (``keyspace_events_off``, with why) and one when events are back
(``keyspace_events_back``). A watcher that found them off at start (by
``CONFIG GET``) subscribes once they appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer.core import keys as K
from apply_layer.logs import get_logger
from apply_layer.store.connection import redis_db
from apply_layer.store.keyspace_setting import covers, merged_flags
from apply_layer.store.waiters import registered

log = get_logger()

FIRST_BACKOFF_SEC = 0.1
MAX_BACKOFF_SEC = 5.0  # the connection was lost: Redis is usually back within seconds
MAX_REFUSED_BACKOFF_SEC = 60.0  # the server said no (ACL): it says no until someone fixes it
SUBSCRIBE_TIMEOUT_SEC = 5.0
START_WAIT_SEC = 2.0
# The canary: the heartbeat the housekeeping writes every tick. Its event takes a
# millisecond on a healthy server; one not seen this long after the write means
# events are off. Judged at the ticks, so with APPLY_POLL_SEC above this the verdict
# comes at the tick after the write (5 s by default), below it after CANARY_SEC.
CANARY_KEY = K.HEARTBEAT_KEY
CANARY_SEC = 2.0
# How soon the watcher's task follows the lane going up or down (its read's timeout).
HAND_OVER_SEC = 0.25


def channels(patterns: Iterable[str], db: int) -> list[str]:
    """Every channel the watcher subscribes to: the gate's patterns and the canary's key.

    ``check`` probes and the shipped ACL grants exactly these (the ACL compares
    a PSUBSCRIBE pattern as text, so each one is listed).
    """
    return [K.keyspace_channel(p, db) for p in sorted({*patterns, CANARY_KEY})]


class KeyspaceWatcher:
    """Process-wide keyspace listener with per-key waiter events."""

    def __init__(self, redis: Redis, patterns: Iterable[str], mode: str = "detect") -> None:
        self._redis = redis
        self._db = redis_db(redis)
        self._channels = channels(patterns, self._db)
        self._prefix = K.keyspace_channel("", self._db)
        # While the gate's lane is up it reads the gate's channels (store/gate_lane.py) and
        # wakes this watcher's waiters itself; the watcher then keeps only the canary's.
        self._canary_channel = K.keyspace_channel(CANARY_KEY, self._db)
        self._handed_over = False
        self._gate_subscribed = False  # the gate's channels are subscribed on _run's connection
        self._mode = mode
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._tried = asyncio.Event()  # the first subscribe has been confirmed or has failed
        self.status = "off" if mode == "off" else "starting"
        self.attempts = 0  # subscribe attempts so far (each one a new connection)
        self.error = ""  # why the last attempt failed, "" once subscribed
        self.server_off = False  # the server's setting lacks K$h (last read)
        self.canary_off = False  # a heartbeat write's event did not come (the last one)
        self._canary_since: float | None = None  # the oldest write whose event is awaited
        self._reported_off = False  # what the last keyspace_events_off/_back line said
        self._config_readable = False  # CONFIG GET answered at start: re-read it later

    @property
    def active(self) -> bool:
        """True while events are flowing; waiters may then rely on them for latency."""
        return self._subscribed.is_set() and not self.server_off and not self.canary_off

    async def start(self) -> str:
        """Detect (or enable) notifications and subscribe; returns a one-line status."""
        if self._mode == "off":
            self.status = "off (APPLY_KEYSPACE_EVENTS=off): polling only"
            return self.status
        flags = await self._server_flags()
        self._config_readable = flags is not None
        note = ""
        if flags is None:
            # A least-privilege ACL user has no CONFIG (deploy/redis/): whether the
            # server publishes events is unknown, so subscribe anyway; if it does
            # not, the heartbeat's event never arrives (the canary, check()) and the
            # poll is the fallback, as always.
            note = " (CONFIG GET refused: the heartbeat's own event tells whether events flow)"
        elif not covers(flags):
            if self._mode != "enable":
                self.server_off = self._reported_off = True  # the start line says so
                self.status = (
                    f"off on the server (notify-keyspace-events={flags!r}): polling only; "
                    "set APPLY_KEYSPACE_EVENTS=enable or add 'K$h' to react in ~1 ms"
                )
                return self.status
            try:
                await self._redis.config_set("notify-keyspace-events", merged_flags(flags))
            except RedisError as exc:
                self.status = f"could not enable ({exc}): polling only"
                return self.status
        self._task = asyncio.create_task(self._run(), name="keyspace-watcher")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), timeout=START_WAIT_SEC)
        if self.active:
            self.status = "on" + note
        elif self.error:
            self.status = f"subscribe failed ({self.error}): polling, retrying with backoff"
        else:
            self.status = "subscribing (polling meanwhile)" + note
        return self.status

    async def check(self) -> None:
        """Whether events flow (housekeeping, each tick, before the heartbeat); see the module doc.

        A no-op in ``off`` mode. The server's setting is re-read only where
        ``CONFIG GET`` answered at start (a least-privilege ACL user: asking
        every tick would only fill the server's ACL log); the canary is judged
        for everyone. Redis errors propagate, like the tick's others.
        """
        if self._mode == "off":
            return
        if self.status == "starting":  # Redis was unreachable at start: start now
            await self.start()
            return
        if self._config_readable:
            await self._check_setting()
        self._check_canary()

    @contextlib.contextmanager
    def canary_write(self) -> Iterator[None]:
        """Wrap the heartbeat's ``SET``: its keyspace event is then expected.

        Armed before the write (its event may be read before the write's reply
        is), only while subscribed (a write before the subscription can never
        be seen), and disarmed if the write fails (no write, no event: a full
        Redis answering OOM is not a sign that events are off).
        """
        armed = self._subscribed.is_set() and self._canary_since is None
        if armed:
            self._canary_since = time.monotonic()
        try:
            yield
        except BaseException:
            if armed:
                self._canary_since = None
            raise

    def _check_canary(self) -> None:
        since = self._canary_since
        if since is None or self.canary_off:
            return
        waited = time.monotonic() - since
        if waited < CANARY_SEC:
            return
        self.canary_off = True
        self._report(
            why=f"no keyspace event for the heartbeat written {waited:.1f} s ago "
            f"(expected within {CANARY_SEC:g} s): notify-keyspace-events lacks K$ on the "
            "server, or events are lost on the way",
            channel=self._prefix + CANARY_KEY,
        )

    def _canary_seen(self) -> None:
        self._canary_since = None
        if self.canary_off:
            self.canary_off = False
            self._report(why="the heartbeat's keyspace event arrived")

    def _report(self, **fields: object) -> None:
        """One line when events stop flowing (by either sign), one when both say they flow."""
        off = self.server_off or self.canary_off
        if off == self._reported_off:
            return
        self._reported_off = off
        if off:
            log.warning(
                "keyspace_events_off",
                hint="the permit wait polls every APPLY_PERMIT_STEP_MS until the server "
                "publishes K$h again (or set APPLY_KEYSPACE_EVENTS=enable)",
                **fields,
            )
        else:
            log.info("keyspace_events_back", **fields)
            self._wake_all()  # re-check anything written while they were off

    async def _check_setting(self) -> None:
        """Re-read ``notify-keyspace-events`` (where ``CONFIG GET`` is allowed)."""
        flags = await self._server_flags()
        if flags is None:
            return
        if covers(flags):
            if self.server_off:
                self.server_off = False
                self._report(
                    why="notify-keyspace-events has K$h again", notify_keyspace_events=flags
                )
            if self._task is None:  # off at start: subscribe now
                self._task = asyncio.create_task(self._run(), name="keyspace-watcher")
                self.status = "on (the server publishes K$h now)"
            return
        if self._mode == "enable":
            try:
                await self._redis.config_set("notify-keyspace-events", merged_flags(flags))
            except ResponseError:
                pass  # refused (a renamed CONFIG): reported as off, below
            else:
                log.warning(
                    "keyspace_events_reenabled",
                    was=flags,
                    why="notify-keyspace-events lost K$h on the server (CONFIG SET, a "
                    "restart, a failover); APPLY_KEYSPACE_EVENTS=enable turns it on again",
                )
                return
        if not self.server_off:
            self.server_off = True
            self._report(
                why="notify-keyspace-events lacks K$h on the server (CONFIG GET)",
                notify_keyspace_events=flags,
            )

    async def _server_flags(self) -> str | None:
        """The server's setting; None if CONFIG GET is refused (an unreachable Redis raises)."""
        try:
            reply = await self._redis.config_get("notify-keyspace-events")
        except ResponseError:
            return None
        return str(reply.get("notify-keyspace-events") or "")

    async def _ensure_enabled(self) -> None:
        flags = await self._server_flags()
        if flags is not None and not covers(flags):
            await self._redis.config_set("notify-keyspace-events", merged_flags(flags))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._subscribed.clear()

    def watch(self, keys: Iterable[str]) -> contextlib.AbstractContextManager[asyncio.Event]:
        """Register interest in ``keys`` for the duration of the block."""
        return registered(self._waiters, keys, asyncio.Event())

    def wake(self, key: str) -> None:
        """Wake the waiters of ``key`` (the lane does, for the events it reads)."""
        for event in self._waiters.get(key, ()):
            event.set()

    def hand_over(self, on: bool) -> None:
        """Leave the gate's channels to the lane (``on``) or take them back.

        Done by the watcher's own task at its next turn (within
        ``HAND_OVER_SEC``): a pub/sub command sent from another task could
        reconnect the connection while the task reads it. Taken back, the
        waiters are woken once the channels are subscribed again (anything
        written meanwhile is re-checked); until then they poll each step, and
        the lane wakes its own waiters to call as it goes down.
        """
        self._handed_over = on

    async def _follow_hand_over(self, pubsub: PubSub) -> None:
        """(Un)subscribe the gate's channels where the connection's differ from what is wanted."""
        want = not self._handed_over
        if want == self._gate_subscribed:
            return
        gate = self._gate_channels()
        if want:
            await pubsub.psubscribe(*gate)
        else:
            await pubsub.punsubscribe(*gate)
        self._gate_subscribed = want
        if want:
            self._wake_all()  # re-check anything written while nobody read these channels

    def _gate_channels(self) -> list[str]:
        return [c for c in self._channels if c != self._canary_channel]

    def _wanted(self) -> list[str]:
        return [self._canary_channel] if self._handed_over else self._channels

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    def _dispatch(self, message: dict[str, object]) -> None:
        if message.get("type") != "pmessage":
            return
        key = str(message["channel"]).removeprefix(self._prefix)
        if key == CANARY_KEY:
            self._canary_seen()
        self.wake(key)

    async def _subscribe(self, pubsub: PubSub, channels: list[str]) -> None:
        """PSUBSCRIBE and wait for Redis to confirm every pattern (or refuse one)."""
        await pubsub.psubscribe(*channels)
        waiting = set(channels)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SEC):
                while waiting:
                    message = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_SEC)
                    if message is None:
                        continue
                    if message.get("type") == "psubscribe":
                        waiting.discard(str(message["channel"]))
                    else:
                        self._dispatch(message)
        except TimeoutError:
            raise RedisTimeoutError("no reply to PSUBSCRIBE in time") from None

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_SEC
        failing = False  # logged once per run of failures, not once per retry
        while True:
            pubsub = self._redis.pubsub()
            self.attempts += 1
            try:
                if self._mode == "enable":
                    await self._ensure_enabled()  # after a failover, the new primary's too
                self._gate_subscribed = not self._handed_over
                await self._subscribe(pubsub, self._wanted())
                # Confirmed by Redis: only now is the backoff reset.
                self._subscribed.set()
                self._tried.set()
                self.error = ""
                backoff = FIRST_BACKOFF_SEC
                if failing:
                    log.info("keyspace_watcher_subscribed", attempts=self.attempts)
                    failing = False
                self._wake_all()  # re-check anything written while we were away
                while True:
                    await self._follow_hand_over(pubsub)
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=HAND_OVER_SEC
                    )
                    if message is not None:
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                refused = isinstance(exc, ResponseError)
                self.error = str(exc) or type(exc).__name__
                if not failing:
                    failing = True
                    self._log_failure(refused, lost=self._subscribed.is_set())
                self._subscribed.clear()
                self._canary_since = None  # its event may have been lost with the connection
                self._tried.set()
                self._wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_REFUSED_BACKOFF_SEC if refused else MAX_BACKOFF_SEC)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _log_failure(self, refused: bool, *, lost: bool) -> None:
        if refused:
            log.warning(
                "keyspace_watcher_refused",
                error=self.error,
                patterns=",".join(self._channels),
                hint="the Redis user needs these channels, listed literally "
                "(deploy/redis/apply-layer.acl); polling meanwhile, retrying with backoff",
            )
        elif lost:
            log.warning("keyspace_watcher_lost", error=self.error)
        else:
            log.warning("keyspace_watcher_failed", error=self.error)
