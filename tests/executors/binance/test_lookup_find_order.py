"""BinanceExecutor.find_order: before a plan ends without an order, an order that
Redis lost the record of is found (exchange_truth.py); nothing is ever sent."""

from __future__ import annotations

import threading
import time

from prometheus_client import REGISTRY

from apply_layer.core.statuses import StepStatus
from apply_layer.executors.base import OrderRef
from apply_layer.executors.binance.executor import BinanceExecutor
from tests.executors.binance.executor_helpers import POLICY, posts, request
from tests.fake_binance import ORDER, FakeBinance, unknown_503


def unresolved() -> float:
    labels = {"resolution": "unresolved"}
    return REGISTRY.get_sample_value("apply_exchange_unknown_fate_total", labels) or 0.0


REF = OrderRef("p1", "BTCUSDT", "CLOSE_FULL", request().client_order_id)


async def test_an_order_that_exists_is_adopted_with_its_fill(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    placed = fake.add_order("BTCUSDT", "SELL", "0.010", REF.client_order_id)
    found = await ex.find_order(REF, int(time.time() * 1000) - 60_000)
    assert found is not None and found.status == StepStatus.EXECUTED and found.adopted
    assert found.order_id == str(placed["orderId"]) and str(found.executed_qty) == "0.010"
    assert found.step == "CLOSE_FULL" and "adopted" in found.message
    assert posts(fake) == 0


async def test_no_order_is_believed_only_once_an_unseen_send_could_no_longer_execute(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    assert await ex.find_order(REF, int(time.time() * 1000) - 60_000) is None
    # Redis changed just now: a lost send may still land inside its recvWindow.
    changed_at = int(time.time() * 1000)
    timer = threading.Timer(0.2, fake.add_order, ("BTCUSDT", "SELL", "0.010", REF.client_order_id))
    timer.start()
    found = await ex.find_order(REF, changed_at)
    timer.join()
    assert found is not None and found.adopted
    assert posts(fake) == 0


async def test_an_exchange_that_cannot_be_asked_is_an_unknown_fate(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("GET", ORDER, *[unknown_503(place=False)] * (POLICY.max_lookup_errors + 1))
    before = unresolved()
    found = await ex.find_order(REF, int(time.time() * 1000) - 60_000)
    assert unresolved() == before + 1  # ApplyLayerOrderFateUnknown: a person must look
    assert found is not None
    assert (found.status, found.error) == (StepStatus.FAILED, "order_unknown")
    assert REF.client_order_id in found.message
    assert posts(fake) == 0
