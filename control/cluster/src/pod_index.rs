//! Pod changes applied to a reconcile's result, without reconciling the
//! whole cluster again: a pod coming, going or changing costs work in
//! proportion to its own bindings, not to every pod of the cluster.
//!
//! It holds only where a pod's bindings depend on nothing but the pod and
//! the configs: each IP it claims is claimed by no other pod (who wins a
//! contended IP depends on names), is no PodEndpoint's (a tunnelled pod is
//! refused an IP a plain one holds), and no NetworkPolicy or EgressPolicy
//! pod selector looks at pods' labels. Anything else says [`NeedsFull`],
//! and the caller reconciles the whole cluster, which also rebuilds the
//! index. `reconcile_tests` proves that both ways give the same result.

use super::egress_ips::EgressIps;
use super::objects::{Pod, PodEndpoint};
use super::reconcile::{pod_claim, ConfigNames, EgressIndex, Reconciled};
use super::{ClusterState, Problem};
use egret_plan::{Binding, Bindings, PlanDelta};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Why pod changes cannot be applied alone; reconcile the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsFull(pub &'static str);

/// What a full reconcile leaves behind for pod changes.
#[derive(Debug, Clone)]
pub struct PodIndex {
    served: BTreeMap<String, EgressIps>,
    unserved: BTreeMap<String, String>,
    given: BTreeMap<Ipv4Addr, String>,
    /// Served configs without a tunnel (their pods bind in plain), with the
    /// name their bindings share.
    plain: HashMap<String, Arc<str>>,
    /// Pod `namespace/name` → the config and IPs it claims.
    claims: HashMap<String, (String, Vec<Ipv4Addr>)>,
    /// Pod IP → how many pods claim it.
    claimants: HashMap<Ipv4Addr, u32>,
    /// Every PodEndpoint's pod IP, as written.
    endpoint_ips: HashSet<Ipv4Addr>,
    /// Config → the nodes whose plans serve it.
    nodes_of: HashMap<String, Vec<String>>,
    /// The result, kept up to date.
    last: Reconciled,
}

/// The largest batch of pod changes applied alone (a relist is reconciled
/// whole).
const MAX_CHANGES: usize = 4096;

impl PodIndex {
    /// The index of `r`, the reconcile of `st`; `None` where pods' labels
    /// or names decide more than their own bindings.
    pub(crate) fn build(
        st: &ClusterState,
        tunnelled: BTreeSet<String>,
        served: BTreeMap<String, EgressIps>,
        unserved: BTreeMap<String, String>,
        given: BTreeMap<Ipv4Addr, String>,
        r: &Reconciled,
    ) -> Result<PodIndex, NeedsFull> {
        let selects_pods = st.policies.iter().any(|p| p.spec.rules.iter().any(|r| r.pod_selector.is_some()));
        let why = match () {
            _ if !st.keys_unique => "objects may be listed twice (manifests)",
            _ if !st.network_policies.is_empty() => "NetworkPolicies select pods by label",
            _ if selects_pods => "an EgressPolicy selects pods by label",
            _ if r.nodes.is_empty() => "no gateway nodes (every config whole to anyone)",
            _ => "",
        };
        if !why.is_empty() {
            return Err(NeedsFull(why));
        }
        let plain = served.keys().filter(|c| !tunnelled.contains(*c)).map(|c| (c.clone(), c.as_str().into())).collect();
        let mut ix = PodIndex {
            plain,
            served,
            unserved,
            given,
            claims: HashMap::with_capacity(st.pods.len()),
            claimants: HashMap::with_capacity(st.pods.len()),
            endpoint_ips: st.pod_endpoints.iter().filter_map(PodEndpoint::pod_ipv4).collect(),
            nodes_of: HashMap::new(),
            last: r.clone(),
        };
        for (node, plan) in &r.plans {
            for c in &plan.configs {
                ix.nodes_of.entry(c.name.clone()).or_default().push(node.clone());
            }
        }
        let egress = EgressIndex::new(&ix.served, &ix.given);
        let mut names = ConfigNames::new();
        let mut ignored = Vec::new();
        for pod in &st.pods {
            let Some((config, ips)) = pod_claim(pod, &mut names, &ix.served, &ix.unserved, &egress, &mut ignored)
            else {
                continue;
            };
            // Sorted: `Pod::ipv4s` sorts them, and a claim keeps the order.
            for ip in &ips {
                *ix.claimants.entry(*ip).or_default() += 1;
            }
            ix.claims.insert(pod.metadata.key(), (config.to_string(), ips));
        }
        Ok(ix)
    }

    /// The reconcile's result after `changes`: each pod by `namespace/name`,
    /// with what it is now (`None`: gone). The result holds only the node
    /// plans that changed; each is also returned as the delta from its
    /// previous one (versions 0: the caller numbers them). On `Err` the
    /// index is stale: the caller reconciles whole and takes the new index.
    pub fn apply(
        &mut self,
        changes: &[(String, Option<&Pod>)],
    ) -> Result<(Reconciled, BTreeMap<String, PlanDelta>), NeedsFull> {
        if changes.len() > MAX_CHANGES {
            return Err(NeedsFull("too many pod changes at once"));
        }
        let egress = EgressIndex::new(&self.served, &self.given);
        let mut names = ConfigNames::new();
        // Node → pod IP → its binding now (None: unbound).
        let mut edits: BTreeMap<&str, BTreeMap<Ipv4Addr, Option<Binding>>> = BTreeMap::new();
        // Config status (by position) → pod IP → bound now.
        let mut statuses: BTreeMap<usize, BTreeMap<Ipv4Addr, bool>> = BTreeMap::new();
        // The changed pods' problems go, in one pass; their problems now
        // come back below.
        let objects: HashSet<String> = changes.iter().map(|(key, _)| Problem::object_name("Pod", key)).collect();
        let before = self.last.problems.len();
        self.last.problems.retain(|p| !objects.contains(&p.object));
        let mut touched_problems = before != self.last.problems.len();
        for (key, pod) in changes {
            let mut problems = Vec::new();
            let new = pod.and_then(|p| pod_claim(p, &mut names, &self.served, &self.unserved, &egress, &mut problems));
            touched_problems |= !problems.is_empty();
            self.last.problems.extend(problems);
            let old = self.claims.get(key);
            let (old_config, old_ips) = old.map_or((None, &[][..]), |(c, ips)| (Some(c.as_str()), &ips[..]));
            let (new_config, new_ips) = new.as_ref().map_or((None, &[][..]), |(c, ips)| (Some(*c), &ips[..]));
            // Checked before anything else: a contended IP's problems
            // (name the winner) come only from a full reconcile.
            for ip in old_ips.iter().chain(new_ips) {
                let others = self.claimants.get(ip).copied().unwrap_or(0) - old_ips.contains(ip) as u32;
                if others > 0 {
                    return Err(NeedsFull("a pod IP another pod claims"));
                }
                if self.endpoint_ips.contains(ip) {
                    return Err(NeedsFull("a pod IP a PodEndpoint names"));
                }
            }
            if (old_config, old_ips) == (new_config, new_ips) {
                // A label or status change that binds nothing new: no
                // edit, so no new plan version.
                continue;
            }
            // Unbind what it held, bind what it claims.
            let mut edit = |config: &str, ip: Ipv4Addr, bind: bool| {
                let Some(name) = self.plain.get(config) else { return };
                let binding = bind.then(|| Binding { pod_ip: ip, config: name.clone(), public_key: None });
                for node in self.nodes_of.get(config).into_iter().flatten() {
                    edits.entry(node).or_default().insert(ip, binding.clone());
                }
                if let Ok(i) = self.last.configs.binary_search_by(|s| s.name.as_str().cmp(config)) {
                    statuses.entry(i).or_default().insert(ip, bind);
                }
            };
            for &ip in old_ips {
                edit(old_config.expect("IPs come with their config"), ip, false);
            }
            for &ip in new_ips {
                edit(new_config.expect("IPs come with their config"), ip, true);
            }
            for ip in old_ips {
                let n = self.claimants.get_mut(ip).expect("a claimed IP is counted");
                *n -= 1;
                if *n == 0 {
                    self.claimants.remove(ip);
                }
            }
            for ip in new_ips {
                *self.claimants.entry(*ip).or_default() += 1;
            }
            match new {
                Some((config, ips)) => self.claims.insert(key.clone(), (config.to_string(), ips)),
                None => self.claims.remove(key),
            };
        }
        let mut deltas = BTreeMap::new();
        let mut changed = BTreeMap::new();
        // The nodes of a pool hold one list of bindings (they serve the
        // same configs, so they get the same edits): each new list is made
        // once and shared (`None`: no change).
        let mut made: Vec<(Bindings, Option<(PlanDelta, Bindings)>)> = Vec::new();
        for (node, edits) in &edits {
            let plan = self.last.plans.get_mut(*node).expect("nodes_of names planned nodes");
            let i = match made.iter().position(|(old, _)| old.same(&plan.bindings)) {
                Some(i) => i,
                None => {
                    let mut delta = PlanDelta { base: plan.version, version: plan.version, ..Default::default() };
                    for (ip, b) in edits {
                        match b {
                            // Bound as it was (unbound and bound again): no change.
                            Some(b)
                                if plan
                                    .bindings
                                    .binary_search_by(|x| x.canonical_cmp(b))
                                    .is_ok_and(|i| plan.bindings[i] == *b) => {}
                            Some(b) => delta.bind.push(b.clone()),
                            None => delta.unbind.push(*ip),
                        }
                    }
                    let new = match delta.is_empty() {
                        true => None,
                        false => {
                            let new = delta
                                .apply_to_bindings(&plan.bindings)
                                .map_err(|_| NeedsFull("a plan not in canonical order"))?;
                            Some((delta, new))
                        }
                    };
                    made.push((plan.bindings.clone(), new));
                    made.len() - 1
                }
            };
            let Some((delta, bindings)) = &made[i].1 else { continue };
            plan.bindings = bindings.clone();
            changed.insert(node.to_string(), plan.clone());
            deltas.insert(node.to_string(), delta.clone());
        }
        for (i, edits) in statuses {
            let pods = &mut self.last.configs[i].pods;
            for (ip, bound) in edits {
                match (pods.binary_search(&ip), bound) {
                    (Err(at), true) => pods.insert(at, ip),
                    (Ok(at), false) => {
                        pods.remove(at);
                    }
                    _ => {}
                }
            }
        }
        if touched_problems {
            self.last.problems.sort();
        }
        let Reconciled { configs, nodes, problems, .. } = &self.last;
        let r =
            Reconciled { plans: changed, configs: configs.clone(), nodes: nodes.clone(), problems: problems.clone() };
        Ok((r, deltas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{reconcile, reconcile_indexed};
    use proptest::prelude::*;

    /// Three gateway nodes in pool gw; configs a and b served on them,
    /// pending without a prefix.
    fn cluster_yaml() -> String {
        let nodes = (0..3).map(|i| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: gw-{i}, \
                 labels: {{kubeegressgateway.azure.com/mode: 'true', agentpool: gw}}}}\n"
            )
        });
        let configs = [
            ("a", "status: {egressIpPrefix: 198.19.100.0/28}"),
            ("b", "status: {egressIpPrefix: 198.19.101.0/28}"),
            ("pending", ""),
        ]
        .into_iter()
        .map(|(name, status)| {
            format!(
                "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\n\
                     metadata: {{name: {name}, namespace: apps}}\nspec: {{gatewayNodepoolName: gw}}\n{status}\n"
            )
        });
        nodes.chain(configs).collect::<Vec<_>>().join("---\n")
    }

    /// A pod `p{n}` of namespace apps naming `config` (none: no
    /// annotation), at `ip`, finished or not.
    fn pod(n: u8, config: Option<&str>, ip: &str, finished: bool) -> Pod {
        let annotation =
            config.map_or(String::new(), |c| format!("kubernetes.azure.com/static-gateway-configuration: {c}"));
        let phase = if finished { "Succeeded" } else { "Running" };
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{n}, namespace: apps, annotations: {{{annotation}}}}}\n\
             status: {{phase: {phase}, podIP: {ip}}}\n"
        );
        ClusterState::parse(&yaml, "pod").unwrap().pods.remove(0)
    }

    fn cluster() -> ClusterState {
        let mut st = ClusterState::parse(&cluster_yaml(), "cluster").unwrap();
        st.keys_unique = true;
        st
    }

    /// Puts (or with `None` removes) pod `p{n}` as a watch would.
    fn put(st: &mut ClusterState, n: u8, pod: Option<Pod>) -> String {
        let key = format!("apps/p{n}");
        let at = st.pods.iter().position(|p| p.metadata.key() == key);
        match (at, pod) {
            (Some(i), Some(p)) => st.pods[i] = p,
            (None, Some(p)) => st.pods.push(p),
            (Some(i), None) => {
                st.pods.swap_remove(i);
            }
            (None, None) => {}
        }
        key
    }

    #[test]
    fn a_pod_added_with_its_own_ip_is_applied_alone() {
        let mut st = cluster();
        put(&mut st, 1, Some(pod(1, Some("a"), "198.18.0.1", false)));
        let (_, ix) = reconcile_indexed(&st);
        let mut ix = ix.expect("this cluster is indexed");
        let key = put(&mut st, 2, Some(pod(2, Some("b"), "198.18.0.2", false)));
        let (r, deltas) = ix.apply(&[(key, st.pods.last())]).expect("applied alone");
        assert_eq!(deltas.len(), 3, "a delta for each node");
        assert_eq!(r.plans, reconcile(&st).plans);
        assert!(r.plans.values().all(|p| p.bindings.len() == 2), "every node serves both configs");
    }

    #[test]
    fn the_nodes_of_a_pool_hold_one_list_of_bindings_before_and_after_a_pod_change() {
        let mut st = cluster();
        put(&mut st, 1, Some(pod(1, Some("a"), "198.18.0.1", false)));
        let (full, ix) = reconcile_indexed(&st);
        let shared = |plans: &BTreeMap<String, egret_plan::Plan>| {
            let lists: Vec<&Bindings> = plans.values().map(|p| &p.bindings).collect();
            lists.len() == 3 && lists.iter().all(|l| l.same(lists[0]))
        };
        assert!(shared(&full.plans), "one list, not one per node");
        let key = put(&mut st, 2, Some(pod(2, Some("b"), "198.18.0.2", false)));
        let (r, _) = ix.expect("indexed").apply(&[(key, st.pods.last())]).expect("applied alone");
        assert!(shared(&r.plans), "the changed list is made once for the pool");
        assert_eq!(r.plans["gw-0"].bindings.len(), 2);
    }

    #[test]
    fn a_contended_ip_needs_a_full_reconcile() {
        let mut st = cluster();
        put(&mut st, 1, Some(pod(1, Some("a"), "198.18.0.1", false)));
        let mut ix = reconcile_indexed(&st).1.unwrap();
        let key = put(&mut st, 2, Some(pod(2, Some("b"), "198.18.0.1", false)));
        assert!(ix.apply(&[(key, st.pods.last())]).is_err());
    }

    /// Pod `p{n}` put as (config, IP, finished), or removed.
    type Change = (u8, Option<(Option<&'static str>, &'static str, bool)>);

    fn change() -> impl Strategy<Value = Change> {
        let config =
            prop_oneof![Just(Some("a")), Just(Some("b")), Just(Some("pending")), Just(Some("nosuch")), Just(None)];
        let ip = prop_oneof![
            Just("198.18.0.1"),
            Just("198.18.0.2"),
            Just("198.18.0.3"),
            Just("198.18.0.4"),
            Just("198.18.0.5"),
            Just("198.18.0.6"),
            Just("198.19.100.3"),
        ];
        (0u8..6, proptest::option::weighted(0.8, (config, ip, proptest::bool::weighted(0.1))))
    }

    proptest! {
        /// Pods coming, going and changing, a few at a time: applied to the
        /// index (or, where it says so, reconciled whole) the result is the
        /// whole reconcile's.
        #[test]
        fn pod_changes_applied_alone_give_what_a_full_reconcile_gives(
            batches in proptest::collection::vec(proptest::collection::vec(change(), 1..4), 1..12),
        ) {
            let mut st = cluster();
            let mut ix = reconcile_indexed(&st).1.ok();
            for batch in batches {
                let mut keys = Vec::new();
                for (n, p) in batch {
                    let key = put(&mut st, n, p.map(|(config, ip, finished)| pod(n, config, ip, finished)));
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                let full = reconcile(&st);
                let changes: Vec<(String, Option<&Pod>)> =
                    keys.iter().map(|k| (k.clone(), st.pods.iter().find(|p| p.metadata.key() == *k))).collect();
                let before = ix.as_ref().map(|ix| ix.last.plans.clone()).unwrap_or_default();
                match ix.as_mut().map(|ix| ix.apply(&changes)) {
                    Some(Ok((mut r, deltas))) => {
                        prop_assert_eq!(r.plans.keys().collect::<Vec<_>>(), deltas.keys().collect::<Vec<_>>());
                        for (node, plan) in &full.plans {
                            let made = match deltas.get(node) {
                                Some(d) => d.apply(&before[node]).unwrap(),
                                None => before[node].clone(),
                            };
                            prop_assert_eq!(&made, plan, "node {}'s delta", node);
                            prop_assert!(deltas.get(node).is_none_or(|d| !d.is_empty()), "no empty delta");
                            r.plans.entry(node.clone()).or_insert(made);
                        }
                        prop_assert_eq!(r, full);
                    }
                    _ => ix = reconcile_indexed(&st).1.ok(),
                }
            }
        }
    }
}
