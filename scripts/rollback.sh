#!/usr/bin/env bash
# Switch quantum-apply-layer back to the previous release (or to a named one).
# current and previous swap places, so running it twice undoes a rollback.
# docs/DEPLOY.md explains the layout.
set -euo pipefail
# shellcheck source=deploy-lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/deploy-lib.sh"

readonly SERVICE=quantum-apply-layer
readonly PREFIX=/opt/quantum-apply-layer
readonly UNIT_DIR=/etc/systemd/system
readonly MARKER=.release

usage() {
  cat <<EOF
Usage: $(basename "$0") [OPTIONS]

Points $PREFIX/current back at the release $PREFIX/previous names
(and previous at the release that was current), reinstalls that release's
unit file, reloads systemd and restarts the service if it was running.
The env file /etc/quantum/apply-layer.env is not touched.

Options:
  --to NAME        switch to release NAME ($PREFIX/releases/NAME) instead
  --list           list the installed releases and exit
  --restart        restart the service even if it was not running
  --no-restart     never restart (do it later: systemctl restart $SERVICE)
  --no-systemctl   do not call systemctl at all
  --root DIR       operate below DIR instead of / (tests); implies
                   --no-systemctl unless SYSTEMCTL is set
  -h, --help       this help

Environment: SYSTEMCTL  the systemctl command to run (default: systemctl).
EOF
}

say() { printf 'rollback: %s\n' "$*"; }
die() {
  printf 'rollback: error: %s\n' "$*" >&2
  exit 1
}

TO=
LIST=0
RESTART=auto
USE_SYSTEMCTL=1
ROOT=
while [[ $# -gt 0 ]]; do
  case $1 in
    --to) need_arg "$@"; TO=$2; shift 2 ;;
    --to=*) TO=${1#*=}; shift ;;
    --list) LIST=1; shift ;;
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

BASE=$ROOT$PREFIX
[[ -d $BASE/releases ]] || die "nothing installed under $PREFIX (no releases/ directory)"

target_of() { if [[ -L $BASE/$1 ]]; then readlink "$BASE/$1"; fi; }
current=$(target_of current)
previous=$(target_of previous)

if [[ $LIST == 1 ]]; then
  for dir in "$BASE"/releases/*/; do
    [[ -d $dir ]] || continue
    name=releases/$(basename "$dir")
    tag=
    [[ $name == "$current" ]] && tag=" (current)"
    [[ $name == "$previous" ]] && tag=" (previous)"
    [[ -f $dir/$MARKER ]] || tag="$tag (incomplete)"
    echo "$(basename "$dir")$tag"
  done
  exit 0
fi

[[ -n $current ]] || die "$PREFIX/current does not exist: nothing to roll back from"
if [[ -n $TO ]]; then
  [[ $TO =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || die "bad release name '$TO'"
  target=releases/$TO
else
  [[ -n $previous ]] || die "no previous release recorded ($PREFIX/previous is missing): nothing to roll back to; see --list and --to"
  target=$previous
fi
[[ $target != "$current" ]] || die "$target is already current"
[[ -f $BASE/$target/$MARKER && -x $BASE/$target/bin/apply-layer ]] ||
  die "$PREFIX/$target is not a complete release (removed or half-built?)"

umask 022
exec 9>"$BASE/.install.lock"
command -v flock >/dev/null 2>&1 && { flock -n 9 || die "another install or rollback is running"; }

was_active=0
if [[ $USE_SYSTEMCTL == 1 ]] && "$SYSTEMCTL" is-active --quiet "$SERVICE"; then
  was_active=1
fi

relink previous "$current"
relink current "$target"
say "current -> $target (previous -> $current)"

# The unit of the release we return to (an older release may predate a change).
unit_src=$BASE/$target/share/$SERVICE/$SERVICE.service
unit_dst=$ROOT$UNIT_DIR/$SERVICE.service
if [[ -f $unit_src ]] && ! cmp -s "$unit_src" "$unit_dst"; then
  mkdir -p "$(dirname "$unit_dst")"
  install -m 0644 "$unit_src" "$unit_dst"
  say "reinstalled $UNIT_DIR/$SERVICE.service from $target"
fi

if [[ $USE_SYSTEMCTL == 0 ]]; then
  say "systemctl not called; on the target host run: systemctl daemon-reload && systemctl restart $SERVICE"
else
  "$SYSTEMCTL" daemon-reload
  if [[ $RESTART == yes || ($RESTART == auto && $was_active == 1) ]]; then
    say "restarting $SERVICE"
    if ! "$SYSTEMCTL" restart "$SERVICE" || ! "$SYSTEMCTL" is-active --quiet "$SERVICE"; then
      die "$SERVICE did not start: journalctl -u $SERVICE -n 50"
    fi
    say "$SERVICE is active"
  else
    say "$SERVICE was not running; not started"
  fi
fi
say "done: $(basename "$target") is current"
