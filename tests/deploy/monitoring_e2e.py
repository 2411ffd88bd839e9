"""A real Prometheus with the shipped rules, time-scaled, for the end-to-end monitoring test.

``scaled_rules`` divides every ``for:``, every range window and the two
durations written as numbers (``time() - 900``, the pending age's ``> 300``)
by ``factor``: with 60, "for 30 minutes" is 30 s and a 15-minute window is
15 s, so an alert's whole life fits in a test. Thresholds that are counts are
left alone. ``PrometheusServer`` runs Debian's ``prometheus`` on a free port,
scraping one target every second and evaluating every second.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from apply_layer.ops.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "apply-layer.rules.yml"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Durations the rules write as plain seconds (prefix, number), scaled with the rest.
SECOND_LITERALS = (r"(time\(\) - )(\d+)", r"(apply_pending_oldest_age_seconds\{[^}]*\}\) > )(\d+)")


def _seconds(text: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+)([smhd])", text):
        total += int(number) * UNITS[unit]
    return total


def _scaled(seconds: float, factor: float) -> str:
    return f"{max(1, round(seconds / factor))}s"


def scale_expr(expr: str, factor: float) -> str:
    expr = re.sub(r"\[(\d+[smhd])\]", lambda m: f"[{_scaled(_seconds(m.group(1)), factor)}]", expr)
    for pattern in SECOND_LITERALS:
        expr = re.sub(
            pattern, lambda m: m.group(1) + str(max(1, round(int(m.group(2)) / factor))), expr
        )
    return expr


def scaled_rules(factor: float) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule["expr"] = scale_expr(rule["expr"], factor)
            if "for" in rule:
                rule["for"] = _scaled(_seconds(rule["for"]), factor)
    return data


class PrometheusServer:
    """``prometheus`` scraping ``target`` as job apply-layer, rules scaled by ``factor``."""

    def __init__(self, workdir: Path, target: str, factor: float) -> None:
        self.workdir, self.port, self.target = workdir, free_port(), target
        rules = workdir / "rules.yml"
        rules.write_text(yaml.safe_dump(scaled_rules(factor), sort_keys=False))
        self.rules, self.config = rules, workdir / "prometheus.yml"
        self._write_config([target])
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def _write_config(self, targets: list[str]) -> None:
        scrape = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"}
        config: dict[str, Any] = {
            "global": scrape,
            "rule_files": [str(self.rules)],
            "scrape_configs": [
                {"job_name": "apply-layer", "static_configs": [{"targets": targets}]}
            ],
        }
        self.config.write_text(yaml.safe_dump(config))

    def retarget(self, targets: list[str]) -> None:
        """Scrape ``targets`` from now on (none: the target was removed), via /-/reload."""
        self._write_config(targets)
        httpx.post(f"{self.url}/-/reload", timeout=10).raise_for_status()

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed (apt-get install prometheus)"
        self._log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                "--web.enable-lifecycle",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError((self.workdir / "prometheus.log").read_text())

    def firing(self) -> set[str]:
        """Names of the alerts firing now."""
        reply = httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()
        return {a["labels"]["alertname"] for a in reply["data"]["alerts"] if a["state"] == "firing"}

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
