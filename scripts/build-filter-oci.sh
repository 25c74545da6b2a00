#!/usr/bin/env bash
# Packages revgate's gateway filter as an OCI image layout that Istio's
# WasmPlugin can pull, without a Docker daemon: the "compat" Wasm image
# variant (one gzip'd tar layer holding plugin.wasm, a standard image config,
# and the manifest annotation module.wasm.image/variant=compat).
#
#   scripts/build-filter-oci.sh [OUT_DIR]       (default: target/revgate-filter-oci)
#
# Push the layout to a registry with any OCI tool, e.g.
#   skopeo copy oci:target/revgate-filter-oci:0.1.0 docker://ghcr.io/you/revgate-filter:0.1.0
#   oras cp --from-oci-layout target/revgate-filter-oci:0.1.0 ghcr.io/you/revgate-filter:0.1.0
# then set the WasmPlugin's url (istio-manifests/600-wasmplugin.yaml) to it.
# The build is reproducible: the same filter gives the same digests.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/revgate-filter-oci}
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
wasm=$(scripts/build-filter.sh | tail -n 1)

for tool in tar gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-filter-oci: $tool is required" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# put FILE MEDIA_TYPE: stores FILE as a blob, prints its descriptor.
put() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(wc -c <"$1" | tr -d ' ')
  cp "$1" "$out/blobs/sha256/$digest"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$digest" "$size"
}

cp "$wasm" "$work/plugin.wasm"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=ustar \
  -C "$work" -cf "$work/layer.tar" plugin.wasm
gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer=$(put "$work/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)

printf '{"architecture":"wasm","os":"wasip1","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" >"$work/config.json"
config=$(put "$work/config.json" application/vnd.oci.image.config.v1+json)

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s],"annotations":{"module.wasm.image/variant":"compat"}}' \
  "$config" "$layer" >"$work/manifest.json"
manifest=$(put "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)

printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' \
  "${manifest%\}},\"annotations\":{\"org.opencontainers.image.ref.name\":\"$tag\"}}" >"$out/index.json"

echo "build-filter-oci: $out (tag $tag, manifest $(sed 's/.*"digest":"\([^"]*\)".*/\1/' <<<"$manifest"))" >&2
echo "$out"
