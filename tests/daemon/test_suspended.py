"""A daemon stopped (SIGSTOP) past its reads' deadlines and resumed is not a Redis outage.

While the process is stopped, the monotonic clock runs on: the stream read's
deadline (the block time plus 3 s) passes, and on SIGCONT the read's timer and
the socket's waiting reply are ready in the same turn of the event loop. The
timer used to win: the daemon logged ``redis_unavailable`` and set
``apply_redis_up`` to 0 for a read Redis had answered long before (issue 23:
ApplyLayerRedisDown after a hung daemon in the monitoring run). A read whose
deadline passed while the loop was not running gets a short grace instead,
and a real outage is still reported at once (tests/store/test_stream_reader.py).
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from tests.harness import Daemon, blocked_in, grant, publish_plan, until, wait_result

STOPPED_SEC = 5.0  # past the read's deadline: 0.5 s of BLOCK plus 3 s


@pytest.fixture
def metered(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    daemon = Daemon(redis_server.url, tmp_path, "stopped", metrics_port=port)
    yield daemon, port
    daemon.signal(signal.SIGCONT)  # a failed assertion may leave it stopped
    daemon.stop()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in the scrape"
    return float(match.group(1))


async def _scrape(port: int) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    return response.text


async def test_a_stopped_and_resumed_daemon_does_not_report_redis_down(
    redis: Redis, metered: tuple[Daemon, int]
) -> None:
    daemon, port = metered
    await daemon.start().ready(redis)
    await until(lambda: blocked_in(redis, "xreadgroup"))  # idle: the daemon waits in its read
    before = await _scrape(port)
    assert _metric(before, "apply_redis_up") == 1
    errors = _metric(before, "apply_redis_errors_total")
    for _ in range(2):
        daemon.signal(signal.SIGSTOP)
        await asyncio.sleep(STOPPED_SEC)
        daemon.signal(signal.SIGCONT)
        await asyncio.sleep(1.5)
    after = await _scrape(port)
    log = daemon.log()
    assert "redis_unavailable" not in log, log
    assert "redis_recovered" not in log, log
    assert _metric(after, "apply_redis_up") == 1
    assert _metric(after, "apply_redis_errors_total") == errors, log
    # And it still works: a plan published after the stops executes.
    await grant(redis, "after-stop", symbol="BTCUSDT")
    await publish_plan(redis, "after-stop", symbol="BTCUSDT")
    assert (await wait_result(redis, "after-stop"))["status"] == "EXECUTED"
