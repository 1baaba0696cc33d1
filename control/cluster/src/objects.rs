//! The Kubernetes objects Egret reads, as `kubectl get -o yaml` (or the API
//! server's JSON) prints them. Only the fields Egret uses are modelled; every
//! other field is accepted and ignored, so objects are read unchanged.

use super::{ClusterError, Problem};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Pod annotation naming the StaticGatewayConfiguration (same namespace).
pub const POD_ANNOTATION: &str = "kubernetes.azure.com/static-gateway-configuration";
pub const SGC_KIND: &str = "StaticGatewayConfiguration";
pub const SGC_GROUP: &str = "egressgateway.kubernetes.azure.com";
pub const SGC_VERSION: &str = "v1alpha1";
pub const POLICY_KIND: &str = "EgressPolicy";
pub const POD_ENDPOINT_KIND: &str = "PodEndpoint";
pub const VM_CONFIG_KIND: &str = "GatewayVMConfiguration";
pub const NETWORK_POLICY_KIND: &str = "NetworkPolicy";
pub const NETWORK_POLICY_GROUP: &str = "networking.k8s.io";
pub const NETWORK_POLICY_VERSION: &str = "v1";
/// Upstream kube-egress-gateway marks gateway nodes with this label = "true".
pub const GATEWAY_MODE_LABEL: &str = "kubeegressgateway.azure.com/mode";
/// AKS marks gateway node pools with this label = "gateway".
pub const AKS_MODE_LABEL: &str = "kubernetes.azure.com/mode";
pub const AKS_MODE_GATEWAY: &str = "gateway";
/// Node pool labels, AKS's first.
pub const POOL_LABELS: [&str; 2] = ["kubernetes.azure.com/agentpool", "agentpool"];

/// An object's labels or annotations: a few short pairs, kept as a list
/// sorted by key. A `BTreeMap` allocates a node for eleven pairs even for
/// one (~540 bytes), and the control plane holds every annotated pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(Vec<(String, String)>);

impl Tags {
    pub fn get(&self, key: &str) -> Option<&String> {
        let i = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(&self.0[i].1)
    }
    /// Sets `key`, replacing its value if it has one.
    pub fn insert(&mut self, key: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|(k, _)| keep(k));
        self.0.shrink_to_fit();
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.into_iter()
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&(String, String)) -> (&String, &String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl FromIterator<(String, String)> for Tags {
    /// A key given twice keeps its last value, as a JSON object's would.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Tags {
        let mut v: Vec<(String, String)> = pairs.into_iter().collect();
        v.reverse();
        // Stable: of equal keys, the last given comes first and is kept.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, first| later.0 == first.0);
        v.shrink_to_fit();
        Tags(v)
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tags, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = Tags;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            /// `labels: null` (or a YAML key left empty) is none.
            fn visit_none<E>(self) -> Result<Tags, E> {
                Ok(Tags::default())
            }
            fn visit_unit<E>(self) -> Result<Tags, E> {
                Ok(Tags::default())
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Tags, D::Error> {
                d.deserialize_map(Pairs)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Tags, A::Error> {
                let mut pairs = Vec::with_capacity(m.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = m.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_iter().collect())
            }
        }
        d.deserialize_option(Pairs)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub annotations: Tags,
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub labels: Tags,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// RFC 3339, as the API server writes it; compared as text (same format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
}

impl ObjectMeta {
    /// The namespace, `default` when the manifest leaves it out (as kubectl
    /// apply would).
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or("default")
    }
    /// `namespace/name`, the key Egret names configs and pods by.
    pub fn key(&self) -> String {
        format!("{}/{}", self.ns(), self.name)
    }
}

/// `egressgateway.kubernetes.azure.com/v1alpha1` StaticGatewayConfiguration,
/// field for field as Azure/kube-egress-gateway's `api/v1alpha1` defines it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StaticGatewayConfiguration {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SgcSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SgcStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SgcSpec {
    /// Name of the gateway node pool (matched case-insensitively against the
    /// node's agentpool label, as kube-egress-gateway does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_nodepool_name: Option<String>,
    /// The gateway VMSS, for clusters whose gateway nodes are not an AKS pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_vmss_profile: Option<GatewayVmssProfile>,
    /// `staticEgressGateway` (default) or `azureNetworking`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_public_ips: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip_prefix_id: Option<String>,
    /// Destinations not sent through the gateway. `excludeCIDRs` (the
    /// spelling of kube-egress-gateway's docs sample) is accepted too.
    #[serde(default, alias = "excludeCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub exclude_cidrs: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayVmssProfile {
    #[serde(default)]
    pub vmss_resource_group: String,
    #[serde(default)]
    pub vmss_name: String,
    #[serde(default)]
    pub public_ip_prefix_size: i32,
}

impl GatewayVmssProfile {
    pub fn is_empty(&self) -> bool {
        self.vmss_resource_group.is_empty() && self.vmss_name.is_empty() && self.public_ip_prefix_size == 0
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SgcStatus {
    /// The public prefix, once kube-egress-gateway has provisioned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_ip_prefix: Option<String>,
    /// The config's WireGuard endpoint (its controller-manager fills it):
    /// pods tunnel to `ip:port` with `publicKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_server_profile: Option<GatewayServerProfile>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayServerProfile {
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub port: i32,
    #[serde(default)]
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_secret_ref: Option<ObjectReference>,
}

impl GatewayServerProfile {
    /// kube-egress-gateway's daemon acts on a config only once every field
    /// of its profile is set (`isReady()`).
    pub fn is_ready(&self) -> bool {
        !self.ip.is_empty()
            && self.port != 0
            && !self.public_key.is_empty()
            && self.private_key_secret_ref.as_ref().is_some_and(|r| !r.name.is_empty())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A Secret: only `sgw-<config UID>`, which holds a config's WireGuard
/// private key (`PrivateKey`), is read.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Values base64, as the API server prints them.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, keys {:?})", self.metadata.key(), self.data.keys().collect::<Vec<_>>())
    }
}

/// kube-egress-gateway's PodEndpoint: a tunnelled pod's address and
/// WireGuard key, written by its CNI plugin.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodEndpoint {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodEndpointSpec,
}

impl PodEndpoint {
    /// `spec.podIpAddress` as an address (`x.x.x.x/32` or `x.x.x.x`).
    pub fn pod_ipv4(&self) -> Option<Ipv4Addr> {
        let ip = self.spec.pod_ip_address.trim();
        ip.strip_suffix("/32").unwrap_or(ip).parse().ok()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodEndpointSpec {
    /// The config's name, in the PodEndpoint's namespace.
    #[serde(default)]
    pub static_gateway_configuration: String,
    /// `x.x.x.x/32`.
    #[serde(default)]
    pub pod_ip_address: String,
    #[serde(default)]
    pub pod_public_key: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodIp {
    pub ip: String,
}

impl Pod {
    /// The config key (`namespace/name`) the pod's annotation names, if any.
    pub fn gateway_config(&self) -> Option<String> {
        self.config_name().map(|name| format!("{}/{name}", self.metadata.ns()))
    }
    /// The config name the pod's annotation gives (in the pod's namespace).
    pub fn config_name(&self) -> Option<&str> {
        Some(self.metadata.annotations.get(POD_ANNOTATION)?.trim()).filter(|n| !n.is_empty())
    }
    /// Finished pods hold no IP any more (it may already be reused).
    pub fn is_finished(&self) -> bool {
        matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    }
    /// The pod's IPv4 addresses (`status.podIPs`, else `status.podIP`);
    /// IPv6 addresses are skipped, the NAT is IPv4.
    /// Drops what Egret never reads of a pod (other annotations, which
    /// can be large; versions; timestamps; the host; `podIP` when
    /// `podIPs` names it too): a control plane keeps every annotated pod.
    pub fn keep_only_what_egret_reads(&mut self) {
        let m = &mut self.metadata;
        m.annotations.retain(|k| k == POD_ANNOTATION);
        (m.resource_version, m.creation_timestamp, m.deletion_timestamp) = (None, None, None);
        let s = &mut self.status;
        s.host_ip = None;
        if s.pod_ip.as_ref().is_some_and(|ip| s.pod_ips.iter().any(|x| x.ip == *ip)) {
            s.pod_ip = None;
        }
    }

    pub fn ipv4s(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self.status.pod_ips.iter().filter_map(|x| x.ip.parse().ok()).collect();
        if v.is_empty() {
            v.extend(self.status.pod_ip.as_deref().and_then(|x| x.parse::<Ipv4Addr>().ok()));
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// `azure:///subscriptions/…/resourceGroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/VMSS/virtualMachines/N`.
    #[serde(default, rename = "providerID", skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unschedulable: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<NodeCondition>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

impl Node {
    /// A gateway node: `kubeegressgateway.azure.com/mode: "true"` (upstream)
    /// or `kubernetes.azure.com/mode: gateway` (AKS gateway pools).
    pub fn is_gateway(&self) -> bool {
        let l = &self.metadata.labels;
        l.get(GATEWAY_MODE_LABEL).is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || l.get(AKS_MODE_LABEL).is_some_and(|v| v.eq_ignore_ascii_case(AKS_MODE_GATEWAY))
    }
    /// The node pool, from the agentpool labels.
    pub fn pool(&self) -> Option<&str> {
        POOL_LABELS.iter().find_map(|k| self.metadata.labels.get(k)).map(String::as_str)
    }
    /// Ready unless its Ready condition says otherwise (manifest files often
    /// carry no conditions), and not being deleted.
    pub fn is_ready(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && self.status.conditions.iter().filter(|c| c.kind == "Ready").all(|c| c.status == "True")
    }
    /// The first InternalIP, for operators' listings.
    pub fn internal_ip(&self) -> Option<Ipv4Addr> {
        self.status.addresses.iter().filter(|a| a.kind == "InternalIP").find_map(|a| a.address.parse().ok())
    }
    /// Whether the node is an instance of the VMSS the profile names (from its
    /// Azure provider ID; compared case-insensitively, as Azure IDs are).
    pub fn in_vmss(&self, p: &GatewayVmssProfile) -> bool {
        let Some(id) = self.spec.provider_id.as_deref() else { return false };
        let id = id.to_ascii_lowercase();
        let rg = format!("/resourcegroups/{}/", p.vmss_resource_group.to_ascii_lowercase());
        let ss = format!("/virtualmachinescalesets/{}/", p.vmss_name.to_ascii_lowercase());
        id.contains(&rg) && id.contains(&ss)
    }
}

/// Egret's `egret.dev/v1alpha1` EgressPolicy: rules for one config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: EgressPolicySpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicySpec {
    /// The StaticGatewayConfiguration (same namespace) the rules apply to.
    pub gateway_configuration: String,
    /// The rules as the object writes them (with `podSelector`); the plan's
    /// `policy.rules` come from these once the selectors are resolved.
    #[serde(default)]
    pub rules: Vec<PolicyRuleSpec>,
    /// Everything else of the policy, as the plan carries it.
    #[serde(flatten)]
    pub policy: egret_plan::EgressPolicy,
}

/// A rule of an EgressPolicy object: a plan's rule plus the source pods by
/// label, as in a NetworkPolicy. Only egret-control reads `podSelector`: it
/// resolves it to `pods`, the pods bound to the config whose labels match,
/// so a plan a gateway compiles never carries one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRuleSpec {
    #[serde(flatten)]
    pub rule: egret_plan::PolicyRule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// A Kubernetes label selector: every `matchLabels` pair and every
/// `matchExpressions` requirement must hold. An empty selector selects all.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Checks the selector is well formed, as the API server would: `In` and
    /// `NotIn` need values, `Exists` and `DoesNotExist` take none.
    pub fn validate(&self) -> Result<(), String> {
        for r in &self.match_expressions {
            match (r.operator, r.values.is_empty()) {
                (LabelOperator::In | LabelOperator::NotIn, true) => {
                    return Err(format!("podSelector: operator {:?} on '{}' needs values", r.operator, r.key))
                }
                (LabelOperator::Exists | LabelOperator::DoesNotExist, false) => {
                    return Err(format!("podSelector: operator {:?} on '{}' takes no values", r.operator, r.key))
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn matches(&self, labels: &Tags) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator {
                    LabelOperator::In => v.is_some_and(|v| r.values.contains(v)),
                    LabelOperator::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                    LabelOperator::Exists => v.is_some(),
                    LabelOperator::DoesNotExist => v.is_none(),
                }
            })
    }
}

/// kube-egress-gateway's GatewayVMConfiguration: its controller makes one per
/// StaticGatewayConfiguration (same name and namespace) and lists, per
/// gateway node, the node's own address for the config (`secondaryIP`, a
/// NIC IP configuration Azure maps 1:1 to a public IP of the prefix).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayVmConfiguration {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: GatewayVmConfigurationStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayVmConfigurationStatus {
    #[serde(default)]
    pub egress_ip_prefix: Option<String>,
    #[serde(default, rename = "gatewayVMProfiles")]
    pub gateway_vm_profiles: Vec<GatewayVmProfile>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayVmProfile {
    #[serde(default)]
    pub node_name: String,
    #[serde(default, rename = "primaryIP")]
    pub primary_ip: Option<String>,
    #[serde(default, rename = "secondaryIP")]
    pub secondary_ip: Option<String>,
}

/// `networking.k8s.io/v1` NetworkPolicy. Its spec is kept as read and
/// decoded by reconcile (`network_policies.rs`): one that Egret
/// cannot read is then reported and fails closed (its pods may send
/// nothing), rather than failing a whole manifests file or being skipped,
/// which would allow what it denies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// The objects of a cluster (or of a manifests file) that Egret reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub configs: Vec<StaticGatewayConfiguration>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub policies: Vec<EgressPolicyObject>,
    pub secrets: Vec<Secret>,
    pub pod_endpoints: Vec<PodEndpoint>,
    pub vm_configs: Vec<GatewayVmConfiguration>,
    pub network_policies: Vec<NetworkPolicyObject>,
    /// EgressPolicies read from the API server that do not decode: their
    /// configs are not served (fail closed), rather than served unpoliced.
    pub broken_policies: Vec<BrokenPolicy>,
    /// Set by a source that keeps each kind's objects by `namespace/name`
    /// (the Kubernetes watch): no object can be defined twice, so reconcile
    /// skips looking for duplicates (a pass over every object on every
    /// change).
    pub keys_unique: bool,
}

/// An EgressPolicy that does not decode, and the config it names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokenPolicy {
    pub metadata: ObjectMeta,
    /// `spec.gatewayConfiguration`, if it is a string.
    pub gateway_configuration: Option<String>,
    pub error: String,
}

impl ClusterState {
    /// Parses YAML (or JSON) documents: single objects and `kind: List`s
    /// (nested too). Kinds Egret does not read are ignored. A document that
    /// is not YAML fails the whole text; an object of a known kind with a
    /// field of the wrong type fails it too, naming the object and field.
    pub fn parse(text: &str, origin: &str) -> Result<ClusterState, ClusterError> {
        let mut st = ClusterState::default();
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let yaml_err = |message: String| ClusterError::Yaml { path: origin.to_string(), doc: i + 1, message };
            let v = serde_norway::Value::deserialize(doc).map_err(|e| yaml_err(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            st.add(v).map_err(yaml_err)?;
        }
        Ok(st)
    }

    fn add(&mut self, v: serde_norway::Value) -> Result<(), String> {
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
        let named = |v: &serde_norway::Value| {
            let m = v.get("metadata");
            let n = m.and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("?");
            match m.and_then(|m| m.get("namespace")).and_then(|n| n.as_str()) {
                Some(ns) => format!("{kind} {ns}/{n}"),
                None => format!("{kind} {n}"),
            }
        };
        fn de<T: serde::de::DeserializeOwned>(v: serde_norway::Value, what: String) -> Result<T, String> {
            serde_path_to_error::deserialize(v).map_err(|e| match e.path().to_string().as_str() {
                "." => format!("{what}: {}", e.inner()),
                path => format!("{what}: {path}: {}", e.inner()),
            })
        }
        match kind.as_str() {
            "List" => {
                if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
                    for item in items.clone() {
                        self.add(item)?;
                    }
                }
            }
            // `kubectl get sgc -o yaml` on one kind prints a typed list.
            k if k.ends_with("List") => {
                let item_kind = k.trim_end_matches("List").to_string();
                if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
                    for mut item in items.clone() {
                        if let Some(m) = item.as_mapping_mut() {
                            m.entry("kind".into()).or_insert_with(|| item_kind.clone().into());
                        }
                        self.add(item)?;
                    }
                }
            }
            SGC_KIND => self.configs.push(de(v.clone(), named(&v))?),
            "Pod" => self.pods.push(de(v.clone(), named(&v))?),
            "Node" => self.nodes.push(de(v.clone(), named(&v))?),
            POLICY_KIND => self.policies.push(de(v.clone(), named(&v))?),
            "Secret" => self.secrets.push(de(v.clone(), named(&v))?),
            POD_ENDPOINT_KIND => self.pod_endpoints.push(de(v.clone(), named(&v))?),
            VM_CONFIG_KIND => self.vm_configs.push(de(v.clone(), named(&v))?),
            NETWORK_POLICY_KIND => self.network_policies.push(de(v.clone(), named(&v))?),
            _ => {}
        }
        Ok(())
    }

    /// Reads a file, or every `.yaml`/`.yml`/`.json` file of a directory
    /// (sorted by name; hidden files and subdirectories skipped).
    pub fn read_path(path: &Path) -> Result<ClusterState, ClusterError> {
        let mut st = ClusterState::default();
        for f in manifest_files(path)? {
            let text = std::fs::read_to_string(&f)
                .map_err(|source| ClusterError::Io { path: f.display().to_string(), source })?;
            st.extend(ClusterState::parse(&text, &f.display().to_string())?);
        }
        Ok(st)
    }

    pub fn extend(&mut self, other: ClusterState) {
        // Destructured, so that a kind added to the struct cannot be
        // forgotten here (the compiler asks for it).
        let ClusterState {
            configs,
            pods,
            nodes,
            policies,
            secrets,
            pod_endpoints,
            vm_configs,
            network_policies,
            broken_policies,
            keys_unique: _,
        } = other;
        // Two sets of unique keys together may hold one twice.
        self.keys_unique = false;
        self.configs.extend(configs);
        self.pods.extend(pods);
        self.nodes.extend(nodes);
        self.policies.extend(policies);
        self.secrets.extend(secrets);
        self.pod_endpoints.extend(pod_endpoints);
        self.vm_configs.extend(vm_configs);
        self.network_policies.extend(network_policies);
        self.broken_policies.extend(broken_policies);
    }

    /// Whether [`ClusterState::dedup`] may drop anything; cheap (no
    /// allocation per object), so that a state with no duplicates (an API
    /// server's, always) is reconciled without a copy.
    pub fn may_have_duplicates(&self) -> bool {
        if self.keys_unique {
            return false;
        }
        fn dup<'a>(metas: impl Iterator<Item = &'a ObjectMeta>, namespaced: bool) -> bool {
            let mut seen = std::collections::HashSet::new();
            for m in metas {
                // A '/' in a name could make two keys alike: check the slow way.
                if m.name.contains('/') || !seen.insert((if namespaced { m.ns() } else { "" }, m.name.as_str())) {
                    return true;
                }
            }
            false
        }
        dup(self.configs.iter().map(|o| &o.metadata), true)
            || dup(self.pods.iter().map(|o| &o.metadata), true)
            || dup(self.nodes.iter().map(|o| &o.metadata), false)
            || dup(self.policies.iter().map(|o| &o.metadata), true)
            || dup(self.secrets.iter().map(|o| &o.metadata), true)
            || dup(self.pod_endpoints.iter().map(|o| &o.metadata), true)
            || dup(self.vm_configs.iter().map(|o| &o.metadata), true)
            || dup(self.network_policies.iter().map(|o| &o.metadata), true)
    }

    /// Objects of the same kind and `namespace/name` defined twice: the later
    /// definition is dropped and reported (a manifests directory with the
    /// same object in two files would otherwise be ambiguous).
    pub fn dedup(&mut self, problems: &mut Vec<Problem>) {
        fn dedup_by<T>(v: &mut Vec<T>, kind: &str, key: impl Fn(&T) -> String, problems: &mut Vec<Problem>) {
            let mut seen = std::collections::BTreeSet::new();
            v.retain(|o| {
                let k = key(o);
                let fresh = seen.insert(k.clone());
                if !fresh {
                    problems.push(Problem::new(kind, &k, "defined more than once; the first definition is used"));
                }
                fresh
            });
        }
        dedup_by(&mut self.configs, SGC_KIND, |o| o.metadata.key(), problems);
        dedup_by(&mut self.pods, "Pod", |o| o.metadata.key(), problems);
        dedup_by(&mut self.nodes, "Node", |o| o.metadata.name.clone(), problems);
        dedup_by(&mut self.policies, POLICY_KIND, |o| o.metadata.key(), problems);
        dedup_by(&mut self.secrets, "Secret", |o| o.metadata.key(), problems);
        dedup_by(&mut self.pod_endpoints, POD_ENDPOINT_KIND, |o| o.metadata.key(), problems);
        dedup_by(&mut self.vm_configs, VM_CONFIG_KIND, |o| o.metadata.key(), problems);
        dedup_by(&mut self.network_policies, NETWORK_POLICY_KIND, |o| o.metadata.key(), problems);
    }
}

/// The manifest files a path names: the file itself, or a directory's
/// `.yaml`/`.yml`/`.json` files sorted by name.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ClusterError> {
    let io = |source| ClusterError::Io { path: path.display().to_string(), source };
    if !path.is_dir() {
        // Reading it reports a missing file with its name.
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(path).map_err(io)? {
        let p = e.map_err(io)?.path();
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        let ext = matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml" | "json"));
        if ext && !hidden && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tags_tests {
    use super::Tags;

    #[test]
    fn a_key_given_twice_keeps_its_last_value_as_a_map_would() {
        let t: Tags = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        assert_eq!((t.get("a").map(String::as_str), t.get("b").map(String::as_str)), (Some("2"), Some("3")));
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"a":"2","b":"3"}"#);
    }

    #[test]
    fn labels_given_as_null_are_none() {
        let t: Tags = serde_json::from_str("null").unwrap();
        assert!(t.is_empty());
    }
}
