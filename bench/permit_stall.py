"""How long one hostile permit holds Redis (issue 21, finding 3), at full size.

Plants a ``--string-mb`` MB string as a P3.3 permit, a ``--hash-fields``
field HASH as a governor permit, a string of the same size as the kill switch
or as a governor block marker, then runs the real gate (``gate.lua`` by
EVALSHA: the same script the function library holds) on a plan that
reads them, one plan per case. Figures per case:

* the gate script's time in Redis' own SLOWLOG (Redis is single-threaded:
  that long, every other client waits);
* the worst latency of a ``PING`` sent every millisecond by another client
  while the gate runs (what every other user of the Redis sees);
* for comparison, what writing the hostile value cost Redis (its SETRANGE).

    .venv/bin/python -m bench.permit_stall [--string-mb 400] [--hash-fields 2000000]

The issue's figures (the old script) were 2.7 s for 400 MB and 4.6 s for two
million fields; docs/SECURITY.md records this script's.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.keys import ISSUERS
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GateConfig, wait_and_consume_permits

SYM = "BTCUSDT"


CASES = {
    # plan id: what is planted where the gate reads, for that plan alone
    "string": "a P3.3 permit string of --string-mb MB",
    "hash": "a governor permit HASH of --hash-fields fields",
    "marker": "a governor block marker string of --string-mb MB",
    "kill": "a kill switch string of --string-mb MB (a huge value is off)",
}


async def _grow(redis: Redis, key: str, head: str, size: int) -> int:
    """A ``size``-byte string grown in Redis (SETRANGE); what writing it cost Redis (us)."""
    await redis.set(key, head)
    await redis.slowlog_reset()
    await redis.setrange(key, size - 1, "x")
    entries: list[dict[str, Any]] = await redis.slowlog_get(10)
    return max(int(e["duration"]) for e in entries if bytes(e["command"]).startswith(b"SETRANGE"))


async def _plant(redis: Redis, case: str, string_mb: int, hash_fields: int) -> int:
    plan, size = f"stall-{case}", string_mb << 20
    if case == "string":
        return await _grow(redis, ISSUERS["p33"].key(plan), '{"allow": true', size)
    if case == "marker":
        return await _grow(redis, K.governor_block(plan), "stop", size)
    if case == "kill":
        return await _grow(redis, "quantum:kill", "1", size)
    gov = ISSUERS["governor"].key(plan)
    await redis.hset(gov, mapping={"granted": "true", "symbol": SYM})
    step = 50_000
    for start in range(0, hash_fields, step):
        end = min(hash_fields, start + step)
        await redis.hset(gov, mapping={f"f{i}": "v" for i in range(start, end)})
    return 0


async def _ping_worst(redis: Redis, stop: asyncio.Event) -> float:
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        await redis.ping()
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.001)
    return worst * 1000


async def measure_case(url: str, case: str, string_mb: int, hash_fields: int) -> dict[str, Any]:
    """Plant one hostile value, run the gate on its plan; the gate's cost to Redis."""
    redis = create_redis(url, name="bench:stall")
    pinger = create_redis(url, name="bench:ping")
    try:
        await redis.flushall()
        await redis.config_set("slowlog-log-slower-than", 0)
        planted_us = await _plant(redis, case, string_mb, hash_fields)
        await asyncio.sleep(0.5)  # let Redis settle (jemalloc, the lazy-free thread)
        await redis.slowlog_reset()
        await pinger.ping()
        stop = asyncio.Event()
        pings = asyncio.create_task(_ping_worst(pinger, stop))
        await asyncio.sleep(0.05)
        result = await wait_and_consume_permits(
            redis, f"stall-{case}", SYM, GateConfig(wait_ms=0, step_ms=20)
        )
        await asyncio.sleep(0.05)
        stop.set()
        ping_ms = await pings
        entries: list[dict[str, Any]] = await redis.slowlog_get(10_000)
        gate = [e for e in entries if bytes(e["command"]).startswith(b"EVALSHA")]
        return {
            "case": CASES[case],
            "decision": result.error,
            "write_us": planted_us,
            "gate_us": max(int(e["duration"]) for e in gate),
            "worst_ping_ms": round(ping_ms, 2),
        }
    finally:
        await redis.aclose()
        await pinger.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--string-mb", type=int, default=400)
    parser.add_argument("--hash-fields", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        for _ in range(args.rounds):
            for case in CASES:
                row = asyncio.run(measure_case(server.url, case, args.string_mb, args.hash_fields))
                print(
                    f"{row['case']:<52} gate {row['gate_us'] / 1000:8.2f} ms  "
                    f"worst PING {row['worst_ping_ms']:8.2f} ms  "
                    f"(writing it: {row['write_us'] / 1000:.1f} ms)  {row['decision']}"
                )


if __name__ == "__main__":
    main()
