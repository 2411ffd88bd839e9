#!/usr/bin/env bash
# Compile pyproject.toml's dependencies into the hash-pinned lock under
# requirements/ (docs/TESTING.md, "The lock"). Every install (scripts/test.sh,
# scripts/demo.sh, .ci/run, scripts/install.sh) takes exactly these files.
#
#   scripts/lock.sh             after editing pyproject.toml: re-resolve, keeping
#                               every pin that still fits
#   scripts/lock.sh --upgrade   newest allowed versions of everything, then the
#                               whole test suite against them (drift, on purpose)
#
# pip-tools runs from a venv of its own (.venv-lock, itself installed from the
# hash-pinned requirements/tools.txt), so the project's .venv holds only the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
UPGRADE=0
RUN_TESTS=1
usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  echo "Options: --upgrade, --no-test (with --upgrade: compile only), -h/--help"
}
while [[ $# -gt 0 ]]; do
  case $1 in
    --upgrade) UPGRADE=1; shift ;;
    --no-test) RUN_TESTS=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "lock.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  { echo "lock.sh: the lock is for Python 3.11 (the VPS's and CI's); $PYTHON is not" >&2; exit 2; }

TOOLS=.venv-lock
if [[ ! -x $TOOLS/bin/pip-compile ]]; then
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
    --no-deps -r requirements/tools.txt
fi
compile() {
  local out=$1
  shift
  local upgrade=()
  [[ $UPGRADE == 1 ]] && upgrade=(--upgrade)
  CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$TOOLS/bin/pip-compile" --quiet \
    --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
    --no-emit-find-links --no-emit-trusted-host ${upgrade[@]+"${upgrade[@]}"} \
    --output-file "$out" "$@"
}
# Each file after the first is constrained by the one before it, so that a
# package pinned in two files has the same pin in both: a venv may take
# main.txt and then embedded-redis.txt on top.
compile requirements/tools.txt requirements/tools.in
compile requirements/main.txt --build-deps-for wheel pyproject.toml
compile requirements/dev.txt --build-deps-for wheel --extra dev \
  --constraint requirements/main.txt pyproject.toml
compile requirements/embedded-redis.txt --extra embedded-redis \
  --constraint requirements/dev.txt pyproject.toml
compile requirements/mutation.txt --extra dev --extra mutation \
  --constraint requirements/dev.txt pyproject.toml
echo "lock.sh: requirements/*.txt compiled"
git --no-pager diff --stat -- requirements/ 2>/dev/null || true
if [[ $UPGRADE == 1 && $RUN_TESTS == 1 ]]; then
  echo "lock.sh: running the whole suite against the refreshed lock"
  exec scripts/test.sh
fi
