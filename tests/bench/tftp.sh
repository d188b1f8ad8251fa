#!/usr/bin/env bash
# TFTP throughput benchmark (root): netreset against atftpd (which has windowsize),
# dnsmasq's TFTP and tftpd-hpa, all driven by the same atftp client, in one run, over
# a veth pair between two namespaces of this script's own.
#
# All four servers run at once, each on its own address; every round measures them
# in turn. Rows: 50 concurrent downloads of ipxe.efi (blksize 1468), lock-step and windowsize
# 16; one 32 MiB file, lock-step and windowsize 16. Figures are payload MB/s (10^6).
# Usage: tests/bench/tftp.sh [ROUNDS]  (default 3; the table shows every round)
source "$(dirname "$0")/../e2e/lib.sh"
rounds=${1:-3}
need ip dnsmasq atftp apt-get dpkg python3 cmp
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces)"

# atftpd and tftpd-hpa conflict as installed packages; unpack both beside the build.
peers=$E2E_ROOT/target/bench-peers
if [ ! -x "$peers/usr/sbin/atftpd" ] || [ ! -x "$peers/usr/sbin/in.tftpd" ]; then
  apt-get install -y -qq libwrap0 >/dev/null
  mkdir -p "$peers" && (cd "$E2E_TMP" && apt-get download atftpd tftpd-hpa >/dev/null && for d in *.deb; do dpkg -x "$d" "$peers"; done)
fi
(cd "$E2E_ROOT" && cargo build -q --release --bin netreset -p orchestrator)
NETRESET=$E2E_ROOT/target/release/netreset

server_client t
# One address per server, so that all four run at once and the rounds interleave:
# the machine's drift then touches every server alike.
for a in 1 2 3 4; do S ip addr add "10.79.0.$a/24" dev "$srv_if"; done
C ip addr add 10.79.0.100/24 dev "$cli_if"

root=$E2E_TMP/root
mkdir -p "$root" "$E2E_TMP/out"
cp "$(readlink -f /usr/lib/ipxe/ipxe.efi)" "$root/ipxe.efi"
head -c $((32 << 20)) /dev/urandom > "$root/big.bin"
chmod -R a+rX "$E2E_TMP"

# row ADDR MODE FILE COUNT: COUNT concurrent atftp downloads from ADDR (MODE lock or
# window); prints payload MB/s, or FAIL when a download is not byte-identical.
row() {
  local addr=$1 file=$3 count=$4 size start end i
  local opts=(--option "blksize 1468")
  [ "$2" = window ] && opts+=(--option "windowsize 16")
  size=$(stat -c %s "$root/$file")
  rm -f "$E2E_TMP"/out/*
  start=$(date +%s.%N)
  for ((i = 0; i < count; i++)); do
    C atftp "${opts[@]}" -g -r "$file" -l "$E2E_TMP/out/$i" "$addr" 69 2>>"$E2E_TMP/atftp.log" &
  done
  wait
  end=$(date +%s.%N)
  for ((i = 0; i < count; i++)); do
    cmp -s "$root/$file" "$E2E_TMP/out/$i" || { echo FAIL; return; }
  done
  python3 -c "print(f'{$size * $count / ($end - $start) / 1e6:.1f}')"
}

# oack ADDR: what the server answers to blksize 1468 + windowsize 16 (a raw RRQ).
oack() {
  C python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"\0\x01ipxe.efi\0octet\0blksize\x001468\0windowsize\x0016\0", (sys.argv[1], 69))
data, peer = s.recvfrom(2048)
s.sendto(b"\0\x05\0\x08probe done\0", peer)  # error 8: end the transfer here
fields = data[2:].split(b"\0") if data[:2] == b"\0\x06" else []
opts = [f.decode(errors="replace") for f in fields if f]
print(",".join(f"{k}={v}" for k, v in zip(opts[::2], opts[1::2])) or "no-OACK")
PY
}

cat > "$E2E_TMP/netreset.toml" <<TOML
data_dir = "$E2E_TMP/data"
[http]
listen = "10.79.0.1:8080"
[dhcp]
mode = "off"
server_ip = "10.79.0.1"
[tftp]
listen = "10.79.0.1:69"
root = "$root"
mtu = 1500
TOML
bg_in "$srv" "$E2E_TMP/netreset.log" env RUST_LOG=warn "$NETRESET" serve --config "$E2E_TMP/netreset.toml"
bg_in "$srv" "$E2E_TMP/atftpd.log" "$peers/usr/sbin/atftpd" --daemon --no-fork --bind-address 10.79.0.2 --port 69 \
  --maxthread 200 --user root.root --logfile /dev/null "$root"
bg_in "$srv" "$E2E_TMP/dnsmasq.log" dnsmasq --no-daemon --port=0 --enable-tftp --tftp-root="$root" --tftp-max=200 \
  --listen-address=10.79.0.3 --bind-interfaces --user=root --log-facility=/dev/null
bg_in "$srv" "$E2E_TMP/tftpd-hpa.log" "$peers/usr/sbin/in.tftpd" --foreground --listen --address 10.79.0.4:69 \
  --secure --user root "$root"
names=("netreset" "atftpd 0.8.0" "dnsmasq $(dnsmasq --version | head -1 | awk '{print $3}')" "tftpd-hpa 5.2")
for a in 1 2 3 4; do
  wait_for 20 "${names[$((a - 1))]} to serve" C atftp -g -r ipxe.efi -l "$E2E_TMP/probe" "10.79.0.$a" 69
done

results=$E2E_TMP/results.tsv
for a in 1 2 3 4; do
  printf '%s\t%s\t%s\n' "OACK to blksize 1468 + windowsize 16" "${names[$((a - 1))]}" "$(oack "10.79.0.$a")" >> "$results"
done
while IFS='|' read -r label mode file count; do
  for ((r = 1; r <= rounds; r++)); do
    for a in 1 2 3 4; do
      printf '%s\t%s\t%s\n' "$label" "${names[$((a - 1))]}" "$(row "10.79.0.$a" "$mode" "$file" "$count")" >> "$results"
    done
  done
done <<ROWS
50 x ipxe.efi, lock-step|lock|ipxe.efi|50
50 x ipxe.efi, windowsize 16|window|ipxe.efi|50
32 MiB, lock-step|lock|big.bin|1
32 MiB, windowsize 16|window|big.bin|1
ROWS

python3 - "$results" <<'PY'
import sys, statistics
rows, servers = {}, []
for line in open(sys.argv[1]):
    label, server, fig = line.rstrip("\n").split("\t")
    rows.setdefault(label, {}).setdefault(server, []).append(fig)
    if server not in servers: servers.append(server)
def nums(v): return [float(x) for x in v if x != "FAIL"]
def median(v): return statistics.median(nums(v)) if nums(v) else None
print("Payload MB/s, median (min-max) of the rounds; FAIL = a download was not byte-identical.\n")
print("| row | " + " | ".join(servers) + " | netreset / atftpd | netreset / best peer |")
print("|---|" + "---|" * (len(servers) + 2))
for label, by in rows.items():
    if label.startswith("OACK"):
        print(f"| {label} | " + " | ".join(by[s][0] for s in servers) + " | | |")
        continue
    cells = []
    for s in servers:
        n = nums(by[s]); fails = len(by[s]) - len(n)
        cell = f"{median(by[s]):.1f} ({min(n):.1f}-{max(n):.1f})" if n else "-"
        cells.append(cell + (f", {fails} FAIL" if fails else ""))
    ours = median(by["netreset"])
    peers = {s: median(by[s]) for s in servers if s != "netreset" and median(by[s])}
    atftpd = next(v for s, v in peers.items() if s.startswith("atftpd"))
    print(f"| {label} | " + " | ".join(cells) + f" | {ours / atftpd:.2f} | {ours / max(peers.values()):.2f} |")
PY
