"""The service in-process: per-symbol serialization, sd_notify, once-only results.

Tests by name: daemon/service.py as ``apply-layer run`` (commands/run.py) starts it, and
its sd_notify (daemon/systemd.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.errors import RetryLater
from apply_layer.daemon.service import ApplyService
from apply_layer.executors.base import OrderRequest
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.journal import Journal
from apply_layer.store.results import PublishReply
from tests.harness import MemoryLog, SlowExecutor, grant, publish_plan, settings_for, wait_result


async def started(service: ApplyService, redis: Redis) -> asyncio.Task[int]:
    """Run ``service``; return once its consumer group exists (it is created at "$")."""
    runner = asyncio.create_task(service.run())
    for _ in range(250):
        if await redis.exists(K.PLAN_STREAM):
            return runner
        await asyncio.sleep(0.02)
    raise AssertionError("the service never created its consumer group")


async def test_one_execution_per_symbol_at_a_time(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    executor = SlowExecutor()
    service = ApplyService(settings_for(redis_server), executor=executor)
    runner = await started(service, redis)
    try:
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
    first = await journal.results.publish(
        "once", "BTCUSDT", "blocked", {"plan_id": "once", "status": "BLOCKED"}
    )
    again = await journal.results.publish(
        "once", "BTCUSDT", "blocked", {"plan_id": "once", "status": "BLOCKED"}
    )
    assert first.new is True and again == PublishReply(first.result_id, False)
    assert await redis.xlen(K.RESULT_STREAM) == 1
    with pytest.raises(ValueError, match="not a final state"):
        await journal.results.publish("once", "BTCUSDT", "permitted", {})


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

    exchange = paper.PaperExecutor()
    exchange.positions["BTCUSDT"] = Decimal(10**9)
    first = OrderRequest("p0", "BTCUSDT", "CLOSE_FULL", Decimal(100), Decimal("0.001"), None)
    assert (await exchange.execute(first, MemoryLog())).status == "EXECUTED"
    again = await exchange.execute(first, MemoryLog())  # a resend: the same order, no second fill
    assert again.order_id == exchange.orders[first.client_order_id].order_id
    for n in range(1, paper.REMEMBERED_ORDERS + 5):
        req = OrderRequest(f"p{n}", "BTCUSDT", "CLOSE_FULL", Decimal(100), Decimal("0.001"), None)
        await exchange.execute(req, MemoryLog())
    assert len(exchange.orders) == paper.REMEMBERED_ORDERS
    assert first.client_order_id not in exchange.orders  # the oldest went first


async def test_a_duplicate_is_counted_and_logged_once(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    from prometheus_client import REGISTRY
    from structlog.testing import capture_logs

    def duplicates() -> float:
        return REGISTRY.get_sample_value("apply_duplicates_total") or 0.0

    before = duplicates()
    service = ApplyService(settings_for(redis_server))
    with capture_logs() as logs:
        runner = await started(service, redis)
        try:
            await grant(redis, "twice")
            await publish_plan(redis, "twice")
            assert (await wait_result(redis, "twice"))["status"] == "EXECUTED"
            await publish_plan(redis, "twice")
            for _ in range(250):
                if duplicates() > before:
                    break
                await asyncio.sleep(0.02)
        finally:
            service.request_stop()
            assert await runner == 0
    assert duplicates() == before + 1
    lines = [e for e in logs if e["event"].startswith("duplicate plan=twice ")]
    assert [(e["event"], e["log_level"], e["first_status"]) for e in lines] == [
        ("duplicate plan=twice first_status=EXECUTED", "info", "EXECUTED")
    ]
    assert service.counts["duplicate"] == 1 and await redis.xlen(K.RESULT_STREAM) == 1


async def test_a_kill_switch_set_between_the_gate_and_the_lease_stops_the_order(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    """The gate allowed; the switch goes on before the order: BLOCKED, nothing sent."""
    executor = SlowExecutor()
    service = ApplyService(settings_for(redis_server), executor=executor)
    decide = service.gate.wait_and_consume

    async def decide_then_kill(plan_id: str, symbol: str) -> Any:
        decision = await decide(plan_id, symbol)
        await redis.set("quantum:global:kill_switch", "true")
        return decision

    service.gate.wait_and_consume = decide_then_kill  # type: ignore[method-assign,assignment]
    runner = await started(service, redis)
    try:
        await grant(redis, "flip")
        await publish_plan(redis, "flip")
        result = await wait_result(redis, "flip")
    finally:
        service.request_stop()
        assert await runner == 0
    assert (result["status"], result["error"], result["decision"]) == (
        "BLOCKED",
        "kill_switch",
        "BLOCKED",
    )
    assert executor.max_total == 0  # the executor never ran
    journal = await redis.hgetall(K.journal("flip"))
    assert journal["gate_status"] == "ALLOW" and "order.attempts" not in journal


async def test_a_plan_from_the_future_is_rejected(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    service = ApplyService(settings_for(redis_server, plan_max_age_sec=60))
    runner = await started(service, redis)
    try:
        await grant(redis, "future")
        await grant(redis, "soon")
        await publish_plan(redis, "future", age=-120)  # two minutes ahead: a broken clock
        await publish_plan(redis, "soon", age=-30)  # within the allowed skew
        future, soon = await wait_result(redis, "future"), await wait_result(redis, "soon")
    finally:
        service.request_stop()
        assert await runner == 0
    assert (future["status"], future["error"]) == ("REJECTED", "invalid_plan:timestamp_in_future")
    assert soon["status"] == "EXECUTED"
    assert await redis.exists(K.ISSUERS["p33"].key("future")) == 1  # its permits untouched
