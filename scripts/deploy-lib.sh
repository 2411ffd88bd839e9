# shellcheck shell=bash
# Shared by install.sh and rollback.sh (sourced, not run). Each caller defines
# die() and the option variables ROOT, USE_SYSTEMCTL and RESTART before use.

need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

# Normalise --root (empty for /). Under --root the tree is not the running
# system: no systemctl there, unless SYSTEMCTL names a stand-in (the tests use
# a recording fake).
resolve_root_and_systemctl() {
  if [[ -n $ROOT ]]; then
    [[ -d $ROOT ]] || die "--root $ROOT: no such directory"
    ROOT=$(cd "$ROOT" && pwd)
    [[ $ROOT == / ]] && ROOT=
  fi
  if [[ -n $ROOT && -z ${SYSTEMCTL:-} ]]; then
    USE_SYSTEMCTL=0
  fi
  SYSTEMCTL=${SYSTEMCTL:-systemctl}
  if [[ $USE_SYSTEMCTL == 1 ]] && ! command -v "$SYSTEMCTL" >/dev/null 2>&1; then
    die "systemctl not found (use --no-systemctl)"
  fi
  if [[ $RESTART == yes && $USE_SYSTEMCTL == 0 ]]; then
    die "--restart needs systemctl"
  fi
}

# relink NAME TARGET: atomic replacement of the symlink $BASE/NAME.
relink() {
  ln -sfn "$2" "$BASE/.$1.new"
  mv -T "$BASE/.$1.new" "$BASE/$1"
}
