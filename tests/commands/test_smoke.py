"""``apply-layer smoke`` end to end: the CLI in a child process, the fake Binance over HTTP.

The env file holds the keys and, as on a real host, the live Redis's URL:
that Redis (the test server's database 0, with a plan stream of its own)
must come out of every run untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis
from tests.fake_binance import API_KEY, API_SECRET, ORDER, FakeBinance, rejected


@dataclass
class Run:
    code: int
    out: str
    err: str
    log: str


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance() as exchange:
        yield exchange


@pytest.fixture
async def live(redis: Redis) -> dict[str, str]:
    """The live system's Redis, as the env file names it: a plan stream in use."""
    await redis.xadd(K.PLAN_STREAM, {"plan_id": "live-1", "symbol": "BTCUSDT"})
    await redis.set("quantum:permit:live-1", json.dumps({"granted": True}))
    return await keys_and_types(redis)


async def keys_and_types(redis: Redis) -> dict[str, str]:
    return {str(key): str(await redis.type(key)) async for key in redis.scan_iter()}


async def untouched(redis: Redis, before: dict[str, str]) -> None:
    assert await keys_and_types(redis) == before
    assert await redis.xlen(K.PLAN_STREAM) == 1


def smoke(
    tmp_path: Path,
    fake: FakeBinance,
    live_url: str,
    *args: str,
    keys: bool = True,
    base_url: str | None = None,
) -> Run:
    env_file = tmp_path / "apply-layer.env"
    lines = [f"APPLY_REDIS_URL={live_url}", "APPLY_ALLOWLIST=BTCUSDT,ETHUSDT", "APPLY_MODE=dry_run"]
    if keys:
        lines += [f"APPLY_BINANCE_API_KEY={API_KEY}", f"APPLY_BINANCE_API_SECRET={API_SECRET}"]
    env_file.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLY_", "BINANCE_"))}
    env["APPLY_BINANCE_BASE_URL"] = base_url or fake.url
    env["APPLY_BINANCE_RECV_WINDOW_MS"] = "2000"
    proc = subprocess.run(
        [sys.executable, "-m", "apply_layer", "--env-file", str(env_file), "smoke", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    log = tmp_path / "apply-layer-smoke.log"
    return Run(proc.returncode, proc.stdout, proc.stderr, log.read_text() if log.exists() else "")


def no_secrets(run: Run) -> None:
    for text in (run.out, run.err, run.log):
        assert API_KEY not in text and API_SECRET not in text


@pytest.mark.parametrize("where", ["embedded", "given"])
async def test_smoke_closes_half_the_position_and_says_each_step(
    tmp_path: Path,
    fake: FakeBinance,
    redis_server: EmbeddedRedis,
    redis: Redis,
    live: dict[str, str],
    where: str,
) -> None:
    fake.positions["BTCUSDT"] = Decimal("0.012")
    extra = ["--redis-url", redis_server.url.replace("/0", "/5")] if where == "given" else []
    run = smoke(tmp_path, fake, redis_server.url, *extra)
    assert run.code == 0, run.out + run.err
    (order,) = fake.orders
    assert order["clientOrderId"].startswith("al50-smoke-")
    assert (order["side"], order["origQty"], order["reduceOnly"]) == ("SELL", "0.006", True)
    assert fake.positions["BTCUSDT"] == Decimal("0.006")
    out = run.out
    assert "position before: 0.012 BTCUSDT (long)" in out
    assert "governor permit consumed" in out and "p33 permit consumed" in out
    assert f"order: id {order['orderId']} client order id {order['clientOrderId']} SELL" in out
    assert "EXECUTED: executed 0.006" in out
    assert "position after: 0.006 BTCUSDT (long)" in out
    assert out.rstrip().splitlines()[-1].startswith("smoke passed")
    assert "binance_order_send" in run.log  # the daemon's own log went to the file
    no_secrets(run)
    await untouched(redis, live)


async def test_smoke_opens_a_tagged_position_first_with_open(
    tmp_path: Path,
    fake: FakeBinance,
    redis_server: EmbeddedRedis,
    redis: Redis,
    live: dict[str, str],
) -> None:
    run = smoke(tmp_path, fake, redis_server.url, "--open", "0.004")
    assert run.code == 0, run.out + run.err
    opened, closed = fake.orders
    assert opened["clientOrderId"].startswith("apply-smoke-open-")
    assert (opened["side"], opened["origQty"], opened["reduceOnly"]) == ("BUY", "0.004", False)
    assert (closed["side"], closed["origQty"], closed["reduceOnly"]) == ("SELL", "0.002", True)
    assert fake.positions["BTCUSDT"] == Decimal("0.002")
    assert "position before: 0 BTCUSDT (flat)" in run.out
    assert f"opened: order {opened['orderId']} client order id {opened['clientOrderId']}" in run.out
    assert "position now: 0.004 BTCUSDT (long)" in run.out
    assert "position after: 0.002 BTCUSDT (long)" in run.out
    no_secrets(run)
    await untouched(redis, live)


async def test_a_close_that_does_not_execute_fails_the_smoke(
    tmp_path: Path,
    fake: FakeBinance,
    redis_server: EmbeddedRedis,
    redis: Redis,
    live: dict[str, str],
) -> None:
    fake.positions["BTCUSDT"] = Decimal("-0.010")  # a short: the close is a BUY
    fake.inject("POST", ORDER, rejected(-2022, "ReduceOnly Order is rejected."))
    run = smoke(tmp_path, fake, redis_server.url)
    assert run.code == 1, run.out + run.err
    assert "position before: -0.01 BTCUSDT (short)" in run.out
    assert "result: REJECTED (error exchange_rejected:-2022" in run.out
    assert "position after: -0.01 BTCUSDT (short)" in run.out
    assert run.out.rstrip().splitlines()[-1].startswith("smoke FAILED")
    assert fake.orders == [] and len(fake.requests("POST", ORDER)) == 1
    await untouched(redis, live)


async def test_without_keys_it_says_so_and_exits_2(
    tmp_path: Path,
    fake: FakeBinance,
    redis_server: EmbeddedRedis,
    redis: Redis,
    live: dict[str, str],
) -> None:
    run = smoke(tmp_path, fake, redis_server.url, keys=False)
    assert run.code == 2 and run.out == ""
    assert "no testnet API key" in run.err and "APPLY_BINANCE_API_KEY" in run.err
    assert fake.seen == []
    await untouched(redis, live)


async def test_it_refuses_an_exchange_that_is_not_the_testnet(
    tmp_path: Path, fake: FakeBinance, redis_server: EmbeddedRedis
) -> None:
    run = smoke(tmp_path, fake, redis_server.url, base_url="https://fapi.binance.com")
    assert run.code == 2 and "is not the testnet" in run.err


async def test_it_refuses_a_redis_whose_plan_stream_is_in_use(
    tmp_path: Path,
    fake: FakeBinance,
    redis_server: EmbeddedRedis,
    redis: Redis,
    live: dict[str, str],
) -> None:
    fake.positions["BTCUSDT"] = Decimal("0.012")
    run = smoke(tmp_path, fake, redis_server.url, "--redis-url", redis_server.url, "--open", "1")
    assert run.code == 1
    assert f"already holds {K.PLAN_STREAM}" in run.err and "the smoke would mix" in run.err
    assert fake.orders == [] and fake.seen == []
    await untouched(redis, live)


async def test_with_no_position_and_no_open_nothing_is_sent(
    tmp_path: Path, fake: FakeBinance, redis_server: EmbeddedRedis
) -> None:
    run = smoke(tmp_path, fake, redis_server.url)
    assert run.code == 1
    assert "holds no BTCUSDT position" in run.err and "--open QTY" in run.err
    assert fake.requests("POST", ORDER) == []
