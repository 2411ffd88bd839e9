"""What the scenarios measure with: percentiles, /proc readings, Redis INFO."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
