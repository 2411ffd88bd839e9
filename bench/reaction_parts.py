"""Where a reaction's time goes, one plan at a time (scenario 1's slow row).

    .venv/bin/python -m bench.reaction_parts [--plans 100]   # from the repo root

A diagnostic, not a scenario: it wraps three of the project's functions with
timestamps (the batcher's exchange, ``gate.build_result`` and
``PermitGate._log``) and the waiter's wake-up event, then times plans one at
a time as scenario 1 does: the governor's permit first, P3.3's 20 to 320 ms
after the gate starts waiting. Prints the p50 of each part, from the
``SET`` of P3.3's permit to the gate call's return:

    event    SET sent -> the watcher wakes the waiting gate
    to_send  the wake -> the gate's EVALSHA is written
    rtt      EVALSHA written -> its reply read
    resume   reply read -> the gate's task runs again
    build    the reply turned into a GateResult (verdicts re-checked in Python)
    log      the [PERMIT_WAIT] line formatted and written

and, within rtt, Redis's own time running the deciding script (its SLOWLOG
duration).

The server's SLOWLOG threshold is set to 0 for this; it is read and reset
between plans, outside the timed span.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import apply_layer.store.batching as batching
import apply_layer.store.gate as gate_module
from apply_layer.core.keys import ISSUERS
from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GateConfig, PermitGate
from apply_layer.store.keyspace import KeyspaceWatcher
from tests.harness import SYM as SYMBOL

marks: dict[str, float] = {}


def _mark(name: str) -> None:
    marks.setdefault(name, time.perf_counter())


def _instrument() -> None:
    exchange, build, log = batching._exchange, gate_module.build_result, PermitGate._log

    async def timed_exchange(*args: Any) -> Any:
        _mark("send")
        reply = await exchange(*args)
        _mark("reply")
        return reply

    def timed_build(*args: Any) -> Any:
        _mark("resumed")
        result = build(*args)
        _mark("built")
        return result

    def timed_log(self: PermitGate, result: Any) -> None:
        _mark("log0")
        log(self, result)
        _mark("log1")

    batching._exchange = timed_exchange  # type: ignore[assignment]
    gate_module.build_result = timed_build  # type: ignore[assignment]
    PermitGate._log = timed_log  # type: ignore[method-assign]


def _marking(wake: Any) -> Any:
    def set_and_mark() -> None:
        _mark("event")
        wake()

    return set_and_mark


async def _script_seconds(redis: Any) -> float:
    """The newest script call's duration in the server's SLOWLOG: the deciding one."""
    entries = await redis.slowlog_get(32)  # newest first
    scripts = [e for e in entries if e["command"].split(b" ", 1)[0] in (b"EVALSHA", b"FCALL")]
    return float(scripts[0]["duration"]) / 1e6 if scripts else float("nan")


async def main_async(plans: int) -> None:
    _instrument()
    log_file = Path(tempfile.mkdtemp(prefix="reaction-parts-")) / "gate.log"
    with log_file.open("w") as stream, EmbeddedRedis() as server:
        setup_logging("INFO", "console", stream)
        redis, writer = create_redis(server.url), create_redis(server.url)
        await redis.config_set("notify-keyspace-events", "K$h")
        await redis.config_set("slowlog-log-slower-than", 0)
        config = GateConfig()
        watcher = KeyspaceWatcher(redis, config.watch_patterns(), "detect")
        print("keyspace events:", await watcher.start())
        gate = PermitGate(redis, config, watcher, ScriptBatcher(redis))
        await gate.load()
        parts: dict[str, list[float]] = {}
        script_ms: list[float] = []  # within rtt: not one of the consecutive parts
        polled = 0
        for i in range(plans):
            plan_id = f"parts-{i}"
            gov = json.dumps({"granted": True, "symbol": SYMBOL})
            await writer.slowlog_reset()  # here: a round trip just before the SET warms the path
            await writer.set(ISSUERS["governor"].key(plan_id), gov, ex=60)
            task = asyncio.create_task(gate.wait_and_consume(plan_id, SYMBOL))
            await asyncio.sleep(random.uniform(0.02, 0.32))
            marks.clear()
            p33_key = ISSUERS["p33"].key(plan_id)
            for event in watcher._waiters.get(p33_key, ()):
                event.set = _marking(event.set)  # type: ignore[method-assign]
            p33 = json.dumps({"allow": True, "symbol": SYMBOL, "safe_qty": 0.001})
            start = time.perf_counter()
            await writer.set(p33_key, p33, ex=60)
            result = await task
            end = time.perf_counter()
            assert result.allowed, result
            if "event" not in marks or marks["event"] > marks["send"]:
                polled += 1  # the fallback poll found the permit first: not a reaction
                continue
            spans = {
                "event": marks["event"] - start,
                "to_send": marks["send"] - marks["event"],
                "rtt": marks["reply"] - marks["send"],
                "resume": marks["resumed"] - marks["reply"],
                "build": marks["built"] - marks["resumed"],
                "log": marks["log1"] - marks["log0"],
                "total": end - start,
            }
            script_ms.append(await _script_seconds(writer) * 1000)
            for name, seconds in spans.items():
                parts.setdefault(name, []).append(seconds * 1000)
        measured = len(parts.get("total", []))
        print(f"{measured} reactions ({polled} found by the fallback poll, left out)")
        for name, values in parts.items():
            print(f"{name:8} p50 {statistics.median(values):6.3f} ms")
        if script_ms:
            median = statistics.median(script_ms)
            print(f"of rtt, Redis running the deciding script: median {median:.3f} ms")
        await watcher.stop()
        await redis.aclose()
        await writer.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reaction_parts",
        description="where a one-at-a-time reaction's time goes",
    )
    parser.add_argument("--plans", type=int, default=100)
    asyncio.run(main_async(parser.parse_args().plans))


if __name__ == "__main__":
    main()
