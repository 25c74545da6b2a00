#!/usr/bin/env bash
# Sets up a fresh machine and runs every revgate test: unit, integration and
# end-to-end (real Envoy, real processes), then the benchmark suite's smoke
# run (scripts/bench.sh --quick). See tests/README.md for the tiers.
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
if REVGATE_BENCH_RESULTS="$bench_out/results.json" REVGATE_BENCH_MARKDOWN="$bench_out/BENCHMARKS.md" \
  scripts/bench.sh --quick &&
  python3 -c 'import json, sys; s = json.load(open(sys.argv[1]))["scenarios"]; sys.exit(not (len(s) == 6 and all(x["rows"] for x in s)))' \
    "$bench_out/results.json"; then
  echo "test result: ok. 1 passed; 0 failed (benchmark smoke run)" >>"$log"
else
  echo "test result: FAILED. 0 passed; 1 failed (benchmark smoke run)" >>"$log"
  status=1
fi
totals=$(awk '/^test result: / { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } } END { printf "%d passed, %d failed", p, f }' "$log")
echo
echo "$totals"
exit "$status"
