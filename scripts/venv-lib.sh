# shellcheck shell=bash
# The project's .venv, installed from the hash-pinned lock and nothing else
# (docs/TESTING.md, "The lock"). Sourced by scripts/test.sh and scripts/demo.sh.
#
# ensure_venv LOCK...  makes .venv hold exactly the named lock files (each
# requirements/*.txt) plus this project, editable. .venv/.lock-stamp records
# what was installed, with each file's sha256: a file that changed since (a
# refreshed lock, an edited pyproject.toml) rebuilds the venv from nothing,
# so no package the lock dropped stays behind; a lock file not installed yet
# goes on top (the files pin the same versions: scripts/lock.sh compiles each
# under the constraints of the one before).

_stamp_line() { printf '%s %s\n' "$1" "$(sha256sum "$1" | cut -d' ' -f1)"; }

_stamp_current() {
  # Every lock file of the stamp is unchanged (an edited pyproject.toml only
  # reinstalls the project: its dependencies are the lock's business).
  local name sum
  while read -r name sum; do
    [[ $name == pyproject.toml ]] && continue
    [[ -f $name && $(sha256sum "$name" | cut -d' ' -f1) == "$sum" ]] || return 1
  done <"$1"
}

ensure_venv() {
  local python=${PYTHON:-python3} stamp=.venv/.lock-stamp lock pip
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "$python: Python 3.11 or newer is needed" >&2; return 2; }
  if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "note: requirements/ is locked for Python 3.11; $python may resolve differently" >&2
  fi
  if [[ -x .venv/bin/python && -f $stamp ]] && ! _stamp_current "$stamp"; then
    echo "the lock changed since .venv was built: rebuilding it"
    rm -rf .venv
  elif [[ -d .venv && ! -f $stamp ]]; then
    echo ".venv was not installed from the lock: rebuilding it"
    rm -rf .venv
  fi
  [[ -x .venv/bin/python ]] || "$python" -m venv .venv
  touch "$stamp"
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check --no-input)
  for lock in "$@" pyproject.toml; do
    grep -qx "$(_stamp_line "$lock")" "$stamp" && continue
    if [[ $lock == pyproject.toml ]]; then
      # The project itself: no dependency resolution, no download; setuptools
      # (its build backend) comes from the lock too.
      "${pip[@]}" --no-deps --no-build-isolation -e . >/dev/null
      sed -i '/^pyproject.toml /d' "$stamp"
    else
      echo "installing $lock (hash-checked)"
      "${pip[@]}" --require-hashes --no-deps -r "$lock"
    fi
    _stamp_line "$lock" >>"$stamp"
  done
}
