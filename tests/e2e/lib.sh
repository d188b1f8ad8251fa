# Shared helpers of the end-to-end tests. Sourced, not run.
# Every test uses its own names (suffix $E2E_ID) and cleans up on exit, even on failure.
set -euo pipefail

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E_ID=${E2E_ID:-$$}
NETRESET=${NETRESET:-$E2E_ROOT/target/debug/netreset}
E2E_TMP=$(mktemp -d "/tmp/netreset-e2e-XXXXXX")
CLEANUP=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (.ci/run installs it)"
  done
}

on_exit() {
  local rc=$?
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" >/dev/null 2>&1 || true; done
  if [ "$rc" -ne 0 ] && [ -z "${KEEP_E2E_TMP:-}" ]; then
    log "logs of the failed run:"
    for f in "$E2E_TMP"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done >&2
  fi
  [ -n "${KEEP_E2E_TMP:-}" ] || rm -rf "$E2E_TMP"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

defer() { CLEANUP+=("$*"); }

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.2
  done
}

# cmp_files EXPECTED ACTUAL WHAT
cmp_files() {
  cmp -s "$1" "$2" || fail "$3: $2 differs from $1 ($(stat -c %s "$2" 2>/dev/null || echo missing) vs $(stat -c %s "$1") bytes)"
}
