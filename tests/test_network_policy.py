"""Kubernetes NetworkPolicy through the gateway, on the routed topology
(forwarding on): a namespace's default-deny egress policy plus an allow for
the echo server's /32 on TCP 80 hold for the pod they select (curl to it
works; another address, another port and ping get nothing), a pod of
another namespace is unaffected, deleting the policy restores egress
within 2 s, and an EgressPolicy deny still wins over a NetworkPolicy
allow. The objects are the ones a cluster holds, read from the manifests
file as egret-control reads them."""

import time

from egret import in_pool, poll

ECHO = "http://198.19.0.254/"
FAR = "http://198.19.60.2/"

# pod-a (app=web) in namespace shop with config-a; pod-b in namespace other
# with config-b.
BASE = """apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: config-a, namespace: shop}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.100.0/28}
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: config-b, namespace: other}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.101.0/28}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-a, namespace: shop, labels: {app: web}, annotations: {kubernetes.azure.com/static-gateway-configuration: config-a}}
status: {phase: Running, podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-b, namespace: other, labels: {app: web}, annotations: {kubernetes.azure.com/static-gateway-configuration: config-b}}
status: {phase: Running, podIP: 198.18.0.3, podIPs: [{ip: 198.18.0.3}]}
"""

# As the Kubernetes documentation writes them: deny all egress in the
# namespace, then allow the web pods TCP 80 to one address.
POLICIES = """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-echo, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 198.19.0.254/32}
    ports:
    - {protocol: TCP, port: 80}
"""

EGRESS_DENY = """---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: no-echo, namespace: shop}
spec:
  gatewayConfiguration: config-a
  defaultAction: allow
  rules:
  - {name: no-echo, action: deny, cidrs: [198.19.0.254/32]}
"""


def tcp_connects(ns, host: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(('{host}', {port}), 1.5)"
    return ns.ok("python3", "-c", code, timeout=10)


def locked(gateway, topo) -> None:
    gateway.write_plan(BASE + POLICIES)
    # Served once pod-a can no longer reach the far host.
    poll(lambda: topo.pa.curl(FAR, 1) is None, timeout=10, what="the NetworkPolicies applied")


def test_the_selected_pod_reaches_only_what_its_policies_allow(restore_plan, topo):
    locked(restore_plan, topo)
    assert in_pool(topo.pa.curl(ECHO), "198.19.100"), "TCP 80 to the echo server's /32, translated"
    assert topo.pa.curl(FAR, 2) is None, "another address"
    assert not tcp_connects(topo.pa, "198.19.0.254", 7008), "another port"
    assert not topo.pa.ok("ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", "198.19.0.254"), "ping"
    restore_plan.status_after(lambda s: s.drops("network_policy_denied") >= 3, what="the denials counted")


def test_a_pod_of_another_namespace_is_unaffected(restore_plan, topo):
    locked(restore_plan, topo)
    assert in_pool(topo.pb.curl(FAR), "198.19.101"), "pod-b (namespace other) reaches the far host"
    assert topo.pb.ok("ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", "198.19.0.254")


def test_deleting_the_policies_restores_egress_within_2_s(restore_plan, topo):
    locked(restore_plan, topo)
    restore_plan.write_plan(BASE)
    t0 = time.monotonic()
    poll(lambda: topo.pa.curl(FAR, 1) is not None, timeout=5, what="egress restored")
    assert time.monotonic() - t0 < 2.5


def test_an_egress_policy_deny_wins_over_a_network_policy_allow(restore_plan, topo):
    restore_plan.write_plan(BASE + POLICIES + EGRESS_DENY)
    poll(lambda: topo.pa.curl(FAR, 1) is None, timeout=10, what="the policies applied")
    assert topo.pa.curl(ECHO, 2) is None, "the NetworkPolicy allows it, the EgressPolicy does not"
    # pod-a's config is the one with the EgressPolicy: pod-b still passes.
    assert in_pool(topo.pb.curl(ECHO), "198.19.101")

