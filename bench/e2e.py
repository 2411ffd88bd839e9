"""Scenario 3: end-to-end throughput, permits 50-300 ms after each plan."""

from __future__ import annotations

import contextlib
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from bench.context import WINDOW, Ctx, daemon_commands, rnd, running
from bench.gates import gate_logging, run_gate
from bench.load import (
    Daemon,
    LoadResult,
    LoadSpec,
    run_load,
    symbols,
)
from bench.measure import CpuMeter, commandstats, percentile, summary_ms
from bench.profiling import profiled, summarise_profile
from bench.report import Row, ScenarioReport


async def daemon_load(
    ctx: Ctx, daemons: Daemon | list[Daemon], spec: LoadSpec, *, profile: bool = False
) -> tuple[LoadResult, dict[str, Any]]:
    """Run ``spec`` against ready daemons: their CPU and Redis', and the daemons'
    Redis commands (INFO commandstats, the generator's own subtracted)."""
    group = daemons if isinstance(daemons, list) else [daemons]
    spy = profiled(ctx, group[0]) if profile else None
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
    cmds = daemon_commands(before, after, result.commands + Counter({"xrevrange": 1}))
    extra = {
        "daemons": len(group),
        "daemon_cpu_pct": rnd(100 * cpu / r_cpu.wall, 1),
        "daemon_cpu_ms_per_plan": rnd(1000 * cpu / done, 3),
        "redis_cpu_pct": rnd(r_cpu.percent, 1),
        "redis_cpu_ms_per_plan": rnd(1000 * r_cpu.cpu / done, 3),
        "generator_cpu_ms_per_plan": rnd(1000 * result.generator_cpu_s / done, 3),
        "daemon_connections": conns,
        "redis_unavailable_logged": sum(d.count("redis_unavailable") for d in group),
        "keyspace_events": group[0].keyspace_status(),
        "daemon_settings": group[0].settings_text(),
        "commands": dict(cmds),
        "commands_per_plan": rnd(sum(cmds.values()) / done),
        # The project's daemon calls its scripts as functions (FCALL); the seed's by EVALSHA.
        "scripts_per_plan": rnd((cmds["fcall"] + cmds["evalsha"]) / done),
    }
    return result, extra


def load_line(label: str, r: LoadResult, extra: dict[str, Any]) -> str:
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
        f" Redis commands/plan {extra['commands_per_plan']} (scripts {extra['scripts_per_plan']});"
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
            result, extra = await daemon_load(
                ctx, group, replace(load, prefix=key), profile=key == "prof"
            )
        runs[key] = (label, result, extra)

    async def old_behaviour(key: str, label: str, load: LoadSpec) -> None:
        await ctx.fresh(False)
        async with running(ctx, ctx.old_daemon(f"e2e-{key}")) as daemon:
            result, extra = await daemon_load(ctx, daemon, replace(load, prefix=key))
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
            load_line(f"{label} ({result.spec.plans} plans)", result, extra)
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
            load_line(label, prof, prof_x),
            f"profile: {ctx.profile} (raw), summary {top}",
            *summary,
        ]
    return rep
