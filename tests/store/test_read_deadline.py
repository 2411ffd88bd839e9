"""The read deadline alone, on a bare event loop: a silent wait expires on time,
a loop that stood still past the deadline gets the grace, bytes arriving extend it.

The same rule against a real redis-server (a SIGSTOPped server, a stalled loop
with the reply in the socket) is in tests/store/test_stream_reader.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from apply_layer.store.read_deadline import STALL_GRACE_SEC, STALL_SEC, ReadDeadline

pytestmark = pytest.mark.unit  # scripts/test.sh --fast

STALL = 0.1 + STALL_SEC + 0.2  # past a 0.1 s deadline by more than STALL_SEC


async def expired(
    delay: float, renew_sec: float, read: Callable[[ReadDeadline], Awaitable[object]]
) -> bool:
    """Run ``read`` under a deadline as the stream reader does; True if it expired."""
    try:
        async with asyncio.timeout(None) as timeout:
            deadline = ReadDeadline(timeout, delay, renew_sec)
            try:
                await read(deadline)
            finally:
                deadline.cancel()
    except TimeoutError:
        return True
    return False


async def test_a_wait_with_nothing_arriving_expires_on_time() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await expired(0.2, 1.0, lambda _: asyncio.sleep(5))
    assert 0.2 <= loop.time() - started < 0.2 + STALL_SEC


async def test_a_loop_stalled_past_the_deadline_gets_the_grace_then_expires() -> None:
    """A reply that comes within STALL_GRACE_SEC of the resume is read; none expires then."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[str] = loop.create_future()

    def stall_then_reply() -> None:
        time.sleep(STALL)  # the loop stands still (SIGSTOP)
        loop.call_later(0.1, ready.set_result, "reply")  # within the grace, not at once

    loop.call_soon(stall_then_reply)
    assert not await expired(0.1, 1.0, lambda _: ready)  # the loop, not Redis, was late

    resumed = 0.0

    async def stall_then_nothing(_: ReadDeadline) -> None:
        nonlocal resumed
        time.sleep(STALL)  # noqa: ASYNC251 - the point: the loop stands still
        resumed = loop.time()
        await asyncio.sleep(5)

    assert await expired(0.1, 1.0, stall_then_nothing)
    assert STALL_GRACE_SEC <= loop.time() - resumed < STALL_GRACE_SEC + 0.3


async def test_extend_gives_the_read_renew_sec_from_now() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def bytes_then_silence(deadline: ReadDeadline) -> None:
        await asyncio.sleep(0.15)
        deadline.extend()  # bytes came: 0.3 s from here, not 0.2 s from the start
        await asyncio.sleep(5)

    assert await expired(0.2, 0.3, bytes_then_silence)
    assert 0.45 <= loop.time() - started < 0.45 + STALL_SEC
