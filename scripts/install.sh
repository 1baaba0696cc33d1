#!/usr/bin/env bash
# Installs egret-gateway as a systemd service on a gateway node (root):
# the binary, the unit, a system user, and an example /etc/egret/gateway.toml
# (scripts/gateway.example.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -q -p egret-dataplane --bin egret-gateway
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/egret-gateway" /usr/local/bin/egret-gateway
install -m 0644 scripts/egret-gateway.service /etc/systemd/system/egret-gateway.service
id egret >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin egret
install -d -m 0755 /etc/egret
# The example is checked by the suite (scripts/deploy-check.sh).
[ -f /etc/egret/gateway.toml ] || install -m 0644 scripts/gateway.example.toml /etc/egret/gateway.toml
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "installed; start with: systemctl enable --now egret-gateway"
else
  echo "installed (systemd is not running here; the unit is in /etc/systemd/system)"
fi
