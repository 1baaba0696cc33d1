//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) → each plan's
//! `network_policies`: for every policy whose `policyTypes` include Egress,
//! the bound pods its `podSelector` selects in its namespace, and its egress
//! rules reduced to what can leave through the gateway. Semantics as the
//! Kubernetes documentation defines them:
//!
//! - `policyTypes` absent (or empty): Ingress, plus Egress when the spec has
//!   egress rules (the API server's defaulting: `len(egress) != 0`); only
//!   policies with Egress are compiled.
//! - `podSelector` (`matchLabels`, `matchExpressions` In/NotIn/Exists/
//!   DoesNotExist; empty selects all) selects pods of the policy's
//!   namespace. The pods that matter are those bound on a plan: annotated
//!   pods, and tunnelled pods by their PodEndpoint (labels from the Pod of
//!   the same namespace/name, else the PodEndpoint's own).
//! - a rule's `to` absent or empty: every destination; else its `ipBlock`
//!   peers (IPv4; IPv6 blocks are dropped). `podSelector`/`namespaceSelector`
//!   peers select in-cluster pods, whose traffic never crosses the gateway:
//!   they add nothing (a rule of selector peers only allows nothing here).
//! - a rule's `ports` absent or empty: every port and protocol; else each
//!   TCP/UDP entry (`protocol` defaults to TCP) with `port`..=`endPort`, or
//!   the whole protocol without `port`. SCTP (Egret forwards TCP, UDP and
//!   ICMP only) and named ports (they name a port of a pod, never of an
//!   outside destination) add nothing.
//! - Egress with no rules (`egress: []`): the selected pods may send nothing.
//!
//! Fail closed: leaving a policy out would allow what it denies, so one that
//! cannot be read (a field of the wrong type, an invalid CIDR, an `except`
//! outside its `cidr`, a bad port range...) is reported and compiled with
//! no rules for the pods it selects; if even its `podSelector` cannot be
//! read, for every bound pod of its namespace.

use super::objects::*;
use super::Problem;
use egret_plan::network_policy::MAX_NETWORK_POLICY_ITEMS;
use egret_plan::{IpBlock, Ipv4Cidr, NetworkPolicy, NetworkPolicyRule, NetworkPort, NetworkProtocol, Plan};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A pod bound on some plan: its address, namespace and labels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BoundPod<'a> {
    pub ip: Ipv4Addr,
    pub namespace: &'a str,
    pub labels: &'a crate::objects::Tags,
}

/// One namespace's bound pods, and an index of them by label pair so that
/// a selector with `matchLabels` looks at the pods holding one of its pairs
/// only, not at the whole namespace.
#[derive(Default)]
struct Namespace<'a> {
    pods: Vec<BoundPod<'a>>,
    by_label: HashMap<(&'a str, &'a str), Vec<u32>>,
}

impl<'a> Namespace<'a> {
    /// The IPs of the pods `s` selects, in the order of `pods`.
    fn select(&self, s: &LabelSelector) -> Vec<Ipv4Addr> {
        let pick = |idx: &mut dyn Iterator<Item = u32>| -> Vec<Ipv4Addr> {
            idx.map(|i| &self.pods[i as usize]).filter(|p| s.matches(p.labels)).map(|p| p.ip).collect()
        };
        // The rarest of the selector's pairs narrows the candidates.
        let pairs = s.match_labels.iter().map(|(k, v)| self.by_label.get(&(k.as_str(), v.as_str())));
        if let Some(rarest) = pairs.min_by_key(|l| l.map_or(0, |l| l.len())) {
            return rarest.map_or_else(Vec::new, |l| pick(&mut l.iter().copied()));
        }
        // Else an `In` requirement: the pods holding one of its values.
        if let Some(r) = s.match_expressions.iter().find(|r| r.operator == LabelOperator::In) {
            let mut idx: Vec<u32> = r
                .values
                .iter()
                .filter_map(|v| self.by_label.get(&(r.key.as_str(), v.as_str())))
                .flatten()
                .copied()
                .collect();
            idx.sort_unstable();
            idx.dedup();
            return pick(&mut idx.into_iter());
        }
        pick(&mut (0..self.pods.len() as u32))
    }
}

/// A policy as compiled once, before it is cut to each plan's pods.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Compiled {
    pub name: String,
    /// Every bound pod it selects, sorted.
    pub pods: Vec<Ipv4Addr>,
    pub egress: Vec<NetworkPolicyRule>,
}

/// Compiles every NetworkPolicy with Egress against the bound pods, and
/// reports the ones that cannot be read (compiled to deny, see above).
pub(crate) fn compile(st: &ClusterState, bound: &[BoundPod], problems: &mut Vec<Problem>) -> Vec<Compiled> {
    if st.network_policies.is_empty() {
        return Vec::new();
    }
    // Only the namespaces that have policies are indexed.
    let mut namespaces: HashMap<&str, Namespace> =
        st.network_policies.iter().map(|np| (np.metadata.ns(), Namespace::default())).collect();
    let mut sorted: Vec<&BoundPod> = bound.iter().collect();
    sorted.sort_by_key(|p| p.ip);
    for p in sorted {
        let Some(ns) = namespaces.get_mut(p.namespace) else { continue };
        let i = ns.pods.len() as u32;
        ns.pods.push(*p);
        for (k, v) in p.labels {
            ns.by_label.entry((k.as_str(), v.as_str())).or_default().push(i);
        }
    }
    let empty = Namespace::default();
    let mut out = Vec::new();
    for np in &st.network_policies {
        let m = &np.metadata;
        let name = m.key();
        let ns = namespaces.get(m.ns()).unwrap_or(&empty);
        let (pods, egress) = match read(&np.spec) {
            Read::NotEgress => continue,
            Read::Egress(selector, egress) => (ns.select(&selector), egress),
            Read::Unreadable(Some(selector), why) => {
                problems.push(Problem::new(
                    NETWORK_POLICY_KIND,
                    &name,
                    format!("{why}; the pods it selects may send nothing through the gateway until it is fixed"),
                ));
                (ns.select(&selector), Vec::new())
            }
            Read::Unreadable(None, why) => {
                problems.push(Problem::new(
                    NETWORK_POLICY_KIND,
                    &name,
                    format!(
                        "{why}; every pod of namespace {} may send nothing through the gateway until it is fixed",
                        m.ns()
                    ),
                ));
                (ns.pods.iter().map(|p| p.ip).collect(), Vec::new())
            }
        };
        if !pods.is_empty() {
            out.push(Compiled { name, pods, egress });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The policies of `compiled` cut to the pods `plan` binds; a policy that
/// selects none of them is left out. `bound`: how many pods are bound in
/// all (a plan that binds them all takes every policy whole).
pub(crate) fn for_plan(compiled: &[Compiled], bound: usize, plan: &Plan) -> Vec<NetworkPolicy> {
    if compiled.is_empty() || plan.bindings.is_empty() {
        return Vec::new();
    }
    let cut =
        |c: &Compiled, pods: Vec<Ipv4Addr>| NetworkPolicy { name: c.name.clone(), pods, egress: c.egress.clone() };
    // A plan's bindings are bound pods, each once: as many means all.
    if plan.bindings.len() == bound {
        return compiled.iter().map(|c| cut(c, c.pods.clone())).collect();
    }
    let here: HashSet<Ipv4Addr> = plan.bindings.iter().map(|b| b.pod_ip).collect();
    compiled
        .iter()
        .filter_map(|c| {
            let pods: Vec<Ipv4Addr> = c.pods.iter().copied().filter(|ip| here.contains(ip)).collect();
            (!pods.is_empty()).then(|| cut(c, pods))
        })
        .collect()
}

/// What a NetworkPolicy's spec says about egress.
enum Read {
    /// Its `policyTypes` leave Egress out.
    NotEgress,
    Egress(LabelSelector, Vec<NetworkPolicyRule>),
    /// It cannot be read (why), with its `podSelector` if that can.
    Unreadable(Option<LabelSelector>, String),
}

/// One field of the spec, decoded with the path of what is wrong in it.
fn field<T: DeserializeOwned + Default>(spec: &serde_json::Value, name: &str) -> Result<T, String> {
    match spec.get(name) {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(v) => serde_path_to_error::deserialize(v).map_err(|e| match e.path().to_string().as_str() {
            "." => format!("spec.{name}: {}", e.inner()),
            path => format!("spec.{name}.{path}: {}", e.inner()),
        }),
    }
}

fn read(spec: &serde_json::Value) -> Read {
    if !(spec.is_object() || spec.is_null()) {
        return Read::Unreadable(None, "spec is not an object".into());
    }
    let selector = field::<LabelSelector>(spec, "podSelector")
        .and_then(|s| s.validate().map_err(|e| format!("spec.{e}")).map(|()| s));
    let selector = match selector {
        Ok(s) => s,
        Err(e) => return Read::Unreadable(None, e),
    };
    let unreadable = |why: String| Read::Unreadable(Some(selector.clone()), why);
    let types = match field::<Vec<String>>(spec, "policyTypes") {
        Ok(t) => t,
        Err(e) => return unreadable(e),
    };
    if let Some(t) = types.iter().find(|t| !matches!(t.as_str(), "Ingress" | "Egress")) {
        return unreadable(format!("spec.policyTypes: unknown type '{t}' (Ingress, Egress)"));
    }
    let has_rules = spec.get("egress").is_some_and(|e| !(e.is_null() || e.as_array().is_some_and(Vec::is_empty)));
    let egress_type = if types.is_empty() { has_rules } else { types.iter().any(|t| t == "Egress") };
    if !egress_type {
        return Read::NotEgress;
    }
    match field::<Vec<RuleSpec>>(spec, "egress").and_then(|rules| rules_of(&rules)) {
        Ok(rules) => Read::Egress(selector, rules),
        Err(e) => unreadable(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    to: Option<Vec<PeerSpec>>,
    #[serde(default)]
    ports: Option<Vec<PortSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerSpec {
    #[serde(default)]
    ip_block: Option<IpBlockSpec>,
    /// Selectors are not read: they select in-cluster pods only.
    #[serde(default)]
    pod_selector: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    namespace_selector: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct IpBlockSpec {
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortSpec {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<IntOrString>,
    #[serde(default)]
    end_port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

fn rules_of(rules: &[RuleSpec]) -> Result<Vec<NetworkPolicyRule>, String> {
    let too_many =
        |what: &str, n: usize| format!("{what} has {n} entries; at most {MAX_NETWORK_POLICY_ITEMS} are read");
    if rules.len() > MAX_NETWORK_POLICY_ITEMS {
        return Err(too_many("spec.egress", rules.len()));
    }
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let to = match r.to.as_deref() {
            None | Some([]) => None,
            Some(peers) => {
                let mut blocks = Vec::new();
                for (j, peer) in peers.iter().enumerate() {
                    let at = format!("spec.egress[{i}].to[{j}]");
                    let selects = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
                    match (&peer.ip_block, selects) {
                        (Some(_), true) => {
                            return Err(format!(
                                "{at}: ipBlock cannot be combined with podSelector or namespaceSelector"
                            ))
                        }
                        (Some(b), false) => blocks.extend(ip_block(b, &at)?),
                        (None, true) => {}
                        (None, false) => {
                            return Err(format!("{at}: names no peer (ipBlock, podSelector, namespaceSelector)"))
                        }
                    }
                }
                if blocks.len() > MAX_NETWORK_POLICY_ITEMS {
                    return Err(too_many(&format!("spec.egress[{i}].to"), blocks.len()));
                }
                let excepts: usize = blocks.iter().map(|b| b.except.len()).sum();
                if excepts > MAX_NETWORK_POLICY_ITEMS {
                    return Err(too_many(&format!("spec.egress[{i}].to[*].ipBlock.except"), excepts));
                }
                Some(blocks)
            }
        };
        let ports = match r.ports.as_deref() {
            None | Some([]) => None,
            Some(ports) => {
                if ports.len() > MAX_NETWORK_POLICY_ITEMS {
                    return Err(too_many(&format!("spec.egress[{i}].ports"), ports.len()));
                }
                let mut list = Vec::new();
                for (j, p) in ports.iter().enumerate() {
                    list.extend(port(p, &format!("spec.egress[{i}].ports[{j}]"))?);
                }
                Some(list)
            }
        };
        out.push(NetworkPolicyRule { to, ports });
    }
    Ok(out)
}

/// A CIDR as NetworkPolicy writes it: IPv4 (host bits are masked, as
/// implementations do) or IPv6 (None: Egret's NAT is IPv4).
fn parse_cidr(text: &str) -> Result<Option<Ipv4Cidr>, String> {
    let bad = || format!("'{text}' is not a CIDR");
    let (addr, len) = text.trim().split_once('/').ok_or_else(bad)?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if let Ok(a) = addr.parse::<Ipv4Addr>() {
        if len > 32 {
            return Err(bad());
        }
        return Ok(Some(Ipv4Cidr::covering(u32::from(a), len)));
    }
    match addr.parse::<Ipv6Addr>() {
        Ok(_) if len <= 128 => Ok(None),
        _ => Err(bad()),
    }
}

/// An `ipBlock`; None when it is IPv6.
fn ip_block(b: &IpBlockSpec, at: &str) -> Result<Option<IpBlock>, String> {
    let Some(cidr) = parse_cidr(&b.cidr).map_err(|e| format!("{at}.ipBlock.cidr: {e}"))? else {
        return Ok(None);
    };
    let mut except = Vec::new();
    for (k, e) in b.except.iter().flatten().enumerate() {
        let here = format!("{at}.ipBlock.except[{k}]");
        match parse_cidr(e).map_err(|m| format!("{here}: {m}"))? {
            Some(x) if x.prefix_len() > cidr.prefix_len() && cidr.contains(u32::from(x.addr())) => except.push(x),
            _ => return Err(format!("{here}: {e} is not strictly inside cidr {}", b.cidr)),
        }
    }
    Ok(Some(IpBlock { cidr, except }))
}

/// A `ports` entry; None when it cannot name an outside destination's
/// TCP or UDP port (SCTP, a named port).
fn port(p: &PortSpec, at: &str) -> Result<Option<NetworkPort>, String> {
    let protocol = match p.protocol.as_deref() {
        None | Some("TCP") => Some(NetworkProtocol::Tcp),
        Some("UDP") => Some(NetworkProtocol::Udp),
        Some("SCTP") => None,
        Some(other) => return Err(format!("{at}.protocol: unknown protocol '{other}' (TCP, UDP, SCTP)")),
    };
    let in_range = |n: i64, what: &str| {
        u16::try_from(n).ok().filter(|&n| n != 0).ok_or_else(|| format!("{at}.{what}: {n} is not a port (1-65535)"))
    };
    let (lo, hi) = match (&p.port, p.end_port) {
        (None, None) => (1, u16::MAX),
        (None, Some(_)) => return Err(format!("{at}.endPort: set without port")),
        (Some(IntOrString::Str(name)), end) => {
            if name.is_empty() {
                return Err(format!("{at}.port: empty"));
            }
            if end.is_some() {
                return Err(format!("{at}.endPort: set with the named port '{name}'"));
            }
            return Ok(None);
        }
        (Some(IntOrString::Int(n)), end) => {
            let lo = in_range(*n, "port")?;
            let hi = match end {
                Some(e) => in_range(e, "endPort")?,
                None => lo,
            };
            if hi < lo {
                return Err(format!("{at}.endPort: {hi} is below port {lo}"));
            }
            (lo, hi)
        }
    };
    Ok(protocol.map(|protocol| NetworkPort { protocol, lo, hi }))
}
