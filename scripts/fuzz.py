#!/usr/bin/env python3
"""The nightly fuzz run: tests/core/test_parsers_fuzz.py at 10,000 examples a property.

    .venv/bin/python scripts/fuzz.py [--profile nightly|ci] [extra pytest args]

Runs pytest with ``HYPOTHESIS_PROFILE`` set (tests/conftest.py registers the
profiles: ``nightly`` is 10,000 examples a test, ``ci`` 200) and Hypothesis's
statistics on, then prints one line a property: examples that passed, failed
and were discarded as invalid, and the time. Exit status is pytest's, so a
scheduler (cron, a CI schedule) sees a failure; Hypothesis prints the
falsifying example and a ``@reproduce_failure`` blob to replay it.
docs/TESTING.md records a run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")
DURATION = re.compile(r"([\d.]+)s call\s+tests/core/test_parsers_fuzz\.py::(\w+)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="nightly", choices=("nightly", "ci"))
    args, extra = parser.parse_known_args()
    env = {**os.environ, "HYPOTHESIS_PROFILE": args.profile}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/core/test_parsers_fuzz.py",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    command += ["--hypothesis-show-statistics", "--durations=0", *extra]
    run = subprocess.run(  # noqa: S603 - this interpreter's pytest, on our own tests
        command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    print(run.stdout, end="")
    print(run.stderr, end="", file=sys.stderr)
    durations = {m.group(2): float(m.group(1)) for m in DURATION.finditer(run.stdout)}
    print(f"\n== fuzz summary (profile {args.profile})")
    print("| property | passing | failing | invalid | time |")
    print("|---|---|---|---|---|")
    for block in run.stdout.split("tests/core/test_parsers_fuzz.py::")[1:]:
        name = block.split(":", 1)[0].strip()
        stats = STATS.search(block)
        if stats is None or not name.startswith("test_"):
            continue
        passing, failing, invalid = stats.groups()
        seconds = durations.get(name)
        shown = f"{seconds:.1f} s" if seconds is not None else "?"
        print(f"| {name} | {passing} | {failing} | {invalid} | {shown} |")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
