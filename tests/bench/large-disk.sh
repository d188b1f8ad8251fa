#!/usr/bin/env bash
# Restores at lab-PC disk sizes (root): a GIB GiB disk (GPT: a 256 MiB FAT32 EFI
# partition, NTFS on the rest) with USED GiB of files, fragmented (16 files written
# a MiB at a time in turn, then every other file zeroed and deleted, so used and
# free space alternate); the station's disk is a fully allocated copy of it (every
# byte on disk, as on a real PC) with CHANGE MiB of changes made through ntfs-3g:
# half overwrites inside existing files, half new files (of which half deleted
# again: a student's deleted files in free space).
#
# Three restores of that station, in one run, each from the same station disk and a
# cold page cache, each result compared with the image (cmp): netreset as of this
# build, netreset as of BASELINE (default 2848488, before filesystem-aware restores
# and the two-level index), and `casync extract --seed` (Debian's casync, its store
# over HTTP from python's http.server). Measured per restore: wall time, bytes read
# from the station's disk (the restore process's block input, getrusage), index
# bytes fetched, bytes over the wire (loopback rx_bytes in the benchmark's namespace).
# casync extracts to a new file with the station's disk as its seed (it cannot
# extract a blob in place). Each restore's output is kept in target/bench-large-logs/.
# Usage: tests/bench/large-disk.sh [ROUNDS [GIB [USED_GIB [CHANGE_MIB]]]]   (default 1 32 4 256)
# OLD_NETRESET_DIR names a directory with netreset and netreset-restore of BASELINE
# built already.
source "$(dirname "$0")/../e2e/lib.sh"
rounds=${1:-1} gib=${2:-32} used=${3:-4} change=${4:-256}
[ "$(id -u)" = 0 ] || fail "needs root (loop devices, ntfs-3g, namespaces)"
for p in casync:casync mkntfs:ntfs-3g sgdisk:gdisk mkfs.vfat:dosfstools; do
  command -v "${p%%:*}" >/dev/null || apt-get install -y -qq "${p#*:}" >/dev/null
done
need casync mkntfs ntfs-3g sgdisk mkfs.vfat losetup partx fallocate python3 curl cmp git
BASELINE=${BASELINE:-2848488}
(cd "$E2E_ROOT" && cargo build -q --release -p orchestrator -p images --bins)
NEW=$E2E_ROOT/target/release
OLD=${OLD_NETRESET_DIR:-}
if [ -z "$OLD" ]; then
  src=$E2E_ROOT/target/bench-large-baseline
  [ -d "$src" ] || git -C "$E2E_ROOT" worktree add -f "$src" "$BASELINE" >/dev/null
  (cd "$src" && CARGO_TARGET_DIR=$E2E_ROOT/target/bench-large-target cargo build -q --release -p orchestrator -p images --bins)
  OLD=$E2E_ROOT/target/bench-large-target/release
fi
W=$E2E_ROOT/target/bench-large
LOGS=$E2E_ROOT/target/bench-large-logs RUNS=0
rm -rf "$W" "$LOGS" && mkdir -p "$W/mnt" "$W/www" "$W/tftp" "$LOGS"
[ -n "${KEEP_BENCH:-}" ] || defer "rm -rf $W"
# LIFO: unmounted, then the loop devices of the disks detached, then removed.
defer "for f in $W/image.raw $W/station.raw; do losetup -n -O NAME -j \$f | xargs -r -n1 losetup -d; done"
defer "umount $W/mnt 2>/dev/null || true"


log "the image: $gib GiB, $used GiB of fragmented files"
lab_pc_disk "$W/image.raw" "$gib" "$W/mnt"
fragmented_files "$W/mnt" "$used"
umount "$W/mnt"
losetup -d "$ESP_DEV" "$NTFS_DEV"
fallocate --dig-holes "$W/image.raw"
log "image: $(du -h "$W/image.raw" | cut -f1) on disk of $gib GiB"

# station: the station's disk, fully allocated, with the changes (the same every time).
station() {
  rm -f "$W/station.raw"
  cp --sparse=never "$W/image.raw" "$W/station.raw"
  local win
  win=$(part "$W/station.raw" 2)
  ntfs-3g -o big_writes "$win" "$W/mnt"
  python3 - "$W/mnt" "$change" <<'PY'
import os, random, sys
root, change = sys.argv[1], int(sys.argv[2])
rng = random.Random(256)
piece = 1 << 20
noise = lambda: rng.randbytes(piece)
system = sorted(os.listdir(f"{root}/Windows/System32"))
for _ in range(change // 2):               # overwrites inside existing files
    path = f"{root}/Windows/System32/{rng.choice(system)}"
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(rng.randrange(0, size - piece) // 4096 * 4096)
        f.write(noise())
os.makedirs(f"{root}/Users/student")
for i in range(change // 2 // 8):           # new files of 8 MiB; every other one deleted
    with open(f"{root}/Users/student/work{i:03}.bin", "wb") as f:
        for _ in range(8):
            f.write(noise())
for i in range(0, change // 2 // 8, 2):
    os.unlink(f"{root}/Users/student/work{i:03}.bin")
PY
  umount "$W/mnt"
  losetup -d "$win"
  sync
}

server_client lg
for side in new:8080:8067 old:8090:8077; do
  IFS=: read -r which port dhcp <<< "$side"
  mkdir -p "$W/data-$which/restore"
  echo kernel > "$W/data-$which/restore/vmlinuz"; echo initrd > "$W/data-$which/restore/initrd.img"
  bench_toml "$W/data-$which" "127.0.0.1:$port" "http://127.0.0.1:$port" "$dhcp" "$W/tftp" > "$W/$which.toml"
  cat >> "$W/$which.toml" <<EOF
[[inventory.stations]]
mac = "02:00:00:00:1a:01"
disk = "/dev/sda"
EOF
done
import_secs() { sync; echo 3 > /proc/sys/vm/drop_caches; local s=$(date +%s.%N); "$@" > "$W/import.log" 2>&1 || fail "$*: $(cat "$W/import.log")"; python3 -c "print(f'{$(date +%s.%N) - $s:.1f}')"; }
log "imports"
new_import=$(import_secs "$NEW/netreset" image --config "$W/new.toml" import "$W/image.raw" --name lab)
grep imported "$W/import.log" >&2
old_import=$(import_secs "$OLD/netreset" image --config "$W/old.toml" import "$W/image.raw" --name lab)
casync_make=$(import_secs casync make --store="$W/www/store.castr" "$W/www/image.caibx" "$W/image.raw")
# The same imports of a fully allocated disk (the station's: every byte on disk,
# deleted files in its free space), each into an empty store of its own.
log "imports of the fully allocated station disk"
station
dense_import() {
  printf 'data_dir = "%s/data-dense"\n[dhcp]\nmode = "off"\n[tftp]\nroot = "%s/tftp"\n' "$W" "$W" > "$W/dense.toml"
  rm -rf "$W/data-dense"
  import_secs "$1/netreset" image --config "$W/dense.toml" import "$W/station.raw" --name dense
  rm -rf "$W/data-dense"
}
new_dense=$(dense_import "$NEW")
old_dense=$(dense_import "$OLD")
chmod -R a+rX "$W/www"
bg_in "$srv" "$W/daemon-new.log" "$NEW/netreset" serve --config "$W/new.toml"
bg_in "$srv" "$W/daemon-old.log" "$OLD/netreset" serve --config "$W/old.toml"
bg_in "$srv" "$W/http.log" python3 -m http.server --bind 127.0.0.1 8081 --directory "$W/www"
wait_for 10 "the new daemon" S curl -sf http://127.0.0.1:8080/api/v1/health
wait_for 10 "the old daemon" S curl -sf http://127.0.0.1:8090/api/v1/health
wait_for 10 "the file server" S curl -sf -o /dev/null http://127.0.0.1:8081/image.caibx

# measure COMMAND...: run it in the namespace from a cold page cache; sets SECS, READ
# (bytes of block input of the command and its children) and WIRE (lo rx_bytes).
measure() {
  local before after out
  sync; echo 3 > /proc/sys/vm/drop_caches
  before=$(S cat /sys/class/net/lo/statistics/rx_bytes)
  out=$(S python3 -c '
import resource, subprocess, sys, time
t = time.monotonic()
with open(sys.argv[1], "w") as log:
    rc = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).returncode
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(rc, f"{time.monotonic() - t:.1f}", ru.ru_inblock * 512)' "$W/run.log" "$@")
  after=$(S cat /sys/class/net/lo/statistics/rx_bytes)
  read -r rc SECS READ <<< "$out"
  [ "$rc" = 0 ] || fail "$*: $(tail -5 "$W/run.log")"
  WIRE=$((after - before))
  RUNS=$((RUNS + 1))
  cp "$W/run.log" "$LOGS/run-$RUNS-$(basename "$1").log"
}
# boot_args PORT DHCP: the station's boot script's netreset.* words as netreset-restore
# options (not the disk; netreset.mode=capture as --capture).
boot_args() {
  S python3 "$E2E_ROOT/tests/e2e/dhcp_seen.py" 02:00:00:00:1a:01 127.0.0.1 127.0.0.1 "$2" >/dev/null || fail "no boot server answer on $2"
  S curl -sf "http://127.0.0.1:$1/boot/02:00:00:00:1a:01.ipxe" | tr ' ' '\n' |
    sed -n 's/^netreset\.\([a-z]*\)=\(.*\)/--\1 \2/p' | grep -v '^--disk' |
    sed 's/^--mode capture$/--capture/' | tr '\n' ' '
}
# netreset_run new|old: mark the station for a plain reset of "lab" and restore it.
netreset_run() {
  local which=$1 bin port dhcp args code
  if [ "$which" = new ]; then bin=$NEW port=8080 dhcp=8068; else bin=$OLD port=8090 dhcp=8078; fi
  code=$(S curl -s -o "$W/reset.json" -w '%{http_code}' -H "Authorization: Bearer $E2E_ADMIN_TOKEN" -X POST \
    -H 'Content-Type: application/json' -d '{"image": "lab", "profile": "plain"}' \
    "http://127.0.0.1:$port/api/v1/stations/02:00:00:00:1a:01/reset")
  [ "$code" = 202 ] || fail "$which: reset refused ($code): $(cat "$W/reset.json")"
  args=$(boot_args "$port" "$dhcp")
  # shellcheck disable=SC2086
  measure "$bin/netreset-restore" $args --disk "$W/station.raw" --parallel 4
  cmp -s "$W/image.raw" "$W/station.raw" || fail "netreset ($which): the disk differs from the image"
}
gb() { python3 -c "print(f'{$1 / 1e9:.2f}')"; }
mb() { python3 -c "print(f'{$1 / 1e6:.2f}')"; }
{
  echo "## Large-disk restore: $(date -u +%Y-%m-%d), $(nproc) cores, ${gib} GiB disk, ${used} GiB used, ${change} MiB changed"
  echo
  echo "Imports of the image (sparse): netreset (this build) ${new_import} s, netreset ($BASELINE) ${old_import} s, casync make ${casync_make} s."
  echo "Imports of the station's fully allocated disk: netreset (this build) ${new_dense} s, netreset ($BASELINE) ${old_dense} s."
  echo
  echo "| round | method | seconds | GB read from the disk | MB of index fetched | MB over the wire |"
  echo "|---|---|---|---|---|---|"
} | tee "$W/results.md"
for round in $(seq "$rounds"); do
  log "round $round: netreset (this build)"
  station; netreset_run new
  index=$(grep -o '[0-9.]* kB of index' "$W/run.log" | cut -d' ' -f1)
  echo "| $round | netreset (this build) | $SECS | $(gb "$READ") | $(python3 -c "print(f'{$index / 1e3:.3f}')") | $(mb "$WIRE") |" | tee -a "$W/results.md"
  log "round $round: netreset ($BASELINE)"
  station; netreset_run old
  index=$(stat -c %s "$W"/data-old/staged/*.stg | sort -n | tail -1)
  echo "| $round | netreset ($BASELINE) | $SECS | $(gb "$READ") | $(mb "$index") | $(mb "$WIRE") |" | tee -a "$W/results.md"
  log "round $round: casync"
  station
  # To a new file, the station's disk its seed: casync cannot extract a blob in place
  # (with the output as its own seed it fails, "Stale file handle"). The new file is
  # sparse (--punch-holes, its default).
  rm -f "$W/casync-out.raw"
  measure casync extract --store=http://127.0.0.1:8081/store.castr --seed="$W/station.raw" \
    http://127.0.0.1:8081/image.caibx "$W/casync-out.raw"
  cmp -s "$W/image.raw" "$W/casync-out.raw" || fail "casync: the disk differs from the image"
  rm -f "$W/casync-out.raw"
  echo "| $round | casync extract --seed | $SECS | $(gb "$READ") | $(mb "$(stat -c %s "$W/www/image.caibx")") | $(mb "$WIRE") |" | tee -a "$W/results.md"
done
# A capture of the station's disk (the image and the changes) into the daemon that
# holds the image: only the chunks the changes made go over the wire.
log "capture of the station's disk"
station
code=$(S curl -s -o "$W/capture.json" -w '%{http_code}' -H "Authorization: Bearer $E2E_ADMIN_TOKEN" -X POST \
  -H 'Content-Type: application/json' -d '{"name": "captured"}' \
  "http://127.0.0.1:8080/api/v1/stations/02:00:00:00:1a:01/capture")
[ "$code" = 202 ] || fail "capture refused ($code): $(cat "$W/capture.json")"
args=$(boot_args 8080 8068)
sum=$(md5sum < "$W/station.raw")
# shellcheck disable=SC2086
measure "$NEW/netreset-restore" $args --disk "$W/station.raw" --parallel 4
[ "$(md5sum < "$W/station.raw")" = "$sum" ] || fail "the capture changed the station's disk"
S curl -sf -H "Authorization: Bearer $E2E_ADMIN_TOKEN" http://127.0.0.1:8080/api/v1/stations/02:00:00:00:1a:01 > "$W/captured.json"
python3 - "$W/captured.json" "$SECS" "$READ" "$WIRE" <<'PY' | tee -a "$W/results.md"
import json, sys
c = json.load(open(sys.argv[1]))["capture"]
assert c["state"] == "done", c
s, secs, read, wire = c["stats"], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print(f"\nCapture of the station's disk into the store holding the image (`netreset-restore --capture`): "
      f"{secs} s, {read / 1e9:.2f} GB read from the disk, {s['chunks_data']} chunks of data, "
      f"{s['chunks_uploaded']} uploaded ({s['bytes_uploaded'] / 1e6:.1f} MB compressed), "
      f"{wire / 1e6:.1f} MB over the wire.")
PY
cp "$W/results.md" "$E2E_ROOT/target/bench-large-results.md"
log "results in target/bench-large-results.md"
