"""Drive the real daemon as a subprocess, and play the upstream services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis as sync_redis
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apply_layer.core import keys as K
from apply_layer.core.check_line import CheckLine
from apply_layer.core.outcomes import StepResult
from apply_layer.core.statuses import StepStatus
from apply_layer.executors.base import OrderLog, OrderRef, OrderRequest, Prepared, SendWatch
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.settings import Settings, load_settings
from tests.fake_binance import API_KEY, API_SECRET

if TYPE_CHECKING:  # the benchmarks import this module, and never pytest
    import pytest

SYM = "BTCUSDT"
STEPS = {
    "CLOSE_FULL": {
        "step": "CLOSE_FULL",
        "type": "market_reduce_only",
        "side": "close",
        "pct": 100.0,
    },
    "CLOSE_PARTIAL_75": {
        "step": "CLOSE_PARTIAL_75",
        "type": "market_reduce_only",
        "side": "close",
        "pct": 75.0,
    },
}


# The tests' settings: quick ticks, JSON logs to read back, two symbols.
TEST_DEFAULTS = {
    "APPLY_MODE": "paper",
    "APPLY_METRICS_PORT": "0",
    "APPLY_POLL_SEC": "0.5",
    "APPLY_LOG_FORMAT": "json",
    "APPLY_ALLOWLIST": "BTCUSDT,ETHUSDT",
}


class Daemon:
    """``apply-layer run`` in a child process, logging to a file (JSON in the tests)."""

    def __init__(
        self,
        redis_url: str,
        workdir: Path,
        name: str = "d1",
        *,
        defaults: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        """``defaults``: APPLY_* values under ``settings`` (the tests' own by default)."""
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLY_", "NOTIFY_"))}
        self.env.update(TEST_DEFAULTS if defaults is None else defaults)
        self.env.update({"APPLY_REDIS_URL": redis_url, "APPLY_CONSUMER_NAME": name})
        self.env.update({f"APPLY_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "apply_layer", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    async def ready(self, redis: Redis, timeout: float = 15.0) -> Daemon:
        """Wait until the consumer group exists and the daemon has said it started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            if "apply_layer_started" in self.log():
                try:
                    groups = await redis.xinfo_groups(K.PLAN_STREAM)
                except Exception:
                    groups = []
                if groups:
                    return self
            await asyncio.sleep(0.05)
        raise AssertionError(f"daemon not ready:\n{self.log()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            dump = subprocess.run(
                [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(self.proc.pid)],
                capture_output=True,
                text=True,
                check=False,
            )
            raise AssertionError(f"daemon still running:\n{dump.stdout}\n{self.log()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


class FakeBinanceDaemons:
    """Makes daemons in testnet mode against one fake Binance, and stops them all.

    Settings given here apply to every daemon made, those given to a call to
    that daemon alone. ``stop`` is for the test's teardown.
    """

    def __init__(self, redis_url: str, workdir: Path, binance_url: str, **settings: Any) -> None:
        self.redis_url, self.workdir, self.binance_url = redis_url, workdir, binance_url
        self.settings = settings
        self.made: list[Daemon] = []

    def __call__(self, name: str, **settings: Any) -> Daemon:
        daemon = Daemon(
            self.redis_url,
            self.workdir,
            name,
            mode="testnet",
            binance_base_url=self.binance_url,
            binance_api_key=API_KEY,
            binance_api_secret=API_SECRET,
            **(self.settings | settings),
        )
        self.made.append(daemon)
        return daemon

    def stop(self) -> None:
        for daemon in self.made:
            daemon.stop()


async def publish_plan(
    redis: Redis,
    plan_id: str,
    *,
    symbol: str = SYM,
    decision: str = "EXECUTE",
    step: str = "CLOSE_PARTIAL_75",
    age: float = 0.0,
    **extra: str,
) -> str:
    fields = {
        "plan_id": plan_id,
        "symbol": symbol,
        "decision": decision,
        "action": "PARTIAL_75",
        "steps": json.dumps([STEPS[step]]),
        "timestamp": f"{time.time() - age:.3f}",
        **extra,
    }
    entry_id = await redis.xadd(K.PLAN_STREAM, fields, maxlen=10000, approximate=True)  # type: ignore[arg-type]
    return str(entry_id)


async def grant(
    redis: Redis,
    plan_id: str,
    *,
    symbol: str = SYM,
    safe_qty: float = 0.01,
    position: float = 0.012,
    governor: bool = True,
    p33: bool = True,
) -> None:
    if governor:
        await redis.set(
            K.ISSUERS["governor"].key(plan_id),
            json.dumps({"granted": True, "symbol": symbol, "decision": "EXECUTE"}),
            ex=60,
        )
    if p33:
        await redis.set(
            K.ISSUERS["p33"].key(plan_id),
            json.dumps(
                {
                    "allow": True,
                    "symbol": symbol,
                    "safe_qty": safe_qty,
                    "exchange_position_amt": position,
                    "reason": "sanity_checks_passed",
                }
            ),
            ex=60,
        )


async def results(redis: Redis) -> list[dict[str, str]]:
    entries: list[tuple[str, dict[str, str]]] = await redis.xrange(K.RESULT_STREAM)  # type: ignore[assignment]
    return [dict(fields) for _, fields in entries]


@contextlib.contextmanager
def cli_database(
    server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, index: int
) -> Iterator[sync_redis.Redis]:
    """Database ``index`` of ``server``, emptied, set as ``APPLY_REDIS_URL`` for the
    commands a test runs in-process; a plain client of it for the test to write with."""
    url = server.url.removesuffix("/0") + f"/{index}"
    monkeypatch.setenv("APPLY_REDIS_URL", url)
    client = sync_redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


def sample(name: str, **labels: str) -> float:
    """A metric's value in this process now (0 for a series not created yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(check: Callable[[], object], timeout: float = 20.0) -> None:
    """Until ``check()`` (a plain or async callable) is truthy; a Redis or socket error
    while Redis is down or being restored counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
        except (RedisError, OSError):
            pass
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def blocked_in(redis: Redis, command: str) -> bool:
    """Whether a client of the server is blocked in ``command`` now (CLIENT LIST: its last
    command, and flag ``b``): a blocking read has reached the server and waits there."""
    clients = await redis.client_list()
    return any(c.get("cmd") == command and "b" in c.get("flags", "") for c in clients)


async def wait_result(redis: Redis, plan_id: str, timeout: float = 15.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for result in await results(redis):
            if result.get("plan_id") == plan_id:
                return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"no result for {plan_id}")


async def pending_count(redis: Redis, group: str = "apply_layer") -> int:
    info = await redis.xpending(K.PLAN_STREAM, group)
    return int(info["pending"])


async def all_acked(redis: Redis, group: str = "apply_layer") -> bool:
    """Whether ``group`` has no entry left unacknowledged: for ``until``, since the ack
    follows the result by a moment a fixed sleep cannot promise on a loaded machine."""
    return await pending_count(redis, group) == 0


# The running system's schema for quantum:stream:apply.result (docs/CONTRACT.md,
# "Results"), as its readers apply it.
RESULT_REQUIRED = ("plan_id", "symbol", "executed", "timestamp", "source")
RESULT_WHEN_EXECUTED = ("side", "qty", "order_id", "filled_qty", "order_status")
NOT_EXECUTED_DECISIONS = ("BLOCKED", "ERROR", "SKIP")


def check_result_schema(result: dict[str, str]) -> None:
    """Fail unless ``result`` is a valid result entry for every reader of the system."""
    for name in RESULT_REQUIRED:
        assert result.get(name), f"missing {name}: {result}"
    assert result["executed"] in ("True", "False"), result
    float(result["timestamp"])
    int(result["ts"])  # the reconcile engine: int(ts), a float string would raise
    assert result["reduceOnly"] == "true" and result.get("would_execute") in ("True", "False")
    assert "plan_decision" in result, result  # empty when the entry named none
    steps = json.loads(result["steps_results"])
    assert isinstance(steps, list), result
    if result["executed"] == "True":
        for name in RESULT_WHEN_EXECUTED:
            assert result.get(name), f"executed result without {name}: {result}"
        assert result["decision"] == "EXECUTE" and result["error"] == "", result
        assert result["side"] in ("BUY", "SELL") and result["action"] in (
            "PARTIAL_CLOSE",
            "FULL_CLOSE",
        )
        for name in ("qty", "filled_qty", "avg_price", "close_qty", "close_pct"):
            float(result[name])
        # P3.3 and the trade-history logger read the last step.
        last = steps[-1]
        assert last["status"] == "EXECUTED" and last["order_id"] == result["order_id"], result
        assert last["side"] == result["side"] and last["executed_qty"] == result["filled_qty"]
        float(last["avg_price"])
    else:
        assert result.get("error"), f"a result that did not execute needs an error: {result}"
        assert result["decision"] in NOT_EXECUTED_DECISIONS, result


class Snapshots:
    """Take an RDB snapshot of an ``EmbeddedRedis`` and bring the server back from it.

    ``restore`` kills the server (SIGKILL: nothing is saved on the way down),
    puts the snapshot in place of ``dump.rdb`` and starts it again on the same
    port: everything written after the snapshot is gone, as after a restart
    from an old backup or a failover to a replica that lagged.
    """

    def __init__(self, server: EmbeddedRedis, workdir: Path) -> None:
        self.server = server
        self.path = workdir / "snapshot.rdb"

    async def take(self, redis: Redis) -> None:
        await redis.save()
        shutil.copyfile(Path(self.server.directory) / "dump.rdb", self.path)

    def stop(self) -> None:
        self.server.stop(kill=True)

    def restore(self) -> None:
        """Bring the (stopped or running) server back from the snapshot."""
        self.server.stop(kill=True)
        shutil.copyfile(self.path, Path(self.server.directory) / "dump.rdb")
        self.server.start()


class MemoryLog:
    """The OrderLog protocol in memory: what a plan's journal would hold."""

    def __init__(
        self, attempts: list[int] | None = None, *, broken: str = "", unseen_ms: int = 0
    ) -> None:
        self.sends: list[tuple[int, Decimal, str]] = [(t, Decimal(0), "") for t in attempts or []]
        self.broken = broken
        self.unseen_ms = unseen_ms  # Redis "changed" then: a send may be missing from `sends`

    async def attempts(self) -> list[int]:
        if self.broken == "read":
            raise ConnectionError("journal down")
        return [t for t, _, _ in self.sends]

    async def record_attempt(
        self, sent_at_ms: int, *, quantity: Decimal, side: str, position_mark: str | None = None
    ) -> None:
        if self.broken == "write":
            raise ConnectionError("journal down")
        self.sends.append((sent_at_ms, quantity, side))

    def unrecorded_until_ms(self) -> int:
        return self.unseen_ms


# ---- in-process services -----------------------------------------------------


class StubExecutor:
    """The executor protocol's no-op parts, for test executors that only ``execute``."""

    mode = "paper"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def preflight(self) -> list[CheckLine]:
        return []

    async def find_order(self, ref: OrderRef, unseen_ms: int) -> StepResult | None:
        return None  # these executors' orders live in their own test's memory

    def prepare(
        self, plan_id: str, symbol: str, client_order_id: str, watch: SendWatch
    ) -> Prepared | None:
        return None


class SlowExecutor(StubExecutor):
    """Fills after a pause, recording how many orders per symbol overlap."""

    def __init__(self) -> None:
        self.active: defaultdict[str, int] = defaultdict(int)
        self.max_per_symbol: defaultdict[str, int] = defaultdict(int)
        self.total = 0
        self.max_total = 0

    async def execute(
        self, order: OrderRequest, log: OrderLog, prepared: Prepared | None = None
    ) -> StepResult:
        await log.record_attempt(0, quantity=order.safe_qty, side="SELL")
        self.active[order.symbol] += 1
        self.total += 1
        self.max_per_symbol[order.symbol] = max(
            self.max_per_symbol[order.symbol], self.active[order.symbol]
        )
        self.max_total = max(self.max_total, self.total)
        await asyncio.sleep(0.2)
        self.active[order.symbol] -= 1
        self.total -= 1
        return StepResult(
            order.step,
            StepStatus.EXECUTED,
            order_id="1",
            client_order_id=order.client_order_id,
            side="SELL",
            quantity=order.safe_qty,
            executed_qty=order.safe_qty,
            avg_price=Decimal(1),
        )


def settings_for(server: EmbeddedRedis, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": server.url,
        "mode": "paper",
        "metrics_port": 0,
        "poll_sec": 0.5,
        "allowlist": "BTCUSDT,ETHUSDT",
        "consumer_name": "inproc",
    }
    base.update(overrides)
    return load_settings(**base)


async def pending_entry(redis: Redis, plan_id: str) -> tuple[str, dict[str, str]]:
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    await publish_plan(redis, plan_id)
    reply: Any = await redis.xreadgroup("apply_layer", "c", {K.PLAN_STREAM: ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    return str(entry_id), dict(fields)


# ---- a primary and its replica (test_journal_wait_replicas, bench/wait_replicas) ----


class PrimaryAndReplica:
    """A private primary and a replica of it (``REPLICAOF``), in sync once entered.

    ``async with PrimaryAndReplica() as (primary, replica):``; both servers are
    closed on the way out (a replica the caller killed included).
    """

    def __init__(self, sync_timeout: float = 10.0) -> None:
        # No delay before a full sync: the replica is up in a fraction of a second.
        self.primary = EmbeddedRedis(extra_args=("--repl-diskless-sync-delay", "0"))
        self.replica = EmbeddedRedis()
        self.sync_timeout = sync_timeout

    async def __aenter__(self) -> tuple[EmbeddedRedis, EmbeddedRedis]:
        try:
            self.primary.start()
            self.replica.start()
            await self._replicate()
        except BaseException:
            self.close()
            raise
        return self.primary, self.replica

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _replicate(self) -> None:
        to_replica = Redis(port=self.replica.port, decode_responses=True)
        try:
            await to_replica.replicaof("127.0.0.1", self.primary.port)
            deadline = time.monotonic() + self.sync_timeout
            while (await to_replica.info("replication")).get("master_link_status") != "up":
                if time.monotonic() >= deadline:
                    raise AssertionError("replica never in sync")
                await asyncio.sleep(0.05)
        finally:
            await to_replica.aclose()

    def close(self) -> None:
        self.replica.close()
        self.primary.close()
