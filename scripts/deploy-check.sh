#!/usr/bin/env bash
# The Kubernetes deployment (deploy/, kustomize) renders and is valid: it
# is rendered with `kubectl kustomize` after deploy/make-tls.sh has made
# throwaway certificates, every object is validated against the Kubernetes
# schemas with kubernetes-validate --strict (a deliberately broken copy must
# fail, so the validator is known to bite), the gateway's gateway.toml from
# the ConfigMap passes `egret-gateway check-config` with the generated
# certificates, and the objects keep the promises the README makes (gateway
# pool placement as kube-egress-gateway's daemon, a grace period longer than
# the drain, least-privilege RBAC: reads, plus Events, GatewayStatus and
# TokenReviews; each gateway identified by its own pod's token, no shared key).
# Prints "deploy: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
K8S_VERSION=1.32.0
VENV=${EGRET_VENV:-$TARGET_DIR/deploy-venv}
command -v kubectl >/dev/null || { apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null || true; }
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "kubernetes-validate==$K8S_VERSION" pyyaml \
    || { echo "deploy: 0 passed, 1 failed (installing kubernetes-validate)"; exit 1; }
fi
build_release || { echo "deploy: 0 passed, 1 failed (build)"; exit 1; }
DIR=$(mktemp -d /tmp/egret-deploy.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
cp -r deploy "$DIR/deploy" && rm -rf "$DIR/deploy/tls"
TLS_DIR="$DIR/deploy/tls" deploy/make-tls.sh aks-gwpool-0 aks-gwpool-1 >/dev/null
check "deploy/make-tls.sh writes a CA, egret-control's, the operator's and one certificate per node" \
  test -s "$DIR/deploy/tls/aks-gwpool-1.pem" -a -s "$DIR/deploy/tls/control.pem" -a -s "$DIR/deploy/tls/admin.pem"
check "kubectl kustomize renders deploy/" sh -c "kubectl kustomize '$DIR/deploy' > '$DIR/all.yaml'"
n=$(grep -c '^kind:' "$DIR/all.yaml")
check "every rendered object ($n) passes kubernetes-validate --strict against Kubernetes $K8S_VERSION" \
  sh -c "'$VENV/bin/kubernetes-validate' --strict --quiet -k $K8S_VERSION '$DIR/all.yaml'"
sed 's/terminationGracePeriodSeconds:/terminationGracePeriod:/' "$DIR/all.yaml" > "$DIR/broken.yaml"
check "a misspelled field fails validation (the validator bites)" \
  sh -c "! '$VENV/bin/kubernetes-validate' --strict --quiet -k $K8S_VERSION '$DIR/broken.yaml' >/dev/null 2>&1"
# What the kubelet would project: a token (a JWT's shape) for egret-control.
mkdir -p "$DIR/identity" && echo "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiZWdyZXQtY29udHJvbCJdfQ.c2ln" > "$DIR/identity/token"
"$VENV/bin/python" - "$DIR/all.yaml" "$DIR/deploy/tls" "$DIR/identity" > "$DIR/gateway.toml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "egret-gateway")
t = cm["data"]["gateway.toml"].replace("@NODE_NAME@", "aks-gwpool-0").replace("@NODE_IP@", "198.18.0.10")
print(t.replace("/etc/egret/tls", sys.argv[2]).replace("/var/run/secrets/egret", sys.argv[3]))
PY
check "the ConfigMap's gateway.toml passes egret-gateway check-config with the generated certificates and a token" \
  sh -c "'$GATEWAY' check-config '$DIR/gateway.toml' >/dev/null"
promise() { # promise WHAT PYTHON_EXPR (docs: the objects; kind(K, NAME): one)
  check "$1" "$VENV/bin/python" -c "
import sys, yaml
docs = [d for d in yaml.safe_load_all(open('$DIR/all.yaml')) if d]
def kind(k, name):
    return next(d for d in docs if d['kind'] == k and d['metadata']['name'] == name)
ds = kind('DaemonSet', 'egret-gateway')['spec']['template']['spec']
sys.exit(0 if ($2) else 1)"
}
promise "the gateway DaemonSet runs where kube-egress-gateway's daemon does (its node label and taint)" \
  "ds['nodeSelector'] == {'kubeegressgateway.azure.com/mode': 'true'} and {'key': 'kubeegressgateway.azure.com/mode', 'operator': 'Equal', 'value': 'true', 'effect': 'NoSchedule'} in ds['tolerations']"
promise "it serves the probe on the anchor's port 8082, on the host network" \
  "ds['hostNetwork'] and any(p['containerPort'] == 8082 for p in ds['containers'][0]['ports'])"
promise "its grace period outlasts the 10 s drain" \
  "ds['terminationGracePeriodSeconds'] > 10 and 'drain_secs = 10' in kind('ConfigMap', 'egret-gateway')['data']['gateway.toml']"
promise "the gateway gets no Kubernetes API token (its plan comes from egret-control)" \
  "ds['automountServiceAccountToken'] is False"
promise "egret-control's ClusterRole only reads, reads no Secrets, and writes only Events (and TokenReviews)" \
  "all((set(r['verbs']) <= {'get', 'list', 'watch'} or (r['apiGroups'], r['resources']) == (['events.k8s.io'], ['events']) and set(r['verbs']) <= {'create', 'patch'} or (r['apiGroups'], r['resources'], r['verbs']) == (['authentication.k8s.io'], ['tokenreviews'], ['create'])) and 'secrets' not in r['resources'] for r in kind('ClusterRole', 'egret-control')['rules'])"
promise "each gateway proves its node with its own pod's token for egret-control, and mounts no client key" \
  "any(s.get('serviceAccountToken', {}).get('audience') == 'egret-control' for v in ds['volumes'] for s in v.get('projected', {}).get('sources', [])) and '--gateway-auth=token' in kind('Deployment', 'egret-control')['spec']['template']['spec']['containers'][0]['args'] and list(kind('Secret', 'egret-gateway-tls')['data']) == ['ca.pem'] and 'key = ' not in kind('ConfigMap', 'egret-gateway')['data']['gateway.toml']"
promise "Secrets are only read, and GatewayStatus only written (no delete), in the add-on's namespace" \
  "sorted((d['metadata']['namespace'], r['apiGroups'], r['resources'], r['verbs']) for d in docs if d['kind'] == 'Role' for r in d['rules']) == [('kube-egress-gateway-system', [''], ['secrets'], ['get', 'list', 'watch']), ('kube-egress-gateway-system', ['egressgateway.kubernetes.azure.com'], ['gatewaystatuses'], ['create', 'get', 'patch'])]"
promise "the TLS Secrets hold no CA or operator key" \
  "all(k not in ('ca-key.pem', 'admin-key.pem') for d in docs if d['kind'] == 'Secret' for k in d['data'])"
echo "deploy: $passed passed, $failed failed"
[ "$failed" = 0 ]
