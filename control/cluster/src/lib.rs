//! Cluster state → plans. Reads the objects of AKS Static Egress Gateway —
//! `StaticGatewayConfiguration` (accepted unchanged from
//! Azure/kube-egress-gateway's `api/v1alpha1`), Pods annotated with
//! `kubernetes.azure.com/static-gateway-configuration`, gateway Nodes — plus
//! Egret's own `EgressPolicy`, as `kubectl get -o yaml` prints them, and turns
//! them into plans, with the `networking.k8s.io/v1` NetworkPolicies that
//! select the pods they bind. Pure apart from reading files.
//!
//! - [`objects`]: the object model and YAML/JSON parsing (single objects,
//!   multi-document files, `kind: List`, directories; unknown kinds ignored).
//! - [`reconcile`]: one plan per gateway node ([`reconcile()`]), or one plan
//!   holding everything for a standalone gateway ([`standalone_plan`]).
//! - `network_policies`: Kubernetes NetworkPolicies' egress rules compiled
//!   for the pods each plan binds (fail closed: one that cannot be read
//!   denies its pods everything).
//!
//! Egret's knobs ride on a config as annotations, so the upstream CRD needs
//! no change: `egret.dev/mapping` (`endpoint-independent` | `port-reuse`),
//! `egret.dev/filtering` (`endpoint-dependent` | `endpoint-independent`),
//! `egret.dev/port-quota` (ports per pod), `egret.dev/timeouts` (a
//! YAML/JSON map: `tcpEstablished`, `tcpTransitory`, `udp`, `icmp`,
//! `portCooldown`, in seconds), and `egret.dev/source-cidrs` (fallback
//! source CIDRs: a subnet routed to the gateway as a whole).
//!
//! YAML is read with `serde_norway`, the maintained fork of the archived
//! `serde_yaml` (same API, YAML 1.2 via `unsafe-libyaml-norway`).

pub mod egress_ips;
mod network_policies;
pub mod objects;
mod pod_index;
pub mod reconcile;
#[cfg(test)]
mod tests;

pub use objects::*;
pub use pod_index::{NeedsFull, PodIndex};
pub use reconcile::{
    egress_prefix, gateway_config, reconcile, reconcile_indexed, rendezvous_owner, rendezvous_weight, split_prefix,
    standalone_plan, ConfigStatus, GatewayNode, Reconciled,
};

use egret_plan::Plan;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Something wrong with one object; that object is left out (or, for
/// notices such as a node with no share of a small prefix, only reported),
/// and everything else is served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Problem {
    /// `Kind namespace/name` (`Kind name` for cluster-scoped objects).
    pub object: String,
    pub message: String,
}

impl Problem {
    pub fn new(kind: &str, key: &str, message: impl Into<String>) -> Problem {
        Problem { object: Problem::object_name(kind, key), message: message.into() }
    }

    /// How a problem names an object: `Kind namespace/name`, or `Kind name`.
    pub fn object_name(kind: &str, key: &str) -> String {
        format!("{kind} {key}")
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// A manifests file that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: document {doc}: {message}")]
    Yaml { path: String, doc: usize, message: String },
}

/// Reads a manifests file or directory into the plan a standalone gateway
/// serves, with the problems of the objects left out.
pub fn plan_from_yaml_path(path: &Path, version: u64) -> Result<(Plan, Vec<Problem>), ClusterError> {
    Ok(standalone_plan(&ClusterState::read_path(path)?, version))
}

/// The same from manifests text already in memory (`origin` names it in
/// errors): pure, for callers that hold the text and for fuzzing.
pub fn plan_from_yaml_str(text: &str, origin: &str, version: u64) -> Result<(Plan, Vec<Problem>), ClusterError> {
    Ok(standalone_plan(&ClusterState::parse(text, origin)?, version))
}

#[cfg(test)]
mod from_str_tests {
    use super::*;

    #[test]
    fn plan_from_yaml_str_matches_the_file_and_names_the_origin() {
        let text = "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\n\
                    kind: StaticGatewayConfiguration\n\
                    metadata: {name: a, namespace: demo}\n\
                    spec: {gatewayNodepoolName: gw}\n\
                    status: {egressIpPrefix: 198.19.100.0/28}\n\
                    ---\n\
                    apiVersion: v1\n\
                    kind: Pod\n\
                    metadata: {name: p, namespace: demo, annotations: {kubernetes.azure.com/static-gateway-configuration: a}}\n\
                    status: {phase: Running, podIP: 198.18.0.2}\n";
        let (plan, problems) = plan_from_yaml_str(text, "inline", 3).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(plan.version, 3);
        assert_eq!(plan.configs.len(), 1);
        assert_eq!(plan.bindings.len(), 1);
        plan.validate().unwrap();
        let err = plan_from_yaml_str("kind: [unclosed\n", "inline", 1).unwrap_err();
        assert!(err.to_string().starts_with("inline: document 1:"), "{err}");
    }
}
