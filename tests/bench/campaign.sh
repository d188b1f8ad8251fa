#!/usr/bin/env bash
# Time to target on the simulator against the lower bound: `netreset demo --json`
# (5 of 30 stations, windows 27 + office 7, max_parallel 5), RUNS times each with
# simulated Windows boot times of 0 and 300 ms per cycle. The lower bound is
# ceil(need / min(stations, max_parallel)) x the median cycle time of the same run
# (a cycle: from the wake or reboot to the station's last report). Loopback only, no
# root needed.
# Usage: tests/bench/campaign.sh [RUNS]   (default 5)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-5}
(cd "$root" && cargo build -q --release --bin netreset)
# One unreported warm-up run (as hyperfine --warmup): the first run after a build pays
# for a cold page cache.
"$root/target/release/netreset" demo --json >/dev/null
echo "| Windows boot | run | campaign s | median cycle s | lower bound s | ratio |"
echo "|---|---|---|---|---|---|"
for boot in 0 300; do
  for run in $(seq "$runs"); do
    "$root/target/release/netreset" demo --json --windows-boot-ms "$boot" | python3 -c "
import json, sys
r = json.load(sys.stdin)
assert r['state'] == 'done' and r['reported_counts'] == r['targets'], r
print(f\"| {$boot} ms | $run | {r['campaign_seconds']:.2f} | {r['cycle_seconds_median']:.3f} | {r['lower_bound_seconds']:.2f} | {r['campaign_seconds'] / r['lower_bound_seconds']:.2f} |\")"
  done
done
