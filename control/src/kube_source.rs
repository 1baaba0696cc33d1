//! The Kubernetes source: list/watch StaticGatewayConfigurations, Pods
//! (keeping those with the gateway annotation), gateway Nodes, Egret's
//! EgressPolicies, kube-egress-gateway's PodEndpoints (one per tunnelled
//! pod), its GatewayVMConfigurations (each node's own address per config) and the Secrets that hold configs' WireGuard keys (only in the
//! add-on's namespaces, and only those with a `PrivateKey`: others are
//! dropped as they arrive) with kube-rs watchers, which resume from the last
//! resourceVersion after a disconnect, follow bookmarks, and re-list when the
//! API server answers 410 Gone. Objects are read as untyped JSON and decoded
//! into `egret_cluster` types, so the objects of
//! Azure/kube-egress-gateway are accepted unchanged.

use crate::state::ControlState;
use egret_cluster::{
    ClusterState, EgressPolicyObject, GatewayVmConfiguration, Node, Pod, PodEndpoint, Secret,
    StaticGatewayConfiguration, POD_ENDPOINT_KIND, POLICY_KIND, SGC_GROUP, SGC_KIND, SGC_VERSION, VM_CONFIG_KIND,
};
use futures::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Config,
    Pod,
    Node,
    Policy,
    PodEndpoint,
    VmConfig,
    /// Secrets of the n-th namespace in `Options::secret_namespaces`.
    Secret(usize),
}

/// The namespaces kube-egress-gateway keeps its config Secrets in: its Helm
/// chart's and the AKS add-on's.
pub const SECRET_NAMESPACES: [&str; 2] = ["kube-egress-gateway-system", "aks-static-egress-gateway"];

/// What the source watches beyond the fixed kinds.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where config Secrets (`sgw-<UID>`) live; RBAC grants Secret reads
    /// in these namespaces only.
    pub secret_namespaces: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options { secret_namespaces: SECRET_NAMESPACES.iter().map(|s| s.to_string()).collect() }
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
        Kind::Secret(_) => GroupVersionKind::gvk("", "v1", "Secret"),
    };
    ApiResource::from_gvk(&gvk)
}

/// One kind's objects, and its list in progress while a (re)list runs.
#[derive(Default)]
struct Store {
    objects: BTreeMap<String, serde_json::Value>,
    relist: Option<BTreeMap<String, serde_json::Value>>,
    synced: bool,
    /// The last list or watch failed (a CRD not installed, RBAC denying):
    /// an optional kind then holds back nothing.
    failed: bool,
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
        Kind::Config | Kind::Policy | Kind::PodEndpoint | Kind::VmConfig => true,
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
                self.failed = false;
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
/// logged and skipped (it cannot take the others down).
fn cluster_state(stores: &BTreeMap<Kind, Store>) -> ClusterState {
    fn decode<T: serde::de::DeserializeOwned>(s: Option<&Store>, what: &str) -> Vec<T> {
        let mut out = Vec::new();
        for (k, v) in s.map(|s| &s.objects).into_iter().flatten() {
            match serde_json::from_value(v.clone()) {
                Ok(o) => out.push(o),
                Err(e) => {
                    tracing::warn!(object = %format!("{what} {k}"), error = %e, "object does not decode; skipped")
                }
            }
        }
        out
    }
    ClusterState {
        configs: decode::<StaticGatewayConfiguration>(stores.get(&Kind::Config), SGC_KIND),
        pods: decode::<Pod>(stores.get(&Kind::Pod), "Pod"),
        nodes: decode::<Node>(stores.get(&Kind::Node), "Node"),
        policies: decode::<EgressPolicyObject>(stores.get(&Kind::Policy), POLICY_KIND),
        pod_endpoints: decode::<PodEndpoint>(stores.get(&Kind::PodEndpoint), POD_ENDPOINT_KIND),
        vm_configs: decode::<GatewayVmConfiguration>(stores.get(&Kind::VmConfig), VM_CONFIG_KIND),
        secrets: stores
            .iter()
            .filter(|(k, _)| matches!(k, Kind::Secret(_)))
            .flat_map(|(_, s)| decode::<Secret>(Some(s), "Secret"))
            .collect(),
    }
}

/// Plans wait until configs, pods and nodes are listed, and PodEndpoints,
/// GatewayVMConfigurations and Secrets too unless watching them fails (a tunnelled config published
/// before its key would be left out, cutting its pods off for a moment);
/// policies are optional (the CRD may not be installed).
fn ready(stores: &BTreeMap<Kind, Store>) -> bool {
    stores.iter().all(|(k, s)| match k {
        Kind::Config | Kind::Pod | Kind::Node => s.synced,
        Kind::PodEndpoint | Kind::VmConfig | Kind::Secret(_) => s.synced || s.failed,
        Kind::Policy => true,
    })
}

/// Watches the cluster forever with the default options.
pub async fn watch_kubernetes(state: Arc<ControlState>, client: kube::Client) {
    watch_kubernetes_with(state, client, Options::default()).await
}

/// Watches the cluster forever, updating `state` after each burst of
/// events, once [`ready`].
pub async fn watch_kubernetes_with(state: Arc<ControlState>, client: kube::Client, opts: Options) {
    let mut kinds = vec![Kind::Config, Kind::Pod, Kind::Node, Kind::Policy, Kind::PodEndpoint, Kind::VmConfig];
    kinds.extend((0..opts.secret_namespaces.len()).map(Kind::Secret));
    let streams = kinds.iter().map(|&kind| {
        let api: Api<DynamicObject> = match kind {
            Kind::Secret(i) => Api::namespaced_with(client.clone(), &opts.secret_namespaces[i], &resource(kind)),
            _ => Api::all_with(client.clone(), &resource(kind)),
        };
        watcher(api, watcher::Config::default().any_semantic()).default_backoff().map(move |ev| (kind, ev)).boxed()
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
        if ready(&stores) {
            let generation = state.update(&cluster_state(&stores));
            if !published {
                tracing::info!(generation, "cluster state listed; serving plans");
                published = true;
            }
        }
    }
}

fn handle(stores: &mut BTreeMap<Kind, Store>, kind: Kind, ev: Result<watcher::Event<DynamicObject>, watcher::Error>) {
    match ev {
        Ok(ev) => stores.get_mut(&kind).expect("every kind has a store").apply(kind, ev),
        Err(e) => {
            // RBAC denying a Secret namespace, or a CRD not installed: a
            // problem to report, not a reason to stop serving plans.
            stores.get_mut(&kind).expect("every kind has a store").failed = true;
            tracing::warn!(?kind, error = %e, "watch failed; retrying with backoff")
        }
    }
}
