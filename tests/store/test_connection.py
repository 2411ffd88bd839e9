"""The client factory: a blocking read must never be killed by its own socket timeout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import COMMAND_TIMEOUT_SEC, create_redis


async def test_a_blocking_read_outlives_the_command_timeout(redis_server: EmbeddedRedis) -> None:
    block_ms = int((COMMAND_TIMEOUT_SEC + 0.3) * 1000)  # longer than a plain client allows
    reader = create_redis(redis_server.url, name="reader", block_sec=block_ms / 1000)
    # What redis-py's defaults would do with a command-sized timeout (no retries, to keep it short).
    plain = Redis.from_url(
        redis_server.url, socket_timeout=COMMAND_TIMEOUT_SEC, retry=Retry(NoBackoff(), 0)
    )
    try:
        await reader.xgroup_create("blocking-test", "g", id="$", mkstream=True)
        started = time.monotonic()
        reply = await reader.xreadgroup("g", "c", {"blocking-test": ">"}, count=1, block=block_ms)
        assert not reply  # nothing arrived: an empty answer, not an error
        assert time.monotonic() - started >= block_ms / 1000 - 0.05  # it really blocked
        with pytest.raises(RedisTimeoutError):  # what the factory's margin prevents
            await plain.xreadgroup("g", "c", {"blocking-test": ">"}, count=1, block=block_ms)
    finally:
        await reader.aclose()
        await plain.aclose()
    assert K.PLAN_STREAM != "blocking-test"


async def test_a_unix_socket_url_connects(tmp_path: Path) -> None:
    """``unix://`` is a documented URL form: a client made for one must work, not fail at
    its first command on a TCP-only option."""
    sock = tmp_path / "redis.sock"
    server = EmbeddedRedis(extra_args=("--unixsocket", str(sock), "--unixsocketperm", "700"))
    server.start()
    try:
        client = create_redis(f"unix://{sock}", name="unix-test")
        try:
            assert await client.set("unix-key", "1") is True
            assert await client.get("unix-key") == "1"
        finally:
            await client.aclose()
    finally:
        server.close()
