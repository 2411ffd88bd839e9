"""What the lookup before a first send costs per order (testnet executor, fake Binance).

    .venv/bin/python -m bench.order_lookup [--orders 400] [--rounds 3]   # from the repo root

The fake Binance of the tests runs in a child process on loopback (so this
process's CPU is the executor's alone), with persistent HTTP/1.1
connections as Binance keeps them. Each order is one ``execute`` of the
testnet executor with an empty journal, as in production: the adoption
check (``GET /fapi/v1/order`` answering ``-2013``), the position read, the
send. The same run with the check switched off (a subclass, here only)
gives the difference. Rounds alternate the two, and the lone lookup is timed
apart. Figures: latency per order (median, p90, p99) and this process's CPU
per order. On a real network the check adds one round trip to Binance and
one request of weight 1 (of 2,400 a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from decimal import Decimal

from pydantic import SecretStr

from apply_layer.core.errors import OrderNotFound
from apply_layer.core.outcomes import StepResult
from apply_layer.executors.base import OrderRequest
from apply_layer.executors.binance.executor import BinanceExecutor
from apply_layer.executors.binance.readahead import ReadAhead
from apply_layer.logs import setup_logging
from tests.fake_binance import API_KEY, API_SECRET
from tests.harness import MemoryLog

# The child finds ``tests`` as this process does: same working directory, same environment.
SERVER = """
import sys, time
from decimal import Decimal
from tests.fake_binance import FakeBinance
with FakeBinance(keep_alive=True) as fake:
    fake.positions["BTCUSDT"] = Decimal(10**9)
    print(fake.url, flush=True)
    sys.stdin.read()
"""


class NoCheck(BinanceExecutor):
    """The executor without the adoption check: for this measurement only."""

    async def _adopt_existing(
        self, order: OrderRequest, unseen_ms: int, ahead: ReadAhead | None = None
    ) -> StepResult | None:
        return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_orders(
    cls: type[BinanceExecutor], url: str, n: int, tag: str
) -> tuple[list[float], float]:
    ex = cls(
        base_url=url,
        api_key=SecretStr(API_KEY),
        api_secret=SecretStr(API_SECRET),
        allowlist=("BTCUSDT",),
    )
    await ex.start()
    times = []
    cpu0 = time.process_time()
    for i in range(n):
        order = OrderRequest(
            f"{tag}{i}", "BTCUSDT", "CLOSE_FULL", Decimal(100), Decimal("0.001"), Decimal(10**9)
        )
        t0 = time.perf_counter()
        result = await ex.execute(order, MemoryLog())  # an empty journal
        times.append((time.perf_counter() - t0) * 1000)
        assert result.executed, result
    cpu = (time.process_time() - cpu0) / n * 1000
    await ex.close()
    return times, cpu


async def run_lookups(url: str, n: int) -> tuple[list[float], float]:
    ex = BinanceExecutor(base_url=url, api_key=SecretStr(API_KEY), api_secret=SecretStr(API_SECRET))
    await ex.start()
    times = []
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        with contextlib.suppress(OrderNotFound):
            await ex.client.query_order("BTCUSDT", f"absent{i}")
        times.append((time.perf_counter() - t0) * 1000)
    cpu = (time.process_time() - cpu0) / n * 1000
    await ex.close()
    return times, cpu


def line(label: str, times: list[float], cpu_ms: float) -> str:
    return (
        f"{label:34} median {statistics.median(times):6.2f} ms  p90 {pct(times, 0.9):6.2f}  "
        f"p99 {pct(times, 0.99):6.2f}  CPU {cpu_ms:5.2f} ms/order"
    )


async def main_async(args: argparse.Namespace, url: str) -> None:
    with_check: list[float] = []
    without: list[float] = []
    cpu_with: list[float] = []
    cpu_without: list[float] = []
    await run_orders(BinanceExecutor, url, 50, "warm")  # warm-up, not counted
    for r in range(args.rounds):
        t, c = await run_orders(BinanceExecutor, url, args.orders, f"c{r}-")
        with_check += t
        cpu_with.append(c)
        t, c = await run_orders(NoCheck, url, args.orders, f"n{r}-")
        without += t
        cpu_without.append(c)
    lookups, cpu_lookup = await run_lookups(url, args.orders)
    n = args.orders * args.rounds
    print(f"{n} orders each way, {args.rounds} alternating rounds; fake Binance on loopback")
    print(line("execute, with the check", with_check, statistics.mean(cpu_with)))
    print(line("execute, without it", without, statistics.mean(cpu_without)))
    print(line("the lookup alone (-2013)", lookups, cpu_lookup))
    diff = statistics.median(with_check) - statistics.median(without)
    cpu_diff = statistics.mean(cpu_with) - statistics.mean(cpu_without)
    print(f"cost of the check: {diff:+.2f} ms median latency, {cpu_diff:+.2f} ms CPU per order")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.order_lookup", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--orders", type=int, default=400, help="orders per round and way")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup_logging("WARNING", "console")
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        asyncio.run(main_async(args, server.stdout.readline().strip()))
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
