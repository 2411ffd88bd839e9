"""The service in-process: per-symbol serialization, sd_notify, once-only results."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from apply_layer import keys as K
from apply_layer.embedded_redis import EmbeddedRedis
from apply_layer.errors import RetryLater
from apply_layer.executors.base import CheckLine, OrderLog, OrderRequest, StepResult
from apply_layer.journal import Journal
from apply_layer.service import ApplyService
from apply_layer.settings import Settings, load_settings
from tests.harness import grant, publish_plan, wait_result


class SlowExecutor:
    """Fills after a pause, recording how many orders per symbol overlap."""

    mode = "paper"

    def __init__(self) -> None:
        self.active: defaultdict[str, int] = defaultdict(int)
        self.max_per_symbol: defaultdict[str, int] = defaultdict(int)
        self.total = 0
        self.max_total = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def preflight(self) -> list[CheckLine]:
        return []

    async def execute(self, order: OrderRequest, log: OrderLog) -> StepResult:
        await log.record_attempt(0, quantity=order.safe_qty, side="SELL")
        self.active[order.symbol] += 1
        self.total += 1
        self.max_per_symbol[order.symbol] = max(
            self.max_per_symbol[order.symbol], self.active[order.symbol]
        )
        self.max_total = max(self.max_total, self.total)
        await asyncio.sleep(0.2)
        self.active[order.symbol] -= 1
        self.total -= 1
        return StepResult(
            order.step,
            "EXECUTED",
            order_id="1",
            client_order_id=order.client_order_id,
            side="SELL",
            quantity=order.safe_qty,
            executed_qty=order.safe_qty,
            avg_price=Decimal(1),
        )


def settings_for(server: EmbeddedRedis, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": server.url,
        "mode": "paper",
        "metrics_port": 0,
        "poll_sec": 0.5,
        "allowlist": "BTCUSDT,ETHUSDT",
        "consumer_name": "inproc",
    }
    base.update(overrides)
    return load_settings(**base)


async def test_one_execution_per_symbol_at_a_time(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    executor = SlowExecutor()
    service = ApplyService(settings_for(redis_server), executor=executor)
    runner = asyncio.create_task(service.run())
    try:
        for _ in range(100):
            if await redis.exists(K.PLAN_STREAM):
                break
            await asyncio.sleep(0.02)
        plans = [(f"b{i}", "BTCUSDT") for i in range(3)] + [(f"e{i}", "ETHUSDT") for i in range(3)]
        for plan_id, symbol in plans:
            await grant(redis, plan_id, symbol=symbol)
            await publish_plan(redis, plan_id, symbol=symbol)
        for plan_id, _ in plans:
            assert (await wait_result(redis, plan_id))["status"] == "EXECUTED"
    finally:
        service.request_stop()
        assert await runner == 0
    assert dict(executor.max_per_symbol) == {"BTCUSDT": 1, "ETHUSDT": 1}
    assert executor.max_total == 2  # different symbols did run side by side


async def test_publish_is_once_only(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=60, journal_ttl_sec=60)
    await journal.claim("once", "BTCUSDT", "1-0")
    first = await journal.publish(
        "once", "BTCUSDT", "blocked", {"plan_id": "once", "status": "BLOCKED"}
    )
    again = await journal.publish(
        "once", "BTCUSDT", "blocked", {"plan_id": "once", "status": "BLOCKED"}
    )
    assert first[1] is True and again == (first[0], False)
    assert await redis.xlen(K.RESULT_STREAM) == 1
    with pytest.raises(ValueError, match="not a final state"):
        await journal.publish("once", "BTCUSDT", "permitted", {})


async def test_a_send_is_never_recorded_without_authorization_and_the_lease(redis: Redis) -> None:
    journal = Journal(redis, dedupe_ttl_sec=60, journal_ttl_sec=60)
    await journal.claim("unauth", "BTCUSDT", "1-0")
    await redis.set(K.symbol_lease("BTCUSDT"), "mine")
    log = journal.order_log("unauth", "al75-unauth", symbol="BTCUSDT", lease_token="mine")
    with pytest.raises(RetryLater, match="not permitted"):
        await log.record_attempt(1, quantity=Decimal(1), side="SELL")
    await redis.hset(K.journal("unauth"), "state", "permitted")
    fenced = journal.order_log("unauth", "al75-unauth", symbol="BTCUSDT", lease_token="stale")
    with pytest.raises(RetryLater, match="FENCED"):
        await fenced.record_attempt(1, quantity=Decimal(1), side="SELL")
    assert await log.attempts() == []
    await log.record_attempt(5, quantity=Decimal(1), side="SELL")
    await log.record_attempt(9, quantity=Decimal(1), side="SELL")
    assert await log.attempts() == [5, 9]
    assert (await redis.hget(K.journal("unauth"), "state")) == "submitting"


async def test_sd_notify_ready_watchdog_stopping(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    service = ApplyService(settings_for(redis_server))
    runner = asyncio.create_task(service.run())
    messages: list[str] = []
    loop = asyncio.get_running_loop()
    try:
        for _ in range(50):  # bounded: a few datagrams arrive in about a second
            if any("WATCHDOG=1" in m for m in messages):
                break
            messages.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)).decode())
    finally:
        service.request_stop()
        assert await runner == 0
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        sock.close()
    assert messages[0].startswith("READY=1")
    assert "STOPPING=1" in messages


async def test_the_paper_exchange_remembers_a_bounded_number_of_orders() -> None:
    from apply_layer.executors import paper

    class Log:
        async def attempts(self) -> list[int]:
            return []

        async def record_attempt(self, sent_at_ms: int, *, quantity: Decimal, side: str) -> None:
            return None

        def unrecorded_until_ms(self) -> int:
            return 0

    exchange = paper.PaperExecutor()
    exchange.positions["BTCUSDT"] = Decimal(10**9)
    first = OrderRequest("p0", "BTCUSDT", "CLOSE_FULL", Decimal(100), Decimal("0.001"), None)
    assert (await exchange.execute(first, Log())).status == "EXECUTED"
    again = await exchange.execute(first, Log())  # a resend: the same order, no second fill
    assert again.order_id == exchange.orders[first.client_order_id].order_id
    for n in range(1, paper.REMEMBERED_ORDERS + 5):
        req = OrderRequest(f"p{n}", "BTCUSDT", "CLOSE_FULL", Decimal(100), Decimal("0.001"), None)
        await exchange.execute(req, Log())
    assert len(exchange.orders) == paper.REMEMBERED_ORDERS
    assert first.client_order_id not in exchange.orders  # the oldest went first
