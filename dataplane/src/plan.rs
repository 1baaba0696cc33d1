//! The plan a gateway serves: gateway configs (egress pools, exclusions,
//! timeouts, quotas, NAT behaviour) and pod bindings. A plan is validated
//! whole by [`Plan::compile`]; an invalid plan is rejected with an error that
//! names the offending config or pod, and nothing of it is applied.

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

/// An IPv4 prefix such as `198.19.100.0/28`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Cidr {
    /// A prefix; host bits must be zero.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PlanError> {
        if len > 32 {
            return Err(PlanError::BadCidr(format!("{addr}/{len}"), "prefix length over 32"));
        }
        let c = Ipv4Cidr { addr, len };
        if u32::from(addr) & !c.mask() != 0 {
            return Err(PlanError::BadCidr(format!("{addr}/{len}"), "host bits set"));
        }
        Ok(c)
    }
    #[inline]
    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    #[inline]
    pub fn contains(&self, ip: u32) -> bool {
        ip & self.mask() == u32::from(self.addr)
    }
    /// The prefix of length `len` (at most 32) that holds `ip`.
    #[inline]
    pub fn covering(ip: u32, len: u8) -> Ipv4Cidr {
        let c = Ipv4Cidr { addr: Ipv4Addr::UNSPECIFIED, len: len.min(32) };
        Ipv4Cidr { addr: Ipv4Addr::from(ip & c.mask()), len: c.len }
    }
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }
    /// Every address of the prefix (a public IP prefix has no network or
    /// broadcast address to skip: each one maps to a usable public IP).
    pub fn addrs(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u64::from(u32::from(self.addr));
        (base..base + self.size()).map(|a| Ipv4Addr::from(a as u32))
    }
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let len = self.len.min(other.len);
        let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
}

impl FromStr for Ipv4Cidr {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let bad = |why| PlanError::BadCidr(s.to_string(), why);
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad("prefix length is not a number"))?),
            None => (s, 32),
        };
        let addr = Ipv4Addr::from_str(a.trim()).map_err(|_| bad("not an IPv4 address"))?;
        Ipv4Cidr::new(addr, l)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

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

/// What a policy does with a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyAction {
    #[default]
    Allow,
    Deny,
}

/// How a denied new flow is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyResponse {
    /// Silently dropped (and counted).
    #[default]
    Drop,
    /// TCP gets a RST; UDP and ICMP get ICMP unreachable, administratively
    /// prohibited.
    Reject,
}

/// What a rule change does to live flows it now denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LiveFlows {
    #[default]
    Cut,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
        }
    }
}

/// A port or an inclusive range, written `443` or `"8000-8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let bad = || PlanError::BadPort(s.to_string());
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
            None => {
                let p = s.trim().parse().map_err(|_| bad())?;
                (p, p)
            }
        };
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let s = match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string(),
            Raw::S(s) => s,
        };
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One rule: it matches when every field given matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub name: String,
    pub action: PolicyAction,
    /// Destination prefixes. With neither `cidrs` nor `fqdns`, any destination.
    #[serde(default)]
    pub cidrs: Vec<Ipv4Cidr>,
    /// Destination names (`api.example.com`, `*.example.com`), matched against
    /// the addresses the pod's own DNS answers gave for them.
    #[serde(default)]
    pub fqdns: Vec<String>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Destination ports (TCP and UDP); empty means any.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Source pods by IP; absent means every pod of the config. The cluster
    /// sources fill it from `podSelector`.
    #[serde(default)]
    pub pods: Option<Vec<Ipv4Addr>>,
    /// Source pods by label, as in a NetworkPolicy. Only the cluster sources
    /// (control plane, manifests file) read it: they resolve it to `pods`,
    /// the pods bound to this config whose labels match, so a plan a gateway
    /// compiles never carries one.
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

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
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

/// An ordered egress rule set for one config: first matching rule wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicy {
    #[serde(default)]
    pub default_action: PolicyAction,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default)]
    pub deny_response: DenyResponse,
    #[serde(default)]
    pub live_flows: LiveFlows,
    /// Shortest time a learned DNS answer is trusted, whatever its TTL.
    #[serde(default = "default_ttl_floor")]
    pub dns_ttl_floor: u32,
    /// The resolvers whose answers FQDN rules learn from; answers from any
    /// other host are ignored, or a pod allowed DNS to a host it runs could
    /// open any address under an allowed name. Required with FQDN rules.
    #[serde(default)]
    pub dns_resolvers: Vec<Ipv4Cidr>,
}

fn default_ttl_floor() -> u32 {
    30
}

/// Most rules one policy may hold.
pub const MAX_POLICY_RULES: usize = 100_000;

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

/// A WireGuard public key, base64 as `wg` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgKey(pub [u8; 32]);

/// A WireGuard private key: base64 in the plan (it travels to gateways in
/// it), never shown: `Debug` and `Display` print `<redacted>`, and
/// [`Plan::redacted`] blanks it before a plan is shown to anyone.
#[derive(Clone, PartialEq, Eq)]
pub struct WgSecret(pub [u8; 32]);

fn decode_key(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| "not base64 (wg genkey / wg pubkey print the expected form)".to_string())?;
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| format!("a WireGuard key is 32 bytes, this one is {}", b.len()))
}

fn encode_key(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

impl FromStr for WgKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_key(s).map(WgKey)
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_key(&self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl fmt::Debug for WgSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl WgSecret {
    /// The key shown where a plan is displayed.
    pub const REDACTED: WgSecret = WgSecret([0; 32]);
    pub fn public_key(&self) -> WgKey {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        WgKey(*boringtun::x25519::PublicKey::from(&secret).as_bytes())
    }
}

impl Serialize for WgKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WgKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("public key: {e}")))
    }
}

impl Serialize for WgSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if *self == WgSecret::REDACTED {
            return s.serialize_str("<redacted>");
        }
        s.serialize_str(&encode_key(&self.0))
    }
}

impl<'de> Deserialize<'de> for WgSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Never echo the value: it is a secret even when malformed.
        decode_key(&s).map(WgSecret).map_err(|e| serde::de::Error::custom(format!("private key: {e}")))
    }
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
    pub config: String,
    /// The pod's WireGuard key (kube-egress-gateway's PodEndpoint): the pod
    /// reaches the gateway only through its config's tunnel, and plain
    /// packets from its address are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<WgKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u64,
    pub configs: Vec<GatewayConfig>,
    pub bindings: Vec<Binding>,
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
    #[error("invalid port or port range '{0}' (1-65535, low-high)")]
    BadPort(String),
    #[error("config '{config}' policy: {problem}")]
    BadPolicy { config: String, problem: String },
    #[error("config '{config}' tunnel: {problem}")]
    BadTunnel { config: String, problem: String },
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
}

/// A validated plan in the shape the NAT core looks things up in.
#[derive(Debug, Clone)]
pub struct CompiledPlan {
    pub version: u64,
    pub configs: Vec<CompiledConfig>,
    /// pod IP → index into `configs`.
    pub pods: HashMap<u32, u16>,
    /// egress IP → (config index, index into that config's `addrs`).
    pub egress: HashMap<u32, (u16, u16)>,
    /// Pods that reach the gateway through a tunnel (never in plain).
    pub tunnelled: hashbrown::HashSet<u32>,
    /// (tunnel address, port) → config index.
    pub tunnels: HashMap<(u32, u16), u16>,
    /// Fallback source CIDRs → config index.
    pub sources: SourceCidrs,
}

/// Fallback source CIDRs, looked up by longest match with one hash probe
/// per prefix length in use (a plan uses few), not a scan of every CIDR:
/// every packet whose source is no bound pod asks.
#[derive(Debug, Clone, Default)]
pub struct SourceCidrs {
    by_cidr: HashMap<Ipv4Cidr, u16>,
    /// The prefix lengths in `by_cidr`, longest first.
    lens: Vec<u8>,
}

impl SourceCidrs {
    fn new(by_cidr: HashMap<Ipv4Cidr, u16>) -> SourceCidrs {
        let mut lens: Vec<u8> = by_cidr.keys().map(|c| c.prefix_len()).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        SourceCidrs { by_cidr, lens }
    }

    /// The config of the longest CIDR holding `ip`.
    #[inline]
    pub fn lookup(&self, ip: u32) -> Option<u16> {
        self.lens.iter().find_map(|&len| self.by_cidr.get(&Ipv4Cidr::covering(ip, len)).copied())
    }

    pub fn cidrs(&self) -> impl Iterator<Item = Ipv4Cidr> + '_ {
        self.by_cidr.keys().copied()
    }
}

impl CompiledPlan {
    /// The config a fallback source CIDR binds `src` to (the longest match).
    #[inline]
    pub fn source_config(&self, src: u32) -> Option<u16> {
        self.sources.lookup(src)
    }

    /// The config `ip` egresses through: its binding, else a source CIDR.
    #[inline]
    pub fn config_of(&self, ip: u32) -> Option<u16> {
        self.pods.get(&ip).copied().or_else(|| self.source_config(ip))
    }
}

/// A config's tunnel with its peers, as the tunnel stage builds it.
#[derive(Clone, PartialEq, Eq)]
pub struct CompiledTunnel {
    pub address: Ipv4Addr,
    pub port: u16,
    pub private_key: WgSecret,
    pub peers: Vec<crate::tunnel::PeerConfig>,
}

impl fmt::Debug for CompiledTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompiledTunnel({}:{}, {} peers)", self.address, self.port, self.peers.len())
    }
}

#[derive(Debug, Clone)]
pub struct CompiledConfig {
    pub name: String,
    /// Its object's UID: what the load balancer's probe asks by.
    pub uid: Option<String>,
    pub addrs: Vec<Ipv4Addr>,
    /// Longest prefix first.
    pub exclude: Vec<Ipv4Cidr>,
    pub timeouts: Timeouts,
    pub port_quota: u32,
    pub session_limit: u32,
    pub mapping: MappingMode,
    pub filtering: FilteringMode,
    pub policy: Option<Arc<crate::nat::policy::CompiledPolicy>>,
    pub tunnel: Option<Arc<CompiledTunnel>>,
}

impl CompiledConfig {
    #[inline]
    pub fn excludes(&self, dst: u32) -> bool {
        self.exclude.iter().any(|c| c.contains(dst))
    }
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

    /// Validates the whole plan. Either every part is valid or nothing is.
    pub fn compile(&self) -> Result<CompiledPlan, PlanError> {
        let mut configs = Vec::with_capacity(self.configs.len());
        let mut by_name: HashMap<&str, u16> = HashMap::new();
        let mut egress: HashMap<u32, (u16, u16)> = HashMap::new();
        let mut tunnels: HashMap<(u32, u16), u16> = HashMap::new();
        let mut compiled_tunnels: Vec<Option<CompiledTunnel>> = Vec::new();
        for (ci, c) in self.configs.iter().enumerate() {
            if c.name.is_empty() {
                return Err(PlanError::EmptyName);
            }
            if by_name.insert(&c.name, ci as u16).is_some() {
                return Err(PlanError::DuplicateConfig(c.name.clone()));
            }
            let count: u64 = c.egress.iter().map(|p| p.size()).sum();
            if count == 0 {
                return Err(PlanError::EmptyPool(c.name.clone()));
            }
            if count > MAX_POOL_ADDRS {
                return Err(PlanError::PoolTooLarge { config: c.name.clone(), count });
            }
            let t = &c.timeouts;
            for (field, value) in [
                ("tcpEstablished", t.tcp_established),
                ("tcpTransitory", t.tcp_transitory),
                ("udp", t.udp),
                ("icmp", t.icmp),
            ] {
                if value == 0 || value > MAX_TIMEOUT {
                    return Err(PlanError::BadTimeout { config: c.name.clone(), field, value });
                }
            }
            if t.port_cooldown > MAX_TIMEOUT {
                let value = t.port_cooldown;
                return Err(PlanError::BadTimeout { config: c.name.clone(), field: "portCooldown", value });
            }
            if c.port_quota == 0 {
                return Err(PlanError::ZeroQuota(c.name.clone()));
            }
            if c.session_limit == 0 {
                return Err(PlanError::ZeroSessionLimit(c.name.clone()));
            }
            if c.filtering == FilteringMode::EndpointIndependent && c.mapping != MappingMode::EndpointIndependent {
                return Err(PlanError::FilteringNeedsEim { config: c.name.clone() });
            }
            let mut addrs = Vec::new();
            for p in &c.egress {
                for a in p.addrs() {
                    let idx = addrs.len() as u16;
                    if let Some((other, _)) = egress.insert(u32::from(a), (ci as u16, idx)) {
                        let other = self.configs[usize::from(other)].name.clone();
                        return Err(PlanError::PoolOverlap { addr: a, a: other, b: c.name.clone() });
                    }
                    addrs.push(a);
                }
            }
            let policy = match &c.policy {
                Some(p) => Some(Arc::new(
                    crate::nat::policy::CompiledPolicy::compile(p)
                        .map_err(|problem| PlanError::BadPolicy { config: c.name.clone(), problem })?,
                )),
                None => None,
            };
            let tunnel = match &c.tunnel {
                Some(t) => {
                    let bad = |problem: &str| PlanError::BadTunnel { config: c.name.clone(), problem: problem.into() };
                    if t.port == 0 {
                        return Err(bad("port must be 1-65535"));
                    }
                    if t.private_key == WgSecret::REDACTED {
                        return Err(bad("the private key is missing (a redacted plan cannot be served)"));
                    }
                    if let Some(&other) = tunnels.get(&(u32::from(t.address), t.port)) {
                        let other = &self.configs[usize::from(other)].name;
                        return Err(bad(&format!("{}:{} is also config '{other}'s", t.address, t.port)));
                    }
                    if egress.contains_key(&u32::from(t.address)) {
                        return Err(bad(&format!("{} is an egress address", t.address)));
                    }
                    tunnels.insert((u32::from(t.address), t.port), ci as u16);
                    Some(CompiledTunnel {
                        address: t.address,
                        port: t.port,
                        private_key: t.private_key.clone(),
                        peers: Vec::new(),
                    })
                }
                None => None,
            };
            compiled_tunnels.push(tunnel);
            let mut exclude = c.exclude.clone();
            exclude.sort_by_key(|c| std::cmp::Reverse(c.prefix_len()));
            configs.push(CompiledConfig {
                name: c.name.clone(),
                uid: c.uid.clone(),
                addrs,
                exclude,
                timeouts: c.timeouts,
                port_quota: c.port_quota,
                session_limit: c.session_limit,
                mapping: c.mapping,
                filtering: c.filtering,
                policy,
                tunnel: None,
            });
        }
        let mut pods: HashMap<u32, u16> = HashMap::with_capacity(self.bindings.len());
        let mut tunnelled = hashbrown::HashSet::new();
        let mut peer_keys: HashMap<(u16, WgKey), Ipv4Addr> = HashMap::new();
        for b in &self.bindings {
            let Some(&ci) = by_name.get(b.config.as_str()) else {
                return Err(PlanError::UnknownConfig { pod: b.pod_ip, config: b.config.clone() });
            };
            if let Some(&(eci, _)) = egress.get(&u32::from(b.pod_ip)) {
                let config = self.configs[usize::from(eci)].name.clone();
                return Err(PlanError::PodIsEgress { pod: b.pod_ip, config });
            }
            if let Some(prev) = pods.insert(u32::from(b.pod_ip), ci) {
                // Twice in one config is harmless unless one has a key
                // (which key would it be?).
                if prev != ci || b.public_key.is_some() || tunnelled.contains(&u32::from(b.pod_ip)) {
                    let a = self.configs[usize::from(prev)].name.clone();
                    return Err(PlanError::DuplicateBinding { pod: b.pod_ip, a, b: b.config.clone() });
                }
            }
            if let Some(key) = b.public_key {
                let Some(t) = compiled_tunnels[usize::from(ci)].as_mut() else {
                    return Err(PlanError::NoTunnel { pod: b.pod_ip, config: b.config.clone() });
                };
                if let Some(other) = peer_keys.insert((ci, key), b.pod_ip) {
                    return Err(PlanError::DuplicatePeerKey {
                        pod: b.pod_ip,
                        other,
                        key: key.to_string(),
                        config: b.config.clone(),
                    });
                }
                t.peers.push(crate::tunnel::PeerConfig { public_key: key.0, pod_ip: b.pod_ip });
                tunnelled.insert(u32::from(b.pod_ip));
            }
        }
        for (c, t) in configs.iter_mut().zip(compiled_tunnels) {
            c.tunnel = t.map(Arc::new);
        }
        let sources = self.compile_sources()?;
        Ok(CompiledPlan { version: self.version, configs, pods, egress, tunnelled, tunnels, sources })
    }

    fn compile_sources(&self) -> Result<SourceCidrs, PlanError> {
        let count = self.configs.iter().map(|c| c.sources.len()).sum();
        if count > MAX_SOURCE_CIDRS {
            return Err(PlanError::TooManySources { count });
        }
        let mut by_cidr: HashMap<Ipv4Cidr, u16> = HashMap::new();
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
                if let Some(other) = by_cidr.insert(cidr, ci as u16) {
                    if usize::from(other) != ci {
                        let a = self.configs[usize::from(other)].name.clone();
                        return Err(PlanError::DuplicateSource { cidr, a, b: c.name.clone() });
                    }
                }
            }
        }
        Ok(SourceCidrs::new(by_cidr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn plan() -> Plan {
        Plan {
            version: 1,
            configs: vec![
                GatewayConfig::new("a", vec![cidr("198.19.100.0/28")]),
                GatewayConfig::new("b", vec![cidr("198.19.101.0/31"), cidr("198.19.102.7")]),
            ],
            bindings: vec![
                Binding { pod_ip: "198.18.0.2".parse().unwrap(), config: "a".into(), public_key: None },
                Binding { pod_ip: "198.18.0.3".parse().unwrap(), config: "b".into(), public_key: None },
            ],
        }
    }

    #[test]
    fn compiles_pools_and_bindings() {
        let c = plan().compile().unwrap();
        assert_eq!(c.configs[0].addrs.len(), 16);
        assert_eq!(c.configs[1].addrs.len(), 3);
        assert_eq!(c.pods[&u32::from(Ipv4Addr::new(198, 18, 0, 3))], 1);
        assert_eq!(c.egress[&u32::from(Ipv4Addr::new(198, 19, 102, 7))], (1, 2));
    }

    #[test]
    fn rejects_bad_cidrs_with_clear_errors() {
        assert_eq!(
            "198.19.100.1/28".parse::<Ipv4Cidr>().unwrap_err().to_string(),
            "invalid CIDR '198.19.100.1/28': host bits set"
        );
        assert!("198.19.100.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("banana/8".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn rejects_invalid_plans_whole() {
        let mut p = plan();
        p.configs[1].egress.push(cidr("198.19.100.8/29"));
        assert_eq!(
            p.compile().unwrap_err().to_string(),
            "egress address 198.19.100.8 is in the pools of both 'a' and 'b'"
        );

        let mut p = plan();
        p.bindings.push(Binding { pod_ip: "198.18.0.9".parse().unwrap(), config: "zz".into(), public_key: None });
        assert_eq!(
            p.compile().unwrap_err().to_string(),
            "pod 198.18.0.9 is bound to config 'zz', which does not exist"
        );

        let mut p = plan();
        p.bindings.push(Binding { pod_ip: "198.18.0.2".parse().unwrap(), config: "b".into(), public_key: None });
        assert!(matches!(p.compile(), Err(PlanError::DuplicateBinding { .. })));

        let mut p = plan();
        p.configs[0].timeouts.udp = 0;
        assert!(matches!(p.compile(), Err(PlanError::BadTimeout { field: "udp", .. })));

        let mut p = plan();
        p.configs.push(GatewayConfig::new("a", vec![cidr("198.19.110.0/30")]));
        assert_eq!(p.compile().unwrap_err(), PlanError::DuplicateConfig("a".into()));

        let mut p = plan();
        p.configs[0].filtering = FilteringMode::EndpointIndependent;
        p.configs[0].mapping = MappingMode::PortReuse;
        assert!(p.compile().is_err());
    }
}

#[cfg(test)]
mod sources {
    use super::*;

    fn with_sources(a: &[&str], b: &[&str]) -> Plan {
        let mut ca = GatewayConfig::new("a", vec!["198.19.100.0/28".parse().unwrap()]);
        let mut cb = GatewayConfig::new("b", vec!["198.19.101.0/28".parse().unwrap()]);
        ca.sources = a.iter().map(|s| s.parse().unwrap()).collect();
        cb.sources = b.iter().map(|s| s.parse().unwrap()).collect();
        Plan { version: 1, configs: vec![ca, cb], bindings: vec![] }
    }

    #[test]
    fn the_longest_source_cidr_wins() {
        let c = with_sources(&["198.18.0.0/16"], &["198.18.5.0/24"]).compile().unwrap();
        assert_eq!(c.config_of(u32::from(Ipv4Addr::new(198, 18, 5, 9))), Some(1));
        assert_eq!(c.config_of(u32::from(Ipv4Addr::new(198, 18, 6, 9))), Some(0));
        assert_eq!(c.config_of(u32::from(Ipv4Addr::new(198, 20, 0, 1))), None);
    }

    #[test]
    fn one_cidr_bound_by_two_configs_is_refused() {
        let e = with_sources(&["198.18.0.0/16"], &["198.18.0.0/16"]).compile().unwrap_err();
        assert_eq!(e.to_string(), "source CIDR 198.18.0.0/16 is bound by both 'a' and 'b'");
    }

    #[test]
    fn a_source_cidr_holding_an_egress_address_is_refused() {
        let e = with_sources(&["198.19.0.0/16"], &[]).compile().unwrap_err();
        assert!(matches!(e, PlanError::SourceHoldsEgress { .. }), "{e}");
    }

    #[test]
    fn sources_travel_in_the_plan_json_and_are_left_out_when_empty() {
        let p = with_sources(&["198.18.0.0/16"], &[]);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json.matches("\"sources\"").count(), 1, "{json}");
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
    }
}

#[cfg(test)]
mod json {
    use super::*;

    #[test]
    fn the_documented_json_form_parses_and_compiles() {
        let text = include_str!("../testdata/plan.json");
        let p: Plan = serde_json::from_str(text).unwrap();
        let c = p.compile().unwrap();
        assert_eq!(p.configs[0].mapping, MappingMode::PortReuse);
        assert_eq!(p.configs[0].timeouts.udp, 120);
        assert_eq!(p.configs[0].timeouts.tcp_established, 7440, "unset timeouts keep their defaults");
        assert_eq!(p.configs[0].policy.as_ref().unwrap().rules[0].ports[1], PortRange { lo: 8000, hi: 8080 });
        assert_eq!(c.configs[1].addrs.len(), 3);
        let back: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}

#[cfg(test)]
mod tunnels {
    use super::*;

    fn tunnelled_plan() -> Plan {
        let mut c = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
        c.tunnel =
            Some(TunnelConfig { address: Ipv4Addr::new(198, 18, 50, 100), port: 6000, private_key: WgSecret([7; 32]) });
        Plan {
            version: 1,
            configs: vec![c, GatewayConfig::new("b", vec!["198.19.101.0/30".parse().unwrap()])],
            bindings: vec![Binding {
                pod_ip: Ipv4Addr::new(198, 18, 0, 2),
                config: "a".into(),
                public_key: Some(WgKey([1; 32])),
            }],
        }
    }

    #[test]
    fn a_tunnelled_binding_makes_its_pod_a_peer_of_the_configs_tunnel() {
        let c = tunnelled_plan().compile().unwrap();
        assert!(c.tunnelled.contains(&u32::from(Ipv4Addr::new(198, 18, 0, 2))));
        assert_eq!(c.tunnels[&(u32::from(Ipv4Addr::new(198, 18, 50, 100)), 6000)], 0);
        assert_eq!(c.configs[0].tunnel.as_ref().unwrap().peers.len(), 1);
    }

    #[test]
    fn a_pod_key_for_a_config_without_a_tunnel_is_refused() {
        let mut p = tunnelled_plan();
        p.bindings[0].config = "b".into();
        assert!(matches!(p.compile(), Err(PlanError::NoTunnel { .. })));
    }

    #[test]
    fn one_key_for_two_pods_of_a_config_is_refused() {
        let mut p = tunnelled_plan();
        let mut second = p.bindings[0].clone();
        second.pod_ip = Ipv4Addr::new(198, 18, 0, 3);
        p.bindings.push(second);
        assert!(matches!(p.compile(), Err(PlanError::DuplicatePeerKey { .. })));
    }

    #[test]
    fn two_configs_on_one_tunnel_endpoint_are_refused() {
        let mut p = tunnelled_plan();
        p.configs[1].tunnel = p.configs[0].tunnel.clone();
        assert!(matches!(p.compile(), Err(PlanError::BadTunnel { .. })));
    }

    #[test]
    fn private_keys_never_show_and_a_redacted_plan_cannot_be_served() {
        let p = tunnelled_plan();
        let shown = serde_json::to_string(&p.redacted()).unwrap();
        assert!(!shown.contains(&WgKey([7; 32]).to_string()), "{shown}");
        assert!(!format!("{p:?}").contains(&WgKey([7; 32]).to_string()));
        let back: Result<Plan, _> = serde_json::from_str(&shown);
        assert!(back.is_err(), "'<redacted>' is no key");
        let json = serde_json::to_string(&p).unwrap();
        let again: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(again, p, "the plan itself travels with its key");
    }

    #[test]
    fn malformed_keys_get_clear_errors_that_do_not_echo_them() {
        let e = serde_json::from_str::<WgSecret>("\"c2VjcmV0\"").unwrap_err().to_string();
        assert!(e.contains("32 bytes") && !e.contains("c2VjcmV0"), "{e}");
        assert!("not base64!".parse::<WgKey>().is_err());
    }
}
