"""Whether Redis answers, as the daemon sees it: one outage, one line.

Why a module of its own: every part of the service meets Redis failures (the
intake loop, each entry's task, the republisher, the start), and an outage
must still read as one event: ``redis_unavailable`` logged once when it
starts and ``redis_recovered`` once when it ends, ``apply_redis_up`` and the
sd_notify status following, the gauges Redis feeds marked unknown (NaN) while
it is away, and the intake loop's retries backing off up to
:data:`MAX_BACKOFF_SEC`. Every error still counts in
``apply_redis_errors_total``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from apply_layer import metrics
from apply_layer.daemon import systemd
from apply_layer.daemon.housekeeping import mark_unknown
from apply_layer.logs import get_logger

log = get_logger()

MAX_BACKOFF_SEC = 5.0
FIRST_BACKOFF_SEC = 0.2


class RedisHealth:
    """Redis up or down, and the intake loop's backoff while it is down."""

    def __init__(self, mode: str, pause: Callable[[float], Awaitable[None]]) -> None:
        self.mode = mode
        self.up = True
        self._pause = pause  # sleeps, waking early on stop
        self._backoff = FIRST_BACKOFF_SEC

    def failed(self, exc: BaseException) -> None:
        """A Redis call failed: counted always, logged once per outage."""
        metrics.REDIS_ERRORS.inc()
        if self.up:
            self.up = False
            metrics.REDIS_UP.set(0)
            mark_unknown()
            log.error("redis_unavailable", error=str(exc) or type(exc).__name__)
            systemd.notify("STATUS=Redis unavailable; retrying")

    def ok(self) -> None:
        """A read succeeded: the backoff starts over, and an outage ends here."""
        self._backoff = FIRST_BACKOFF_SEC
        if not self.up:
            self.up = True
            metrics.REDIS_UP.set(1)
            log.info("redis_recovered")
            systemd.notify(f"STATUS=mode={self.mode}")

    async def pause_after_failure(self) -> None:
        """Wait before the next try, twice as long each time, up to MAX_BACKOFF_SEC."""
        await self._pause(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SEC)
