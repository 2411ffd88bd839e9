"""The daemon tests' fake exchange (a FakeBinance holding a 0.012 BTCUSDT long), and a
client of the test's own Redis server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from tests.fake_binance import FakeBinance


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance() as exchange:
        exchange.positions["BTCUSDT"] = Decimal("0.012")
        yield exchange


@pytest.fixture
async def client(own_redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    """A client of the test's own server (``own_redis_server``), which it may stop."""
    redis = create_redis(own_redis_server.url, name="tests")
    yield redis
    await redis.aclose()
