#!/usr/bin/env bash
# Run the fuzz targets, each for SECONDS, on stable Rust (cargo-fuzz with no
# sanitizer: the code is safe Rust, what we look for is panics, overflows, hangs and
# runaway memory). The corpus grows in fuzz/corpus/TARGET (not committed), seeded
# from fuzz/seeds/TARGET. Prints one line per target: name, runs, seconds it ran
# (including the build check), result.
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script; it then
# becomes a regression test (see fuzz/README.md).
#
# Usage: fuzz/run.sh SECONDS [TARGET ...]   (default: every target)
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET ...]}
shift
targets=("$@")
command -v cargo-fuzz >/dev/null || { echo "fuzz/run.sh: cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2; exit 1; }
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build -s none
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  started=$SECONDS
  if cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="FAILED: $(grep -m1 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" || tail -1 "$log")"
    failed=1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  printf '%s\t%s runs\t%s s\t%s\n' "$t" "${runs:-?}" "$((SECONDS - started))" "$result"
  [ "$result" = ok ] || tail -40 "$log" >&2
  rm -f "$log"
done
exit $failed
