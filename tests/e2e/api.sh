#!/usr/bin/env bash
# The API against its OpenAPI document, on the live daemon: schemathesis (PyPI; .ci/run
# installs it into /opt/schemathesis) generates requests for every operation of
# /api/v1/openapi.json and checks each answer: no 5xx, no status, content type or
# body outside what the document says. Then /metrics after that traffic, checked by
# promtool (Debian's prometheus package). The daemon runs on loopback only.
source "$(dirname "$0")/lib.sh"
ST=${SCHEMATHESIS:-/opt/schemathesis/bin/st}
[ -x "$ST" ] || fail "schemathesis is not installed at $ST (.ci/run installs it)"
need curl promtool
mkdir -p "$E2E_TMP/tftp"
cat > "$E2E_TMP/netreset.toml" <<TOML
data_dir = "$E2E_TMP/data"
[http]
listen = "127.0.0.1:0"
[dhcp]
server_ip = "127.0.0.1"
listen = "127.0.0.1:0"
pxe_listen = "127.0.0.1:0"
broadcast = "127.0.0.1:9"
[tftp]
listen = "127.0.0.1:0"
root = "$E2E_TMP/tftp"
[api]
token = "$E2E_ADMIN_TOKEN"
[[rooms]]
name = "lab-1"
wol_broadcast = "127.0.0.1"
wol_source = "127.0.0.1"
wol_port = 9
[[inventory.stations]]
mac = "52:54:00:12:34:56"
room = "lab-1"
TOML
"$NETRESET" serve --config "$E2E_TMP/netreset.toml" > "$E2E_TMP/netreset.log" 2>&1 &
defer "kill $!"
wait_for 20 "the daemon's address in its log" grep -q 'netreset running' "$E2E_TMP/netreset.log"
url=$(sed 's/\x1b\[[0-9;]*m//g' "$E2E_TMP/netreset.log" | grep -o 'http_addr=[0-9.:]*' | head -1 | cut -d= -f2)
log "netreset on $url"
# The event stream never ends by itself: its schema is checked by the loopback tests.
# From the test's directory: schemathesis keeps a cache where it runs.
cd "$E2E_TMP"
"$ST" run "http://$url/api/v1/openapi.json" \
  -H "Authorization: Bearer $E2E_ADMIN_TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /api/v1/events \
  --max-examples "${ST_EXAMPLES:-50}" --workers 2 --seed 1 --request-timeout 30 \
  > "$E2E_TMP/schemathesis.log" 2>&1 ||
  fail "schemathesis found failures: $(sed -n '/ERRORS\|FAILURES/,/SUMMARY/p' "$E2E_TMP/schemathesis.log" | head -n 80)
$(tail -n 25 "$E2E_TMP/schemathesis.log")"
log "$(grep -E 'generated|passed|failures' "$E2E_TMP/schemathesis.log" | tail -3 | tr '\n' ' ')"
if grep -q 'panicked' "$E2E_TMP/netreset.log"; then fail "the daemon panicked: $(grep -m1 panicked "$E2E_TMP/netreset.log")"; fi
log "schemathesis: no 5xx, every answer inside the document"
curl --max-time 10 -sf "http://$url/metrics" > "$E2E_TMP/metrics.txt" || fail "GET /metrics failed"
promtool check metrics < "$E2E_TMP/metrics.txt" > "$E2E_TMP/promtool.log" 2>&1 ||
  fail "promtool check metrics: $(cat "$E2E_TMP/promtool.log")"
grep -q '^netreset_http_requests_total{route="/api/v1/stations",method="GET",status="200"} [1-9]' "$E2E_TMP/metrics.txt" ||
  fail "the metrics do not count the station list requests: $(grep http_requests_total "$E2E_TMP/metrics.txt" | head)"
curl --max-time 10 -sf -H 'Accept: application/openmetrics-text;version=1.0.0' "http://$url/metrics" | tail -1 | grep -qx '# EOF' ||
  fail "a scraper asking for OpenMetrics does not get it"
log "metrics: promtool check metrics passes after $(grep -c . "$E2E_TMP/metrics.txt") lines; OpenMetrics on request"
