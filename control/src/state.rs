//! The control plane's state: the latest reconcile, each node's versioned
//! plan, and what each gateway last said (acks, reports), here or, for
//! gateways subscribed to another replica, as that replica last told
//! ([`PeerLink`]). Sources call [`ControlState::update`]; the gRPC
//! services read [`Snapshot`]s.

use egret_api::v1::{PortUsage, Report};
use egret_cluster as cluster;
use egret_cluster::{
    ClusterState, Problem, Reconciled, NETWORK_POLICY_KIND, POD_ENDPOINT_KIND, POLICY_KIND, SGC_KIND, VM_CONFIG_KIND,
};
use egret_plan::{Plan, PlanDelta, WgKey};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One node's plan at one version, with the changes that led to it.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub version: u64,
    pub plan: Arc<Plan>,
    /// The last [`MAX_DELTAS`] versions' changes (at most
    /// [`MAX_DELTA_BYTES`] of them), oldest first, contiguous up to this
    /// version (empty when the last change could not be put as a delta or
    /// was larger than that).
    deltas: Arc<[Arc<EncodedDelta>]>,
}

/// A [`PlanDelta`] in the JSON form the plan stream carries.
#[derive(Debug)]
pub struct EncodedDelta {
    pub base: u64,
    pub version: u64,
    pub json: String,
}

/// How many versions back a subscriber may be and still be sent deltas
/// (a slow subscriber misses versions: the snapshot watch keeps the latest).
pub const MAX_DELTAS: usize = 32;

/// The most bytes of deltas a node's plan keeps: a change as large as a
/// plan (a relist, a config renamed) is sent whole rather than kept 32
/// times per node.
pub const MAX_DELTA_BYTES: usize = 1 << 20;

impl NodePlan {
    /// `plan` at `version`, with no changes before it.
    pub fn new(version: u64, mut plan: Plan) -> NodePlan {
        plan.version = version;
        NodePlan { version, plan: Arc::new(plan), deltas: Arc::new([]) }
    }

    /// `plan` at `version`, the change from `self` being `delta`.
    fn next(&self, version: u64, plan: Plan, mut delta: PlanDelta) -> NodePlan {
        delta.version = version;
        let json = serde_json::to_string(&delta).expect("a delta always serialises");
        let delta = Arc::new(EncodedDelta { base: delta.base, version, json });
        // The newest changes that fit both bounds, oldest first.
        let mut bytes = 0;
        let mut deltas: Vec<Arc<EncodedDelta>> = std::iter::once(delta)
            .chain(self.deltas.iter().rev().cloned())
            .take(MAX_DELTAS)
            .take_while(|d| {
                bytes += d.json.len();
                bytes <= MAX_DELTA_BYTES
            })
            .collect();
        deltas.reverse();
        NodePlan { deltas: deltas.into(), ..NodePlan::new(version, plan) }
    }

    /// The plan whole, as JSON. Encoded for each subscriber that needs it
    /// whole (rare once plans travel as deltas), not kept: at 100,000 pods
    /// it is ~5 MB per node, held for as long as the version is served.
    pub fn json(&self) -> String {
        serde_json::to_string(&*self.plan).expect("a plan always serialises")
    }

    /// The changes from version `sent` to this one, in order, when they
    /// are all still kept.
    pub fn deltas_since(&self, sent: u64) -> Option<&[Arc<EncodedDelta>]> {
        let first = self.deltas.iter().position(|d| d.base == sent)?;
        Some(&self.deltas[first..])
    }
}

/// Equal versions of one node's plan are one plan (compared by pointer
/// first: acks compare them on every version).
impl PartialEq for NodePlan {
    fn eq(&self, other: &NodePlan) -> bool {
        self.version == other.version && (Arc::ptr_eq(&self.plan, &other.plan) || self.plan == other.plan)
    }
}

/// An immutable view of everything reconciled, swapped whole on each change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bumped whenever any node's plan, any problem, or the names and UIDs
    /// below change.
    pub generation: u64,
    pub reconciled: Reconciled,
    pub plans: BTreeMap<String, NodePlan>,
    /// Single-gateway mode: the manifests name no gateway node, so every
    /// subscriber, whatever its node name, gets every config whole (the same
    /// plan a standalone gateway reads from the file).
    pub anyone: Option<NodePlan>,
    /// (config `namespace/name`, pod public key) → the PodEndpoint's
    /// `namespace/name`: the names GatewayStatus gives a config's peers.
    pub peer_names: BTreeMap<(String, WgKey), String>,
    /// `Kind namespace/name` (`Node name`), as [`Problem::object`] names
    /// objects → the object's UID, for ownerReferences and Events.
    pub object_uids: BTreeMap<String, String>,
    /// Config `namespace/name` → its `egret.dev/port-pool-pressure`
    /// annotation, on the configs that carry one.
    pub pressure_annotations: BTreeMap<String, String>,
}

impl Snapshot {
    /// The plan for `node`, if it is a gateway node (or anyone is served).
    pub fn plan_for(&self, node: &str) -> Option<&NodePlan> {
        self.plans.get(node).or(self.anyone.as_ref())
    }
}

/// What a gateway last told us.
#[derive(Debug, Clone, Default)]
pub struct GatewayLink {
    pub connected: u32,
    pub applied_version: u64,
    pub applied_error: String,
    /// The plan the gateway last applied, when it was the node's plan at
    /// the time of the ack (what its GatewayStatus is written from).
    pub applied: Option<NodePlan>,
    pub report: Option<(Instant, Report)>,
}

/// A gateway subscribed to another replica, as that replica last answered
/// (`crate::peers`).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerLink {
    /// The replica it is subscribed to.
    pub replica: String,
    pub applied_version: u64,
    pub applied_error: String,
    /// The plan it applied, in that replica's numbering, when known.
    pub applied: Option<NodePlan>,
    pub report_age_s: Option<u64>,
    /// Its port usage as that replica last had it reported (empty when
    /// that report is older than [`REPORT_FRESH`]).
    pub ports: Vec<PortUsage>,
}

/// Reports older than this are not counted in port pool pressure (gateways
/// report every second).
pub const REPORT_FRESH: Duration = Duration::from_secs(30);

pub struct ControlState {
    snapshot: watch::Sender<Arc<Snapshot>>,
    links: Mutex<BTreeMap<String, GatewayLink>>,
    /// Gateways subscribed to other replicas, by node.
    peer_links: Mutex<BTreeMap<String, PeerLink>>,
    /// Bumped whenever a link's `applied` plan changes, so writers of what
    /// gateways applied wait on it instead of polling the links.
    applied: watch::Sender<u64>,
    /// Serialises updates (versions must be assigned in order), and holds
    /// what lets pod changes be applied to the last reconcile.
    update: Mutex<Result<cluster::PodIndex, cluster::NeedsFull>>,
    /// How updates went: reconciles, pod changes applied alone or not and
    /// why, plans sent by form (`GET /metrics`).
    metrics: crate::metrics::ControlMetrics,
    /// What the source reports about its own reads, by what it names
    /// (manifests refused, a Kubernetes kind not listed); listed first
    /// among the problems.
    source_errors: Mutex<BTreeMap<String, Problem>>,
}

impl Default for ControlState {
    fn default() -> Self {
        ControlState {
            snapshot: watch::channel(Arc::new(Snapshot::default())).0,
            links: Mutex::default(),
            peer_links: Mutex::default(),
            applied: watch::channel(0).0,
            update: Mutex::new(Err(cluster::NeedsFull("nothing reconciled yet"))),
            metrics: Default::default(),
            source_errors: Mutex::default(),
        }
    }
}

impl ControlState {
    pub fn new() -> Arc<ControlState> {
        Arc::new(ControlState::default())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Records why the source's latest read of `what` (manifests, one
    /// Kubernetes kind) was refused or left out (`None`: it was read), e.g.
    /// manifests that do not parse, or a kind whose list fails.
    pub fn set_source_error(&self, what: &str, error: Option<String>) {
        let mut errors = self.source_errors.lock().unwrap();
        match error {
            Some(message) => errors.insert(what.to_string(), Problem { object: what.to_string(), message }),
            None => errors.remove(what),
        };
    }

    /// The source's own problems, by what they name.
    pub fn source_problems(&self) -> Vec<Problem> {
        self.source_errors.lock().unwrap().values().cloned().collect()
    }

    /// The reconcile's problems, after the source's own.
    pub fn problems(&self) -> Vec<Problem> {
        let mut all = self.source_problems();
        all.extend(self.snapshot().reconciled.problems.iter().cloned());
        all
    }

    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Changes whenever some gateway's applied plan does.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// A gateway's ack: it applied plan `version` (`error` empty) or
    /// rejected it. A plan applied is remembered whole when it is the
    /// node's current plan; an ack for an older one moves only the version.
    pub fn applied(&self, node: &str, version: u64, error: String) {
        let current = self.snapshot().plan_for(node).filter(|p| p.version == version).cloned();
        let changed = self.with_link(node, |l| {
            if !error.is_empty() {
                l.applied_error = error;
                return false;
            }
            l.applied_version = version;
            l.applied_error = error;
            match current {
                Some(np) if l.applied.as_ref() != Some(&np) => {
                    l.applied = Some(np);
                    true
                }
                _ => false,
            }
        });
        if changed {
            self.applied.send_modify(|n| *n += 1);
        }
    }

    /// Reconciles `st` and publishes what changed. A node's plan version
    /// moves only when its plan does; problems new since the last update are
    /// logged. Returns the generation now current.
    pub fn update(&self, st: &ClusterState) -> u64 {
        let mut index = self.update.lock().unwrap();
        let (reconciled, new_index) = cluster::reconcile_indexed(st);
        self.metrics.reconciled_whole();
        *index = new_index;
        self.publish(st, reconciled, None, &mut index)
    }

    /// As [`ControlState::update`], after only the pods `changes` names
    /// changed (each as it is now; `None`: gone): applied to the last
    /// reconcile, in work bounded by the changes, where
    /// [`cluster::PodIndex`] allows; else the whole cluster is reconciled.
    pub fn update_pods(&self, st: &ClusterState, changes: &[(String, Option<&cluster::Pod>)]) -> u64 {
        let mut index = self.update.lock().unwrap();
        // Why the last reconcile keeps no index (labels decide, the last
        // plan was refused, ...), or why it cannot take these changes.
        let applied = match index.as_mut() {
            Ok(ix) => ix.apply(changes),
            Err(why) => Err(why.clone()),
        };
        match applied {
            Ok((reconciled, deltas)) => {
                self.metrics.pod_changes_applied_alone();
                self.publish(st, reconciled, Some(deltas), &mut index)
            }
            Err(why) => {
                tracing::debug!(why = why.0, "pod changes need a full reconcile");
                self.metrics.pod_changes_reconciled_whole(why.0);
                // Half applied: never used again.
                *index = Err(why);
                drop(index);
                self.update(st)
            }
        }
    }

    /// How many pod changes were applied to the last reconcile alone.
    pub fn pod_updates_alone(&self) -> u64 {
        self.metrics.pod_changes_applied_alone_count()
    }

    pub fn metrics(&self) -> &crate::metrics::ControlMetrics {
        &self.metrics
    }

    /// The metrics as Prometheus text, with the published generation,
    /// problems and gateway nodes planned as gauges.
    pub fn metrics_text(&self) -> String {
        let snap = self.snapshot();
        let problems = self.source_errors.lock().unwrap().len() + snap.reconciled.problems.len();
        self.metrics.render(snap.generation, problems, snap.plans.len())
    }

    /// Publishes what `reconciled` changed (the caller holds the update
    /// lock). `pods_only`: nothing but pods changed since the last
    /// publish, so what is made of other objects is kept.
    fn publish(
        &self,
        st: &ClusterState,
        mut reconciled: Reconciled,
        known: Option<BTreeMap<String, PlanDelta>>,
        index: &mut Result<cluster::PodIndex, cluster::NeedsFull>,
    ) -> u64 {
        let pods_only = known.is_some();
        let prev = self.snapshot();
        let next_gen = prev.generation + 1;
        let mut changed = false;
        let problems = reconciled.problems.len();
        let plans = node_plans(&prev.plans, &mut reconciled, next_gen, known);
        if reconciled.problems.len() != problems {
            // A plan not published: the index's plans are no longer the
            // ones served, so the next pod change is reconciled whole.
            *index = Err(cluster::NeedsFull("the last plan was not published"));
        }
        changed |= plans.values().any(|np| np.version == next_gen);
        changed |= plans.len() != prev.plans.len();
        let anyone = if reconciled.nodes.is_empty() {
            let (plan, _) = cluster::standalone_plan(st, 0);
            let np = publishable(ANYONE, prev.anyone.as_ref(), plan, next_gen, &mut reconciled.problems);
            changed |= np.as_ref().is_some_and(|np| np.version == next_gen);
            np
        } else {
            changed |= prev.anyone.is_some();
            None
        };
        reconciled.problems.sort();
        let old: BTreeSet<&Problem> = prev.reconciled.problems.iter().collect();
        for p in reconciled.problems.iter().filter(|p| !old.contains(p)) {
            tracing::warn!(object = %p.object, "{}", p.message);
        }
        // PodEndpoints and configs are as they were when only pods changed.
        let peer_names = if pods_only { prev.peer_names.clone() } else { peer_names(st) };
        let object_uids = object_uids(st, &reconciled.problems);
        let pressure_annotations: BTreeMap<String, String> = if pods_only {
            prev.pressure_annotations.clone()
        } else {
            st.configs
                .iter()
                .filter_map(|c| {
                    let value = c.metadata.annotations.get(crate::kube_status::ANN_PORT_POOL_PRESSURE)?;
                    Some((c.metadata.key(), value.clone()))
                })
                .collect()
        };
        changed |= pressure_annotations != prev.pressure_annotations;
        changed |= reconciled.problems != prev.reconciled.problems
            || reconciled.configs != prev.reconciled.configs
            || peer_names != prev.peer_names
            || object_uids != prev.object_uids;
        if !changed && prev.generation > 0 {
            return prev.generation;
        }
        let generation = next_gen;
        for (node, np) in &plans {
            if np.version == generation {
                tracing::info!(
                    node,
                    version = generation,
                    configs = np.plan.configs.len(),
                    bindings = np.plan.bindings.len(),
                    "new plan"
                );
            }
        }
        self.snapshot.send_replace(Arc::new(Snapshot {
            generation,
            reconciled,
            plans,
            anyone,
            peer_names,
            object_uids,
            pressure_annotations,
        }));
        generation
    }

    /// The plan `node`'s gateway last applied (not the rest of its link:
    /// its report can be large): as it acked here while subscribed here,
    /// else as the replica it is subscribed to says.
    pub fn applied_plan(&self, node: &str) -> Option<NodePlan> {
        let here = self.links.lock().unwrap().get(node).map(|l| (l.connected > 0, l.applied.clone()));
        match here {
            Some((true, applied)) => applied,
            here => {
                let peer = self.peer_links.lock().unwrap().get(node).and_then(|p| p.applied.clone());
                peer.or(here.and_then(|(_, applied)| applied))
            }
        }
    }

    /// Replaces what the other replicas said of their gateways; wakes the
    /// writers of applied plans when one changed.
    pub fn set_peer_links(&self, links: BTreeMap<String, PeerLink>) {
        let changed = {
            let mut old = self.peer_links.lock().unwrap();
            let applied = |m: &BTreeMap<String, PeerLink>| -> Vec<(String, Option<u64>)> {
                m.iter().map(|(n, l)| (n.clone(), l.applied.as_ref().map(|p| p.version))).collect()
            };
            let changed = applied(&old) != applied(&links)
                || old.iter().zip(links.iter()).any(|((_, a), (_, b))| a.replica != b.replica);
            *old = links;
            changed
        };
        if changed {
            self.applied.send_modify(|n| *n += 1);
        }
    }

    /// Gateways subscribed to other replicas (not to this one), by node.
    pub fn peer_links(&self) -> BTreeMap<String, PeerLink> {
        let here = self.links.lock().unwrap();
        let peers = self.peer_links.lock().unwrap();
        peers
            .iter()
            .filter(|(n, _)| here.get(*n).is_none_or(|l| l.connected == 0))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect()
    }

    /// A gateway's report, as it arrived.
    pub fn reported(&self, node: &str, report: Report) {
        self.with_link(node, |l| l.report = Some((Instant::now(), report)));
    }

    /// Every gateway's port usage, a row per config and egress address:
    /// from its report here when younger than [`REPORT_FRESH`], or, for a
    /// gateway subscribed to another replica, as that replica says.
    pub fn port_usage(&self) -> Vec<(String, PortUsage)> {
        let peers = self.peer_links();
        let mut out = Vec::new();
        for (node, l) in self.links.lock().unwrap().iter() {
            let Some((at, r)) = &l.report else { continue };
            if !peers.contains_key(node) && at.elapsed() < REPORT_FRESH {
                out.extend(r.ports.iter().map(|u| (node.clone(), u.clone())));
            }
        }
        for (node, p) in peers {
            out.extend(p.ports.into_iter().map(|u| (node.clone(), u)));
        }
        out
    }

    pub fn link(&self, node: &str) -> GatewayLink {
        self.links.lock().unwrap().get(node).cloned().unwrap_or_default()
    }

    pub fn links(&self) -> BTreeMap<String, GatewayLink> {
        self.links.lock().unwrap().clone()
    }

    pub(crate) fn with_link<R>(&self, node: &str, f: impl FnOnce(&mut GatewayLink) -> R) -> R {
        f(self.links.lock().unwrap().entry(node.to_string()).or_default())
    }
}

/// Whether two plans say the same, whatever their versions (each replica
/// numbers its own) and with tunnel keys as operators see them (a peer's
/// plans come redacted).
pub fn same_content(a: &Plan, b: &Plan) -> bool {
    let (mut a, mut b) = (a.redacted(), b.redacted());
    a.version = 0;
    b.version = 0;
    a == b
}

/// Each PodEndpoint's name by its config and key; of two with the same
/// config and key, the first by name (the one reconcile binds first).
fn peer_names(st: &ClusterState) -> BTreeMap<(String, WgKey), String> {
    let mut eps: Vec<_> = st.pod_endpoints.iter().collect();
    eps.sort_by_key(|e| e.metadata.key());
    let mut out = BTreeMap::new();
    for e in eps {
        let Ok(key) = e.spec.pod_public_key.parse::<WgKey>() else { continue };
        let config = format!("{}/{}", e.metadata.ns(), e.spec.static_gateway_configuration);
        out.entry((config, key)).or_insert_with(|| e.metadata.key());
    }
    out
}

/// The UIDs of the objects GatewayStatus, Events and annotations name:
/// every config and gateway node, and the other objects that `problems`
/// name (not every pod: at 100,000 pods that map would be rebuilt and
/// compared on every change for nothing).
fn object_uids(st: &ClusterState, problems: &[Problem]) -> BTreeMap<String, String> {
    // (kind, namespace, name) of each object a problem names.
    let named: HashSet<(&str, &str, &str)> = problems
        .iter()
        .filter_map(|p| {
            let (kind, key) = p.object.split_once(' ')?;
            let (ns, name) = key.split_once('/')?;
            Some((kind, ns, name))
        })
        .collect();
    let uid = |kind: &str, m: &cluster::ObjectMeta| m.uid.clone().map(|u| (Problem::object_name(kind, &m.key()), u));
    let problem_uid = |kind: &'static str| {
        let named = &named;
        move |m: &cluster::ObjectMeta| {
            if named.contains(&(kind, m.ns(), m.name.as_str())) {
                uid(kind, m)
            } else {
                None
            }
        }
    };
    let nodes = st
        .nodes
        .iter()
        .filter_map(|n| n.metadata.uid.clone().map(|u| (Problem::object_name("Node", &n.metadata.name), u)));
    let mut out: BTreeMap<String, String> =
        st.configs.iter().filter_map(|o| uid(SGC_KIND, &o.metadata)).chain(nodes).collect();
    if named.is_empty() {
        return out;
    }
    out.extend(
        st.pods
            .iter()
            .filter_map(|o| problem_uid("Pod")(&o.metadata))
            .chain(st.policies.iter().filter_map(|o| problem_uid(POLICY_KIND)(&o.metadata)))
            .chain(st.pod_endpoints.iter().filter_map(|o| problem_uid(POD_ENDPOINT_KIND)(&o.metadata)))
            .chain(st.vm_configs.iter().filter_map(|o| problem_uid(VM_CONFIG_KIND)(&o.metadata)))
            .chain(st.network_policies.iter().filter_map(|o| problem_uid(NETWORK_POLICY_KIND)(&o.metadata))),
    );
    out
}

/// How a problem names the single-gateway plan (no node names it).
const ANYONE: &str = "Plan for any gateway";

/// Each node's plan to publish (see [`publishable`]); a node whose plan
/// is refused keeps its previous one, if it had one. The plans are moved
/// out of `reconciled` (the snapshot keeps them once, as [`NodePlan`]s).
///
/// `known`: every change from `prev`, as deltas by node, when the caller
/// knows them (pod changes applied alone): a node without one keeps its
/// plan, and no plan is compared whole.
fn node_plans(
    prev: &BTreeMap<String, NodePlan>,
    reconciled: &mut Reconciled,
    version: u64,
    mut known: Option<BTreeMap<String, PlanDelta>>,
) -> BTreeMap<String, NodePlan> {
    // Pod changes applied alone name only the plans they changed.
    let mut out = if known.is_some() { prev.clone() } else { BTreeMap::new() };
    for (node, plan) in std::mem::take(&mut reconciled.plans) {
        let object = Problem::object_name("Node", &node);
        let before = prev.get(&node);
        let np = match (known.as_mut(), before) {
            (Some(known), Some(p)) => match known.remove(&node) {
                None => Some(p.clone()),
                Some(mut d) => {
                    d.base = p.version;
                    publish_delta(&object, p, plan, d, version, &mut reconciled.problems)
                }
            },
            _ => publishable(&object, before, plan, version, &mut reconciled.problems),
        };
        if let Some(np) = np {
            out.insert(node, np);
        }
    }
    out
}

/// `plan`, which `delta` makes of `prev`'s plan, as [`publishable`]
/// would publish it, without comparing the plans whole.
fn publish_delta(
    object: &str,
    prev: &NodePlan,
    plan: Plan,
    delta: PlanDelta,
    version: u64,
    problems: &mut Vec<Problem>,
) -> Option<NodePlan> {
    if delta.is_empty() {
        return Some(prev.clone());
    }
    match delta.validate(&plan) {
        Ok(()) => Some(prev.next(version, plan, delta)),
        Err(e) => {
            problems.push(refused(object, Some(prev), &e));
            Some(prev.clone())
        }
    }
}

/// The problem a plan not published is reported as.
fn refused(object: &str, prev: Option<&NodePlan>, e: &egret_plan::PlanError) -> Problem {
    let keeps = match prev {
        Some(p) => format!("version {} keeps serving", p.version),
        None => "no plan is served".into(),
    };
    Problem {
        object: object.to_string(),
        message: format!("plan not published, its gateway would refuse it: {e}; {keeps}"),
    }
}

/// `plan` as it is to be published, checked as its gateway will check it
/// (Plan::validate): a gateway refuses an invalid plan whole, so sending
/// one would freeze every tenant on the node. Reconcile leaves out every
/// clash it knows of; should one get through anyway, the previous plan
/// (if any) stays, and a problem on `object` names the error. A plan that
/// says what the previous one says is that one, version and all (it was
/// checked when it was published).
fn publishable(
    object: &str,
    prev: Option<&NodePlan>,
    plan: Plan,
    version: u64,
    problems: &mut Vec<Problem>,
) -> Option<NodePlan> {
    let delta = prev.and_then(|p| PlanDelta::between(&p.plan, &plan));
    let same = match &delta {
        Some(d) => d.is_empty(),
        None => prev.is_some_and(|p| p.plan.same_but_version(&plan)),
    };
    if same {
        return prev.cloned();
    }
    let checked = match (prev, &delta) {
        // The previous plan was checked when it was published.
        (Some(_), Some(d)) => d.validate(&plan),
        _ => plan.validate(),
    };
    match checked {
        Ok(()) => Some(match (prev, delta) {
            (Some(p), Some(d)) => p.next(version, plan, d),
            _ => NodePlan::new(version, plan),
        }),
        Err(e) => {
            problems.push(refused(object, prev, &e));
            prev.cloned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_source_read_is_the_first_problem_until_a_read_succeeds() {
        let state = ControlState::new();
        state.set_source_error("manifests /m", Some("document 1: bad".into()));
        let p = state.problems();
        assert_eq!((p[0].object.as_str(), p[0].message.as_str()), ("manifests /m", "document 1: bad"));
        state.set_source_error("manifests /m", None);
        assert!(state.problems().is_empty());
    }

    #[test]
    fn source_problems_are_kept_per_thing_read() {
        let state = ControlState::new();
        state.set_source_error("EgressPolicy list", Some("404".into()));
        state.set_source_error("Secret list (namespace a)", Some("403".into()));
        state.set_source_error("EgressPolicy list", None);
        let p = state.problems();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].object.as_str(), p[0].message.as_str()), ("Secret list (namespace a)", "403"));
    }

    fn cluster() -> ClusterState {
        ClusterState::parse(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\n\
             metadata: {name: a, namespace: demo}\nspec: {gatewayNodepoolName: gw}\n\
             status: {egressIpPrefix: 198.19.100.0/30}\n---\n\
             apiVersion: v1\nkind: Node\n\
             metadata: {name: gw-0, labels: {kubeegressgateway.azure.com/mode: 'true', agentpool: gw}}\n",
            "inline",
        )
        .unwrap()
    }

    /// Reconcile leaves out every clash it knows of, so a plan that fails
    /// validation cannot be made from objects: the guard is tested on
    /// what publishes plans.
    #[test]
    fn a_plan_its_gateway_would_refuse_is_not_published_and_the_previous_one_stays() {
        let state = ControlState::new();
        state.update(&cluster());
        let prev = state.snapshot().plans.clone();
        assert_eq!(prev["gw-0"].version, 1);

        let mut r = cluster::reconcile(&cluster());
        let plan = r.plans.get_mut("gw-0").unwrap();
        plan.bindings.make_mut().push(egret_plan::Binding {
            pod_ip: "198.18.0.2".parse().unwrap(),
            config: "demo/gone".into(),
            public_key: None,
        });
        let expected = plan.validate().unwrap_err();
        let mut fresh = r.clone();
        let plans = node_plans(&prev, &mut r, 2, None);
        assert_eq!(plans["gw-0"], prev["gw-0"], "the previous plan, same version, keeps serving");
        assert_eq!(
            r.problems,
            vec![Problem {
                object: "Node gw-0".into(),
                message: format!(
                    "plan not published, its gateway would refuse it: {expected}; version 1 keeps serving"
                ),
            }]
        );

        // A node with no plan yet gets none rather than one it refuses.
        let plans = node_plans(&BTreeMap::new(), &mut fresh, 2, None);
        assert!(plans.is_empty());
        assert!(fresh.problems.iter().any(|p| p.message.ends_with("no plan is served")), "{:?}", fresh.problems);
    }

    fn with_pods(n: u8) -> ClusterState {
        let pods: String = (1..=n)
            .map(|i| {
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: demo, \
                     annotations: {{kubernetes.azure.com/static-gateway-configuration: a}}}}\n\
                     status: {{phase: Running, podIP: 198.18.0.{i}}}\n"
                )
            })
            .collect();
        let mut st = cluster();
        st.extend(ClusterState::parse(&pods, "pods").unwrap());
        st
    }

    #[test]
    fn each_new_version_keeps_the_changes_since_older_ones_in_order() {
        let state = ControlState::new();
        state.update(&with_pods(1));
        let first = state.snapshot().plans["gw-0"].clone();
        for n in 2..=4 {
            state.update(&with_pods(n));
        }
        let last = state.snapshot().plans["gw-0"].clone();
        let deltas = last.deltas_since(first.version).expect("three changes are kept");
        assert_eq!(deltas.len(), 3);
        let mut plan = (*first.plan).clone();
        for d in deltas {
            let delta: PlanDelta = serde_json::from_str(&d.json).unwrap();
            assert_eq!((delta.base, delta.bind.len()), (plan.version, 1), "one pod each");
            plan = delta.apply(&plan).unwrap();
        }
        assert_eq!(plan, *last.plan);
        assert!(last.deltas_since(last.version).is_none(), "nothing follows the latest");
    }

    #[test]
    fn a_subscriber_too_far_behind_gets_no_deltas() {
        let state = ControlState::new();
        state.update(&with_pods(1));
        let first = state.snapshot().plans["gw-0"].version;
        for n in 2..=(MAX_DELTAS as u8 + 2) {
            state.update(&with_pods(n));
        }
        let last = state.snapshot().plans["gw-0"].clone();
        assert!(last.deltas_since(first).is_none());
        assert_eq!(last.deltas_since(last.version - MAX_DELTAS as u64).map(<[_]>::len), Some(MAX_DELTAS));
    }

    #[test]
    fn pod_changes_applied_alone_publish_what_a_full_update_publishes() {
        let keyed = |n| ClusterState { keys_unique: true, ..with_pods(n) };
        let (alone, whole) = (ControlState::new(), ControlState::new());
        for s in [&alone, &whole] {
            s.update(&keyed(2));
        }
        let st = keyed(3);
        let p3 = st.pods.iter().find(|p| p.metadata.name == "p3");
        alone.update_pods(&st, &[("demo/p3".into(), p3)]);
        whole.update(&st);
        assert_eq!(alone.pod_updates_alone(), 1, "applied without a full reconcile");
        let (a, w) = (alone.snapshot(), whole.snapshot());
        assert_eq!(a.plans, w.plans);
        assert_eq!(a.plans["gw-0"].plan.bindings.len(), 3);
        assert_eq!(a.reconciled.configs, w.reconciled.configs);
        assert_eq!(a.reconciled.problems, w.reconciled.problems);
        let deltas = a.plans["gw-0"].deltas_since(a.plans["gw-0"].version - 1).unwrap();
        assert!(deltas[0].json.contains("198.18.0.3"), "the change is the new pod: {}", deltas[0].json);
    }

    #[test]
    fn a_change_larger_than_the_delta_budget_is_sent_whole() {
        let state = ControlState::new();
        state.update(&with_pods(1));
        let first = state.snapshot().plans["gw-0"].clone();
        let mut plan = (*first.plan).clone();
        plan.configs[0].name = "x".repeat(MAX_DELTA_BYTES);
        let delta = PlanDelta::between(&first.plan, &plan).unwrap();
        let next = first.next(first.version + 1, plan, delta);
        assert!(next.deltas_since(first.version).is_none(), "a subscriber at the first version gets the plan whole");
    }

    #[test]
    fn a_pod_change_that_binds_nothing_new_publishes_no_version() {
        let state = ControlState::new();
        let st = ClusterState { keys_unique: true, ..with_pods(2) };
        let generation = state.update(&st);
        let mut relabelled = st.clone();
        relabelled.pods[0].metadata.labels.insert("x".into(), "y".into());
        let key = relabelled.pods[0].metadata.key();
        assert_eq!(state.update_pods(&relabelled, &[(key, relabelled.pods.first())]), generation);
        assert_eq!(state.pod_updates_alone(), 1);
    }

    #[test]
    fn a_pod_change_reconciled_whole_is_counted_with_why() {
        let state = ControlState::new();
        let st = ClusterState { keys_unique: true, ..with_pods(2) };
        state.update(&st);
        // p2 takes p1's IP: who wins depends on names, a full reconcile's call.
        let mut contended = st.clone();
        let i = contended.pods.iter().position(|p| p.metadata.name == "p2").unwrap();
        contended.pods[i].status.pod_ip = Some("198.18.0.1".into());
        let key = contended.pods[i].metadata.key();
        state.update_pods(&contended, &[(key, contended.pods.get(i))]);
        assert_eq!(state.pod_updates_alone(), 0);
        let text = state.metrics_text();
        let line = "egret_control_pod_changes_reconciled_whole_total{reason=\"a_pod_ip_another_pod_claims\"} 1";
        assert!(text.lines().any(|l| l == line), "{text}");
        assert!(text.lines().any(|l| l == "egret_control_reconciles_total 2"), "{text}");
    }

    #[test]
    fn pod_changes_under_a_network_policy_are_reconciled_whole_and_say_why() {
        let state = ControlState::new();
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: demo}\n\
                  spec: {podSelector: {}, policyTypes: [Egress]}\n";
        let mut st = ClusterState { keys_unique: true, ..with_pods(2) };
        st.network_policies = ClusterState::parse(np, "np").unwrap().network_policies;
        state.update(&st);
        let key = st.pods[0].metadata.key();
        state.update_pods(&st, &[(key, st.pods.first())]);
        let text = state.metrics_text();
        let line =
            "egret_control_pod_changes_reconciled_whole_total{reason=\"networkpolicies_select_pods_by_label\"} 1";
        assert!(text.lines().any(|l| l == line), "{text}");
    }
}
