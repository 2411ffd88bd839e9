"""Smoke test of the benchmarks (``python -m bench``): every scenario at tiny sizes, a table
with sane numbers; and the stand-alone ones at tiny sizes.

It checks that the benchmark runs and reports what it should, never how fast
anything is: the sizes are far too small for the figures to mean anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from apply_layer.core.keys import ISSUERS
from bench import p33_writer

# Its module-scoped fixture builds once per worker: keep its tests on one (pytest-xdist).
pytestmark = pytest.mark.xdist_group("bench")

ROOT = Path(__file__).resolve().parents[2]  # where ``bench`` and ``tests`` are packages
SCENARIOS = {"1", "2", "3", "4", "5", "6", "7"}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _bench(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m <module> args`` from the repository root, as docs/PERFORMANCE.md runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    args = ["--tiny", "--json", str(out / "bench.json"), "--workdir", str(out / "work")]
    proc = _bench("bench", *args, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== all scenarios" in proc.stdout
    data: dict[str, Any] = json.loads((out / "bench.json").read_text())
    data["stdout"] = proc.stdout
    return data


@pytest.mark.slow
def test_every_scenario_has_rows_with_numbers(report: dict[str, Any]) -> None:
    scenarios = {s["key"]: s for s in report["scenarios"]}
    assert set(scenarios) == SCENARIOS
    for scenario in scenarios.values():
        assert scenario["rows"], scenario["key"]
        for row in scenario["rows"]:
            if row["metric"].startswith("redis-benchmark") and not _finite(row["project"]):
                continue  # redis-tools not installed: reported, not measured
            assert _finite(row["project"]) and row["project"] >= 0, row
    table = report["stdout"].split("== all scenarios", 1)[1]
    for key, name in [
        ("1", "1 reaction"),
        ("2", "2 denial"),
        ("3", "3 end to end"),
        ("4", "4 permits present"),
        ("5", "5 soak"),
        ("6", "6 idle"),
        ("7", "7 order path D=20"),
    ]:
        assert f"| {name}" in table, key
    assert report["machine"]["nproc"] and report["machine"]["redis"].startswith("Redis server")


@pytest.mark.slow
def test_the_columns_compare_what_they_say(report: dict[str, Any]) -> None:
    scenarios = {s["key"]: s for s in report["scenarios"]}
    # 1 and 2: all three gates decided every plan, and decided it the expected way.
    for key, want in (("1", "ALLOW"), ("2", "BLOCK")):
        data = scenarios[key]["data"]
        for gate in ("project", "old_behaviour", "old_gate"):
            outcomes = data[gate]["outcomes"]
            assert sum(outcomes.values()) == data[gate]["plans"] > 0
            assert all(k.startswith(want) for k in outcomes), (key, gate, outcomes)
            assert _finite(data[gate]["reaction_ms"]["p50"])
            assert 0 <= data[gate]["reaction_ms"]["p50"] < 5000
    # The same gates, one at a time, with P3.3 writing from a process of its own.
    apart = scenarios["1"]["data"]["one_at_a_time_p33_apart"]
    for gate in ("project", "old_behaviour", "old_gate"):
        assert apart[gate]["plans"] == sum(apart[gate]["outcomes"].values()) > 0
        assert all(k.startswith("ALLOW") for k in apart[gate]["outcomes"]), apart[gate]
        assert 0 < apart[gate]["reaction_ms"]["p50"] < 5000
    assert any("P3.3 apart" in r["metric"] for r in scenarios["1"]["rows"])
    # The old gate waits out its deadline on a deny; the project does not.
    assert scenarios["2"]["data"]["old_gate"]["total_ms"]["p50"] >= 1100
    reaction = next(r for r in scenarios["1"]["rows"] if r["metric"].startswith("p50"))
    assert all(_finite(reaction[c]) for c in ("project", "old_behaviour", "old_gate"))
    # 3 and 4: every published plan got its result, executed, through the real daemon.
    for key, runs in (("3", ("max", "lat", "old")), ("4", ("project", "old_behaviour"))):
        for run in runs:
            load = scenarios[key]["data"][run]
            assert load["completed"] == load["plans"] > 0, (key, run)
            assert load["statuses"] == {"EXECUTED": load["plans"]}, (key, run)
            assert load["throughput"] > 0 and load["commands_per_plan"] > 0
    assert scenarios["3"]["data"]["max"]["keyspace_events"] == "on"
    assert "off" in scenarios["3"]["data"]["old"]["keyspace_events"]
    assert scenarios["4"]["data"]["monitor"]["round_trips"] > 0
    # 5: memory figures from /proc and INFO; 6: a CPU share.
    soak = scenarios["5"]["data"]
    assert soak["load"]["completed"] == soak["load"]["plans"]
    assert soak["rss_mb"]["start"] > 0 and soak["redis_mb"]["baseline"] > 0
    idle = scenarios["6"]["data"]
    assert 0 <= idle["project_cpu_pct"] <= 100 and 0 <= idle["old_behaviour_cpu_pct"] <= 100
    # 7: every plan executed over TLS, its POST seen at the exchange after its last permit.
    path = scenarios["7"]["data"]["D20"]["project"]
    plans = [*path["steady"], *path["idle"], path["restart"]]
    assert plans and all(p["status"] == "EXECUTED" for p in plans)
    assert all(0 < p["to_post_ms"] < p["to_result_ms"] for p in plans)
    assert path["connections"] >= 1 and all(p["weight"] > 0 for p in plans)


def test_the_calls_micro_benchmark_prints_both_paths() -> None:
    proc = _bench("bench.script_calls", "--tasks", "3", "--calls", "2", "--rounds", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "redis-py, one command at a time",
        "ScriptBatcher",
    ] * 2
    assert all("calls/s" in line and "us of CPU per call" in line for line in lines)


def test_the_reaction_parts_diagnostic_prints_every_part() -> None:
    proc = _bench("bench.reaction_parts", "--plans", "4", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p50 = {
        line.split()[0]: float(line.split()[2])
        for line in proc.stdout.splitlines()
        if " p50 " in line
    }
    assert set(p50) == {"event", "to_send", "rtt", "resume", "build", "log", "total"}
    assert all(v >= 0 for v in p50.values()) and p50["total"] > 0


def test_the_reaction_floor_diagnostic_prints_every_part_for_both_writers() -> None:
    proc = _bench("bench.reaction_floor", "--plans", "3", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocks = proc.stdout.split("writer ")[1:]
    assert [b.split(":")[0] for b in blocks] == ["apart", "here"]
    for block in blocks:
        p50 = {line.split()[0]: float(line.split()[2]) for line in block.splitlines()[1:]}
        assert set(p50) == {"event", "script", "build", "log", "resume", "total"}
        assert all(v >= 0 for v in p50.values())
        # The parts are consecutive: together they are the whole (medians, so roughly).
        assert p50["total"] > 0 and p50["script"] > 0


def test_the_p33_writer_reads_the_hold_then_writes_when_told() -> None:
    """bench.p33_writer writes as P3.3's _grant_permit: GET of the hold, then SETEX."""
    sent: list[tuple[Any, ...]] = []

    class Recording(fakeredis.FakeRedis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            sent.append(args)
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    client = Recording(decode_responses=True)
    now = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        p33_writer.serve(client, iter([f"plan-1\t{now}\t{now + 0.01}\n", "end\n", "x\t1\t2\n"]))
    governor, p33 = ISSUERS["governor"].key("plan-1"), ISSUERS["p33"].key("plan-1")
    hold = p33_writer.HOLD_KEY
    assert [c[:2] for c in sent] == [("SET", governor), ("GET", hold), ("SETEX", p33)]
    assert json.loads(client.get(p33) or "")["allow"] is True
    assert 0 < client.ttl(p33) <= p33_writer.PERMIT_TTL_SEC
    plan, written = out.getvalue().split("\t")
    assert plan == "plan-1" and now + 0.01 <= float(written) < time.perf_counter()
    assert p33_writer.clock_is_shared()


def test_the_order_lookup_benchmark_prints_its_three_lines() -> None:
    proc = _bench("bench.order_lookup", "--orders", "3", "--rounds", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 orders each way, 1 alternating rounds" in proc.stdout
    for label in ("execute, with the check", "execute, without it", "the lookup alone (-2013)"):
        assert label in proc.stdout and "ms/order" in proc.stdout, label
    assert "cost of the check:" in proc.stdout


def test_the_wait_replicas_benchmark_prints_both_ways() -> None:
    proc = _bench("bench.wait_replicas", "--records", "5", "--rounds", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 records each way, primary and replica on loopback" in proc.stdout
    assert "no WAIT (batched script)" in proc.stdout and "WAIT 1 after the record" in proc.stdout
    assert "cost of WAIT 1:" in proc.stdout


def test_the_benchmarks_do_not_import_pytest() -> None:
    """``tests.harness`` and ``tests.fake_binance`` are shared with the benchmarks, which
    run without pytest: importing them must not pull it in."""
    modules = ["bench.__main__", "bench.order_lookup", "bench.wait_replicas"]
    code = f"import sys, {', '.join(modules)}; assert 'pytest' not in sys.modules"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
