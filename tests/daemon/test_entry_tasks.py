"""The entries' tasks alone, with a scripted processor: the room a read may
take (slots and the memory budget), an entry kept through an outage until it
ends, a plan refused by a Redis that changed tried again, and a drain that
abandons what does not end in time. Through a daemon on a real server:
tests/daemon/test_service.py, test_chaos.py, test_lost_writes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from apply_layer.core.errors import RetryLater
from apply_layer.core.statuses import HandledKind
from apply_layer.daemon.entry_tasks import EntryTasks
from apply_layer.daemon.processing import Handled
from apply_layer.store.identity import IdentityTracker
from apply_layer.store.stream_reply import ENTRY_COST_MAX, StreamEntry

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


class Scripted:
    """A processor whose answers are given in turn: an exception is raised, a
    callable is called first (then DUPLICATE), ``None`` waits forever."""

    def __init__(self, *answers: BaseException | Callable[[], None] | None) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def handle(self, entry_id: str, fields: dict[str, str], *, oversized: bool) -> Handled:
        answer = self.answers[self.calls]
        self.calls += 1
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            await asyncio.Event().wait()
        else:
            answer()
        return Handled(HandledKind.DUPLICATE)

    async def drop_gone(self, entry_id: str) -> None:
        self.calls += 1


def tasks(
    processor: Scripted, *, budget: int = 1 << 30, identity: IdentityTracker | None = None
) -> tuple[EntryTasks, list[float], list[BaseException]]:
    pauses: list[float] = []
    failures: list[BaseException] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    entries = EntryTasks(
        processor,  # type: ignore[arg-type]
        identity or IdentityTracker(),
        max_in_flight=4,
        budget_bytes=budget,
        stopping=asyncio.Event(),
        pause=pause,
        redis_failed=failures.append,
    )
    return entries, pauses, failures


def entry(n: int) -> StreamEntry:
    return StreamEntry(f"1-{n}", {"plan_id": f"p{n}"}, 10)


async def settled(entries: EntryTasks) -> None:
    while entries.in_flight:  # noqa: ASYNC110 - the tasks are private; their ids are not
        await asyncio.sleep(0.01)


async def test_room_is_the_free_slots_within_the_memory_budget() -> None:
    entries, _, _ = tasks(Scripted(None, None, None), budget=3 * ENTRY_COST_MAX)
    assert entries.room() == 3  # the budget, not the four slots
    entries.spawn(entry(1))
    assert list(entries.in_flight) == ["1-1"]
    assert entries.room() == 2  # the held entry's cost is far under ENTRY_COST_MAX
    roomy, _, _ = tasks(Scripted(None, None, None))
    for n in range(3):
        roomy.spawn(entry(n))
    assert roomy.room() == 1  # four slots, three taken
    await entries.drain(0.01)
    await roomy.drain(0.01)


async def test_an_entry_is_kept_through_an_outage_until_it_ends() -> None:
    processor = Scripted(RedisConnectionError("down"), RedisConnectionError("down"), lambda: None)
    entries, pauses, failures = tasks(processor)
    entries.spawn(entry(1))
    await settled(entries)
    assert processor.calls == 3 and len(failures) == 2
    assert pauses == [0.2, 0.4]
    assert entries.counts[HandledKind.DUPLICATE] == 1 and entries.room() == 4
    entries.spawn(StreamEntry("1-2", {}, 0))  # trimmed while pending: dropped, not handled
    await settled(entries)
    assert processor.calls == 4 and entries.counts[HandledKind.DUPLICATE] == 1


async def test_a_refusal_is_tried_again_only_after_redis_changed() -> None:
    identity = IdentityTracker()
    processor = Scripted(RetryLater("lease went back"))
    entries, _, _ = tasks(processor, identity=identity)
    with capture_logs() as logs:
        entries.spawn(entry(1))
        await settled(entries)
    assert processor.calls == 1
    assert [e["event"] for e in logs] == ["plan_deferred"]

    def redis_changed() -> None:
        identity.changed_at_ms += 1  # as a connection to another server does

    # Redis changes while the entry is handled, and the handling is refused.
    processor = Scripted(_raise_after(redis_changed), lambda: None)
    entries, pauses, _ = tasks(processor, identity=identity)
    with capture_logs() as logs:
        entries.spawn(entry(2))
        await settled(entries)
    assert processor.calls == 2 and pauses == [0.2]
    assert [e["event"] for e in logs] == ["plan_retried_after_redis_change"]


def _raise_after(before: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        before()
        raise RetryLater("state went back")

    return run


async def test_a_drain_abandons_what_does_not_end_in_time() -> None:
    entries, _, _ = tasks(Scripted(lambda: None, None))
    entries.spawn(entry(1))
    entries.spawn(entry(2))
    with capture_logs() as logs:
        await entries.drain(0.2)
    assert [(e["event"], e.get("in_flight"), e.get("abandoned")) for e in logs] == [
        ("draining", 2, None),
        ("drain_timeout", None, 1),
    ]
    await settled(entries)  # the abandoned task ends, cancelled
