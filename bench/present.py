"""Scenario 4: throughput with permits already present; Redis commands per plan."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import time
from collections import Counter
from typing import Any

import httpx

from apply_layer.core import keys as K
from apply_layer.store.gate import GATE_SCRIPT
from bench.context import BENCH_COMMANDS, WINDOW, Ctx, rnd, running
from bench.e2e import daemon_load, load_line
from bench.load import (
    Daemon,
    LoadGenerator,
    LoadResult,
    LoadSpec,
    Monitor,
    client_addresses,
    free_port,
    symbols,
)
from bench.measure import commandstats, count_keys
from bench.report import Row, ScenarioReport

# ---- 4: permits already present -------------------------------------------------------------


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
    result, extra = await daemon_load(ctx, daemon, spec)
    return result, extra, Counter(extra["commands"])


async def _script_counters(port: int) -> tuple[float, float]:
    """The daemon's own count of hot-path script calls and the batches they shared."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    values = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in text.splitlines())
        if name in ("apply_redis_script_calls_total", "apply_redis_script_batches_total")
    }
    return (
        values.get("apply_redis_script_calls_total", math.nan),
        values.get("apply_redis_script_batches_total", math.nan),
    )


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
  redis.call('SET', ARGV[5] .. n, ARGV[3], 'EX', 3600)
  redis.call('SET', ARGV[6] .. n, ARGV[4], 'EX', 3600)
end
return 1
"""
    gov_key, p33_key = K.ISSUERS["governor"].key, K.ISSUERS["p33"].key
    for lo in range(0, s.rb_keyspace, 50_000):
        hi = min(lo + 50_000, s.rb_keyspace)
        await ctx.admin.eval(fill, 0, lo, hi, gov, p33, gov_key(""), p33_key(""))
    command = [
        "EVALSHA", sha, "6",
        K.journal("bench-__rand_int__"),
        K.governor_block("__rand_int__"),
        *K.KILL_SWITCH_KEYS,
        gov_key("__rand_int__"),
        p33_key("__rand_int__"),
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
    allowed = (await count_keys(ctx.admin, [K.journal("bench-*")]))[K.journal("bench-*")]
    calls = after["evalsha"] - before["evalsha"]
    await ctx.admin.flushall()
    return {
        "rps": rps,
        "requests": s.rb_requests,
        "clients": 50,
        "keyspace": s.rb_keyspace,
        "allow_share": rnd(allowed / calls, 3) if calls else math.nan,
        "command": " ".join(["redis-benchmark", *args[1:]]).replace(sha, "<sha>"),
        "stderr": err.decode()[-300:],
    }


async def scenario_present(ctx: Ctx) -> ScenarioReport:
    s = ctx.sizes
    rep = ScenarioReport("4", "Throughput with permits already present; Redis commands per plan")
    await ctx.fresh(True)
    port = free_port()
    async with running(ctx, ctx.project_daemon("present", metrics_port=port)) as daemon:
        calls0, batches0 = await _script_counters(port)
        new, new_x, new_cmds = await _present_run(ctx, daemon, s.present_plans, "pp")
        calls1, batches1 = await _script_counters(port)
        trips = await _monitor_sample(ctx, daemon, s.monitor_plans)
    batches = batches1 - batches0
    per_batch = (calls1 - calls0) / batches if batches else math.nan
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
        Row(
            "4 permits present",
            "script round trips per plan (daemon's /metrics)",
            batches / max(new.completed, 1),
            unit="trips",
        ),
        Row("4 permits present", "script calls per round trip", per_batch, unit="calls"),
    ]

    def per_plan(cmds: Counter[str], n: int) -> str:
        return ", ".join(f"{k} {v / max(n, 1):.2f}" for k, v in cmds.most_common())

    rep.details += [
        f"project: {s.present_plans} plans; old behaviour: {s.present_old_plans} plans. The"
        " generator writes both permits and the plan in one pipeline, as fast as the window"
        " allows; its own commands (SET x2, XADD, XREAD) are subtracted from the counts.",
        load_line("project", new, new_x),
        load_line("old behaviour", old, old_x),
        f"project, calls per plan (INFO commandstats, in-script calls included): "
        f"{per_plan(new_cmds, new.completed)}",
        f"old behaviour, calls per plan: {per_plan(old_cmds, old.completed)}",
        f"MONITOR sample ({s.monitor_plans} plans): commands the daemon sent per plan (its"
        " scripts share round trips, several plans' per batch)"
        f" {trips['round_trips']:.2f}: "
        + ", ".join(f"{k[5:]} {v:.2f}" for k, v in trips.items() if k.startswith("trip:"))
        + f"; inside scripts {trips['in_scripts']:.2f}: "
        + ", ".join(f"{k[4:]} {v:.2f}" for k, v in trips.items() if k.startswith("lua:")),
        f"project's /metrics over the {s.present_plans} plans: {calls1 - calls0:.0f} script"
        f" calls in {batches:.0f} round trips (apply_redis_script_calls_total,"
        " apply_redis_script_batches_total; the daemon serves metrics on a free port here)",
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
        "script_calls": calls1 - calls0,
        "script_batches": batches,
        "redis_benchmark": bench,
    }
    return rep
