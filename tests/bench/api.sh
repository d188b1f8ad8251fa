#!/usr/bin/env bash
# The admin API and the dashboard at school size (no root): a store of STATIONS
# confirmed stations with EVENTS boot events each (tests/src/bin/bench-seed), the
# release daemon on loopback, wrk at CONNS concurrent clients for SECONDS on
#   GET /api/v1/stations (the dashboard's biggest call), the dashboard's page and
#   script, GET /api/v1/kms, GET /api/v1/stations/{mac} (with its 50 events),
# and, as the peer, nginx serving the very same station list bytes as a static file.
# Then the dashboard's whole first load (the page, its script and style, stations,
# KMS, campaigns) one after another, 50 times; the daemon's RSS before and after.
# Then live events: the demo's campaign with SUBSCRIBERS subscribers of
# /api/v1/events (tests/src/bin/sse-subscribers): every event to every subscriber,
# ids without a gap.
#
# Usage: tests/bench/api.sh [STATIONS [EVENTS [CONNS [SECONDS [SUBSCRIBERS]]]]]
#        (2000 50 50 10 100). Prints Markdown for BENCHMARKS.md.
source "$(dirname "$0")/../e2e/lib.sh"
stations=${1:-2000}
events=${2:-50}
conns=${3:-50}
seconds=${4:-10}
subscribers=${5:-100}
need cargo wrk nginx curl python3
(cd "$E2E_ROOT" && cargo build -q --release -p orchestrator --bin netreset &&
  cargo build -q --release -p netreset-tests --bin bench-seed --bin sse-subscribers)
NETRESET=$E2E_ROOT/target/release/netreset
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
port=${API_PORT:-18500}

"$E2E_ROOT/target/release/bench-seed" "$E2E_TMP/data" "$stations" "$events" >&2
mkdir -p "$E2E_TMP/tftp"
cat > "$E2E_TMP/netreset.toml" <<TOML
data_dir = "$E2E_TMP/data"
[http]
listen = "127.0.0.1:$port"
[dhcp]
mode = "off"
[tftp]
listen = "127.0.0.1:0"
root = "$E2E_TMP/tftp"
[inventory]
events_per_station = $events
[api]
token = "$E2E_ADMIN_TOKEN"
TOML
RUST_LOG=warn "$NETRESET" serve --config "$E2E_TMP/netreset.toml" > "$E2E_TMP/netreset.log" 2>&1 &
pid=$!
defer "kill $pid 2>/dev/null"
base=http://127.0.0.1:$port
wait_for 20 "netreset" curl -sf "$base/api/v1/health"
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
rss0=$(rss)
api "$base/api/v1/stations" > "$E2E_TMP/stations.json"
count=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$E2E_TMP/stations.json")
[ "$count" = "$stations" ] || fail "the daemon lists $count stations, not $stations"
mac=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["mac"])' "$E2E_TMP/stations.json")

# The peer: nginx handing out the same bytes from a file (no sendfile cache games:
# the file is in the page cache after the first request, as the daemon's store is).
mkdir -p "$E2E_TMP/www/api/v1" "$E2E_TMP/nginx"
cp "$E2E_TMP/stations.json" "$E2E_TMP/www/api/v1/stations"
# nginx started by root reads its files as an unprivileged worker.
chmod o+x "$E2E_TMP" && chmod -R o+rX "$E2E_TMP/www"
cat > "$E2E_TMP/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $E2E_TMP/nginx/nginx.pid;
error_log $E2E_TMP/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $E2E_TMP/nginx/body;
  proxy_temp_path $E2E_TMP/nginx/proxy;
  fastcgi_temp_path $E2E_TMP/nginx/fastcgi;
  uwsgi_temp_path $E2E_TMP/nginx/uwsgi;
  scgi_temp_path $E2E_TMP/nginx/scgi;
  server {
    listen 127.0.0.1:$((port + 1));
    root $E2E_TMP/www;
    default_type application/json;
  }
}
CONF
nginx -c "$E2E_TMP/nginx/nginx.conf" -e "$E2E_TMP/nginx/error.log"
defer "kill \$(cat $E2E_TMP/nginx/nginx.pid) 2>/dev/null"
wait_for 10 "nginx" curl -sf "http://127.0.0.1:$((port + 1))/api/v1/stations" -o /dev/null

# wrk URL [HEADER]: "p50 p99 req/s" (ms, ms, /s), failing on any non-2xx.
bench() {
  local out
  out=$(wrk -t2 -c"$conns" -d"${seconds}s" --latency -H "Authorization: Bearer $E2E_ADMIN_TOKEN" "$1") ||
    fail "wrk $1: $out"
  if grep -q 'Non-2xx' <<<"$out"; then fail "wrk $1: $(grep Non-2xx <<<"$out")"; fi
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(label):
    m = re.search(r"^\s*%s\s+([\d.]+)(us|ms|s)\s*$" % label, out, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
print("%.2f %.2f %.0f" % (ms("50%"), ms("99%"), rps))
PY
}
size() { curl -s -o /dev/null -w '%{size_download}' -H "Authorization: Bearer $E2E_ADMIN_TOKEN" "$1"; }

echo "$stations stations, $events events each; wrk -t2 -c$conns -d${seconds}s; $(nproc) cores"
echo
echo "| request | bytes | p50 ms | p99 ms | requests/s |"
echo "|---|---|---|---|---|"
for path in /api/v1/stations / /dashboard/app.js /api/v1/kms "/api/v1/stations/$mac"; do
  read -r p50 p99 rps < <(bench "$base$path")
  echo "| netreset GET $path | $(size "$base$path") | $p50 | $p99 | $rps |"
  [ "$path" = /api/v1/stations ] && list="$p50 $p99 $rps"
done
read -r p50 p99 rps < <(bench "http://127.0.0.1:$((port + 1))/api/v1/stations")
echo "| nginx, the same station list as a file | $(size "http://127.0.0.1:$((port + 1))/api/v1/stations") | $p50 | $p99 | $rps |"
python3 - $list "$p50" "$p99" "$rps" <<'PY'
import sys
l50, l99, lr, n50, n99, nr = map(float, sys.argv[1:])
print()
print("station list against nginx: p99 %.1fx, throughput %.2fx" % (l99 / n99 if n99 else 0, lr / nr if nr else 0))
PY
rss1=$(rss)

# The dashboard's first load, in the order the page makes it.
python3 - "$base" "$E2E_ADMIN_TOKEN" <<'PY'
import sys, time, urllib.request
base, token = sys.argv[1], sys.argv[2]
def get(path, auth):
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token} if auth else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return len(r.read())
times = []
for _ in range(50):
    t = time.perf_counter()
    n = sum(get(p, False) for p in ("/", "/dashboard/app.js", "/dashboard/style.css"))
    n += sum(get(p, True) for p in ("/api/v1/stations", "/api/v1/kms", "/api/v1/campaigns"))
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print()
print("dashboard first load (page, script, style, stations, kms, campaigns; one client, 50 loads): "
      "p50 %.1f ms, p99 %.1f ms, %d bytes" % (times[len(times) // 2], times[int(len(times) * 0.99) - 1], n))
PY
echo
echo "daemon RSS: $rss0 KiB at start with $stations stations, $rss1 KiB after the runs, $(rss) KiB at the end"
kill "$pid"

# Live events during a campaign: the demo, and SUBSCRIBERS subscribers.
"$NETRESET" demo --serve --windows-boot-ms 500 > /dev/null 2> "$E2E_TMP/demo.log" &
demo=$!
defer "kill $demo 2>/dev/null"
wait_for 30 "the demo's dashboard URL" grep -q 'dashboard: ' "$E2E_TMP/demo.log"
url=$(sed 's/\x1b\[[0-9;]*m//g' "$E2E_TMP/demo.log" | grep -o 'dashboard: [^ ]*' | head -1 | cut -d' ' -f2)
addr=${url#http://}; addr=${addr%%/*}; token=${url##*#token=}
out=$("$E2E_ROOT/target/release/sse-subscribers" "$addr" "$token" "$subscribers" 120) ||
  fail "live events: $out"
echo
echo "live events, the demo's campaign (30 stations, to 27/7) with $subscribers subscribers: $out"
