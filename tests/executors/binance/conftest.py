"""The executor tests' fixtures: a fake exchange holding a 0.010 BTCUSDT long, and
executors on it (``make`` builds one with overrides, ``ex`` is one started).

test_binance_api.py and test_binance_limits.py set up their own ``fake`` (and
``ex``), which take precedence in those modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from apply_layer.executors.binance.executor import BinanceExecutor
from tests.executors.binance.executor_helpers import POLICY, RECV_WINDOW, Make
from tests.fake_binance import API_KEY, API_SECRET, FakeBinance


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance() as server:
        server.positions["BTCUSDT"] = Decimal("0.010")
        yield server


@pytest.fixture
async def make(fake: FakeBinance) -> AsyncIterator[Make]:
    made: list[BinanceExecutor] = []

    def factory(**overrides: Any) -> BinanceExecutor:
        kwargs: dict[str, Any] = {
            "base_url": fake.url,
            "api_key": SecretStr(API_KEY),
            "api_secret": SecretStr(API_SECRET),
            "recv_window_ms": RECV_WINDOW,
            "allowlist": ("BTCUSDT", "ETHUSDT"),
            "http_timeout_sec": httpx.Timeout(1.0, read=0.3),
            "policy": POLICY,
        }
        executor = BinanceExecutor(**(kwargs | overrides))
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        await executor.close()


@pytest.fixture
async def ex(make: Make) -> BinanceExecutor:
    executor = make()
    await executor.start()
    return executor
