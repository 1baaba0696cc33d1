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
        vec![Binding { pod_ip: ip("198.18.1.2"), config: "payments/pay-egress".into(), public_key: None }].into()
    );
    let web_node = r.plans.iter().find(|(n, p)| GW1.contains(&n.as_str()) && p.configs.len() == 2).unwrap().1;
    assert_eq!(
        web_node.bindings,
        vec![
            Binding { pod_ip: ip("198.18.0.4"), config: "apps/batch-egress".into(), public_key: None },
            Binding { pod_ip: ip("198.18.0.2"), config: "apps/web-egress".into(), public_key: None },
            Binding { pod_ip: ip("198.18.0.3"), config: "apps/web-egress".into(), public_key: None },
        ]
        .into(),
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
        let bound = p.bindings.iter().any(|b| b.pod_ip == ip("198.18.0.20") && &*b.config == "apps/web-egress");
        assert_eq!(bound, p.configs.iter().any(|c| c.name == "apps/web-egress"), "{node}");
    }
    let mut left = st.clone();
    left.pods.retain(|p| p.metadata.name != "pay-api-0");
    let after = reconcile(&left);
    assert!(after.plans[GW2[0]].bindings.is_empty());
    assert_eq!(shares(&before), shares(&after));
}

/// An IP claimed by several pods is the first's by name, in whatever
/// order the source lists the pods (an API server's order is its own).
#[test]
fn a_contended_pod_ip_goes_to_the_first_pod_by_name_whatever_the_order() {
    let mut st = ClusterState::read_path(&testdata("problems.yaml")).unwrap();
    let ok = st.pods.iter().find(|p| p.metadata.name == "ok").unwrap().clone();
    for name in ["a-first", "zz-last"] {
        let mut pod = ok.clone();
        pod.metadata.name = name.into();
        st.pods.push(pod);
    }
    let r = reconcile(&st);
    for order in 0..3 {
        let mut shuffled = st.clone();
        shuffled.pods.rotate_left(order * 2 + 1);
        shuffled.pods.reverse();
        assert_eq!(reconcile(&shuffled), r, "rotation {order}");
    }
    let told: Vec<&str> = r
        .problems
        .iter()
        .filter(|p| p.message.contains("already bound by Pod apps/a-first"))
        .map(|p| p.object.as_str())
        .collect();
    assert_eq!(told, ["Pod apps/ok", "Pod apps/zz-last", "Pod apps/zz-sameip"]);
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
    assert_eq!(
        *plan.bindings,
        vec![Binding { pod_ip: ip("198.18.0.2"), config: "apps/good".into(), public_key: None }]
    );
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
    assert_eq!(
        *p.bindings,
        vec![Binding { pod_ip: ip("198.18.3.3"), config: "default/sgw1".into(), public_key: None }]
    );
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
fn a_broken_policy_that_names_no_config_leaves_its_namespace_unserved() {
    let config = |name: &str, ns: &str, prefix: &str| {
        format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\n\
             metadata: {{name: {name}, namespace: {ns}}}\nspec: {{gatewayNodepoolName: gwpool}}\n\
             status: {{egressIpPrefix: {prefix}}}\n"
        )
    };
    let text = [config("a", "apps", "198.19.100.0/30"), config("b", "other", "198.19.101.0/30")].join("---\n");
    let mut st = ClusterState::parse(&text, "t").unwrap();
    st.broken_policies.push(BrokenPolicy {
        metadata: ObjectMeta { name: "p".into(), namespace: Some("apps".into()), ..Default::default() },
        gateway_configuration: None,
        error: "recursion limit exceeded".into(),
    });
    let (plan, problems) = standalone_plan(&st, 1);
    let served: Vec<&str> = plan.configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(served, ["other/b"], "the policy may be any config's of apps: none of them is served");
    assert!(problems[0].to_string().contains("no config of namespace apps is served"), "{}", problems[0]);
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
            let s = split_prefix(&prefix.to_string().parse().unwrap(), &nodes);
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
        let s = split_prefix(&prefix.to_string().parse().unwrap(), &nodes);
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

    /// Private IP mode (`provisionPublicIps: false`): the controller writes
    /// the pool's secondary IPs, comma-joined, as `egressIpPrefix`.
    fn in_private_ip_mode(mut st: ClusterState) -> ClusterState {
        let sgc = st.configs.iter_mut().find(|c| c.metadata.key() == "apps/web-egress").unwrap();
        sgc.status.as_mut().unwrap().egress_ip_prefix = Some("10.224.0.110,10.224.0.111".into());
        st
    }

    #[test]
    fn in_private_ip_mode_each_node_egresses_from_its_secondary_ip() {
        let r = reconcile(&in_private_ip_mode(with_vm_config()));
        let s = &shares(&r)["apps/web-egress"];
        assert_eq!(s[GW1[0]], [ip("10.224.0.110")].into());
        assert_eq!(s[GW1[1]], [ip("10.224.0.111")].into());
        let status = r.configs.iter().find(|c| c.name == "apps/web-egress").unwrap();
        assert!(status.served);
        assert_eq!(status.prefix.as_ref().map(|p| p.to_string()).as_deref(), Some("10.224.0.110,10.224.0.111"));
        for (node, p) in &r.plans {
            p.validate().unwrap_or_else(|e| panic!("{node}: {e}"));
        }
    }

    #[test]
    fn a_private_ip_list_without_a_vm_config_is_split_across_the_pool() {
        let r = reconcile(&in_private_ip_mode(aks()));
        let s = &shares(&r)["apps/web-egress"];
        let all: BTreeSet<Ipv4Addr> = s.values().flatten().copied().collect();
        assert_eq!(all, [ip("10.224.0.110"), ip("10.224.0.111")].into());
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
        r.plans[node].bindings.iter().map(|b| (b.pod_ip.to_string(), b.config.to_string())).collect()
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
        assert!(r.plans["gw-0"].bindings.iter().any(|b| &*b.config == "apps/other"));
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

mod network_policies {
    //! Kubernetes NetworkPolicies (the documentation's egress examples,
    //! copied as written) compiled into each plan's `network_policies`.
    use super::*;
    use base64::Engine;
    use egret_plan::{IpBlock, NetworkPolicy, NetworkPolicyRule, NetworkPort, NetworkProtocol, WgSecret};

    const TCP: NetworkProtocol = NetworkProtocol::Tcp;
    const UDP: NetworkProtocol = NetworkProtocol::Udp;

    /// gw-0 (pool gw) serves default/blue: pods web (role: frontend) and db
    /// (role: db); gw-1 (pool gw2) serves shop/red: pod cart (role: db).
    /// default/idle (role: db) is not annotated, so bound nowhere.
    const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: gw-0, labels: {kubeegressgateway.azure.com/mode: "true", kubernetes.azure.com/agentpool: gw}}
---
apiVersion: v1
kind: Node
metadata: {name: gw-1, labels: {kubeegressgateway.azure.com/mode: "true", kubernetes.azure.com/agentpool: gw2}}
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: blue, namespace: default}
spec: {gatewayNodepoolName: gw}
status: {egressIpPrefix: 198.19.100.0/30}
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: red, namespace: shop}
spec: {gatewayNodepoolName: gw2}
status: {egressIpPrefix: 198.19.101.0/30}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {role: frontend},
  annotations: {kubernetes.azure.com/static-gateway-configuration: blue}}
status: {phase: Running, podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {role: db},
  annotations: {kubernetes.azure.com/static-gateway-configuration: blue}}
status: {phase: Running, podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: idle, namespace: default, labels: {role: db}}
status: {phase: Running, podIP: 198.18.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {role: db},
  annotations: {kubernetes.azure.com/static-gateway-configuration: red}}
status: {phase: Running, podIP: 198.18.1.2}
"#;

    /// The docs' "Default deny all egress traffic".
    const DEFAULT_DENY_EGRESS: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
spec:
  podSelector: {}
  policyTypes:
  - Egress
"#;

    /// The docs' "test-network-policy", its `ipBlock` with an `except`
    /// given to the egress rule too.
    const TEST_NETWORK_POLICY: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
  - to:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
"#;

    /// The docs' "Targeting a range of ports".
    const MULTI_PORT_EGRESS: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
"#;

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock { cidr: cidr.parse().unwrap(), except: except.iter().map(|e| e.parse().unwrap()).collect() }
    }

    fn port(protocol: NetworkProtocol, lo: u16, hi: u16) -> NetworkPort {
        NetworkPort { protocol, lo, hi }
    }

    fn policy(name: &str, pods: &[&str], egress: Vec<NetworkPolicyRule>) -> NetworkPolicy {
        NetworkPolicy { name: name.into(), pods: pods.iter().map(|p| ip(p)).collect(), egress }
    }

    /// Reconciles `text` (every node's plan and the standalone plan must
    /// validate): the reconcile, and the standalone plan's policies.
    fn run(text: &str) -> (Reconciled, Vec<NetworkPolicy>) {
        let st = ClusterState::parse(text, "inline").unwrap();
        let r = reconcile(&st);
        for (node, plan) in &r.plans {
            plan.validate().unwrap_or_else(|e| panic!("{node}'s plan would be refused: {e}"));
        }
        let (plan, _) = standalone_plan(&st, 1);
        plan.validate().unwrap_or_else(|e| panic!("the standalone plan would be refused: {e}"));
        (r, plan.network_policies)
    }

    fn policies<'a>(r: &'a Reconciled, node: &str) -> &'a [NetworkPolicy] {
        &r.plans[node].network_policies
    }

    fn problems(r: &Reconciled) -> Vec<String> {
        r.problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn without_network_policies_plans_carry_none() {
        let (r, standalone) = run(CLUSTER);
        assert_eq!(problems(&r), Vec::<String>::new());
        assert!(r.plans.values().all(|p| p.network_policies.is_empty()) && standalone.is_empty());
    }

    #[test]
    fn default_deny_egress_selects_every_pod_served_of_its_namespace_with_no_rules() {
        let (r, standalone) = run(&format!("{CLUSTER}{DEFAULT_DENY_EGRESS}"));
        assert_eq!(problems(&r), Vec::<String>::new());
        let want = vec![policy("default/default-deny-egress", &["198.18.0.2", "198.18.0.3"], vec![])];
        assert_eq!(policies(&r, "gw-0"), want, "the unannotated pod is not served, so not listed");
        assert_eq!(policies(&r, "gw-1"), [], "a policy in another namespace selects nothing there");
        assert_eq!(standalone, want);
    }

    #[test]
    fn docs_examples_compile_to_their_rules_and_two_policies_on_one_pod_both_apply() {
        let text = format!("{CLUSTER}{DEFAULT_DENY_EGRESS}{TEST_NETWORK_POLICY}{MULTI_PORT_EGRESS}");
        let (r, standalone) = run(&text);
        assert_eq!(problems(&r), Vec::<String>::new());
        let want = vec![
            policy("default/default-deny-egress", &["198.18.0.2", "198.18.0.3"], vec![]),
            policy(
                "default/multi-port-egress",
                &["198.18.0.3"],
                vec![NetworkPolicyRule {
                    to: Some(vec![block("10.0.0.0/24", &[])]),
                    ports: Some(vec![port(TCP, 32000, 32768)]),
                }],
            ),
            policy(
                "default/test-network-policy",
                &["198.18.0.3"],
                vec![
                    NetworkPolicyRule {
                        to: Some(vec![block("10.0.0.0/24", &[])]),
                        ports: Some(vec![port(TCP, 5978, 5978)]),
                    },
                    NetworkPolicyRule { to: Some(vec![block("172.17.0.0/16", &["172.17.1.0/24"])]), ports: None },
                ],
            ),
        ];
        assert_eq!(policies(&r, "gw-0"), want);
        assert_eq!(standalone, want);
        // What the gateway makes of them for db: the union of its policies.
        let allows = |proto: u8, dst: &str, port: u16| {
            want.iter()
                .filter(|p| p.pods.contains(&ip("198.18.0.3")))
                .any(|p| p.egress.iter().any(|rule| rule.allows(proto, u32::from(ip(dst)), port)))
        };
        assert!(allows(6, "10.0.0.7", 5978) && allows(6, "10.0.0.7", 32768) && allows(17, "172.17.9.9", 53));
        assert!(!allows(6, "10.0.0.7", 443) && !allows(6, "172.17.1.9", 443) && !allows(6, "192.0.2.1", 5978));
        // The shop namespace's pod, on gw-1, is selected by none of them.
        assert_eq!(policies(&r, "gw-1"), []);
    }

    #[test]
    fn a_policy_in_another_namespace_selects_nothing_here() {
        let shop = DEFAULT_DENY_EGRESS.replace("name: default-deny-egress", "{name: lock, namespace: shop}");
        let shop = shop.replace("metadata:\n  {name", "metadata: {name");
        let nowhere = MULTI_PORT_EGRESS.replace("namespace: default", "namespace: empty");
        let (r, standalone) = run(&format!("{CLUSTER}{shop}{nowhere}"));
        assert_eq!(problems(&r), Vec::<String>::new());
        assert_eq!(policies(&r, "gw-0"), [], "default's pods are not shop's");
        assert_eq!(policies(&r, "gw-1"), [policy("shop/lock", &["198.18.1.2"], vec![])]);
        assert_eq!(standalone, [policy("shop/lock", &["198.18.1.2"], vec![])], "a namespace with no pod served");
    }

    #[test]
    fn policy_types_default_to_egress_only_when_the_spec_has_egress_rules() {
        let np = |name: &str, spec: &str| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
            )
        };
        let text = [
            CLUSTER.to_string(),
            np("ingress-only", "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}"),
            np("empty-egress-no-types", "{podSelector: {}, egress: []}"),
            np("explicit-ingress", "{podSelector: {}, policyTypes: [Ingress], egress: [{ports: [{port: 53}]}]}"),
            np("defaulted", "{podSelector: {matchLabels: {role: db}}, egress: [{ports: [{port: 53, protocol: UDP}]}]}"),
            np("egress-empty-types", "{podSelector: {}, policyTypes: [], egress: [{}]}"),
            np("deny-by-type", "{podSelector: {matchLabels: {role: frontend}}, policyTypes: [Egress], egress: []}"),
        ]
        .concat();
        let (r, _) = run(&text);
        assert_eq!(problems(&r), Vec::<String>::new());
        let everything = NetworkPolicyRule { to: None, ports: None };
        assert_eq!(
            policies(&r, "gw-0"),
            [
                policy(
                    "default/defaulted",
                    &["198.18.0.3"],
                    vec![NetworkPolicyRule { to: None, ports: Some(vec![port(UDP, 53, 53)]) }]
                ),
                policy("default/deny-by-type", &["198.18.0.2"], vec![]),
                policy("default/egress-empty-types", &["198.18.0.2", "198.18.0.3"], vec![everything]),
            ],
            "no policyTypes: Egress only with egress rules (egress: [] is Ingress only, as the API server defaults)"
        );
    }

    #[test]
    fn named_ports_and_sctp_add_nothing_and_selector_peers_reach_nothing_outside() {
        let spec = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: mixed, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: role, operator: In, values: [db, cache]}]}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}, {protocol: SCTP, port: 9999}]
  - ports: [{protocol: UDP, port: dns}, {protocol: UDP, port: 53}, {protocol: UDP}, {port: 443}]
  - to: [{podSelector: {matchLabels: {app: dns}}}, {namespaceSelector: {}}]
  - to:
    - namespaceSelector: {matchLabels: {team: x}}
    - ipBlock: {cidr: 192.0.2.0/24}
    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}
  - to: [{ipBlock: {cidr: "2001:db8::/32"}}]
    ports: []
"#;
        let (r, _) = run(&format!("{CLUSTER}{spec}"));
        assert_eq!(problems(&r), Vec::<String>::new());
        let want = policy(
            "default/mixed",
            &["198.18.0.3"],
            vec![
                NetworkPolicyRule { to: None, ports: Some(vec![]) },
                NetworkPolicyRule {
                    to: None,
                    ports: Some(vec![port(UDP, 53, 53), port(UDP, 1, 65535), port(TCP, 443, 443)]),
                },
                NetworkPolicyRule { to: Some(vec![]), ports: None },
                NetworkPolicyRule { to: Some(vec![block("192.0.2.0/24", &[])]), ports: None },
                NetworkPolicyRule { to: Some(vec![]), ports: None },
            ],
        );
        assert_eq!(policies(&r, "gw-0"), [want]);
    }

    #[test]
    fn an_unreadable_policy_fails_closed_for_the_pods_it_selects() {
        let np = |name: &str, spec: &str| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
            )
        };
        let db = "podSelector: {matchLabels: {role: db}}";
        let text = [
            CLUSTER.to_string(),
            np("bad-cidr", &format!("{{{db}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/33}}}}]}}]}}")),
            np(
                "bad-except",
                &format!(
                    "{{{db}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/24, except: [10.0.1.0/28]}}}}]}}]}}"
                ),
            ),
            np("bad-range", &format!("{{{db}, egress: [{{ports: [{{port: 9000, endPort: 8000}}]}}]}}")),
            np("bad-type", &format!("{{{db}, egress: nonsense}}")),
            np("good", &format!("{{{db}, egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/24}}}}]}}]}}")),
        ]
        .concat();
        let (r, standalone) = run(&text);
        assert_eq!(
            problems(&r),
            [
                "NetworkPolicy default/bad-cidr: spec.egress[0].to[0].ipBlock.cidr: '10.0.0.0/33' is not a CIDR; \
                 the pods it selects may send nothing through the gateway until it is fixed",
                "NetworkPolicy default/bad-except: spec.egress[0].to[0].ipBlock.except[0]: 10.0.1.0/28 is not \
                 strictly inside cidr 10.0.0.0/24; the pods it selects may send nothing through the gateway until it is fixed",
                "NetworkPolicy default/bad-range: spec.egress[0].ports[0].endPort: 8000 is below port 9000; \
                 the pods it selects may send nothing through the gateway until it is fixed",
                "NetworkPolicy default/bad-type: spec.egress: invalid type: string \"nonsense\", expected a sequence; \
                 the pods it selects may send nothing through the gateway until it is fixed",
            ]
        );
        let deny = |name: &str| policy(name, &["198.18.0.3"], vec![]);
        let good = policy(
            "default/good",
            &["198.18.0.3"],
            vec![NetworkPolicyRule { to: Some(vec![block("10.0.0.0/24", &[])]), ports: None }],
        );
        let want = [
            deny("default/bad-cidr"),
            deny("default/bad-except"),
            deny("default/bad-range"),
            deny("default/bad-type"),
            good,
        ];
        assert_eq!(policies(&r, "gw-0"), want, "each unreadable policy denies its pods; the plan is served");
        assert_eq!(standalone, want);
        assert_eq!(r.plans["gw-0"].configs.len(), 1, "the config is served");
    }

    #[test]
    fn a_policy_whose_pod_selector_is_unreadable_denies_its_whole_namespace() {
        let bad = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-selector, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: role, operator: In}]}
  policyTypes: [Egress]
  egress: [{}]
"#;
        let (r, _) = run(&format!("{CLUSTER}{bad}"));
        assert_eq!(
            problems(&r),
            ["NetworkPolicy default/bad-selector: spec.podSelector: operator In on 'role' needs values; every pod of \
                 namespace default may send nothing through the gateway until it is fixed"]
        );
        assert_eq!(policies(&r, "gw-0"), [policy("default/bad-selector", &["198.18.0.2", "198.18.0.3"], vec![])]);
        assert_eq!(policies(&r, "gw-1"), [], "other namespaces are untouched");
        // Wrongly typed too (a string where a map belongs).
        let typed = bad.replace("{matchExpressions: [{key: role, operator: In}]}", "{matchLabels: nope}");
        let (r, _) = run(&format!("{CLUSTER}{typed}"));
        assert_eq!(policies(&r, "gw-0"), [policy("default/bad-selector", &["198.18.0.2", "198.18.0.3"], vec![])]);
        assert!(problems(&r)[0].starts_with("NetworkPolicy default/bad-selector: spec.podSelector.matchLabels: "));
    }

    #[test]
    fn tunnelled_pods_are_selected_by_their_pods_labels() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let public = WgSecret([5; 32]).public_key();
        let endpoint = |name: &str, ip: &str, key: u8, labels: &str| {
            format!(
                "---\napiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: PodEndpoint\n\
                 metadata: {{name: {name}, namespace: default, labels: {labels}}}\n\
                 spec: {{staticGatewayConfiguration: tun, podIpAddress: {ip}/32, podPublicKey: {}}}\n",
                WgSecret([key; 32]).public_key()
            )
        };
        let text = format!(
            "{CLUSTER}---\napiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\n\
             metadata: {{name: tun, namespace: default}}\nspec: {{gatewayNodepoolName: gw}}\n\
             status: {{egressIpPrefix: 198.19.102.0/30, gatewayServerProfile: {{ip: 198.18.50.100, port: 6000, \
             publicKey: {public}, privateKeySecretRef: {{name: sgw-tun, namespace: kube-egress-gateway-system}}}}}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: sgw-tun, namespace: kube-egress-gateway-system}}\n\
             data: {{PrivateKey: {}}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: worker, namespace: default, labels: {{role: db}}, \
             annotations: {{{POD_ANNOTATION}: tun}}}}\nstatus: {{phase: Running, podIP: 198.18.0.4}}\n\
             {}{}{MULTI_PORT_EGRESS}",
            b64(b64(&[5; 32]).as_bytes()),
            endpoint("worker", "198.18.0.4", 7, "{}"),
            endpoint("orphan", "198.18.0.5", 8, "{role: db}"),
        );
        let (r, standalone) = run(&text);
        assert_eq!(problems(&r), Vec::<String>::new());
        let tunnelled: Vec<_> = r.plans["gw-0"].bindings.iter().filter(|b| b.public_key.is_some()).collect();
        assert_eq!(tunnelled.len(), 2, "both PodEndpoints are bound");
        let got: Vec<&[Ipv4Addr]> = policies(&r, "gw-0").iter().map(|p| p.pods.as_slice()).collect();
        // worker by its Pod's labels (its PodEndpoint has none), orphan (no
        // Pod) by its PodEndpoint's own.
        assert_eq!(got, [&[ip("198.18.0.3"), ip("198.18.0.4"), ip("198.18.0.5")][..]]);
        assert_eq!(standalone[0].pods, got[0]);
    }

    #[test]
    fn a_change_to_a_policy_or_a_pods_labels_changes_the_plan() {
        let st = ClusterState::parse(&format!("{CLUSTER}{MULTI_PORT_EGRESS}"), "t").unwrap();
        let before = reconcile(&st).plans["gw-0"].clone();
        let mut relabelled = st.clone();
        let web = relabelled.pods.iter_mut().find(|p| p.metadata.name == "web").unwrap();
        web.metadata.labels.insert("role".into(), "db".into());
        let after = reconcile(&relabelled).plans["gw-0"].clone();
        assert_eq!(after.network_policies[0].pods, [ip("198.18.0.2"), ip("198.18.0.3")]);
        let mut edited = st.clone();
        edited.network_policies[0].spec["egress"][0]["ports"][0]["endPort"] = serde_json::json!(32100);
        let after = reconcile(&edited).plans["gw-0"].clone();
        assert_ne!(after, before);
        assert_eq!(after.network_policies[0].egress[0].ports, Some(vec![port(TCP, 32000, 32100)]));
        let mut gone = st.clone();
        gone.network_policies.clear();
        assert!(reconcile(&gone).plans["gw-0"].network_policies.is_empty());
    }

    #[test]
    fn json_from_the_api_server_reads_the_same_and_duplicates_are_reported() {
        let json = r#"{"kind": "NetworkPolicyList", "apiVersion": "networking.k8s.io/v1", "items": [
            {"metadata": {"name": "p", "namespace": "default", "uid": "u1"},
             "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                      "egress": [{"ports": [{"protocol": "TCP", "port": 443}]}]}},
            {"metadata": {"name": "p", "namespace": "default", "uid": "u2"},
             "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}]}"#;
        let st = ClusterState::parse(&format!("{CLUSTER}---\n{json}\n"), "t").unwrap();
        assert_eq!(st.network_policies.len(), 2);
        let r = reconcile(&st);
        assert_eq!(problems(&r), ["NetworkPolicy default/p: defined more than once; the first definition is used"]);
        assert_eq!(
            policies(&r, "gw-0"),
            [policy(
                "default/p",
                &["198.18.0.2", "198.18.0.3"],
                vec![NetworkPolicyRule { to: None, ports: Some(vec![port(TCP, 443, 443)]) }]
            )]
        );
    }

    /// 10,000 NetworkPolicies over 100 namespaces and 100,000 pods: run
    /// with `cargo test --release -p egret-cluster -- --ignored
    /// ten_thousand_network_policies` (prints the time; not asserted).
    #[test]
    #[ignore]
    fn ten_thousand_network_policies_over_a_hundred_thousand_pods() {
        let mut st = ClusterState::default();
        for n in 0..2 {
            st.nodes.push(gateway_node(&format!("gw-{n}"), "gw"));
        }
        for ns in 0..100u32 {
            let namespace = format!("ns-{ns}");
            let mut sgc = StaticGatewayConfiguration::default();
            sgc.metadata.name = "egress".into();
            sgc.metadata.namespace = Some(namespace.clone());
            sgc.spec.gateway_nodepool_name = Some("gw".into());
            sgc.status =
                Some(SgcStatus { egress_ip_prefix: Some(format!("198.19.{ns}.0/30")), gateway_server_profile: None });
            st.configs.push(sgc);
            for i in 0..1000u32 {
                let mut pod = Pod::default();
                pod.metadata.name = format!("pod-{i}");
                pod.metadata.namespace = Some(namespace.clone());
                pod.metadata.annotations.insert(POD_ANNOTATION.into(), "egress".into());
                pod.metadata.labels.insert("app".into(), format!("app-{}", i % 100));
                pod.metadata.labels.insert("tier".into(), format!("tier-{}", i % 3));
                pod.status.phase = Some("Running".into());
                pod.status.pod_ip = Some(Ipv4Addr::from(0x0a00_0000 + ns * 1000 + i).to_string());
                st.pods.push(pod);
            }
            for p in 0..100u32 {
                let selector = match p % 10 {
                    0 => serde_json::json!({}),
                    1 => {
                        serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["tier-0"]}]})
                    }
                    _ => serde_json::json!({"matchLabels": {"app": format!("app-{p}")}}),
                };
                st.network_policies.push(NetworkPolicyObject {
                    metadata: ObjectMeta {
                        name: format!("np-{p}"),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    spec: serde_json::json!({
                        "podSelector": selector,
                        "policyTypes": ["Egress"],
                        "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}],
                                    "ports": [{"protocol": "TCP", "port": 443}, {"port": 32000, "endPort": 32768}]}]
                    }),
                });
            }
        }
        let t0 = std::time::Instant::now();
        let r = reconcile(&st);
        let took = t0.elapsed();
        let plan = &r.plans["gw-0"];
        assert_eq!((plan.bindings.len(), plan.network_policies.len()), (100_000, 10_000), "{:?}", r.problems.first());
        plan.validate().unwrap();
        let without_policies = ClusterState { network_policies: vec![], ..st.clone() };
        let t1 = std::time::Instant::now();
        let _ = reconcile(&without_policies);
        let without = t1.elapsed();
        eprintln!("reconcile: {took:?} with 10,000 NetworkPolicies, {without:?} without (100,000 pods, 2 nodes)");
    }
}
