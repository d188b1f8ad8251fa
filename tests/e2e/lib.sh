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
# api CURL-ARGS...: curl --max-time 30 -sf with the admin token.
api() { curl --max-time 30 -sf -H "Authorization: Bearer $E2E_ADMIN_TOKEN" "$@"; }

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

# part FILE N: a loop device of partition N of the disk image FILE, printed (no udev
# here to make loopNpM); detach it with losetup -d.
part() {
  local start sectors
  read -r start sectors <<< "$(partx -g -o START,SECTORS --nr "$2" "$1")"
  losetup -f --show --offset $((start * 512)) --sizelimit $((sectors * 512)) "$1"
}

# lab_pc_disk FILE GIB MNT: FILE becomes a GIB GiB sparse disk image laid out as a lab
# PC's (GPT: a 256 MiB FAT32 EFI partition, NTFS on the rest) with the NTFS mounted on
# MNT by ntfs-3g; ESP_DEV and NTFS_DEV are the partitions' loop devices. Unmount MNT
# and detach both when done.
lab_pc_disk() {
  truncate -s "${2}G" "$1"
  sgdisk -n1:2048:+256M -t1:ef00 -n2:0:0 -t2:0700 "$1" >/dev/null
  ESP_DEV=$(part "$1" 1) NTFS_DEV=$(part "$1" 2)
  mkfs.vfat -F 32 -n ESP "$ESP_DEV" >/dev/null
  mkntfs -Q -q -L Windows "$NTFS_DEV" 2>/dev/null
  ntfs-3g -o big_writes "$NTFS_DEV" "$3"
}

# fragmented_files MNT USED_GIB: USED_GIB GiB of noise in files on the filesystem at
# MNT, fragmented: 16 files written a MiB at a time in turn (their clusters
# interleave), then every other one zeroed and deleted, so used and free space
# alternate (the zeros leave the free space as holes after fallocate --dig-holes).
fragmented_files() {
  python3 - "$1" "$2" <<'PY'
import os, sys
root, used = sys.argv[1], int(sys.argv[2])
files, piece = 16, 1 << 20
per_file = (2 * used << 30) // files // piece     # pieces per file: twice USED in all
os.makedirs(f"{root}/Windows/System32")
handles = [open(f"{root}/Windows/System32/f{i:02}.bin", "wb") for i in range(files)]
for _ in range(per_file):
    for h in handles:          # in turn: each file's clusters interleave with the others'
        h.write(os.urandom(piece))
for h in handles:
    h.close()
zeros = bytes(piece)
for i in range(1, files, 2):   # every other file: zeroed, then deleted
    path = f"{root}/Windows/System32/f{i:02}.bin"
    with open(path, "r+b") as f:
        for _ in range(per_file):
            f.write(zeros)
        f.flush(); os.fsync(f.fileno())
    os.unlink(path)
PY
}

# windows_disk PATH: a 256 MiB GPT disk as a Windows install lays it out: an EFI system
# partition (FAT16, EFI/BOOT/BOOTX64.EFI), a Windows partition (NTFS with
# Windows/System32 and Windows/Setup/Scripts, 3 MiB of noise in System32, the SOFTWARE
# registry hive of a Windows 11 Education) and 40 MiB
# of noise in a data partition. Sets esp_start esp_len ntfs_start ntfs_len data_start
# data_len (sectors) and ESP (the mtools path of the ESP).
windows_disk() {
  local img=$1 t
  t=$(mktemp -d "$E2E_TMP/disk-XXXX")
  truncate -s 256M "$img"
  sgdisk -n1:2048:+32M -t1:ef00 -n2:0:+160M -t2:0700 -n3:0:+40M -t3:8300 "$img" >/dev/null
  read -r esp_start esp_len ntfs_start ntfs_len data_start data_len < <(sfdisk --json "$img" |
    python3 -c 'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"]; print(*[v for x in p for v in (x["start"], x["size"])])')
  mkfs.vfat -F 16 -n EFI --offset "$esp_start" "$img" $((esp_len / 2)) > "$t/mkfs.log" 2>&1
  ESP="$img@@$((esp_start * 512))"
  echo "boot manager stand-in" > "$t/bootx64.efi"
  mmd -i "$ESP" ::/EFI ::/EFI/BOOT
  mcopy -i "$ESP" "$t/bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
  truncate -s $((ntfs_len * 512)) "$t/ntfs.img"
  mkntfs -q -F -Q -s 512 -p "$ntfs_start" -H 255 -S 63 -L Windows "$t/ntfs.img" > "$t/mkfs.log" 2>&1
  mkdir "$t/mnt"
  ntfs-3g "$t/ntfs.img" "$t/mnt" || fail "cannot mount the test NTFS with ntfs-3g (FUSE)"
  mkdir -p "$t/mnt/Windows/Setup/Scripts" "$t/mnt/Windows/System32"
  echo "[fonts]" > "$t/mnt/Windows/win.ini"
  head -c 3M /dev/urandom > "$t/mnt/Windows/System32/big.dll"
  # The registry's SOFTWARE hive of a Windows 11 Education 23H2 (images/tests/data/make-hive.sh).
  mkdir -p "$t/mnt/Windows/System32/config"
  cp "$E2E_ROOT/images/tests/data/SOFTWARE" "$t/mnt/Windows/System32/config/SOFTWARE"
  umount "$t/mnt"
  dd if="$t/ntfs.img" of="$img" bs=512 seek="$ntfs_start" conv=notrunc status=none
  head -c $((data_len * 512)) /dev/urandom | dd of="$img" bs=512 seek="$data_start" conv=notrunc status=none
  rm -rf "$t"
}

# check_windows_disk BASE DISK MAC: DISK is BASE (a windows_disk) restored with the
# KMS profile for MAC: everything outside the ESP and the Windows partition is BASE's;
# inside them, the files BASE had are intact and the injected ones read back with
# mtools and ntfs-3g.
check_windows_disk() {
  local base=$1 disk=$2 MAC=$3 end=$(((ntfs_start + ntfs_len) * 512)) T
  T=$(mktemp -d "$E2E_TMP/check-XXXX")
  cmp -n $((esp_start * 512)) "$base" "$disk" || fail "$disk: the partition table area differs"
  cmp -i "$end:$end" "$base" "$disk" || fail "$disk: bytes after the Windows partition differ"
  local esp="$disk@@$((esp_start * 512))"
  mtype -i "$esp" ::/EFI/BOOT/BOOTX64.EFI | grep -q "boot manager stand-in" || fail "$disk: ESP file lost"
  mtype -i "$esp" ::/netreset/station.json > "$T/esp-station.json" || fail "$disk: no station.json on the ESP"
  grep -q "\"station\": \"$MAC\"" "$T/esp-station.json" || fail "$disk: ESP station.json: $(cat "$T/esp-station.json")"
  ! grep -q token "$T/esp-station.json" || fail "$disk: the ESP copy of station.json carries the token"
  dd if="$disk" of="$T/part.img" bs=1M iflag=skip_bytes,count_bytes skip=$((ntfs_start * 512)) count=$((ntfs_len * 512)) status=none
  ntfscat "$T/part.img" /Windows/win.ini | grep -q fonts || fail "$disk: win.ini lost"
  ntfsls -p /Windows/Setup/Scripts "$T/part.img" > "$T/scripts.txt"
  for f in SetupComplete.cmd netreset-agent.ps1 station.json; do
    grep -qx "$f" "$T/scripts.txt" || fail "$disk: $f not injected (ls: $(cat "$T/scripts.txt"))"
  done
  ntfscat "$T/part.img" /Windows/Setup/Scripts/SetupComplete.cmd > "$T/setup.cmd"
  grep -q 'set "NR_KMS=kms.school.example"' "$T/setup.cmd" || fail "$disk: SetupComplete.cmd lacks the KMS host"
  grep -q 'set "NR_PORT=1688"' "$T/setup.cmd" || fail "$disk: SetupComplete.cmd lacks the port"
  ntfscat "$T/part.img" /Windows/Setup/Scripts/station.json | grep -q '"token"' || fail "$disk: station.json lacks the agent token"
  ntfscat "$T/part.img" /Windows/Setup/Scripts/netreset-agent.ps1 | tr -d '\r' |
    cmp -s - "$E2E_ROOT/images/windows/netreset-agent.ps1" || fail "$disk: the agent differs from its template"
}

# lab_network TAG NET [DNSMASQ-OPTION...]: the lab network of the QEMU tests.
# Namespace $lab holds the boot server's bridge br0 (NET.1) with the station's tap0
# on it; namespace $dhcp is the school's DHCP server on its own host (dnsmasq at
# NET.2, addresses NET.100-150 only, no PXE options but the extra options given),
# cabled to the bridge. Nothing leaves the two namespaces.
# Sets id (4 hex digits of E2E_ID), lab, dhcp and server (NET.1); L and D run a
# command in each.
lab_network() {
  local tag=$1 net=$2
  shift 2
  id=$(printf '%04x' $((E2E_ID % 65536)))
  lab=nr${tag}lab-$id dhcp=nr${tag}dhcp-$id server=$net.1
  make_ns "$lab"
  make_ns "$dhcp"
  L ip link add br0 type bridge
  L ip link set br0 up
  L ip addr add "$server/24" dev br0
  cable "$dhcp" "${tag}d-$id" "$lab" "${tag}l-$id"
  L ip link set "${tag}l-$id" master br0
  D ip addr add "$net.2/24" dev "${tag}d-$id"
  L ip tuntap add tap0 mode tap
  L ip link set tap0 master br0 up
  bg_in "$dhcp" "$E2E_TMP/dnsmasq.log" dnsmasq --no-daemon --port=0 --interface="${tag}d-$id" \
    --bind-interfaces --dhcp-range="$net.100,$net.150,255.255.255.0,1h" \
    --dhcp-authoritative --dhcp-leasefile="$E2E_TMP/leases" --log-dhcp "$@"
}
L() { ip netns exec "$lab" "$@"; }

# bench_toml DATA_DIR LISTEN PUBLIC_URL DHCP_PORT TFTP_ROOT: the start of a benchmark
# daemon's configuration: HTTP on LISTEN, DHCP (and 4011 on DHCP_PORT + 1) and TFTP on
# loopback only, the e2e admin token. Benchmarks append their own sections.
bench_toml() {
  cat <<TOML
data_dir = "$1"
[http]
listen = "$2"
public_url = "$3"
[dhcp]
server_ip = "127.0.0.1"
listen = "127.0.0.1:$4"
pxe_listen = "127.0.0.1:$(($4 + 1))"
broadcast = "127.0.0.1:9"
[api]
token = "$E2E_ADMIN_TOKEN"
[tftp]
listen = "127.0.0.1:0"
root = "$5"
TOML
}
D() { ip netns exec "$dhcp" "$@"; }

# lab_server_toml: netreset's configuration on the lab_network: HTTP on $server:8080,
# ProxyDHCP on br0, TFTP from Debian's iPXE binaries, the e2e admin token. Tests
# append their own sections.
lab_server_toml() {
  cat <<TOML
data_dir = "$E2E_TMP/data"
[http]
listen = "$server:8080"
[dhcp]
mode = "proxy"
interface = "br0"
[api]
token = "$E2E_ADMIN_TOKEN"
[tftp]
listen = "$server:69"
root = "/usr/lib/ipxe"
[boot]
bios = "undionly.kpxe"
uefi_x64 = "snponly.efi"
TOML
}

# --- a QEMU station on the lab network (vm_reset.sh, capture.sh, secure_boot.sh) -------
# need_qemu_station: root, netreset built, and the restore environment (RESTORE_ENV,
# default target/restore-env, from images/restore-env/build.sh).
need_qemu_station() {
  [ -x "$NETRESET" ] || fail "$NETRESET missing: cargo build first"
  [ "$(id -u)" = 0 ] || fail "needs root (network namespaces)"
  RESTORE_ENV=${RESTORE_ENV:-$E2E_ROOT/target/restore-env}
  local f
  for f in vmlinuz initrd.img; do
    [ -f "$RESTORE_ENV/$f" ] || fail "$RESTORE_ENV/$f missing: images/restore-env/build.sh"
  done
}
# golden_image: $T/base.img (a windows_disk) and the restore environment from
# $RESTORE_ENV in the daemon's $T/data/restore.
golden_image() {
  log "building a GPT disk (ESP, NTFS Windows, data) as the golden image"
  windows_disk "$T/base.img"
  mkdir -p "$T/data/restore"
  cp "$RESTORE_ENV/vmlinuz" "$RESTORE_ENV/initrd.img" "$T/data/restore/"
}

# Station $MAC through the API at $URL (from the lab namespace); QEMU is "${vm[@]}"
# "${disks[@]}", its console in $T/console-N.log, its pid in VM; $run is the boot.

station() { L curl --max-time 30 -sf -H "Authorization: Bearer $E2E_ADMIN_TOKEN" "$URL/api/v1/stations/$MAC"; }
# field PY-EXPR: a value of the station's record (`s`).
field() { station | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
# put_station JSON: change the station's settings.
put_station() {
  L curl --max-time 30 -sf -X PUT -H "Authorization: Bearer $E2E_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "$1" "$URL/api/v1/stations/$MAC" >/dev/null || fail "PUT $1 refused"
}
# reset_station [JSON]: ask for a reset (default body {}: the station's own image).
reset_station() {
  L curl --max-time 30 -sf -H "Authorization: Bearer $E2E_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -X POST -d "${1:-"{}"}" "$URL/api/v1/stations/$MAC/reset" > "$T/reset.json" ||
    fail "the reset was refused: $(cat "$T/reset.json")"
}
# start_vm N: boot the station (boot N).
start_vm() {
  rm -f "$T/qemu.pid"
  bg_in "$lab" "$T/qemu-$1.log" timeout "$BOOT_LIMIT" "${vm[@]}" "${disks[@]}" -serial "file:$T/console-$1.log" \
    -pidfile "$T/qemu.pid"
  VM=$BG_PID
}
# stop_vm: pull the plug: QEMU killed with -9 flushes nothing of its own.
stop_vm() {
  if [ -f "$T/qemu.pid" ]; then kill -9 "$(cat "$T/qemu.pid")" 2>/dev/null || true; fi
  wait "$VM" 2>/dev/null || true
}
# await SECONDS WHAT PY-CONDITION: poll the station record until the condition holds.
await() {
  local deadline=$((SECONDS + $1))
  until [ "$(field "$3" 2>/dev/null)" = True ]; do
    kill -0 "$VM" 2>/dev/null || fail "QEMU ended before $2: $(tail -c 600 "$T/console-$run.log" 2>/dev/null)"
    [ $SECONDS -lt $deadline ] || fail "no $2 within $1 s: $(station | head -c 900)"
    sleep 0.3
  done
}
