"""A read's deadline that counts the time the event loop ran, not the time the
process was stopped.

Why a module of its own: the bounded stream read (``stream_reader``) needs a
timeout that tells a silent Redis from a process that was not running
(SIGSTOP, a frozen VM). With ``asyncio.timeout`` alone, a daemon resumed past a
read's deadline finds the read's timer and the reply Redis sent long ago ready
in the same turn of the loop, the timer cancels the read first, and a stopped
process reads as a Redis outage (issue 23). :class:`ReadDeadline` is that
rule, and only it.
"""

from __future__ import annotations

import asyncio

# A deadline's timer run this late means the loop was not running (the process was
# stopped); the read then gets this long, from the resume, for a reply already sent.
STALL_SEC = 0.5
STALL_GRACE_SEC = 0.5


class ReadDeadline:
    """An ``asyncio.timeout`` that expires only after the loop itself has waited.

    Its timer checks how late the loop came to it: on time, the read expires
    (one turn of the loop later, so a reply that arrived in the same turn as
    the timer is read first, not thrown away), and a Redis that does not
    answer is reported as soon as before; more than :data:`STALL_SEC` late,
    the process was stopped (or its loop blocked) through the deadline and
    the socket was never looked at, so the read gets :data:`STALL_GRACE_SEC`
    from now: a reply waiting in the socket is read at once, a missing one
    still expires. ``asyncio.timeout`` alone cancels the read in the turn its
    timer is due, even when the reply is ready in that same turn.

    ``renew_sec``: how long the read gets again each time bytes arrive
    (:meth:`extend`); a huge reply may take longer than one timeout to read.
    """

    def __init__(self, timeout: asyncio.Timeout, delay: float, renew_sec: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._renew_sec = renew_sec
        self._when = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self.reschedule(self._loop.time() + delay)

    def reschedule(self, when: float) -> None:
        """Expire at ``when`` (loop time) instead."""
        self.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._due)

    def extend(self) -> None:
        """Bytes keep coming: expire ``renew_sec`` from now."""
        self.reschedule(self._loop.time() + self._renew_sec)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> None:
        self._handle = None
        now = self._loop.time()
        if now - self._when > STALL_SEC:
            self.reschedule(now + STALL_GRACE_SEC)
        else:
            self._timeout.reschedule(now)  # expires: the read is cancelled
