#!/usr/bin/env bash
# A terabyte disk (root): a GIB GiB sparse disk image (GPT: a 256 MiB FAT32 EFI
# partition, NTFS on the rest) with USED GiB of files (every 64 KiB distinct, and
# compressible, so that the store stays small), imported, staged, restored onto a
# blank sparse disk and restored again unchanged, through the daemon over loopback.
# Recorded: the times, the index sizes (the whole index on the server, the summary a
# station fetches, the staged image) and what each restore read and fetched. The
# restored disk is checked by importing it again: the same index (same layout, same
# chunks) or the benchmark fails. The source image is removed after its import (the
# disk here has room for the image or the restored disk, not both).
# Usage: tests/bench/terabyte.sh [GIB [USED_GIB]]   (default 1024 40)
source "$(dirname "$0")/../e2e/lib.sh"
gib=${1:-1024} used=${2:-40}
[ "$(id -u)" = 0 ] || fail "needs root (loop devices, ntfs-3g, namespaces)"
for p in mkntfs:ntfs-3g sgdisk:gdisk mkfs.vfat:dosfstools; do
  command -v "${p%%:*}" >/dev/null || apt-get install -y -qq "${p#*:}" >/dev/null
done
need mkntfs ntfs-3g sgdisk mkfs.vfat losetup partx python3 curl cmp
(cd "$E2E_ROOT" && cargo build -q --release -p orchestrator -p images --bins)
BIN=$E2E_ROOT/target/release
W=$E2E_ROOT/target/bench-terabyte
rm -rf "$W" && mkdir -p "$W/mnt" "$W/tftp" "$W/data/restore"
defer "rm -rf $W"
defer "for f in $W/image.raw; do losetup -n -O NAME -j \$f | xargs -r -n1 losetup -d; done"
defer "umount $W/mnt 2>/dev/null || true"
echo kernel > "$W/data/restore/vmlinuz"; echo initrd > "$W/data/restore/initrd.img"
secs() { python3 -c "print(f'{$(date +%s.%N) - $1:.1f}')"; }

log "the image: $gib GiB, $used GiB of files"
lab_pc_disk "$W/image.raw" "$gib" "$W/mnt"
python3 - "$W/mnt" "$used" <<'PY'
import os, sys
root, used = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{root}/Windows/System32")
block, mib = 64 << 10, 1 << 20
page = bytearray(mib)
n = 0
for f in range(used):
    with open(f"{root}/Windows/System32/part{f:03}.bin", "wb") as out:
        for _ in range(1024):
            for at in range(0, mib, block):   # every 64 KiB its own number
                page[at:at + 8] = n.to_bytes(8, "little")
                n += 1
            out.write(page)
PY
umount "$W/mnt"
losetup -d "$ESP_DEV" "$NTFS_DEV"
log "image: $(du -h "$W/image.raw" | cut -f1) on disk of $gib GiB"

bench_toml "$W/data" 127.0.0.1:8080 http://127.0.0.1:8080 8067 "$W/tftp" > "$W/netreset.toml"
cat >> "$W/netreset.toml" <<EOF
[[inventory.stations]]
mac = "02:00:00:00:1b:01"
disk = "/dev/sda"
EOF
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(date +%s.%N)
"$BIN/netreset" image --config "$W/netreset.toml" import "$W/image.raw" --name lab > "$W/import.log" 2>&1 ||
  fail "import: $(cat "$W/import.log")"
import_secs=$(secs "$t")
cat "$W/import.log" >&2
rm "$W/image.raw"
t=$(date +%s.%N)
"$BIN/netreset" image --config "$W/netreset.toml" stage lab --profile plain > "$W/stage.log" 2>&1 || fail "stage: $(cat "$W/stage.log")"
stage_secs=$(secs "$t")
index_bytes=$(stat -c %s "$W/data/images/lab.idx")
staged_bytes=$(stat -c %s "$W"/data/staged/*.stg)

ns=nrtb-$(printf '%04x' $((E2E_ID % 65536)))
make_ns "$ns"
bg_in "$ns" "$W/daemon.log" "$BIN/netreset" serve --config "$W/netreset.toml"
wait_for 10 "the daemon" ip netns exec "$ns" curl -sf http://127.0.0.1:8080/api/v1/health

# restore KIND: mark the station, restore $W/disk.raw, keep the client's summary line.
restore() {
  local args
  ip netns exec "$ns" curl -sf -H "Authorization: Bearer $E2E_ADMIN_TOKEN" -X POST -H 'Content-Type: application/json' \
    -d '{"image": "lab", "profile": "plain"}' "http://127.0.0.1:8080/api/v1/stations/02:00:00:00:1b:01/reset" > /dev/null ||
    fail "reset refused"
  ip netns exec "$ns" python3 "$E2E_ROOT/tests/e2e/dhcp_seen.py" 02:00:00:00:1b:01 127.0.0.1 127.0.0.1 8068 || fail "no boot server answer"
  args=$(ip netns exec "$ns" curl -sf "http://127.0.0.1:8080/boot/02:00:00:00:1b:01.ipxe" | tr ' ' '\n' |
    sed -n 's/^netreset\.\([a-z]*\)=\(.*\)/--\1 \2/p' | grep -v '^--disk' | tr '\n' ' ')
  sync; echo 3 > /proc/sys/vm/drop_caches
  # shellcheck disable=SC2086
  ip netns exec "$ns" "$BIN/netreset-restore" $args --disk "$W/disk.raw" --parallel 4 --json > "$W/$1.json" 2> "$W/$1.log" ||
    fail "restore ($1): $(tail -5 "$W/$1.log")"
  python3 - "$W/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['seconds']:.1f} s, {r['disk_bytes_read'] / 1e9:.2f} GB read from the disk, "
      f"{r['index_bytes_fetched'] / 1e6:.3f} MB of index, {r['bytes_fetched'] / 1e9:.2f} GB of chunks fetched, "
      f"{r['chunks_emptied']} chunks emptied")
PY
}
truncate -s "${gib}G" "$W/disk.raw"
cold=$(restore cold)
unchanged=$(restore unchanged)
log "checking the restored disk: imported again, it must give the same index"
"$BIN/netreset" image --config "$W/netreset.toml" import "$W/disk.raw" --name back > "$W/back.log" 2>&1 || fail "import back: $(cat "$W/back.log")"
cmp -s "$W/data/images/lab.idx" "$W/data/images/back.idx" || fail "the restored disk's index differs from the image's"
{
  echo "## A ${gib} GiB disk with ${used} GiB used: $(date -u +%Y-%m-%d), $(nproc) cores"
  echo
  echo "| step | figures |"
  echo "|---|---|"
  echo "| import | ${import_secs} s: $(grep -o 'imported.*' "$W/import.log") |"
  echo "| stage (plain) | ${stage_secs} s, staged image ${staged_bytes} bytes |"
  echo "| index | ${index_bytes} bytes on the server (every id), $(python3 -c "import json;print(json.load(open('$W/unchanged.json'))['index_bytes_fetched'])") bytes fetched for an unchanged disk (the summary) |"
  echo "| restore onto a blank disk | $cold |"
  echo "| restore again, unchanged | $unchanged |"
  echo "| check | imported again: the same index |"
} | tee "$W/results.md"
cp "$W/results.md" "$E2E_ROOT/target/bench-terabyte-results.md"
