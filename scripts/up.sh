#!/usr/bin/env bash
# revgate's main job on one machine, from a fresh clone: installs Envoy and
# the wasm32 targets if missing (scripts/install-tools.sh), builds revgate, the
# gateway filter and the example apps, then runs `revgate up` with the
# examples — Knative's autoscale sample (scales from zero under load) and a
# hello-world service split 90/10 with a `canary` tag. Ctrl-C stops
# everything. Extra arguments go to `revgate up` (e.g. --http-port 8081).
set -euo pipefail
cd "$(dirname "$0")/.."

envoy=$(scripts/install-tools.sh | tail -n 1)
echo "up: building revgate and the example apps" >&2
cargo build --locked -p revgate -p autoscale -p helloworld
wasm=$(scripts/build-filter.sh --locked | tail -n 1)
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

# examples/images.yaml points at target/debug; a different target directory
# gets a map of its own.
images=examples/images.yaml
if [ "$target_dir" != "$PWD/target" ]; then
  mkdir -p .revgate
  images=.revgate/images.yaml
  sed "s#\.\./target/debug/#$target_dir/debug/#" examples/images.yaml >"$images"
fi

exec "$target_dir/debug/revgate" up \
  -f examples/autoscale.yaml examples/hello-split.yaml \
  --images "$images" --envoy "$envoy" --wasm-filter "$wasm" "$@"
