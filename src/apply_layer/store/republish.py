"""After Redis lost writes, the results this process published lately, written again.

A failover to a replica that lagged, or a restart from an older snapshot,
can lose a plan's result together with its stream entry, its claim and its
journal: then nothing would ever handle that plan again, although the daemon
read it and (perhaps) placed its order. So ``results.py`` remembers the results
it published in the last ten minutes (at most 10,000), and when
``identity`` notices that the server is not the one it was, the
service writes them again. The publish script writes nothing where the
journal still holds the plan's ``result_id``, so a result that survived is
not duplicated; one that was lost comes back unchanged (a new stream id),
with its journal state and cooldown.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from apply_layer.logs import get_logger

if TYPE_CHECKING:
    from apply_layer.store.results import Results

log = get_logger()


@dataclass(frozen=True)
class Published:
    """One result this process published: enough to write it again, unchanged."""

    plan_id: str
    symbol: str
    state: str
    fields: tuple[tuple[str, str], ...]
    cooldown: bool
    entry_id: str
    at: float  # monotonic seconds


class RecentResults:
    """The results this process published lately, newest last, bounded in count and age."""

    def __init__(self, max_items: int = 10_000, max_age_sec: float = 600.0) -> None:
        self.max_items, self.max_age_sec = max_items, max_age_sec
        self._items: OrderedDict[str, Published] = OrderedDict()

    def add(self, item: Published) -> None:
        self._items.pop(item.plan_id, None)
        self._items[item.plan_id] = item
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def current(self) -> list[Published]:
        """The items younger than the age bound (older ones are dropped)."""
        horizon = time.monotonic() - self.max_age_sec
        while self._items and next(iter(self._items.values())).at < horizon:
            self._items.popitem(last=False)
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


async def republish_after_changes(
    results: Results,
    changed: asyncio.Event,
    *,
    on_error: Callable[[BaseException], None],
    pause: Callable[[float], Awaitable[None]],
    stopping: asyncio.Event,
    max_backoff: float = 5.0,
) -> None:
    """Each time ``changed`` is set: write the recent results again, until it worked."""
    while not stopping.is_set():
        await changed.wait()
        changed.clear()
        backoff = 0.2
        while True:
            try:
                restored = await results.republish_recent()
                break
            except (RedisError, OSError) as exc:
                on_error(exc)
                if stopping.is_set():
                    return
                await pause(backoff)
                backoff = min(backoff * 2, max_backoff)
        log.warning(
            "results_republished",
            restored=restored,
            remembered=len(results.recent or ()),
            why="Redis changed (restart, restore or failover); results it lost written again",
        )
