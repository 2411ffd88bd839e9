"""The gates scenarios 1 and 2 drive in this process, timed with perf_counter.

Three gates are driven the same way:

* ``project``: ``PermitGate`` with a ``KeyspaceWatcher`` built exactly as
  ``ApplyService`` builds them, from ``load_settings`` defaults
  (``APPLY_KEYSPACE_EVENTS=detect``, the server has ``K$h`` on);
* ``old_behaviour``: the same gate forced into the old behaviour
  (``APPLY_KEYSPACE_EVENTS=off``: it polls every ``APPLY_PERMIT_STEP_MS`` = 100 ms);
* ``old_gate``: the seed report's gate, emulated: its Lua (GET both; either
  missing: fail; else DEL both) called from a loop that sleeps 100 ms
  between calls for up to 1200 ms. Its P3.3 never wrote a deny: a deny was
  no key, so it waits out the deadline.

A writer (a separate Redis client, like a separate service) writes the
governor permit, then the last permit at a random moment; the reaction is
the time from just before the last write is sent to the moment the gate's
call returns its decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from apply_layer.core.keys import ISSUERS
from apply_layer.logs import setup_logging
from apply_layer.settings import load_settings
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GateConfig, PermitGate
from apply_layer.store.gate_lane import GateLane
from apply_layer.store.keyspace import KeyspaceWatcher
from bench.measure import set_notifications, summary_ms
from tests.harness import SYM as SYMBOL

ROOT = Path(__file__).resolve().parents[1]  # where ``bench`` is a package

# The seed's _LUA_CONSUME_BOTH_PERMITS as its report gives it (the TTLs feed its BLOCK line).
OLD_GATE_LUA = """
local gov = redis.call("GET", KEYS[1])
local p33 = redis.call("GET", KEYS[2])
if not gov or not p33 then
  local reason = "missing_p33"
  if not gov and not p33 then reason = "missing_both" elseif not gov then reason = "missing_gov" end
  return {0, reason, redis.call("TTL", KEYS[1]), redis.call("TTL", KEYS[2])}
end
redis.call("DEL", KEYS[1])
redis.call("DEL", KEYS[2])
return {1, gov, p33}
"""
OLD_WAIT_MS = 1200
OLD_STEP_MS = 100

GATES = ("project", "old_behaviour", "old_gate")
DENY_REASON = "reconcile_required_qty_mismatch"


@dataclass
class Decision:
    allowed: bool
    reason: str
    decided_at: float  # perf_counter when the gate call returned


@dataclass
class GateRun:
    """What one gate did over one batch of plans."""

    gate: str
    concurrency: int
    plans: int = 0
    reaction_ms: list[float] = field(default_factory=list)  # last write -> decision
    total_ms: list[float] = field(default_factory=list)  # gate start -> decision
    outcomes: dict[str, int] = field(default_factory=dict)
    watcher_status: str = ""
    seconds: float = 0.0

    def add_outcome(self, key: str) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "concurrency": self.concurrency,
            "plans": self.plans,
            "reaction_ms": summary_ms(self.reaction_ms),
            "total_ms": summary_ms(self.total_ms),
            "outcomes": self.outcomes,
            "watcher": self.watcher_status,
            "seconds": round(self.seconds, 2),
        }


GateCall = Callable[[str], Awaitable[Decision]]


class GateUnderTest:
    """One of the three gates, ready to decide plans; ``close`` releases it."""

    def __init__(self, url: str, gate: str) -> None:
        self.url = url
        self.gate = gate
        self.redis: Redis = create_redis(url, name=f"bench:{gate}")
        self.watcher: KeyspaceWatcher | None = None
        self.lane: GateLane | None = None
        self.status = ""
        self._project: PermitGate | None = None
        self._old_script: Any = None
        self.scripts = ScriptBatcher(self.redis)

    async def start(self) -> None:
        await set_notifications(self.redis, self.gate == "project")
        if self.gate == "old_gate":
            self._old_script = self.redis.register_script(OLD_GATE_LUA)
            self.status = f"polls every {OLD_STEP_MS} ms up to {OLD_WAIT_MS} ms"
            return
        events = "detect" if self.gate == "project" else "off"
        settings = load_settings(redis_url=self.url, keyspace_events=events, metrics_port=0)
        config = GateConfig.from_settings(settings)
        self.watcher = KeyspaceWatcher(self.redis, config.watch_patterns(), events)
        self.status = await self.watcher.start()
        if settings.gate_lane and events != "off":
            self.lane = GateLane(self.redis, config.watch_patterns(), self.watcher)
            self.status += f"; gate lane {await self.lane.start()}"
        self._project = PermitGate(self.redis, config, self.watcher, self.scripts, self.lane)
        await self._project.load()

    async def close(self) -> None:
        if self.lane is not None:
            await self.lane.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        await self.scripts.aclose()
        await self.redis.aclose()

    async def decide(self, plan_id: str) -> Decision:
        if self._project is not None:
            result = await self._project.wait_and_consume(plan_id, SYMBOL)
            return Decision(result.allowed, result.reason or "ok", time.perf_counter())
        return await self._old_wait_and_consume(plan_id)

    async def _old_wait_and_consume(self, plan_id: str) -> Decision:
        """The seed's loop: call the script, sleep a step, until 1200 ms have passed."""
        keys = [ISSUERS["governor"].key(plan_id), ISSUERS["p33"].key(plan_id)]
        t0 = time.time()
        reason = "timeout"
        while (time.time() - t0) * 1000 < OLD_WAIT_MS:
            reply = await self._old_script(keys=keys)
            if int(reply[0]) == 1:
                return Decision(True, "ok", time.perf_counter())
            reason = str(reply[1])
            await asyncio.sleep(OLD_STEP_MS / 1000)
        return Decision(False, reason, time.perf_counter())


def governor_permit() -> str:
    return json.dumps({"granted": True, "symbol": SYMBOL, "decision": "EXECUTE"})


def p33_permit(allow: bool) -> str:
    if not allow:
        return json.dumps({"allow": False, "symbol": SYMBOL, "reason": DENY_REASON})
    return json.dumps(
        {
            "allow": True,
            "symbol": SYMBOL,
            "safe_qty": 0.002,
            "exchange_position_amt": 0.002,
            "ledger_amt": 0.002,
            "reason": "sanity_checks_passed",
        }
    )


class WriterProcess:
    """``bench.p33_writer`` in a process of its own, told each plan's times on its stdin.

    Its output goes to a file read at the end, not to a pipe this loop reads:
    a pipe would wake this process (the gate's) each time P3.3 has written,
    which the deployment's idle daemon does not get.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._out = Path(tempfile.mkdtemp(prefix="p33-writer-")) / "written.tsv"
        self._proc: subprocess.Popen[str] | None = None

    async def start(self) -> None:
        with self._out.open("w") as out:
            self._proc = subprocess.Popen(  # noqa: ASYNC220, S603 (our own module, started once)
                [sys.executable, "-m", "bench.p33_writer", self.url],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=out,
                text=True,
            )
        deadline = time.monotonic() + 20.0
        while not self._out.read_text().startswith("ready"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench.p33_writer did not start (exit {self._proc.poll()})")
            await asyncio.sleep(0.01)

    def schedule(self, plan_id: str, governor_at: float, p33_at: float) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(f"{plan_id}\t{governor_at!r}\t{p33_at!r}\n")
        self._proc.stdin.flush()

    def finish(self, timeout: float = 20.0) -> dict[str, float]:
        """Stop it; when it sent each plan's P3.3 ``SETEX`` (perf_counter)."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write("end\n")
        self._proc.stdin.close()
        if self._proc.wait(timeout) != 0:
            raise RuntimeError(f"bench.p33_writer failed (exit {self._proc.returncode})")
        lines = self._out.read_text().splitlines()[1:]
        return {plan: float(at) for plan, at in (line.split("\t") for line in lines)}

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


async def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def write_here(
    writer: Redis, plan_id: str, governor_at: float, p33_at: float, p33_text: str | None
) -> float:
    """Scenario 1's in-process writer: the governor's permit, then P3.3's (none where
    ``p33_text`` is None), each at its ``perf_counter`` time; when P3.3's was sent."""
    await _sleep_until(governor_at)
    await writer.set(ISSUERS["governor"].key(plan_id), governor_permit(), ex=60)
    await _sleep_until(p33_at)
    written = time.perf_counter()
    if p33_text is not None:
        await writer.set(ISSUERS["p33"].key(plan_id), p33_text, ex=60)
    return written


async def run_gate(
    url: str,
    gate: str,
    *,
    plans: int,
    concurrency: int,
    deny: bool,
    last_ms: tuple[float, float] = (20.0, 320.0),
    seed: int = 1,
    tag: str = "",
    writer_process: bool = False,
) -> GateRun:
    """Decide ``plans`` plans with at most ``concurrency`` waiting at once.

    Each plan: the gate starts waiting; the governor permit lands at a random
    moment before the last write, and P3.3's permit (or deny) lands at a
    random moment in ``last_ms`` after the start. With ``writer_process`` the
    permits (allowing ones only) are written by ``bench.p33_writer`` in a
    process of its own, as P3.3 writes them; else by a client in this process.
    """
    if writer_process and deny:
        raise ValueError("bench.p33_writer writes allowing permits only")
    rng = random.Random(seed)
    under_test = GateUnderTest(url, gate)
    writer: Redis = create_redis(url, name="bench:writer")
    run = GateRun(gate, concurrency, watcher_status="")
    slots = asyncio.Semaphore(concurrency)
    prefix = f"{tag or gate}-{'d' if deny else 'a'}-{int(time.time() * 1000) % 10**8}"

    decided: dict[str, tuple[float, float]] = {}  # plan -> (started, decided_at)
    written_at: dict[str, float] = {}

    async def one(i: int) -> None:
        plan_id = f"{prefix}-{i}"
        last = rng.uniform(*last_ms) / 1000
        first = rng.uniform(0, last * 0.8)
        async with slots:
            started = time.perf_counter()
            decision = asyncio.create_task(under_test.decide(plan_id))
            at = (started + first, started + last)
            if process is not None:  # it writes both at these times; we sit idle meanwhile
                process.schedule(plan_id, *at)
            else:
                # The old P3.3 wrote no key for a deny: "written" is when it decided.
                silent = deny and gate == "old_gate"
                text = None if silent else p33_permit(not deny)
                written_at[plan_id] = await write_here(writer, plan_id, *at, text)
            result = await decision
        decided[plan_id] = (started, result.decided_at)
        run.add_outcome(("ALLOW" if result.allowed else "BLOCK") + f":{result.reason}")

    process = WriterProcess(url) if writer_process else None
    try:
        await under_test.start()
        if process is not None:
            await process.start()
        run.watcher_status = under_test.status
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(plans)))
        run.seconds = time.perf_counter() - t0
        run.plans = plans
        if under_test.lane is not None:
            run.watcher_status += f" (it decided {under_test.lane.decisions} of {plans})"
        if process is not None:
            written_at = process.finish()
    finally:
        if process is not None:
            process.kill()
        await under_test.close()
        await writer.aclose()
    for plan_id, (started, decided_at) in decided.items():
        run.reaction_ms.append((decided_at - written_at[plan_id]) * 1000)
        run.total_ms.append((decided_at - started) * 1000)
    return run


async def run_floor(url: str, plans: int) -> list[float]:
    """The project gate's own cost: both permits already there, one call, one attempt (ms)."""
    under_test = GateUnderTest(url, "project")
    writer: Redis = create_redis(url, name="bench:writer")
    out: list[float] = []
    try:
        await under_test.start()
        for i in range(plans):
            plan_id = f"floor-{int(time.time() * 1000) % 10**8}-{i}"
            await writer.set(ISSUERS["governor"].key(plan_id), governor_permit(), ex=60)
            await writer.set(ISSUERS["p33"].key(plan_id), p33_permit(True), ex=60)
            t0 = time.perf_counter()
            decision = await under_test.decide(plan_id)
            out.append((decision.decided_at - t0) * 1000)
    finally:
        await under_test.close()
        await writer.aclose()
    return out


async def ping_rtt(url: str, n: int, idle_s: float = 0.005) -> list[float]:
    """Round trips of a bare PING, each after ``idle_s`` of idleness, from this process (ms)."""
    redis: Redis = create_redis(url, name="bench:ping")
    out: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            await redis.ping()
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(idle_s)
    finally:
        await redis.aclose()
    return out


async def notify_rtt(url: str, n: int) -> list[float]:
    """SET of a permit key -> its keyspace message read by a pub/sub client in this process,
    one at a time (ms): the path the watcher takes, without the waiter and the gate."""
    redis: Redis = create_redis(url, name="bench:notify")
    await set_notifications(redis, True)
    pubsub = redis.pubsub()
    out: list[float] = []
    try:
        await pubsub.psubscribe(f"__keyspace@0__:{ISSUERS['p33'].key('bench-notify-*')}")
        while await pubsub.get_message(timeout=0.2) is not None:
            pass  # the subscribe confirmation
        for i in range(n):
            await asyncio.sleep(0.005 + (i % 7) / 1000)
            t0 = time.perf_counter()
            await redis.set(ISSUERS["p33"].key(f"bench-notify-{i}"), "1", px=200)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message["data"] == "set":
                    out.append((time.perf_counter() - t0) * 1000)
                    break
                if message is None:
                    break
            while await pubsub.get_message(timeout=0) is not None:
                pass  # the expire event that follows
    finally:
        await pubsub.aclose()
        await redis.aclose()
    return out


@contextlib.contextmanager
def gate_logging(path: Path) -> Any:
    """The gate logs its [PERMIT_WAIT] lines as in production (INFO, console) to a file."""
    with open(path, "a", encoding="utf-8") as stream:
        setup_logging("INFO", "console", stream)
        try:
            yield stream
        finally:
            setup_logging("WARNING", "console")
