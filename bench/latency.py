"""Scenarios 1 and 2: the gate's reaction and denial, in this process."""

from __future__ import annotations

from bench.context import Ctx
from bench.gates import GATES, GateRun, gate_logging, notify_rtt, ping_rtt, run_floor, run_gate
from bench.measure import summary_ms
from bench.report import Row, ScenarioReport

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
    apart: dict[str, GateRun] = {}  # P3.3 from a process of its own, as deployed
    with gate_logging(ctx.workdir / "gate-1.log"):
        for gate in GATES:
            await ctx.admin.flushall()
            n, c = s.reaction_plans, s.reaction_concurrency
            runs[gate] = await run_gate(ctx.url, gate, plans=n, concurrency=c, deny=False)
        for gate in GATES:
            await ctx.admin.flushall()
            n = s.reaction_control
            alone[gate] = await run_gate(ctx.url, gate, plans=n, concurrency=1, deny=False)
        for gate in GATES:
            await ctx.admin.flushall()
            apart[gate] = await run_gate(
                ctx.url, gate, plans=n, concurrency=1, deny=False, writer_process=True
            )
        await ctx.admin.flushall()
        floor = summary_ms(await run_floor(ctx.url, s.reaction_control))
        ping = summary_ms(await ping_rtt(ctx.url, s.reaction_control))
        ping_idle = summary_ms(await ping_rtt(ctx.url, min(50, s.reaction_control), 0.2))
        notified = summary_ms(await notify_rtt(ctx.url, s.reaction_control))
    c = s.reaction_concurrency
    for label, batch, quantiles in (
        (f"{c} waiting at once", runs, (("p50", 1.0), ("p95", None), ("p99", 5.0), ("max", None))),
        ("one at a time", alone, (("p50", 1.0), ("p99", 5.0), ("max", None))),
        ("one at a time, P3.3 apart", apart, (("p50", 1.0), ("p99", 5.0), ("max", None))),
    ):
        summ = {g: summary_ms(r.reaction_ms) for g, r in batch.items()}
        rep.rows += latency_rows("1 reaction", label, summ, quantiles)
    rep.details += [
        f"{s.reaction_plans} plans per column with {c} waiting at once, then"
        f" {s.reaction_control} one at a time; the last permit lands 20-320 ms after the gate"
        " starts waiting (uniform), the governor's before it. Time from just before the last"
        " SET is sent to the return of the gate's call, both in this process (perf_counter).",
        "'P3.3 apart': the permits written by bench.p33_writer, a process of its own with a"
        " synchronous client, as the deployment's P3.3 writes them (GET of the symbol's P3.4"
        " hold, then SETEX); timed from just before its SETEX (perf_counter is CLOCK_MONOTONIC,"
        " shared by both processes); this process sits idle until the permit's event.",
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
        "one_at_a_time_p33_apart": {g: r.as_dict() for g, r in apart.items()},
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
