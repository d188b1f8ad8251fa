#!/usr/bin/env bash
# A station reset with Secure Boot on: QEMU q35 with SMM, OVMF_CODE_4M.secboot.fd and
# a copy of OVMF_VARS_4M.ms.fd (Microsoft's keys enrolled, Secure Boot enforcing),
# beside dnsmasq as the school's DHCP server, which sets next-server (siaddr) to
# netreset and nothing else: Debian's signed GRUB takes its TFTP server from the DHCP
# ACK, not from netreset's ProxyDHCP answer (see the README, "Secure Boot").
#
#   1. Secure Boot refuses what the iPXE path gives it: EDK2 fetches Debian's
#      snponly.efi from netreset and does not run it (no script is ever asked for).
#   2. The station set to secure_boot: EDK2 PXE -> shimx64.efi (Microsoft-signed) ->
#      grubx64.efi (Debian-signed) -> /grub/grub.cfg -> its own configuration ->
#      Debian's signed kernel and the initrd over TFTP -> the restore writes the
#      KMS-staged image; the restore environment reports Secure Boot on; reboot ->
#      shim -> GRUB -> its configuration says local disk.
# Then the disk equals the image outside the injected files, as in vm_reset.sh.
#   3. For comparison, the same firmware code with Secure Boot off (OVMF_VARS_4M.fd,
#      no keys enrolled) and the iPXE path: the restore environment reports Secure
#      Boot off, and both timelines are printed (BENCHMARKS.md).
#
# Needs the signed loaders unpacked by tests/e2e/signed-loaders.sh (SIGNED_DIR).
source "$(dirname "$0")/lib.sh"
need ip dnsmasq qemu-system-x86_64 qemu-img curl python3 sgdisk sfdisk mkfs.vfat mkntfs \
  ntfs-3g ntfscat ntfsls mtype mmd mcopy cmp
[ -x "$NETRESET" ] || fail "$NETRESET missing: cargo build first"
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces)"
RESTORE_ENV=${RESTORE_ENV:-$E2E_ROOT/target/restore-env}
SIGNED_DIR=${SIGNED_DIR:-$E2E_ROOT/target/signed}
SHIM=$SIGNED_DIR/usr/lib/shim/shimx64.efi.signed
GRUB=$SIGNED_DIR/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed
CODE=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd
MS_VARS=/usr/share/OVMF/OVMF_VARS_4M.ms.fd
for f in "$RESTORE_ENV/vmlinuz" "$RESTORE_ENV/initrd.img"; do
  [ -f "$f" ] || fail "$f missing: images/restore-env/build.sh"
done
for f in "$SHIM" "$GRUB"; do
  [ -f "$f" ] || fail "$f missing: tests/e2e/signed-loaders.sh"
done
for f in "$CODE" "$MS_VARS"; do
  [ -f "$f" ] || fail "$f missing: apt-get install ovmf"
done
T=$E2E_TMP
BOOT_LIMIT=420

id=$(printf '%04x' $((E2E_ID % 65536)))
# The school's DHCP server names netreset as next-server, with no boot file.
lab_network s 10.79.0 --dhcp-boot=,,10.79.0.1
MAC=52:54:00:5b:${id:0:2}:${id:2:2}
URL=http://$server:8080

golden_image
{ lab_server_toml; cat <<TOML
shim = "$SHIM"
grub = "$GRUB"
[kms]
host = "kms.school.example"
port = 1688
[restore]
disk = "/dev/vda"
cmdline = "console=ttyS0"
[[inventory.stations]]
mac = "$MAC"
image = "win11"
kms_activation = true
secure_boot = false
TOML
} > "$T/netreset.toml"
"$NETRESET" image --config "$T/netreset.toml" import "$T/base.img" --name win11 > "$T/import.log" 2>&1 ||
  fail "import: $(cat "$T/import.log")"
bg_in "$lab" "$T/netreset.log" "$NETRESET" serve --config "$T/netreset.toml"
wait_for 20 "netreset http" L curl --max-time 30 -sf "$URL/api/v1/health"

qemu-img create -q -f qcow2 "$T/disk.qcow2" 256M
cp "$MS_VARS" "$T/vars.fd"
# EDK2's own virtio-net driver (romfile=), network first, then the disk.
vm=(qemu-system-x86_64 -accel tcg -m 768 -nographic -monitor none
    -machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$CODE"
    -drive "if=pflash,format=raw,unit=1,file=$T/vars.fd"
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no
    -device "virtio-net-pci,netdev=n0,mac=$MAC,romfile=,bootindex=1")
disks=(-drive "file=$T/disk.qcow2,if=none,id=d0,format=qcow2"
       -device virtio-blk-pci,drive=d0,bootindex=2)
# restore_run N WHAT: reset the station (its own image), boot it (boot N) and wait for
# the restore to start and to end; sets mark (events before), vm_started (epoch),
# to_restore and restored (seconds).
restore_run() {
  reset_station
  mark=$(field 'len(s["events"])')
  run=$1
  local started=$SECONDS
  vm_started=$(date +%s.%N)
  start_vm "$run"
  await $BOOT_LIMIT "the restore ($2)" 's["reset"]["state"] in ("restoring", "done")'
  to_restore=$((SECONDS - started))
  await $BOOT_LIMIT "a completed restore ($2)" 's["reset"]["state"] == "done"'
  restored=$((SECONDS - started))
}
# timeline MARK START: seconds from START (epoch) to each step of the events after MARK.
timeline() {
  python3 - "$(station)" "$1" "$2" <<'PY'
import json, sys
from datetime import datetime
s, mark, start = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ev = s["events"][mark:]
t = lambda e: datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp() - start
steps = []
for e in ev:
    name = e["kind"] if e["kind"] != "tftp" else "tftp " + e["detail"].split(" ")[0]
    if name not in [n for n, _ in steps]:
        steps.append((name, t(e)))
print("timeline (s after QEMU started): " + ", ".join(f"{n} {x:.1f}" for n, x in steps), file=sys.stderr)
PY
}
# after N KIND TEXT: an event of KIND whose detail has TEXT, after the first N events.
after() { echo "any(e['kind'] == '$2' and '$3' in e['detail'] for e in s['events'][$1:])"; }

# --- 1. the iPXE path under Secure Boot: refused by the firmware ---------------------------
run=1
start_vm $run
await $BOOT_LIMIT "the TFTP download of snponly.efi" "$(after 0 tftp snponly.efi)"
log "EDK2 fetched snponly.efi; waiting 45 s for an iPXE script request"
sleep 45
[ "$(field "$(after 0 script '')")" = False ] ||
  fail "iPXE ran under Secure Boot (a script was asked for): $(station | head -c 900)"
stop_vm
refusal=$(grep -a -o -m1 -E "Access Denied|Security Violation|[Vv]erification failed[^\r]*" "$T/console-$run.log" || true)
log "ok: Secure Boot did not run Debian's unsigned iPXE (no script request${refusal:+; firmware: $refusal})"

# --- 2. the signed path: reset with the KMS profile -----------------------------------------
put_station '{"secure_boot": true}'
restore_run 2 "signed path"
done_at=$(field 'len(s["events"])')
await 300 "the boot to local disk after the restore" "$(after "$done_at" grub-config local-disk)"
stop_vm
log "signed path: power-on to restore progress ${to_restore}s, restored at ${restored}s"
[ "$(field 's["reset"]["secure_boot"]')" = True ] ||
  fail "the restore environment did not report Secure Boot on: $(field 's["reset"]')"
log "ok: the restore environment reported Secure Boot on: $(field '[e["detail"] for e in s["events"] if e["kind"] == "restore-started"][-1]')"
grep -q "Secure Boot on" "$T/console-$run.log" || fail "the console does not show Secure Boot on"
# The path, from the events: shim and GRUB fetched, GRUB's configurations, the kernel.
python3 - "$(station)" "$mark" "$vm_started" <<'PY' || fail "the events do not show the signed path: $(station | head -c 1500)"
import json, sys
from datetime import datetime
s, mark, start = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ev = s["events"][mark:]
t = lambda e: datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp() - start
def first(kind, text=""):
    return next((e for e in ev if e["kind"] == kind and text in e["detail"]), None)
want = [("dhcp-offer", "netreset/signed/shimx64.efi"), ("tftp", "netreset/signed/shimx64.efi"),
        ("tftp", "netreset/signed/grubx64.efi"), ("tftp", "grub/grub.cfg"),
        ("grub-config", "chain /netreset/restore/vmlinuz"), ("tftp", "netreset/restore/vmlinuz"),
        ("tftp", "netreset/restore/initrd.img"), ("restore-started", "Secure Boot on"),
        ("restore-done", ""), ("grub-config", "local-disk")]
missing = [w for w in want if first(*w) is None]
if missing:
    print("missing:", missing, file=sys.stderr)
    sys.exit(1)
f = lambda *w: t(first(*w))
print(f"timeline (s after QEMU started): ProxyDHCP offer {f('dhcp-offer', 'shim'):.1f}, "
      f"shim {f('tftp', 'shimx64'):.1f}, GRUB {f('tftp', 'grubx64'):.1f}, "
      f"its configuration {f('grub-config', 'chain'):.1f}, kernel {f('tftp', 'vmlinuz'):.1f}, "
      f"initrd {f('tftp', 'initrd.img'):.1f}, restore started {f('restore-started'):.1f}, "
      f"done {f('restore-done'):.1f}", file=sys.stderr)
PY
qemu-img convert -f qcow2 -O raw "$T/disk.qcow2" "$T/disk.raw"
check_windows_disk "$T/base.img" "$T/disk.raw" "$MAC"
log "ok: the disk is the image, with station.json, SetupComplete.cmd and the agent injected"

# --- 3. the same firmware with Secure Boot off, on the iPXE path, for comparison ----------
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$T/vars.fd"
put_station '{"secure_boot": false}'
restore_run 3 "iPXE path"
stop_vm
[ "$(field 's["reset"]["secure_boot"]')" = False ] ||
  fail "Secure Boot off was not reported as off: $(field 's["reset"]')"
log "iPXE path, Secure Boot off: power-on to restore progress ${to_restore}s, restored at ${restored}s; reported Secure Boot off"
timeline "$mark" "$vm_started"
log "PASS secure_boot"
