//! What egret-control writes back to the cluster in `--kubernetes` mode:
//! each gateway node's `GatewayStatus`, as kube-egress-gateway's daemon
//! writes it (Egret's gateways hold no API token, so the control plane
//! writes it for them, from what each gateway acknowledged applying), a
//! Warning Event for each problem reconcile finds, on the object it names,
//! and each StaticGatewayConfiguration's port pool pressure
//! ([`crate::pressure`]): a Warning Event (`PortPoolNearlyFull`) when its
//! pool passes 90% on some node, a Normal one (`PortPoolRelieved`) once
//! every pool is below 85% again, and meanwhile the condition as the
//! annotation `egret.dev/port-pool-pressure`. An annotation, because
//! kube-egress-gateway's CRD has no `status.conditions` (the API server
//! would prune them) and Egret has no object of its own per config; the
//! GatewayStatus is per node and has none either.
//!
//! Writes that fail (RBAC denying, the GatewayStatus CRD not installed) are
//! retried later and logged at most once a minute; they never stop plans
//! being served. Nothing secret goes into either: a GatewayStatus holds
//! config and PodEndpoint names, interface names and pod public keys.

use crate::leader::Leadership;
use crate::pressure::{fullest, Change, PoolUse, Pressure, NEARLY_FULL_PERCENT, RELIEVED_PERCENT};
use crate::state::{ControlState, Snapshot};
use egret_cluster::{
    Problem, NETWORK_POLICY_GROUP, NETWORK_POLICY_KIND, NETWORK_POLICY_VERSION, POD_ENDPOINT_KIND, POLICY_KIND,
    SGC_GROUP, SGC_KIND, SGC_VERSION, VM_CONFIG_KIND,
};
use egret_plan::{Plan, WgKey};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where kube-egress-gateway's daemon (and so egret-control) keeps
/// GatewayStatus objects: its Helm chart's namespace.
pub const STATUS_NAMESPACE: &str = "kube-egress-gateway-system";
pub const GATEWAY_STATUS_KIND: &str = "GatewayStatus";
/// The field manager of server-side applies and the Events' reporting
/// controller.
pub const CONTROLLER: &str = "egret-control";
/// The reason of every problem's Event.
pub const PROBLEM_REASON: &str = "EgretConfigProblem";
/// A config's port pool passed 90% on some node: the Warning Event's
/// reason, and the condition's type and reason.
pub const NEARLY_FULL_REASON: &str = "PortPoolNearlyFull";
/// Every pool of the config is below 85% again: the Normal Event's reason.
pub const RELIEVED_REASON: &str = "PortPoolRelieved";
/// The annotation on a StaticGatewayConfiguration while its port pool is
/// nearly full: a condition, as JSON; absent otherwise.
pub const ANN_PORT_POOL_PRESSURE: &str = "egret.dev/port-pool-pressure";
/// Longest Event note the API server accepts.
const NOTE_MAX: usize = 1024;
/// Events published per pass; the rest follow a second later, so a burst of
/// problems (a start-up with many) does not flood the API server.
const EVENTS_PER_PASS: usize = 50;
const LOG_EVERY: Duration = Duration::from_secs(60);
/// How long an annotation written is taken as written, before the watch
/// shows it.
const PENDING_FOR: Duration = Duration::from_secs(10);

/// (config `namespace/name`, pod public key) → PodEndpoint `namespace/name`.
pub type PeerNames = BTreeMap<(String, WgKey), String>;

/// The anchor's WireGuard interface for a config: `wg-<port>`.
pub fn interface_name(port: u16) -> String {
    format!("wg-{port}")
}

/// Node `node`'s GatewayStatus in `namespace`, field for field as
/// kube-egress-gateway's `api/v1alpha1` defines it, from the plan its
/// gateway applied: each tunnelled config as a ready gateway configuration,
/// each of their pods with a key as a ready peer, both sorted. A peer whose
/// PodEndpoint is no longer known (deleted since the plan was applied, its
/// gateway not yet on the next plan) is still listed, without
/// `podEndpoint`, as the anchor's own peer clean-up writes the peers it
/// keeps. The ownerReference to the Node (so the object goes with it) needs
/// the Node's UID and is left out without one.
pub fn gateway_status(
    namespace: &str,
    node: &str,
    node_uid: Option<&str>,
    applied: &Plan,
    peer_names: &PeerNames,
) -> Value {
    let interfaces: BTreeMap<&str, String> = applied
        .configs
        .iter()
        .filter_map(|c| c.tunnel.as_ref().map(|t| (c.name.as_str(), interface_name(t.port))))
        .collect();
    let configs: Vec<Value> = interfaces
        .iter()
        .map(|(config, interface)| json!({"staticGatewayConfiguration": config, "interfaceName": interface}))
        .collect();
    let mut peers: Vec<(Option<&str>, &str, String)> = applied
        .bindings
        .iter()
        .filter_map(|b| {
            let key = b.public_key?;
            let interface = interfaces.get(&*b.config)?;
            let name = peer_names.get(&(b.config.to_string(), key)).map(String::as_str);
            Some((name, interface.as_str(), key.to_string()))
        })
        .collect();
    peers.sort();
    let peers: Vec<Value> = peers
        .into_iter()
        .map(|(name, interface, key)| {
            let mut p = json!({"interfaceName": interface, "publicKey": key});
            if let Some(name) = name {
                p["podEndpoint"] = json!(name);
            }
            p
        })
        .collect();
    // The anchor's fields are omitempty: an empty list is left out, which a
    // server-side apply then clears.
    let mut spec = json!({});
    if !configs.is_empty() {
        spec["readyGatewayConfigurations"] = json!(configs);
    }
    if !peers.is_empty() {
        spec["readyPeerConfigurations"] = json!(peers);
    }
    let mut metadata = json!({"name": node, "namespace": namespace});
    if let Some(uid) = node_uid {
        metadata["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
    }
    json!({
        "apiVersion": format!("{SGC_GROUP}/{SGC_VERSION}"),
        "kind": GATEWAY_STATUS_KIND,
        "metadata": metadata,
        "spec": spec,
    })
}

/// The API version of the kinds problems name; None for others.
fn api_version(kind: &str) -> Option<String> {
    match kind {
        SGC_KIND | POD_ENDPOINT_KIND | VM_CONFIG_KIND => Some(format!("{SGC_GROUP}/{SGC_VERSION}")),
        POLICY_KIND => Some("egret.dev/v1alpha1".into()),
        NETWORK_POLICY_KIND => Some(format!("{NETWORK_POLICY_GROUP}/{NETWORK_POLICY_VERSION}")),
        "Pod" | "Node" | "Secret" => Some("v1".into()),
        _ => None,
    }
}

/// The Warning Event for a problem, regarding the object it names
/// (`Kind namespace/name`, or `Kind name` for cluster-scoped ones), with
/// `uid` when known. None when the problem names no object Events can
/// regard.
pub fn problem_event(p: &Problem, uid: Option<&str>) -> Option<(Event, ObjectReference)> {
    let regarding = object_reference(&p.object, uid)?;
    let mut note = p.message.clone();
    crate::truncate_utf8(&mut note, NOTE_MAX);
    let event = Event {
        type_: EventType::Warning,
        reason: PROBLEM_REASON.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    Some((event, regarding))
}

/// A reference to `Kind namespace/name` (`Kind name`), with `uid` when
/// known; None for kinds of unknown API version and names empty.
fn object_reference(object: &str, uid: Option<&str>) -> Option<ObjectReference> {
    let (kind, key) = object.split_once(' ')?;
    let (namespace, name) = match key.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name),
        None => (None, key),
    };
    if name.is_empty() {
        return None;
    }
    Some(ObjectReference {
        api_version: Some(api_version(kind)?),
        kind: Some(kind.to_string()),
        name: Some(name.to_string()),
        namespace,
        uid: uid.map(str::to_string),
        ..Default::default()
    })
}

/// The `egret.dev/port-pool-pressure` annotation while `pool` is nearly
/// full (since `since`): a condition, as JSON.
pub fn pressure_condition(pool: &PoolUse, since: Timestamp) -> String {
    json!({
        "type": NEARLY_FULL_REASON,
        "status": "True",
        "reason": NEARLY_FULL_REASON,
        "message": format!("{}, past {NEARLY_FULL_PERCENT}%", pool.describe()),
        "lastTransitionTime": since.to_string(),
    })
    .to_string()
}

/// The Event on config `config` (`namespace/name`): Warning when its pool
/// is nearly full (`pool`: the one that passed 90%), Normal when relieved
/// (`pool`: the fullest now, when known).
pub fn pressure_event(
    config: &str,
    uid: Option<&str>,
    nearly_full: bool,
    pool: Option<&PoolUse>,
) -> Option<(Event, ObjectReference)> {
    let regarding = object_reference(&Problem::object_name(SGC_KIND, config), uid)?;
    let fullest = pool.map(PoolUse::describe);
    let (type_, reason, mut note) = if nearly_full {
        let note = format!(
            "port pool nearly full: {}, past {NEARLY_FULL_PERCENT}%; new flows are refused once it is full \
             (egretctl ports; more egress addresses or gateway nodes make room)",
            fullest.unwrap_or_default()
        );
        (EventType::Warning, NEARLY_FULL_REASON, note)
    } else {
        let mut note = format!("port pool below {RELIEVED_PERCENT}% on every node again");
        if let Some(f) = fullest {
            note += &format!(" (fullest: {f})");
        }
        (EventType::Normal, RELIEVED_REASON, note)
    };
    crate::truncate_utf8(&mut note, NOTE_MAX);
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Monitor".into(), secondary: None };
    Some((event, regarding))
}

#[derive(Clone, Debug)]
pub struct StatusOptions {
    /// Where GatewayStatus objects are written.
    pub namespace: String,
    /// How long a failed write waits before it is tried again.
    pub retry: Duration,
    /// Whether this replica may write, asked before every write (one
    /// writer among replicas: [`crate::leader`]). Default: the only one.
    pub leader: Leadership,
    /// How often port pool pressure is taken from the gateways' reports.
    pub pressure_every: Duration,
}

impl Default for StatusOptions {
    fn default() -> StatusOptions {
        StatusOptions {
            namespace: STATUS_NAMESPACE.into(),
            retry: Duration::from_secs(5),
            leader: Leadership::sole(),
            pressure_every: Duration::from_secs(5),
        }
    }
}

/// One kind of write: after a failure it waits before trying again, and
/// warns at most once a minute (a missing CRD or RBAC rule fails every try).
struct Writes {
    what: &'static str,
    not_before: Option<Instant>,
    warned: Option<Instant>,
}

impl Writes {
    fn new(what: &'static str) -> Writes {
        Writes { what, not_before: None, warned: None }
    }

    fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    fn failed(&mut self, after: Duration, object: &str, e: &kube::Error) {
        let now = Instant::now();
        self.not_before = Some(now + after);
        if self.warned.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            let retry_s = after.as_secs_f32();
            tracing::warn!(object, error = %e, retry_s, "writing {} failed; retrying (this warning: once a minute)", self.what);
            self.warned = Some(now);
        } else {
            tracing::debug!(object, error = %e, "writing {} failed", self.what);
        }
    }

    /// A pass with no failure: the wait, if any, is over.
    fn succeeded(&mut self, wrote: bool) {
        if self.not_before.take().is_some() && wrote {
            tracing::info!("writing {} works again", self.what);
        }
    }
}

/// What has been written, so that only changes are.
struct Writer {
    client: kube::Client,
    statuses: Api<DynamicObject>,
    recorder: Recorder,
    opts: StatusOptions,
    /// Node → its GatewayStatus as last applied.
    written: BTreeMap<String, Value>,
    /// Problems already published (or naming nothing to publish on).
    reported: BTreeSet<Problem>,
    status_writes: Writes,
    event_writes: Writes,
    /// Port pool pressure, followed whether leading or not.
    pressure: Pressure,
    /// Each config's fullest pool, as last reported.
    latest: BTreeMap<String, PoolUse>,
    /// Config → the annotation this leader last wrote (None: removed), and
    /// when: trusted over the snapshot until the watch shows it, or for
    /// [`PENDING_FOR`].
    pending: BTreeMap<String, (Option<String>, Instant)>,
    pressure_writes: Writes,
}

/// The GatewayStatus resource (`gatewaystatuses`).
fn gateway_status_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(SGC_GROUP, SGC_VERSION, GATEWAY_STATUS_KIND))
}

impl Writer {
    /// Takes port pool pressure from the gateways' latest reports.
    fn follow_pressure(&mut self, state: &ControlState) {
        let usage = state.port_usage();
        self.latest = fullest(usage.iter().map(|(node, u)| (node.as_str(), u)));
        let snap = state.snapshot();
        let exists = |config: &str| snap.generation == 0 || snap.reconciled.configs.iter().any(|c| c.name == config);
        for (config, change) in self.pressure.update(&self.latest, exists) {
            match change {
                Change::NearlyFull(p) => tracing::warn!(config, "port pool nearly full: {}", p.describe()),
                Change::Relieved(p) => tracing::info!(config, "port pool relieved: {}", p.describe()),
            }
        }
    }

    /// Publishes each config's pressure where its annotation, as the
    /// cluster has it (or as this leader just wrote it), says otherwise:
    /// the annotation is set (a Warning Event) or removed (a Normal one).
    /// The annotation is the state leaders share: a new leader neither
    /// warns again of a pool its predecessor warned of nor misses the
    /// relief of one. True when more are left than a pass writes.
    async fn write_pressure(&mut self, snap: &Snapshot) -> bool {
        let known: BTreeSet<&str> = snap.reconciled.configs.iter().map(|c| c.name.as_str()).collect();
        let now = Instant::now();
        self.pending.retain(|c, (value, at)| {
            known.contains(c.as_str())
                && now.duration_since(*at) < PENDING_FOR
                && snap.pressure_annotations.get(c) != value.as_ref()
        });
        if !self.pressure_writes.due(now) {
            return false;
        }
        let sgcs = ApiResource::from_gvk(&GroupVersionKind::gvk(SGC_GROUP, SGC_VERSION, SGC_KIND));
        let mut wrote = 0;
        for config in known {
            let full = self.pressure.nearly_full().get(config);
            let annotated = match self.pending.get(config) {
                Some((value, _)) => value.is_some(),
                None => snap.pressure_annotations.contains_key(config),
            };
            if annotated == full.is_some() {
                continue;
            }
            if wrote == EVENTS_PER_PASS {
                self.pressure_writes.succeeded(true);
                return true;
            }
            let Some((namespace, name)) = config.split_once('/') else { continue };
            if !self.opts.leader.is_leader() {
                return false;
            }
            let value = full.map(|(pool, since)| pressure_condition(pool, *since));
            let patch = json!({"metadata": {"annotations": {ANN_PORT_POOL_PRESSURE: value}}});
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &sgcs);
            let object = Problem::object_name(SGC_KIND, config);
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                // Deleted since: nothing to publish on.
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => {
                    self.pressure_writes.failed(self.opts.retry, &object, &e);
                    return false;
                }
            }
            wrote += 1;
            let uid = snap.object_uids.get(&object).map(String::as_str);
            let pool = full.map(|(pool, _)| pool).or(self.latest.get(config));
            if let Some((event, regarding)) = pressure_event(config, uid, full.is_some(), pool) {
                if !self.opts.leader.is_leader() {
                    return false;
                }
                if let Err(e) = self.recorder.publish(&event, &regarding).await {
                    // Tried again with the annotation (the same value).
                    self.pressure_writes.failed(self.opts.retry, &object, &e);
                    return false;
                }
            }
            self.pending.insert(config.to_string(), (value, Instant::now()));
        }
        self.pressure_writes.succeeded(wrote > 0);
        false
    }

    /// Applies every gateway node's GatewayStatus that changed; after a
    /// failure the rest wait for the retry.
    async fn write_statuses(&mut self, state: &ControlState, snap: &Snapshot) {
        // Nodes no longer gateways are forgotten, so they are written whole
        // should they come back (their objects go with the Node).
        self.written.retain(|node, _| snap.plans.contains_key(node));
        if !self.status_writes.due(Instant::now()) {
            return;
        }
        let mut wrote = false;
        for node in snap.plans.keys() {
            let Some(applied) = state.applied_plan(node) else { continue };
            let uid = snap.object_uids.get(&Problem::object_name("Node", node)).map(String::as_str);
            let status = gateway_status(&self.opts.namespace, node, uid, &applied.plan, &snap.peer_names);
            if self.written.get(node) == Some(&status) {
                continue;
            }
            if !self.opts.leader.is_leader() {
                return;
            }
            let params = PatchParams::apply(CONTROLLER).force();
            match self.statuses.patch(node, &params, &Patch::Apply(&status)).await {
                Ok(_) => {
                    tracing::debug!(node, version = applied.version, "GatewayStatus written");
                    self.written.insert(node.clone(), status);
                    wrote = true;
                }
                Err(e) => {
                    let object = format!("{GATEWAY_STATUS_KIND} {}/{node}", self.opts.namespace);
                    self.status_writes.failed(self.opts.retry, &object, &e);
                    return;
                }
            }
        }
        self.status_writes.succeeded(wrote);
    }

    /// Publishes an Event for each problem not published yet; after a
    /// failure the rest wait for the retry. True when more are left than a
    /// pass publishes.
    async fn publish_events(&mut self, snap: &Snapshot) -> bool {
        let current: BTreeSet<&Problem> = snap.reconciled.problems.iter().collect();
        // A problem that went away is new again should it come back.
        self.reported.retain(|p| current.contains(p));
        if !self.event_writes.due(Instant::now()) {
            return false;
        }
        let mut published = 0;
        for p in current {
            if self.reported.contains(p) {
                continue;
            }
            if published == EVENTS_PER_PASS {
                self.event_writes.succeeded(true);
                return true;
            }
            if let Some((event, regarding)) = problem_event(p, snap.object_uids.get(&p.object).map(String::as_str)) {
                if !self.opts.leader.is_leader() {
                    return false;
                }
                if let Err(e) = self.recorder.publish(&event, &regarding).await {
                    self.event_writes.failed(self.opts.retry, &p.object, &e);
                    return false;
                }
                published += 1;
            }
            self.reported.insert(p.clone());
        }
        self.event_writes.succeeded(published > 0);
        false
    }
}

/// Writes GatewayStatus objects and problem Events forever: on every
/// snapshot and every applied plan, and again after a failed write; only
/// while `opts.leader` says this replica leads. A replica that becomes
/// leader writes every GatewayStatus and current problem's Event afresh
/// (what another leader wrote is not known here; an apply of the same
/// status changes nothing).
pub async fn write_status(state: Arc<ControlState>, client: kube::Client, opts: StatusOptions) {
    let mut leader = opts.leader.clone();
    let mut w = Writer {
        statuses: Api::namespaced_with(client.clone(), &opts.namespace, &gateway_status_resource()),
        recorder: Recorder::new(client.clone(), Reporter::from(CONTROLLER)),
        client,
        opts,
        written: BTreeMap::new(),
        reported: BTreeSet::new(),
        status_writes: Writes::new("GatewayStatus"),
        event_writes: Writes::new("problem Events"),
        pressure: Pressure::default(),
        latest: BTreeMap::new(),
        pending: BTreeMap::new(),
        pressure_writes: Writes::new("port pool pressure"),
    };
    let mut snapshots = state.watch();
    let mut applied = state.watch_applied();
    loop {
        if !leader.is_leader() {
            w.written.clear();
            w.reported.clear();
            w.pending.clear();
            // Pressure is followed meanwhile, so a new leader knows it.
            loop {
                tokio::select! {
                    _ = leader.until_leader() => break,
                    _ = tokio::time::sleep(w.opts.pressure_every) => w.follow_pressure(&state),
                }
            }
        }
        let snap = snapshots.borrow_and_update().clone();
        applied.borrow_and_update();
        w.follow_pressure(&state);
        // Generation 0: the source has not listed the cluster yet.
        let mut more_events = false;
        if snap.generation > 0 {
            w.write_statuses(&state, &snap).await;
            more_events = w.publish_events(&snap).await;
            more_events |= w.write_pressure(&snap).await;
        }
        let again = [
            w.status_writes.not_before,
            w.event_writes.not_before,
            w.pressure_writes.not_before,
            more_events.then(|| Instant::now() + Duration::from_secs(1)),
            Some(Instant::now() + w.opts.pressure_every),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = applied.changed() => if r.is_err() { return },
            _ = leader.until_lost() => {}
            _ = async {
                match again {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egret_plan::{Binding, GatewayConfig, TunnelConfig, WgSecret};

    const PRIVATE: [u8; 32] = [7; 32];

    fn key(b: u8) -> WgKey {
        WgKey([b; 32])
    }

    fn plan() -> Plan {
        let mut blue = GatewayConfig::new("apps/blue", vec!["198.19.100.1/32".parse().unwrap()]);
        blue.tunnel = Some(TunnelConfig {
            address: "198.18.50.100".parse().unwrap(),
            port: 6000,
            private_key: WgSecret(PRIVATE),
        });
        let plain = GatewayConfig::new("apps/plain", vec!["198.19.101.1/32".parse().unwrap()]);
        let bind = |ip: &str, config: &str, k: Option<WgKey>| Binding {
            pod_ip: ip.parse().unwrap(),
            config: config.into(),
            public_key: k,
        };
        Plan {
            network_policies: Vec::new(),
            version: 3,
            configs: vec![plain, blue],
            bindings: vec![
                bind("198.18.0.4", "apps/blue", Some(key(2))),
                bind("198.18.0.3", "apps/blue", Some(key(1))),
                bind("198.18.0.5", "apps/plain", None),
            ]
            .into(),
        }
    }

    #[test]
    fn gateway_status_has_the_anchors_shape() {
        let names: PeerNames = [(("apps/blue".to_string(), key(1)), "apps/web".to_string())].into();
        let got = gateway_status("kube-egress-gateway-system", "gw-0", Some("uid-gw-0"), &plan(), &names);
        let want = json!({
            "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
            "kind": "GatewayStatus",
            "metadata": {"name": "gw-0", "namespace": "kube-egress-gateway-system",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "gw-0", "uid": "uid-gw-0"}]},
            "spec": {
                // Only the tunnelled config; the plain one has no interface.
                "readyGatewayConfigurations": [{"staticGatewayConfiguration": "apps/blue", "interfaceName": "wg-6000"}],
                // Sorted: the unnamed peer (its PodEndpoint gone) first, without podEndpoint.
                "readyPeerConfigurations": [
                    {"interfaceName": "wg-6000", "publicKey": key(2).to_string()},
                    {"podEndpoint": "apps/web", "interfaceName": "wg-6000", "publicKey": key(1).to_string()},
                ],
            },
        });
        assert_eq!(got, want);
        let text = got.to_string();
        assert!(!text.contains(&WgSecret(PRIVATE).public_key().to_string()), "not even the config's own key");
        use base64::Engine;
        assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(PRIVATE)), "no private key");
    }

    #[test]
    fn gateway_status_without_tunnels_or_node_uid_leaves_out_what_is_empty() {
        let mut p = plan();
        p.configs.retain(|c| c.tunnel.is_none());
        let got = gateway_status("ns", "gw-1", None, &p, &PeerNames::new());
        assert_eq!(
            got,
            json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayStatus",
                "metadata": {"name": "gw-1", "namespace": "ns"}, "spec": {}})
        );
    }

    #[test]
    fn problem_events_regard_the_object_named() {
        let p = Problem::new(
            SGC_KIND,
            "apps/blue",
            "Secret kube-egress-gateway-system/sgw-1 (the private key) is not there",
        );
        let (event, r) = problem_event(&p, Some("uid-blue")).unwrap();
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, "EgretConfigProblem");
        assert_eq!(event.note.as_deref(), Some(p.message.as_str()));
        assert_eq!(
            (r.api_version.as_deref(), r.kind.as_deref(), r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (
                Some("egressgateway.kubernetes.azure.com/v1alpha1"),
                Some(SGC_KIND),
                Some("apps"),
                Some("blue"),
                Some("uid-blue")
            )
        );

        let (_, r) = problem_event(&Problem::new("Node", "gw-0", "defined more than once"), None).unwrap();
        assert_eq!((r.api_version.as_deref(), r.namespace, r.name.as_deref()), (Some("v1"), None, Some("gw-0")));
        let (_, r) = problem_event(&Problem::new(POLICY_KIND, "apps/deny", "bad rule"), None).unwrap();
        assert_eq!(r.api_version.as_deref(), Some("egret.dev/v1alpha1"));
        let (_, r) = problem_event(&Problem::new(NETWORK_POLICY_KIND, "apps/lock", "bad cidr"), None).unwrap();
        assert_eq!(
            (r.api_version.as_deref(), r.kind.as_deref()),
            (Some("networking.k8s.io/v1"), Some("NetworkPolicy"))
        );

        let long = Problem::new("Pod", "apps/web", "é".repeat(NOTE_MAX));
        let (event, _) = problem_event(&long, None).unwrap();
        let note = event.note.unwrap();
        assert!(note.len() <= NOTE_MAX && note.chars().all(|c| c == 'é'), "cut at a character boundary");

        assert!(problem_event(&Problem::new("Widget", "apps/x", "?"), None).is_none(), "no API version known");
        assert!(problem_event(&Problem { object: "nonsense".into(), message: "?".into() }, None).is_none());
    }
}
