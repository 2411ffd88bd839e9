#!/usr/bin/env python3
"""What APPLY_REDIS_WAIT_REPLICAS costs per send record (primary and replica on loopback).

    .venv/bin/python scripts/bench_wait.py [--records 2000] [--rounds 3]

A private primary and replica (``REPLICAOF``, both ``EmbeddedRedis``); the
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
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from apply_layer import keys as K  # noqa: E402
from apply_layer.batching import ScriptBatcher  # noqa: E402
from apply_layer.embedded_redis import EmbeddedRedis  # noqa: E402
from apply_layer.journal import Journal  # noqa: E402
from apply_layer.redis_client import create_redis  # noqa: E402

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
    primary = EmbeddedRedis(extra_args=("--repl-diskless-sync-delay", "0"))
    replica = EmbeddedRedis()
    primary.start()
    replica.start()
    client = create_redis(primary.url, name="bench:wait")
    to_replica = Redis(port=replica.port, decode_responses=True)
    try:
        await to_replica.replicaof("127.0.0.1", primary.port)
        for _ in range(400):
            if (await to_replica.info("replication")).get("master_link_status") == "up":
                break
            await asyncio.sleep(0.05)
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
    finally:
        await to_replica.aclose()
        await client.aclose()
        replica.close()
        primary.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
