#!/usr/bin/env bash
# Runs revgate on this machine with no Kubernetes: the control plane, a real
# Envoy gateway programmed over xDS, two revisions of Knative's hello-world
# app, and a 90/10 split with a `canary` tag (examples/hello-split.yaml).
# Ctrl-C stops everything. Ports: gateway 8080, admin API 9090, xDS 18000.
set -euo pipefail
cd "$(dirname "$0")/.."

http_port=${HTTP_PORT:-8080}
state_dir=${STATE_DIR:-.revgate}
envoy=$(scripts/install-tools.sh | tail -n 1)

echo "demo: building revgate and the hello-world app"
cargo build --quiet -p revgate -p helloworld
bin=target/debug

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

mkdir -p "$state_dir/logs"
for rev in 1 2; do
  PORT=1808$rev TARGET="v$rev" K_REVISION="hello-0000$rev" "$bin/helloworld" >"$state_dir/logs/hello-0000$rev.log" 2>&1 &
  pids+=($!)
done

"$bin/revgate" serve --state-dir "$state_dir" --http-port "$http_port" >"$state_dir/logs/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs localhost:9090/healthz >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs localhost:9090/healthz >/dev/null || { echo "demo: revgate serve did not start; see $state_dir/logs/serve.log"; exit 1; }

"$bin/revgate" render envoy --ads --admin-port 9901 >"$state_dir/envoy.yaml"
"$envoy" -c "$state_dir/envoy.yaml" --base-id 7 --log-level warn >"$state_dir/logs/envoy.log" 2>&1 &
pids+=($!)

"$bin/revgate" apply -f examples/hello-split.yaml
for _ in $(seq 100); do
  curl -fs -H 'Host: hello.default.example.com' "localhost:$http_port" >/dev/null 2>&1 && break
  sleep 0.1
done
"$bin/revgate" get ksvc

cat <<EOT

revgate is serving. Try:
  curl -H 'Host: hello.default.example.com' localhost:$http_port          # 90% v1, 10% v2
  curl -H 'Host: canary-hello.default.example.com' localhost:$http_port   # always v2
  $bin/revgate get revisions
  $bin/revgate get gateway
Logs are in $state_dir/logs. Press Ctrl-C to stop.
EOT
wait
