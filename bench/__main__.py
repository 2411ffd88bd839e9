"""Benchmarks of the apply layer against the polling gate, on a real Redis.

    .venv/bin/python -m bench [--quick] [--only N,...] [--json out.json]   # from the repo root

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
memory), 6 idle CPU, 7 the order path in testnet mode (fake exchange over TLS,
answers held 0/20/50 ms; the project beside the code the branch started from).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path

import apply_layer
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from bench.context import FULL, MB, QUICK, TINY, Ctx
from bench.e2e import scenario_e2e
from bench.latency import scenario_denial, scenario_reaction
from bench.measure import loadavg
from bench.order_path import scenario_order_path
from bench.present import scenario_present
from bench.report import ScenarioReport, render_table
from bench.soak import scenario_idle, scenario_soak

# ---- driver --------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Ctx], Awaitable[ScenarioReport]]] = {
    "1": scenario_reaction,
    "2": scenario_denial,
    "3": scenario_e2e,
    "4": scenario_present,
    "5": scenario_soak,
    "6": scenario_idle,
    "7": scenario_order_path,
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
    root = Path(__file__).resolve().parent.parent  # the checkout whose commit is measured
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
        print(f"bench: unknown scenario {unknown[0]!r} (1-7)", file=sys.stderr)
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
        order_path_base=args.order_path_base,
    )
    info = machine(server)
    command = " ".join([".venv/bin/python", "-m", "bench", *sys.argv[1:]])
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
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
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
    parser.add_argument(
        "--order-path-base",
        default="",
        help="scenario 7: the revision whose daemon is 'today's order path' (default: "
        "git merge-base HEAD main)",
    )
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
