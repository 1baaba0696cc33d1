//! The Kubernetes source: list/watch StaticGatewayConfigurations, Pods
//! (keeping those with the gateway annotation), gateway Nodes and Egret's
//! EgressPolicies with kube-rs watchers, which resume from the last
//! resourceVersion after a disconnect, follow bookmarks, and re-list when the
//! API server answers 410 Gone. Objects are read as untyped JSON and decoded
//! into `egret_dataplane::cluster` types, so the objects of
//! Azure/kube-egress-gateway are accepted unchanged.

use crate::state::ControlState;
use egret_dataplane::cluster::{
    ClusterState, EgressPolicyObject, Node, Pod, StaticGatewayConfiguration, POLICY_KIND, SGC_GROUP, SGC_KIND,
    SGC_VERSION,
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
}

fn resource(kind: Kind) -> ApiResource {
    let gvk = match kind {
        Kind::Config => GroupVersionKind::gvk(SGC_GROUP, SGC_VERSION, SGC_KIND),
        Kind::Pod => GroupVersionKind::gvk("", "v1", "Pod"),
        Kind::Node => GroupVersionKind::gvk("", "v1", "Node"),
        Kind::Policy => GroupVersionKind::gvk("egret.dev", "v1alpha1", POLICY_KIND),
    };
    ApiResource::from_gvk(&gvk)
}

/// One kind's objects, and its list in progress while a (re)list runs.
#[derive(Default)]
struct Store {
    objects: BTreeMap<String, serde_json::Value>,
    relist: Option<BTreeMap<String, serde_json::Value>>,
    synced: bool,
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
        Kind::Config | Kind::Policy => true,
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
        ..ClusterState::default()
    }
}

/// Watches the cluster forever, updating `state` after each burst of
/// events. Plans are first published once configs, pods and nodes have all
/// been listed (policies are optional: the CRD may not be installed).
pub async fn watch_kubernetes(state: Arc<ControlState>, client: kube::Client) {
    let kinds = [Kind::Config, Kind::Pod, Kind::Node, Kind::Policy];
    let streams = kinds.map(|kind| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind));
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
        let ready = [Kind::Config, Kind::Pod, Kind::Node].iter().all(|k| stores[k].synced);
        if ready {
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
        Err(e) => tracing::warn!(?kind, error = %e, "watch failed; retrying with backoff"),
    }
}
