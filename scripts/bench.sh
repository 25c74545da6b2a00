#!/usr/bin/env bash
# revgate's benchmark suite, from a fresh clone: installs what it needs
# (Envoy, the wasm32 targets and the HTTP load generator `oha`, through
# scripts/install-tools.sh --bench), builds release
# binaries (revgate, the autoscale sample, revgate-bench) and the gateway
# filter, runs the scenarios, writes bench/results.json and regenerates the
# table in BENCHMARKS.md.
#
#   scripts/bench.sh                  # every scenario at its published size
#   scripts/bench.sh --quick          # every scenario at its smoke size (CI)
#   scripts/bench.sh overhead burst   # some scenarios; the others' results are kept
#
# Scenarios: overhead, cold-start, burst, xds, tick, step (see BENCHMARKS.md).
# REVGATE_BENCH_RESULTS and REVGATE_BENCH_MARKDOWN write the results
# elsewhere (scripts/test.sh's smoke run keeps the published ones).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { echo "bench: $*" >&2; }

quick=()
scenarios=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) log "unknown option $arg (try --help)"; exit 2 ;;
    *) scenarios+=("$arg") ;;
  esac
done

envoy=$(scripts/install-tools.sh --bench | tail -n 1)

# oha: the project-local install (install-tools.sh --bench), else the pinned
# version it found on PATH.
oha="$root/.tools/cargo/bin/oha"
[ -x "$oha" ] || oha=$(command -v oha)

log "building release binaries and the gateway filter"
cargo build --release --locked --quiet -p revgate -p autoscale -p revgate-bench
wasm=$(scripts/build-filter.sh --locked --quiet | tail -n 1)
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

# The burst scenario holds 10,000 connections open at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "$target_dir/release/revgate-bench" run "${quick[@]}" "${scenarios[@]}" \
  --revgate "$target_dir/release/revgate" \
  --autoscale "$target_dir/release/autoscale" \
  --envoy "$envoy" \
  --filter "$wasm" \
  --oha "$oha" \
  --run-dir "$target_dir/bench-run" \
  --results "${REVGATE_BENCH_RESULTS:-bench/results.json}" \
  --markdown "${REVGATE_BENCH_MARKDOWN:-BENCHMARKS.md}"
