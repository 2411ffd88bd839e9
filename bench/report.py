"""The benchmark's table: one row per metric, the project beside the old behaviour and gate.

``Row.ratio`` says how many times better the project is, whichever way a
metric is better; ``render_table`` prints the Markdown table that
docs/PERFORMANCE.md records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of the table: a metric, its value in each column, and its target."""

    scenario: str
    metric: str
    project: float | None
    old_behaviour: float | None = None
    old_gate: float | None = None
    unit: str = ""
    better: str = "lower"  # "lower" or "higher": which way the ratio is taken; "" none
    target: str = ""
    met: bool | None = None

    def ratio(self, other: float | None) -> float | None:
        """How many times better the project is than ``other`` (>1: better)."""
        if self.project is None or other is None:
            return None
        if any(math.isnan(v) for v in (self.project, other)):
            return None
        new, old = self.project, other
        if not self.better:
            return None
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
