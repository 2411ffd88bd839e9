"""How fast a one-at-a-time reaction could be on this machine: a lane with nothing in it.

    .venv/bin/python -m bench.reaction_floor [--plans 60] [--writer apart|here]

A diagnostic, not the daemon: it asks whether scenario 1's one-at-a-time
target (p50 <= 1 ms) is bounded by the project's code or by the machine.
It reacts to P3.3's permit with the least Python there can be: a raw
asyncio protocol on the pub/sub socket, parsed by hiredis, writes the
project's own ``gate.lua`` call (``EVALSHA``, packed by hiredis) on a raw
connection from inside the socket's callback, with no task, no redis-py,
no batcher, no pool; the reply's callback then runs the same two steps the
gate must (``build_result``, the verdicts re-judged in Python, and the
``[PERMIT_WAIT]`` line written before the decision is returned). None of
this is how the daemon may talk to Redis (no reconnects, no timeouts, no
retry, no ``FCALL`` fallback): it only measures what is left when every
such layer is gone.

Timed from just before P3.3's ``SETEX`` is sent to the awaiting coroutine
holding the decision, with the writer either ``apart`` (``bench.p33_writer``:
another process writing as the deployment's P3.3 does, a read of the P3.4
hold first) or ``here`` (a task of this process, idle until it writes, as
scenario 1's in-process writer). Prints the p50 of each part:

    event   SETEX sent -> the keyspace message parsed here (the gate's call written at once)
    script  -> the gate's reply parsed (Redis running gate.lua, and the way back)
    build   -> the reply turned into a GateResult
    log     -> the [PERMIT_WAIT] line written
    resume  -> the awaiting coroutine runs with the decision
    total   SETEX sent -> the decision in hand
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
from redis.asyncio import Redis

from apply_layer.core.keys import ISSUERS, keyspace_channel
from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.batching import _pack
from apply_layer.store.caller_tokens import new_token
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GATE_SCRIPT, GateConfig, GateResult, PermitGate, build_result
from bench.gates import WriterProcess, p33_permit, write_here
from tests.harness import SYM as SYMBOL

PARTS = ("event", "script", "build", "log", "resume", "total")


class _Replies(asyncio.Protocol):
    """A raw connection: each parsed reply goes to the callback armed for it (in order)."""

    def __init__(self, on_message: Callable[[Any], None] | None = None) -> None:
        self.reader = hiredis.Reader(encoding="utf-8")
        self.on_message = on_message
        self.pending: list[Callable[[Any], None]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (message := self.reader.gets()) is not False:
            if self.on_message is not None:
                self.on_message(message)
            elif self.pending:
                self.pending.pop(0)(message)

    def send(self, command: tuple[Any, ...], on_reply: Callable[[Any], None]) -> None:
        assert self.transport is not None
        self.pending.append(on_reply)
        self.transport.write(_pack(command))


class Lane:
    """The gate's work with every layer taken out; see the module docstring."""

    def __init__(self, redis: Redis, sha: str) -> None:
        self.sha = sha
        self.config = GateConfig()
        # The project's gate, never called: its script's arguments and its log line.
        self.gate = PermitGate(redis, self.config)
        self.commands = _Replies()
        self.events = _Replies(self._event)
        self.armed: dict[str, tuple[str, asyncio.Future[GateResult]]] = {}
        self.marks: dict[str, float] = {}

    async def connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self.commands, host, port)
        await loop.create_connection(lambda: self.events, host, port)
        pattern = keyspace_channel(ISSUERS["p33"].key("*"), 0)
        assert self.events.transport is not None
        self.events.transport.write(_pack(("PSUBSCRIBE", pattern)))
        await asyncio.sleep(0.2)  # the confirmation arrives meanwhile (and is ignored)

    def arm(self, plan_id: str) -> asyncio.Future[GateResult]:
        future: asyncio.Future[GateResult] = asyncio.get_running_loop().create_future()
        self.armed[ISSUERS["p33"].key(plan_id)] = (plan_id, future)
        self.marks.clear()
        return future

    def _event(self, message: Any) -> None:
        if not (isinstance(message, list) and message[0] == "pmessage"):
            return
        key = str(message[2]).removeprefix(keyspace_channel("", 0))
        armed = self.armed.pop(key, None)
        if armed is None:
            return
        self.marks["event"] = time.perf_counter()
        plan_id, future = armed
        keys = self.config.keys(plan_id)
        args = self.gate.script_args(plan_id, SYMBOL, new_token(), final=False)
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        self.commands.send(command, lambda reply: self._decided(reply, plan_id, future))

    def _decided(self, reply: Any, plan_id: str, future: asyncio.Future[GateResult]) -> None:
        self.marks["script"] = time.perf_counter()
        result = build_result(reply, plan_id, SYMBOL, self.config, 0)
        self.marks["build"] = time.perf_counter()
        self.gate._log(result)
        self.marks["log"] = time.perf_counter()
        future.set_result(result)


async def measure(url: str, host: str, port: int, plans: int, writer: str) -> dict[str, float]:
    """Run ``plans`` reactions one at a time; the p50 of each part (ms)."""
    admin = create_redis(url, name="bench:floor-writer")  # also scenario 1's writer, "here"
    await admin.config_set("notify-keyspace-events", "K$h")
    lane = Lane(admin, await admin.script_load(GATE_SCRIPT))
    await lane.connect(host, port)
    process = WriterProcess(url) if writer == "apart" else None
    if process is not None:
        await process.start()
    rng = random.Random(1)
    parts: dict[str, list[float]] = {name: [] for name in PARTS}
    written_here: dict[str, float] = {}
    ended: dict[str, tuple[dict[str, float], float]] = {}
    try:
        for i in range(plans):
            plan_id = f"floor-{writer}-{int(time.time() * 1000) % 10**8}-{i}"
            decision = lane.arm(plan_id)
            last = rng.uniform(0.02, 0.32)
            started = time.perf_counter()
            at = (started + rng.uniform(0, last * 0.8), started + last)
            if process is not None:
                process.schedule(plan_id, *at)
                result = await decision
            else:
                write = asyncio.create_task(write_here(admin, plan_id, *at, p33_permit(True)))
                result = await decision
                written_here[plan_id] = await write
            ended[plan_id] = (dict(lane.marks), time.perf_counter())
            assert result.allowed, result
        written = process.finish() if process is not None else written_here
    finally:
        if process is not None:
            process.kill()
        await admin.aclose()
    for plan_id, (marks, end) in ended.items():
        # written -> event -> script -> build -> log -> end: one part each, then the total.
        times = [written[plan_id], *(marks[name] for name in PARTS[:4]), end]
        for name, a, b in zip(PARTS[:5], times[:-1], times[1:], strict=True):
            parts[name].append((b - a) * 1000)
        parts["total"].append((end - written[plan_id]) * 1000)
    return {name: statistics.median(values) for name, values in parts.items()}


async def main_async(plans: int, writers: list[str]) -> None:
    log_file = Path(tempfile.mkdtemp(prefix="reaction-floor-")) / "gate.log"
    with log_file.open("w") as stream, EmbeddedRedis() as server:
        setup_logging("INFO", "console", stream)
        for writer in writers:
            p50 = await measure(server.url, "127.0.0.1", server.port, plans, writer)
            print(f"writer {writer}: {plans} reactions, one at a time")
            for name in PARTS:
                print(f"{name:7} p50 {p50[name]:6.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reaction_floor",
        description="a one-at-a-time reaction with every layer taken out (a floor)",
    )
    parser.add_argument("--plans", type=int, default=60)
    parser.add_argument("--writer", choices=("apart", "here", "both"), default="both")
    args = parser.parse_args()
    writers = ["apart", "here"] if args.writer == "both" else [args.writer]
    asyncio.run(main_async(args.plans, writers))


if __name__ == "__main__":
    main()
