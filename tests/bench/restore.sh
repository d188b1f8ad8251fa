#!/usr/bin/env bash
# Delta restore benchmark (root): netreset-restore against casync (Debian's, `casync
# extract --seed`) and a full copy (curl | dd), in one run, on the same disks.
#
# The image: 4 GiB, 32 stripes of 64 MiB, noise and zeros alternating (half random
# data, half zeros). The station's disk: the image with 82 scattered 1 MiB regions
# rewritten (4 KiB-aligned, seeded). Every result is compared with the image (cmp).
#
# Links: "loopback" runs server and client on 127.0.0.1 inside a namespace of this
# script; "1 Gbit/s" runs them in two namespaces joined by a veth pair shaped with tc
# (tbf 1 gbit) on both ends. Bytes over the wire are the client-side interface's
# rx_bytes (headers included), so every method is counted the same way.
#
# Part 1 measures netreset's chunk sizes (64 KiB to 4 MiB) on loopback: delta bytes and
# time, cold restore time. Part 2 compares, at DEFAULT chunk size, netreset (delta
# and cold), casync (delta) and the full copy on both links.
# Usage: tests/bench/restore.sh [DEFAULT_CHUNK_BYTES [ROUNDS]]   (default 65536, 2)
# Every round measures every row again; the tables show every round.
source "$(dirname "$0")/../e2e/lib.sh"
default_cs=${1:-65536}
rounds=${2:-2}
sizes=${CHUNK_SIZES:-"65536 262144 1048576 4194304"}
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, tc)"
command -v casync >/dev/null || apt-get install -y -qq casync >/dev/null
need casync curl python3 tc ip cmp dd
(cd "$E2E_ROOT" && cargo build -q --release -p orchestrator -p images --bins)
NETRESET=$E2E_ROOT/target/release/netreset
RESTORE=$E2E_ROOT/target/release/netreset-restore
W=$E2E_ROOT/target/bench-restore
rm -rf "$W" && mkdir -p "$W/www" "$W/tftp" "$W/data/restore"
echo kernel > "$W/data/restore/vmlinuz"; echo initrd > "$W/data/restore/initrd.img"
defer "rm -rf $W"
MAC=02:00:00:00:be:01

log "making the image and the station's disk"
striped_image "$W/image.raw" 4
cp --sparse=always "$W/image.raw" "$W/station.img"
python3 - "$W/station.img" <<'PY'
import os, random, sys
station = sys.argv[1]
rng = random.Random(82)
with open(station, "r+b") as f:
    for _ in range(82):
        at = rng.randrange(0, (4 << 30) - (1 << 20)) // 4096 * 4096
        f.seek(at)
        f.write(os.urandom(1 << 20))
PY
ln "$W/image.raw" "$W/www/image.raw"

server_client rb
S ip addr add 10.80.0.1/24 dev "$srv_if"
C ip addr add 10.80.0.100/24 dev "$cli_if"
for side in "S $srv_if" "C $cli_if"; do
  set -- $side
  $1 tc qdisc add dev "$2" root tbf rate 1gbit burst 1mb latency 20ms
done

bench_toml "$W/data" 0.0.0.0:8080 http://10.80.0.1:8080 8067 "$W/tftp" > "$W/netreset.toml"
cat >> "$W/netreset.toml" <<EOF
[[inventory.stations]]
mac = "$MAC"
EOF
for cs in $sizes; do
  log "import at chunk size $cs"
  S "$NETRESET" image --config "$W/netreset.toml" import "$W/image.raw" --name "img-$cs" --chunk-size "$cs" > "$W/import-$cs.log" 2>&1 ||
    fail "import: $(cat "$W/import-$cs.log")"
done
log "casync make (its chunk store, served like netreset's)"
casync_make_start=$(date +%s.%N)
casync make --store="$W/www/store.castr" "$W/www/image.caibx" "$W/image.raw" > "$W/casync-make.log" 2>&1 ||
  fail "casync make: $(cat "$W/casync-make.log")"
casync_make=$(python3 -c "print(f'{$(date +%s.%N) - $casync_make_start:.1f}')")
chmod -R a+rX "$W"
bg_in "$srv" "$W/daemon.log" "$NETRESET" serve --config "$W/netreset.toml"
bg_in "$srv" "$W/http.log" python3 -m http.server --bind 0.0.0.0 8081 --directory "$W/www"
wait_for 10 "the daemon" S curl -sf http://127.0.0.1:8080/api/v1/health
wait_for 10 "the file server" S curl -sf -o /dev/null http://127.0.0.1:8081/image.caibx

# measure LINK COMMAND...: run COMMAND on the client side of LINK (loopback: in $srv
# over lo; gbit: in $cli over the shaped veth); sets SECS and BYTES. Called directly,
# never in a subshell, so that a failure ends the benchmark.
measure() {
  local link=$1 ns dev before after start end
  shift
  if [ "$link" = loopback ]; then ns=$srv dev=lo; else ns=$cli dev=$cli_if; fi
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  before=$(ip netns exec "$ns" cat "/sys/class/net/$dev/statistics/rx_bytes")
  start=$(date +%s.%N)
  ip netns exec "$ns" "$@" > "$W/run.log" 2>&1 || fail "$*: $(tail -5 "$W/run.log")"
  end=$(date +%s.%N)
  after=$(ip netns exec "$ns" cat "/sys/class/net/$dev/statistics/rx_bytes")
  SECS=$(python3 -c "print(f'{$end - $start:.2f}')")
  BYTES=$((after - before))
}
host() { [ "$1" = loopback ] && echo 127.0.0.1 || echo 10.80.0.1; }

# netreset LINK CS delta|cold: reset the station to img-CS and restore a fresh disk.
netreset_run() {
  local link=$1 cs=$2 kind=$3 h args
  h=$(host "$link")
  rm -f "$W/out.img"
  if [ "$kind" = delta ]; then cp --sparse=always "$W/station.img" "$W/out.img"; else truncate -s 4G "$W/out.img"; fi
  S curl -sf -H "Authorization: Bearer $E2E_ADMIN_TOKEN" -X POST -H 'Content-Type: application/json' -d "{\"image\": \"img-$cs\", \"profile\": \"plain\"}" \
    "http://127.0.0.1:8080/api/v1/stations/$MAC/reset" > /dev/null || fail "reset refused"
  # The station's DHCP first: a restore token goes only to the address it saw.
  S python3 "$E2E_ROOT/tests/e2e/dhcp_seen.py" "$MAC" 127.0.0.1 127.0.0.1 8068 || fail "no boot server answer"
  args=$(S curl -sf "http://127.0.0.1:8080/boot/$MAC.ipxe" | tr ' ' '\n' | sed -n 's/^netreset\.\([a-z]*\)=\(.*\)/--\1 \2/p' | grep -v '^--server' | tr '\n' ' ')
  # shellcheck disable=SC2086
  measure "$link" "$RESTORE" --server "http://$h:8080" $args --disk "$W/out.img" --parallel 4
  cmp -s "$W/image.raw" "$W/out.img" || fail "netreset $link $cs $kind: result differs from the image"
}
casync_run() {
  local h
  h=$(host "$1")
  rm -f "$W/out.img"
  measure "$1" casync extract --store="http://$h:8081/store.castr" --seed="$W/station.img" \
    "http://$h:8081/image.caibx" "$W/out.img"
  cmp -s "$W/image.raw" "$W/out.img" || fail "casync $1: result differs from the image"
}
copy_run() {
  local h
  h=$(host "$1")
  rm -f "$W/out.img"
  measure "$1" sh -c "curl -sf http://$h:8081/image.raw | dd of=$W/out.img bs=4M iflag=fullblock conv=fsync status=none"
  cmp -s "$W/image.raw" "$W/out.img" || fail "full copy $1: result differs from the image"
}
mb() { python3 -c "print(f'{$1 / 1e6:.1f}')"; }
row() { echo "| $1 | $2 | $SECS | $(mb "$BYTES") |" | tee -a "$W/results.md"; }

{
  echo "## Delta restore: $(date -u +%Y-%m-%d), $(nproc) cores"
  echo
  echo "casync make took ${casync_make} s (not counted below)."
  echo
  echo "### netreset chunk sizes (loopback)"
  echo
  echo "| chunk size | delta s | delta MB over the wire | cold s | cold MB/s (4 GiB image) |"
  echo "|---|---|---|---|---|"
} | tee "$W/results.md"
for round in $(seq "$rounds"); do
for cs in $sizes; do
  log "round $round: chunk size $cs"
  netreset_run loopback "$cs" delta; ds=$SECS db=$BYTES
  netreset_run loopback "$cs" cold
  echo "| $((cs >> 10)) KiB | $ds | $(mb "$db") | $SECS | $(python3 -c "print(f'{(4 << 30) / $SECS / 1e6:.0f}')") |" | tee -a "$W/results.md"
done
done
{
  echo
  echo "### netreset ($((default_cs >> 10)) KiB chunks) against casync and a full copy"
  echo
  echo "| link | method | seconds | MB over the wire |"
  echo "|---|---|---|---|"
} | tee -a "$W/results.md"
for round in $(seq "$rounds"); do
for link in loopback gbit; do
  log "round $round: $link"
  name=$([ "$link" = loopback ] && echo loopback || echo "1 Gbit/s")
  netreset_run "$link" "$default_cs" delta; row "$name" "netreset-restore (delta)"
  casync_run "$link"; row "$name" "casync extract --seed"
  copy_run "$link"; row "$name" "full copy (curl \\| dd)"
  netreset_run "$link" "$default_cs" cold; row "$name" "netreset-restore (cold, blank disk)"
done
done
cp "$W/results.md" "$E2E_ROOT/target/bench-restore-results.md"
log "results in target/bench-restore-results.md"
