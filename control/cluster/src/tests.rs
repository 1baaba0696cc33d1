//! Reconcile tables over YAML fixtures in `testdata/` (modelled on the AKS
//! Static Egress Gateway docs), nodes and pods joining and leaving, and every
//! problem case.

use super::*;
use egret_plan::{Binding, Ipv4Cidr, MappingMode};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

fn aks() -> ClusterState {
    ClusterState::read_path(&testdata("aks")).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

const GW1: [&str; 3] =
    ["aks-gwpool1-12345678-vmss000000", "aks-gwpool1-12345678-vmss000001", "aks-gwpool1-12345678-vmss000002"];
const GW2: [&str; 2] = ["aks-gwpool2-87654321-vmss000000", "aks-gwpool2-87654321-vmss000001"];

/// config → node → addresses, from the per-node plans.
fn shares(r: &Reconciled) -> BTreeMap<String, BTreeMap<String, BTreeSet<Ipv4Addr>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<Ipv4Addr>>> = BTreeMap::new();
    for (node, plan) in &r.plans {
        for c in &plan.configs {
            let addrs = c.egress.iter().flat_map(|p| p.addrs()).collect();
            out.entry(c.name.clone()).or_default().insert(node.clone(), addrs);
        }
    }
    out
}

fn gateway_node(name: &str, pool: &str) -> Node {
    let mut n = Node::default();
    n.metadata.name = name.into();
    n.metadata.labels.insert(GATEWAY_MODE_LABEL.into(), "true".into());
    n.metadata.labels.insert(POOL_LABELS[0].into(), pool.into());
    n
}

#[test]
fn aks_fixture_reads_every_kind_and_form() {
    let st = aks();
    // 2 configs from a List + 1 from a second document; a NodeList; a List
    // of pods with a ConfigMap ignored.
    assert_eq!((st.configs.len(), st.nodes.len(), st.pods.len()), (3, 6, 7));
    let web = &st.configs[0];
    assert_eq!(web.metadata.key(), "apps/web-egress");
    assert_eq!(web.spec.gateway_nodepool_name.as_deref(), Some("gwpool1"));
    assert_eq!(web.spec.default_route.as_deref(), Some("staticEgressGateway"));
    let pay = &st.configs[2];
    assert_eq!(pay.spec.exclude_cidrs, vec!["198.18.250.0/24"], "the docs' excludeCIDRs spelling is accepted");
    assert_eq!(pay.spec.provision_public_ips, Some(false));
    assert!(st.nodes[0].is_gateway() && st.nodes[2].is_gateway(), "upstream and AKS gateway labels");
    assert!(!st.nodes[5].is_gateway());
    assert_eq!(st.nodes[0].internal_ip(), Some(ip("10.224.0.10")));
}

#[test]
fn aks_fixture_reconciles_to_one_plan_per_gateway_node() {
    let r = reconcile(&aks());
    assert_eq!(r.problems, vec![], "{:#?}", r.problems);
    let gw: Vec<&str> = r.plans.keys().map(String::as_str).collect();
    assert_eq!(gw, [&GW1[..], &GW2[..]].concat(), "every gateway node, and only those, gets a plan");

    let s = shares(&r);
    // Each config's prefix is split, disjointly and completely, across its pool.
    for (config, prefix, pool) in [
        ("apps/web-egress", "198.19.100.0/28", &GW1[..]),
        ("apps/batch-egress", "198.19.101.0/30", &GW1[..]),
        ("payments/pay-egress", "198.19.102.0/29", &GW2[..]),
    ] {
        let by_node = &s[config];
        assert!(by_node.keys().all(|n| pool.contains(&n.as_str())), "{config} stays in its pool");
        let all: Vec<Ipv4Addr> = by_node.values().flatten().copied().collect();
        let unique: BTreeSet<Ipv4Addr> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len(), "{config}: no address on two nodes");
        assert_eq!(unique, cidr(prefix).addrs().collect(), "{config}: every address served");
    }
    assert_eq!(s["apps/web-egress"].len(), 3, "16 addresses reach all three nodes");

    for (node, plan) in &r.plans {
        plan.validate().unwrap_or_else(|e| panic!("{node}: {e}"));
        let web = plan.configs.iter().find(|c| c.name == "apps/web-egress");
        if let Some(web) = web {
            assert_eq!(web.exclude, vec![cidr("10.0.0.0/8"), cidr("172.16.0.0/12"), cidr("169.254.169.254/32")]);
        }
        if let Some(b) = plan.configs.iter().find(|c| c.name == "apps/batch-egress") {
            assert_eq!(
                (b.mapping, b.port_quota, b.timeouts.udp, b.timeouts.tcp_established),
                (MappingMode::PortReuse, 4096, 120, 3600)
            );
            assert_eq!(b.timeouts.icmp, 60, "unset timeouts keep their defaults");
        }
    }
    let pay_node = &r.plans[GW2[0]];
    assert_eq!(
        pay_node.bindings,
        vec![Binding { pod_ip: ip("198.18.1.2"), config: "payments/pay-egress".into(), public_key: None }]
    );
    let web_node = r.plans.iter().find(|(n, p)| GW1.contains(&n.as_str()) && p.configs.len() == 2).unwrap().1;
    assert_eq!(
        web_node.bindings,
        vec![
            Binding { pod_ip: ip("198.18.0.4"), config: "apps/batch-egress".into(), public_key: None },
            Binding { pod_ip: ip("198.18.0.2"), config: "apps/web-egress".into(), public_key: None },
            Binding { pod_ip: ip("198.18.0.3"), config: "apps/web-egress".into(), public_key: None },
        ],
        "IPv4 only; finished, pending and unannotated pods left out"
    );

    let web = r.configs.iter().find(|c| c.name == "apps/web-egress").unwrap();
    assert!(web.served);
    assert_eq!(web.target, "pool gwpool1");
    assert_eq!(web.pods, vec![ip("198.18.0.2"), ip("198.18.0.3")]);
    assert_eq!(r.nodes.len(), 5);
}

#[test]
fn reconcile_is_deterministic_whatever_the_object_order() {
    let st = aks();
    let mut shuffled = st.clone();
    shuffled.nodes.reverse();
    shuffled.pods.reverse();
    shuffled.configs.reverse();
    assert_eq!(reconcile(&st), reconcile(&shuffled));
}

#[test]
fn a_joining_node_takes_only_its_own_share() {
    let before = shares(&reconcile(&aks()));
    let mut st = aks();
    st.nodes.push(gateway_node("aks-gwpool1-12345678-vmss000003", "gwpool1"));
    let after = shares(&reconcile(&st));
    let newcomer = "aks-gwpool1-12345678-vmss000003";
    let mut moved = 0;
    for config in ["apps/web-egress"] {
        for (node, addrs) in &before[config] {
            let now = after[config].get(node).cloned().unwrap_or_default();
            assert!(now.is_subset(addrs), "{config}: {node} gained addresses when another node joined");
            let lost: BTreeSet<_> = addrs.difference(&now).copied().collect();
            assert!(lost.is_subset(&after[config][newcomer]), "{config}: what {node} lost went to the newcomer");
            moved += lost.len();
        }
    }
    assert!(moved > 0, "the newcomer takes some addresses");
    // batch-egress has 4 addresses: now one on each of the 4 nodes.
    assert!(after["apps/batch-egress"].values().all(|a| a.len() == 1));
    assert_eq!(after["apps/batch-egress"].len(), 4);
    assert_eq!(before["payments/pay-egress"], after["payments/pay-egress"], "other pools do not move");
}

#[test]
fn a_leaving_or_unready_node_gives_up_only_its_own_share() {
    let before = shares(&reconcile(&aks()));
    let gone = GW1[1];
    let mut removed = aks();
    removed.nodes.retain(|n| n.metadata.name != gone);
    let mut unready = aks();
    let n = unready.nodes.iter_mut().find(|n| n.metadata.name == gone).unwrap();
    n.status.conditions = vec![NodeCondition { kind: "Ready".into(), status: "False".into() }];
    for st in [removed, unready] {
        let r = reconcile(&st);
        assert!(r.plans.get(gone).is_none_or(|p| p.configs.is_empty()));
        let after = shares(&r);
        assert_eq!(after["apps/batch-egress"].len(), 2, "the 4 addresses cover both remaining nodes");
        for config in ["apps/web-egress", "apps/batch-egress"] {
            for (node, addrs) in before[config].iter().filter(|(n, _)| *n != gone && config == "apps/web-egress") {
                assert!(addrs.is_subset(&after[config][node]), "{config}: {node} kept its addresses");
            }
            let all: BTreeSet<Ipv4Addr> = after[config].values().flatten().copied().collect();
            assert_eq!(all.len(), before[config].values().map(|a| a.len()).sum::<usize>(), "nothing dropped");
        }
    }
}

#[test]
fn pods_joining_and_leaving_change_bindings_not_addresses() {
    let st = aks();
    let before = reconcile(&st);
    let mut joined = st.clone();
    let mut pod = st.pods[0].clone();
    pod.metadata.name = "web-new".into();
    pod.status = PodStatus { pod_ip: Some("198.18.0.20".into()), ..Default::default() };
    joined.pods.push(pod);
    let after = reconcile(&joined);
    assert_eq!(shares(&before), shares(&after));
    for node in GW1 {
        let p = &after.plans[node];
        let bound = p.bindings.iter().any(|b| b.pod_ip == ip("198.18.0.20") && b.config == "apps/web-egress");
        assert_eq!(bound, p.configs.iter().any(|c| c.name == "apps/web-egress"), "{node}");
    }
    let mut left = st.clone();
    left.pods.retain(|p| p.metadata.name != "pay-api-0");
    let after = reconcile(&left);
    assert!(after.plans[GW2[0]].bindings.is_empty());
    assert_eq!(shares(&before), shares(&after));
}

#[test]
fn every_problem_is_reported_and_the_good_config_survives() {
    let st = ClusterState::read_path(&testdata("problems.yaml")).unwrap();
    let r = reconcile(&st);
    let got: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
    let want = [
        "EgressPolicy apps/orphan: spec.gatewayConfiguration 'nosuch' is not a served StaticGatewayConfiguration in namespace apps",
        "Pod apps/egressip: pod IP 198.19.100.1 is inside egress prefix 198.19.100.0/30 of apps/good; not bound",
        "Pod apps/stray: names StaticGatewayConfiguration 'apps/nosuch', which does not exist",
        "Pod apps/waiting: names StaticGatewayConfiguration 'apps/pending', which is not served: status.egressIpPrefix is not set yet (prefix not provisioned)",
        "Pod apps/zz-sameip: pod IP 198.18.0.2 is already bound by Pod apps/ok; not bound",
        "Pod web/wrongns: names StaticGatewayConfiguration 'web/good', which does not exist",
        "StaticGatewayConfiguration apps/badexclude: spec.excludeCidrs[1]: invalid CIDR '10.0.0.0/33': prefix length over 32",
        "StaticGatewayConfiguration apps/badmode: annotation egret.dev/mapping: unknown mode 'sideways' (endpoint-independent, port-reuse)",
        "StaticGatewayConfiguration apps/badtimeout: config 'apps/badtimeout': timeout udp = 0s is out of range (1..=604800)",
        "StaticGatewayConfiguration apps/bothtargets: spec.gatewayNodepoolName and spec.gatewayVmssProfile are both set; only one may be",
        "StaticGatewayConfiguration apps/down: no ready gateway node in pool downpool",
        "StaticGatewayConfiguration apps/hostbits: status.egressIpPrefix: invalid CIDR '198.19.110.1/28': host bits set",
        "StaticGatewayConfiguration apps/nowhere: no ready gateway node in pool nopool",
        "StaticGatewayConfiguration apps/pending: status.egressIpPrefix is not set yet (prefix not provisioned)",
        "StaticGatewayConfiguration apps/untargeted: neither spec.gatewayNodepoolName nor spec.gatewayVmssProfile is set",
        "StaticGatewayConfiguration other/overlap: status.egressIpPrefix 198.19.100.2/31 overlaps 198.19.100.0/30 of apps/good (created earlier), which keeps it",
    ];
    assert_eq!(got, want);
    let plan = &r.plans["gw-0"];
    assert_eq!(plan.configs.len(), 1);
    assert_eq!(plan.configs[0].name, "apps/good");
    assert_eq!(plan.bindings, vec![Binding { pod_ip: ip("198.18.0.2"), config: "apps/good".into(), public_key: None }]);
    plan.validate().unwrap();
    assert!(r.plans["gw-down"].configs.is_empty(), "an unready gateway node gets an empty plan");
    let unserved: Vec<&str> = r.configs.iter().filter(|c| !c.served).map(|c| c.name.as_str()).collect();
    assert_eq!(unserved.len(), 10);
}

#[test]
fn a_small_prefix_leaves_some_nodes_idle_and_says_so() {
    let mut st = aks();
    st.configs.truncate(2); // web (/28) and batch (/30) on 3 nodes
    st.configs[1].status.as_mut().unwrap().egress_ip_prefix = Some("198.19.101.0/31".into());
    st.pods.retain(|p| p.metadata.namespace.as_deref() == Some("apps"));
    let r = reconcile(&st);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0]
        .message
        .starts_with("prefix 198.19.101.0/31 has 2 addresses for 3 gateway nodes; no share for aks-gwpool1-"));
    let batch = &shares(&r)["apps/batch-egress"];
    assert_eq!(batch.values().map(|a| a.len()).sum::<usize>(), 2);
    for plan in r.plans.values() {
        plan.validate().unwrap();
    }
}

#[test]
fn vmss_profile_matches_nodes_by_provider_id() {
    let r = reconcile(&ClusterState::read_path(&testdata("vmss.yaml")).unwrap());
    assert_eq!(r.problems, vec![]);
    let p = &r.plans["gatewayvmss000000"];
    assert_eq!(p.configs[0].name, "default/sgw1");
    assert_eq!(p.configs[0].egress.len(), 2);
    assert_eq!(p.configs[0].exclude, vec![cidr("10.244.0.0/16"), cidr("10.0.0.0/16")]);
    assert_eq!(p.bindings, vec![Binding { pod_ip: ip("198.18.3.3"), config: "default/sgw1".into(), public_key: None }]);
    assert!(r.plans["othervmss000000"].configs.is_empty());
}

#[test]
fn duplicate_objects_are_reported_and_the_first_kept() {
    let mut st = aks();
    let mut dup = st.configs[0].clone();
    dup.spec.gateway_nodepool_name = Some("gwpool2".into());
    st.configs.push(dup);
    let r = reconcile(&st);
    assert_eq!(
        r.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ["StaticGatewayConfiguration apps/web-egress: defined more than once; the first definition is used"]
    );
    assert_eq!(shares(&r), shares(&reconcile(&aks())));
}

#[test]
fn standalone_plan_serves_every_config_whole() {
    let (plan, problems) = plan_from_yaml_path(&testdata("aks"), 3).unwrap();
    assert_eq!(problems, vec![]);
    assert_eq!(plan.version, 3);
    let names: Vec<&str> = plan.configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["apps/batch-egress", "apps/web-egress", "payments/pay-egress"]);
    assert_eq!(plan.configs[1].egress, vec![cidr("198.19.100.0/28")]);
    assert_eq!(plan.bindings.len(), 4);
    plan.validate().unwrap();

    // Standalone needs no node pool, but still leaves bad objects out.
    let (plan, problems) = plan_from_yaml_path(&testdata("problems.yaml"), 1).unwrap();
    plan.validate().unwrap();
    let names: Vec<&str> = plan.configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["apps/bothtargets", "apps/down", "apps/good", "apps/nowhere", "apps/untargeted"]);
    assert!(problems.iter().any(|p| p.object == "StaticGatewayConfiguration other/overlap"));
}

#[test]
fn policies_attach_and_an_invalid_policy_fails_closed() {
    let text = r#"
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: myconfig, namespace: apps}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.100.0/30}
---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: lockdown, namespace: apps}
spec:
  gatewayConfiguration: myconfig
  defaultAction: deny
  rules:
  - {name: web, action: allow, cidrs: [198.19.0.0/24], protocol: tcp, ports: [443]}
"#;
    let (plan, problems) = standalone_plan(&ClusterState::parse(text, "t").unwrap(), 1);
    assert_eq!(problems, vec![]);
    assert_eq!(plan.configs[0].policy.as_ref().unwrap().rules[0].name, "web");

    let bad = text.replace("ports: [443]", "ports: [443], fqdns: ['']");
    let (plan, problems) = standalone_plan(&ClusterState::parse(&bad, "t").unwrap(), 1);
    assert!(plan.configs.is_empty(), "a config with an invalid policy is not served");
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].to_string().starts_with("EgressPolicy apps/lockdown: config 'apps/myconfig' policy: "),
        "{}",
        problems[0]
    );
}

#[test]
fn pod_selectors_resolve_to_the_configs_matching_pods() {
    let text = r#"
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: myconfig, namespace: apps}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.100.0/30}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: apps, labels: {app: web, tier: front},
  annotations: {kubernetes.azure.com/static-gateway-configuration: myconfig}}
status: {phase: Running, podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: batch-1, namespace: apps, labels: {app: batch},
  annotations: {kubernetes.azure.com/static-gateway-configuration: myconfig}}
status: {phase: Running, podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: web-elsewhere, namespace: other, labels: {app: web},
  annotations: {kubernetes.azure.com/static-gateway-configuration: myconfig}}
status: {phase: Running, podIP: 198.18.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: web-done, namespace: apps, labels: {app: web},
  annotations: {kubernetes.azure.com/static-gateway-configuration: myconfig}}
status: {phase: Succeeded, podIP: 198.18.0.10}
---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: lockdown, namespace: apps}
spec:
  gatewayConfiguration: myconfig
  defaultAction: deny
  rules:
  - {name: web, action: allow, cidrs: [198.19.0.0/24], podSelector: {matchLabels: {app: web}}}
  - name: not-front
    action: allow
    cidrs: [198.19.1.0/24]
    podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}
  - {name: nobody, action: allow, cidrs: [198.19.2.0/24], podSelector: {matchLabels: {app: nosuch}}}
"#;
    let (plan, problems) = standalone_plan(&ClusterState::parse(text, "t").unwrap(), 1);
    let rules = &plan.configs[0].policy.as_ref().unwrap().rules;
    // Only pods bound to this config (same namespace), still running.
    assert_eq!(rules[0].pods, Some(vec![ip("198.18.0.2")]));
    assert_eq!(rules[1].pods, Some(vec![ip("198.18.0.3")]));
    assert_eq!(rules[2].pods, Some(vec![]), "a selector that matches nothing admits nobody");
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains("podSelector"), "the plan carries IPs, not selectors: {json}");
    plan.validate().expect("the resolved plan compiles");
    assert!(problems.iter().all(|p| !p.object.starts_with("EgressPolicy")), "{problems:?}");

    // A malformed selector fails the config closed, with the rule named.
    let bad = text.replace("operator: NotIn, values: [front]", "operator: In");
    let (plan, problems) = standalone_plan(&ClusterState::parse(&bad, "t").unwrap(), 1);
    assert!(plan.configs.is_empty());
    let p = problems.iter().find(|p| p.object == "EgressPolicy apps/lockdown").unwrap();
    assert!(p.message.contains("rule 'not-front': podSelector: operator In on 'tier' needs values"), "{p}");

    // A plan that reaches a gateway with an unresolved selector is rejected.
    let mut raw = serde_json::to_value(plan_with_selector()).unwrap();
    raw["configs"][0]["policy"]["rules"][0]["podSelector"] = serde_json::json!({});
    let e = serde_json::from_value::<egret_plan::Plan>(raw).unwrap_err().to_string();
    assert!(e.contains("unknown field `podSelector`"), "{e}");
}

fn plan_with_selector() -> egret_plan::Plan {
    let text = r#"
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: c, namespace: apps}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.100.0/30}
---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: p, namespace: apps}
spec:
  gatewayConfiguration: c
  rules: [{name: r, action: deny}]
"#;
    standalone_plan(&ClusterState::parse(text, "t").unwrap(), 1).0
}

#[test]
fn broken_yaml_names_the_file_document_and_object() {
    let e = ClusterState::parse("kind: Pod\n---\nkind: [", "bad.yaml").unwrap_err().to_string();
    assert!(e.starts_with("bad.yaml: document 2:"), "{e}");
    let e = ClusterState::parse(
        "kind: StaticGatewayConfiguration\nmetadata: {name: x, namespace: apps}\nspec: {excludeCidrs: 5}",
        "f.yaml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "f.yaml: document 1: StaticGatewayConfiguration apps/x: spec.excludeCidrs: invalid type: integer `5`, expected a sequence");
    let e = ClusterState::read_path(&testdata("no-such-file.yaml")).unwrap_err().to_string();
    assert!(e.contains("no-such-file.yaml: No such file"), "{e}");
}

#[test]
fn json_from_the_api_server_reads_the_same() {
    let yaml = std::fs::read_to_string(testdata("vmss.yaml")).unwrap();
    let from_yaml = ClusterState::parse(&yaml, "y").unwrap();
    let json = serde_json::to_string(&from_yaml.configs[0]).unwrap();
    let text = format!("{{\"kind\":\"StaticGatewayConfiguration\",{}", &json[1..]);
    let from_json = ClusterState::parse(&text, "j").unwrap();
    assert_eq!(from_json.configs, from_yaml.configs);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Rendezvous: adding nodes moves an address only to an added node.
        #[test]
        fn minimal_movement(len in 24u8..=30, base in 1usize..6, extra in 1usize..4) {
            let prefix = Ipv4Cidr::new(Ipv4Addr::new(198, 19, 0, 0), len).unwrap();
            let names: Vec<String> = (0..base + extra).map(|i| format!("gw-{i}")).collect();
            let small: Vec<&str> = names[..base].iter().map(String::as_str).collect();
            let big: Vec<&str> = names.iter().map(String::as_str).collect();
            for a in prefix.addrs() {
                let (before, after) = (rendezvous_owner(&small, a).unwrap(), rendezvous_owner(&big, a).unwrap());
                prop_assert!(before == after || !small.contains(&after), "{} moved from {} to {}", a, before, after);
            }
        }

        /// The split covers the prefix exactly once, and every node while
        /// there are addresses enough.
        #[test]
        fn split_covers(len in 26u8..=32, n in 1usize..12) {
            let prefix = Ipv4Cidr::new(Ipv4Addr::new(198, 19, 0, 0), len).unwrap();
            let names: Vec<String> = (0..n).map(|i| format!("aks-gw-{i}")).collect();
            let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
            let s = split_prefix(prefix, &nodes);
            let all: BTreeSet<Ipv4Addr> = s.values().flatten().copied().collect();
            prop_assert_eq!(s.values().map(Vec::len).sum::<usize>(), all.len());
            prop_assert_eq!(all.len() as u64, prefix.size());
            let idle = s.values().filter(|a| a.is_empty()).count() as u64;
            prop_assert_eq!(idle, (n as u64).saturating_sub(prefix.size()));
        }
    }

    #[test]
    fn split_is_roughly_even() {
        let prefix = cidr("198.19.0.0/22");
        let nodes = ["a", "b", "c", "d"];
        let s = split_prefix(prefix, &nodes);
        for (n, a) in &s {
            assert!((180..=330).contains(&a.len()), "{n}: {} of 1024", a.len());
        }
    }
}

mod tunnels {
    //! kube-egress-gateway's tunnel objects: the SGC's gatewayServerProfile,
    //! its Secret, and PodEndpoints.
    use super::super::plan_from_yaml_str;
    use base64::Engine;
    use egret_plan::WgSecret;

    fn manifests(secret_key: [u8; 32], profile_key: [u8; 32]) -> String {
        let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
        let public = WgSecret(profile_key).public_key().to_string();
        let private_text = b64(&secret_key);
        let pod_key = WgSecret([9; 32]).public_key().to_string();
        format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\n\
             metadata: {{name: a, namespace: demo}}\nspec: {{gatewayNodepoolName: gw}}\n\
             status: {{egressIpPrefix: 198.19.100.0/30, gatewayServerProfile: {{ip: 198.18.50.100, port: 6000, publicKey: {public}, privateKeySecretRef: {{name: sgw-a, namespace: kube-egress-gateway-system}}}}}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: sgw-a, namespace: kube-egress-gateway-system}}\n\
             data: {{PrivateKey: {}}}\n\
             ---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: p, namespace: demo, annotations: {{kubernetes.azure.com/static-gateway-configuration: a}}}}\n\
             status: {{phase: Running, podIP: 198.18.0.2}}\n\
             ---\napiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: PodEndpoint\n\
             metadata: {{name: p, namespace: demo}}\n\
             spec: {{staticGatewayConfiguration: a, podIpAddress: 198.18.0.2/32, podPublicKey: {pod_key}}}\n",
            b64(private_text.as_bytes())
        )
    }

    #[test]
    fn a_config_with_a_server_profile_serves_its_pod_endpoints_through_its_tunnel() {
        let (plan, problems) = plan_from_yaml_str(&manifests([5; 32], [5; 32]), "inline", 1).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let t = plan.configs[0].tunnel.as_ref().expect("a tunnel");
        assert_eq!((t.address.to_string(), t.port), ("198.18.50.100".to_string(), 6000));
        assert_eq!(plan.bindings.len(), 1, "the annotated pod is bound once, by its PodEndpoint");
        assert_eq!(plan.bindings[0].public_key, Some(WgSecret([9; 32]).public_key()));
        plan.validate().unwrap();
    }

    #[test]
    fn a_secret_that_does_not_match_the_published_public_key_leaves_the_config_out() {
        let (plan, problems) = plan_from_yaml_str(&manifests([5; 32], [6; 32]), "inline", 1).unwrap();
        assert!(plan.configs.is_empty());
        assert!(problems.iter().any(|p| p.message.contains("does not match")), "{problems:?}");
    }
}

mod vm_profiles {
    //! kube-egress-gateway's GatewayVMConfiguration: each node's own egress
    //! address for a config, instead of a share of the prefix.
    use super::*;

    fn with_vm_config() -> ClusterState {
        let mut st = aks();
        let vm = ClusterState::parse(
            &format!(
                "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: GatewayVMConfiguration\n\
                 metadata: {{name: web-egress, namespace: apps}}\n\
                 spec: {{gatewayNodepoolName: gwpool1, provisionPublicIps: true}}\n\
                 status:\n  egressIpPrefix: 198.19.100.0/29\n  gatewayVMProfiles:\n\
                 \x20 - {{nodeName: {}, primaryIP: 10.224.0.10, secondaryIP: 10.224.0.110}}\n\
                 \x20 - {{nodeName: {}, primaryIP: 10.224.0.11, secondaryIP: 10.224.0.111}}\n",
                GW1[0], GW1[1]
            ),
            "inline",
        )
        .unwrap();
        st.vm_configs = vm.vm_configs;
        st
    }

    #[test]
    fn each_node_egresses_from_its_own_secondary_ip() {
        let r = reconcile(&with_vm_config());
        let s = &shares(&r)["apps/web-egress"];
        assert_eq!(s[GW1[0]], [ip("10.224.0.110")].into());
        assert_eq!(s[GW1[1]], [ip("10.224.0.111")].into());
        assert!(!s.contains_key(GW1[2]), "no profile, no share: {s:?}");
    }

    #[test]
    fn a_node_without_a_profile_is_a_problem_reported() {
        let r = reconcile(&with_vm_config());
        assert!(
            r.problems.iter().any(|p| p.message.contains("no secondaryIP") && p.message.contains(GW1[2])),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn configs_without_one_keep_splitting_their_prefix() {
        let plain = shares(&reconcile(&aks()));
        let with = shares(&reconcile(&with_vm_config()));
        for (config, nodes) in &plain {
            if config != "apps/web-egress" {
                assert_eq!(&with[config], nodes, "{config}");
            }
        }
    }
}

#[test]
fn source_cidrs_bind_a_subnet_and_a_clash_leaves_the_newer_config_out() {
    let sgc = |name: &str, created: &str, prefix: &str, sources: &str| {
        format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\n\
             metadata: {{name: {name}, namespace: infra, creationTimestamp: '{created}', \
             annotations: {{egret.dev/source-cidrs: '{sources}'}}}}\n\
             spec: {{gatewayNodepoolName: gw}}\nstatus: {{egressIpPrefix: {prefix}}}\n---\n"
        )
    };
    let text = [
        sgc("nodes", "2026-01-01T00:00:00Z", "198.19.120.0/30", "198.18.0.0/16, 198.20.0.0/24"),
        sgc("again", "2026-01-02T00:00:00Z", "198.19.121.0/30", "198.20.0.0/24"),
        sgc("holds", "2026-01-03T00:00:00Z", "198.19.122.0/30", "198.19.120.0/24"),
        sgc("typo", "2026-01-04T00:00:00Z", "198.19.123.0/30", "198.18.0.1/16"),
    ]
    .concat();
    let (plan, problems) = plan_from_yaml_str(&text, "inline", 1).unwrap();
    let got: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        got,
        [
            "StaticGatewayConfiguration infra/again: egret.dev/source-cidrs 198.20.0.0/24 is also bound by infra/nodes (created earlier), which keeps it",
            "StaticGatewayConfiguration infra/holds: egret.dev/source-cidrs 198.19.120.0/24 holds egress prefix 198.19.120.0/30 of infra/nodes",
            "StaticGatewayConfiguration infra/typo: annotation egret.dev/source-cidrs: invalid CIDR '198.18.0.1/16': host bits set",
        ]
    );
    assert_eq!(plan.configs.len(), 1);
    assert_eq!(plan.configs[0].sources, vec![cidr("198.18.0.0/16"), cidr("198.20.0.0/24")]);
    plan.validate().unwrap();
}

mod conflicts {
    //! One object that clashes with another is left out, by a stable order,
    //! and reported; every node's plan still passes Plan::validate (the
    //! check each gateway runs, refusing a failing plan whole), so the other
    //! tenants' changes keep flowing.
    use super::*;
    use base64::Engine;
    use egret_plan::{WgSecret, MAX_SOURCE_CIDRS};

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn pod_key(n: u8) -> String {
        WgSecret([n; 32]).public_key().to_string()
    }

    /// Config `name` (namespace apps, pool gw), created on day `day`, with a
    /// tunnel at `tunnel` keyed by `[key; 32]` (and that key's Secret).
    fn sgc(name: &str, day: u32, prefix: &str, tunnel: Option<(&str, u16, u8)>) -> String {
        let head = format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\n\
             metadata: {{name: {name}, namespace: apps, creationTimestamp: '2026-01-{day:02}T00:00:00Z'}}\n\
             spec: {{gatewayNodepoolName: gw}}\n"
        );
        let Some((ip, port, key)) = tunnel else {
            return format!("{head}status: {{egressIpPrefix: {prefix}}}\n---\n");
        };
        let public = WgSecret([key; 32]).public_key();
        format!(
            "{head}status: {{egressIpPrefix: {prefix}, gatewayServerProfile: {{ip: {ip}, port: {port}, \
             publicKey: {public}, privateKeySecretRef: {{name: sgw-{name}, namespace: kube-egress-gateway-system}}}}}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: sgw-{name}, namespace: kube-egress-gateway-system}}\n\
             data: {{PrivateKey: {}}}\n---\n",
            b64(b64(&[key; 32]).as_bytes())
        )
    }

    fn node(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{{GATEWAY_MODE_LABEL}: 'true', \
             {}: gw}}}}\n---\n",
            POOL_LABELS[0]
        )
    }

    /// `config`'s GatewayVMConfiguration: (node, secondary IP) profiles.
    fn vm(config: &str, profiles: &[(&str, &str)]) -> String {
        let p: Vec<String> = profiles
            .iter()
            .map(|(n, ip)| format!("{{nodeName: {n}, primaryIP: 10.9.9.9, secondaryIP: {ip}}}"))
            .collect();
        format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: GatewayVMConfiguration\n\
             metadata: {{name: {config}, namespace: apps}}\nspec: {{gatewayNodepoolName: gw}}\n\
             status: {{gatewayVMProfiles: [{}]}}\n---\n",
            p.join(", ")
        )
    }

    fn endpoint(name: &str, config: &str, ip: &str, key: u8) -> String {
        format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: PodEndpoint\n\
             metadata: {{name: {name}, namespace: apps}}\n\
             spec: {{staticGatewayConfiguration: {config}, podIpAddress: {ip}/32, podPublicKey: {}}}\n---\n",
            pod_key(key)
        )
    }

    fn pod(name: &str, config: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps, \
             annotations: {{{POD_ANNOTATION}: {config}}}}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
        )
    }

    /// Reconciles the manifests; every node's plan must pass validation.
    fn run(docs: &[String]) -> Reconciled {
        let st = ClusterState::parse(&docs.concat(), "inline").unwrap();
        let r = reconcile(&st);
        for (node, plan) in &r.plans {
            plan.validate().unwrap_or_else(|e| panic!("{node}'s plan would be refused: {e}\n{:#?}", r.problems));
        }
        let (plan, _) = standalone_plan(&st, 1);
        plan.validate().unwrap_or_else(|e| panic!("the standalone plan would be refused: {e}"));
        r
    }

    fn problems(r: &Reconciled) -> Vec<String> {
        r.problems.iter().map(|p| p.to_string()).collect()
    }

    /// (pod IP, config) of `node`'s bindings.
    fn bound(r: &Reconciled, node: &str) -> Vec<(String, String)> {
        r.plans[node].bindings.iter().map(|b| (b.pod_ip.to_string(), b.config.clone())).collect()
    }

    /// A second tenant whose pod must stay served whatever the first does.
    fn bystander() -> Vec<String> {
        vec![sgc("other", 9, "198.19.109.0/30", None), pod("calm", "other", "198.18.9.9")]
    }

    #[test]
    fn two_pod_endpoints_with_one_key_in_a_config_keep_the_first_by_name() {
        let mut docs = vec![node("gw-0"), sgc("blue", 1, "198.19.100.0/30", Some(("198.18.50.100", 6000, 5)))];
        docs.push(endpoint("b-second", "blue", "198.18.0.3", 7));
        docs.push(endpoint("a-first", "blue", "198.18.0.2", 7));
        docs.push(endpoint("c-own-key", "blue", "198.18.0.4", 8));
        docs.extend(bystander());
        let r = run(&docs);
        assert_eq!(
            bound(&r, "gw-0"),
            [("198.18.0.2", "apps/blue"), ("198.18.0.4", "apps/blue"), ("198.18.9.9", "apps/other")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(
            problems(&r),
            [format!(
                "PodEndpoint apps/b-second: spec.podPublicKey {} is also PodEndpoint apps/a-first's in apps/blue; not bound",
                pod_key(7)
            )]
        );
    }

    #[test]
    fn a_pod_endpoint_or_pod_on_an_egress_address_is_left_out() {
        let mut docs = vec![node("gw-0"), sgc("blue", 1, "198.19.100.0/30", Some(("198.18.50.100", 6000, 5)))];
        docs.push(vm("blue", &[("gw-0", "198.18.50.11")]));
        // A node's secondary IP, and an address of another config's prefix.
        docs.push(endpoint("on-secondary", "blue", "198.18.50.11", 7));
        docs.push(endpoint("in-prefix", "blue", "198.19.109.1", 8));
        docs.push(endpoint("fine", "blue", "198.18.0.2", 9));
        docs.push(pod("plain-on-secondary", "other", "198.18.50.11"));
        docs.extend(bystander());
        let r = run(&docs);
        assert_eq!(
            bound(&r, "gw-0"),
            [("198.18.0.2", "apps/blue"), ("198.18.9.9", "apps/other")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(
            problems(&r),
            [
                "Pod apps/plain-on-secondary: pod IP 198.18.50.11 is an egress address of apps/blue; not bound",
                "PodEndpoint apps/in-prefix: pod IP 198.19.109.1 is inside egress prefix 198.19.109.0/30 of apps/other; not bound",
                "PodEndpoint apps/on-secondary: pod IP 198.18.50.11 is an egress address of apps/blue; not bound",
            ]
        );
    }

    #[test]
    fn two_vm_configs_giving_one_secondary_ip_leave_it_to_the_older_config() {
        let mut docs = vec![node("gw-0"), node("gw-1")];
        docs.push(sgc("new", 2, "198.19.101.0/30", None));
        docs.push(sgc("old", 1, "198.19.100.0/30", None));
        docs.push(vm("new", &[("gw-0", "198.18.50.11"), ("gw-1", "198.18.50.21")]));
        docs.push(vm("old", &[("gw-0", "198.18.50.11"), ("gw-1", "198.18.50.12")]));
        docs.extend(bystander());
        let r = run(&docs);
        let s = shares(&r);
        assert_eq!(s["apps/old"]["gw-0"], [ip("198.18.50.11")].into());
        assert!(!s["apps/new"].contains_key("gw-0"), "{s:?}");
        assert_eq!(s["apps/new"]["gw-1"], [ip("198.18.50.21")].into(), "the rest of the newer one is served");
        assert_eq!(
            problems(&r),
            [
                "GatewayVMConfiguration apps/new: node gw-0: 198.18.50.11 is already an egress address of apps/old; left out",
                "StaticGatewayConfiguration apps/new: its GatewayVMConfiguration lists no secondaryIP for gw-0",
            ]
        );
        assert!(r.plans["gw-0"].bindings.iter().any(|b| b.config == "apps/other"));
    }

    /// The other clashes Plan::validate refuses, found by reading it: a
    /// tunnel endpoint two configs share (SharedEndpoint), a tunnel address
    /// that is another config's egress address (AddressIsEgress), a
    /// secondary IP given twice in one config, that is a tunnel address or
    /// inside a source CIDR (PoolOverlap, SourceHoldsEgress), and more
    /// source CIDRs across configs than a plan may bind (TooManySources).
    #[test]
    fn every_other_clash_plan_validation_refuses_is_left_out_and_reported() {
        let mut docs = vec![node("gw-0")];
        docs.push(sgc("blue", 1, "198.19.100.0/30", Some(("198.18.50.100", 6000, 5))));
        docs.push(sgc("same-endpoint", 2, "198.19.101.0/30", Some(("198.18.50.100", 6000, 6))));
        docs.push(sgc("tunnel-in-prefix", 3, "198.19.102.0/30", Some(("198.19.100.1", 6001, 6))));
        docs.push(sgc("prefix-holds-tunnel", 4, "198.18.50.100/30", None));
        docs.push(
            sgc("green", 5, "198.19.105.0/30", None).replace(
                "creationTimestamp",
                "annotations: {egret.dev/source-cidrs: '10.1.0.0/16'}, creationTimestamp",
            ),
        );
        docs.push(vm("green", &[("gw-0", "198.18.60.1"), ("gw-0", "198.18.60.1"), ("gw-0", "198.18.50.100")]));
        docs.push(sgc("red", 6, "198.19.106.0/30", None));
        docs.push(vm("red", &[("gw-0", "10.1.2.3"), ("gw-0", "198.18.60.2")]));
        let many: Vec<String> = (0..MAX_SOURCE_CIDRS).map(|i| format!("10.200.{}.{}/32", i / 256, i % 256)).collect();
        docs.push(sgc("too-many-sources", 7, "198.19.107.0/30", None).replace(
            "creationTimestamp",
            &format!("annotations: {{egret.dev/source-cidrs: '{}'}}, creationTimestamp", many.join(",")),
        ));
        docs.extend(bystander());
        let r = run(&docs);
        let got = problems(&r);
        let want = [
            "GatewayVMConfiguration apps/green: node gw-0: 198.18.50.100 is the tunnel address of apps/blue; left out",
            "GatewayVMConfiguration apps/green: node gw-0: 198.18.60.1 is given twice; left out",
            "GatewayVMConfiguration apps/red: node gw-0: 10.1.2.3 is inside source CIDR 10.1.0.0/16 of apps/green; left out",
            "StaticGatewayConfiguration apps/prefix-holds-tunnel: status.egressIpPrefix 198.18.50.100/30 holds the tunnel address 198.18.50.100 of apps/blue",
            "StaticGatewayConfiguration apps/same-endpoint: status.gatewayServerProfile 198.18.50.100:6000 is also apps/blue's (created earlier), which keeps it",
            "StaticGatewayConfiguration apps/too-many-sources: egret.dev/source-cidrs: its 1024 CIDRs and the 1 of configs created earlier exceed 1024 per plan",
            "StaticGatewayConfiguration apps/tunnel-in-prefix: status.gatewayServerProfile.ip 198.19.100.1 is inside egress prefix 198.19.100.0/30 of apps/blue",
        ];
        assert_eq!(got, want);
        let s = shares(&r);
        assert_eq!(s["apps/green"]["gw-0"], [ip("198.18.60.1")].into());
        assert_eq!(s["apps/red"]["gw-0"], [ip("198.18.60.2")].into());
        let served: Vec<&str> = r.plans["gw-0"].configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(served, ["apps/blue", "apps/green", "apps/other", "apps/red"]);
    }
}
