#!/usr/bin/env bash
# Install (or upgrade to) a release of quantum-apply-layer on this host.
# Idempotent: a second run with the same release changes nothing.
# docs/DEPLOY.md explains the layout and the upgrade/rollback procedure.
set -euo pipefail
# shellcheck source=deploy-lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/deploy-lib.sh"

readonly SERVICE=quantum-apply-layer
readonly SVC_USER=quantum-apply
readonly SVC_GROUP=quantum-apply
readonly PREFIX=/opt/quantum-apply-layer
readonly ENV_FILE=/etc/quantum/apply-layer.env
readonly UNIT_DIR=/etc/systemd/system
readonly MARKER=.release # written last into a complete release directory

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=$(dirname "$SCRIPT_DIR")

usage() {
  cat <<EOF
Usage: $(basename "$0") [OPTIONS]

Builds a virtualenv release under $PREFIX/releases/<version>/, points
$PREFIX/current at it (the old target becomes $PREFIX/previous),
installs the systemd unit, installs $ENV_FILE only if it does not exist
(an operator's settings and secrets are never overwritten), reloads systemd
and restarts the service if it was running.

Options:
  --source PATH          project directory, wheel (.whl) or sdist (.tar.gz) to
                         install (default: the checkout holding this script:
                         $PROJECT_DIR)
  --version NAME         release name (default: from the wheel/sdist file name,
                         or pyproject.toml's version plus -g<commit> in a git
                         checkout)
  --python PYTHON        interpreter for the venv, 3.11 or newer (default: python3)
  --lock FILE            the hash-pinned dependencies to install (default: this
                         checkout's requirements/main.txt); the release gets
                         exactly these versions, checked against their hashes
  --pip-arg ARG          extra argument for pip install, repeatable, e.g.
                         --pip-arg=--no-index --pip-arg=--find-links=/srv/wheels
  --force                rebuild the release even if it is already installed
                         (refused for the release that is current)
  --enable               enable the unit at boot and (re)start it now
  --restart              restart the service even if it was not running
  --no-restart           never restart (do it later: systemctl restart $SERVICE)
  --no-systemctl         do not call systemctl at all
  --root DIR             install below DIR instead of / (tests, inspection: a
                         venv only runs where it was built); skips creating the
                         user and implies --no-systemctl unless SYSTEMCTL is set
  -h, --help             this help

Environment: SYSTEMCTL  the systemctl command to run (default: systemctl).

Needs: bash, python3 (>= 3.11) with the venv module (Debian: apt-get install
python3-venv), access to a package index or --pip-arg wheelhouse options, root
(unless --root points somewhere writable).
EOF
}

say() { printf 'install: %s\n' "$*"; }
warn() { printf 'install: warning: %s\n' "$*" >&2; }
die() {
  printf 'install: error: %s\n' "$*" >&2
  exit 1
}

# --- options --------------------------------------------------------------------
SOURCE=$PROJECT_DIR
VERSION=
PYTHON=python3
PIP_ARGS=()
LOCK=$PROJECT_DIR/requirements/main.txt
FORCE=0
ENABLE=0
RESTART=auto # auto: restart only if it was running; yes; no
USE_SYSTEMCTL=1
ROOT=

while [[ $# -gt 0 ]]; do
  case $1 in
    --source) need_arg "$@"; SOURCE=$2; shift 2 ;;
    --source=*) SOURCE=${1#*=}; shift ;;
    --version) need_arg "$@"; VERSION=$2; shift 2 ;;
    --version=*) VERSION=${1#*=}; shift ;;
    --python) need_arg "$@"; PYTHON=$2; shift 2 ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --lock) need_arg "$@"; LOCK=$2; shift 2 ;;
    --lock=*) LOCK=${1#*=}; shift ;;
    --pip-arg) need_arg "$@"; PIP_ARGS+=("$2"); shift 2 ;;
    --pip-arg=*) PIP_ARGS+=("${1#*=}"); shift ;;
    --force) FORCE=1; shift ;;
    --enable) ENABLE=1; shift ;;
    --restart) RESTART=yes; shift ;;
    --no-restart) RESTART=no; shift ;;
    --no-systemctl) USE_SYSTEMCTL=0; shift ;;
    --root) need_arg "$@"; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

resolve_root_and_systemctl
if [[ $ENABLE == 1 && $USE_SYSTEMCTL == 0 ]]; then
  die "--enable needs systemctl"
fi

BASE=$ROOT$PREFIX
RELEASES=$BASE/releases
DEPLOY_DIR=$PROJECT_DIR/deploy
UNIT_SRC=$DEPLOY_DIR/systemd/$SERVICE.service
ENV_SRC=$DEPLOY_DIR/env/apply-layer.env
DOC_SRC=$PROJECT_DIR/docs/DEPLOY.md
# Shipped beside the unit for the operator: the runbooks (the alerts' runbook_url
# points at this copy of OPERATIONS.md), the rules, the dashboard, the Redis ACL
# and the threat model.
KIT_SRC=("$PROJECT_DIR/docs/OPERATIONS.md" "$DEPLOY_DIR/prometheus/apply-layer.rules.yml"
  "$DEPLOY_DIR/grafana/apply-layer.json" "$DEPLOY_DIR/redis/apply-layer.acl"
  "$PROJECT_DIR/docs/SECURITY.md")
for f in "$UNIT_SRC" "$ENV_SRC"; do
  [[ -f $f ]] || die "$f is missing: run this script from a complete checkout or sdist"
done
[[ -e $SOURCE ]] || die "--source $SOURCE: not found"
[[ -f $LOCK ]] || die "--lock $LOCK: not found (scripts/lock.sh writes requirements/main.txt)"
[[ $EUID -eq 0 || -n $ROOT ]] || die "run as root (or give --root DIR)"
command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found (give --python)"
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  die "$PYTHON must be Python >= 3.11 with the venv module (Debian: apt-get install python3-venv)"
# The venv links to its base interpreter: the service user must reach it, and
# ProtectHome=yes hides /root and /home (a pyenv there would fail with 203/EXEC).
base_prefix=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')
case $base_prefix/ in
  /root/* | /home/* | /run/user/*)
    if [[ -n $ROOT ]]; then
      warn "$PYTHON lives in $base_prefix, which the service cannot see (fine for --root tests)"
    else
      die "$PYTHON lives in $base_prefix, which ProtectHome=yes hides from the service; use a system python (--python /usr/bin/python3)"
    fi
    ;;
esac

# --- which release --------------------------------------------------------------
SOURCE=$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")
if [[ -z $VERSION ]]; then
  case $SOURCE in
    *.whl) VERSION=$(basename "$SOURCE" | cut -d- -f2) ;;
    *.tar.gz) VERSION=$(basename "$SOURCE" .tar.gz) && VERSION=${VERSION##*-} ;;
    *)
      [[ -f $SOURCE/pyproject.toml ]] || die "--source $SOURCE: not a project directory, wheel or sdist"
      VERSION=$("$PYTHON" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SOURCE/pyproject.toml")
      # safe.directory: root reading an operator's checkout must still see the commit.
      if commit=$(git -c safe.directory="$SOURCE" -C "$SOURCE" rev-parse --short=8 HEAD 2>/dev/null); then
        VERSION=$VERSION-g$commit
        if [[ -n $(git -c safe.directory="$SOURCE" -C "$SOURCE" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
          warn "$SOURCE has uncommitted changes; they go into release $VERSION"
        fi
      fi
      ;;
  esac
fi
[[ $VERSION =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || die "bad release name '$VERSION'"
RELEASE=$RELEASES/$VERSION

umask 022 # the release must be readable by the service user whatever root's umask is
mkdir -p "$RELEASES"
exec 9>"$BASE/.install.lock"
command -v flock >/dev/null 2>&1 && { flock -n 9 || die "another install or rollback is running"; }

was_active=0
if [[ $USE_SYSTEMCTL == 1 ]] && "$SYSTEMCTL" is-active --quiet "$SERVICE"; then
  was_active=1
fi

# --- user and group -------------------------------------------------------------
if [[ -n $ROOT ]]; then
  say "--root given: not creating user $SVC_USER"
else
  if ! getent group "$SVC_GROUP" >/dev/null; then
    groupadd --system "$SVC_GROUP"
    say "created group $SVC_GROUP"
  fi
  if ! getent passwd "$SVC_USER" >/dev/null; then
    useradd --system --gid "$SVC_GROUP" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "quantum apply layer" "$SVC_USER"
    say "created user $SVC_USER"
  fi
fi

# --- the release ----------------------------------------------------------------
current_target=
[[ -L $BASE/current ]] && current_target=$(readlink "$BASE/current")

BUILD_TMP=
build_release() {
  BUILD_TMP=$(mktemp -d)
  # Remove a half-built release on failure, so a retry starts clean.
  trap 'rm -rf "$BUILD_TMP"; [[ -f "$RELEASE/$MARKER" ]] || rm -rf "$RELEASE"' EXIT
  local target=$SOURCE
  if [[ -d $SOURCE ]]; then
    # Build from a copy: pip writes build/ and *.egg-info into the tree it builds.
    target=$BUILD_TMP/src
    mkdir "$target"
    tar -C "$SOURCE" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
      --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache \
      --exclude=.pytest_cache --exclude=.hypothesis --exclude=./.coverage-data \
      --exclude=./.venv-lock --exclude='./.coverage*' -cf - . | tar -C "$target" -xf -
  fi
  rm -rf "$RELEASE"
  say "building release $VERSION in $RELEASE"
  "$PYTHON" -m venv "$RELEASE"
  # Exactly the lock, every file checked against its hash, then the project
  # alone: no resolver, no unpinned download (setuptools, the build backend,
  # is in the lock too).
  "$RELEASE/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-hashes --no-deps ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} -r "$LOCK" ||
    die "pip install of the lock $LOCK failed; nothing was switched"
  "$RELEASE/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --no-deps --no-build-isolation ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$target" ||
    die "pip install failed; nothing was switched"
  # The smoke test imports the CLI and every dependency it needs.
  "$RELEASE/bin/apply-layer" --version >/dev/null ||
    die "$RELEASE/bin/apply-layer does not run; nothing was switched"
  "$RELEASE/bin/python" -m pip check >/dev/null ||
    die "the release's dependencies do not fit together (pip check); is $LOCK complete? nothing was switched"
  mkdir -p "$RELEASE/share/$SERVICE"
  install -m 0644 "$UNIT_SRC" "$ENV_SRC" "$RELEASE/share/$SERVICE/"
  [[ -f $DOC_SRC ]] && install -m 0644 "$DOC_SRC" "$RELEASE/share/$SERVICE/"
  for kit in "${KIT_SRC[@]}"; do
    if [[ -f $kit ]]; then install -m 0644 "$kit" "$RELEASE/share/$SERVICE/"; fi
  done
  {
    echo "version=$VERSION"
    echo "source=$SOURCE"
    echo "python=$("$RELEASE/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    echo "lock=$(sha256sum "$LOCK" | cut -d' ' -f1)"
    echo "installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$RELEASE/$MARKER"
  rm -rf "$BUILD_TMP"
  trap - EXIT
}

if [[ -f $RELEASE/$MARKER && $FORCE == 0 ]]; then
  say "release $VERSION is already built in $RELEASE (--force rebuilds it)"
else
  if [[ -f $RELEASE/$MARKER && $current_target == "releases/$VERSION" ]]; then
    die "release $VERSION is the current one: it cannot be rebuilt in place; give another --version"
  fi
  build_release
fi

# --- configuration and unit -----------------------------------------------------
env_dst=$ROOT$ENV_FILE
mkdir -p "$(dirname "$env_dst")"
if [[ -e $env_dst ]]; then
  say "$ENV_FILE exists: kept as it is"
  mode=$(stat -c %a "$env_dst")
  [[ $mode == 600 || $mode == 400 ]] ||
    warn "$ENV_FILE is mode $mode; it holds secrets: chmod 600 $ENV_FILE"
  missing=()
  while IFS= read -r name; do
    grep -Eq "^[#[:space:]]*$name=" "$env_dst" || missing+=("$name")
  done < <(sed -nE 's/^#?(APPLY_[A-Z0-9_]+)=.*/\1/p' "$ENV_SRC")
  if [[ ${#missing[@]} -gt 0 ]]; then
    say "not in $ENV_FILE (their defaults apply): ${missing[*]}"
    say "  documented in $PREFIX/releases/$VERSION/share/$SERVICE/apply-layer.env"
  fi
else
  install -m 0600 "$ENV_SRC" "$env_dst"
  if [[ $EUID -eq 0 ]] && getent group "$SVC_GROUP" >/dev/null; then
    chown "root:$SVC_GROUP" "$env_dst"
  else
    say "group $SVC_GROUP unknown here: $ENV_FILE left owned by $(id -un)"
  fi
  say "installed $ENV_FILE (mode 0600, defaults, mode dry_run): edit it, then restart"
fi

unit_dst=$ROOT$UNIT_DIR/$SERVICE.service
mkdir -p "$(dirname "$unit_dst")"
if [[ -f $unit_dst ]] && cmp -s "$UNIT_SRC" "$unit_dst"; then
  say "unit $UNIT_DIR/$SERVICE.service unchanged"
else
  if [[ -f $unit_dst ]] && ! grep -q '^# quantum-apply-layer: the execution gate' "$unit_dst"; then
    backup=$ROOT/var/backups/$SERVICE.service.$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$(dirname "$backup")"
    cp -p "$unit_dst" "$backup"
    say "saved the old (not installed by this script) unit to ${backup#"$ROOT"}"
  fi
  install -m 0644 "$UNIT_SRC" "$unit_dst"
  say "installed unit $UNIT_DIR/$SERVICE.service"
fi
dropins=("$unit_dst.d"/*.conf)
if [[ -e ${dropins[0]} ]]; then
  warn "drop-ins override parts of the unit, check them: ${dropins[*]#"$ROOT"}"
fi

# --- switch ---------------------------------------------------------------------
new_target=releases/$VERSION
if [[ $current_target == "$new_target" ]]; then
  say "current already points at $new_target"
else
  if [[ -n $current_target ]]; then
    relink previous "$current_target"
    say "previous -> $current_target"
  fi
  relink current "$new_target"
  say "current -> $new_target"
fi

# --- systemd --------------------------------------------------------------------
if [[ $USE_SYSTEMCTL == 0 ]]; then
  say "systemctl not called; on the target host run: systemctl daemon-reload && systemctl restart $SERVICE"
else
  "$SYSTEMCTL" daemon-reload
  if [[ $ENABLE == 1 ]]; then
    "$SYSTEMCTL" enable "$SERVICE"
    [[ $RESTART == no ]] || RESTART=yes
  fi
  if [[ $RESTART == yes || ($RESTART == auto && $was_active == 1) ]]; then
    say "restarting $SERVICE (in-flight plans are drained first)"
    if ! "$SYSTEMCTL" restart "$SERVICE" || ! "$SYSTEMCTL" is-active --quiet "$SERVICE"; then
      die "$SERVICE did not start: journalctl -u $SERVICE -n 50; to go back: $SCRIPT_DIR/rollback.sh"
    fi
    say "$SERVICE is active"
  elif [[ $was_active == 1 ]]; then
    say "$SERVICE still runs the old code: systemctl restart $SERVICE"
  else
    say "$SERVICE is not running: systemctl enable --now $SERVICE (after editing $ENV_FILE)"
  fi
fi
say "done: release $VERSION"
