#!/usr/bin/env bash
# Boot storm (no root): N stations boot at once through netreset's real servers on
# loopback, each from an address of its own (127.77.x.y): DISCOVER on the ProxyDHCP
# port, REQUEST to 4011, Debian's undionly.kpxe over TFTP, the iPXE script over HTTP
# (tests/src/bin/boot-storm). Then DISCOVERs again and again from as many MACs. The
# daemon's RSS (VmRSS, /proc) before, after the storm and after the DISCOVERs.
#
# Usage: tests/bench/boot_storm.sh [STATIONS [DISCOVERS [ROUNDS]]]   (1000 10000 2)
# Prints a Markdown table for RELIABILITY.md / BENCHMARKS.md.
source "$(dirname "$0")/../e2e/lib.sh"
stations=${1:-1000}
discovers=${2:-10000}
rounds=${3:-2}
need cargo python3
[ -f /usr/lib/ipxe/undionly.kpxe ] || fail "Debian's ipxe is needed (apt-get install ipxe)"
(cd "$E2E_ROOT" && cargo build -q --release --bin netreset -p orchestrator && cargo build -q --release -p netreset-tests --bin boot-storm)
NETRESET=$E2E_ROOT/target/release/netreset
STORM=$E2E_ROOT/target/release/boot-storm
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

base=${STORM_PORT:-18300}
cat > "$E2E_TMP/netreset.toml" <<TOML
data_dir = "$E2E_TMP/data"
[http]
listen = "127.0.0.1:$base"
[dhcp]
server_ip = "127.0.0.1"
listen = "127.0.0.1:$((base + 67))"
pxe_listen = "127.0.0.1:$((base + 11))"
broadcast = "127.0.0.1:9"
[tftp]
listen = "127.0.0.1:$((base + 69))"
root = "/usr/lib/ipxe"
[api]
token = "$E2E_ADMIN_TOKEN"
TOML
RUST_LOG=warn "$NETRESET" serve --config "$E2E_TMP/netreset.toml" > "$E2E_TMP/netreset.log" 2>&1 &
pid=$!
defer "kill $pid 2>/dev/null"
wait_for 20 "netreset" curl -sf "http://127.0.0.1:$base/api/v1/health"
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
rss0=$(rss)
nstat -n 2>/dev/null || true # reset nstat's history: the figure below is this run's
echo "| run | stations | served | dhcp p50/p99 ms | 4011 p50/p99 ms | TFTP p50/p99 ms | script p50/p99 ms | seconds | daemon RSS after, KiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for ((r = 1; r <= rounds; r++)); do
  out=$("$STORM" --dhcp "127.0.0.1:$((base + 67))" --pxe "127.0.0.1:$((base + 11))" \
    --tftp "127.0.0.1:$((base + 69))" --http "127.0.0.1:$base" --stations "$stations")
  echo "$out" > "$E2E_TMP/storm-$r.json"
  python3 - "$out" "$r" "$(rss)" <<'PY'
import json, sys
o = json.loads(sys.argv[1]); r = sys.argv[2]; rss = sys.argv[3]
st = lambda k: "%.1f / %.1f" % (o[k]["p50_ms"], o[k]["p99_ms"]) + ("" if not o[k]["failed"] else " (%d failed: %s)" % (o[k]["failed"], o[k]["first_error"]))
print("| storm %s | %d | %d | %s | %s | %s | %s | %.2f | %s |" % (r, o["stations"], o["served"], st("dhcp"), st("pxe4011"), st("tftp"), st("script"), o["seconds"], rss))
PY
done
out=$("$STORM" --dhcp "127.0.0.1:$((base + 67))" --discovers "$discovers" --stations "$stations")
python3 - "$out" "$(rss)" <<'PY'
import json, sys
o = json.loads(sys.argv[1])
print("| %d DISCOVERs from %d MACs | | %d answered of %d sent | %.1f / %.1f | | | | %.2f | %s |" % (o["sent"], o["macs"], o["answered"], o["sent"], o["p50_ms"], o["p99_ms"], o["seconds"], sys.argv[2]))
PY
echo
echo "daemon RSS before: $rss0 KiB, after: $(rss) KiB; stations registered: $(api "http://127.0.0.1:$base/api/v1/stations" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
echo "daemon warnings/errors logged: $(grep -cE 'WARN|ERROR' "$E2E_TMP/netreset.log" || true)"
echo "listen queue overflows (TcpExtListenOverflows during the run, whole host): $(nstat -z TcpExtListenOverflows 2>/dev/null | awk '/ListenOverflows/ {print $2}')"
