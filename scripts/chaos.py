#!/usr/bin/env python3
"""The chaos suite's full run: prints plans, kills, outcomes, duplicates, lost.

    .venv/bin/python scripts/chaos.py --plans 500 --instances 3 --kills 40
    .venv/bin/python scripts/chaos.py --failovers 6 --kills 0 --plans 600 --rate 10
    .venv/bin/python scripts/chaos.py --rollbacks 6 --kills 0 --plans 600 --rate 10

Everything runs on this machine: a redis-server with AOF (or, with
``--failovers``, a primary, a replica and three sentinels whose primary is
killed; with ``--rollbacks``, a redis-server brought back from a recent
snapshot), the daemons in testnet mode against the fake Binance of the tests.
Exit status 1 if any invariant broke. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos import ChaosConfig, run_chaos  # noqa: E402
from tests.chaos_redis import run_failover_chaos, run_rollback_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ChaosConfig()
    parser.add_argument("--plans", type=int, default=defaults.plans)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="plans per second")
    parser.add_argument("--instances", type=int, default=defaults.instances)
    parser.add_argument("--kills", type=int, default=defaults.kills, help="kill -9 of a daemon")
    parser.add_argument("--redis-restarts", type=int, default=defaults.redis_restarts)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--failovers", type=int, default=0, help="Sentinel setup; kill -9 of its primary"
    )
    kind.add_argument(
        "--rollbacks", type=int, default=0, help="Redis brought back from a recent snapshot"
    )
    parser.add_argument("--fault-ratio", type=float, default=defaults.fault_ratio)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    config = ChaosConfig(
        plans=args.plans,
        rate=args.rate,
        instances=args.instances,
        kills=args.kills,
        redis_restarts=args.redis_restarts,
        failovers=args.failovers,
        rollbacks=args.rollbacks,
        fault_ratio=args.fault_ratio,
        seed=args.seed,
    )
    run = run_failover_chaos if args.failovers else run_chaos
    run = run_rollback_chaos if args.rollbacks else run
    with tempfile.TemporaryDirectory(prefix="apply-layer-chaos-") as workdir:
        report = asyncio.run(run(config, Path(workdir)))
    print("\n".join(report.lines()))
    return 0 if report.violations == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
