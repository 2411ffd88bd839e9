#!/usr/bin/env bash
# The chaos suite's full run (docs/RELIABILITY.md): plans flowing while daemons
# are killed, Redis restarts, fails over or rolls back; prints what happened and
# exits 1 if any invariant broke. Options: scripts/chaos.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.chaos "$@"
