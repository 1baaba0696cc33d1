//! Cluster objects as `kubectl get -o yaml` prints them — the AKS Static
//! Egress Gateway's `StaticGatewayConfiguration` (accepted unchanged from
//! Azure/kube-egress-gateway), annotated Pods, and Egret's `EgressPolicy` —
//! turned into the plan one gateway serves. Pure apart from reading files.
//!
//! Egret's own knobs ride on a config as annotations:
//! `egret.dev/mapping` (`endpoint-independent` | `port-reuse`),
//! `egret.dev/filtering` (`endpoint-dependent` | `endpoint-independent`),
//! `egret.dev/port-quota` (ports per pod), and `egret.dev/timeouts`
//! (a YAML/JSON map: `tcpEstablished`, `tcpTransitory`, `udp`, `icmp`,
//! `portCooldown`, in seconds).

use crate::plan::{Binding, EgressPolicy, FilteringMode, GatewayConfig, Ipv4Cidr, MappingMode, Plan, Timeouts};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

pub const POD_ANNOTATION: &str = "kubernetes.azure.com/static-gateway-configuration";
pub const SGC_KIND: &str = "StaticGatewayConfiguration";
pub const POLICY_KIND: &str = "EgressPolicy";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resource_version: Option<String>,
}

impl ObjectMeta {
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// `egressgateway.kubernetes.azure.com/v1alpha1` StaticGatewayConfiguration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StaticGatewayConfiguration {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SgcSpec,
    #[serde(default)]
    pub status: Option<SgcStatus>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SgcSpec {
    #[serde(default)]
    pub gateway_nodepool_name: Option<String>,
    #[serde(default)]
    pub gateway_vmss_profile: Option<serde_norway::Value>,
    #[serde(default)]
    pub provision_public_ips: Option<bool>,
    #[serde(default)]
    pub public_ip_prefix_id: Option<String>,
    #[serde(default)]
    pub default_route: Option<String>,
    #[serde(default)]
    pub exclude_cidrs: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SgcStatus {
    #[serde(default)]
    pub egress_ip_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: PodStatus,
    #[serde(default)]
    pub spec: Option<serde_norway::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub phase: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PodIp {
    pub ip: String,
}

/// Egret's `egret.dev/v1alpha1` EgressPolicy: rules for one config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: EgressPolicySpec,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicySpec {
    /// The StaticGatewayConfiguration (same namespace) the rules apply to.
    pub gateway_configuration: String,
    #[serde(flatten)]
    pub policy: EgressPolicy,
}

/// The objects of a cluster (or of a manifests file) that Egret reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub configs: Vec<StaticGatewayConfiguration>,
    pub pods: Vec<Pod>,
    pub policies: Vec<EgressPolicyObject>,
}

/// Something wrong with one object; the object is left out, the rest served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Kind namespace/name`.
    pub object: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: document {doc}: {message}")]
    Yaml { path: String, doc: usize, message: String },
}

impl ClusterState {
    /// Parses YAML documents (single objects and `kind: List`); kinds Egret
    /// does not read are ignored.
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
            format!("{kind} {n}")
        };
        match kind.as_str() {
            "List" => {
                if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
                    for item in items.clone() {
                        self.add(item)?;
                    }
                }
            }
            SGC_KIND => {
                self.configs.push(serde_norway::from_value(v.clone()).map_err(|e| format!("{}: {e}", named(&v)))?)
            }
            "Pod" => self.pods.push(serde_norway::from_value(v.clone()).map_err(|e| format!("{}: {e}", named(&v)))?),
            POLICY_KIND => {
                self.policies.push(serde_norway::from_value(v.clone()).map_err(|e| format!("{}: {e}", named(&v)))?)
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads a file, or every `.yaml`/`.yml`/`.json` file of a directory.
    pub fn read_path(path: &Path) -> Result<ClusterState, ClusterError> {
        let io = |source| ClusterError::Io { path: path.display().to_string(), source };
        let mut files = Vec::new();
        if path.is_dir() {
            for e in std::fs::read_dir(path).map_err(io)? {
                let p = e.map_err(io)?.path();
                if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml" | "json")) {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut st = ClusterState::default();
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|source| ClusterError::Io { path: f.display().to_string(), source })?;
            let part = ClusterState::parse(&text, &f.display().to_string())?;
            st.configs.extend(part.configs);
            st.pods.extend(part.pods);
            st.policies.extend(part.policies);
        }
        Ok(st)
    }
}

/// The gateway config a StaticGatewayConfiguration becomes, with `pool` as
/// its egress addresses (all of `status.egressIpPrefix` in standalone mode,
/// a node's share under the control plane).
pub fn gateway_config(sgc: &StaticGatewayConfiguration, pool: Vec<Ipv4Cidr>) -> Result<GatewayConfig, String> {
    let m = &sgc.metadata;
    let mut c = GatewayConfig::new(&format!("{}/{}", m.ns(), m.name), pool);
    for cidr in &sgc.spec.exclude_cidrs {
        c.exclude.push(cidr.parse().map_err(|e| format!("spec.excludeCidrs: {e}"))?);
    }
    let a = &m.annotations;
    if let Some(v) = a.get("egret.dev/mapping") {
        c.mapping = serde_norway::from_str::<MappingMode>(v)
            .map_err(|_| format!("annotation egret.dev/mapping: unknown mode '{v}'"))?;
    }
    if let Some(v) = a.get("egret.dev/filtering") {
        c.filtering = serde_norway::from_str::<FilteringMode>(v)
            .map_err(|_| format!("annotation egret.dev/filtering: unknown mode '{v}'"))?;
    }
    if let Some(v) = a.get("egret.dev/port-quota") {
        c.port_quota =
            v.trim().parse().map_err(|_| format!("annotation egret.dev/port-quota: '{v}' is not a number"))?;
    }
    if let Some(v) = a.get("egret.dev/timeouts") {
        c.timeouts =
            serde_norway::from_str::<Timeouts>(v).map_err(|e| format!("annotation egret.dev/timeouts: {e}"))?;
    }
    Ok(c)
}

/// A config's egress prefix, once kube-egress-gateway has provisioned it.
pub fn egress_prefix(sgc: &StaticGatewayConfiguration) -> Result<Ipv4Cidr, String> {
    let p = sgc.status.as_ref().and_then(|s| s.egress_ip_prefix.as_deref()).filter(|p| !p.is_empty());
    let p = p.ok_or("status.egressIpPrefix is not set yet (prefix not provisioned)")?;
    p.parse().map_err(|e| format!("status.egressIpPrefix: {e}"))
}

/// The IPv4 addresses of a pod.
pub fn pod_ipv4s(p: &Pod) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = p.status.pod_ips.iter().filter_map(|x| x.ip.parse().ok()).collect();
    if v.is_empty() {
        v.extend(p.status.pod_ip.as_deref().and_then(|x| x.parse::<Ipv4Addr>().ok()));
    }
    v
}

/// Standalone mode: every config with its whole prefix, every bound pod.
/// Bad objects are left out and reported; the rest make the plan.
pub fn standalone_plan(st: &ClusterState, version: u64) -> (Plan, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut plan = Plan { version, ..Plan::default() };
    for sgc in &st.configs {
        let object = format!("{SGC_KIND} {}/{}", sgc.metadata.ns(), sgc.metadata.name);
        match egress_prefix(sgc).and_then(|p| gateway_config(sgc, vec![p])) {
            Ok(c) => plan.configs.push(c),
            Err(message) => problems.push(Problem { object, message }),
        }
    }
    bind_pods_and_policies(st, &mut plan, &mut problems);
    (plan, problems)
}

/// Adds pod bindings and policies for the configs already in `plan`.
pub fn bind_pods_and_policies(st: &ClusterState, plan: &mut Plan, problems: &mut Vec<Problem>) {
    for pol in &st.policies {
        let m = &pol.metadata;
        let target = format!("{}/{}", m.ns(), pol.spec.gateway_configuration);
        match plan.configs.iter_mut().find(|c| c.name == target) {
            Some(c) => c.policy = Some(pol.spec.policy.clone()),
            None => problems.push(Problem {
                object: format!("{POLICY_KIND} {}/{}", m.ns(), m.name),
                message: format!(
                    "gatewayConfiguration '{}' does not exist in namespace {}",
                    pol.spec.gateway_configuration,
                    m.ns()
                ),
            }),
        }
    }
    for pod in &st.pods {
        let Some(name) = pod.metadata.annotations.get(POD_ANNOTATION) else { continue };
        if matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let config = format!("{}/{}", pod.metadata.ns(), name);
        let object = format!("Pod {}/{}", pod.metadata.ns(), pod.metadata.name);
        if !plan.configs.iter().any(|c| c.name == config) {
            problems.push(Problem {
                object,
                message: format!("names StaticGatewayConfiguration '{config}', which is not served"),
            });
            continue;
        }
        for ip in pod_ipv4s(pod) {
            plan.bindings.push(Binding { pod_ip: ip, config: config.clone() });
        }
    }
}

/// Reads a manifests file or directory into the plan a standalone gateway serves.
pub fn plan_from_yaml_path(path: &Path, version: u64) -> Result<(Plan, Vec<Problem>), ClusterError> {
    Ok(standalone_plan(&ClusterState::read_path(path)?, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata:
  name: myconfig
  namespace: apps
  annotations:
    egret.dev/mapping: port-reuse
    egret.dev/timeouts: '{"udp": 120}'
spec:
  gatewayNodepoolName: gwpool
  provisionPublicIps: true
  defaultRoute: staticEgressGateway
  excludeCidrs:
  - 198.18.200.0/24
status:
  egressIpPrefix: 198.19.100.0/30
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: web-1
    namespace: apps
    annotations:
      kubernetes.azure.com/static-gateway-configuration: myconfig
  status:
    phase: Running
    podIP: 198.18.0.2
    podIPs:
    - ip: 198.18.0.2
    - ip: fd00::2
- apiVersion: v1
  kind: Pod
  metadata: {name: stray, namespace: apps, annotations: {kubernetes.azure.com/static-gateway-configuration: nosuch}}
  status: {podIP: 198.18.0.9}
- apiVersion: v1
  kind: Pod
  metadata: {name: plain, namespace: apps}
  status: {podIP: 198.18.0.10}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored}
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: pending, namespace: apps}
spec: {gatewayNodepoolName: gwpool}
---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: lockdown, namespace: apps}
spec:
  gatewayConfiguration: myconfig
  defaultAction: deny
  rules:
  - {name: web, action: allow, cidrs: [198.19.0.0/24], protocol: tcp, ports: [443]}
"#;

    #[test]
    fn kubectl_yaml_becomes_a_plan_and_bad_objects_are_reported() {
        let st = ClusterState::parse(MANIFESTS, "test.yaml").unwrap();
        assert_eq!((st.configs.len(), st.pods.len(), st.policies.len()), (2, 3, 1));
        let (plan, problems) = standalone_plan(&st, 7);
        assert_eq!(plan.configs.len(), 1);
        let c = &plan.configs[0];
        assert_eq!(c.name, "apps/myconfig");
        assert_eq!(c.egress, vec!["198.19.100.0/30".parse().unwrap()]);
        assert_eq!(c.exclude, vec!["198.18.200.0/24".parse().unwrap()]);
        assert_eq!(c.mapping, MappingMode::PortReuse);
        assert_eq!(c.timeouts.udp, 120);
        assert_eq!(c.policy.as_ref().unwrap().rules[0].name, "web");
        assert_eq!(
            plan.bindings,
            vec![Binding { pod_ip: "198.18.0.2".parse().unwrap(), config: "apps/myconfig".into() }]
        );
        let msgs: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                "StaticGatewayConfiguration apps/pending: status.egressIpPrefix is not set yet (prefix not provisioned)",
                "Pod apps/stray: names StaticGatewayConfiguration 'apps/nosuch', which is not served",
            ]
        );
        plan.compile().unwrap();
    }

    #[test]
    fn broken_yaml_names_the_file_and_document() {
        let e = ClusterState::parse("kind: Pod\n---\nkind: [", "bad.yaml").unwrap_err().to_string();
        assert!(e.starts_with("bad.yaml: document 2:"), "{e}");
        let e = ClusterState::parse(
            "kind: StaticGatewayConfiguration\nmetadata: {name: x}\nspec: {excludeCidrs: 5}",
            "f.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("StaticGatewayConfiguration x"), "{e}");
    }

    #[test]
    fn a_bad_annotation_is_a_problem_not_a_crash() {
        let text = MANIFESTS.replace("egret.dev/mapping: port-reuse", "egret.dev/mapping: sideways");
        let (plan, problems) = standalone_plan(&ClusterState::parse(&text, "t").unwrap(), 1);
        assert!(plan.configs.is_empty());
        assert!(problems[0].message.contains("unknown mode 'sideways'"));
    }
}
