//! Kubernetes NetworkPolicy's egress part, as a plan carries it: for each
//! policy, the pods this gateway serves that its `podSelector` selects, and
//! its egress rules reduced to what can leave through the gateway
//! (`ipBlock` peers and TCP/UDP ports). egret-control resolves selectors,
//! `policyTypes` defaulting and named ports; the gateway enforces:
//! - a pod no policy here selects is unrestricted by this layer;
//! - a selected pod may open a flow only when a rule of one of its
//!   policies allows it (the union), and Egret's own EgressPolicy must
//!   allow it too;
//! - a rule with no `to` matches every destination, with no `ports` every
//!   port and protocol (ICMP included); with `ports`, only TCP or UDP flows
//!   to one of them.

use crate::Ipv4Cidr;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Most NetworkPolicies one plan may carry, and most entries (pods, rules,
/// peers, ports, excepts) in one of them.
pub const MAX_NETWORK_POLICIES: usize = 100_000;
pub const MAX_NETWORK_POLICY_ITEMS: usize = 65_536;

/// A transport a NetworkPolicy port names that can cross the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NetworkProtocol {
    Tcp,
    Udp,
}

impl NetworkProtocol {
    pub fn number(self) -> u8 {
        match self {
            NetworkProtocol::Tcp => 6,
            NetworkProtocol::Udp => 17,
        }
    }
}

/// `ipBlock`: a CIDR less the `except` CIDRs inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    pub cidr: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Ipv4Cidr>,
}

impl IpBlock {
    pub fn contains(&self, ip: u32) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One port entry: a protocol and an inclusive range (`port`..=`endPort`;
/// a single port is `lo == hi`; no port: the whole protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPort {
    pub protocol: NetworkProtocol,
    #[serde(default = "one")]
    pub lo: u16,
    #[serde(default = "max")]
    pub hi: u16,
}

fn one() -> u16 {
    1
}

fn max() -> u16 {
    u16::MAX
}

/// One egress rule. `to: None` is every destination; `Some(blocks)` only
/// those blocks (empty: nothing that leaves through the gateway, as a rule
/// whose peers are all pod or namespace selectors). `ports: None` is every
/// port and protocol; `Some(list)` only those (empty: none, as a rule whose
/// ports are all named or SCTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<IpBlock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPort>>,
}

impl NetworkPolicyRule {
    /// Whether the rule allows a flow of `proto` to `dst`:`port`.
    pub fn allows(&self, proto: u8, dst: u32, port: u16) -> bool {
        let to = self.to.as_ref().is_none_or(|blocks| blocks.iter().any(|b| b.contains(dst)));
        let ports = self
            .ports
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.protocol.number() == proto && (p.lo..=p.hi).contains(&port)));
        to && ports
    }
}

/// One NetworkPolicy with Egress among its `policyTypes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// `namespace/name`: counters and events name it so.
    pub name: String,
    /// The pods it selects that this gateway serves.
    pub pods: Vec<Ipv4Addr>,
    /// Its egress rules; none: the selected pods may send nothing.
    #[serde(default)]
    pub egress: Vec<NetworkPolicyRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkPolicyError {
    #[error("{0} NetworkPolicies; at most {MAX_NETWORK_POLICIES} are allowed")]
    TooMany(usize),
    #[error("a NetworkPolicy has no name")]
    Unnamed,
    #[error("NetworkPolicy '{0}' is defined twice")]
    Duplicate(String),
    #[error("NetworkPolicy '{name}' lists {count} {what}; at most {MAX_NETWORK_POLICY_ITEMS} are allowed")]
    TooLarge { name: String, what: &'static str, count: usize },
    #[error("NetworkPolicy '{name}': port range {lo}-{hi} is empty or starts at 0")]
    BadPortRange { name: String, lo: u16, hi: u16 },
}

/// Checks the NetworkPolicies of a plan.
pub fn validate(policies: &[NetworkPolicy]) -> Result<(), NetworkPolicyError> {
    if policies.len() > MAX_NETWORK_POLICIES {
        return Err(NetworkPolicyError::TooMany(policies.len()));
    }
    let mut names = HashSet::new();
    for p in policies {
        if p.name.is_empty() {
            return Err(NetworkPolicyError::Unnamed);
        }
        if !names.insert(p.name.as_str()) {
            return Err(NetworkPolicyError::Duplicate(p.name.clone()));
        }
        let too_large = |what, count| NetworkPolicyError::TooLarge { name: p.name.clone(), what, count };
        if p.pods.len() > MAX_NETWORK_POLICY_ITEMS {
            return Err(too_large("pods", p.pods.len()));
        }
        if p.egress.len() > MAX_NETWORK_POLICY_ITEMS {
            return Err(too_large("rules", p.egress.len()));
        }
        for r in &p.egress {
            let blocks = r.to.as_deref().unwrap_or_default();
            let excepts: usize = blocks.iter().map(|b| b.except.len()).sum();
            let ports = r.ports.as_deref().unwrap_or_default();
            for (what, count) in [("peers", blocks.len()), ("excepts", excepts), ("ports", ports.len())] {
                if count > MAX_NETWORK_POLICY_ITEMS {
                    return Err(too_large(what, count));
                }
            }
            if let Some(bad) = ports.iter().find(|p| p.lo == 0 || p.lo > p.hi) {
                return Err(NetworkPolicyError::BadPortRange { name: p.name.clone(), lo: bad.lo, hi: bad.hi });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock { cidr: cidr.parse().unwrap(), except: except.iter().map(|e| e.parse().unwrap()).collect() }
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    #[test]
    fn a_rule_matches_its_blocks_less_their_excepts_and_its_ports() {
        let r = NetworkPolicyRule {
            to: Some(vec![block("198.19.0.0/16", &["198.19.1.0/24"])]),
            ports: Some(vec![NetworkPort { protocol: NetworkProtocol::Tcp, lo: 32000, hi: 32768 }]),
        };
        assert!(r.allows(6, ip("198.19.0.5"), 32000));
        assert!(r.allows(6, ip("198.19.0.5"), 32768));
        assert!(!r.allows(6, ip("198.19.0.5"), 32769), "past endPort");
        assert!(!r.allows(17, ip("198.19.0.5"), 32000), "another protocol");
        assert!(!r.allows(1, ip("198.19.0.5"), 0), "ICMP: not a listed port");
        assert!(!r.allows(6, ip("198.19.1.5"), 32000), "in an except");
        assert!(!r.allows(6, ip("198.20.0.5"), 32000), "outside the block");
    }

    #[test]
    fn no_to_is_every_destination_and_no_ports_every_port_and_protocol() {
        let any = NetworkPolicyRule { to: None, ports: None };
        assert!(any.allows(1, ip("198.19.9.9"), 0));
        let nothing = NetworkPolicyRule { to: Some(vec![]), ports: None };
        assert!(!nothing.allows(6, ip("198.19.9.9"), 443), "selector peers only: nothing outside");
        let no_ports = NetworkPolicyRule { to: None, ports: Some(vec![]) };
        assert!(!no_ports.allows(6, ip("198.19.9.9"), 443), "named ports only: nothing");
    }

    #[test]
    fn names_are_unique_and_port_ranges_sane() {
        let p = |name: &str| NetworkPolicy { name: name.into(), pods: vec![], egress: vec![] };
        assert_eq!(validate(&[p("a/x"), p("a/x")]), Err(NetworkPolicyError::Duplicate("a/x".into())));
        assert_eq!(validate(&[p("")]), Err(NetworkPolicyError::Unnamed));
        let mut bad = p("a/y");
        bad.egress = vec![NetworkPolicyRule {
            to: None,
            ports: Some(vec![NetworkPort { protocol: NetworkProtocol::Udp, lo: 90, hi: 80 }]),
        }];
        assert_eq!(validate(&[bad]), Err(NetworkPolicyError::BadPortRange { name: "a/y".into(), lo: 90, hi: 80 }));
        assert_eq!(validate(&[p("a/x"), p("b/x")]), Ok(()));
    }
}
