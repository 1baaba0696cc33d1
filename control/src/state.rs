//! The control plane's state: the latest reconcile, each node's versioned
//! plan, and what each gateway last said (acks, reports). Sources call
//! [`ControlState::update`]; the gRPC services read [`Snapshot`]s.

use egret_api::v1::Report;
use egret_dataplane::cluster::{self, ClusterState, Problem, Reconciled};
use egret_dataplane::plan::Plan;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// One node's plan at one version, encoded once for every subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    pub version: u64,
    pub plan: Arc<Plan>,
    pub json: Arc<String>,
}

/// An immutable view of everything reconciled, swapped whole on each change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bumped whenever any node's plan or any problem changes.
    pub generation: u64,
    pub reconciled: Reconciled,
    pub plans: BTreeMap<String, NodePlan>,
    /// Single-gateway mode: the manifests name no gateway node, so every
    /// subscriber, whatever its node name, gets every config whole (the same
    /// plan a standalone gateway reads from the file).
    pub anyone: Option<NodePlan>,
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
    pub report: Option<(Instant, Report)>,
}

pub struct ControlState {
    snapshot: watch::Sender<Arc<Snapshot>>,
    links: Mutex<BTreeMap<String, GatewayLink>>,
    /// Serialises updates (versions must be assigned in order).
    update: Mutex<()>,
}

impl Default for ControlState {
    fn default() -> Self {
        ControlState {
            snapshot: watch::channel(Arc::new(Snapshot::default())).0,
            links: Mutex::default(),
            update: Mutex::default(),
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

    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Reconciles `st` and publishes what changed. A node's plan version
    /// moves only when its plan does; problems new since the last update are
    /// logged. Returns the generation now current.
    pub fn update(&self, st: &ClusterState) -> u64 {
        let _serial = self.update.lock().unwrap();
        let prev = self.snapshot();
        let reconciled = cluster::reconcile(st);
        let next_gen = prev.generation + 1;
        let mut changed = false;
        let mut plans = BTreeMap::new();
        for (node, plan) in &reconciled.plans {
            let np = carry_or_bump(prev.plans.get(node), plan, next_gen);
            changed |= np.version == next_gen;
            plans.insert(node.clone(), np);
        }
        changed |= plans.len() != prev.plans.len();
        let anyone = if reconciled.nodes.is_empty() {
            let (plan, _) = cluster::standalone_plan(st, 0);
            let np = carry_or_bump(prev.anyone.as_ref(), &plan, next_gen);
            changed |= np.version == next_gen;
            Some(np)
        } else {
            changed |= prev.anyone.is_some();
            None
        };
        let old: BTreeSet<&Problem> = prev.reconciled.problems.iter().collect();
        for p in reconciled.problems.iter().filter(|p| !old.contains(p)) {
            tracing::warn!(object = %p.object, "{}", p.message);
        }
        changed |= reconciled.problems != prev.reconciled.problems || reconciled.configs != prev.reconciled.configs;
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
        self.snapshot.send_replace(Arc::new(Snapshot { generation, reconciled, plans, anyone }));
        generation
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

/// The previous entry if the plan is unchanged, else the plan at `version`.
fn carry_or_bump(prev: Option<&NodePlan>, plan: &Plan, version: u64) -> NodePlan {
    if let Some(p) = prev {
        let mut same = plan.clone();
        same.version = p.version;
        if *p.plan == same {
            return p.clone();
        }
    }
    let mut plan = plan.clone();
    plan.version = version;
    let json = serde_json::to_string(&plan).expect("a plan always serialises");
    NodePlan { version, plan: Arc::new(plan), json: Arc::new(json) }
}
