#!/usr/bin/env python3
"""Benchmarks of the apply layer against the polling gate, on a real Redis.

    .venv/bin/python scripts/bench.py [--quick] [--only N,...] [--json out.json]

Starts its own ``redis-server`` on a free port (``EmbeddedRedis``) and prints
one table: for each scenario, the project in its default configuration
(keyspace notifications on at the server, ``K$h``, as docs/GATE.md and
README.md recommend for production), the project forced into the old
behaviour (``APPLY_KEYSPACE_EVENTS=off``: it polls every 100 ms; plans gated
one at a time: ``APPLY_MAX_IN_FLIGHT=1``; notifications off at the server),
and, where it makes the comparison honest, the seed's gate emulated ("old
gate"). docs/PERFORMANCE.md explains every column and records a full run.

Scenarios: 1 reaction, 2 denial, 3 end-to-end throughput (permits 50-300 ms
after each plan), 4 throughput with permits already present (+ Redis
commands per plan, + redis-benchmark of gate.lua), 5 soak (RSS, Redis
memory), 6 idle CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench_common import (
    CpuMeter,
    Row,
    ScenarioReport,
    client_memory,
    commandstats,
    count_keys,
    loadavg,
    percentile,
    render_table,
    set_notifications,
    summary_ms,
    used_memory,
)
from bench_gate import GATES, GateRun, gate_logging, notify_rtt, ping_rtt, run_floor, run_gate
from bench_load import (
    Daemon,
    LoadGenerator,
    LoadResult,
    LoadSpec,
    Monitor,
    client_addresses,
    run_load,
    symbols,
)
from redis.asyncio import Redis

import apply_layer
from apply_layer.embedded_redis import EmbeddedRedis
from apply_layer.gate import GATE_SCRIPT
from apply_layer.redis_client import create_redis

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


def _r(value: float, digits: int = 2) -> float:
    return round(value, digits) if math.isfinite(value) else value


# ---- 1 and 2: the gate in this process ------------------------------------------------------


def latency_rows(
    scenario: str,
    label: str,
    summ: dict[str, dict[str, float]],
    quantiles: tuple[tuple[str, float | None], ...],
) -> list[Row]:
    """One row per quantile (ms), the three columns side by side, checked against
    the target where there is one."""
    rows = []
    for q, target in quantiles:
        p = summ["project"][q]
        rows.append(
            Row(
                scenario,
                f"{q}, {label}",
                p,
                summ["old_behaviour"][q],
                summ["old_gate"][q],
                unit="ms",
                target=f"<= {target:g} ms" if target else "",
                met=p <= target if target else None,
            )
        )
    return rows


async def scenario_reaction(ctx: Ctx) -> ScenarioReport:
    s = ctx.sizes
    rep = ScenarioReport("1", "Reaction: last permit written -> gate's decision (in process)")
    runs: dict[str, GateRun] = {}
    alone: dict[str, GateRun] = {}
    with gate_logging(ctx.workdir / "gate-1.log"):
        for gate in GATES:
            await ctx.admin.flushall()
            n, c = s.reaction_plans, s.reaction_concurrency
            runs[gate] = await run_gate(ctx.url, gate, plans=n, concurrency=c, deny=False)
        for gate in GATES:
            await ctx.admin.flushall()
            n = s.reaction_control
            alone[gate] = await run_gate(ctx.url, gate, plans=n, concurrency=1, deny=False)
        await ctx.admin.flushall()
        floor = summary_ms(await run_floor(ctx.url, s.reaction_control))
        ping = summary_ms(await ping_rtt(ctx.url, s.reaction_control))
        ping_idle = summary_ms(await ping_rtt(ctx.url, min(50, s.reaction_control), 0.2))
        notified = summary_ms(await notify_rtt(ctx.url, s.reaction_control))
    c = s.reaction_concurrency
    for label, batch, quantiles in (
        (f"{c} waiting at once", runs, (("p50", 1.0), ("p95", None), ("p99", 5.0), ("max", None))),
        ("one at a time", alone, (("p50", 1.0), ("p99", 5.0), ("max", None))),
    ):
        summ = {g: summary_ms(r.reaction_ms) for g, r in batch.items()}
        rep.rows += latency_rows("1 reaction", label, summ, quantiles)
    rep.details += [
        f"{s.reaction_plans} plans per column with {c} waiting at once, then"
        f" {s.reaction_control} one at a time; the last permit lands 20-320 ms after the gate"
        " starts waiting (uniform), the governor's before it. Time from just before the last"
        " SET is sent to the return of the gate's call, both in this process (perf_counter).",
        f"floor: the project gate's call with both permits already there (one EVALSHA, the"
        f" verdicts re-checked in Python, the log line): p50 {floor['p50']:.2f} ms,"
        f" p99 {floor['p99']:.2f} ms; a bare PING round trip, one at a time:"
        f" p50 {ping['p50']:.3f} ms, p99 {ping['p99']:.3f} ms; SET of a permit -> its keyspace"
        f" message read by a pub/sub client here, one at a time (the watcher's path):"
        f" p50 {notified['p50']:.3f} ms, p99 {notified['p99']:.3f} ms. A reaction is about"
        " that path plus the gate's call.",
        f"idle cost: a bare PING after 200 ms of idleness (as a plan waits one at a time):"
        f" p50 {ping_idle['p50']:.3f} ms, p99 {ping_idle['p99']:.3f} ms, against"
        f" {ping['p50']:.3f} ms after 5 ms: waking an idle process (and server) costs this"
        " machine about the difference, on every hop of the reaction.",
        *(f"{g}: outcomes {r.outcomes}; {r.watcher_status}" for g, r in runs.items()),
    ]
    rep.data = {g: r.as_dict() for g, r in runs.items()} | {
        "one_at_a_time": {g: r.as_dict() for g, r in alone.items()},
        "floor_ms": floor,
        "ping_ms": ping,
        "ping_after_200ms_idle_ms": ping_idle,
        "notify_ms": notified,
    }
    return rep


async def scenario_denial(ctx: Ctx) -> ScenarioReport:
    s = ctx.sizes
    rep = ScenarioReport("2", "Denial: P3.3 writes a deny -> BLOCK (in process)")
    runs: dict[str, GateRun] = {}
    with gate_logging(ctx.workdir / "gate-2.log"):
        for gate in GATES:
            await ctx.admin.flushall()
            runs[gate] = await run_gate(
                ctx.url, gate, plans=s.denial_plans, concurrency=s.denial_concurrency, deny=True
            )
    deny = {g: summary_ms(r.reaction_ms) for g, r in runs.items()}
    total = {g: summary_ms(r.total_ms) for g, r in runs.items()}
    denial_targets = (("p50", 5.0), ("p99", 5.0), ("max", None))
    rep.rows += latency_rows("2 denial", "deny written -> BLOCK", deny, denial_targets)
    rep.rows.append(
        Row(
            "2 denial",
            "p50, wait start -> BLOCK",
            total["project"]["p50"],
            total["old_behaviour"]["p50"],
            total["old_gate"]["p50"],
            unit="ms",
        )
    )
    rep.details += [
        f"{s.denial_plans} plans per column, {s.denial_concurrency} at once; P3.3 decides 20-320 ms"
        " after the gate starts waiting. Old gate: its P3.3 wrote no key for a deny, so 'deny"
        " written' is the moment it decided, and the gate waits out its 1200 ms.",
        *(f"{g}: outcomes {r.outcomes}" for g, r in runs.items()),
    ]
    rep.data = {g: r.as_dict() for g, r in runs.items()}
    return rep


# ---- 3: end to end, permits 50-300 ms after each plan -----------------------------------------


def _profiled(ctx: Ctx, daemon: Daemon) -> subprocess.Popen[bytes] | None:
    if ctx.profile is None:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    ctx.profile.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(  # noqa: S603 - the venv's py-spy on our own child
        [
            str(spy),
            "record",
            "--pid",
            str(daemon.pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(ctx.profile),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


_PATH_HEAD = re.compile(r" \(/.*/(site-packages|src|lib/python3\.\d+)/")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:]*):\d+\)$")


def _frame(text: str) -> tuple[str, str]:
    """``(function, file)`` of one py-spy frame, paths shortened to the package."""
    m = _FRAME.match(_PATH_HEAD.sub(" (", text))
    return (m["func"], m["file"]) if m else (text, "?")


def _package(file: str) -> str:
    head = file.split("/", 1)[0].removesuffix(".py")
    return {"<frozen runpy>": "runpy"}.get(head, head)


def summarise_profile(path: Path, top: int = 15) -> list[str]:
    """Where the daemon's CPU went, from py-spy's raw (collapsed) stacks.

    Three views: self time by package (asyncio, redis, apply_layer, logging, ...);
    inclusive time by the innermost apply_layer function on the stack (which of
    our calls the cost belongs to); self time by function.
    """
    if not path.exists():
        return [f"(no profile written to {path}: is py-spy installed and allowed to attach?)"]
    by_package: Counter[str] = Counter()
    by_ours: Counter[str] = Counter()
    by_func: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        func, file = frames[-1]
        by_package[_package(file)] += n
        by_func[f"{func} ({file})"] += n
        ours = [f"{fn} ({fl})" for fn, fl in frames if fl.startswith("apply_layer/")]
        by_ours[ours[-1] if ours else "(no apply_layer frame: event loop, callbacks)"] += n
    if not total:
        return ["(no samples)"]

    def block(title: str, counts: Counter[str]) -> list[str]:
        return [title] + [f"  {100 * n / total:5.1f}%  {k}" for k, n in counts.most_common(top)]

    return [
        f"{total} samples",
        *block("self time by package:", by_package),
        *block("inclusive time by the innermost apply_layer function:", by_ours),
        *block("self time by function:", by_func),
    ]


async def _daemon_load(
    ctx: Ctx, daemons: Daemon | list[Daemon], spec: LoadSpec, *, profile: bool = False
) -> tuple[LoadResult, dict[str, Any]]:
    """Run ``spec`` against ready daemons: their CPU and Redis', and the daemons'
    Redis commands (INFO commandstats, the generator's own subtracted)."""
    group = daemons if isinstance(daemons, list) else [daemons]
    spy = _profiled(ctx, group[0]) if profile else None
    before = await commandstats(ctx.admin)
    d_cpu = [CpuMeter(d.pid) for d in group]
    r_cpu = CpuMeter(ctx.redis_pid)
    result = await run_load(ctx.url, spec)
    for meter in (*d_cpu, r_cpu):
        meter.stop()
    after = await commandstats(ctx.admin)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    clients: list[dict[str, Any]] = await ctx.admin.client_list()
    conns = sum(1 for c in clients if str(c.get("name", "")).startswith("apply_layer:"))
    done = max(result.completed, 1)
    cpu = sum(m.cpu for m in d_cpu)
    cmds = _daemon_commands(before, after, result.commands + Counter({"xrevrange": 1}))
    extra = {
        "daemons": len(group),
        "daemon_cpu_pct": _r(100 * cpu / r_cpu.wall, 1),
        "daemon_cpu_ms_per_plan": _r(1000 * cpu / done, 3),
        "redis_cpu_pct": _r(r_cpu.percent, 1),
        "redis_cpu_ms_per_plan": _r(1000 * r_cpu.cpu / done, 3),
        "generator_cpu_ms_per_plan": _r(1000 * result.generator_cpu_s / done, 3),
        "daemon_connections": conns,
        "redis_unavailable_logged": sum(d.count("redis_unavailable") for d in group),
        "keyspace_events": group[0].keyspace_status(),
        "daemon_settings": group[0].settings_text(),
        "commands": dict(cmds),
        "commands_per_plan": _r(sum(cmds.values()) / done),
        "evalsha_per_plan": _r(cmds["evalsha"] / done),
    }
    return result, extra


def _load_line(label: str, r: LoadResult, extra: dict[str, Any]) -> str:
    lat = summary_ms(r.after_permit_ms)
    return (
        f"{label}: {r.completed}/{r.spec.plans} plans in {r.elapsed_s:.1f} s = {r.throughput:.1f}"
        f"/s; statuses {dict(r.statuses)}{'; errors ' + str(dict(r.errors)) if r.errors else ''};"
        f" last permit -> result p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms;"
        f" daemon{'s' if extra['daemons'] > 1 else ''} CPU {extra['daemon_cpu_pct']}% of a core"
        f" = {extra['daemon_cpu_ms_per_plan']} ms/plan;"
        f" Redis {extra['redis_cpu_pct']}% = {extra['redis_cpu_ms_per_plan']} ms/plan;"
        f" generator {extra['generator_cpu_ms_per_plan']} ms/plan;"
        f" daemon->Redis connections {extra['daemon_connections']};"
        f" 'redis_unavailable' logged {extra['redis_unavailable_logged']}x;"
        f" Redis commands/plan {extra['commands_per_plan']} (EVALSHA {extra['evalsha_per_plan']});"
        f" keyspace events: {extra['keyspace_events']}"
    )


Runner = Callable[..., Awaitable[None]]


async def _e2e_side_runs(ctx: Ctx, spec: LoadSpec, project: Runner, old_behaviour: Runner) -> None:
    """What bounds scenario 3: the in-flight cap the target needs, a second daemon,
    a single symbol, and the old behaviour facing a backlog."""
    s = ctx.sizes
    await project(
        "high",
        f"project at APPLY_MAX_IN_FLIGHT={ctx.high_in_flight}",
        replace(spec, plans=s.e2e_high_plans),
        max_in_flight=ctx.high_in_flight,
    )
    await project(
        "two", "project, TWO daemons (one group)", replace(spec, plans=s.e2e_two_plans), 2
    )
    one = replace(spec, plans=s.e2e_one_symbol_plans, symbols=symbols(1))
    await project("one", "project, ONE symbol", one)
    n = s.e2e_backlog_plans
    await old_behaviour(
        "backlog",
        f"old behaviour, {n} plans published at once (a backlog: most permits are already"
        " there when it reaches a plan)",
        replace(spec, plans=n, window=n),
    )


async def scenario_e2e(ctx: Ctx) -> ScenarioReport:
    s = ctx.sizes
    rep = ScenarioReport("3", "Throughput end to end, paper mode, permits 50-300 ms after plans")
    window = WINDOW
    spec = LoadSpec(s.e2e_plans, rate=ctx.rate, window=window, symbols=symbols(ctx.n_symbols))
    runs: dict[str, tuple[str, LoadResult, dict[str, Any]]] = {}

    async def project(key: str, label: str, load: LoadSpec, n: int = 1, **env: Any) -> None:
        await ctx.fresh(True)
        group = [ctx.project_daemon(f"e2e-{key}{i}", **env) for i in range(n)]
        async with contextlib.AsyncExitStack() as stack:
            for daemon in group:
                await stack.enter_async_context(running(ctx, daemon))
            result, extra = await _daemon_load(
                ctx, group, replace(load, prefix=key), profile=key == "prof"
            )
        runs[key] = (label, result, extra)

    async def old_behaviour(key: str, label: str, load: LoadSpec) -> None:
        await ctx.fresh(False)
        async with running(ctx, ctx.old_daemon(f"e2e-{key}")) as daemon:
            result, extra = await _daemon_load(ctx, daemon, replace(load, prefix=key))
        runs[key] = (label, result, extra)

    await project("max", "project, saturated", spec)
    ctx.e2e_throughput = runs["max"][1].throughput
    slow = replace(spec, plans=s.e2e_latency_plans, rate=s.e2e_latency_rate)
    await project("lat", f"project at {s.e2e_latency_rate:g} plans/s offered", slow)
    if s.side_runs:
        await _e2e_side_runs(ctx, spec, project, old_behaviour)
    await old_behaviour(
        "old", "old behaviour, one plan at a time", replace(spec, plans=s.e2e_old_plans, window=1)
    )
    await ctx.admin.flushall()
    with gate_logging(ctx.workdir / "gate-3.log"):
        seed_gate = await run_gate(
            ctx.url,
            "old_gate",
            plans=s.e2e_old_plans,
            concurrency=1,
            deny=False,
            last_ms=(50.0, 300.0),
            tag="e2e-old-gate",
        )
    seed_rate = seed_gate.plans / seed_gate.seconds

    new, old, lat = runs["max"][1], runs["old"][1], runs["lat"][1]
    if not s.side_runs:
        rep.details.append(f"({s.name}: side runs skipped)")
    rep.rows.append(
        Row(
            "3 end to end",
            "throughput, saturated",
            new.throughput,
            old.throughput,
            seed_rate,
            unit="plans/s",
            better="higher",
            target=">= 2000/s",
            met=new.throughput >= 2000,
        )
    )
    for q in ("p50", "p99"):
        rep.rows.append(
            Row(
                "3 end to end",
                f"{q}, last permit -> result seen, unsaturated",
                summary_ms(lat.after_permit_ms)[q],
                summary_ms(old.after_permit_ms)[q],
                unit="ms",
            )
        )
    rep.details += [
        f"offered {ctx.rate:g} plans/s (saturated runs), at most {window} plans outstanding;"
        f" plans spread over {ctx.n_symbols} symbols; daemon settings:"
        f" {runs['max'][2]['daemon_settings'].split(' ', 1)[1]} (allowlist: the symbols)",
        *(
            _load_line(f"{label} ({result.spec.plans} plans)", result, extra)
            for label, result, extra in runs.values()
        ),
        "generator's own lateness writing permits (saturated run): p99"
        f" {percentile(new.permit_lag_ms, 99):.1f} ms, max {max(new.permit_lag_ms or [0]):.1f} ms",
        f"old gate (emulated, gate only, no execution): {seed_gate.plans} plans one at a time,"
        f" permits 50-300 ms after the wait starts: {seed_rate:.2f}/s",
    ]
    rep.data = {key: r.as_dict() | x for key, (_, r, x) in runs.items()}
    rep.data["old_gate"] = seed_gate.as_dict() | {"throughput": seed_rate}
    if ctx.profile is not None:
        await project("prof", "profiled run (py-spy record, 200 Hz)", spec)
        label, prof, prof_x = runs.pop("prof")
        summary = summarise_profile(ctx.profile)
        top = ctx.profile.with_suffix(".top.txt")
        top.write_text("\n".join(summary) + "\n")
        rep.details += [
            _load_line(label, prof, prof_x),
            f"profile: {ctx.profile} (raw), summary {top}",
            *summary,
        ]
    return rep


# ---- 4: permits already present -------------------------------------------------------------


def _daemon_commands(
    before: Counter[str], after: Counter[str], generator: Counter[str]
) -> Counter[str]:
    delta = after.copy()
    delta.subtract(before)
    delta.subtract(generator)
    for name in BENCH_COMMANDS:
        delta.pop(name, None)
    return Counter({k: v for k, v in delta.items() if v > 0})


async def _present_run(
    ctx: Ctx, daemon: Daemon, plans: int, prefix: str
) -> tuple[LoadResult, dict[str, Any], Counter[str]]:
    spec = LoadSpec(
        plans,
        window=WINDOW,
        delay_ms=None,
        prefix=prefix,
        symbols=symbols(ctx.n_symbols),
    )
    result, extra = await _daemon_load(ctx, daemon, spec)
    return result, extra, Counter(extra["commands"])


async def _monitor_sample(ctx: Ctx, daemon: Daemon, plans: int) -> dict[str, float]:
    """Per plan: the commands the daemon sends and those its scripts run (MONITOR).

    MONITOR lists commands, not round trips: the daemon's scripts travel in
    shared batches (batching.py), several plans' scripts per round trip.
    """
    monitor = Monitor(ctx.server.port)
    await monitor.start()
    spec = LoadSpec(
        plans, window=plans, delay_ms=None, prefix="mon", symbols=symbols(ctx.n_symbols)
    )
    gen = LoadGenerator(ctx.url, spec)
    await gen.run()
    bench = gen.addresses | await client_addresses(ctx.admin, "bench:")
    await monitor.stop()
    trips: Counter[str] = Counter()
    lua: Counter[str] = Counter()
    for (origin, command), n in monitor.by_origin.items():
        if origin == "lua":
            lua[command] += n
        elif origin not in bench and command not in BENCH_COMMANDS:
            trips[command] += n
    return {
        "round_trips": sum(trips.values()) / plans,
        "in_scripts": sum(lua.values()) / plans,
        **{f"trip:{k}": v / plans for k, v in trips.most_common()},
        **{f"lua:{k}": v / plans for k, v in lua.most_common()},
    }


async def _redis_benchmark(ctx: Ctx) -> dict[str, Any]:
    """``redis-benchmark`` EVALSHA of gate.lua, each call on fresh random keys."""
    s = ctx.sizes
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not on PATH (Debian: apt-get install redis-tools)"}
    await ctx.fresh(True)
    sha = await ctx.admin.script_load(GATE_SCRIPT)
    assert sha == hashlib.sha1(GATE_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis' script id
    # Every __rand_int__ is drawn on its own, so journal, governor and P3.3 keys of one call
    # are unrelated numbers: fill the whole key range with permits, keep requests << range.
    gov = json.dumps({"granted": True, "symbol": "BTCUSDT", "decision": "EXECUTE"})
    p33 = json.dumps(
        {
            "allow": True,
            "symbol": "BTCUSDT",
            "safe_qty": 0.002,
            "exchange_position_amt": 0.002,
            "reason": "sanity_checks_passed",
        }
    )
    fill = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) - 1 do
  local n = string.format('%012d', i)
  redis.call('SET', 'quantum:permit:' .. n, ARGV[3], 'EX', 3600)
  redis.call('SET', 'quantum:permit:p33:' .. n, ARGV[4], 'EX', 3600)
end
return 1
"""
    for lo in range(0, s.rb_keyspace, 50_000):
        hi = min(lo + 50_000, s.rb_keyspace)
        await ctx.admin.eval(fill, 0, lo, hi, gov, p33)
    command = [
        "EVALSHA", sha, "6",
        "quantum:apply:journal:bench-__rand_int__",
        "quantum:governor:block:__rand_int__",
        "quantum:global:kill_switch",
        "quantum:kill",
        "quantum:permit:__rand_int__",
        "quantum:permit:p33:__rand_int__",
        "bench-plan", "BTCUSDT", "token", str(int(time.time() * 1000)), "0", "0", "60",
        "governor:", "p33:q",
    ]  # fmt: skip
    args = [binary, "-h", "127.0.0.1", "-p", str(ctx.server.port), "-n", str(s.rb_requests)]
    args += ["-c", "50", "-r", str(s.rb_keyspace), "--csv", *command]
    before = await commandstats(ctx.admin)
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    after = await commandstats(ctx.admin)
    rps = math.nan
    for line in out.decode().splitlines():
        cells = [c.strip('"') for c in line.split('","')]
        if cells and cells[0].upper().startswith("EVALSHA") and len(cells) > 1:
            rps = float(cells[1])
    allowed = (await count_keys(ctx.admin, ["quantum:apply:journal:bench-*"]))[
        "quantum:apply:journal:bench-*"
    ]
    calls = after["evalsha"] - before["evalsha"]
    await ctx.admin.flushall()
    return {
        "rps": rps,
        "requests": s.rb_requests,
        "clients": 50,
        "keyspace": s.rb_keyspace,
        "allow_share": _r(allowed / calls, 3) if calls else math.nan,
        "command": " ".join(["redis-benchmark", *args[1:]]).replace(sha, "<sha>"),
        "stderr": err.decode()[-300:],
    }


async def scenario_present(ctx: Ctx) -> ScenarioReport:
    s = ctx.sizes
    rep = ScenarioReport("4", "Throughput with permits already present; Redis commands per plan")
    await ctx.fresh(True)
    async with running(ctx, ctx.project_daemon("present")) as daemon:
        new, new_x, new_cmds = await _present_run(ctx, daemon, s.present_plans, "pp")
        trips = await _monitor_sample(ctx, daemon, s.monitor_plans)
    await ctx.fresh(False)
    async with running(ctx, ctx.old_daemon("present-old")) as daemon:
        old, old_x, old_cmds = await _present_run(ctx, daemon, s.present_old_plans, "po")
    bench = await _redis_benchmark(ctx)

    new_per = sum(new_cmds.values()) / max(new.completed, 1)
    old_per = sum(old_cmds.values()) / max(old.completed, 1)
    rps = float(bench.get("rps", math.nan))
    rep.rows += [
        Row(
            "4 permits present",
            "throughput",
            new.throughput,
            old.throughput,
            unit="plans/s",
            better="higher",
            target=f">= 1/3 of redis-benchmark ({rps / 3:,.0f}/s)" if math.isfinite(rps) else "",
            met=new.throughput >= rps / 3 if math.isfinite(rps) else None,
        ),
        Row(
            "4 permits present",
            "redis-benchmark EVALSHA gate.lua",
            rps,
            unit="calls/s",
            better="higher",
        ),
        Row("4 permits present", "Redis commands per plan, all", new_per, old_per, unit="cmds"),
        Row(
            "4 permits present",
            "commands sent per plan (MONITOR)",
            trips["round_trips"],
            unit="cmds",
        ),
    ]

    def per_plan(cmds: Counter[str], n: int) -> str:
        return ", ".join(f"{k} {v / max(n, 1):.2f}" for k, v in cmds.most_common())

    rep.details += [
        f"project: {s.present_plans} plans; old behaviour: {s.present_old_plans} plans. The"
        " generator writes both permits and the plan in one pipeline, as fast as the window"
        " allows; its own commands (SET x2, XADD, XREAD) are subtracted from the counts.",
        _load_line("project", new, new_x),
        _load_line("old behaviour", old, old_x),
        f"project, calls per plan (INFO commandstats, in-script calls included): "
        f"{per_plan(new_cmds, new.completed)}",
        f"old behaviour, calls per plan: {per_plan(old_cmds, old.completed)}",
        f"MONITOR sample ({s.monitor_plans} plans): commands the daemon sent per plan (its"
        " scripts share round trips, several plans' per batch)"
        f" {trips['round_trips']:.2f}: "
        + ", ".join(f"{k[5:]} {v:.2f}" for k, v in trips.items() if k.startswith("trip:"))
        + f"; inside scripts {trips['in_scripts']:.2f}: "
        + ", ".join(f"{k[4:]} {v:.2f}" for k, v in trips.items() if k.startswith("lua:")),
        f"redis-benchmark: {bench.get('command', bench.get('error'))}",
        f"  {bench.get('requests')} calls, 50 clients, on fresh random plan ids;"
        f" {100 * float(bench.get('allow_share', math.nan)):.1f}% took the ALLOW path (both"
        " permits present: GET + decode + DEL both, journal HSET + EXPIRE); the rest drew a"
        " permit an earlier call had consumed (WAIT: reads only) or a journal number already"
        " used (the recorded decision replayed: reads only)",
    ]
    rep.data = {
        "project": new.as_dict() | new_x | {"commands": dict(new_cmds)},
        "old_behaviour": old.as_dict() | old_x | {"commands": dict(old_cmds)},
        "monitor": trips,
        "redis_benchmark": bench,
    }
    return rep


# ---- 5: soak -------------------------------------------------------------------------------


async def scenario_soak(ctx: Ctx) -> ScenarioReport:
    s = ctx.sizes
    rep = ScenarioReport("5", "Soak: daemon RSS and Redis memory")
    ttl = 60
    rate = ctx.rate
    await ctx.fresh(True)
    daemon = ctx.project_daemon("soak", dedupe_ttl_sec=ttl, journal_ttl_sec=ttl)
    samples: list[dict[str, float]] = []
    async with running(ctx, daemon):
        await asyncio.sleep(0.5)
        base_mem = await used_memory(ctx.admin)
        base_clients = await client_memory(ctx.admin)
        base_keys = int(await ctx.admin.dbsize())
        rss0 = daemon.rss_mb()
        window = WINDOW
        spec = LoadSpec(
            s.soak_plans, rate=rate, window=window, prefix="soak", symbols=symbols(ctx.n_symbols)
        )
        gen = LoadGenerator(ctx.url, spec)
        load = asyncio.create_task(gen.run())
        t0 = time.perf_counter()
        while not load.done():
            samples.append(
                {
                    "t": time.perf_counter() - t0,
                    "done": gen.result.completed,
                    "rss_mb": daemon.rss_mb(),
                    "redis_mb": await used_memory(ctx.admin) / MB,
                }
            )
            await asyncio.wait({load}, timeout=s.soak_sample_sec)
        result = await load
        rss_end = daemon.rss_mb()
        mem_end = await used_memory(ctx.admin)
        keys_end = int(await ctx.admin.dbsize())
        waited = 0.0
        if s.soak_ttl_wait:
            t1 = time.perf_counter()
            deadline = t1 + ttl + 90
            while time.perf_counter() < deadline:
                left = await count_keys(
                    ctx.admin, ["quantum:apply:journal:*", "quantum:apply:dedupe:*"]
                )
                if not any(left.values()):
                    break
                await asyncio.sleep(5)
            await asyncio.sleep(2)
            waited = time.perf_counter() - t1
        mem_after = await used_memory(ctx.admin)
        rss_after = daemon.rss_mb()
        keys_after = int(await ctx.admin.dbsize())
        classes = await count_keys(
            ctx.admin,
            [
                "quantum:apply:journal:*",
                "quantum:apply:dedupe:*",
                "quantum:permit:*",
                "quantum:cooldown:*",
                "quantum:apply:lease:*",
                "quantum:svc:*",
                "quantum:stream:*",
            ],
        )
        streams = {}
        for name in ("quantum:stream:apply.plan", "quantum:stream:apply.result"):
            streams[name] = {
                "entries": int(await ctx.admin.xlen(name)),
                "mb": _r(float(await ctx.admin.memory_usage(name, samples=0) or 0) / MB),
            }
        info: dict[str, Any] = await ctx.admin.info("clients")
        clients = int(info.get("connected_clients", 0))
        for name in streams:
            await ctx.admin.xtrim(name, maxlen=0, approximate=False)
        mem_trimmed = await used_memory(ctx.admin)
        clients_mem = await client_memory(ctx.admin)

    def rss_at(frac: float) -> float:
        target = frac * s.soak_plans
        for sample in samples:
            if sample["done"] >= target:
                return sample["rss_mb"]
        return rss_end

    rss_max = max([rss0, rss_end, *(x["rss_mb"] for x in samples)])
    peak_mem = max([mem_end / MB, *(x["redis_mb"] for x in samples)])
    quarter, half = rss_at(0.25), rss_at(0.5)
    growth = (rss_end - quarter) / (0.75 * s.soak_plans) * 100_000 if s.soak_plans else math.nan
    rep.rows += [
        Row("5 soak", "daemon RSS at start", rss0, unit="MB"),
        Row("5 soak", "daemon RSS at 50% of the plans", half, unit="MB"),
        Row(
            "5 soak",
            "daemon RSS at end",
            rss_end,
            unit="MB",
            target="<= 100 MB, flat",
            met=rss_max <= 100 and growth <= 5,
        ),
        Row("5 soak", "daemon RSS growth 25%->end per 100k plans", growth, unit="MB"),
        Row("5 soak", "Redis used_memory baseline", base_mem / MB, unit="MB"),
        Row("5 soak", "Redis used_memory peak", peak_mem, unit="MB"),
        Row(
            "5 soak",
            "Redis used_memory after TTLs" if s.soak_ttl_wait else "Redis used_memory at end",
            mem_after / MB,
            unit="MB",
        ),
        Row(
            "5 soak",
            "... after also trimming the 2 capped streams",
            mem_trimmed / MB,
            unit="MB",
            target="back to baseline",
            # judged without the client buffers: the daemon's pool has grown since the baseline
            met=mem_trimmed - clients_mem <= (base_mem - base_clients) * 1.1 + MB
            if s.soak_ttl_wait
            else None,
        ),
    ]
    rep.details += [
        f"{result.completed}/{s.soak_plans} plans in {result.elapsed_s:.0f} s"
        f" ({result.throughput:.0f}/s), statuses {dict(result.statuses)};"
        f" daemon: {daemon.settings_text()}",
        f"RSS (MB): start {rss0:.1f}, 25% {quarter:.1f}, 50% {half:.1f},"
        f" end {rss_end:.1f}, max {rss_max:.1f}, after the TTL wait {rss_after:.1f}",
        f"Redis: baseline {base_mem / MB:.2f} MB ({base_keys} keys), end of load"
        f" {mem_end / MB:.2f} MB ({keys_end} keys), after waiting {waited:.0f} s for TTLs"
        f" {mem_after / MB:.2f} MB ({keys_after} keys), streams trimmed {mem_trimmed / MB:.2f} MB;"
        f" of which client buffers: {base_clients / MB:.2f} MB at baseline,"
        f" {clients_mem / MB:.2f} MB at the end ({clients} clients)",
        f"what remained: keys {classes}; streams {streams}; connected clients {clients}",
    ]
    if not s.soak_ttl_wait:
        rep.details.append(f"({s.name}: did not wait for the {ttl} s TTLs)")
    rep.data = {
        "load": result.as_dict(),
        "samples": samples,
        "rss_mb": {"start": rss0, "q25": quarter, "q50": half, "end": rss_end, "max": rss_max,
                   "after_ttl": rss_after, "growth_per_100k": growth},
        "redis_mb": {"baseline": base_mem / MB, "peak": peak_mem, "end": mem_end / MB,
                     "after_ttl": mem_after / MB, "trimmed": mem_trimmed / MB,
                     "clients_baseline": base_clients / MB, "clients_end": clients_mem / MB},
        "remaining": {"keys": classes, "streams": streams, "clients": clients, "waited_s": waited},
    }  # fmt: skip
    return rep


# ---- 6: idle -------------------------------------------------------------------------------


async def scenario_idle(ctx: Ctx) -> ScenarioReport:
    s = ctx.sizes
    rep = ScenarioReport("6", "Idle: daemon CPU with no plans")
    await ctx.fresh(True)
    new = Daemon(ctx.url, ctx.workdir, "idle")  # the shipped defaults, nothing sized
    old = Daemon(ctx.url, ctx.workdir, "idle-old", keyspace_events="off", max_in_flight=1)
    async with running(ctx, new), running(ctx, old):
        await asyncio.sleep(s.idle_settle_sec)
        before = await commandstats(ctx.admin)
        meters = CpuMeter(new.pid), CpuMeter(old.pid), CpuMeter(ctx.redis_pid)
        await asyncio.sleep(s.idle_sec)
        for meter in meters:
            meter.stop()
        after = await commandstats(ctx.admin)
    cmds = _daemon_commands(before, after, Counter())
    rep.rows.append(
        Row(
            "6 idle",
            f"daemon CPU over {s.idle_sec:g} s",
            meters[0].percent,
            meters[1].percent,
            unit="%",
            target="< 1%",
            met=meters[0].percent < 1,
        )
    )
    rep.details += [
        f"project: {new.settings_text()} (keyspace events: {new.keyspace_status()});"
        f" old behaviour: {old.settings_text()}; both idle at once on one server",
        f"CPU seconds: project {meters[0].cpu:.3f}, old behaviour {meters[1].cpu:.3f},"
        f" redis-server {meters[2].cpu:.3f} over {meters[0].wall:.1f} s",
        f"Redis commands from both daemons: {sum(cmds.values()) / meters[0].wall:.2f}/s"
        f" ({dict(cmds)})",
    ]
    rep.data = {
        "project_cpu_pct": meters[0].percent,
        "old_behaviour_cpu_pct": meters[1].percent,
        "redis_cpu_pct": meters[2].percent,
        "commands": dict(cmds),
    }
    return rep


# ---- driver --------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Ctx], Awaitable[ScenarioReport]]] = {
    "1": scenario_reaction,
    "2": scenario_denial,
    "3": scenario_e2e,
    "4": scenario_present,
    "5": scenario_soak,
    "6": scenario_idle,
}


def _cmd(*args: str) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=10)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip()


def machine(server: EmbeddedRedis) -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as f:
        ram = f"{int(f.readline().split()[1]) / MB:.1f} GiB"
    root = Path(__file__).resolve().parent.parent
    commit = _cmd("git", "-C", str(root), "rev-parse", "--short", "HEAD")
    dirty = _cmd("git", "-C", str(root), "status", "--porcelain", "--", "src")
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": ram,
        "kernel": platform.release(),
        "redis": _cmd(server.binary, "--version"),
        "redis_benchmark": shutil.which("redis-benchmark") or "not found",
        "python": platform.python_version(),
        "apply_layer": f"{apply_layer.__version__} from {Path(apply_layer.__file__).parent}",
        "git": f"{commit}{' + uncommitted changes in src/' if dirty else ''}",
        "loadavg_start": loadavg(),
    }


async def main_async(args: argparse.Namespace) -> int:
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    if args.plans:
        sizes = replace(sizes, e2e_plans=args.plans)
    if args.soak_plans:
        sizes = replace(sizes, soak_plans=args.soak_plans)
    only = [x.strip() for x in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [x for x in only if x not in SCENARIOS]
    if unknown:
        print(f"bench: unknown scenario {unknown[0]!r} (1-6)", file=sys.stderr)
        return 2
    workdir: Path = args.workdir
    server = EmbeddedRedis(notify_keyspace_events="K$h")
    server.start()
    admin = create_redis(server.url, name="bench:admin")
    ctx = Ctx(
        server=server,
        admin=admin,
        workdir=workdir,
        sizes=sizes,
        rate=args.rate,
        in_flight=args.max_in_flight,
        high_in_flight=args.high_in_flight,
        n_symbols=args.symbols,
        profile=args.profile,
    )
    info = machine(server)
    command = " ".join([".venv/bin/python", "scripts/bench.py", *sys.argv[1:]])
    print(f"apply-layer bench ({sizes.name}): {command}")
    for key, value in info.items():
        print(f"  {key:<16} {value}")
    print(f"  {'redis-server':<16} 127.0.0.1:{server.port} (private), workdir {workdir}")
    reports: list[ScenarioReport] = []
    started = time.perf_counter()
    try:
        for key in only:
            t0 = time.perf_counter()
            print(f"\n== scenario {key} ...", flush=True)
            report = await SCENARIOS[key](ctx)
            report.seconds = time.perf_counter() - t0
            reports.append(report)
            print(f"== {report.key}. {report.title} ({report.seconds:.0f} s)")
            print(render_table([report]))
            for line in report.details:
                print(f"   {line}")
    finally:
        await admin.aclose()
        server.close()
    info["loadavg_end"] = loadavg()
    info["seconds"] = f"{time.perf_counter() - started:.0f}"
    print(f"\n== all scenarios ({sizes.name}, {info['seconds']} s, load average at start"
          f" {info['loadavg_start']}, at end {info['loadavg_end']})")  # fmt: skip
    print(render_table(reports))
    if args.json:
        out = {
            "command": command,
            "sizes": asdict(sizes),
            "machine": info,
            "rate": ctx.rate,
            "max_in_flight": ctx.in_flight,
            "symbols": ctx.n_symbols,
            "scenarios": [
                {
                    "key": r.key,
                    "title": r.title,
                    "seconds": round(r.seconds, 1),
                    "rows": [row.as_dict() for row in r.rows],
                    "details": r.details,
                    "data": r.data,
                }
                for r in reports
            ],
        }
        args.json_text = json.dumps(out, indent=2, default=str) + "\n"
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer plans, shorter soak and idle")
    size.add_argument("--tiny", action="store_true", help="smoke-test sizes (numbers meaningless)")
    parser.add_argument("--only", help="comma-separated scenarios to run, e.g. 1,2 (default all)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument(
        "--rate", type=float, default=3000.0, help="offered plans/s in scenarios 3 and 5 (3000)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="APPLY_MAX_IN_FLIGHT of the project column in 3-5 (default: the shipped one, 64)",
    )
    parser.add_argument(
        "--high-in-flight",
        type=int,
        default=1024,
        help="a high APPLY_MAX_IN_FLIGHT, tried in a side run of scenario 3 (1024)",
    )
    parser.add_argument("--symbols", type=int, default=64, help="symbols plans spread over (64)")
    parser.add_argument("--plans", type=int, help="override scenario 3's plan count")
    parser.add_argument("--soak-plans", type=int, help="override scenario 5's plan count")
    parser.add_argument("--profile", help="also profile scenario 3 with py-spy into this file")
    parser.add_argument("--workdir", help="keep daemon logs here (default: a temp dir)")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    keep = bool(args.workdir)
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="apply-layer-bench-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.profile = Path(args.profile).resolve() if args.profile else None
    args.json_text = ""
    status = asyncio.run(main_async(args))
    if args.json and args.json_text:
        Path(args.json).write_text(args.json_text)
        print(f"json: {args.json}")
    if not keep and status == 0:
        shutil.rmtree(args.workdir, ignore_errors=True)  # the daemons' logs; --workdir keeps them
    return status


if __name__ == "__main__":
    sys.exit(main())
