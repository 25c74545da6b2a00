#!/usr/bin/env bash
# Sets up a fresh machine and runs every revgate test: unit, integration and
# end-to-end (real Envoy, real processes), then the benchmark suite's smoke
# run (scripts/bench.sh --quick): measurements, not tests — it counts as one
# check that every scenario ran and gave figures, and its goals are reported,
# never judged, at smoke size. See tests/README.md for the tiers.
set -euo pipefail
cd "$(dirname "$0")/.."

envoy=$(scripts/install-tools.sh --test | tail -n 1)
export REVGATE_ENVOY="$envoy"
envoy_version=$("$envoy" --version)
echo "test: using $(sed -n '/version: /{s/^.*version: //;p;q}' <<<"$envoy_version")"

# The gateway filter, built once for the end-to-end tests.
REVGATE_FILTER_WASM=$(scripts/build-filter.sh | tail -n 1)
export REVGATE_FILTER_WASM

# The example apps the process runtime runs in the end-to-end tests.
cargo build --locked -p autoscale -p helloworld

# Cargo prints one summary per test binary, the last often a crate's empty
# doc-tests; close with the totals over all of them.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?

# The benchmark suite's smoke run: every scenario runs and yields numbers
# (timings are reported, never asserted); the published results stay as they are.
bench_out=$(mktemp -d)
trap 'rm -f "$log"; rm -rf "$bench_out"' EXIT
cp BENCHMARKS.md "$bench_out/BENCHMARKS.md"
echo
echo "== Measurements, not tests: the benchmark suite's smoke run (scripts/bench.sh --quick) =="
echo "   Every scenario must run and give figures; the figures and goals below are at smoke size and are not asserted."
if REVGATE_BENCH_RESULTS="$bench_out/results.json" REVGATE_BENCH_MARKDOWN="$bench_out/BENCHMARKS.md" \
  scripts/bench.sh --quick 2>&1 | tee "$bench_out/bench.log" &&
  python3 -c 'import json, sys; s = json.load(open(sys.argv[1]))["scenarios"]; sys.exit(not (len(s) == 6 and all(x["rows"] for x in s)))' \
    "$bench_out/results.json"; then
  echo "test result: ok. 1 passed; 0 failed (benchmark smoke run)" >>"$log"
else
  echo "test result: FAILED. 0 passed; 1 failed (benchmark smoke run)" >>"$log"
  status=1
fi
goals_met=$(grep -c ' | goal .*: met$' "$bench_out/bench.log" || true)
goals_missed=$(grep -c ' | goal .*: MISSED$' "$bench_out/bench.log" || true)
echo "== Measurements: $goals_met of $((goals_met + goals_missed)) goals met at smoke size (too small and too short to judge them; the published figures, goals and their analysis are in BENCHMARKS.md, from scripts/bench.sh) =="
totals=$(awk '/^test result: / { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } } END { printf "%d passed, %d failed", p, f }' "$log")
echo
echo "$totals"
exit "$status"
