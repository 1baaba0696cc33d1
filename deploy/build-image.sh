#!/usr/bin/env bash
# Builds the egret image (deploy/Containerfile) from release binaries built
# here: deploy/build-image.sh [TAG]   (default egret:latest). Needs docker or
# podman with access to a registry holding debian:bookworm-slim.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-egret:latest}
cargo build --release -p egret-dataplane --bin egret-gateway -p egret-control
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp target/release/egret-gateway target/release/egret-control target/release/egretctl deploy/Containerfile "$ctx/"
engine=$(command -v podman || command -v docker || true)
[ -n "$engine" ] || { echo "build-image: neither podman nor docker is installed" >&2; exit 1; }
"$engine" build -t "$tag" -f "$ctx/Containerfile" "$ctx"
echo "build-image: $tag"
