//! The plan a gateway serves: gateway configs (egress pools, exclusions,
//! timeouts, quotas, NAT behaviour, policy, tunnel) and pod bindings. This
//! crate is the schema both sides share: egret-control builds plans and
//! checks them with [`Plan::validate`] before it sends them; a gateway
//! validates every plan it receives the same way, whole, and serves none of
//! an invalid one (the error names the offending config or pod). Its lookup
//! form lives in the NAT core (`egret_dataplane::nat::CompiledPlan`).

mod cidr;
mod delta;
mod keys;
pub mod network_policy;
mod policy;
#[cfg(test)]
mod tests;

pub use cidr::Ipv4Cidr;
pub use delta::{DeltaError, PlanDelta};
pub use keys::{WgKey, WgSecret};
pub use network_policy::{IpBlock, NetworkPolicy, NetworkPolicyError, NetworkPolicyRule, NetworkPort, NetworkProtocol};
pub use policy::{
    normalise_fqdn, DenyResponse, EgressPolicy, LiveFlows, PolicyAction, PolicyError, PolicyRule, PortRange, Protocol,
    ServerNameCheck, HTTP_PORT, MAX_DNS_RESOLVERS, MAX_DNS_TTL, MAX_POLICY_RULES, MAX_RULE_ITEMS, TLS_PORT,
};

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// How a pod's (address, port) maps to an egress (address, port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingMode {
    /// RFC 4787 REQ-1: one egress port per pod endpoint, whatever the
    /// destination (STUN and WebRTC work). The default.
    #[default]
    EndpointIndependent,
    /// Address-and-port-dependent: an egress port is reused for different
    /// destinations, so one address carries far more than 64,512 flows.
    PortReuse,
}

/// Which outside endpoints may reach a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilteringMode {
    /// Only endpoints the pod has sent to (RFC 4787 REQ-8 "address and port
    /// dependent"). The default.
    #[default]
    EndpointDependent,
    /// Any endpoint may reach a live UDP mapping (endpoint-independent
    /// mapping only; TCP and ICMP stay endpoint-dependent).
    EndpointIndependent,
}

/// Idle timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Timeouts {
    pub tcp_established: u32,
    pub tcp_transitory: u32,
    pub udp: u32,
    pub icmp: u32,
    /// How long a freed port stays out of use (RFC 6888 REQ-8).
    pub port_cooldown: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        // VPP NAT44-ED and RFC 5382 / 4787 defaults.
        Timeouts { tcp_established: 7440, tcp_transitory: 240, udp: 300, icmp: 60, port_cooldown: 120 }
    }
}

/// Longest accepted timeout: a week.
pub const MAX_TIMEOUT: u32 = 7 * 24 * 3600;
/// Default per-pod quota of egress ports (RFC 6888 REQ-4).
pub const DEFAULT_PORT_QUOTA: u32 = 32768;
/// Default per-pod limit of sessions (RFC 6888 REQ-5): with
/// endpoint-independent mapping one port carries many sessions, so ports
/// alone do not bound a pod's share of the session table.
pub const DEFAULT_SESSION_LIMIT: u32 = 65536;
/// Largest pool one config may hold.
pub const MAX_POOL_ADDRS: u64 = 4096;

/// Source CIDRs one plan may bind (the steering program's trie holds as
/// many; the NAT core scans them only on a source's first packet).
pub const MAX_SOURCE_CIDRS: usize = 1024;

/// One gateway configuration (a StaticGatewayConfiguration's data plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    pub name: String,
    /// The UID of the object it comes from (kube-egress-gateway's
    /// StaticGatewayConfiguration): the load balancer's probe asks by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Egress addresses: prefixes, or single addresses as /32.
    pub egress: Vec<Ipv4Cidr>,
    /// Destinations forwarded untranslated.
    #[serde(default)]
    pub exclude: Vec<Ipv4Cidr>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_quota")]
    pub port_quota: u32,
    /// Sessions one pod may hold at once.
    #[serde(default = "default_session_limit")]
    pub session_limit: u32,
    #[serde(default)]
    pub mapping: MappingMode,
    #[serde(default)]
    pub filtering: FilteringMode,
    /// Egress policy; none allows every destination.
    #[serde(default)]
    pub policy: Option<EgressPolicy>,
    /// The WireGuard tunnel pods of this config reach the gateway through
    /// (AKS Static Egress Gateway); none: its pods are routed in plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelConfig>,
    /// Source CIDRs bound as a fallback: a source in one of them that no
    /// binding names egresses through this config (a route table sending a
    /// whole subnet's egress here, the AKS `userDefinedRouting` NVA pattern:
    /// unannotated pods, node IPs). The longest matching prefix wins; a
    /// source nothing binds is dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Ipv4Cidr>,
}

/// A config's WireGuard endpoint: kube-egress-gateway's
/// `gatewayServerProfile` (the ILB frontend address and the config's port)
/// and the config's key, which every gateway node of the pool shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelConfig {
    /// Where pods send their datagrams, and where replies leave from.
    pub address: Ipv4Addr,
    pub port: u16,
    pub private_key: WgSecret,
}

fn default_quota() -> u32 {
    DEFAULT_PORT_QUOTA
}

fn default_session_limit() -> u32 {
    DEFAULT_SESSION_LIMIT
}

impl GatewayConfig {
    /// A config with defaults for everything but name and pool.
    pub fn new(name: &str, egress: Vec<Ipv4Cidr>) -> Self {
        GatewayConfig {
            name: name.to_string(),
            uid: None,
            egress,
            exclude: Vec::new(),
            timeouts: Timeouts::default(),
            port_quota: DEFAULT_PORT_QUOTA,
            session_limit: DEFAULT_SESSION_LIMIT,
            mapping: MappingMode::default(),
            filtering: FilteringMode::default(),
            policy: None,
            tunnel: None,
            sources: Vec::new(),
        }
    }
}

/// A pod IP bound to a gateway config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub pod_ip: Ipv4Addr,
    pub config: std::sync::Arc<str>,
    /// The pod's WireGuard key (kube-egress-gateway's PodEndpoint): the pod
    /// reaches the gateway only through its config's tunnel, and plain
    /// packets from its address are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<WgKey>,
}

impl Binding {
    /// The order of a plan's bindings as reconcile writes them: by config,
    /// then pod IP. Bindings of one config share its name, so the names
    /// are compared by pointer first.
    pub fn canonical_cmp(&self, other: &Binding) -> std::cmp::Ordering {
        let by_config = match std::sync::Arc::ptr_eq(&self.config, &other.config) {
            true => std::cmp::Ordering::Equal,
            false => self.config.cmp(&other.config),
        };
        by_config.then(self.pod_ip.cmp(&other.pod_ip))
    }
}

/// A plan's bindings, shared by the plans that hold the same ones: the
/// nodes of one pool serve the same configs, and egret-control keeps a
/// plan per node and version, so a list of 100,000 pods is held once, not
/// once per node. Read as a `Vec`; [`Bindings::make_mut`] copies it first
/// if another plan holds it too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bindings(std::sync::Arc<Vec<Binding>>);

impl Bindings {
    pub fn make_mut(&mut self) -> &mut Vec<Binding> {
        std::sync::Arc::make_mut(&mut self.0)
    }
    /// Whether both are the same list (not just equal ones).
    pub fn same(&self, other: &Bindings) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for Bindings {
    type Target = Vec<Binding>;
    fn deref(&self) -> &Vec<Binding> {
        &self.0
    }
}

impl From<Vec<Binding>> for Bindings {
    fn from(v: Vec<Binding>) -> Bindings {
        Bindings(v.into())
    }
}

impl FromIterator<Binding> for Bindings {
    fn from_iter<I: IntoIterator<Item = Binding>>(it: I) -> Bindings {
        Bindings(std::sync::Arc::new(it.into_iter().collect()))
    }
}

impl<'a> IntoIterator for &'a Bindings {
    type Item = &'a Binding;
    type IntoIter = std::slice::Iter<'a, Binding>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub version: u64,
    pub configs: Vec<GatewayConfig>,
    /// Shared: the nodes of one pool serve the same configs, so their plans
    /// hold one list (egret-control keeps a plan per node and version).
    pub bindings: Bindings,
    /// Kubernetes NetworkPolicies' egress rules for the pods served here:
    /// a flow leaves only if these (when they select its pod) and its
    /// config's EgressPolicy both allow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_policies: Vec<NetworkPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("invalid CIDR '{0}': {1}")]
    BadCidr(String, &'static str),
    #[error("config name must not be empty")]
    EmptyName,
    #[error("config '{0}' is defined twice")]
    DuplicateConfig(String),
    #[error("config '{0}' has no egress addresses")]
    EmptyPool(String),
    #[error("config '{config}' pool holds {count} addresses; at most {MAX_POOL_ADDRS} are allowed")]
    PoolTooLarge { config: String, count: u64 },
    #[error("egress address {addr} is in the pools of both '{a}' and '{b}'")]
    PoolOverlap { addr: Ipv4Addr, a: String, b: String },
    #[error("config '{config}': timeout {field} = {value}s is out of range (1..={MAX_TIMEOUT})")]
    BadTimeout { config: String, field: &'static str, value: u32 },
    #[error("config '{0}': port quota must be at least 1")]
    ZeroQuota(String),
    #[error("config '{0}': session limit must be at least 1")]
    ZeroSessionLimit(String),
    #[error("config '{config}': filtering endpoint-independent requires mapping endpoint-independent")]
    FilteringNeedsEim { config: String },
    #[error("pod {pod} is bound to config '{config}', which does not exist")]
    UnknownConfig { pod: Ipv4Addr, config: String },
    #[error("pod {pod} is bound twice ('{a}' and '{b}')")]
    DuplicateBinding { pod: Ipv4Addr, a: String, b: String },
    #[error("pod {pod} uses an egress address of config '{config}'")]
    PodIsEgress { pod: Ipv4Addr, config: String },
    #[error("config '{config}' policy: {problem}")]
    BadPolicy { config: String, problem: PolicyError },
    #[error("config '{config}' tunnel: {problem}")]
    BadTunnel { config: String, problem: TunnelError },
    #[error("source CIDR {cidr} is bound by both '{a}' and '{b}'")]
    DuplicateSource { cidr: Ipv4Cidr, a: String, b: String },
    #[error("source CIDR {cidr} of config '{config}' holds egress address {addr}")]
    SourceHoldsEgress { cidr: Ipv4Cidr, config: String, addr: Ipv4Addr },
    #[error("the plan binds {count} source CIDRs; at most {MAX_SOURCE_CIDRS} are allowed")]
    TooManySources { count: usize },
    #[error("pod {pod} has a WireGuard key but config '{config}' has no tunnel")]
    NoTunnel { pod: Ipv4Addr, config: String },
    #[error("pod {pod}: WireGuard key {key} is also pod {other}'s in config '{config}'")]
    DuplicatePeerKey { pod: Ipv4Addr, other: Ipv4Addr, key: String, config: String },
    #[error("{0}")]
    BadNetworkPolicy(NetworkPolicyError),
}

/// What is wrong with a config's tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error("port must be 1-65535")]
    ZeroPort,
    #[error("the private key is missing (a redacted plan cannot be served)")]
    Redacted,
    #[error("{address}:{port} is also config '{other}'s")]
    SharedEndpoint { address: Ipv4Addr, port: u16, other: String },
    #[error("{0} is an egress address")]
    AddressIsEgress(Ipv4Addr),
}

impl Plan {
    /// The plan as it may be shown (egretctl, logs, status): every tunnel's
    /// private key blanked.
    pub fn redacted(&self) -> Plan {
        let mut p = self.clone();
        for t in p.configs.iter_mut().filter_map(|c| c.tunnel.as_mut()) {
            t.private_key = WgSecret::REDACTED;
        }
        p
    }

    /// Whether `other` says what this plan says, whatever their versions.
    pub fn same_but_version(&self, other: &Plan) -> bool {
        let Plan { version: _, configs, bindings, network_policies } = self;
        *configs == other.configs && *bindings == other.bindings && *network_policies == other.network_policies
    }

    /// Validates the whole plan: either every part is valid or it is
    /// refused with the first problem found.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut egress: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut tunnels: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
        for (ci, c) in self.configs.iter().enumerate() {
            if c.name.is_empty() {
                return Err(PlanError::EmptyName);
            }
            if by_name.insert(&c.name, ci).is_some() {
                return Err(PlanError::DuplicateConfig(c.name.clone()));
            }
            c.validate_settings()?;
            for p in &c.egress {
                for a in p.addrs() {
                    if let Some(other) = egress.insert(a, ci) {
                        let other = self.configs[other].name.clone();
                        return Err(PlanError::PoolOverlap { addr: a, a: other, b: c.name.clone() });
                    }
                }
            }
            if let Some(p) = &c.policy {
                p.validate().map_err(|problem| PlanError::BadPolicy { config: c.name.clone(), problem })?;
            }
            if let Some(t) = &c.tunnel {
                let bad = |problem| PlanError::BadTunnel { config: c.name.clone(), problem };
                if t.port == 0 {
                    return Err(bad(TunnelError::ZeroPort));
                }
                if t.private_key == WgSecret::REDACTED {
                    return Err(bad(TunnelError::Redacted));
                }
                if let Some(&other) = tunnels.get(&(t.address, t.port)) {
                    let other = self.configs[other].name.clone();
                    return Err(bad(TunnelError::SharedEndpoint { address: t.address, port: t.port, other }));
                }
                if egress.contains_key(&t.address) {
                    return Err(bad(TunnelError::AddressIsEgress(t.address)));
                }
                tunnels.insert((t.address, t.port), ci);
            }
        }
        let mut pods: HashMap<Ipv4Addr, usize> = HashMap::with_capacity(self.bindings.len());
        let mut tunnelled = HashSet::new();
        let mut peer_keys: HashMap<(usize, WgKey), Ipv4Addr> = HashMap::new();
        for b in &self.bindings {
            let Some(&ci) = by_name.get(&*b.config) else {
                return Err(PlanError::UnknownConfig { pod: b.pod_ip, config: b.config.to_string() });
            };
            if let Some(&eci) = egress.get(&b.pod_ip) {
                let config = self.configs[eci].name.clone();
                return Err(PlanError::PodIsEgress { pod: b.pod_ip, config });
            }
            if let Some(prev) = pods.insert(b.pod_ip, ci) {
                // Twice in one config is harmless unless one has a key
                // (which key would it be?).
                if prev != ci || b.public_key.is_some() || tunnelled.contains(&b.pod_ip) {
                    let a = self.configs[prev].name.clone();
                    return Err(PlanError::DuplicateBinding { pod: b.pod_ip, a, b: b.config.to_string() });
                }
            }
            if let Some(key) = b.public_key {
                if self.configs[ci].tunnel.is_none() {
                    return Err(PlanError::NoTunnel { pod: b.pod_ip, config: b.config.to_string() });
                }
                if let Some(other) = peer_keys.insert((ci, key), b.pod_ip) {
                    return Err(PlanError::DuplicatePeerKey {
                        pod: b.pod_ip,
                        other,
                        key: key.to_string(),
                        config: b.config.to_string(),
                    });
                }
                tunnelled.insert(b.pod_ip);
            }
        }
        self.validate_sources()?;
        network_policy::validate(&self.network_policies).map_err(PlanError::BadNetworkPolicy)
    }

    fn validate_sources(&self) -> Result<(), PlanError> {
        let count = self.configs.iter().map(|c| c.sources.len()).sum();
        if count > MAX_SOURCE_CIDRS {
            return Err(PlanError::TooManySources { count });
        }
        let mut by_cidr: HashMap<Ipv4Cidr, usize> = HashMap::new();
        for (ci, c) in self.configs.iter().enumerate() {
            for &cidr in &c.sources {
                // A source CIDR holding an egress address would translate
                // the gateway's own replies as if a pod had sent them. Two
                // prefixes that overlap nest: the first shared address is
                // the later of their starts.
                if let Some(p) = self.configs.iter().flat_map(|c| &c.egress).find(|p| p.overlaps(&cidr)) {
                    let addr = p.addr().max(cidr.addr());
                    return Err(PlanError::SourceHoldsEgress { cidr, config: c.name.clone(), addr });
                }
                if let Some(other) = by_cidr.insert(cidr, ci) {
                    if other != ci {
                        let a = self.configs[other].name.clone();
                        return Err(PlanError::DuplicateSource { cidr, a, b: c.name.clone() });
                    }
                }
            }
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// The checks of one config that need no other: pool size, timeouts,
    /// quotas, mapping and filtering.
    fn validate_settings(&self) -> Result<(), PlanError> {
        let name = || self.name.clone();
        let count: u64 = self.egress.iter().map(|p| p.size()).sum();
        if count == 0 {
            return Err(PlanError::EmptyPool(name()));
        }
        if count > MAX_POOL_ADDRS {
            return Err(PlanError::PoolTooLarge { config: name(), count });
        }
        let t = &self.timeouts;
        for (field, value) in [
            ("tcpEstablished", t.tcp_established),
            ("tcpTransitory", t.tcp_transitory),
            ("udp", t.udp),
            ("icmp", t.icmp),
        ] {
            if value == 0 || value > MAX_TIMEOUT {
                return Err(PlanError::BadTimeout { config: name(), field, value });
            }
        }
        if t.port_cooldown > MAX_TIMEOUT {
            return Err(PlanError::BadTimeout { config: name(), field: "portCooldown", value: t.port_cooldown });
        }
        if self.port_quota == 0 {
            return Err(PlanError::ZeroQuota(name()));
        }
        if self.session_limit == 0 {
            return Err(PlanError::ZeroSessionLimit(name()));
        }
        if self.filtering == FilteringMode::EndpointIndependent && self.mapping != MappingMode::EndpointIndependent {
            return Err(PlanError::FilteringNeedsEim { config: name() });
        }
        Ok(())
    }
}
