"""A small chaos run in CI: kills, a Redis restart and exchange faults; no invariant may break."""

from __future__ import annotations

from pathlib import Path

from tests.chaos import ChaosConfig, run_chaos


async def test_chaos_small(tmp_path: Path) -> None:
    config = ChaosConfig(plans=60, rate=15, instances=2, kills=4, redis_restarts=1, seed=11)
    report = await run_chaos(config, tmp_path)
    print("\n".join(report.lines()))
    assert report.published == 60
    assert report.kills == 4 and report.redis_restarts == 1
    assert sum(report.outcomes.values()) == 60
    assert report.outcomes["EXECUTED"] > 0 and report.outcomes["BLOCKED"] > 0
    assert report.duplicates == 0
    assert report.lost == 0
    assert report.double_orders == 0
    assert report.unauthorized_orders == 0
    assert report.outcome_mismatches == 0
    assert report.unrecorded_consumptions == 0
