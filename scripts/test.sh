#!/usr/bin/env bash
# Sets up a fresh machine and runs every revgate test: unit, integration and
# end-to-end (real Envoy, real processes). See tests/README.md for the tiers.
set -euo pipefail
cd "$(dirname "$0")/.."

envoy=$(scripts/install-tools.sh | tail -n 1)
export REVGATE_ENVOY="$envoy"
echo "test: using $("$envoy" --version | head -n 1 | sed 's/^.*version: //')"

# The gateway filter, built once for the end-to-end tests.
REVGATE_FILTER_WASM=$(scripts/build-filter.sh | tail -n 1)
export REVGATE_FILTER_WASM

cargo test --workspace --locked "$@"
