#!/usr/bin/env bash
# The nightly monitoring test (issue 23): a real Prometheus (Debian's
# `prometheus`, as CI installs for promtool) with the shipped alert rules
# scaled 60 times faster, scraping the real daemon every second while real
# faults are caused one at a time (tests/deploy/test_monitoring_e2e.py).
# About ten minutes. Extra args go to pytest; -s prints the table of fault,
# alert and time that docs/OPERATIONS.md records.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v prometheus >/dev/null || { echo "prometheus is not installed (apt-get install prometheus)" >&2; exit 2; }
export APPLY_MONITORING_E2E=1
exec .venv/bin/pytest tests/deploy/test_monitoring_e2e.py -p no:cacheprovider -s "$@"
