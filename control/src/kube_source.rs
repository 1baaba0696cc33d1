//! The Kubernetes source: list/watch StaticGatewayConfigurations, Pods
//! (keeping those with the gateway annotation), gateway Nodes, Egret's
//! EgressPolicies, NetworkPolicies (all namespaces), kube-egress-gateway's
//! PodEndpoints (one per tunnelled pod), its GatewayVMConfigurations (each
//! node's own address per config) and the Secrets that hold configs'
//! WireGuard keys (only in the add-on's namespaces, and only those with a
//! `PrivateKey`: others are dropped as they arrive) with kube-rs watchers, which resume from the last
//! resourceVersion after a disconnect, follow bookmarks, and re-list when the
//! API server answers 410 Gone. Objects are read as untyped JSON and decoded
//! into `egret_cluster` types, so the objects of
//! Azure/kube-egress-gateway are accepted unchanged.
//!
//! Fail closed: no plan is published until every kind has listed, because a
//! plan made without a kind's objects allows more (no EgressPolicy or
//! NetworkPolicy: every destination) or cuts pods off (no PodEndpoints, Secrets or
//! GatewayVMConfigurations). A failed list is retried with backoff; only an
//! answer meaning "there are none" (`Kind::may_be_absent`) lets a kind go
//! without, and that is reported as a problem. A list or watch that fails
//! later never empties a kind: its last listed objects keep serving.

use crate::state::ControlState;
use egret_cluster::{
    BrokenPolicy, ClusterState, EgressPolicyObject, GatewayVmConfiguration, NetworkPolicyObject, Node, Pod,
    PodEndpoint, Secret, StaticGatewayConfiguration, NETWORK_POLICY_GROUP, NETWORK_POLICY_KIND, NETWORK_POLICY_VERSION,
    POD_ENDPOINT_KIND, POLICY_KIND, SGC_GROUP, SGC_KIND, SGC_VERSION, VM_CONFIG_KIND,
};
use futures::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Config,
    Pod,
    Node,
    Policy,
    PodEndpoint,
    VmConfig,
    /// `networking.k8s.io/v1` NetworkPolicies, all namespaces.
    NetworkPolicy,
    /// Secrets of the n-th namespace in `Options::secret_namespaces`.
    Secret(usize),
}

/// The namespaces kube-egress-gateway keeps its config Secrets in: its Helm
/// chart's and the AKS add-on's.
pub const SECRET_NAMESPACES: [&str; 2] = ["kube-egress-gateway-system", "aks-static-egress-gateway"];

impl Kind {
    /// Whether an API server answer with HTTP status `code` to this kind's
    /// list means there are none to wait for. Configs, pods, nodes and
    /// NetworkPolicies (a built-in API: a 403 is RBAC missing, and a plan
    /// without them allows what they deny) are always needed. A 404 for EgressPolicies is the CRD not installed, so
    /// no policy exists; a 403 is not: a policy that exists but cannot be
    /// read must not be served as none (allow-all). kube-egress-gateway's
    /// kinds may be missing (404) or not granted (403, e.g. one of the
    /// Secret namespaces): what needs them is then left out, fail closed.
    fn may_be_absent(self, code: u16) -> bool {
        match self {
            Kind::Config | Kind::Pod | Kind::Node | Kind::NetworkPolicy => false,
            Kind::Policy => code == 404,
            Kind::PodEndpoint | Kind::VmConfig | Kind::Secret(_) => code == 403 || code == 404,
        }
    }
}

/// What the source watches beyond the fixed kinds.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where config Secrets (`sgw-<UID>`) live; RBAC grants Secret reads
    /// in these namespaces only.
    pub secret_namespaces: Vec<String>,
    /// The first wait before a failed list or watch is retried; it doubles
    /// (with jitter) on each failure in a row, up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            secret_namespaces: SECRET_NAMESPACES.iter().map(|s| s.to_string()).collect(),
            // kube-runtime's default backoff.
            retry_min: Duration::from_millis(800),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff with jitter between a kind's failed attempts, reset
/// by any event it yields.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new(opts: &Options, salt: u64) -> Backoff {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = (now.as_nanos() as u64 ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        Backoff { min: opts.retry_min, max: opts.retry_max.max(opts.retry_min), next: opts.retry_min, seed }
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        // xorshift64: jitter only needs to spread the retries of replicas.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        // Between half and all of the step.
        Some(d / 2 + d.mul_f64((self.seed % 1000) as f64 / 2000.0))
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

fn resource(kind: Kind) -> ApiResource {
    let gvk = match kind {
        Kind::Config => GroupVersionKind::gvk(SGC_GROUP, SGC_VERSION, SGC_KIND),
        Kind::Pod => GroupVersionKind::gvk("", "v1", "Pod"),
        Kind::Node => GroupVersionKind::gvk("", "v1", "Node"),
        Kind::Policy => GroupVersionKind::gvk("egret.dev", "v1alpha1", POLICY_KIND),
        Kind::PodEndpoint => GroupVersionKind::gvk(SGC_GROUP, SGC_VERSION, POD_ENDPOINT_KIND),
        Kind::VmConfig => GroupVersionKind::gvk(SGC_GROUP, SGC_VERSION, VM_CONFIG_KIND),
        Kind::NetworkPolicy => GroupVersionKind::gvk(NETWORK_POLICY_GROUP, NETWORK_POLICY_VERSION, NETWORK_POLICY_KIND),
        Kind::Secret(_) => GroupVersionKind::gvk("", "v1", "Secret"),
    };
    ApiResource::from_gvk(&gvk)
}

/// One kind's objects, and its list in progress while a (re)list runs.
#[derive(Default)]
struct Store {
    /// As last listed and watched; a failure never clears them.
    objects: BTreeMap<String, serde_json::Value>,
    relist: Option<BTreeMap<String, serde_json::Value>>,
    /// Listed at least once.
    synced: bool,
    /// The latest list was answered "there are none" for this kind
    /// (`Kind::may_be_absent`).
    absent: bool,
    /// Why the latest list failed, until one succeeds.
    error: Option<String>,
}

fn key(o: &DynamicObject) -> String {
    format!("{}/{}", o.metadata.namespace.as_deref().unwrap_or(""), o.metadata.name.as_deref().unwrap_or(""))
}

/// Whether Egret needs the object at all (pods without the annotation and
/// nodes that are not gateways are not kept).
fn wanted(kind: Kind, v: &serde_json::Value) -> bool {
    match kind {
        Kind::Pod => serde_json::from_value::<Pod>(v.clone()).is_ok_and(|p| p.gateway_config().is_some()),
        Kind::Node => serde_json::from_value::<Node>(v.clone()).is_ok_and(|n| n.is_gateway()),
        Kind::Secret(_) => v["data"].get("PrivateKey").is_some(),
        Kind::Config | Kind::Policy | Kind::PodEndpoint | Kind::VmConfig | Kind::NetworkPolicy => true,
    }
}

impl Store {
    fn apply(&mut self, kind: Kind, ev: watcher::Event<DynamicObject>) {
        let value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
        match ev {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => {
                let v = value(&o);
                if wanted(kind, &v) {
                    self.relist.get_or_insert_with(BTreeMap::new).insert(key(&o), v);
                }
            }
            watcher::Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.synced = true;
                self.absent = false;
                self.error = None;
            }
            watcher::Event::Apply(o) => {
                let v = value(&o);
                if wanted(kind, &v) {
                    self.objects.insert(key(&o), v);
                } else {
                    self.objects.remove(&key(&o));
                }
            }
            watcher::Event::Delete(o) => {
                self.objects.remove(&key(&o));
            }
        }
    }
}

/// Decodes the stores into cluster state; an object that does not decode is
/// logged and skipped (it cannot take the others down), except an
/// EgressPolicy: skipped, it would leave its config unpoliced, so it is
/// kept as broken and its config is not served.
fn cluster_state(stores: &BTreeMap<Kind, Store>) -> ClusterState {
    fn decode<T: serde::de::DeserializeOwned>(s: Option<&Store>, what: &str) -> Vec<T> {
        decode_or(s, what, |_, _| {})
    }
    fn decode_or<T: serde::de::DeserializeOwned>(
        s: Option<&Store>,
        what: &str,
        mut broken: impl FnMut(&serde_json::Value, String),
    ) -> Vec<T> {
        let mut out = Vec::new();
        for (k, v) in s.map(|s| &s.objects).into_iter().flatten() {
            match serde_json::from_value(v.clone()) {
                Ok(o) => out.push(o),
                Err(e) => {
                    tracing::warn!(object = %format!("{what} {k}"), error = %e, "object does not decode");
                    broken(v, e.to_string());
                }
            }
        }
        out
    }
    let mut broken_policies = Vec::new();
    let policies = decode_or::<EgressPolicyObject>(stores.get(&Kind::Policy), POLICY_KIND, |v, error| {
        broken_policies.push(BrokenPolicy {
            metadata: serde_json::from_value(v["metadata"].clone()).unwrap_or_default(),
            gateway_configuration: v["spec"]["gatewayConfiguration"].as_str().map(str::to_string),
            error,
        })
    });
    ClusterState {
        broken_policies,
        policies,
        configs: decode::<StaticGatewayConfiguration>(stores.get(&Kind::Config), SGC_KIND),
        pods: decode::<Pod>(stores.get(&Kind::Pod), "Pod"),
        nodes: decode::<Node>(stores.get(&Kind::Node), "Node"),
        pod_endpoints: decode::<PodEndpoint>(stores.get(&Kind::PodEndpoint), POD_ENDPOINT_KIND),
        vm_configs: decode::<GatewayVmConfiguration>(stores.get(&Kind::VmConfig), VM_CONFIG_KIND),
        // Only the metadata is decoded here (an API server's always
        // decodes); reconcile reads the spec and fails an unreadable one
        // closed.
        network_policies: decode::<NetworkPolicyObject>(stores.get(&Kind::NetworkPolicy), NETWORK_POLICY_KIND),
        secrets: stores
            .iter()
            .filter(|(k, _)| matches!(k, Kind::Secret(_)))
            .flat_map(|(_, s)| decode::<Secret>(Some(s), "Secret"))
            .collect(),
    }
}

/// The first plans wait until every kind has listed, or been answered that
/// there are none (`Kind::may_be_absent`); any other failure (a 500, a
/// timeout, a refused connection, a list that does not decode) holds them
/// back until a retry lists it.
fn ready(stores: &BTreeMap<Kind, Store>) -> bool {
    stores.values().all(|s| s.synced || s.absent)
}

/// How problems name a kind's list.
fn list_name(kind: Kind, opts: &Options) -> String {
    let r = resource(kind);
    match kind {
        Kind::Secret(i) => format!("{} list (namespace {})", r.kind, opts.secret_namespaces[i]),
        _ => format!("{} list ({}, all namespaces)", r.kind, r.api_version),
    }
}

/// The problem a kind's failing list is, if it fails.
fn list_problem(s: &Store) -> Option<String> {
    let e = s.error.as_ref()?;
    Some(if s.synced {
        format!("listing fails, the objects listed before keep serving: {e}")
    } else if s.absent {
        format!("served as if there were none until it lists: {e}")
    } else {
        format!("not listed yet, no plan is published until it lists: {e}")
    })
}

/// The HTTP status of an API server's answer within `e`, if it has one.
fn api_code(e: &watcher::Error) -> Option<u16> {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s,
        watcher::Error::WatchError(s) => s,
        _ => return None,
    };
    Some(match status.code {
        // A Status without a code: its reason says.
        0 if status.is_not_found() => 404,
        0 if status.is_forbidden() => 403,
        code => code,
    })
}

/// Watches the cluster forever with the default options.
pub async fn watch_kubernetes(state: Arc<ControlState>, client: kube::Client) {
    watch_kubernetes_with(state, client, Options::default()).await
}

/// Watches the cluster forever, updating `state` after each burst of
/// events, once [`ready`].
pub async fn watch_kubernetes_with(state: Arc<ControlState>, client: kube::Client, opts: Options) {
    let mut kinds =
        vec![Kind::Config, Kind::Pod, Kind::Node, Kind::Policy, Kind::PodEndpoint, Kind::VmConfig, Kind::NetworkPolicy];
    kinds.extend((0..opts.secret_namespaces.len()).map(Kind::Secret));
    let streams = kinds.iter().enumerate().map(|(i, &kind)| {
        let api: Api<DynamicObject> = match kind {
            Kind::Secret(i) => Api::namespaced_with(client.clone(), &opts.secret_namespaces[i], &resource(kind)),
            _ => Api::all_with(client.clone(), &resource(kind)),
        };
        let backoff = Backoff::new(&opts, i as u64);
        watcher(api, watcher::Config::default().any_semantic()).backoff(backoff).map(move |ev| (kind, ev)).boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut stores: BTreeMap<Kind, Store> = kinds.iter().map(|k| (*k, Store::default())).collect();
    let mut published = false;
    while let Some((kind, ev)) = events.next().await {
        handle(&mut stores, kind, ev);
        // Drain whatever else is ready, then reconcile once.
        while let Some(Some((kind, ev))) = events.next().now_or_never() {
            handle(&mut stores, kind, ev);
        }
        for (&kind, s) in &stores {
            state.set_source_error(&list_name(kind, &opts), list_problem(s));
        }
        // Once published, every kind holds what it last listed (or, if it
        // never has, what it held at the first publish): later failures
        // hold nothing back.
        if published || ready(&stores) {
            let generation = state.update(&cluster_state(&stores));
            if !published {
                tracing::info!(generation, "cluster state listed; serving plans");
                published = true;
            }
        }
    }
}

fn handle(stores: &mut BTreeMap<Kind, Store>, kind: Kind, ev: Result<watcher::Event<DynamicObject>, watcher::Error>) {
    let s = stores.get_mut(&kind).expect("every kind has a store");
    let e = match ev {
        Ok(ev) => return s.apply(kind, ev),
        Err(e) => e,
    };
    let code = api_code(&e);
    match &e {
        // A list (first or again) failed: the watcher lists again after
        // the backoff; until then this kind holds back the first plans,
        // unless the answer says there are none.
        watcher::Error::InitialListFailed(_) | watcher::Error::NoResourceVersion => {
            s.absent = code.is_some_and(|c| kind.may_be_absent(c));
            s.error = Some(e.to_string());
            tracing::warn!(?kind, ?code, absent = s.absent, error = %e, "list failed; retrying with backoff");
        }
        // Routine: the watcher lists again.
        watcher::Error::WatchError(st) if st.code == 410 => {
            tracing::debug!(?kind, "watch expired (410); listing again")
        }
        // A watch failing once listed: the last listed objects keep
        // serving while the watcher resumes.
        _ => tracing::warn!(?kind, ?code, error = %e, "watch failed; retrying with backoff"),
    }
}
