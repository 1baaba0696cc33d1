#!/usr/bin/env bash
# Writes the mutual-TLS material of deploy/ into deploy/tls/ (or $TLS_DIR):
# a CA, egret-control's server certificate, one client certificate per
# gateway node (each names its node: a gateway may only subscribe to its own
# plan) and an operator certificate for egretctl (egret-admin, kept out of
# the cluster), plus the kustomization that turns them into the Secrets
# egret-control-tls and egret-gateway-tls.
#
# Usage: deploy/make-tls.sh NODE_NAME...   (the gateway pool's Node names)
# Every gateway pod mounts egret-gateway-tls, so each can read every node's
# key; with cert-manager's csi-driver, issue per-pod certificates instead.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 NODE_NAME..." >&2; exit 2; }
out=${TLS_DIR:-$(dirname "$0")/tls}
days=${TLS_DAYS:-365}
mkdir -p "$out"
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" -subj "/CN=egret CA" \
  -keyout "$out/ca-key.pem" -out "$out/ca.pem" 2>/dev/null
# issue NAME FILE EXTENSIONS
issue() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$out/$2-key.pem" -out "$work/$2.csr" 2>/dev/null
  printf '%s\n' "$3" > "$work/$2.ext"
  openssl x509 -req -in "$work/$2.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
    -CAserial "$work/ca.srl" -days "$days" -extfile "$work/$2.ext" -out "$out/$2.pem" 2>/dev/null
}
issue egret-control control "subjectAltName=DNS:egret-control.egret-system.svc,DNS:egret-control.egret-system.svc.cluster.local
extendedKeyUsage=serverAuth"
issue egret-admin admin "subjectAltName=DNS:egret-admin
extendedKeyUsage=clientAuth"
for node in "$@"; do
  issue "$node" "$node" "subjectAltName=DNS:$node
extendedKeyUsage=clientAuth"
done
{
  echo "# Written by deploy/make-tls.sh: the Secrets of deploy/'s mutual TLS."
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "generatorOptions: {disableNameSuffixHash: true}"
  echo "secretGenerator:"
  echo "- name: egret-control-tls"
  echo "  namespace: egret-system"
  echo "  files: [ca.pem, control.pem, control-key.pem]"
  echo "- name: egret-gateway-tls"
  echo "  namespace: egret-system"
  printf '  files: [ca.pem'
  for node in "$@"; do printf ', %s.pem, %s-key.pem' "$node" "$node"; done
  echo "]"
} > "$out/kustomization.yaml"
echo "make-tls: $out (keep ca-key.pem and admin-key.pem out of the cluster)"
