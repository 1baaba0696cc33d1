#!/usr/bin/env bash
# Installs what Egret's build, demo and tests need on a fresh Debian machine
# (root). Quick when everything is already there.
set -euo pipefail
pkgs=(clang llvm libbpf-dev linux-libc-dev libelf-dev zlib1g-dev pkg-config make gcc m4 iproute2 iputils-ping ethtool
      iperf3 traceroute iputils-tracepath curl wireguard-go wireguard-tools nftables python3 python3-pytest python3-scapy python3-venv openssl tcpdump procps
      prometheus nfdump buildah podman runc python3-yaml)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # prometheus is here for promtool (the alert rules' tests), nfdump for
  # nfcapd (the IPFIX tests start their own): their daemons stay off.
  # buildah, podman and runc build and run the image (tests/test_image.py;
  # runc: crun refuses this machine's hybrid cgroups).
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus nfdump 2>/dev/null || true
  fi
fi
if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install Rust stable (rustup) first" >&2
  exit 1
fi
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
