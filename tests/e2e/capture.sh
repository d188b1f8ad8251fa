#!/usr/bin/env bash
# Capture of a reference PC through the restore environment, on the lab network of
# vm_reset.sh (dnsmasq as the school's DHCP server):
#
#   `netreset station capture MAC --name ref` -> QEMU (SeaBIOS, Debian's iPXE ROM, a
#   disk holding a Windows-like GPT disk: ESP, NTFS, data) PXE-boots -> netreset's
#   ProxyDHCP -> iPXE -> the restore environment in capture mode (netreset.mode=capture)
#   -> netreset-restore --capture reads /dev/vda, asks which chunks the store lacks,
#   uploads those -> the image is in `image ls` -> the station boots its local disk.
#
# Checks: the captured image is, byte for byte, the index `netreset image import`
# makes of the same disk (every allocated cluster, all metadata; free space free);
# `image verify` re-hashes its chunks; the station's disk is unchanged (qemu-img
# compare). Then a file is changed on the disk with ntfs-3g and the PC captured
# again: it uploads exactly the chunks a store holding the first capture lacks
# (counted by an import of the changed disk into a copy of that store).
source "$(dirname "$0")/lib.sh"
need ip dnsmasq qemu-system-x86_64 qemu-img curl python3 sgdisk sfdisk mkfs.vfat mkntfs \
  ntfs-3g mmd mcopy cmp
need_qemu_station
T=$E2E_TMP
BOOT_LIMIT=300

lab_network c 10.79.0
MAC=52:54:00:6e:${id:0:2}:${id:2:2}
URL=http://$server:8080

golden_image # $T/base.img: the reference PC's disk; the restore environment
{ lab_server_toml; cat <<TOML
[restore]
disk = "/dev/vda"
cmdline = "console=ttyS0"
[[inventory.stations]]
mac = "$MAC"
TOML
} > "$T/netreset.toml"
bg_in "$lab" "$T/netreset.log" "$NETRESET" serve --config "$T/netreset.toml"
wait_for 20 "netreset http" L curl --max-time 30 -sf "$URL/api/v1/health"
cli() { L "$NETRESET" "$@" --config "$T/netreset.toml"; }
image() { "$NETRESET" image --config "$T/netreset.toml" "$@"; }

qemu-img convert -q -f raw -O qcow2 "$T/base.img" "$T/disk.qcow2"
vm=(qemu-system-x86_64 -accel tcg -m 512 -nographic -monitor none
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no
    -device "virtio-net-pci,netdev=n0,mac=$MAC,bootindex=1")
disks=(-drive "file=$T/disk.qcow2,if=none,id=d0,format=qcow2"
       -device virtio-blk-pci,drive=d0,bootindex=2)
booted_local='any(e["kind"] == "script" and "local" in e["detail"] for e in s["events"][MARK:])'

# capture N NAME: capture the station into NAME in QEMU boot N; the figures in $T/capture-N.json.
capture() {
  cli station capture "$MAC" --name "$2" > "$T/ask-$1.log" 2>&1 || fail "capture refused: $(cat "$T/ask-$1.log")"
  grep -q "captured into image $2 at its next network boot" "$T/ask-$1.log" || fail "$(cat "$T/ask-$1.log")"
  run=$1
  local started=$SECONDS mark
  mark=$(field 'len(s["events"])')
  start_vm "$run"
  await $BOOT_LIMIT "capture $1" 's["capture"]["state"] in ("done", "failed")'
  [ "$(field 's["capture"]["state"]')" = done ] || fail "capture $1 failed: $(field 's["capture"]["error"]')"
  await 120 "the boot to local disk after capture $1" "${booted_local/MARK/$mark}"
  stop_vm
  field 'json.dumps(s["capture"])' > "$T/capture-$1.json"
  grep -q "capture complete" "$T/console-$run.log" || fail "the console does not say the capture completed"
  log "capture $1 ($2) in $((SECONDS - started)) s (PXE boot included): $(python3 - "$T/capture-$1.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["stats"]
mb = lambda k: s.get(k, 0) / 1e6
print(f"{s.get('chunks_data')} chunks of data, {s.get('chunks_uploaded')} uploaded "
      f"({mb('bytes_uploaded'):.1f} MB on the wire), {s.get('chunks_free')} free, "
      f"{mb('disk_bytes_read'):.1f} MB read from the disk")
PY
)"
}
uploaded() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stats"]["chunks_uploaded"])' "$T/capture-$1.json"; }

# --- 1. the first capture: the image is what an import of the disk makes --------------
capture 1 ref
image ls | grep -q "^ref	" || fail "ref is not in image ls: $(image ls)"
qemu-img compare -q -f raw -F qcow2 "$T/base.img" "$T/disk.qcow2" || fail "the capture changed the station's disk"
image import "$T/disk.qcow2" --name ref-import > "$T/import-1.log" 2>&1 || fail "import: $(cat "$T/import-1.log")"
grep -q "stored, 0 new;" "$T/import-1.log" ||
  fail "the store lacked chunks of the disk after its capture: $(cat "$T/import-1.log")"
cmp "$T/data/images/ref.idx" "$T/data/images/ref-import.idx" ||
  fail "the captured index differs from the import of the same disk"
image verify ref > "$T/verify.log" 2>&1 || fail "verify: $(cat "$T/verify.log")"
image show ref > "$T/show.log" 2>&1 || fail "show: $(cat "$T/show.log")"
field '[e["detail"] for e in s["events"] if e["kind"] == "capture-done"][-1]' > "$T/done-event.txt"
grep -q "Windows 11 Education 23H2" "$T/done-event.txt" || fail "the capture-done event does not name the Windows: $(cat "$T/done-event.txt")"
grep -qx "version    Windows 11 Education 23H2 (build 22631.2861)" "$T/show.log" ||
  fail "image show does not tell the captured Windows (the registry's SOFTWARE hive): $(cat "$T/show.log")"
[ "$(uploaded 1)" -gt 0 ] || fail "the first capture uploaded nothing"
log "ok: capture 1 equals the import of the disk (every allocated cluster), $(uploaded 1) chunks uploaded; the disk unchanged"

# --- 2. a small change, captured again: only what changed goes up ----------------------
qemu-img convert -q -f qcow2 -O raw "$T/disk.qcow2" "$T/changed.raw"
part "$T/changed.raw" 2 > "$T/ntfs.dev" || fail "no NTFS partition"
mkdir -p "$T/mnt"
ntfs-3g "$(cat "$T/ntfs.dev")" "$T/mnt" || fail "cannot mount the station's NTFS"
head -c 300K /dev/urandom > "$T/mnt/Windows/System32/update.dll"
echo "[fonts] changed" > "$T/mnt/Windows/win.ini"
umount "$T/mnt"
losetup -d "$(cat "$T/ntfs.dev")"
qemu-img convert -q -f raw -O qcow2 "$T/changed.raw" "$T/disk.qcow2"
# What a store holding capture 1 lacks of the changed disk: an import into a copy.
mkdir -p "$T/probe"
cp -a "$T/data/chunks" "$T/probe/chunks"
sed "s|^data_dir = .*|data_dir = \"$T/probe\"|" "$T/netreset.toml" > "$T/probe.toml"
"$NETRESET" image --config "$T/probe.toml" import "$T/changed.raw" --name probe > "$T/probe.log" 2>&1 ||
  fail "probe import: $(cat "$T/probe.log")"
lacked=$(sed -n 's/.* stored, \([0-9]*\) new;.*/\1/p' "$T/probe.log")
[ -n "$lacked" ] && [ "$lacked" -gt 0 ] || fail "the change made no new chunks: $(cat "$T/probe.log")"
capture 2 ref-v2
[ "$(uploaded 2)" = "$lacked" ] ||
  fail "capture 2 uploaded $(uploaded 2) chunks; the store lacked $lacked of the changed disk"
cmp "$T/data/images/ref-v2.idx" "$T/probe/images/probe.idx" ||
  fail "capture 2's index differs from the import of the changed disk"
log "ok: after a small change capture 2 uploaded $(uploaded 2) chunks (capture 1: $(uploaded 1)), exactly those the store lacked"
log "PASS capture"
