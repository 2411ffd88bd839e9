"""Shared fixtures: a real redis-server per session, a clean database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from apply_layer.embedded_redis import EmbeddedRedis
from apply_layer.logs import setup_logging
from apply_layer.redis_client import create_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real server for the session (notifications off, like a default install)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def own_redis_server() -> Iterator[EmbeddedRedis]:
    """A server of the test's own, to stop, kill and restart at will."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = create_redis(redis_server.url, name="tests")
    await client.flushall()
    await client.config_set("notify-keyspace-events", "")
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def _logging() -> None:
    setup_logging("DEBUG", "console")
