#!/usr/bin/env bash
# Import throughput at lab-PC sizes: `netreset image import` of a 32 GiB disk with
# 4 GiB of data in 64 MiB stripes spread over it (half of each 8 MiB of a stripe
# noise, half one 4 KiB pattern repeated, which dedups to one chunk), as a sparse file (holes
# where there is no data, as qemu-img and dd conv=sparse leave them) and as a fully
# allocated copy, timed with hyperfine against an older netreset built from
# BASELINE (default: the commit before the parallel import) in the same run.
# With KIND=lab the disk is a lab PC's instead (large-disk.sh's image: GPT, a FAT32
# EFI partition, NTFS with DATA_GIB GiB of fragmented files and deleted files'
# zeros punched out), sparse, and fully allocated with noise in its free space (as
# a used PC's disk is).
# Usage: [KIND=stripes|lab] tests/bench/import.sh [RUNS] [GIB] [DATA_GIB]   (default 3 32 4)
# OLD_NETRESET and NEW_NETRESET name binaries built already (else both are built).
source "$(dirname "$0")/../e2e/lib.sh"
runs=${1:-3} gib=${2:-32} data=${3:-4}
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
need hyperfine python3 git
BASELINE=${BASELINE:-45b2cc3}
NEW=${NEW_NETRESET:-}
if [ -z "$NEW" ]; then
  (cd "$E2E_ROOT" && cargo build -q --release -p orchestrator --bin netreset)
  NEW=$E2E_ROOT/target/release/netreset
fi
OLD=${OLD_NETRESET:-}
if [ -z "$OLD" ]; then
  src=$E2E_ROOT/target/bench-import-baseline
  [ -d "$src" ] || git -C "$E2E_ROOT" worktree add -f "$src" "$BASELINE" >/dev/null
  (cd "$src" && CARGO_TARGET_DIR=$E2E_ROOT/target/bench-import-target cargo build -q --release -p orchestrator --bin netreset)
  OLD=$E2E_ROOT/target/bench-import-target/release/netreset
fi
W=$E2E_ROOT/target/bench-import
rm -rf "$W" && mkdir -p "$W/tftp"
defer "rm -rf $W"
case "${KIND:-stripes}" in
  stripes)
python3 - "$W/sparse.raw" "$gib" "$data" <<'PY'
import os, sys
path, gib, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stripe, piece = 64 << 20, 8 << 20
stripes = data * 16                      # 64 MiB stripes of data
gap = (gib * 16) // stripes              # one stripe of data every `gap` stripes
pattern = os.urandom(4096) * (piece // 2 // 4096)
with open(path, "wb") as f:
    f.truncate(gib << 30)
    for s in range(stripes):
        f.seek(s * gap * stripe)
        for _ in range(stripe // piece):
            f.write(os.urandom(piece // 2))
            f.write(pattern)
PY
    cp --sparse=never "$W/sparse.raw" "$W/dense.raw"
    ;;
  lab)
    need mkntfs ntfs-3g sgdisk mkfs.vfat losetup partx fallocate
    mkdir -p "$W/mnt"
    defer "for f in $W/sparse.raw $W/dense.raw; do losetup -n -O NAME -j \$f | xargs -r -n1 losetup -d; done"
    defer "umount $W/mnt 2>/dev/null || true"
    lab_pc_disk "$W/sparse.raw" "$gib" "$W/mnt"
    fragmented_files "$W/mnt" "$data"
    umount "$W/mnt"
    losetup -d "$ESP_DEV" "$NTFS_DEV"
    fallocate --dig-holes "$W/sparse.raw"
    # The used PC: every byte on disk, its free space full of deleted files' noise.
    cp --sparse=never "$W/sparse.raw" "$W/dense.raw"
    win=$(part "$W/dense.raw" 2)
    ntfs-3g -o big_writes "$win" "$W/mnt"
    head -c $((data << 30)) /dev/urandom > "$W/mnt/deleted.bin"
    rm "$W/mnt/deleted.bin"
    umount "$W/mnt"
    losetup -d "$win"
    ;;
  *) fail "KIND=${KIND}: stripes or lab" ;;
esac
log "disk images: $(du -h --apparent-size "$W/sparse.raw" | cut -f1) apparent, sparse $(du -h "$W/sparse.raw" | cut -f1) and dense $(du -h "$W/dense.raw" | cut -f1) on disk"
printf 'data_dir = "%s/data"\n[dhcp]\nmode = "off"\n[tftp]\nroot = "%s/tftp"\n' "$W" "$W" > "$W/netreset.toml"
cmds=()
for f in sparse.raw dense.raw; do
  for bin in "$OLD" "$NEW"; do
    cmds+=("$bin image --config $W/netreset.toml import $W/$f --name x")
  done
done
# Each import starts from an empty store and a cold page cache.
hyperfine --runs "$runs" --prepare "rm -rf $W/data; sync; echo 3 > /proc/sys/vm/drop_caches" \
  --export-markdown "$W/results.md" "${cmds[@]}" >&2
sed "s|$W/||g; s|$NEW|netreset (new)|g; s|$OLD|netreset ($BASELINE)|g" "$W/results.md"
