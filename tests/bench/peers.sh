#!/usr/bin/env bash
# Restore waves (issue 16), in network namespaces (root): STATIONS station namespaces
# and the server's on one bridge, every link shaped to 100 Mbit/s with tc (tbf on both
# ends of each veth), an image of IMAGE_MIB of noise that no station has a chunk of.
#
# Measured in one run, each from blank disks: one station restoring alone; the wave
# with the peer exchange; the wave started one station after another (the last when
# one alone would be almost half done); the same wave unicast (restore.peers =
# false). For each:
# wall time from the start of the clients to the last one done, and the server's
# egress (tx_bytes of its veth). Then the faults, with the peer exchange: a peer
# killed mid-wave, a hostile member serving noise, and a station outside the wave
# asking a peer. Every restored disk is compared with the image (cmp).
# Usage: tests/bench/peers.sh [STATIONS [IMAGE_MIB]]   (default 8, 512)
# With E2E=1 (tests/e2e/peers.sh) it builds nothing: the daemon is $NETRESET (debug),
# the restore client the release build .ci/run made.
source "$(dirname "$0")/../e2e/lib.sh"
n=${1:-8}
mib=${2:-512}
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, tc)"
need python3 tc ip cmp curl
# RESTORE=path runs another restore client (say, an earlier build, to compare).
RESTORE=${RESTORE:-$E2E_ROOT/target/release/netreset-restore}
if [ -n "${E2E:-}" ]; then
  [ -x "$NETRESET" ] && [ -x "$RESTORE" ] || fail "$NETRESET or $RESTORE is not built (.ci/run builds both)"
  W=$E2E_TMP/peers
else
  (cd "$E2E_ROOT" && cargo build -q --release -p orchestrator -p images --bins)
  NETRESET=$E2E_ROOT/target/release/netreset
  W=${BENCH_DIR:-$E2E_ROOT/target/bench-peers}
fi
rm -rf "$W" && mkdir -p "$W/data/restore" "$W/tftp"
echo kernel > "$W/data/restore/vmlinuz"; echo initrd > "$W/data/restore/initrd.img"
defer "rm -rf $W"
net=10.81.0
id=$(printf '%04x' $((E2E_ID % 65536)))
lab=nrplab-$id srv=nrpsrv-$id
make_ns "$lab"
ip netns exec "$lab" ip link add br0 type bridge
ip netns exec "$lab" ip link set br0 up
# attach NS IF ADDR: NS joins the bridge through a veth shaped to 100 Mbit/s both ways.
attach() {
  cable "$1" "$2" "$lab" "$2b"
  ip netns exec "$lab" ip link set "$2b" master br0
  ip netns exec "$1" ip addr add "$3/24" dev "$2"
  ip netns exec "$1" tc qdisc add dev "$2" root tbf rate 100mbit burst 64kb latency 50ms
  ip netns exec "$lab" tc qdisc add dev "$2b" root tbf rate 100mbit burst 64kb latency 50ms
}
make_ns "$srv"
attach "$srv" "ps-$id" "$net.1"
for i in $(seq "$n") 90 91; do
  make_ns "nrpst$i-$id"
  attach "nrpst$i-$id" "p$i-$id" "$net.$((100 + i))"
done
st() { local i=$1; shift; ip netns exec "nrpst$i-$id" "$@"; }
mac() { printf '02:00:00:00:16:%02x' "$1"; }

log "making a $mib MiB image of noise"
head -c "$((mib << 20))" /dev/urandom > "$W/image.raw"

config() {
  bench_toml "$W/data" 0.0.0.0:8080 "http://$net.1:8080" 8067 "$W/tftp"
  cat <<TOML
[restore]
disk = "/dev/vda"
peers = $1
TOML
  for i in $(seq "$n") 90; do printf '[[inventory.stations]]\nmac = "%s"\nroom = "lab"\n' "$(mac "$i")"; done
  # Station 91 is in another room: another wave.
  printf '[[inventory.stations]]\nmac = "%s"\nroom = "other"\n' "$(mac 91)"
}
config true > "$W/netreset.toml"
ip netns exec "$srv" "$NETRESET" image --config "$W/netreset.toml" import "$W/image.raw" --name wave > "$W/import.log" 2>&1 ||
  fail "import: $(cat "$W/import.log")"
DAEMON_PID=
daemon() {
  if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID"; wait "$DAEMON_PID" || true; fi
  config "$1" > "$W/netreset.toml"
  bg_in "$srv" "$W/daemon-$1.log" "$NETRESET" serve --config "$W/netreset.toml"
  DAEMON_PID=$BG_PID
  wait_for 10 "the daemon" ip netns exec "$srv" curl -sf http://127.0.0.1:8080/api/v1/health
}
S() { ip netns exec "$srv" "$@"; }
# args I: reset station I and print netreset-restore's arguments from its boot script.
args() {
  local m
  m=$(mac "$1")
  S curl -s --fail-with-body -H "Authorization: Bearer $E2E_ADMIN_TOKEN" -X POST -H 'Content-Type: application/json' \
    -d '{"image": "wave", "profile": "plain"}' "http://127.0.0.1:8080/api/v1/stations/$m/reset" > "$W/reset.log" ||
    fail "reset of $m refused: $(cat "$W/reset.log")"
  S python3 "$E2E_ROOT/tests/e2e/dhcp_seen.py" "$m" 127.0.0.1 127.0.0.1 8068 || fail "no boot server answer"
  S curl -sf "http://127.0.0.1:8080/boot/$m.ipxe" | tr ' ' '\n' | sed -n 's/^netreset\.\([a-z_]*\)=\(.*\)/--\1 \2/p' | grep -v '^--disk ' | tr '_\n' '- '
}
egress() { S cat "/sys/class/net/ps-$id/statistics/tx_bytes"; }
# wave NAME I...: restore stations I... at once from blank disks (with STAGGER set,
# that many seconds apart, in order); sets SECS and BYTES.
wave() {
  local name=$1 i a pids=() start before
  shift
  declare -A argv
  for i in "$@"; do argv[$i]=$(args "$i"); rm -f "$W/disk$i"; truncate -s "$((mib << 20))" "$W/disk$i"; done
  sync
  before=$(egress)
  start=$(date +%s.%N)
  for i in "$@"; do
    # shellcheck disable=SC2086
    # Directly, not through st: `st ... &` would fork a subshell, and a kill of that
    # would leave the restore running.
    ip netns exec "nrpst$i-$id" "$RESTORE" ${argv[$i]} --disk "$W/disk$i" --json > "$W/$name-$i.json" 2> "$W/$name-$i.log" &
    pids+=($!)
    eval "PID_$i=$!"
    eval "ARGS_$i=\${argv[$i]}"
    [ -n "${STAGGER:-}" ] && [ "$i" != "${*: -1}" ] && sleep "$STAGGER"
  done
  [ -n "${DURING:-}" ] && $DURING
  for p in "${pids[@]}"; do wait "$p" || true; done
  SECS=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  BYTES=$(( $(egress) - before ))
}
# check NAME I...: every disk of stations I... is the image, and each restore succeeded.
check() {
  local name=$1 i
  shift
  for i in "$@"; do
    [ -s "$W/$name-$i.json" ] || fail "$name: station $i failed: $(tail -3 "$W/$name-$i.log")"
    cmp -s "$W/image.raw" "$W/disk$i" || fail "$name: the disk of station $i differs from the image"
  done
}
figure() { local key=$1; shift; python3 -c "import json,sys; print(sum(json.load(open(f)).get('peers', {}).get('$key', 0) for f in sys.argv[1:]))" "$@"; }
all=$(seq -s ' ' "$n")
image_bytes=$((mib << 20))
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
{
  echo "## Restore waves: $(date -u +%Y-%m-%d), $(nproc) cores, $n stations, $mib MiB image, every link 100 Mbit/s"
  echo
  echo "| run | last station done, s | server egress, MB | egress / image | time / alone |"
  echo "|---|---|---|---|---|"
} | tee "$W/results.md"
row() { echo "| $1 | $SECS | $(python3 -c "print(f'{$BYTES / 1e6:.0f}')") | $(ratio "$BYTES" "$image_bytes") | $(ratio "$SECS" "$alone") |" | tee -a "$W/results.md"; }

daemon true
log "one station alone"
wave alone 1; check alone 1
alone=$SECS
row "one station alone"
log "the wave of $n with the peer exchange"
wave peers $all; check peers $all
row "$n stations, peer exchange"
peer_secs=$SECS peer_bytes=$BYTES
kill_after=$(python3 -c "print(f'{$SECS / 3:.1f}')")
log "from peers: $(figure chunks_from_peers "$W"/peers-*.json) chunks, from the server: $(figure chunks_from_server "$W"/peers-*.json)"
# The issue's target: the server sends each chunk about once.
python3 -c "import sys; sys.exit(0 if $peer_bytes <= 1.5 * $image_bytes else 1)" ||
  fail "the server sent $peer_bytes bytes for a wave of $n and an image of $image_bytes: more than 1.5 times the image"

# Stations of a room do not start together (Wake-on-LAN, POST): started one after
# another, the last when one alone would be almost half done. A station that joins
# late seeds chunks the others fetched already; it takes them from those, and the
# server still sends each chunk about once.
stagger=$(python3 -c "print(f'{$alone / (2 * $n):.1f}')")
log "the wave of $n started $stagger s apart"
STAGGER=$stagger wave staggered $all; check staggered $all
row "$n stations, peer exchange, started $stagger s apart"
log "from peers: $(figure chunks_from_peers "$W"/staggered-*.json) chunks, from the server: $(figure chunks_from_server "$W"/staggered-*.json)"
python3 -c "import sys; sys.exit(0 if $BYTES <= 1.5 * $image_bytes else 1)" ||
  fail "the server sent $BYTES bytes for a staggered wave of $n and an image of $image_bytes: more than 1.5 times the image"

log "faults: station 2 killed mid-wave, a hostile member, an outsider"
kill_and_probe() {
  sleep "$kill_after"
  kill -9 "$PID_2" || fail "station 2 ended before it was killed: the image is too small"
  pgrep -f "disk $W/disk2 " > /dev/null && fail "station 2's restore survived its kill"
  log "station 2 killed after $kill_after s"
  # The outsider (station 91, another room's wave) and a caller with no token ask
  # station 1 for a chunk; both are refused.
  local other token chunk
  other=$(args 91)
  token=$(echo "$other" | sed -n 's/.*--token \([^ ]*\).*/\1/p')
  st 91 curl -s --fail-with-body -H "Authorization: Bearer $token" -X POST -H 'Content-Type: application/json' \
    -d '{"port": 7410}' "http://$net.1:8080/api/v1/stations/$(mac 91)/peers" > "$W/outsider-wave.json" ||
    fail "the outsider's wave: $(cat "$W/outsider-wave.json")"
  outsider_token=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['token'])" "$W/outsider-wave.json")
  chunk=$(printf '0%.0s' $(seq 64))
  outsider_status=$(st 91 curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $outsider_token" "http://$net.101:7410/chunks/$chunk")
  anonymous_status=$(st 91 curl -s -o /dev/null -w '%{http_code}' "http://$net.101:7410/chunks/$chunk")
  echo "$outsider_status $anonymous_status" > "$W/outsider"
}
# The hostile member: station 90 joins the wave and serves noise.
liar_args=$(args 90)
liar_token=$(echo "$liar_args" | sed -n 's/.*--token \([^ ]*\).*/\1/p')
liar_image=$(echo "$liar_args" | sed -n 's/.*--image \([^ ]*\).*/\1/p')
bg_in "nrpst90-$id" "$W/liar.log" python3 "$E2E_ROOT/tests/bench/hostile_peer.py" "http://$net.1:8080" "$(mac 90)" "$liar_token" "$liar_image" 7410
wait_for 10 "the hostile member" grep -q joined "$W/liar.log"
DURING=kill_and_probe wave faults $all
survivors=$(echo "$all" | tr ' ' '\n' | grep -vx 2 | tr '\n' ' ')
# shellcheck disable=SC2086
check faults $survivors
# Station 2 boots into its restore again (same reset, same token): it resumes.
# shellcheck disable=SC2086
st 2 "$RESTORE" $ARGS_2 --disk "$W/disk2" --json > "$W/resume-2.json" 2> "$W/resume-2.log" ||
  fail "station 2's second restore: $(tail -3 "$W/resume-2.log")"
cmp -s "$W/image.raw" "$W/disk2" || fail "station 2's disk differs from the image after its second restore"
resumed=$(python3 -c "import json; j=json.load(open('$W/resume-2.json')); print(j['chunks_in_place'], j['chunks_fetched'])")
[ "${resumed% *}" -gt 0 ] || fail "station 2's second restore found nothing in place: it did not resume"
read -r outsider_status anonymous_status < "$W/outsider"
[ "$outsider_status" = 403 ] || fail "a station of another wave got $outsider_status from a peer, not 403"
[ "$anonymous_status" = 403 ] || fail "a caller without a token got $anonymous_status from a peer, not 403"
drops=$(for i in $survivors; do python3 -c "import json; print(json.load(open('$W/faults-$i.json'))['peers']['peers_dropped'])"; done | sort -n)
dropped=$(echo "$drops" | head -1) most=$(echo "$drops" | tail -1)
[ "$dropped" -ge 1 ] || fail "a survivor did not drop the hostile member"
refetched=$(for i in $survivors; do python3 -c "import json; print(json.load(open('$W/faults-$i.json'))['bad_chunks_refetched'])"; done | python3 -c "import sys; print(sum(int(l) for l in sys.stdin))")
row "$n stations, peer exchange, station 2 killed after $kill_after s, a hostile member"
{
  echo
  echo "Faults: $((n - 1)) survivors' disks identical to the image; each survivor dropped $dropped to $most members (two were faulty: the hostile one, and station 2 when it was asked after its death); $refetched chunks failed verification (the hostile member's) and were fetched again elsewhere, none written; a station of another wave asking a peer: $outsider_status, without a token: $anonymous_status. Station 2, restored again after its kill, resumed: ${resumed% *} chunks in place, ${resumed#* } fetched, its disk identical to the image."
} | tee -a "$W/results.md"
kill "$BG_PID" 2>/dev/null || true

daemon false
log "the wave of $n unicast (restore.peers = false)"
wave unicast $all; check unicast $all
row "$n stations, unicast"
echo | tee -a "$W/results.md"
echo "Peer exchange against unicast, same run: $(ratio "$SECS" "$peer_secs")× faster, server egress $(ratio "$BYTES" "$peer_bytes")× lower." | tee -a "$W/results.md"
if [ -z "${E2E:-}" ]; then
  cp "$W/results.md" "$E2E_ROOT/target/bench-peers-results.md"
  log "results in target/bench-peers-results.md"
fi
