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

use crate::raw_object::RawObject;
use crate::state::ControlState;
use egret_cluster::{
    BrokenPolicy, ClusterState, EgressPolicyObject, GatewayVmConfiguration, NetworkPolicyObject, Node, Pod,
    PodEndpoint, Secret, StaticGatewayConfiguration, NETWORK_POLICY_GROUP, NETWORK_POLICY_KIND, NETWORK_POLICY_VERSION,
    POD_ENDPOINT_KIND, POLICY_KIND, SGC_GROUP, SGC_KIND, SGC_VERSION, VM_CONFIG_KIND,
};
use futures::StreamExt;
use kube::api::{Api, ApiResource, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// One kind's bookkeeping: which objects it holds in the [`Mirror`], and
/// its list in progress while a (re)list runs.
#[derive(Default)]
struct Store {
    /// The keys of the objects it holds, as last listed and watched; a
    /// failure never clears them.
    keys: BTreeSet<String>,
    relist: Option<Vec<(String, Decoded)>>,
    /// Listed at least once.
    synced: bool,
    /// The latest list was answered "there are none" for this kind
    /// (`Kind::may_be_absent`).
    absent: bool,
    /// Why the latest list failed, until one succeeds.
    error: Option<String>,
}

/// An object decoded into its cluster type, once, as it arrives.
enum Decoded {
    Config(StaticGatewayConfiguration),
    Pod(Pod),
    Node(Node),
    /// An EgressPolicy that does not decode is kept as broken, so its config
    /// is not served (skipped, it would leave its config unpoliced).
    Policy(Result<EgressPolicyObject, BrokenPolicy>),
    PodEndpoint(PodEndpoint),
    VmConfig(GatewayVmConfiguration),
    NetworkPolicy(NetworkPolicyObject),
    Secret(Secret),
}

/// `json` decoded, if Egret needs it at all (pods without the annotation
/// and nodes that are not gateways are not kept); an object that does not
/// decode is logged and left out (it cannot take the others down), except
/// an EgressPolicy (see [`Decoded::Policy`]). Each kind decodes straight
/// from the text into its cluster type: fields Egret does not read (a
/// pod's spec, managedFields) are skipped, never built.
fn decode(kind: Kind, k: &str, json: &str) -> Option<Decoded> {
    fn typed<T: serde::de::DeserializeOwned>(json: &str, what: &str, k: &str) -> Option<T> {
        serde_json::from_str(json)
            .inspect_err(|e| tracing::warn!(object = %format!("{what} {k}"), error = %e, "object does not decode"))
            .ok()
    }
    Some(match kind {
        // Only pods that decode and carry the annotation are wanted, and of
        // them only what Egret reads (every such pod is kept).
        Kind::Pod => {
            let mut pod = serde_json::from_str::<Pod>(json).ok().filter(|p| p.gateway_config().is_some())?;
            pod.keep_only_what_egret_reads();
            Decoded::Pod(pod)
        }
        Kind::Node => Decoded::Node(serde_json::from_str::<Node>(json).ok().filter(|n| n.is_gateway())?),
        Kind::Secret(_) => {
            Decoded::Secret(typed::<Secret>(json, "Secret", k).filter(|s| s.data.contains_key("PrivateKey"))?)
        }
        Kind::Config => Decoded::Config(typed(json, SGC_KIND, k)?),
        Kind::PodEndpoint => Decoded::PodEndpoint(typed(json, POD_ENDPOINT_KIND, k)?),
        Kind::VmConfig => Decoded::VmConfig(typed(json, VM_CONFIG_KIND, k)?),
        // Only the metadata is decoded here (an API server's always
        // decodes); reconcile reads the spec and fails an unreadable one
        // closed.
        Kind::NetworkPolicy => Decoded::NetworkPolicy(typed(json, NETWORK_POLICY_KIND, k)?),
        Kind::Policy => Decoded::Policy(serde_json::from_str::<EgressPolicyObject>(json).map_err(|e| {
            tracing::warn!(object = %format!("{POLICY_KIND} {k}"), error = %e, "object does not decode");
            broken_policy(k, json, e.to_string())
        })),
    })
}

/// An EgressPolicy `k` (`namespace/name`) that does not decode: its name
/// from the key, and the config it names if that much reads. Only that is
/// read, shallowly: the rest may be what failed (a `podSelector` nested
/// past any parser's depth limit), and a policy whose target is lost must
/// not leave its config served without it.
fn broken_policy(k: &str, json: &str, error: String) -> BrokenPolicy {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Target {
        gateway_configuration: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Spec {
        spec: Target,
    }
    let (namespace, name) = k.split_once('/').unwrap_or(("", k));
    let metadata = egret_cluster::ObjectMeta {
        name: name.to_string(),
        namespace: Some(namespace.to_string()).filter(|n| !n.is_empty()),
        ..Default::default()
    };
    let gateway_configuration = serde_json::from_str::<Spec>(json).ok().and_then(|s| s.spec.gateway_configuration);
    BrokenPolicy { metadata, gateway_configuration, error }
}

/// Where each object sits in one of the cluster state's lists, so that a
/// watch event changes one entry in place (the lists' order carries no
/// meaning: reconcile sorts what it needs sorted).
#[derive(Default)]
struct Slot {
    keys: Vec<String>,
    at: HashMap<String, usize>,
}

impl Slot {
    fn put<T>(&mut self, list: &mut Vec<T>, k: &str, o: T) {
        match self.at.get(k) {
            Some(&i) => list[i] = o,
            None => {
                self.at.insert(k.to_string(), list.len());
                self.keys.push(k.to_string());
                list.push(o);
            }
        }
    }

    fn remove<T>(&mut self, list: &mut Vec<T>, k: &str) {
        let Some(i) = self.at.remove(k) else { return };
        list.swap_remove(i);
        self.keys.swap_remove(i);
        if let Some(moved) = self.keys.get(i) {
            self.at.insert(moved.clone(), i);
        }
    }
}

/// The cluster state every kind's stores make, kept up to date event by
/// event rather than decoded whole again on each change.
#[derive(Default)]
struct Mirror {
    st: ClusterState,
    /// One per list of `st`: configs, pods, nodes, policies, broken
    /// policies, PodEndpoints, VM configs, NetworkPolicies, Secrets.
    slots: [Slot; 9],
    /// What changed since the last reconcile: the pods by key, and whether
    /// anything else did (then the whole cluster is reconciled).
    changed_pods: BTreeSet<String>,
    changed_other: bool,
}

impl Mirror {
    /// Pod changes since the last reconcile, with each pod as it is now;
    /// `None` when anything but pods changed.
    fn pod_changes(&self) -> Option<Vec<(String, Option<&egret_cluster::Pod>)>> {
        if self.changed_other {
            return None;
        }
        let now = |k: &str| self.slots[1].at.get(k).map(|&i| &self.st.pods[i]);
        Some(self.changed_pods.iter().map(|k| (k.clone(), now(k))).collect())
    }

    fn note(&mut self, pod: bool, k: &str) {
        if pod {
            self.changed_pods.insert(k.to_string());
        } else {
            self.changed_other = true;
        }
    }

    fn remove(&mut self, kind: Kind, k: &str) {
        self.note(kind == Kind::Pod, k);
        let st = &mut self.st;
        let s = &mut self.slots;
        match kind {
            Kind::Config => s[0].remove(&mut st.configs, k),
            Kind::Pod => s[1].remove(&mut st.pods, k),
            Kind::Node => s[2].remove(&mut st.nodes, k),
            Kind::Policy => {
                s[3].remove(&mut st.policies, k);
                s[4].remove(&mut st.broken_policies, k);
            }
            Kind::PodEndpoint => s[5].remove(&mut st.pod_endpoints, k),
            Kind::VmConfig => s[6].remove(&mut st.vm_configs, k),
            Kind::NetworkPolicy => s[7].remove(&mut st.network_policies, k),
            Kind::Secret(_) => s[8].remove(&mut st.secrets, k),
        }
    }

    fn put(&mut self, k: &str, o: Decoded) {
        self.note(matches!(o, Decoded::Pod(_)), k);
        let st = &mut self.st;
        let s = &mut self.slots;
        match o {
            Decoded::Config(o) => s[0].put(&mut st.configs, k, o),
            Decoded::Pod(o) => s[1].put(&mut st.pods, k, o),
            Decoded::Node(o) => s[2].put(&mut st.nodes, k, o),
            Decoded::Policy(Ok(o)) => {
                s[4].remove(&mut st.broken_policies, k);
                s[3].put(&mut st.policies, k, o)
            }
            Decoded::Policy(Err(b)) => {
                s[3].remove(&mut st.policies, k);
                s[4].put(&mut st.broken_policies, k, b)
            }
            Decoded::PodEndpoint(o) => s[5].put(&mut st.pod_endpoints, k, o),
            Decoded::VmConfig(o) => s[6].put(&mut st.vm_configs, k, o),
            Decoded::NetworkPolicy(o) => s[7].put(&mut st.network_policies, k, o),
            Decoded::Secret(o) => s[8].put(&mut st.secrets, k, o),
        }
    }
}

impl Store {
    /// Drops object `k` from the mirror; whether it was kept.
    fn forget(&mut self, mirror: &mut Mirror, kind: Kind, k: &str) -> bool {
        mirror.remove(kind, k);
        self.keys.remove(k)
    }

    /// Applies `ev`; whether the mirror changed (a list starting or in
    /// progress changes nothing until it is done).
    fn apply(&mut self, mirror: &mut Mirror, kind: Kind, ev: watcher::Event<RawObject>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.relist = Some(Vec::new());
                return false;
            }
            watcher::Event::InitApply(o) => {
                let k = o.key();
                let relist = self.relist.get_or_insert_with(Vec::new);
                // What Egret does not keep is gone below with whatever
                // else the list no longer holds.
                if let Some(d) = decode(kind, &k, o.json.get()) {
                    relist.push((k, d));
                }
                return false;
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let mut keys = BTreeSet::new();
                for (k, d) in listed {
                    mirror.put(&k, d);
                    keys.insert(k);
                }
                for gone in self.keys.difference(&keys) {
                    mirror.remove(kind, gone);
                }
                self.keys = keys;
                self.synced = true;
                self.absent = false;
                self.error = None;
            }
            watcher::Event::Apply(o) => {
                let k = o.key();
                match decode(kind, &k, o.json.get()) {
                    Some(d) => {
                        mirror.put(&k, d);
                        self.keys.insert(k);
                    }
                    // An object Egret does not keep (a pod without the
                    // annotation): a change only if it was kept before.
                    None => return self.forget(mirror, kind, &k),
                }
            }
            watcher::Event::Delete(o) => return self.forget(mirror, kind, &o.key()),
        }
        true
    }
}

/// Watch events read ahead of the reconcile at most.
const WATCH_EVENTS_QUEUED: usize = 4096;

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
        let api: Api<RawObject> = match kind {
            Kind::Secret(i) => Api::namespaced_with(client.clone(), &opts.secret_namespaces[i], &resource(kind)),
            _ => Api::all_with(client.clone(), &resource(kind)),
        };
        let backoff = Backoff::new(&opts, i as u64);
        watcher(api, watcher::Config::default().any_semantic()).backoff(backoff).map(move |ev| (kind, ev)).boxed()
    });
    // The watch streams are read by a task of their own, so that events
    // keep arriving while a reconcile runs: each reconcile then takes every
    // event that came in meanwhile, rather than the one event an HTTP body
    // hands over at a time (one reconcile per event falls behind a churn).
    let mut events = futures::stream::select_all(streams);
    // Bounded: a reconcile that falls behind holds the watches back (the
    // API server's streams wait), rather than queueing events without end.
    let (tx, mut rx) = tokio::sync::mpsc::channel(WATCH_EVENTS_QUEUED);
    let reader = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _reader = AbortOnDrop(reader);
    let mut stores: BTreeMap<Kind, Store> = kinds.iter().map(|k| (*k, Store::default())).collect();
    let mut mirror = Mirror::default();
    // Each kind is kept by namespace/name (`Slot`).
    mirror.st.keys_unique = true;
    let mut published = false;
    while let Some((kind, ev)) = rx.recv().await {
        let mut changed = handle(&mut stores, &mut mirror, kind, ev);
        // Drain whatever else is ready, then reconcile once.
        let mut batch = 1;
        while let Ok((kind, ev)) = rx.try_recv() {
            changed |= handle(&mut stores, &mut mirror, kind, ev);
            batch += 1;
        }
        let started = std::time::Instant::now();
        for (&kind, s) in &stores {
            state.set_source_error(&list_name(kind, &opts), list_problem(s));
        }
        // Once published, every kind holds what it last listed (or, if it
        // never has, what it held at the first publish): later failures
        // hold nothing back.
        // Once published, only objects listed or watched change plans: a
        // batch of failures alone (a kind that is not installed, retried
        // with backoff) reports them above and reconciles nothing.
        if (published && changed) || (!published && ready(&stores)) {
            // A reconcile of a large cluster holds its thread for a while:
            // on a multi-threaded runtime the thread's other tasks (the
            // watch reader, the plan streams) move to another meanwhile.
            // Pods alone changed: applied to the last reconcile where that
            // holds (ControlState::update_pods), else reconciled whole.
            let update = || match published.then(|| mirror.pod_changes()).flatten() {
                Some(changes) => state.update_pods(&mirror.st, &changes),
                None => state.update(&mirror.st),
            };
            let generation = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(update),
                _ => update(),
            };
            tracing::debug!(batch, generation, ms = started.elapsed().as_millis() as u64, "reconciled");
            mirror.changed_pods.clear();
            mirror.changed_other = false;
            if !published {
                tracing::info!(generation, "cluster state listed; serving plans");
                published = true;
            }
        }
    }
}

fn handle(
    stores: &mut BTreeMap<Kind, Store>,
    mirror: &mut Mirror,
    kind: Kind,
    ev: Result<watcher::Event<RawObject>, watcher::Error>,
) -> bool {
    let s = stores.get_mut(&kind).expect("every kind has a store");
    let e = match ev {
        Ok(ev) => return s.apply(mirror, kind, ev),
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
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_kept_with_only_what_egret_reads() {
        let json = r#"{"metadata":{"name":"p","namespace":"apps","annotations":{
            "kubernetes.azure.com/static-gateway-configuration":"egress",
            "kubectl.kubernetes.io/last-applied-configuration":"{\"a\":1}"}},
            "spec":{"containers":[{"name":"c"}]},
            "status":{"podIP":"198.18.0.2","podIPs":[{"ip":"198.18.0.2"}],"hostIP":"198.18.5.5"}}"#;
        let Some(Decoded::Pod(p)) = decode(Kind::Pod, "apps/p", json) else { panic!("an annotated pod is kept") };
        assert_eq!(p.gateway_config().as_deref(), Some("apps/egress"));
        assert_eq!(p.metadata.annotations.iter().count(), 1);
        assert_eq!(p.ipv4s(), ["198.18.0.2".parse::<std::net::Ipv4Addr>().unwrap()]);
        assert_eq!((p.status.pod_ip, p.status.host_ip), (None, None), "podIPs says it");
    }

    #[test]
    fn a_policy_nested_past_the_parsers_depth_still_names_its_config() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let json = format!(
            r#"{{"metadata":{{"name":"p","namespace":"apps"}},"spec":{{"gatewayConfiguration":"blue",
            "rules":[{{"name":"r","action":"allow","podSelector":{{"matchLabels":{{}},"x":{deep}}}}}]}}}}"#
        );
        let Some(Decoded::Policy(Err(b))) = decode(Kind::Policy, "apps/p", &json) else {
            panic!("kept as a broken policy")
        };
        assert_eq!((b.metadata.key(), b.gateway_configuration.as_deref()), ("apps/p".to_string(), Some("blue")));
    }
}
