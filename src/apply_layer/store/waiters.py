"""Who waits on which key: the registry the keyspace watcher and the gate's lane share.

Both wake (or call for) the waiters of a key when its keyspace event comes;
both register a waiter under every key of its plan for the length of its
wait, and must leave no empty set behind (a key per plan, for ever).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterable, Iterator
from typing import TypeVar

W = TypeVar("W", bound=Hashable)


@contextlib.contextmanager
def registered(waiters: dict[str, set[W]], keys: Iterable[str], waiter: W) -> Iterator[W]:
    """``waiter`` under each of ``keys`` in ``waiters`` for the duration of the block."""
    keys = list(keys)
    for key in keys:
        waiters.setdefault(key, set()).add(waiter)
    try:
        yield waiter
    finally:
        for key in keys:
            waiting = waiters.get(key)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del waiters[key]
