"""The primary found through the sentinels by many tasks at once
(``store/sentinel_discovery.py``): the list of sentinels stays whole.

The sentinels here are stand-ins that answer ``SENTINEL MASTERS`` after
yielding to the loop, so concurrent discoveries interleave as they do when a
busy daemon reconnects after a failover. Real sentinels: test_connection_sentinel.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import ConnectionError as RedisConnectionError

from apply_layer.store import sentinel_discovery
from apply_layer.store.sentinel_discovery import SentinelDiscovery

pytestmark = pytest.mark.unit  # scripts/test.sh --fast

SERVICE = "apply"


@pytest.fixture(autouse=True)
def _no_epochs_across_tests() -> Iterator[None]:
    """The epochs are per process and group of addresses: each test starts afresh."""
    sentinel_discovery._EPOCHS.clear()
    yield
    sentinel_discovery._EPOCHS.clear()


def healthy(ip: str, **changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "ip": ip,
        "port": 6379,
        "is_master": True,
        "is_sdown": False,
        "is_odown": False,
        "num-other-sentinels": 2,
    }
    return {SERVICE: state | changes}


class StandIn:
    """A sentinel that answers (or fails) after yielding to the loop, counting its calls."""

    def __init__(self, name: str, answer: dict[str, Any] | None) -> None:
        self.name, self.answer, self.asked = name, answer, 0

    async def sentinel_masters(self) -> dict[str, Any]:
        self.asked += 1
        await asyncio.sleep(0)
        if self.answer is None:
            raise RedisConnectionError(f"{self.name} is down")
        return self.answer

    def __repr__(self) -> str:
        return self.name


def manager(*stand_ins: StandIn) -> SentinelDiscovery:
    made = SentinelDiscovery([("127.0.0.1", 1 + i) for i in range(len(stand_ins))])
    made.sentinels = list(stand_ins)  # type: ignore[arg-type]  # stand-ins for the clients
    return made


def order(found: SentinelDiscovery) -> list[str]:
    return [repr(s) for s in found.sentinels]


async def test_concurrent_discoveries_keep_every_sentinel_once() -> None:
    """The first sentinel is down: every discovery moves on to the second, and all of
    them move it to the front. redis-py's own discovery, whose move is by index,
    leaves [b, b, c] here: ``a`` lost for good."""
    a, b, c = StandIn("a", None), StandIn("b", healthy("10.0.0.2")), StandIn("c", None)
    found = manager(a, b, c)
    answers = await asyncio.gather(*(found.discover_master(SERVICE) for _ in range(12)))
    assert set(answers) == {("10.0.0.2", 6379)}
    assert order(found) == ["b", "a", "c"]
    assert (a.asked, b.asked, c.asked) == (12, 12, 0)


async def test_the_sentinel_that_answered_is_asked_first_next_time() -> None:
    a, b, c = StandIn("a", None), StandIn("b", None), StandIn("c", healthy("10.0.0.3"))
    found = manager(a, b, c)
    assert await found.discover_master(SERVICE) == ("10.0.0.3", 6379)
    assert order(found) == ["c", "a", "b"]
    a.answer = healthy("10.0.0.9")  # back, and naming another primary: not asked
    assert await found.discover_master(SERVICE) == ("10.0.0.3", 6379)
    assert (a.asked, b.asked, c.asked) == (1, 1, 2)


@pytest.mark.parametrize(
    "unhealthy",
    [{"is_master": False}, {"is_sdown": True}, {"is_odown": True}],
    ids=["not-master", "sdown", "odown"],
)
async def test_a_primary_named_unhealthy_is_passed_over(unhealthy: dict[str, Any]) -> None:
    a = StandIn("a", healthy("10.0.0.1", **unhealthy))
    b = StandIn("b", healthy("10.0.0.2"))
    found = manager(a, b)
    assert await found.discover_master(SERVICE) == ("10.0.0.2", 6379)
    assert order(found) == ["b", "a"]


async def test_no_primary_named_says_why_for_each_sentinel() -> None:
    a, b = StandIn("a", None), StandIn("b", {"other-service": {}})
    found = manager(a, b)
    with pytest.raises(MasterNotFoundError) as caught:
        await found.discover_master(SERVICE)
    assert "'apply'" in str(caught.value) and "a is down" in str(caught.value)
    assert order(found) == ["a", "b"]  # nobody answered: the order stands


def at(ip: str, epoch: int) -> dict[str, Any]:
    return healthy(ip, **{"config-epoch": epoch})


async def test_a_sentinel_behind_a_failover_is_passed_over() -> None:
    """``a`` has not heard of the failover that ``b`` told this process about: it
    still names the old primary, healthy as far as it knows."""
    a, b = StandIn("a", None), StandIn("b", at("10.0.0.2", 2))
    found = manager(a, b)
    assert await found.discover_master(SERVICE) == ("10.0.0.2", 6379)
    a.answer = at("10.0.0.1", 1)  # back, and behind
    found.sentinels = [a, b]  # type: ignore[list-item]  # asked first
    assert await found.discover_master(SERVICE) == ("10.0.0.2", 6379)
    assert order(found) == ["b", "a"] and found.epochs == {SERVICE: 2}
    a.answer = at("10.0.0.3", 3)  # the next failover, heard by ``a`` first
    found.sentinels = [a, b]  # type: ignore[list-item]
    assert await found.discover_master(SERVICE) == ("10.0.0.3", 6379)
    assert found.epochs == {SERVICE: 3}


async def test_sentinels_set_up_again_are_followed_when_most_agree() -> None:
    """Their epochs started over: a majority name one primary at an older epoch, and
    it is taken rather than no primary at all. It becomes the newest seen."""
    a, b = StandIn("a", at("10.0.0.5", 0)), StandIn("b", at("10.0.0.5", 1))
    c = StandIn("c", None)
    found = manager(a, b, c)
    found.epochs[SERVICE] = 7
    assert await found.discover_master(SERVICE) == ("10.0.0.5", 6379)
    assert found.epochs == {SERVICE: 1} and order(found) == ["b", "a", "c"]
    assert (a.asked, b.asked, c.asked) == (1, 1, 1)  # all asked before settling for it


async def test_a_current_sentinel_that_fails_once_is_waited_for() -> None:
    """Split brain: ``b`` told this process of the failover, then times out once. ``a``
    still names the old primary, alive and taking writes. Nothing is named until a
    current sentinel answers again: the old primary is never handed back."""
    a, b, c = StandIn("a", at("10.0.0.1", 4)), StandIn("b", None), StandIn("c", None)
    found = manager(a, b, c)
    found.epochs[SERVICE] = 5
    with pytest.raises(MasterNotFoundError, match="behind 5"):
        await found.discover_master(SERVICE)
    assert found.epochs == {SERVICE: 5} and order(found) == ["a", "b", "c"]
    b.answer = at("10.0.0.2", 5)
    assert await found.discover_master(SERVICE) == ("10.0.0.2", 6379)
    assert order(found) == ["b", "a", "c"]


async def test_a_majority_behind_that_disagree_name_nothing() -> None:
    a, b = StandIn("a", at("10.0.0.1", 3)), StandIn("b", at("10.0.0.2", 4))
    c = StandIn("c", None)
    found = manager(a, b, c)
    found.epochs[SERVICE] = 5
    with pytest.raises(MasterNotFoundError):
        await found.discover_master(SERVICE)
    assert found.epochs == {SERVICE: 5}


async def test_an_epoch_that_is_not_a_number_is_taken_and_not_recorded() -> None:
    a = StandIn("a", healthy("10.0.0.4", **{"config-epoch": "n/a"}))
    found = manager(a)
    found.epochs[SERVICE] = 5
    assert await found.discover_master(SERVICE) == ("10.0.0.4", 6379)
    assert found.epochs == {SERVICE: 5}


def test_the_newest_epoch_is_shared_by_the_managers_of_one_group() -> None:
    """The daemon's clients (commands, blocking reads) each have a manager: what one
    learnt of a failover holds for the others. Another group of sentinels is apart."""
    group = [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    first, second = SentinelDiscovery(group), SentinelDiscovery(list(reversed(group)))
    other = SentinelDiscovery([("127.0.0.1", 26381)])
    first.epochs[SERVICE] = 4
    assert second.epochs == {SERVICE: 4} and SERVICE not in other.epochs
