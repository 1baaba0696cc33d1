//! Egress policy as a plan carries it: an ordered rule set per config,
//! first match wins. Validated here ([`EgressPolicy::validate`]); the NAT
//! core compiles it into its lookup form.

use crate::Ipv4Cidr;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

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

/// Whether an FQDN rule also requires the name on the wire: the TLS
/// ClientHello's `server_name` on TLS ports, the HTTP/1.x `Host` header on
/// HTTP ports. One address serves many names (storage stamps, CDNs), so an
/// address learned from DNS alone opens every name behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerNameCheck {
    /// TCP flows to TLS and HTTP ports pass only once the name the client
    /// sends matches one of the rule's names; QUIC (UDP on a TLS port),
    /// whose name cannot be read without decrypting, is refused so that
    /// clients fall back to TCP.
    #[default]
    Required,
    /// DNS learning alone decides (the rule opens every name on the
    /// addresses its names resolved to).
    Unchecked,
}

/// The ports on which an FQDN rule reads the TLS server name, besides these.
pub const TLS_PORT: u16 = 443;
/// The ports on which an FQDN rule reads the HTTP Host header, besides these.
pub const HTTP_PORT: u16 = 80;

/// A port or an inclusive range, written `443` or `"8000-8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::BadPort(s.to_string());
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

/// One rule: it matches when every field given matches. Unknown fields are
/// refused: a rule that still carries the cluster's `podSelector` (which
/// only egret-control resolves, into `pods`) must not widen to every pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
    /// Source pods by IP; absent means every pod of the config (the cluster
    /// source fills it from an EgressPolicy's `podSelector`).
    #[serde(default)]
    pub pods: Option<Vec<Ipv4Addr>>,
    /// With `fqdns`: whether the name on the wire must match them too.
    #[serde(default, skip_serializing_if = "is_default")]
    pub server_name: ServerNameCheck,
    /// With `fqdns`: TLS ports besides 443 whose ClientHello is read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_ports: Vec<PortRange>,
    /// With `fqdns`: HTTP ports besides 80 whose request Host is read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_ports: Vec<PortRange>,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

impl PolicyRule {
    /// Whether this rule reads the name on the wire of a flow to `port`,
    /// and how: `Some(true)` TLS, `Some(false)` HTTP.
    pub fn reads_server_name(&self, port: u16) -> Option<bool> {
        if self.fqdns.is_empty() || self.server_name == ServerNameCheck::Unchecked {
            return None;
        }
        let listed = |ranges: &[PortRange]| ranges.iter().any(|r| (r.lo..=r.hi).contains(&port));
        if port == TLS_PORT || listed(&self.tls_ports) {
            Some(true)
        } else if port == HTTP_PORT || listed(&self.http_ports) {
            Some(false)
        } else {
            None
        }
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
/// Longest a learned DNS answer is trusted (a day), and so the highest
/// `dnsTtlFloor`.
pub const MAX_DNS_TTL: u32 = 86_400;
/// Most destinations (`cidrs` + `fqdns`), port ranges or pods one rule may
/// list, and most `dnsResolvers`: a plan is one tenant's input to every
/// worker of the pool, so none of its lists is unbounded.
pub const MAX_RULE_ITEMS: usize = 65_536;
pub const MAX_DNS_RESOLVERS: usize = 64;

/// What is wrong with a policy; the rule is named where one is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0} rules; at most {MAX_POLICY_RULES} are allowed")]
    TooManyRules(usize),
    #[error("rule #{0} has no name")]
    UnnamedRule(usize),
    #[error("rule '{0}' is defined twice")]
    DuplicateRule(String),
    #[error("rule '{0}': ports need protocol tcp or udp")]
    PortsWithoutProtocol(String),
    #[error("rule '{rule}': '{name}' is not a DNS name")]
    BadName { rule: String, name: String },
    #[error("fqdns rules need dnsResolvers: the resolvers whose answers may open addresses")]
    FqdnsWithoutResolvers,
    #[error("invalid port or port range '{0}' (1-65535, low-high)")]
    BadPort(String),
    #[error("dnsTtlFloor {0} is above {MAX_DNS_TTL} (a day)")]
    TtlFloorTooHigh(u32),
    #[error("rule '{rule}' lists {count} {what}; at most {MAX_RULE_ITEMS} are allowed")]
    RuleTooLarge { rule: String, what: &'static str, count: usize },
    #[error("{0} dnsResolvers; at most {MAX_DNS_RESOLVERS} are allowed")]
    TooManyResolvers(usize),
    #[error("rule '{0}': tlsPorts and httpPorts need fqdns (the names to check)")]
    ServerNamePortsWithoutFqdns(String),
    #[error("rule '{rule}': port {port} is both a TLS and an HTTP port")]
    ServerNamePortsOverlap { rule: String, port: u16 },
}

/// A DNS name as an FQDN rule may give it: trimmed, lower case, no final
/// dot; `*.example.com` comes back as (`true`, `example.com`).
pub fn normalise_fqdn(f: &str) -> (bool, String) {
    let f = f.trim().trim_end_matches('.').to_ascii_lowercase();
    match f.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, f),
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

impl EgressPolicy {
    /// Checks the rule set a gateway would compile.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.rules.len() > MAX_POLICY_RULES {
            return Err(PolicyError::TooManyRules(self.rules.len()));
        }
        if self.dns_ttl_floor > MAX_DNS_TTL {
            return Err(PolicyError::TtlFloorTooHigh(self.dns_ttl_floor));
        }
        if self.dns_resolvers.len() > MAX_DNS_RESOLVERS {
            return Err(PolicyError::TooManyResolvers(self.dns_resolvers.len()));
        }
        let mut names = HashSet::new();
        let mut has_fqdns = false;
        for (i, r) in self.rules.iter().enumerate() {
            if r.name.is_empty() {
                return Err(PolicyError::UnnamedRule(i + 1));
            }
            if !names.insert(r.name.as_str()) {
                return Err(PolicyError::DuplicateRule(r.name.clone()));
            }
            for (what, count) in [
                ("destinations", r.cidrs.len() + r.fqdns.len()),
                ("port ranges", r.ports.len()),
                ("TLS and HTTP port ranges", r.tls_ports.len() + r.http_ports.len()),
                ("pods", r.pods.as_ref().map_or(0, Vec::len)),
            ] {
                if count > MAX_RULE_ITEMS {
                    return Err(PolicyError::RuleTooLarge { rule: r.name.clone(), what, count });
                }
            }
            if !r.ports.is_empty() && r.protocol == Some(Protocol::Icmp) {
                return Err(PolicyError::PortsWithoutProtocol(r.name.clone()));
            }
            if r.fqdns.is_empty() && !(r.tls_ports.is_empty() && r.http_ports.is_empty()) {
                return Err(PolicyError::ServerNamePortsWithoutFqdns(r.name.clone()));
            }
            let tls = r.tls_ports.iter().map(|p| (p.lo, p.hi)).chain([(TLS_PORT, TLS_PORT)]);
            let http: Vec<(u16, u16)> =
                r.http_ports.iter().map(|p| (p.lo, p.hi)).chain([(HTTP_PORT, HTTP_PORT)]).collect();
            for (lo, hi) in tls {
                if let Some(&(hlo, hhi)) = http.iter().find(|&&(hlo, hhi)| lo <= hhi && hlo <= hi) {
                    let port = lo.max(hlo).min(hi.min(hhi));
                    return Err(PolicyError::ServerNamePortsOverlap { rule: r.name.clone(), port });
                }
            }
            for f in &r.fqdns {
                let (wild, name) = normalise_fqdn(f);
                if !valid_name(&name) {
                    let name = if wild { format!("*.{name}") } else { name };
                    return Err(PolicyError::BadName { rule: r.name.clone(), name });
                }
                has_fqdns = true;
            }
        }
        if has_fqdns && self.dns_resolvers.is_empty() {
            return Err(PolicyError::FqdnsWithoutResolvers);
        }
        Ok(())
    }
}
