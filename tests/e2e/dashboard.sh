#!/usr/bin/env bash
# The dashboard in headless Chromium against `netreset demo --serve`: login from the
# demo's #token= address, 30 tiles in rooms A-C, the Windows and Office bars rising
# live to 27/27 and 7/7, a station page, no horizontal scroll at 1366x768 and
# 390x844, accessible names (tests/e2e/dashboard.py drives chromedriver, stdlib only).
# It tests the files embedded in the binary: rebuild after editing the dashboard.
# Screenshots land in target/; the 1366x768 one is copied to docs/dashboard.png.
source "$(dirname "$0")/lib.sh"
need chromium chromedriver python3
[ -x "$NETRESET" ] || fail "$NETRESET is missing (cargo build first)"

"$NETRESET" demo --serve --windows-boot-ms 3000 > "$E2E_TMP/demo-summary.log" 2> "$E2E_TMP/demo.log" &
demo=$!
defer "kill $demo; wait $demo"
wait_for 60 "the dashboard address in the demo's output" grep -q 'dashboard: http' "$E2E_TMP/demo.log"
url=$(sed 's/\x1b\[[0-9;]*m//g' "$E2E_TMP/demo.log" | grep -o 'dashboard: http[^ ]*' | head -1 | cut -d' ' -f2)
log "demo dashboard at ${url%%#*}"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chromedriver --port="$port" --allowed-ips=127.0.0.1 > "$E2E_TMP/chromedriver.log" 2>&1 &
driver=$!
defer "kill $driver; wait $driver"

mkdir -p "$E2E_ROOT/target" "$E2E_TMP/profile"
start=$SECONDS
timeout --kill-after=10 270 python3 "$(dirname "$0")/dashboard.py" \
  "$port" "$url" "$E2E_ROOT/target" "$E2E_TMP/profile" > "$E2E_TMP/driver.log" 2>&1 || {
  cat "$E2E_TMP/driver.log" >&2
  fail "the dashboard checks failed"
}
while read -r line; do log "$line"; done < "$E2E_TMP/driver.log"
kill -0 "$demo" 2>/dev/null || fail "the demo ended during the test"
if grep -q panicked "$E2E_TMP/demo.log"; then fail "the demo panicked: $(grep -m1 panicked "$E2E_TMP/demo.log")"; fi

mkdir -p "$E2E_ROOT/docs"
cp "$E2E_ROOT/target/dashboard-1366x768.png" "$E2E_ROOT/docs/dashboard.png"
log "dashboard: all checks passed in $((SECONDS - start)) s; docs/dashboard.png updated"
