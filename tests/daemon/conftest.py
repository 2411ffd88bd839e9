"""The daemon tests' fake exchange: a FakeBinance holding a 0.012 BTCUSDT long."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.fake_binance import FakeBinance


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance() as exchange:
        exchange.positions["BTCUSDT"] = Decimal("0.012")
        yield exchange
