"""Binance said stop (429, 418): nothing goes to the exchange until it said we may.

Binance's rule (USD-M futures, "General Info", limits): a 429 means back off,
and a client that keeps sending after 429s is banned by IP with a 418, for 2
minutes up to 3 days, longer for repeat offenders. Both answers carry
``Retry-After`` (seconds until the ban or the back-off ends); a ``-1003``
message may also name the ban's end, "IP banned until 1659146400000" (epoch
ms, server time). Under a ban the daemon once sent 304 more requests in 40 s
(issue 23): every symbol's plans, their lookups and the clock resyncs each
asked on their own.

So one :class:`ExchangeBan` per client (the daemon has one client for every
symbol) remembers the latest end it was told, and the client refuses every
request before it with :class:`BanActive`, a :class:`RateLimited` that was
never sent. Refusing is safe: no request leaves, so no order can be doubled
or lost. What the callers then do is theirs: the executor waits out a
back-off it may wait (``RetryPolicy.max_retry_after_sec``) and otherwise ends
the step (``exchange_unavailable`` before any send, ``rate_limited:<status>``
for the send itself, ``order_unknown`` if a send's fate cannot be looked up).
The end is in ``apply_exchange_blocked_until_timestamp_seconds{http_status}``
and in one ``binance_requests_paused`` log line per new or longer ban.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apply_layer import metrics
from apply_layer.core.errors import BanActive
from apply_layer.logs import get_logger

_log = get_logger("apply_layer.binance")

# Without a Retry-After or an end in the message: 1 s after a 429 (what the
# executor always waited), and the shortest ban Binance documents after a 418.
DEFAULT_PAUSE_SEC = {429: 1.0, 418: 120.0}
LOG_AGAIN_AFTER_SEC = 2.0  # a ban lengthened by more than this is logged again
_BANNED_UNTIL = re.compile(r"banned until (\d{10,14})")


def ban_end_ms(message: str) -> int | None:
    """The ban's end named in a ``-1003`` message (epoch ms, server time), if any."""
    match = _BANNED_UNTIL.search(message)
    return int(match.group(1)) if match else None


class ExchangeBan:
    """Until when nothing may be sent; ``clock`` is monotonic seconds (tests simulate it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0  # on ``clock``
        self._until_epoch = 0.0
        self.http_status = 0

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def refuse(self) -> None:
        """Raise :class:`BanActive` while paused; a no-op otherwise."""
        left = self.remaining()
        if left > 0:
            raise BanActive(self.http_status, left, self._until_epoch)

    def record(
        self, http_status: int, retry_after: float | None, message: str, server_offset_ms: int
    ) -> float:
        """Note a 429/418 answer; returns the seconds to wait from now (the longest told).

        ``server_offset_ms`` (server minus local time) turns an end named in
        the message into local time.
        """
        told = [] if retry_after is None else [retry_after]
        end_ms = ban_end_ms(message)
        if end_ms is not None:
            told.append((end_ms - server_offset_ms) / 1000 - time.time())
        pause = max(0.0, max(told) if told else DEFAULT_PAUSE_SEC.get(http_status, 1.0))
        now = self._clock()
        until = now + pause
        if until > self._until:
            # Answers to requests already on their way repeat the same end, give or
            # take Retry-After's whole seconds: one log line per ban, not per answer.
            news = self._until <= now or until > self._until + LOG_AGAIN_AFTER_SEC
            news = news or http_status != self.http_status
            self._until, self.http_status = until, http_status
            self._until_epoch = time.time() + pause
            metrics.EXCHANGE_BLOCKED_UNTIL.labels(str(http_status)).set(self._until_epoch)
            if not news:
                return pause
            _log.warning(
                "binance_requests_paused",
                http_status=http_status,
                until=datetime.fromtimestamp(self._until_epoch, UTC).isoformat(timespec="seconds"),
                seconds=round(pause, 3),
                why="IP banned" if http_status == 418 else "rate limited",
                scope="every request of this daemon, every symbol",
            )
        return pause
