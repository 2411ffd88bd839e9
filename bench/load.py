"""The daemon as a subprocess, and a load generator playing the exit brain, governor and P3.3.

The generator publishes plans (XADD to the plan stream with the fields
``tests/harness.py`` uses), writes each plan's two permits at their
scheduled moments, and reads the result stream to time each plan's
completion. Every write due within the same millisecond goes in one round
trip, packed in C by ``batching.run_packed`` as the daemon's scripts are: the
generator shares the machine's two cores with what it measures. It never has
more than ``window`` plans outstanding (published, no result yet): the plan
stream is capped at ~10,000 entries, and a plan trimmed before the daemon
reads it would be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import math
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from apply_layer.core.keys import ISSUERS, PLAN_STREAM, RESULT_STREAM, STREAM_MAXLEN
from apply_layer.store.batching import run_packed
from apply_layer.store.connection import create_redis
from bench.measure import proc_rss_mb, self_cpu_seconds, summary_ms
from tests.harness import STEPS
from tests.harness import Daemon as HarnessDaemon

# The shipped defaults but for what the bench must set: paper mode, no HTTP port.
BENCH_DEFAULTS = {"APPLY_MODE": "paper", "APPLY_METRICS_PORT": "0"}

GOVERNOR, P33 = ISSUERS["governor"], ISSUERS["p33"]
STEPS_JSON = json.dumps([STEPS["CLOSE_PARTIAL_75"]])


def symbols(n: int) -> tuple[str, ...]:
    """``n`` synthetic symbols (the paper exchange's default lot filter: step 0.001)."""
    return tuple(f"SYM{i:03d}USDT" for i in range(n))


# ---- the daemon ------------------------------------------------------------------------------


class Daemon(HarnessDaemon):
    """The tests' daemon driver, from the shipped defaults, with what the bench reads."""

    def __init__(self, url: str, workdir: Path, name: str, **settings: Any) -> None:
        super().__init__(url, workdir, name, defaults=BENCH_DEFAULTS, **settings)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def settings_text(self) -> str:
        keys = sorted(k for k in self.env if k.startswith("APPLY_") and k != "APPLY_REDIS_URL")
        return " ".join(f"{k}={self.env[k]}" for k in keys)

    def keyspace_status(self) -> str:
        for line in self.log().splitlines():
            if "apply_layer_started" in line and "keyspace_events=" in line:
                status = line.split("keyspace_events=", 1)[1]
                return status.split(" gate_lane=")[0].split(" metrics_port=")[0]
        return "?"

    def count(self, marker: str) -> int:
        """Log lines containing ``marker`` (e.g. ``redis_unavailable``)."""
        return sum(1 for line in self.log().splitlines() if marker in line)

    def rss_mb(self) -> float:
        return proc_rss_mb(self.pid)

    def stop(self, *, graceful: bool = False) -> None:
        """SIGKILL by default: the bench has what it measured, and a graceful stop waits
        out the daemon's blocking read (APPLY_POLL_SEC, 5 s by default)."""
        if graceful:
            super().stop()
        elif self.proc is not None and self.proc.poll() is None:
            self.kill()


# ---- the load --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    plans: int
    rate: float = math.inf  # offered plans per second
    window: int = 4000  # most plans outstanding at once
    delay_ms: tuple[float, float] | None = (50.0, 300.0)  # None: permits before the plan
    symbols: tuple[str, ...] = symbols(64)
    prefix: str = "b"
    timeout_s: float = 900.0
    seed: int = 7


@dataclass
class LoadResult:
    spec: LoadSpec
    published: int = 0
    completed: int = 0
    elapsed_s: float = 0.0  # first publish -> last result seen
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latency_ms: list[float] = field(default_factory=list)  # publish -> result seen
    after_permit_ms: list[float] = field(default_factory=list)  # last permit -> result seen
    permit_lag_ms: list[float] = field(default_factory=list)  # generator's own lateness
    commands: Counter[str] = field(default_factory=Counter)  # what the generator sent
    generator_cpu_s: float = 0.0
    timed_out: bool = False

    @property
    def throughput(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "plans": self.spec.plans,
            "rate_offered": self.spec.rate,
            "window": self.spec.window,
            "delay_ms": self.spec.delay_ms,
            "symbols": len(self.spec.symbols),
            "published": self.published,
            "completed": self.completed,
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput": round(self.throughput, 2),
            "statuses": dict(self.statuses),
            "errors": dict(self.errors.most_common(5)),
            "latency_ms": summary_ms(self.latency_ms),
            "after_last_permit_ms": summary_ms(self.after_permit_ms),
            "generator_permit_lag_ms": summary_ms(self.permit_lag_ms),
            "generator_cpu_s": round(self.generator_cpu_s, 2),
            "timed_out": self.timed_out,
        }


def _governor(symbol: str) -> str:
    return json.dumps(
        {"granted": True, "symbol": symbol, "decision": "EXECUTE", "created_at": time.time()}
    )


def _p33(symbol: str) -> str:
    # A position far larger than the bench will ever close: every plan is an EXECUTED order.
    return json.dumps(
        {
            "allow": True,
            "symbol": symbol,
            "safe_qty": 0.001,
            "exchange_position_amt": 1000.0,
            "ledger_amt": 1000.0,
            "created_at": time.time(),
            "reason": "sanity_checks_passed",
        }
    )


def _set(key: str, value: str) -> tuple[str | int, ...]:
    return ("SET", key, value, "EX", 60)


def _flat(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _plan_fields(plan_id: str, symbol: str) -> dict[str, str]:
    return {
        "plan_id": plan_id,
        "symbol": symbol,
        "decision": "EXECUTE",
        "action": "PARTIAL_75",
        "steps": STEPS_JSON,
        "timestamp": f"{time.time():.3f}",
        "source": "bench_exit_brain",
    }


class LoadGenerator:
    """Publishes ``spec.plans`` plans and writes their permits; times every result."""

    def __init__(self, url: str, spec: LoadSpec) -> None:
        self.url = url
        self.spec = spec
        self.result = LoadResult(spec)
        self.rng = random.Random(spec.seed)
        self._published_at: dict[str, float] = {}
        self._last_permit: dict[str, float] = {}
        self._outstanding = 0
        self._progress = asyncio.Event()
        self._first = math.nan
        self._last = math.nan
        self.addresses: set[str] = set()  # our own connections, to tell them apart in MONITOR

    async def run(self) -> LoadResult:
        writer = create_redis(self.url, name="bench:load")
        reader = create_redis(self.url, name="bench:results", block_sec=1.0)
        cpu0 = self_cpu_seconds()
        try:
            last = await reader.xrevrange(RESULT_STREAM, count=1)
            start_id = str(last[0][0]) if last else "0-0"
            tasks = {
                asyncio.create_task(self._publish(writer)),
                asyncio.create_task(self._read_results(reader, start_id)),
            }
            try:
                # Both end, or the first failure ends the run (not the timeout, later).
                done, pending = await asyncio.wait(
                    tasks, timeout=self.spec.timeout_s, return_when=asyncio.FIRST_EXCEPTION
                )
                self.result.timed_out = bool(pending)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self.addresses = await client_addresses(writer, "bench:")
        finally:
            await writer.aclose()
            await reader.aclose()
        self.result.generator_cpu_s = self_cpu_seconds() - cpu0
        self.result.elapsed_s = self._last - self._first
        return self.result

    async def _publish(self, redis: Redis) -> None:
        spec = self.spec
        permits: list[tuple[float, int, str, str, str]] = []  # (due, seq, kind, plan, symbol)
        seq = 0
        n = 0
        start = time.perf_counter()
        self._first = start
        while n < spec.plans or permits:
            now = time.perf_counter()
            batch: list[tuple[str | int, ...]] = []
            due = spec.plans - n
            if math.isfinite(spec.rate):
                due = min(due, math.floor((now - start) * spec.rate) + 1 - n)
            due = min(due, spec.window - self._outstanding, 500)
            for _ in range(max(0, due)):
                plan_id = f"{spec.prefix}-{n}"
                symbol = self.rng.choice(spec.symbols)
                if spec.delay_ms is None:
                    batch.append(_set(GOVERNOR.key(plan_id), _governor(symbol)))
                    batch.append(_set(P33.key(plan_id), _p33(symbol)))
                    self.result.commands["set"] += 2
                    self._last_permit[plan_id] = now
                else:
                    for kind in ("gov", "p33"):
                        delay = self.rng.uniform(*spec.delay_ms) / 1000
                        heapq.heappush(permits, (now + delay, seq, kind, plan_id, symbol))
                        seq += 1
                fields = _plan_fields(plan_id, symbol)
                batch.append(
                    ("XADD", PLAN_STREAM, "MAXLEN", "~", STREAM_MAXLEN, "*", *_flat(fields))
                )
                self.result.commands["xadd"] += 1
                self._published_at[plan_id] = now
                self._outstanding += 1
                n += 1
            while permits and permits[0][0] <= now:
                when, _, kind, plan_id, symbol = heapq.heappop(permits)
                if kind == "gov":
                    batch.append(_set(GOVERNOR.key(plan_id), _governor(symbol)))
                else:
                    batch.append(_set(P33.key(plan_id), _p33(symbol)))
                self.result.commands["set"] += 1
                self.result.permit_lag_ms.append((now - when) * 1000)
                self._last_permit[plan_id] = max(self._last_permit.get(plan_id, 0.0), now)
            if batch:
                errors = [r for r in await run_packed(redis, batch) if isinstance(r, Exception)]
                if errors:
                    raise errors[0]
            self.result.published = n
            # Sleep until the next permit is due, the next plan is due, or a result frees a slot.
            wake = [permits[0][0]] if permits else []
            if n < spec.plans and self._outstanding < spec.window:
                wake.append(start + n / spec.rate if math.isfinite(spec.rate) else now)
            pause = (min(wake) if wake else now + 0.05) - time.perf_counter()
            if pause > 0:
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), min(pause, 0.05))
            else:
                await asyncio.sleep(0)

    async def _read_results(self, redis: Redis, last_id: str) -> None:
        spec = self.spec
        while self.result.completed < spec.plans:
            read = ("XREAD", "COUNT", 2000, "BLOCK", 200, "STREAMS", RESULT_STREAM, last_id)
            reply: Any = (await run_packed(redis, [read]))[0]
            self.result.commands["xread"] += 1
            if not reply:
                continue
            now = time.perf_counter()
            # RESP3 (redis-py 8's default) answers a map of streams, RESP2 a list of pairs.
            entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
            for entry_id, flat in entries:
                last_id = entry_id
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                plan_id = fields.get("plan_id", "")
                published = self._published_at.pop(plan_id, None)
                if published is None:
                    continue
                self.result.completed += 1
                self._outstanding -= 1
                self.result.statuses[fields.get("status", "?")] += 1
                if fields.get("error"):
                    self.result.errors[fields["error"]] += 1
                self.result.latency_ms.append((now - published) * 1000)
                permit = self._last_permit.pop(plan_id, None)
                if permit is not None:
                    self.result.after_permit_ms.append((now - permit) * 1000)
                self._last = now
            self._progress.set()


async def run_load(url: str, spec: LoadSpec) -> LoadResult:
    return await LoadGenerator(url, spec).run()


# ---- MONITOR: which commands are round trips, which run inside scripts --------------------------


class Monitor:
    """A raw MONITOR connection; counts commands by origin (a client address, or ``lua``)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.by_origin: Counter[tuple[str, str]] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer = writer
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"+OK")
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            # +1700000000.123456 [0 127.0.0.1:5678] "EVALSHA" ...   or   [0 lua] "GET" ...
            text = line.decode(errors="replace")
            try:
                origin = text.split("[", 1)[1].split("]", 1)[0].split(" ", 1)[1]
                command = text.split("] ", 1)[1].split(" ", 1)[0].strip().strip('"').lower()
            except IndexError:
                continue
            self.by_origin[(origin, command)] += 1

    async def stop(self) -> None:
        await asyncio.sleep(0.2)  # let the last lines arrive
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task


async def client_addresses(redis: Redis, name_prefix: str) -> set[str]:
    """``ip:port`` of every client whose name starts with ``name_prefix``."""
    clients: list[dict[str, Any]] = await redis.client_list()
    return {str(c["addr"]) for c in clients if str(c.get("name", "")).startswith(name_prefix)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
