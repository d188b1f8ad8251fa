#!/usr/bin/env bash
# Image restore, end to end on loopback with the real binaries and independent tools:
# a GPT test disk is built from scratch (sgdisk, mkfs.vfat, mkntfs), imported, staged
# with the KMS profile through the API, and restored by netreset-restore onto a blank
# file-backed disk. mtools and ntfs-3g read back what was injected; cmp checks the rest.
# Then: a restore killed with -9 at about 30 % and rerun, and the 1 % delta of a 2 GiB
# disk.
source "$(dirname "$0")/lib.sh"
need qemu-img sgdisk sfdisk mkfs.vfat mkntfs ntfs-3g ntfscat ntfsls mtype mdir curl python3 cmp
RESTORE=${RESTORE:-$E2E_ROOT/target/debug/netreset-restore}
[ -x "$NETRESET" ] || fail "$NETRESET is not built (cargo build --workspace)"
[ -x "$RESTORE" ] || fail "$RESTORE is not built (cargo build --workspace)"

T=$E2E_TMP
MAC=02:00:00:00:e2:01
PORT=$((20000 + E2E_ID % 20000))
URL=http://127.0.0.1:$PORT
MIB=$((1 << 20))

# --- the test disk: ESP (FAT16), Windows (NTFS), data (noise), 256 MiB ------------------
log "building a GPT test disk"
windows_disk "$T/base.img"

# --- the daemon on loopback -------------------------------------------------------------
mkdir -p "$T/tftp" "$T/data/restore"
# Stand-ins for the restore environment's kernel and initrd (built in a later issue):
# resets are refused without them.
echo kernel > "$T/data/restore/vmlinuz"; echo initrd > "$T/data/restore/initrd.img"
cat > "$T/netreset.toml" <<EOF
data_dir = "$T/data"
[http]
listen = "127.0.0.1:$PORT"
public_url = "$URL"
[dhcp]
server_ip = "127.0.0.1"
listen = "127.0.0.1:$PORT"
pxe_listen = "127.0.0.1:$((PORT + 1))"
broadcast = "127.0.0.1:9"
[api]
token = "$E2E_ADMIN_TOKEN"
[restore]
disk = "/dev/vda"
[tftp]
listen = "127.0.0.1:0"
root = "$T/tftp"
[kms]
host = "kms.school.example"
port = 1688
families = ["windows", "office"]
[[inventory.stations]]
mac = "$MAC"
EOF
"$NETRESET" image --config "$T/netreset.toml" import "$T/base.img" --name win11 > "$T/import.log" 2>&1 ||
  fail "import: $(cat "$T/import.log")"
# The same disk as qcow2 imports to the same chunks (qemu-img converts it).
qemu-img convert -f raw -O qcow2 "$T/base.img" "$T/base.qcow2"
"$NETRESET" image --config "$T/netreset.toml" import "$T/base.qcow2" --name win11-qcow2 > "$T/import-q.log" 2>&1 ||
  fail "qcow2 import: $(cat "$T/import-q.log")"
grep -q "stored, 0 new;" "$T/import-q.log" || fail "the qcow2 import stored new chunks: $(cat "$T/import-q.log")"
"$NETRESET" serve --config "$T/netreset.toml" > "$T/daemon.log" 2>&1 &
daemon=$!
defer "kill $daemon; wait $daemon"
wait_for 10 "the daemon" curl --max-time 30 -sf "$URL/api/v1/health"

# script MAC: the station's boot script, fetched as the station does: its DHCP seen
# first at the address the script is then asked from (else no restore token in it).
script() {
  python3 "$E2E_ROOT/tests/e2e/dhcp_seen.py" "$1" 127.0.0.1 127.0.0.1 "$((PORT + 1))" ||
    fail "the boot server did not answer $1"
  curl --max-time 30 -sf "$URL/boot/$1.ipxe"
}
# reset MAC PROFILE: mark the station, print the restore arguments of its boot script.
reset() {
  api -X POST -H 'Content-Type: application/json' \
    -d "{\"image\": \"win11\", \"profile\": \"$2\"}" "$URL/api/v1/stations/$1/reset" >/dev/null ||
    fail "reset of $1 refused"
  script "$1" | tr ' ' '\n' | sed -n 's/^netreset\.\([a-z]*\)=/\1 /p'
}
args() { # ARGFILE: netreset-restore options from the boot script's arguments
  local k v out=()
  # The disk the script names (restore.disk) is the restore environment's; here the
  # disks are files, given with --disk.
  while read -r k v; do [ "$k" = disk ] || out+=("--$k" "$v"); done < "$1"
  echo "${out[@]}"
}

check_disk() { check_windows_disk "$T/base.img" "$1" "$MAC"; }

# --- 1. a KMS-staged restore onto a blank disk ------------------------------------------
log "restore onto a blank disk"
reset "$MAC" kms > "$T/args1"
truncate -s 256M "$T/disk.img"
# shellcheck disable=SC2046
"$RESTORE" $(args "$T/args1") --disk "$T/disk.img" --json > "$T/restore1.json" 2> "$T/restore1.log" ||
  fail "restore: $(tail -3 "$T/restore1.log")"
python3 - "$T/restore1.json" <<'EOF' || fail "restore --json: $(cat "$T/restore1.json")"
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
for k in ("chunks_total", "chunks_in_place", "chunks_fetched", "bytes_fetched", "seconds"):
    assert k in r, k
assert r["chunks_fetched"] > 0 and r["injected"] == 4, r
EOF
check_disk "$T/disk.img"
state=$(api "$URL/api/v1/stations/$MAC" | python3 -c 'import json,sys; print(json.load(sys.stdin)["reset"]["state"])')
[ "$state" = done ] || fail "the reset is $state after the restore, not done"
script "$MAC" | grep -q '^kernel' && fail "the station still chains the restore after done"
log "ok: blank disk restored, injected files read back with mtools and ntfs-3g"

# --- 2. killed with -9 at about 30 %, then rerun -------------------------------------------
log "restore killed at about 30 %"
reset "$MAC" kms > "$T/args2"
head -c 256M /dev/urandom > "$T/disk2.img"   # nothing in place: every chunk is fetched
# shellcheck disable=SC2046
"$RESTORE" $(args "$T/args2") --disk "$T/disk2.img" --max-mbit 40 --parallel 2 > /dev/null 2> "$T/restore2.log" &
victim=$!
# "About 30 %" of the work: of the bytes the blank-disk restore had to fetch.
total=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_fetched"])' "$T/restore1.json")
fetched() { api "$URL/api/v1/stations/$MAC" | python3 -c 'import json,sys; print(json.load(sys.stdin)["reset"]["stats"].get("bytes_fetched", 0))'; }
deadline=$((SECONDS + 60))
until [ "$(fetched)" -ge $((total * 3 / 10)) ]; do
  kill -0 $victim 2>/dev/null || fail "the restore ended before 30 %"
  [ $SECONDS -lt $deadline ] || fail "no 30 % within 60 s"
  sleep 0.05
done
kill -9 $victim; wait $victim 2>/dev/null || true
log "killed after $(fetched) of $total bytes"
# shellcheck disable=SC2046
"$RESTORE" $(args "$T/args2") --disk "$T/disk2.img" --json > "$T/restore2.json" 2>> "$T/restore2.log" ||
  fail "rerun: $(tail -3 "$T/restore2.log")"
python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read()); assert r["chunks_in_place"] > 0, r' "$T/restore2.json" ||
  fail "the rerun kept nothing of the first run: $(cat "$T/restore2.json")"
check_disk "$T/disk2.img"
log "ok: killed at about 30 %, rerun completed with the same disk"

# --- 3. delta: 1 % of a 2 GiB disk changed in scattered places --------------------------
log "delta restore of a 2 GiB disk"
striped_image "$T/big.img" 2
"$NETRESET" image --config "$T/netreset.toml" import "$T/big.img" --name big > "$T/import-big.log" 2>&1 ||
  fail "import big: $(cat "$T/import-big.log")"
api -X POST -H 'Content-Type: application/json' -d '{"image": "big", "profile": "plain"}' \
  "$URL/api/v1/stations/$MAC/reset" >/dev/null || fail "reset to big refused"
script "$MAC" | tr ' ' '\n' | sed -n 's/^netreset\.\([a-z]*\)=/\1 /p' > "$T/args3"
cp --sparse=always "$T/big.img" "$T/station.img"
chunk=$("$NETRESET" image --config "$T/netreset.toml" ls | sed -n 's/^big\t.* \([0-9]*\) KiB chunks.*/\1/p')
[ -n "$chunk" ] || fail "no chunk size in image ls: $("$NETRESET" image --config "$T/netreset.toml" ls)"
changed=$(python3 - "$T/station.img" "$((chunk * 1024))" <<'EOF'
import os, random, sys
path, chunk = sys.argv[1], int(sys.argv[2])
size, rng = os.path.getsize(path), random.Random(42)
touched, written = set(), 0
with open(path, "r+b") as f:
    while written < size // 100:           # 1 % of the disk, 16 KiB pieces
        at = rng.randrange(0, size - 16384) // 4096 * 4096
        f.seek(at); f.write(os.urandom(16384)); written += 16384
        touched.update(range(at // chunk, (at + 16383) // chunk + 1))
print(len(touched) * chunk)
EOF
)
# shellcheck disable=SC2046
"$RESTORE" $(args "$T/args3") --disk "$T/station.img" --json > "$T/restore3.json" 2> "$T/restore3.log" ||
  fail "delta restore: $(tail -3 "$T/restore3.log")"
cmp "$T/big.img" "$T/station.img" || fail "the delta-restored disk differs from the image"
fetched=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_fetched"])' "$T/restore3.json")
log "changed chunks: $changed bytes; fetched: $fetched bytes"
python3 -c "import sys; sys.exit(0 if $fetched <= 1.1 * $changed else 1)" ||
  fail "fetched $fetched bytes for $changed bytes of changed chunks (limit 1.1x)"
api -X POST -H 'Content-Type: application/json' -d '{"image": "big", "profile": "plain"}' \
  "$URL/api/v1/stations/$MAC/reset" >/dev/null
script "$MAC" | tr ' ' '\n' | sed -n 's/^netreset\.\([a-z]*\)=/\1 /p' > "$T/args4"
# shellcheck disable=SC2046
"$RESTORE" $(args "$T/args4") --disk "$T/station.img" --json > "$T/restore4.json" 2> "$T/restore4.log" ||
  fail "unchanged restore: $(tail -3 "$T/restore4.log")"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["bytes_fetched"] == 0 and r["chunks_fetched"] == 0, r' "$T/restore4.json" ||
  fail "an unchanged disk fetched something: $(cat "$T/restore4.json")"
log "ok: delta within 1.1x of the changed chunks; an unchanged disk fetched nothing"
