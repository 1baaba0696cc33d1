#!/usr/bin/env bash
# The Kubernetes deployment (deploy/, kustomize) renders and is valid: it
# is rendered with `kubectl kustomize` after deploy/make-tls.sh has made
# throwaway certificates, every object is validated against the Kubernetes
# schemas with kubernetes-validate --strict (a deliberately broken copy must
# fail, so the validator is known to bite), the gateway's gateway.toml from
# the ConfigMap passes `egret-gateway check-config` with the generated
# certificates (so does the node service's example, scripts/install.sh's),
# and the objects keep the promises the README makes (gateway
# pool placement as kube-egress-gateway's daemon, a grace period longer than
# the drain, least-privilege RBAC: reads, plus Events, GatewayStatus,
# TokenReviews and patches of StaticGatewayConfigurations (the port pool
# pressure annotation); each gateway identified by its own pod's token, no
# shared key;
# egret-control as two replicas: a PodDisruptionBudget, spread over nodes,
# ready only when synced and serving, each named by its pod, peers through a
# headless Service, the Lease granted in its own namespace only). The
# replica promises are also run on broken copies, which must fail them.
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
# Its plan_file pointed at manifests that serve 3 configs: an empty plan
# (a path read as no objects) must not pass for a checked one.
sed "s#/etc/egret/plan.yaml#$EGRET_ROOT/control/cluster/testdata/aks#" scripts/gateway.example.toml > "$DIR/example.toml"
check "the node service's example gateway.toml (scripts/install.sh) passes egret-gateway check-config on a plan" \
  sh -c "'$GATEWAY' check-config '$DIR/example.toml' | grep -q ' 3 configs'"
# holds FILE PYTHON_EXPR: whether the objects in FILE keep a promise (docs:
# the objects; kind(K, NAME): one; ds: the gateway's pod spec; dep, ctl,
# args: egret-control's Deployment spec, container and args; arg(FLAG):
# the values of --FLAG=...; ns: egret-control's namespace).
holds() {
  "$VENV/bin/python" -c "
import sys, yaml
docs = [d for d in yaml.safe_load_all(open('$1')) if d]
def kind(k, name):
    return next(d for d in docs if d['kind'] == k and d['metadata']['name'] == name)
def arg(flag):
    return [a.split('=', 1)[1] for a in args if a.startswith('--' + flag + '=')]
ds = kind('DaemonSet', 'egret-gateway')['spec']['template']['spec']
deployment = kind('Deployment', 'egret-control')
ns, dep = deployment['metadata']['namespace'], deployment['spec']
ctl = dep['template']['spec']['containers'][0]
args = ctl['args']
try:
    kept = bool($2)
except Exception as e:  # a promise that cannot be judged is not a broken one
    print(repr(e), file=sys.stderr); sys.exit(2)
sys.exit(0 if kept else 1)"
}
promise() { # promise WHAT PYTHON_EXPR: on the rendered objects
  check "$1" holds "$DIR/all.yaml" "$2"
}
promise "the gateway DaemonSet runs where kube-egress-gateway's daemon does (its node label and taint)" \
  "ds['nodeSelector'] == {'kubeegressgateway.azure.com/mode': 'true'} and {'key': 'kubeegressgateway.azure.com/mode', 'operator': 'Equal', 'value': 'true', 'effect': 'NoSchedule'} in ds['tolerations']"
promise "it serves the probe on the anchor's port 8082, on the host network" \
  "ds['hostNetwork'] and any(p['containerPort'] == 8082 for p in ds['containers'][0]['ports'])"
promise "its grace period outlasts the 10 s drain" \
  "ds['terminationGracePeriodSeconds'] > 10 and 'drain_secs = 10' in kind('ConfigMap', 'egret-gateway')['data']['gateway.toml']"
promise "the gateway gets no Kubernetes API token (its plan comes from egret-control)" \
  "ds['automountServiceAccountToken'] is False"
promise "egret-control's ClusterRole only reads, reads no Secrets, and writes only Events (and TokenReviews, and patches configs' pressure annotation)" \
  "all((set(r['verbs']) <= {'get', 'list', 'watch'} or (r['apiGroups'], r['resources']) == (['events.k8s.io'], ['events']) and set(r['verbs']) <= {'create', 'patch'} or (r['apiGroups'], r['resources'], r['verbs']) == (['authentication.k8s.io'], ['tokenreviews'], ['create']) or (r['apiGroups'], r['resources'], r['verbs']) == (['egressgateway.kubernetes.azure.com'], ['staticgatewayconfigurations'], ['patch'])) and 'secrets' not in r['resources'] for r in kind('ClusterRole', 'egret-control')['rules'])"
promise "each gateway proves its node with its own pod's token for egret-control, and mounts no client key" \
  "any(s.get('serviceAccountToken', {}).get('audience') == 'egret-control' for v in ds['volumes'] for s in v.get('projected', {}).get('sources', [])) and '--gateway-auth=token' in kind('Deployment', 'egret-control')['spec']['template']['spec']['containers'][0]['args'] and list(kind('Secret', 'egret-gateway-tls')['data']) == ['ca.pem'] and 'key = ' not in kind('ConfigMap', 'egret-gateway')['data']['gateway.toml']"
promise "Secrets are only read, and GatewayStatus only written (no delete), in the add-on's namespace" \
  "sorted((d['metadata']['namespace'], r['apiGroups'], r['resources'], r['verbs']) for d in docs if d['kind'] == 'Role' and d['metadata']['namespace'] == 'kube-egress-gateway-system' for r in d['rules']) == [('kube-egress-gateway-system', [''], ['secrets'], ['get', 'list', 'watch']), ('kube-egress-gateway-system', ['egressgateway.kubernetes.azure.com'], ['gatewaystatuses'], ['create', 'get', 'patch'])]"
promise "the TLS Secrets hold no CA or operator key" \
  "all(k not in ('ca-key.pem', 'admin-key.pem') for d in docs if d['kind'] == 'Secret' for k in d['data'])"
# egret-control as two replicas (README: "Two egret-control replicas").
labels="dep['template']['metadata']['labels']"
selects="(lambda d: d['spec']['selector'] == dep['selector'] and d['spec']['selector']['matchLabels'].items() <= $labels.items())"
declare -A HA  # each promise by its name, for the broken copies below
ha() { HA[$1]=$2; promise "$1" "$2"; }
ha "egret-control runs as two or more replicas, and a rollout keeps them ready (maxUnavailable 0)" \
  "dep['replicas'] >= 2 and dep['strategy']['rollingUpdate']['maxUnavailable'] == 0"
ha "a PodDisruptionBudget keeps one replica through a drain (minAvailable 1, its pods)" \
  "any(d['kind'] == 'PodDisruptionBudget' and d['metadata']['namespace'] == ns and d['spec'].get('minAvailable') == 1 and $selects(d) for d in docs)"
ha "its replicas spread over nodes (pod anti-affinity on the host name, its own pods)" \
  "any(t.get('podAffinityTerm', t)['topologyKey'] == 'kubernetes.io/hostname' and t.get('podAffinityTerm', t)['labelSelector']['matchLabels'].items() <= $labels.items() for a in dep['template']['spec']['affinity']['podAntiAffinity'].values() for t in a)"
ha "it is ready when synced and serving: /readyz on the port --health-listen serves" \
  "ctl['readinessProbe'].get('httpGet', {}).get('path') == '/readyz' and any(p['name'] == ctl['readinessProbe']['httpGet']['port'] and arg('health-listen') == ['0.0.0.0:%d' % p['containerPort']] for p in ctl['ports'])"
ha "each replica is named by its pod (--replica-name from the downward API)" \
  "arg('replica-name') == ['\$(POD_NAME)'] and {'name': 'POD_NAME', 'valueFrom': {'fieldRef': {'fieldPath': 'metadata.name'}}} in ctl['env']"
ha "its peers are a headless Service of its own pods, on the gRPC port" \
  "len(arg('peer')) == 1 and any(d['kind'] == 'Service' and d['spec'].get('clusterIP') == 'None' and arg('peer')[0] == 'https://%s.%s.svc:%d' % (d['metadata']['name'], ns, d['spec']['ports'][0]['port']) and d['spec']['selector'].items() <= $labels.items() and d['spec']['ports'][0]['targetPort'] == 'grpc' for d in docs)"
ha "the Lease is granted (get, create, update) by a Role in its own namespace only, to its ServiceAccount" \
  "not any(d['kind'] == 'ClusterRole' and any('leases' in r['resources'] or '*' in r['resources'] for r in d['rules']) for d in docs) and sorted(v for d in docs if d['kind'] == 'Role' for r in d['rules'] if 'leases' in r['resources'] for v in r['verbs']) == ['create', 'get', 'update'] and all(d['metadata']['namespace'] == ns and r['apiGroups'] == ['coordination.k8s.io'] for d in docs if d['kind'] == 'Role' for r in d['rules'] if 'leases' in r['resources']) and any(d['kind'] == 'RoleBinding' and d['metadata']['namespace'] == ns and d['roleRef']['kind'] == 'Role' and d['roleRef']['name'] == r['metadata']['name'] and {'kind': 'ServiceAccount', 'name': dep['template']['spec']['serviceAccountName'], 'namespace': ns} in d['subjects'] for r in docs if r['kind'] == 'Role' and any('leases' in x['resources'] for x in r['rules']) for d in docs) and arg('lease-namespace') in (['\$(POD_NAMESPACE)'], [ns]) and {'name': 'POD_NAMESPACE', 'valueFrom': {'fieldRef': {'fieldPath': 'metadata.namespace'}}} in ctl['env']"
# The same promises on broken copies: each must fail the one it breaks.
fails() { "$@"; [ $? = 1 ]; }  # kept no promise (1), judged (not 2)
breaks() { # breaks WHAT PROMISE PYTHON_EDIT (of docs, in place)
  "$VENV/bin/python" -c "
import sys, yaml
docs = [d for d in yaml.safe_load_all(open('$DIR/all.yaml')) if d]
def kind(k, name):
    return next(d for d in docs if d['kind'] == k and d['metadata']['name'] == name)
$3
yaml.safe_dump_all(docs, open('$DIR/broken-ha.yaml', 'w'))"
  check "a copy with $1 fails: $2" fails holds "$DIR/broken-ha.yaml" "${HA[$2]}"
}
breaks "replicas: 1" "egret-control runs as two or more replicas, and a rollout keeps them ready (maxUnavailable 0)" \
  "kind('Deployment', 'egret-control')['spec']['replicas'] = 1"
breaks "no PodDisruptionBudget" "a PodDisruptionBudget keeps one replica through a drain (minAvailable 1, its pods)" \
  "docs[:] = [d for d in docs if d['kind'] != 'PodDisruptionBudget']"
breaks "the Lease granted cluster-wide" "the Lease is granted (get, create, update) by a Role in its own namespace only, to its ServiceAccount" \
  "kind('ClusterRole', 'egret-control')['rules'].append({'apiGroups': ['coordination.k8s.io'], 'resources': ['leases'], 'verbs': ['get', 'create', 'update']})"
breaks "the Lease's delete granted" "the Lease is granted (get, create, update) by a Role in its own namespace only, to its ServiceAccount" \
  "kind('Role', 'egret-control-leader-election')['rules'][0]['verbs'].append('delete')"
breaks "a TCP readiness probe" "it is ready when synced and serving: /readyz on the port --health-listen serves" \
  "kind('Deployment', 'egret-control')['spec']['template']['spec']['containers'][0]['readinessProbe'] = {'tcpSocket': {'port': 'grpc'}}"
breaks "a peer Service with a cluster IP" "its peers are a headless Service of its own pods, on the gRPC port" \
  "del kind('Service', 'egret-control-peers')['spec']['clusterIP']"
# The replicas call each other with egret-control's certificate: it must
# name the peers' Service, be a client's too, and be an admin on the others.
cert_ext() { openssl x509 -in "$DIR/deploy/tls/control.pem" -noout -ext subjectAltName,extendedKeyUsage; }
peer_cert() {
  cert_ext | grep -q 'DNS:egret-control-peers.egret-system.svc' && cert_ext | grep -q 'TLS Web Client Authentication' \
    && holds "$DIR/all.yaml" "'egret-control' in arg('admin-identity')"
}
check "egret-control's certificate names the peer Service, serves and calls (client auth too), and is an --admin-identity" peer_cert
# Every flag the Deployment passes is one egret-control knows.
known_flags() {
  local help f
  help=$("$CONTROL" --help) || return 1
  for f in $(holds_print "$DIR/all.yaml" "'\n'.join(a.split('=')[0] for a in args)"); do
    grep -qE -e "^ +(-[a-zA-Z], )?$f( |$)" <<<"$help" || { echo "unknown flag $f"; return 1; }
  done
}
holds_print() { # holds_print FILE PYTHON_EXPR: prints it
  "$VENV/bin/python" -c "
import yaml
docs = [d for d in yaml.safe_load_all(open('$1')) if d]
args = next(d for d in docs if d['kind'] == 'Deployment' and d['metadata']['name'] == 'egret-control')['spec']['template']['spec']['containers'][0]['args']
print($2)"
}
check "every flag in egret-control's args is one egret-control --help lists" known_flags
echo "deploy: $passed passed, $failed failed"
[ "$failed" = 0 ]
