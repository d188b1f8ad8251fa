#!/usr/bin/env bash
# A whole station reset in a virtual machine, on a lab network where dnsmasq is the
# school's DHCP server:
#
#   QEMU (SeaBIOS, Debian's iPXE ROM, a blank qcow2 disk) PXE-boots -> netreset's
#   ProxyDHCP -> iPXE -> the boot script chains the restore environment (the kernel and
#   initrd images/restore-env/build.sh made) -> netreset-restore writes the KMS-staged
#   image to /dev/vda -> reboot -> iPXE -> local disk.
#
# Then the power is cut in the middle of a second reset: QEMU is killed and started
# again, and the restore resumes, fetching only what is still missing. A disk that is
# not there is reported; and with two disks, the station's is found by its serial
# number. After QEMU
# stops, the disk (qemu-img convert) equals the image outside the injected files,
# which mtools and ntfs-3g read back. Same namespaces as pxe_boot.sh.
#
# Usage: vm_reset.sh [bios|uefi]   bios (SeaBIOS, Debian's iPXE ROM) runs all three
# parts; uefi (OVMF: EDK2's PXE loads snponly.efi over TFTP) runs the first, the
# whole reset.
source "$(dirname "$0")/lib.sh"
need ip dnsmasq qemu-system-x86_64 qemu-img qemu-io curl python3 sgdisk sfdisk mkfs.vfat mkntfs \
  ntfs-3g ntfscat ntfsls mtype mmd mcopy cmp
need_qemu_station
T=$E2E_TMP
firmware=${1:-bios}
case "$firmware" in bios | uefi) ;; *) fail "usage: vm_reset.sh [bios|uefi]" ;; esac
# One QEMU boot may take this long (TCG: no KVM here).
BOOT_LIMIT=300

lab_network v 10.78.0
MAC=52:54:00:5e:${id:0:2}:${id:2:2}
URL=http://$server:8080

# --- the image and the daemon ----------------------------------------------------------
golden_image
{ lab_server_toml; cat <<TOML
[kms]
host = "kms.school.example"
port = 1688
[restore]
disk = "/dev/vda"
cmdline = "console=ttyS0"
# Slow enough that the power cut lands mid-restore.
max_mbit = 40
[[inventory.stations]]
mac = "$MAC"
image = "win11"
kms_activation = true
TOML
} > "$T/netreset.toml"
"$NETRESET" image --config "$T/netreset.toml" import "$T/base.img" --name win11 > "$T/import.log" 2>&1 ||
  fail "import: $(cat "$T/import.log")"
bg_in "$lab" "$T/netreset.log" "$NETRESET" serve --config "$T/netreset.toml"
wait_for 20 "netreset http" L curl --max-time 30 -sf "$URL/api/v1/health"

reset() { reset_station "{${1:+\"image\": \"$1\"}}"; } # [IMAGE]: the station's own by default
set_disk() { put_station "{\"disk\": \"$1\"}"; }          # DISK: the station's disk setting

qemu-img create -q -f qcow2 "$T/disk.qcow2" 256M
# The station's disk full of an earlier life (every byte 0xa5): the reset must bring
# back the image's allocated clusters and empty the free ones (through virtio's
# write-zeroes), not leave a student's data there.
qemu-io -f qcow2 -c "write -q -P 0xa5 0 256M" "$T/disk.qcow2" > "$T/fill.log" 2>&1 ||
  fail "qemu-io: $(cat "$T/fill.log")"
# The station (start_vm, lib.sh): network first, then the disk (bootindex, which SeaBIOS and OVMF both follow).
vm=(qemu-system-x86_64 -accel tcg -m 512 -nographic -monitor none
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
# The station's disk (serial number NR-TARGET); part 4 puts another one before it.
disks=(-drive "file=$T/disk.qcow2,if=none,id=d0,format=qcow2"
       -device virtio-blk-pci,drive=d0,serial=NR-TARGET,bootindex=2)
if [ "$firmware" = uefi ]; then
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$T/vars.fd"
  vm+=(-drive "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
       -drive "if=pflash,format=raw,file=$T/vars.fd"
       -device "virtio-net-pci,netdev=n0,mac=$MAC,romfile=,bootindex=1")
else
  vm+=(-device "virtio-net-pci,netdev=n0,mac=$MAC,bootindex=1")
fi
kinds_since() { # N: the event kinds after the first N
  station | python3 -c "import json,sys; print(' '.join(e['kind'] for e in json.load(sys.stdin)['events'][$1:]))"
}
booted_local='any(e["kind"] == "script" and "local" in e["detail"] for e in s["events"][MARK:])'

# --- 1. a reset from a blank disk: PXE -> restore -> reboot -> local disk ----------------
reset
run=1 started=$SECONDS
vm_started=$(date +%s.%N)
start_vm $run
await $BOOT_LIMIT "the restore" 's["reset"]["state"] in ("restoring", "done")'
to_restore=$((SECONDS - started))
await $BOOT_LIMIT "a completed restore" 's["reset"]["state"] == "done"'
restored=$((SECONDS - started))
mark=$(field 'len(s["events"])')
await 120 "the boot to local disk after the restore" "${booted_local/MARK/$mark}"
stop_vm
log "reset 1: PXE to restore-environment progress ${to_restore}s, restored at ${restored}s; events: $(kinds_since 0)"
# The timeline from the events (BENCHMARKS.md records it).
station | python3 -c '
import json, sys
from datetime import datetime
start = float(sys.argv[1])
t = lambda e: datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp() - start
ev = json.load(sys.stdin)["events"]
first = lambda kind, after=-1e9: next(t(e) for e in ev if e["kind"] == kind and t(e) > after)
offer = first("dhcp-offer", 0); chain = first("script", 0); began = first("restore-started", 0)
done = first("restore-done", 0); local = first("script", done)
print(f"timeline (s after QEMU started): first ProxyDHCP offer {offer:.1f}, restore script {chain:.1f}, "
      f"restore started {began:.1f} (kernel + initrd loaded, booted, DHCP: {began - chain:.1f}), "
      f"restore done {done:.1f}, local-disk script {local:.1f}")
' "$vm_started" >&2
python3 - "$(station)" <<'PY' || fail "the events do not show the whole path: $(kinds_since 0)"
import json, sys
kinds = [e["kind"] for e in json.loads(sys.argv[1])["events"]]
want = ["reset-requested", "dhcp-offer", "script", "restore-started", "restore-done", "dhcp-offer", "script"]
it = iter(kinds)
sys.exit(0 if all(any(k == w for k in it) for w in want) else 1)
PY
qemu-img convert -f qcow2 -O raw "$T/disk.qcow2" "$T/disk.raw"
check_windows_disk "$T/base.img" "$T/disk.raw" "$MAC"
# Free space emptied: of the ESP and the NTFS partition (mostly free clusters), only
# what injection wrote may differ from the image (its files, MFT records, bitmaps):
# left as it was, the 0xa5 of the earlier life would differ in ~180 MB.
differ=$({ cmp -l -n $(((ntfs_start + ntfs_len) * 512)) "$T/base.img" "$T/disk.raw" || true; } | wc -l)
[ "$differ" -lt $((2 << 20)) ] || fail "$differ bytes of the ESP and NTFS differ from the image: free space not emptied"
log "ok: the VM disk is the image, with station.json, SetupComplete.cmd and the agent injected; free space emptied ($differ bytes differ, injection's)"
if [ "$firmware" = uefi ]; then
  log "PASS vm_reset uefi"
  exit 0
fi

# --- 2. the power cut mid-restore ---------------------------------------------------------
# A new version of the image: the data partition rewritten, so the reset has 40 MiB
# to fetch.
cp "$T/base.img" "$T/base-v1.img"
head -c $((data_len * 512)) /dev/urandom | dd of="$T/base.img" bs=512 seek="$data_start" conv=notrunc status=none
"$NETRESET" image --config "$T/netreset.toml" import "$T/base.img" --name win11-v2 > "$T/import2.log" 2>&1 ||
  fail "import 2: $(cat "$T/import2.log")"
reset win11-v2
run=2
start_vm $run
await $BOOT_LIMIT "20 MB fetched" 's["reset"]["state"] == "restoring" and s["reset"]["stats"].get("bytes_fetched", 0) >= 20_000_000'
before=$(field 's["reset"]["stats"]["bytes_fetched"]')
stop_vm
log "power cut after $before bytes fetched"
mark=$(field 'len(s["events"])')
run=3
start_vm $run
await $BOOT_LIMIT "the resumed restore to complete" 's["reset"]["state"] == "done"'
await 120 "the boot to local disk after the resumed restore" "${booted_local/MARK/$mark}"
stop_vm
after=$(field 's["reset"]["stats"]["bytes_fetched"]')
log "resumed restore fetched $after bytes (the cut one $before); $(field '[e["detail"] for e in s["events"] if e["kind"] == "restore-done"][-1]')"
changed=$((data_len * 512))
[ "$after" -lt "$changed" ] || fail "the resumed restore fetched $after bytes, not fewer than the $changed bytes of the new version"
qemu-img convert -f qcow2 -O raw "$T/disk.qcow2" "$T/disk.raw"
check_windows_disk "$T/base.img" "$T/disk.raw" "$MAC"
log "ok: after the power cut the restore resumed and the disk is the new image"

# --- 3. a disk that is not there: reported with the reason, nothing written ---------------
sum_before=$(md5sum < "$T/disk.qcow2")
set_disk /dev/sdz
reset win11
run=4
start_vm $run
await $BOOT_LIMIT "the failure report" 's["reset"]["state"] == "failed"'
stop_vm
error=$(field 's["reset"]["error"]')
case "$error" in
  *"disk /dev/sdz not found"*vda*) log "ok: the missing disk was reported: ${error%%$'\n'*}" ;;
  *) fail "the failure report does not name the missing disk and the disks there: $error" ;;
esac
[ "$(md5sum < "$T/disk.qcow2")" = "$sum_before" ] || fail "the station's disk changed although the named disk was missing"

# --- 4. two disks: the station's by serial number, although the kernel names it vdb ----
qemu-img create -q -f qcow2 "$T/other.qcow2" 256M
qemu-io -c "write -P 0x5a 0 64M" "$T/other.qcow2" >/dev/null
sum_other=$(md5sum < "$T/other.qcow2")
disks=(-drive "file=$T/other.qcow2,if=none,id=d1,format=qcow2"
       -device virtio-blk-pci,drive=d1,serial=NR-OTHER,bootindex=3
       -drive "file=$T/disk.qcow2,if=none,id=d0,format=qcow2"
       -device virtio-blk-pci,drive=d0,serial=NR-TARGET,bootindex=2)
set_disk serial:NR-TARGET
reset win11
run=5
start_vm $run
await $BOOT_LIMIT "the restore to the disk with serial NR-TARGET" 's["reset"]["state"] == "done"'
stop_vm
grep -q "serial number NR-TARGET is /dev/vdb" "$T/console-$run.log" ||
  fail "the environment did not say which disk it took: $(grep netreset: "$T/console-$run.log" | tail -n 5)"
[ "$(md5sum < "$T/other.qcow2")" = "$sum_other" ] || fail "the other disk (vda) was written"
qemu-img convert -f qcow2 -O raw "$T/disk.qcow2" "$T/disk.raw"
check_windows_disk "$T/base-v1.img" "$T/disk.raw" "$MAC"
log "ok: serial:NR-TARGET restored /dev/vdb; /dev/vda, first in the kernel's order, untouched"
log "PASS vm_reset bios"
