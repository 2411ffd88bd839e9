"""CPU per script call: redis-py one command at a time against ``ScriptBatcher``.

    .venv/bin/python -m bench.script_calls [--tasks 96] [--calls 5] [--rounds 40]

The micro-benchmark behind ``batching.py``: ``--tasks`` tasks each run
``--calls`` scripts one after the other, ``--rounds`` times, on a private
``redis-server``; prints calls/s and this process's CPU per call for both,
twice each.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import create_redis

SCRIPT = "return {KEYS[1], ARGV[1], 'x'}"


async def measure(url: str, batched: bool, args: argparse.Namespace) -> tuple[float, float]:
    redis = create_redis(url, name="bench:calls")
    batcher = ScriptBatcher(redis)
    host: Any = batcher if batched else redis
    script = host.register_script(SCRIPT)
    await redis.script_load(SCRIPT)

    async def worker(i: int) -> None:
        for _ in range(args.rounds):
            for j in range(args.calls):
                await script(keys=[f"k{i}"], args=[j])

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.tasks)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await batcher.aclose()
    await redis.aclose()
    n = args.tasks * args.calls * args.rounds
    return n / wall, cpu / n * 1e6


async def main_async(args: argparse.Namespace) -> None:
    with EmbeddedRedis() as server:
        for batched in (False, True, False, True):
            rate, cpu_us = await measure(server.url, batched, args)
            label = "ScriptBatcher" if batched else "redis-py, one command at a time"
            print(f"{label:32} {rate:10,.0f} calls/s  {cpu_us:6.1f} us of CPU per call")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.script_calls", description="CPU per script call, batched or not"
    )
    parser.add_argument("--tasks", type=int, default=96)
    parser.add_argument("--calls", type=int, default=5, help="scripts per task per round")
    parser.add_argument("--rounds", type=int, default=40)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
