"""Shared helpers of ``scripts/bench.py``: statistics, /proc readings, Redis INFO, rows."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

CLK_TCK = os.sysconf("SC_CLK_TCK")

GOV_TEMPLATE = "quantum:permit:{plan_id}"
P33_TEMPLATE = "quantum:permit:p33:{plan_id}"
SYMBOL = "BTCUSDT"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max / mean of a list of milliseconds."""
    return {
        "n": float(len(values)),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


# ---- /proc -----------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # after "pid (comm) ": state is field 3, utime 14, stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    """VmRSS of a process in MiB (``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


class CpuMeter:
    """CPU seconds and wall time of a process between ``start`` and ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0 = proc_cpu_seconds(pid)
        self.wall0 = time.perf_counter()
        self.cpu = 0.0
        self.wall = 0.0

    def stop(self) -> CpuMeter:
        self.cpu = proc_cpu_seconds(self.pid) - self.cpu0
        self.wall = time.perf_counter() - self.wall0
        return self

    @property
    def percent(self) -> float:
        """Average CPU use in percent of one core."""
        return 100 * self.cpu / self.wall if self.wall else math.nan


# ---- Redis INFO ---------------------------------------------------------------------------


async def commandstats(redis: Redis) -> Counter[str]:
    """Calls per command (``INFO commandstats``; commands run inside scripts included)."""
    info: dict[str, Any] = await redis.info("commandstats")
    calls: Counter[str] = Counter()
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        if isinstance(value, dict):
            calls[name] = int(value.get("calls", 0))
    return calls


async def used_memory(redis: Redis) -> int:
    info: dict[str, Any] = await redis.info("memory")
    return int(info["used_memory"])


async def client_memory(redis: Redis) -> int:
    """``mem_clients_normal``: the buffers of connected clients, part of used_memory."""
    info: dict[str, Any] = await redis.info("memory")
    return int(info.get("mem_clients_normal", 0))


async def count_keys(redis: Redis, patterns: Iterable[str]) -> dict[str, int]:
    """Keys per pattern (SCAN; fine for the sizes the bench leaves behind)."""
    out: dict[str, int] = {}
    for pattern in patterns:
        n = 0
        async for _ in redis.scan_iter(match=pattern, count=5000):
            n += 1
        out[pattern] = n
    return out


async def set_notifications(redis: Redis, on: bool) -> None:
    """Server-wide keyspace notifications: the production setting (``K$h``) or none."""
    await redis.config_set("notify-keyspace-events", "K$h" if on else "")


# ---- the table ----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a metric, its value in each column, and its target."""

    scenario: str
    metric: str
    project: float | None
    old_behaviour: float | None = None
    old_gate: float | None = None
    unit: str = ""
    better: str = "lower"  # "lower" or "higher": which way the ratio is taken
    target: str = ""
    met: bool | None = None

    def ratio(self, other: float | None) -> float | None:
        """How many times better the project is than ``other`` (>1: better)."""
        if self.project is None or other is None:
            return None
        if any(math.isnan(v) for v in (self.project, other)):
            return None
        new, old = self.project, other
        if self.better == "higher":
            return new / old if old > 0 else None
        return old / max(new, 1e-6)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            "project": self.project,
            "old_behaviour": self.old_behaviour,
            "old_gate": self.old_gate,
            "ratio_vs_old_behaviour": self.ratio(self.old_behaviour),
            "ratio_vs_old_gate": self.ratio(self.old_gate),
            "target": self.target,
            "met": self.met,
        }


@dataclass
class ScenarioReport:
    """What one scenario measured: table rows plus free-form detail lines."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def fmt_value(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "%":
        return f"{value:.2f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.1f}x"


def render_table(reports: Sequence[ScenarioReport]) -> str:
    header = (
        "scenario",
        "metric",
        "project",
        "old behaviour",
        "old gate",
        "ratio (vs old beh. / vs old gate)",
        "target",
        "met",
    )
    lines: list[tuple[str, ...]] = []
    for report in reports:
        for row in report.rows:
            ratios = [fmt_ratio(row.ratio(row.old_behaviour)), fmt_ratio(row.ratio(row.old_gate))]
            ratio = " / ".join(r or "-" for r in ratios) if any(ratios) else ""
            metric = f"{row.metric} ({row.unit})" if row.unit else row.metric
            met = "" if row.met is None else ("yes" if row.met else "NO")
            lines.append(
                (
                    row.scenario,
                    metric,
                    fmt_value(row.project, row.unit),
                    fmt_value(row.old_behaviour, row.unit),
                    fmt_value(row.old_gate, row.unit),
                    ratio,
                    row.target,
                    met,
                )
            )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(fmt(line) for line in lines)
    return "\n".join(out)
