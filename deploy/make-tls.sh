#!/usr/bin/env bash
# Writes the TLS material of deploy/ into deploy/tls/ (or $TLS_DIR): a CA,
# egret-control's server certificate and an operator certificate for
# egretctl (egret-admin, kept out of the cluster), plus the kustomization
# that turns them into the Secrets egret-control-tls (its certificate and
# key, the CA) and egret-gateway-tls (the CA only).
#
# Usage: deploy/make-tls.sh [NODE_NAME...]
# In the cluster gateways hold no client key: each proves its node with its
# own pod's ServiceAccount token (egret-control --gateway-auth=token), which
# no other node can present. NODE_NAMEs are for gateways outside Kubernetes
# (egret-control --gateway-auth=certificate, the default): one client
# certificate per node, naming it, written beside the rest but put in no
# Secret — copy each to its own node only.
set -euo pipefail
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
# egret-control's replicas serve under both Services' names and call each
# other (--peer) with this same certificate: server and client.
issue egret-control control "subjectAltName=DNS:egret-control.egret-system.svc,DNS:egret-control.egret-system.svc.cluster.local,DNS:egret-control-peers.egret-system.svc,DNS:egret-control-peers.egret-system.svc.cluster.local
extendedKeyUsage=serverAuth,clientAuth"
issue egret-admin admin "subjectAltName=DNS:egret-admin
extendedKeyUsage=clientAuth"
for node in "$@"; do
  issue "$node" "$node" "subjectAltName=DNS:$node
extendedKeyUsage=clientAuth"
done
{
  echo "# Written by deploy/make-tls.sh: the Secrets of deploy/'s TLS (no gateway keys:"
  echo "# gateways authenticate with their pods' ServiceAccount tokens)."
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "generatorOptions: {disableNameSuffixHash: true}"
  echo "secretGenerator:"
  echo "- name: egret-control-tls"
  echo "  namespace: egret-system"
  echo "  files: [ca.pem, control.pem, control-key.pem]"
  echo "- name: egret-gateway-tls"
  echo "  namespace: egret-system"
  echo "  files: [ca.pem]"
} > "$out/kustomization.yaml"
echo "make-tls: $out (keep ca-key.pem and admin-key.pem out of the cluster)"
[ $# -eq 0 ] || echo "make-tls: node certificates for --gateway-auth=certificate: $* (each to its own node only)"
