"""What APPLY_REDIS_WAIT_REPLICAS costs per send record (primary and replica on loopback).

    .venv/bin/python -m bench.wait_replicas [--records 2000] [--rounds 3]   # from the repo root

A private primary and replica (``tests.harness.PrimaryAndReplica``); the
journal's order log records ``--records`` sends one after the other, with
``WAIT`` off (the attempt script through the batcher, as the daemon sends
it) and with ``WAIT 1`` (the script and WAIT in one round trip on one
connection), rounds alternating. Prints the latency of one record (median,
p90, p99) and this process's CPU per record. On a LAN the replica's
acknowledgement adds about one network round trip more.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from decimal import Decimal

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import create_redis
from apply_layer.store.journal import Journal
from tests.harness import PrimaryAndReplica

LEASE_HOLDER = "bench:lease"  # the symbol lease the records are fenced by


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(client: Redis, wait: int, n: int, tag: str) -> tuple[list[float], float]:
    batcher = ScriptBatcher(client)
    journal = Journal(
        client, dedupe_ttl_sec=300, journal_ttl_sec=3600, scripts=batcher, wait_replicas=wait
    )
    await client.set(K.symbol_lease("BTCUSDT"), LEASE_HOLDER, px=600_000)
    times = []
    cpu0 = time.process_time()
    for i in range(n):
        plan = f"{tag}{i}"
        await client.hset(K.journal(plan), "state", "permitted")
        log = journal.order_log(plan, f"alF-{plan}", symbol="BTCUSDT", lease_token=LEASE_HOLDER)
        t0 = time.perf_counter()
        await log.record_attempt(i, quantity=Decimal("0.01"), side="SELL")
        times.append((time.perf_counter() - t0) * 1000)
    cpu = (time.process_time() - cpu0) / n * 1000
    await batcher.aclose()
    return times, cpu


async def main_async(args: argparse.Namespace) -> None:
    async with PrimaryAndReplica(sync_timeout=20.0) as (primary, _):
        client = create_redis(primary.url, name="bench:wait")
        try:
            await _compare(client, args)
        finally:
            await client.aclose()


async def _compare(client: Redis, args: argparse.Namespace) -> None:
    """Rounds of ``--records`` records, without WAIT and with WAIT 1, alternating."""
    results: dict[int, tuple[list[float], list[float]]] = {0: ([], []), 1: ([], [])}
    await measure(client, 1, 200, "warm")
    for r in range(args.rounds):
        for wait in (0, 1):
            times, cpu = await measure(client, wait, args.records, f"w{wait}r{r}-")
            results[wait][0].extend(times)
            results[wait][1].append(cpu)
    print(f"{args.records * args.rounds} records each way, primary and replica on loopback")
    for wait, (times, cpus) in results.items():
        label = "WAIT 1 after the record" if wait else "no WAIT (batched script)"
        print(
            f"{label:26} median {statistics.median(times):6.3f} ms  "
            f"p90 {pct(times, 0.9):6.3f}  p99 {pct(times, 0.99):6.3f}  "
            f"CPU {statistics.mean(cpus):6.3f} ms/record"
        )
    diff = statistics.median(results[1][0]) - statistics.median(results[0][0])
    print(f"cost of WAIT 1: {diff:+.3f} ms median per send record")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.wait_replicas", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
