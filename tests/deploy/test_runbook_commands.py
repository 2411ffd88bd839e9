"""Every ``apply-layer`` command the runbook and the alerts print runs as printed.

``apply-layer stats --since -30m`` once stopped with argparse's "expected one
argument" (exit 2) in three alert descriptions and five runbook places (issue
23): a command that fails at 3 a.m. sends the person on call nowhere. The
commands are taken from the files themselves (every inline code span that
starts with ``apply-layer``, in the runbook's tool table and alert entries and
in every alert's description), run as a shell would split them, against a
real Redis from the fixtures, and none may be a usage error. ``smoke`` is
left out: it talks to Binance's testnet (docs/OPERATIONS.md's first-run
section, not the runbook).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from apply_layer.ops.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
RULES = ROOT / "deploy" / "prometheus" / "apply-layer.rules.yml"
NOT_RUN = ("apply-layer smoke",)


def _spans(text: str) -> list[str]:
    """Inline code spans starting with ``apply-layer``, whitespace (line wraps) folded."""
    found = []
    for span in re.findall(r"`([^`]+)`", text):
        # A pipeline's first command is ours (``apply-layer functions | redis-cli ...``).
        command = " ".join(span.split()).split(" | ", 1)[0]
        if command.startswith("apply-layer ") and not command.startswith(NOT_RUN):
            found.append(command)
    return found


def runbook_commands() -> dict[str, set[str]]:
    """``command -> where it is printed``, from the runbook and the alert descriptions."""
    text = OPERATIONS.read_text()
    runbook = text.split("\n## The tools for confirming an alert", 1)[1]
    out: dict[str, set[str]] = {}
    for command in _spans(runbook):
        out.setdefault(command, set()).add("docs/OPERATIONS.md")
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                for command in _spans(rule["annotations"]["description"]):
                    out.setdefault(command, set()).add(rule["alert"])
    return out


def test_the_extraction_finds_the_commands_people_are_told_to_run() -> None:
    commands = runbook_commands()
    assert "apply-layer stats --since -30m" in commands
    assert "apply-layer stats --from-redis --since -30m" in commands
    assert "apply-layer check" in commands and "apply-layer permits PLAN_ID" in commands
    assert "apply-layer functions" in commands  # from a pipeline into redis-cli
    assert len(commands) >= 5, commands


@pytest.mark.parametrize("command", sorted(runbook_commands()))
def test_every_printed_command_runs(command: str, redis_server: EmbeddedRedis) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLY_", "BINANCE_"))}
    env["APPLY_REDIS_URL"] = redis_server.url
    argv = [sys.executable, "-m", "apply_layer", *shlex.split(command)[1:]]
    result = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    where = ", ".join(sorted(runbook_commands()[command]))
    output = result.stdout + result.stderr
    assert result.returncode != 2, f"{command!r} (printed in {where}) is a usage error: {output}"
    assert "expected one argument" not in output and "Traceback" not in output, output
    # It ran: the report, the check lines or the plan's permits were printed.
    assert result.returncode in (0, 1) and result.stdout.strip(), output
