"""Scenarios 5 and 6: the soak (RSS, Redis memory) and the idle daemon's CPU."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from typing import Any

from apply_layer.core import keys as K
from bench.context import MB, WINDOW, Ctx, daemon_commands, rnd, running
from bench.load import (
    Daemon,
    LoadGenerator,
    LoadSpec,
    symbols,
)
from bench.measure import CpuMeter, client_memory, commandstats, count_keys, used_memory
from bench.report import Row, ScenarioReport

# What a run leaves behind, by kind (SCAN patterns of apply_layer.core.keys): what TTLs expire,
# then everything else the daemon writes.
TTL_KEYS = [K.glob_of(K.JOURNAL_TEMPLATE), K.glob_of(K.CLAIM_TEMPLATE)]
LEFT_KEYS = [
    *TTL_KEYS,
    K.glob_of(K.ISSUERS["governor"].key_template),  # every issuer's permits
    K.glob_of(K.COOLDOWN_TEMPLATE),
    K.glob_of(K.SYMBOL_LEASE_TEMPLATE),
    K.HEARTBEAT_KEY,
    K.PLAN_STREAM,
    K.RESULT_STREAM,
]

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
                left = await count_keys(ctx.admin, TTL_KEYS)
                if not any(left.values()):
                    break
                await asyncio.sleep(5)
            await asyncio.sleep(2)
            waited = time.perf_counter() - t1
        mem_after = await used_memory(ctx.admin)
        rss_after = daemon.rss_mb()
        keys_after = int(await ctx.admin.dbsize())
        classes = await count_keys(ctx.admin, LEFT_KEYS)
        streams = {}
        for name in (K.PLAN_STREAM, K.RESULT_STREAM):
            streams[name] = {
                "entries": int(await ctx.admin.xlen(name)),
                "mb": rnd(float(await ctx.admin.memory_usage(name, samples=0) or 0) / MB),
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
    cmds = daemon_commands(before, after, Counter())
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
