#!/usr/bin/env bash
# Builds the one Egret image (egret-gateway, egret-control, egretctl; deploy/
# runs it as both) with buildah FROM scratch: nothing is pulled, so no
# registry or container daemon is needed. Into an empty root go the release
# binaries (debug info stripped), every shared library they load (ldd; in
# Debian's merged /usr layout), and the programs the gateway runs: nft (the
# forward guard), ip (interface addresses) and /bin/sh with sed (the
# DaemonSet fills its node name into gateway.toml at start).
# tests/test_image.py builds it this way and runs it.
#
#   deploy/build-image.sh [--no-build] [IMAGE [OCI_ARCHIVE]]
#
# IMAGE defaults to the name:tag deploy/kustomization.yaml gives the
# manifests (one place to change it); OCI_ARCHIVE, if given, receives the
# image as an OCI archive (`buildah push IMAGE oci-archive:FILE`), which
# `skopeo copy oci-archive:FILE docker://REGISTRY/...` pushes anywhere.
# --no-build uses the binaries already in target/release. buildah's storage
# is the default one unless CONTAINERS_STORAGE_CONF names another.
set -euo pipefail
build=1
if [ "${1:-}" = --no-build ]; then build=0; shift; fi
archive=${2:+$(realpath -m "$2")}
cd "$(dirname "$0")/.."
default=$(awk '$1 == "newName:" { n = $2 } $1 == "newTag:" { t = $2 } END { print n ":" t }' deploy/kustomization.yaml)
image=${1:-$default}
release=${CARGO_TARGET_DIR:-$PWD/target}/release
command -v buildah >/dev/null || { echo "build-image: buildah is not installed (apt-get install buildah)" >&2; exit 1; }
if [ "$build" = 1 ]; then cargo build --release -q --workspace --bins; fi

root=$(mktemp -d)
ctr=
cleanup() {
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$root" "$root.tar"
}
trap cleanup EXIT

# Debian's merged /usr: /bin, /sbin, /lib, /lib64 are links into /usr.
mkdir -p "$root"/usr/{bin,sbin,lib,lib64,local/bin} "$root"/{etc,run,var/lib,tmp}
chmod 1777 "$root/tmp"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done

# put FILE: FILE at its path under /usr; libs FILE: the libraries it loads.
put() {
  local f=$1
  case $f in /usr/*) ;; *) f=/usr$f ;; esac
  [ -e "$root$f" ] && return
  mkdir -p "$root$(dirname "$f")"
  cp -L "$1" "$root$f"
}
libs() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
}
for b in egret-gateway egret-control egretctl; do
  [ -x "$release/$b" ] || { echo "build-image: $release/$b is missing (cargo build --release --workspace --bins)" >&2; exit 1; }
  strip --strip-debug -o "$root/usr/local/bin/$b" "$release/$b"
  for l in $(libs "$release/$b"); do put "$l"; done
done
for p in /usr/sbin/nft /usr/bin/ip /usr/bin/sed /usr/bin/dash; do
  [ -x "$p" ] || { echo "build-image: $p is missing (apt-get install nftables iproute2 sed dash)" >&2; exit 1; }
  put "$p"
  for l in $(libs "$p"); do put "$l"; done
done
ln -s dash "$root/usr/bin/sh"

ctr=$(buildah from scratch)
tar -C "$root" --owner=0 --group=0 --numeric-owner -cf "$root.tar" .
buildah add --quiet "$ctr" "$root.tar" / >/dev/null
rm -f "$root.tar"
buildah config \
  --env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
  --entrypoint '[]' --cmd '["egret-gateway", "--help"]' \
  --label org.opencontainers.image.title=egret \
  --label "org.opencontainers.image.version=${image##*:}" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
ctr=
if [ -n "$archive" ]; then
  rm -f "$archive"
  buildah push --quiet "$image" "oci-archive:$archive:$image"
  echo "build-image: $image, $archive ($(du -k "$archive" | cut -f1) KiB)"
else
  echo "build-image: $image"
fi
