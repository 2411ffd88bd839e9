"""The operator's kit: alert rules, their unit tests, the dashboard and the runbooks.

promtool checks and unit-tests the rules; every PromQL expression, in the
rules and in the dashboard, may name only metrics the service exports, and
that set comes from prometheus_client's registry (what ``/metrics`` serves),
not from a list kept here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import apply_layer.metrics  # noqa: F401 - defines every apply_* metric in the registry

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "apply-layer.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "apply-layer.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "apply-layer.json"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
RUNBOOK_BASE = "file:///opt/quantum-apply-layer/current/share/quantum-apply-layer/OPERATIONS.md"
# Series Prometheus adds to every target itself.
PROMETHEUS_OWN = frozenset({"up"})
# Sample names per family type, as prometheus_client exposes them.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
# Words of PromQL that are not metric names (functions are recognised by their "(").
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"offset", "bool", "inf", "nan"}
)
GRAFANA_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def exported_names() -> frozenset[str]:
    """Every sample name the service's ``/metrics`` can show (families with no child yet too)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, enough for ours)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"'(?:\\.|[^'\\])*'", "''", text)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    names = set()
    # A word followed by "(" is a function, and so is one before "by"/"without".
    call_re = r"(\s*\(|\s+(?:by|without)\b)?"
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)" + call_re, text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by what they stand for."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARS.get(m.group(1), ".*"), expr)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing under CI: .ci/run installs Debian's prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def run_promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in load_rules() if "alert" in rule}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, expr)`` of every panel target and query variable."""
    out = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['id']} {target['refId']}", target["expr"]))
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query) or re.fullmatch(
                r"query_result\((.*)\)", query
            )
            assert inner, f"variable {var['name']}: {query}"
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_entries() -> dict[str, str]:
    """``### Heading`` -> its text, for the entries under ``## Alerts``."""
    text = OPERATIONS.read_text()
    section = text.split("\n## Alerts", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### (.+)$", section, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


# ---- the helpers themselves -------------------------------------------------------


def test_the_name_lexer_finds_metrics_and_nothing_else() -> None:
    expr = (
        'sum by (symbol, le) (rate(apply_permit_wait_seconds_bucket{decision="ok", le=~"1.*"}'
        "[$__rate_interval])) / on (instance) group_left () apply_redis_up > bool 0.75 "
        "and changes(process_start_time_seconds[30m:1m] offset 5m) unless up"
    )
    assert metric_names(expr) == {
        "apply_permit_wait_seconds_bucket",
        "apply_redis_up",
        "process_start_time_seconds",
        "up",
    }
    assert metric_names("histogram_quantile(0.95, x_bucket) - time()") == {"x_bucket"}
    exported = exported_names()
    assert {"apply_plans_total", "apply_permit_wait_seconds_bucket", "apply_redis_up"} <= exported
    assert "process_start_time_seconds" in exported  # the default process collector
    assert not metric_names("rate(apply_made_up_total[5m])") <= exported


# ---- alert rules -----------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == set(alerts()), "alerts without a test where they fire"
    assert quiet == set(alerts()), "alerts without a test where they stay quiet"


def test_every_alert_says_what_to_do_and_links_its_runbook() -> None:
    for name, rule in alerts().items():
        annotations, labels = rule["annotations"], rule["labels"]
        assert labels["severity"] in ("critical", "warning"), name
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{github_slug(name)}", name
        assert "`" in annotations["description"], f"{name}: no command to run"
        assert len(annotations["summary"]) < 120, name


def test_the_rules_name_only_exported_metrics() -> None:
    known = exported_names() | PROMETHEUS_OWN
    for rule in load_rules():
        names = metric_names(rule["expr"])
        assert names, rule["expr"]
        assert names <= known, f"{rule.get('alert')}: {sorted(names - known)} not exported"
        for name in names - PROMETHEUS_OWN:
            assert 'job="apply-layer"' in rule["expr"], f"{rule.get('alert')}: {name} unscoped"


def test_every_alert_has_one_runbook_entry_that_means_confirms_and_acts() -> None:
    entries = runbook_entries()
    assert set(entries) == set(alerts())
    for name, text in entries.items():
        for part in ("**Means**", "**Confirm**", "**Do**"):
            assert part in text, f"{name}: no {part}"
        assert re.search(r"apply-layer (stats|permits|check)|journalctl", text), name


# ---- the dashboard -----------------------------------------------------------------


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    data = dashboard()
    assert {"title", "uid", "panels", "templating", "time", "schemaVersion"} <= set(data)
    assert isinstance(data["schemaVersion"], int) and re.fullmatch(r"[\w-]{1,40}", data["uid"])
    names = [var["name"] for var in data["templating"]["list"]]
    assert names == ["datasource", "instance"]
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in data["panels"]:
        assert isinstance(panel["id"], int) and panel["id"] not in ids, panel["id"]
        ids.add(panel["id"])
        assert panel["type"] in {"row", "stat", "timeseries", "heatmap", "table"}, panel["type"]
        assert panel["title"]
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"} and all(isinstance(v, int) for v in grid.values())
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['id']} overlaps another"
                cells.add((x, y))
        if panel["type"] == "row":
            assert grid["w"] == 24 and grid["h"] == 1
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]


def test_the_dashboard_shows_what_the_person_on_call_needs() -> None:
    shown = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard())))
    assert {
        "apply_plans_total",  # plans by status and reason
        "apply_permit_wait_seconds_bucket",  # the wait distribution
        "apply_orders_total",
        "apply_redis_up",
        "apply_plans_in_flight",
        "apply_last_success_timestamp_seconds",  # per symbol
        "apply_gate_decisions_total",
    } <= shown


def test_the_dashboard_names_only_exported_metrics() -> None:
    known = exported_names() | PROMETHEUS_OWN
    for where, expr in dashboard_queries(dashboard()):
        names = metric_names(grafana_to_promql(expr))
        assert names, f"{where}: {expr}"
        assert names <= known, f"{where}: {sorted(names - known)} not exported"
        assert 'job="apply-layer"' in expr, f"{where}: not scoped to the job"


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{n}", "expr": grafana_to_promql(expr)}
        for n, (_, expr) in enumerate(dashboard_queries(dashboard()))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_instance_variable_lists_only_live_instances() -> None:
    """Issue 23: label_values() over the time range listed stopped instances too."""
    (var,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "instance"]
    query = var["query"]["query"]
    assert query == 'query_result(up{job="apply-layer"} == 1)', query
    sample = '{__name__="up", instance="vps:8043", job="apply-layer"} 1 1700000000000'
    match = re.search(var["regex"].strip("/"), sample)
    assert match and match.group(1) == "vps:8043"


def test_the_sizing_alert_counts_every_sizing_refusal() -> None:
    from apply_layer.core.sizing import REFUSALS

    expr = alerts()["ApplyLayerSizingRefusals"]["expr"]
    listed = re.search(r'reason=~"([^"]+)"', expr)
    assert listed and set(listed.group(1).split("|")) == set(REFUSALS)


def test_every_series_an_alert_counts_from_exists_at_zero() -> None:
    """increase() cannot see a series' first sample: the counters these alerts read
    must be exported before their first increment."""
    wanted = [
        ("apply_plans_total", {"status": "SKIPPED", "reason": "stale_plan"}),
        ("apply_plans_total", {"status": "FAILED", "reason": "exchange_unavailable"}),
        ("apply_plans_total", {"status": "REJECTED", "reason": "qty_below_min"}),
        ("apply_permit_signatures_total", {"issuer": "p33", "result": "mismatch"}),
        ("apply_exchange_blocked_until_timestamp_seconds", {"http_status": "418"}),
        ("apply_redis_identity_changes_total", {}),
        ("apply_orders_adopted_total", {}),
    ]
    for name, labels in wanted:
        assert REGISTRY.get_sample_value(name, labels) is not None, (name, labels)
