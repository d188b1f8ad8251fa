#!/usr/bin/env bash
# A QEMU station PXE-boots through netreset on a lab network where dnsmasq is the
# school's DHCP server. Usage: pxe_boot.sh bios|uefi
#
#   namespace dhcp-$ID                namespace lab-$ID
#   dnsmasq (addresses only) --veth-- br0 10.77.0.1 -- tap0 -- QEMU station
#   10.77.0.2                         netreset ProxyDHCP/TFTP/HTTP, tcpdump
#
# Nothing leaves the two namespaces: every broadcast stays on br0.
source "$(dirname "$0")/lib.sh"
firmware=${1:?usage: pxe_boot.sh bios|uefi}
need ip dnsmasq qemu-system-x86_64 tcpdump curl python3
[ -x "$NETRESET" ] || fail "$NETRESET missing: cargo build first"
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces)"

lab_network p 10.77.0
mac=52:54:00:7e:${id:0:2}:${id:2:2}

bg_in "$lab" "$E2E_TMP/tcpdump.log" tcpdump -i br0 -n -U -w "$E2E_TMP/dhcp.pcap" \
  'udp port 67 or udp port 68 or udp port 4011'
tcpdump_pid=$BG_PID
wait_for 10 "tcpdump" grep -q "listening on" "$E2E_TMP/tcpdump.log"

lab_server_toml > "$E2E_TMP/netreset.toml"
bg_in "$lab" "$E2E_TMP/netreset.log" "$NETRESET" serve --config "$E2E_TMP/netreset.toml"
wait_for 20 "netreset http" L curl --max-time 30 -sf "http://$server:8080/api/v1/health"

# The station: TCG, no disk, network boot only. With SeaBIOS the virtio NIC's option
# ROM is Debian's iPXE; with OVMF the ROM is disabled so EDK2's own PXE client boots.
qemu=(qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot -boot n
      -netdev tap,id=n0,ifname=tap0,script=no,downscript=no
      -serial "file:$E2E_TMP/console.log" -monitor none)
case "$firmware" in
  bios) qemu+=(-device "virtio-net-pci,netdev=n0,mac=$mac") ; want="dhcp-offer script" ;;
  uefi)
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$E2E_TMP/vars.fd"
    qemu+=(-drive "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
           -drive "if=pflash,format=raw,file=$E2E_TMP/vars.fd"
           -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=")
    want="dhcp-offer tftp dhcp-offer script" ;;
  *) fail "unknown firmware $firmware" ;;
esac
started=$SECONDS
bg_in "$lab" "$E2E_TMP/qemu.log" timeout 120 "${qemu[@]}"
qemu_pid=$BG_PID

# Done when netreset's API shows the whole path for this MAC.
has_path() {
  L curl --max-time 30 -sf -H "Authorization: Bearer $E2E_ADMIN_TOKEN" "http://$server:8080/api/v1/stations/$mac" > "$E2E_TMP/station.json" || return 1
  python3 - "$E2E_TMP/station.json" "$want" <<'PY'
import json, sys
kinds = [e["kind"] for e in json.load(open(sys.argv[1]))["events"]]
want = sys.argv[2].split()
# `want` must appear in order (other events, such as pxe-4011, may sit between).
it = iter(kinds)
sys.exit(0 if all(any(k == w for k in it) for w in want) else 1)
PY
}
deadline=$((SECONDS + 120))
until has_path; do
  kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU ended before the boot path was complete ($(cat "$E2E_TMP/station.json" 2>/dev/null))"
  [ $SECONDS -lt $deadline ] || fail "no complete boot path within 120 s: $(cat "$E2E_TMP/station.json" 2>/dev/null)"
  sleep 1
done
elapsed=$((SECONDS - started))
kill "$qemu_pid" 2>/dev/null || true
log "station $mac ($firmware) reached the script after ${elapsed}s: $(python3 -c 'import json,sys; print(" -> ".join(e["kind"] for e in json.load(open(sys.argv[1]))["events"]))' "$E2E_TMP/station.json")"

# The capture: every netreset reply (source 10.77.0.1 port 67 or 4011) has
# yiaddr 0.0.0.0, which tcpdump prints as the absence of "Your-IP".
sleep 0.5; kill "$tcpdump_pid" 2>/dev/null || true; wait "$tcpdump_pid" 2>/dev/null || true
tcpdump -r "$E2E_TMP/dhcp.pcap" -n -vv > "$E2E_TMP/capture.txt" 2>/dev/null
python3 - "$E2E_TMP/capture.txt" "$server" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
server = sys.argv[2]
# tcpdump -vv prints a header line per packet, then indented detail lines.
packets = re.split(r"\n(?=\d\d:\d\d:\d\d)", text)
ours = [p for p in packets if re.search(rf"\b{re.escape(server)}\.(67|4011) > ", p)]
school = [p for p in packets if "10.77.0.2.67 > " in p]
if not ours:
    sys.exit("capture holds no netreset reply")
bad = [p for p in ours if "Your-IP" in p]
if bad:
    sys.exit("netreset reply with an address:\n" + bad[0])
if not any("Your-IP" in p for p in school):
    sys.exit("dnsmasq handed out no address: the test network is broken")
print(f"capture: {len(ours)} netreset replies, all yiaddr 0.0.0.0; {len(school)} dnsmasq replies")
PY
log "PASS pxe_boot $firmware"
