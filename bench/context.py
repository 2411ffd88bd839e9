"""What every scenario shares: the run's sizes and context."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from apply_layer.ops.embedded_redis import EmbeddedRedis
from bench.load import (
    Daemon,
    symbols,
)
from bench.measure import (
    set_notifications,
)

MB = 1024 * 1024
# Most plans the generator keeps outstanding in the saturated runs: below the
# plan stream's cap (~10,000 entries), so no entry is trimmed before it is read.
WINDOW = 8000
# Commands the bench itself sends to the server (INFO, CONFIG, ...): never counted as the daemon's.
BENCH_COMMANDS = {"info", "config|set", "config|get", "client|list", "flushall", "dbsize", "ping"}


@dataclass(frozen=True)
class Sizes:
    name: str
    reaction_plans: int = 500
    reaction_concurrency: int = 10
    reaction_control: int = 100  # the same at concurrency 1, to show concurrency changes nothing
    denial_plans: int = 200
    denial_concurrency: int = 20
    e2e_plans: int = 20_000
    e2e_old_plans: int = 60
    e2e_backlog_plans: int = 100
    e2e_one_symbol_plans: int = 3_000
    e2e_high_plans: int = 10_000
    e2e_two_plans: int = 10_000
    e2e_latency_plans: int = 4_000
    e2e_latency_rate: float = 200.0
    present_plans: int = 20_000
    present_old_plans: int = 1_000
    monitor_plans: int = 200
    rb_requests: int = 50_000
    rb_keyspace: int = 500_000
    soak_plans: int = 200_000
    soak_ttl_wait: bool = True
    soak_sample_sec: float = 2.0
    idle_sec: float = 60.0
    idle_settle_sec: float = 2.0
    side_runs: bool = True  # scenario 3's extra runs (in-flight 1024, two daemons, ...)
    path_delays: tuple[int, ...] = (0, 20, 50)  # scenario 7: ms every answer is held
    path_plans: int = 100
    path_idle_plans: int = 5
    path_idle_sec: float = 7.0
    path_old: bool = True  # scenario 7's middle column: the branch's base, same run


FULL = Sizes("full")
QUICK = Sizes(
    "quick",
    reaction_plans=200,
    reaction_control=50,
    denial_plans=60,
    e2e_plans=3_000,
    e2e_old_plans=20,
    e2e_backlog_plans=50,
    e2e_one_symbol_plans=600,
    e2e_high_plans=3000,
    e2e_two_plans=2_000,
    e2e_latency_plans=1_000,
    present_plans=3_000,
    present_old_plans=200,
    monitor_plans=100,
    rb_requests=10_000,
    rb_keyspace=100_000,
    soak_plans=10_000,
    soak_ttl_wait=False,
    soak_sample_sec=1.0,
    idle_sec=10.0,
    path_plans=30,
    path_idle_plans=2,
)
TINY = Sizes(  # the smoke test: every scenario, numbers meaningless
    "tiny",
    reaction_plans=20,
    reaction_control=2,
    denial_plans=10,
    denial_concurrency=10,
    e2e_plans=150,
    e2e_old_plans=2,
    e2e_backlog_plans=6,
    e2e_one_symbol_plans=40,
    e2e_high_plans=30,
    e2e_two_plans=60,
    e2e_latency_plans=30,
    present_plans=150,
    present_old_plans=20,
    monitor_plans=20,
    rb_requests=500,
    rb_keyspace=5_000,
    soak_plans=300,
    soak_ttl_wait=False,
    soak_sample_sec=0.2,
    idle_sec=1.0,
    idle_settle_sec=0.2,
    side_runs=False,
    path_delays=(20,),
    path_plans=3,
    path_idle_plans=1,
    path_idle_sec=1.0,
    path_old=False,
)


@dataclass
class Ctx:
    server: EmbeddedRedis
    admin: Redis
    workdir: Path
    sizes: Sizes
    rate: float  # offered plans/s in scenarios 3 and 5
    in_flight: int | None  # APPLY_MAX_IN_FLIGHT of the project column (None: shipped default)
    high_in_flight: int  # a high cap, tried in a side run of scenario 3
    n_symbols: int
    profile: Path | None
    e2e_throughput: float = math.nan
    order_path_base: str = ""  # scenario 7: the revision of "today's order path" ("": main's)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def redis_pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def project_daemon(self, name: str, **settings: Any) -> Daemon:
        """The project as shipped (``--max-in-flight`` overrides its in-flight cap)."""
        if self.in_flight is not None:
            settings.setdefault("max_in_flight", self.in_flight)
        syms = ",".join(symbols(self.n_symbols))
        return Daemon(self.url, self.workdir, name, allowlist=syms, **settings)

    def old_daemon(self, name: str) -> Daemon:
        syms = ",".join(symbols(self.n_symbols))
        return Daemon(
            self.url, self.workdir, name, allowlist=syms, keyspace_events="off", max_in_flight=1
        )

    async def fresh(self, notifications: bool) -> None:
        await self.admin.flushall()
        await set_notifications(self.admin, notifications)


@contextlib.asynccontextmanager
async def running(ctx: Ctx, daemon: Daemon) -> Any:
    daemon.start()
    try:
        await daemon.ready(ctx.admin)
        yield daemon
    finally:
        daemon.stop()


def rnd(value: float, digits: int = 2) -> float:
    return round(value, digits) if math.isfinite(value) else value


def daemon_commands(
    before: Counter[str], after: Counter[str], generator: Counter[str]
) -> Counter[str]:
    delta = after.copy()
    delta.subtract(before)
    delta.subtract(generator)
    for name in BENCH_COMMANDS:
        delta.pop(name, None)
    return Counter({k: v for k, v in delta.items() if v > 0})
