"""Finding the primary through the sentinels, safe to do from many tasks at once.

redis-py's ``Sentinel.discover_master`` asks the sentinels in the order of its
list and moves the one that answered to the front by *index*: the index it
had when the loop reached it. Every new connection of a Sentinel pool runs a
discovery, and after a failover a busy daemon opens many at once, so the
discoveries overlap across their awaits. One that resumes after another has
reordered the list writes its sentinel over whatever now stands at that
index: the list then holds one sentinel twice and has lost another. Measured
on this project's test setup (3 sentinels, 20 tasks writing through two
failovers): 2 of 3 runs ended with a sentinel lost from the list. A lost
sentinel is never asked again, so after a few failovers the daemon could
depend on one sentinel while the others are healthy; it is also never
closed (its connections leaked, and a test failed on their warnings).

:class:`SentinelDiscovery` asks the same question over a snapshot of the list
and moves the sentinel that answered to the front by identity, in one step
with no await in it, so the list stays a permutation of the sentinels it was
made with.

**A sentinel behind the others.** During a failover the sentinels learn the
new primary one after another. One that has not yet heard still names the
old primary, healthy as far as it knows, and redis-py takes the first
healthy answer: a connection opened after the daemon had already moved to
the new primary went back to the old, dead one, and the outage was logged
a second time (CI, ``test_failover_chaos_small``). Every answer carries the
configuration's epoch, which a failover raises; an answer older than the
newest this process has seen (through any of its clients) is passed over
while another sentinel gives a current one. If none does, the answers
behind are taken only if a majority of the sentinels give them and name
one primary (the sentinels were set up again and their epochs started
over); otherwise no primary is named yet, and the pool tries again. One
current sentinel that times out once must not hand the daemon back to a
primary that a split brain left alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_EPOCHS: dict[frozenset[tuple[str, int]], dict[str, int]] = {}


class SentinelDiscovery(Sentinel):
    """redis-py's Sentinel manager with a discovery that tasks may run concurrently,
    and that passes over a sentinel still naming the primary before a failover."""

    def __init__(self, sentinels: Iterable[tuple[str, int]], **kwargs: Any) -> None:
        addresses = tuple(sentinels)
        super().__init__(addresses, **kwargs)
        # Per service, the newest config-epoch taken: one dict per group of sentinels
        # in the process, since each client (commands, blocking reads) has a manager.
        self.epochs = _EPOCHS.setdefault(frozenset(addresses), {})

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """The address of ``service_name``'s primary, from the first sentinel that
        names a healthy one in a configuration no older than the newest seen (that
        sentinel is asked first next time)."""
        errors: list[str] = []
        behind: list[tuple[int, Any, dict[str, Any]]] = []  # answers passed over
        for sentinel in list(self.sentinels):  # others may reorder the list meanwhile
            try:
                masters: Any = await sentinel.sentinel_masters()
            except (RedisConnectionError, ResponseError, RedisTimeoutError) as exc:
                errors.append(f"{sentinel}: {type(exc).__name__}: {exc}")
                continue
            state = masters.get(service_name)
            if not state or not self.check_master_state(state, service_name):
                continue
            epoch = _epoch(state)
            newest = self.epochs.get(service_name, 0)  # read after the await: others take too
            if epoch is None or epoch >= newest:
                return self._take(service_name, sentinel, state, epoch)
            errors.append(f"{sentinel}: names epoch {epoch}, behind {newest}")
            behind.append((epoch, sentinel, state))
        if self._started_over(behind):
            epoch, sentinel, state = max(behind, key=lambda answer: answer[0])
            self.epochs[service_name] = epoch  # the one way the memory goes down
            return self._take(service_name, sentinel, state, epoch)
        why = f": {'; '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"No master found for {service_name!r}{why}")

    def _started_over(self, behind: list[tuple[int, Any, dict[str, Any]]]) -> bool:
        """Whether the answers passed over say the sentinels were set up again: a
        majority of them, naming one primary. One current sentinel that did not
        answer this time (a timeout) leaves the rest behind, and is waited for."""
        named = {(str(state["ip"]), int(state["port"])) for _, _, state in behind}
        return len(behind) > len(self.sentinels) // 2 and len(named) == 1

    def _take(
        self, service_name: str, sentinel: Any, state: dict[str, Any], epoch: int | None
    ) -> tuple[str, int]:
        if epoch is not None:
            self.epochs[service_name] = max(epoch, self.epochs.get(service_name, 0))
        self._ask_first(sentinel)
        forced = self._force_master_ip  # Sentinel(force_master_ip=)
        return str(state["ip"] if forced is None else forced), int(state["port"])

    def _ask_first(self, sentinel: Any) -> None:
        if any(s is sentinel for s in self.sentinels):  # a new list: loops over the old go on
            self.sentinels = [sentinel, *(s for s in self.sentinels if s is not sentinel)]


def _epoch(state: dict[str, Any]) -> int | None:
    """The answer's ``config-epoch``; None if it is not a number (taken, not recorded,
    as redis-py takes any healthy answer)."""
    try:
        return int(state.get("config-epoch", 0))
    except (TypeError, ValueError):
        return None
