#!/usr/bin/env bash
# Builds revgate's gateway filter (wasm-filter/, crate revgate-filter) for
# wasm32-unknown-unknown with the workspace's `wasm` profile (release with
# opt-level "s", LTO, panic = "abort", stripped) and prints the path of the
# .wasm as its last line. Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

target=wasm32-unknown-unknown
profile=wasm

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -x "$target" >/dev/null; then
    echo "build-filter: the Rust target $target is not installed; run scripts/install-tools.sh" >&2
    exit 1
  fi
elif ! rustc --print target-libdir --target "$target" >/dev/null 2>&1; then
  echo "build-filter: the Rust target $target is missing; run scripts/install-tools.sh" >&2
  exit 1
fi

cargo build -p revgate-filter --target "$target" --profile "$profile" "$@" >&2

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
wasm="$target_dir/$target/$profile/revgate_filter.wasm"
if [ ! -f "$wasm" ]; then
  echo "build-filter: cargo finished but $wasm is missing" >&2
  exit 1
fi
echo "$wasm"
