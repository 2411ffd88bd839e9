"""The reads an order needs, made during the permit wait instead of after it.

A plan waits for its permits (up to 1200 ms) before its order may leave, and
then needed two signed reads, one after the other, before the send: the
lookup of its client order id (rule 4 of docs/BINANCE.md) and the position
it is sized against. :class:`ReadAhead` starts both, side by side, the moment
the plan is claimed; they also open (or check) the kept-alive connection the
order then goes out on. What they found is only *used* under the symbol's
lease, and only if it still holds (``executor.BinanceExecutor.execute``):

- the lookup, if the journal still shows no attempt (read under the lease, and
  compare-and-set by the attempt script up to the send) and the Redis behind
  it has not changed since the lookup began;
- the position, if no other instance held the symbol's lease when it was
  read (an order could then be in flight), no send was recorded on the symbol
  since (the attempt script compares the symbol's last-send mark), and the
  Redis has not changed since.

Anything else is read again, under the lease, as before. Reading ahead never
sends anything, so a plan that ends blocked only cost two reads (weight 6).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from apply_layer.executors.base import SendWatch
from apply_layer.executors.binance.lookup import OrderLookup, Resolution
from apply_layer.executors.binance.market import Market

T = TypeVar("T")


@dataclass(frozen=True)
class PositionRead:
    """A position read ahead: the amount, and the symbol's last-send mark read just before
    it (None: another holder had the lease, so the amount may miss an order in flight)."""

    amount: Decimal
    mark: str | None


@dataclass(frozen=True)
class Timed:
    """A read's result with the Redis change moment it was made under."""

    unseen_ms: int
    value: object


class ReadAhead:
    """The lookup and the position read of one plan's order, running (see the module)."""

    def __init__(
        self,
        lookup: OrderLookup,
        market: Market,
        symbol: str,
        client_order_id: str,
        watch: SendWatch,
        on_waste: Callable[[], None] | None = None,
    ) -> None:
        self.symbol, self.client_order_id, self._watch = symbol, client_order_id, watch
        self.used = False  # set when its order went to ``execute``
        self._on_waste, self._cancelled = on_waste, False
        self.lookup_unseen = watch.unrecorded_until_ms()
        self._lookup = _spawn(lookup.resolve(symbol, client_order_id, self.lookup_unseen))
        self._position = _spawn(self._read_position(market))

    async def _read_position(self, market: Market) -> Timed:
        unseen = self._watch.unrecorded_until_ms()
        mark = await self._watch.symbol_mark()  # before the read: see journal.JournalSymbolWatch
        return Timed(unseen, PositionRead(await market.position(self.symbol), mark))

    async def lookup(self, unseen_ms: int) -> Resolution | None:
        """The lookup's answer if it still stands for a Redis that changed last at
        ``unseen_ms`` (None: look again)."""
        if unseen_ms != self.lookup_unseen:
            return None
        found = await _settled(self._lookup)
        if found is None or not (found.gone or found.order is not None):
            return None  # failed or unresolved: a fresh lookup may do better
        return found

    async def position(self, unseen_ms: int) -> PositionRead | None:
        """The position read ahead, if it may be used (its mark still to be checked by
        the attempt script); None: read it again."""
        timed = await _settled(self._position)
        if timed is None or timed.unseen_ms != unseen_ms:
            return None
        read = timed.value
        assert isinstance(read, PositionRead)
        return read if read.mark is not None else None

    def cancel(self) -> None:
        """Drop the reads; if no order came of them, tell ``on_waste`` (once)."""
        self._lookup.cancel()
        self._position.cancel()
        if not self.used and not self._cancelled and self._on_waste is not None:
            self._on_waste()
        self._cancelled = True


def _spawn(coro: Awaitable[T]) -> asyncio.Task[T]:
    task: asyncio.Task[T] = asyncio.ensure_future(coro)
    task.add_done_callback(_swallow)  # an unused read's failure is not an error
    return task


def _swallow(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()


async def _settled(task: asyncio.Task[T]) -> T | None:
    """The task's result, or None if it failed (whatever failed is read again)."""
    with contextlib.suppress(Exception):
        return await asyncio.shield(task)
    return None
