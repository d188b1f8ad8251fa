# Shared helpers of the end-to-end tests. Sourced, not run.
# Every test uses its own names (suffix $E2E_ID) and cleans up on exit, even on failure.
set -euo pipefail

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E_ID=${E2E_ID:-$$}
NETRESET=${NETRESET:-$E2E_ROOT/target/debug/netreset}
E2E_TMP=$(mktemp -d "/tmp/netreset-e2e-XXXXXX")
CLEANUP=()

# The admin token of every daemon the scripts start ([api] token in their configs).
E2E_ADMIN_TOKEN=e2e-admin-token-0123456789
# api CURL-ARGS...: curl -sf with the admin token.
api() { curl -sf -H "Authorization: Bearer $E2E_ADMIN_TOKEN" "$@"; }

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

# make_ns NAME: a network namespace of this test. At exit every process still in it
# is killed before it is deleted (deleting a namespace does not end its processes).
make_ns() {
  ip netns add "$1"
  defer "ip netns pids $1 | xargs -r kill -9; ip netns del $1"
  ip netns exec "$1" ip link set lo up
}

# cable NS_A IF_A NS_B IF_B: a veth pair, IF_A in NS_A and IF_B in NS_B, both up.
cable() {
  ip link add "$2" type veth peer name "$4"
  defer "ip link del $2"   # only needed if the pair never left this namespace
  ip link set "$2" netns "$1"
  ip link set "$4" netns "$3"
  ip netns exec "$1" ip link set "$2" up
  ip netns exec "$3" ip link set "$4" up
}

# server_client TAG: the two hosts of a benchmark, namespaces $srv and $cli joined by a
# veth pair ($srv_if in $srv, $cli_if in $cli). S and C run a command in each.
server_client() {
  local id
  id=$(printf '%04x' $((E2E_ID % 65536)))
  srv=nr${1}srv-$id cli=nr${1}cli-$id srv_if=${1}s-$id cli_if=${1}c-$id
  make_ns "$srv"
  make_ns "$cli"
  cable "$srv" "$srv_if" "$cli" "$cli_if"
}
S() { ip netns exec "$srv" "$@"; }
C() { ip netns exec "$cli" "$@"; }

# bg_in NS LOG COMMAND...: start COMMAND in namespace NS in the background, output to
# LOG; its pid is in BG_PID and it is killed at exit. Called directly, never through
# a shell function: `f ... &` forks a subshell, and killing that leaves COMMAND running.
bg_in() {
  local ns=$1 out=$2
  shift 2
  ip netns exec "$ns" "$@" > "$out" 2>&1 &
  BG_PID=$!
  defer "kill $BG_PID; wait $BG_PID"
}

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

# striped_image PATH GIB: a GIB GiB disk image, 64 MiB stripes of noise and holes
# alternating (half random data, half zeros), as the restore tests and benchmarks use.
striped_image() {
  python3 - "$1" "$2" <<'PY'
import os, sys
path, gib, stripe = sys.argv[1], int(sys.argv[2]), 64 << 20
with open(path, "wb") as f:
    f.truncate(gib << 30)
    for i in range(0, gib * 16, 2):
        f.seek(i * stripe)
        for _ in range(stripe // (8 << 20)):
            f.write(os.urandom(8 << 20))
PY
}
