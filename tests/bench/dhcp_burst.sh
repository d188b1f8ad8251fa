#!/usr/bin/env bash
# ProxyDHCP burst benchmark (root): netreset against dnsmasq in proxy mode, the same
# generator, in one run. Two namespaces joined by a veth pair; nothing leaves them.
#
#   ns srv-$ID: 10.78.0.1 (the boot server: netreset, then dnsmasq)
#   ns cli-$ID: 10.78.0.2 (tests/src/bin/dhcp-burst, bound to 0.0.0.0:68)
#
# Usage: tests/bench/dhcp_burst.sh [ROUNDS]   (default 3 rounds per row)
# Prints a Markdown table for BENCHMARKS.md.
source "$(dirname "$0")/../e2e/lib.sh"
rounds=${1:-3}
need ip dnsmasq cargo python3
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces)"
(cd "$E2E_ROOT" && cargo build -q --release --bin netreset -p orchestrator && cargo build -q --release -p netreset-tests --bin dhcp-burst)
NETRESET=$E2E_ROOT/target/release/netreset
BURST=$E2E_ROOT/target/release/dhcp-burst

server_client b
S ip addr add 10.78.0.1/24 dev "$srv_if"
C ip addr add 10.78.0.2/24 dev "$cli_if"

run_rows() { # NAME: runs the generator unpaced and paced, ROUNDS times each
  local name=$1 pace
  for pace in 0 50; do
    for ((r = 1; r <= rounds; r++)); do
      printf '%s\t%s\t' "$name" "$pace"
      C "$BURST" --server 10.78.0.1:67 --bind 0.0.0.0:68 --count 1000 --pace-us "$pace" --wait-ms 1500
    done
  done
}

results=$E2E_TMP/results.tsv
cat > "$E2E_TMP/netreset.toml" <<TOML
data_dir = "$E2E_TMP/data"
[http]
listen = "10.78.0.1:8080"
[dhcp]
interface = "$srv_if"
[api]
token = "$E2E_ADMIN_TOKEN"
[tftp]
listen = "10.78.0.1:69"
root = "/usr/lib/ipxe"
TOML
bg_in "$srv" "$E2E_TMP/netreset.log" env RUST_LOG=warn "$NETRESET" serve --config "$E2E_TMP/netreset.toml"
pid=$BG_PID
wait_for 20 "netreset" S curl -sf http://10.78.0.1:8080/api/v1/health
run_rows netreset >> "$results"
S nstat -az UdpRcvbufErrors UdpInErrors > "$E2E_TMP/srv-nstat.txt" 2>&1 || true
C nstat -az UdpRcvbufErrors UdpInErrors > "$E2E_TMP/cli-nstat.txt" 2>&1 || true
kill "$pid"; wait "$pid" 2>/dev/null || true
S ss -ulpn | grep -q ':67 ' && fail "netreset still holds port 67"

bg_in "$srv" "$E2E_TMP/dnsmasq.out" dnsmasq --no-daemon --port=0 --interface="$srv_if" \
  --bind-interfaces --dhcp-range=10.78.0.0,proxy --pxe-service=x86PC,"netreset bench",undionly \
  --dhcp-leasefile=/dev/null --log-facility="$E2E_TMP/dnsmasq.log"
pid=$BG_PID
wait_for 10 "dnsmasq on port 67" bash -c "ip netns exec $srv ss -ulpn | grep -q dnsmasq"
kill -0 "$pid" || fail "dnsmasq did not start: $(cat "$E2E_TMP/dnsmasq.log")"
run_rows "dnsmasq $(dnsmasq --version | head -1 | awk '{print $3}')" >> "$results"

python3 - "$results" <<'PY'
import json, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    name, pace, js = line.rstrip("\n").split("\t", 2)
    rows.setdefault((name, int(pace)), []).append(json.loads(js))
print("| server | pacing | answered (of 1000) | answers/s | p50 ms | p99 ms | generator send ms |")
print("|---|---|---|---|---|---|---|")
for (name, pace), runs in rows.items():
    f = lambda k, fmt: " / ".join(fmt.format(r[k]) for r in runs)
    print(f"| {name} | {'unpaced' if pace == 0 else f'{pace} µs'} | {f('answered', '{}')} | {f('per_second', '{:.0f}')} | {f('p50_ms', '{:.2f}')} | {f('p99_ms', '{:.2f}')} | {f('send_ms', '{:.1f}')} |")
PY
