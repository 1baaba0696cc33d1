//! Reconcile: cluster state in, one plan per gateway node out. Pure.
//!
//! 1. Each StaticGatewayConfiguration is checked alone (target, prefix,
//!    exclusions, Egret annotations, the config compiled by itself); a bad
//!    one is reported and left out. Prefixes that overlap an older config's
//!    are left out too (the older one, by `creationTimestamp` then name,
//!    keeps its addresses).
//! 2. Each config's addresses are split across the ready gateway nodes of
//!    its pool by rendezvous (highest-random-weight) hashing: every address
//!    goes to the node with the highest `hash(node, address)`. A node that
//!    joins takes only the addresses it now wins; a node that leaves gives
//!    up only its own; nothing else moves.
//! 3. Pods bind to the config their annotation names (same namespace); every
//!    node that serves a config gets all its pods, since the pods' traffic
//!    may reach any gateway node of the pool.
//! 4. NetworkPolicies with Egress are compiled once against every bound
//!    pod (`network_policies.rs`) and cut to each plan's bindings.

use super::egress_ips::EgressIps;
use super::network_policies::{self, BoundPod};
use super::objects::*;
use super::pod_index::{NeedsFull, PodIndex};
use super::Problem;
use egret_plan::{
    Binding, Bindings, FilteringMode, GatewayConfig, Ipv4Cidr, MappingMode, Plan, PolicyRule, Timeouts, TunnelConfig,
    WgKey, WgSecret, MAX_POOL_ADDRS, MAX_SOURCE_CIDRS,
};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

/// Egret's own knobs on a StaticGatewayConfiguration, as annotations (the
/// upstream CRD's schema stays untouched, so its objects are accepted as is).
pub const ANN_MAPPING: &str = "egret.dev/mapping";
pub const ANN_FILTERING: &str = "egret.dev/filtering";
pub const ANN_PORT_QUOTA: &str = "egret.dev/port-quota";
pub const ANN_SESSION_LIMIT: &str = "egret.dev/session-limit";
pub const ANN_TIMEOUTS: &str = "egret.dev/timeouts";
pub const ANN_SOURCE_CIDRS: &str = "egret.dev/source-cidrs";

/// What reconcile made of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconciled {
    /// Every gateway node's plan (version 0: the control plane numbers
    /// versions as plans change). A gateway node that serves nothing gets an
    /// empty plan, so a subscriber can tell "nothing to do" from "unknown".
    pub plans: BTreeMap<String, Plan>,
    /// Every config, served or not, for operators.
    pub configs: Vec<ConfigStatus>,
    /// Every gateway node, ready or not.
    pub nodes: Vec<GatewayNode>,
    pub problems: Vec<Problem>,
}

/// A config as operators see it: where it runs and with which addresses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// `namespace/name`.
    pub name: String,
    /// `pool NAME`, `vmss RG/NAME`, or empty when neither is set.
    pub target: String,
    pub prefix: Option<EgressIps>,
    /// Node → its share of the prefix.
    pub shares: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Pod IPs bound to it.
    pub pods: Vec<Ipv4Addr>,
    /// Whether any gateway serves it; when not, `problems` says why.
    pub served: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayNode {
    pub name: String,
    pub pool: Option<String>,
    pub internal_ip: Option<Ipv4Addr>,
    pub ready: bool,
}

/// Where a config runs.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Pool(String),
    Vmss(GatewayVmssProfile),
}

impl Target {
    fn of(sgc: &StaticGatewayConfiguration) -> Result<Target, String> {
        let pool = sgc.spec.gateway_nodepool_name.as_deref().filter(|p| !p.is_empty());
        let vmss = sgc.spec.gateway_vmss_profile.as_ref().filter(|p| !p.is_empty());
        match (pool, vmss) {
            (Some(p), None) => Ok(Target::Pool(p.to_string())),
            (None, Some(v)) if v.vmss_name.is_empty() || v.vmss_resource_group.is_empty() => {
                Err("spec.gatewayVmssProfile needs both vmssResourceGroup and vmssName".into())
            }
            (None, Some(v)) => Ok(Target::Vmss(v.clone())),
            (Some(_), Some(_)) => {
                Err("spec.gatewayNodepoolName and spec.gatewayVmssProfile are both set; only one may be".into())
            }
            (None, None) => Err("neither spec.gatewayNodepoolName nor spec.gatewayVmssProfile is set".into()),
        }
    }
    fn matches(&self, n: &Node) -> bool {
        match self {
            Target::Pool(p) => n.pool().is_some_and(|np| np.eq_ignore_ascii_case(p)),
            Target::Vmss(v) => n.in_vmss(v),
        }
    }
    fn describe(&self) -> String {
        match self {
            Target::Pool(p) => format!("pool {p}"),
            Target::Vmss(v) => format!("vmss {}/{}", v.vmss_resource_group, v.vmss_name),
        }
    }
}

/// The gateway config a StaticGatewayConfiguration becomes, with `pool` as
/// its egress addresses, its `excludeCidrs` and Egret's annotations:
/// `egret.dev/mapping` (`endpoint-independent` | `port-reuse`),
/// `egret.dev/filtering` (`endpoint-dependent` | `endpoint-independent`),
/// `egret.dev/port-quota` (ports per pod), `egret.dev/session-limit`
/// (sessions per pod), `egret.dev/timeouts` (a
/// YAML/JSON map of `tcpEstablished`, `tcpTransitory`, `udp`, `icmp`,
/// `portCooldown` in seconds; unset ones keep their defaults) and
/// `egret.dev/source-cidrs` (comma-separated CIDRs bound as a fallback: a
/// subnet routed to the gateway as a whole, for sources no pod annotation
/// names).
pub fn gateway_config(sgc: &StaticGatewayConfiguration, pool: Vec<Ipv4Cidr>) -> Result<GatewayConfig, String> {
    let m = &sgc.metadata;
    let mut c = GatewayConfig::new(&m.key(), pool);
    c.uid = m.uid.clone();
    for (i, cidr) in sgc.spec.exclude_cidrs.iter().enumerate() {
        c.exclude.push(cidr.trim().parse().map_err(|e| format!("spec.excludeCidrs[{i}]: {e}"))?);
    }
    let a = &m.annotations;
    if let Some(v) = a.get(ANN_MAPPING) {
        c.mapping = serde_norway::from_str::<MappingMode>(v)
            .map_err(|_| format!("annotation {ANN_MAPPING}: unknown mode '{v}' (endpoint-independent, port-reuse)"))?;
    }
    if let Some(v) = a.get(ANN_FILTERING) {
        c.filtering = serde_norway::from_str::<FilteringMode>(v).map_err(|_| {
            format!("annotation {ANN_FILTERING}: unknown mode '{v}' (endpoint-dependent, endpoint-independent)")
        })?;
    }
    if let Some(v) = a.get(ANN_PORT_QUOTA) {
        c.port_quota = v.trim().parse().map_err(|_| format!("annotation {ANN_PORT_QUOTA}: '{v}' is not a number"))?;
    }
    if let Some(v) = a.get(ANN_SESSION_LIMIT) {
        c.session_limit =
            v.trim().parse().map_err(|_| format!("annotation {ANN_SESSION_LIMIT}: '{v}' is not a number"))?;
    }
    if let Some(v) = a.get(ANN_TIMEOUTS) {
        c.timeouts = serde_norway::from_str::<Timeouts>(v).map_err(|e| format!("annotation {ANN_TIMEOUTS}: {e}"))?;
    }
    if let Some(v) = a.get(ANN_SOURCE_CIDRS) {
        for s in v.split([',', ' ', '\n']).map(str::trim).filter(|s| !s.is_empty()) {
            c.sources.push(s.parse().map_err(|e| format!("annotation {ANN_SOURCE_CIDRS}: {e}"))?);
        }
    }
    Ok(c)
}

/// A config's egress prefix, once kube-egress-gateway has provisioned it.
pub fn egress_prefix(sgc: &StaticGatewayConfiguration) -> Result<EgressIps, String> {
    let p = sgc.status.as_ref().and_then(|s| s.egress_ip_prefix.as_deref()).map(str::trim).filter(|p| !p.is_empty());
    let p = p.ok_or("status.egressIpPrefix is not set yet (prefix not provisioned)")?;
    p.parse().map_err(|e| format!("status.egressIpPrefix: {e}"))
}

/// A config's WireGuard tunnel, from its `status.gatewayServerProfile` and
/// the Secret it references (key `PrivateKey`, as kube-egress-gateway's
/// controller-manager writes it). None while the profile is incomplete: the
/// config is then routed in plain, as before the drop-in.
pub fn tunnel_of(sgc: &StaticGatewayConfiguration, st: &ClusterState) -> Result<Option<TunnelConfig>, String> {
    let Some(p) = sgc.status.as_ref().and_then(|s| s.gateway_server_profile.as_ref()).filter(|p| p.is_ready()) else {
        return Ok(None);
    };
    let address: Ipv4Addr =
        p.ip.trim().parse().map_err(|_| format!("status.gatewayServerProfile.ip '{}' is not an IPv4 address", p.ip))?;
    let port = u16::try_from(p.port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("status.gatewayServerProfile.port {} is not a UDP port", p.port))?;
    let public: WgKey = p.public_key.parse().map_err(|e| format!("status.gatewayServerProfile.publicKey: {e}"))?;
    let r = p.private_key_secret_ref.as_ref().expect("a ready profile has a secret reference");
    let ns = r.namespace.clone().unwrap_or_else(|| sgc.metadata.ns().to_string());
    let secret = st
        .secrets
        .iter()
        .find(|s| s.metadata.name == r.name && s.metadata.ns() == ns)
        .ok_or_else(|| format!("Secret {ns}/{} (the private key) is not there", r.name))?;
    let data = secret.data.get("PrivateKey").ok_or_else(|| format!("Secret {ns}/{} has no PrivateKey", r.name))?;
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| format!("Secret {ns}/{}: PrivateKey is not base64 text", r.name))?;
    let private_key: WgSecret =
        serde_json::from_value(serde_json::Value::String(text)).map_err(|e| format!("Secret {ns}/{}: {e}", r.name))?;
    if private_key.public_key() != public {
        return Err(format!(
            "Secret {ns}/{}: its private key does not match status.gatewayServerProfile.publicKey",
            r.name
        ));
    }
    Ok(Some(TunnelConfig { address, port, private_key }))
}

/// The served prefixes by address, so a pod IP is checked against them in
/// O(log configs) rather than one by one (100,000 pods × 1,000 configs).
pub(crate) struct EgressIndex<'a> {
    /// (first, last, config, prefix) of every CIDR of every served prefix,
    /// by first address. Served prefixes never overlap (`candidates`
    /// leaves the younger of two out).
    ranges: Vec<(u32, u32, &'a str, &'a EgressIps)>,
    given: &'a BTreeMap<Ipv4Addr, String>,
}

impl<'a> EgressIndex<'a> {
    pub(crate) fn new(
        served: &'a BTreeMap<String, EgressIps>,
        given: &'a BTreeMap<Ipv4Addr, String>,
    ) -> EgressIndex<'a> {
        let mut ranges: Vec<_> = served
            .iter()
            .flat_map(|(name, p)| {
                p.cidrs().iter().map(move |c| {
                    let first = u32::from(c.addr()) & c.mask();
                    (first, first + (c.size() - 1) as u32, name.as_str(), p)
                })
            })
            .collect();
        ranges.sort_unstable_by_key(|r| (r.0, r.1));
        EgressIndex { ranges, given }
    }

    /// Why a pod IP cannot be bound: it is an egress address (inside a
    /// served prefix, or a node's secondary IP in `given`), which
    /// Plan::validate refuses.
    pub(crate) fn clash(&self, ip: Ipv4Addr) -> Option<String> {
        let a = u32::from(ip);
        let i = self.ranges.partition_point(|r| r.0 <= a);
        if let Some((_, _, name, prefix)) = i.checked_sub(1).map(|i| &self.ranges[i]).filter(|r| r.1 >= a) {
            return Some(format!("pod IP {ip} is inside egress prefix {prefix} of {name}; not bound"));
        }
        self.given.get(&ip).map(|name| format!("pod IP {ip} is an egress address of {name}; not bound"))
    }
}

/// Tunnelled pods: every PodEndpoint of a served config that has a tunnel
/// (kube-egress-gateway programs every one as a peer). `taken`: addresses
/// already bound in plain; a PodEndpoint for one of those, for an egress
/// address, or with a key an earlier PodEndpoint (by name) of its config
/// holds is reported and left out: the gateway would refuse the whole plan.
fn tunnel_bindings<'a>(
    st: &'a ClusterState,
    tunnelled: &BTreeSet<&str>,
    taken: impl Fn(Ipv4Addr) -> bool,
    egress: (&BTreeMap<String, EgressIps>, &BTreeMap<Ipv4Addr, String>),
    problems: &mut Vec<Problem>,
) -> Vec<(Binding, &'a PodEndpoint)> {
    let mut eps: Vec<&PodEndpoint> = st.pod_endpoints.iter().collect();
    eps.sort_by_cached_key(|e| e.metadata.key());
    let mut seen: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut keys: BTreeMap<(String, WgKey), String> = BTreeMap::new();
    let egress = EgressIndex::new(egress.0, egress.1);
    let mut out = Vec::new();
    for e in eps {
        let key = e.metadata.key();
        let problem = |m: String| Problem::new(POD_ENDPOINT_KIND, &key, m);
        let config = format!("{}/{}", e.metadata.ns(), e.spec.static_gateway_configuration);
        if !tunnelled.contains(config.as_str()) {
            problems.push(problem(format!("names {config}, which is not served with a tunnel")));
            continue;
        }
        let Some(pod_ip) = e.pod_ipv4() else {
            problems.push(problem(format!("spec.podIpAddress '{}' is not an IPv4 /32", e.spec.pod_ip_address)));
            continue;
        };
        let public_key = match e.spec.pod_public_key.parse::<WgKey>() {
            Ok(k) => k,
            Err(m) => {
                problems.push(problem(format!("spec.podPublicKey: {m}")));
                continue;
            }
        };
        if let Some(why) = egress.clash(pod_ip) {
            problems.push(problem(why));
            continue;
        }
        if taken(pod_ip) || seen.contains(&pod_ip) {
            problems.push(problem(format!("pod IP {pod_ip} is already bound; not bound")));
            continue;
        }
        if let Some(other) = keys.get(&(config.clone(), public_key)) {
            problems.push(problem(format!(
                "spec.podPublicKey {public_key} is also PodEndpoint {other}'s in {config}; not bound"
            )));
            continue;
        }
        seen.insert(pod_ip);
        keys.insert((config.clone(), public_key), key.clone());
        out.push((Binding { pod_ip, config: config.into(), public_key: Some(public_key) }, e));
    }
    out
}

/// A config that passed every check on its own.
struct Candidate {
    config: GatewayConfig,
    prefix: EgressIps,
    target: Result<Target, String>,
}

fn sgc_problem(sgc: &StaticGatewayConfiguration, message: impl Into<String>) -> Problem {
    Problem::new(SGC_KIND, &sgc.metadata.key(), message)
}

/// Step 1: the configs that can be served, oldest first, each with its whole
/// prefix and its policy. `needs_target`: whether a config must name its
/// gateway nodes (the control plane) or not (a standalone gateway).
fn candidates(st: &ClusterState, needs_target: bool, problems: &mut Vec<Problem>) -> Vec<Candidate> {
    let mut sgcs: Vec<&StaticGatewayConfiguration> = st.configs.iter().collect();
    sgcs.sort_by_key(|s| {
        (s.metadata.creation_timestamp.is_none(), s.metadata.creation_timestamp.clone(), s.metadata.key())
    });
    let mut out: Vec<Candidate> = Vec::new();
    for sgc in sgcs {
        let target = Target::of(sgc);
        if let (true, Err(e)) = (needs_target, &target) {
            problems.push(sgc_problem(sgc, e.clone()));
            continue;
        }
        let built = egress_prefix(sgc).and_then(|p| {
            let mut c = gateway_config(sgc, p.cidrs().to_vec())?;
            c.tunnel = tunnel_of(sgc, st)?;
            Ok((p, c))
        });
        let (prefix, config) = match built {
            Ok(x) => x,
            Err(e) => {
                problems.push(sgc_problem(sgc, e));
                continue;
            }
        };
        let alone = Plan {
            network_policies: Vec::new(),
            version: 0,
            configs: vec![config.clone()],
            bindings: Default::default(),
        };
        if let Err(e) = alone.validate() {
            problems.push(sgc_problem(sgc, e.to_string()));
            continue;
        }
        if let Some(older) = out.iter().find(|c| c.prefix.overlaps(&prefix)) {
            problems.push(sgc_problem(
                sgc,
                format!(
                    "status.egressIpPrefix {prefix} overlaps {} of {} (created earlier), which keeps it",
                    older.prefix, older.config.name
                ),
            ));
            continue;
        }
        if let Some(e) = source_conflict(&out, &config, &prefix).or_else(|| tunnel_conflict(&out, &config, &prefix)) {
            problems.push(sgc_problem(sgc, e));
            continue;
        }
        // Plan::validate bounds the source CIDRs of a whole plan: a node
        // serving every config must stay under it.
        let sources: usize = out.iter().map(|c| c.config.sources.len()).sum();
        if sources + config.sources.len() > MAX_SOURCE_CIDRS {
            problems.push(sgc_problem(
                sgc,
                format!(
                    "{ANN_SOURCE_CIDRS}: its {} CIDRs and the {sources} of configs created earlier exceed \
                     {MAX_SOURCE_CIDRS} per plan",
                    config.sources.len()
                ),
            ));
            continue;
        }
        out.push(Candidate { config, prefix, target });
    }
    attach_policies(st, &mut out, problems);
    out
}

/// Why `config`'s fallback source CIDRs clash with an older config's (the
/// same CIDR bound twice, or a source CIDR holding the other's prefix).
fn source_conflict(older: &[Candidate], config: &GatewayConfig, prefix: &EgressIps) -> Option<String> {
    for o in older {
        if let Some(c) = config.sources.iter().find(|c| o.config.sources.contains(c)) {
            return Some(format!(
                "{ANN_SOURCE_CIDRS} {c} is also bound by {} (created earlier), which keeps it",
                o.config.name
            ));
        }
        if let Some(c) = config.sources.iter().find(|c| o.prefix.overlaps_cidr(c)) {
            return Some(format!("{ANN_SOURCE_CIDRS} {c} holds egress prefix {} of {}", o.prefix, o.config.name));
        }
        if let Some(c) = o.config.sources.iter().find(|c| prefix.overlaps_cidr(c)) {
            return Some(format!("status.egressIpPrefix {prefix} is inside source CIDR {c} of {}", o.config.name));
        }
    }
    None
}

/// Why `config`'s tunnel clashes with an older config (a gateway serving
/// both would refuse its plan): the same endpoint, or a tunnel address that
/// is the other's egress address.
fn tunnel_conflict(older: &[Candidate], config: &GatewayConfig, prefix: &EgressIps) -> Option<String> {
    for o in older {
        match (&config.tunnel, &o.config.tunnel) {
            (Some(t), Some(ot)) if (t.address, t.port) == (ot.address, ot.port) => {
                return Some(format!(
                    "status.gatewayServerProfile {}:{} is also {}'s (created earlier), which keeps it",
                    t.address, t.port, o.config.name
                ));
            }
            (Some(t), _) if o.prefix.contains(u32::from(t.address)) => {
                return Some(format!(
                    "status.gatewayServerProfile.ip {} is inside egress prefix {} of {}",
                    t.address, o.prefix, o.config.name
                ));
            }
            (_, Some(ot)) if prefix.contains(u32::from(ot.address)) => {
                return Some(format!(
                    "status.egressIpPrefix {prefix} holds the tunnel address {} of {}",
                    ot.address, o.config.name
                ));
            }
            _ => {}
        }
    }
    None
}

/// Attaches each EgressPolicy to its config. A config whose policy is invalid
/// is not served at all (fail closed: its pods get no egress rather than
/// egress the policy meant to deny).
fn attach_policies(st: &ClusterState, out: &mut Vec<Candidate>, problems: &mut Vec<Problem>) {
    let mut policies: Vec<&EgressPolicyObject> = st.policies.iter().collect();
    policies.sort_by_cached_key(|p| p.metadata.key());
    let mut bad = BTreeSet::new();
    // A broken policy whose target cannot be read may be any config's of
    // its namespace: none of them is served (fail closed).
    let mut bad_namespaces = BTreeSet::new();
    for b in &st.broken_policies {
        let m = &b.metadata;
        let message = match &b.gateway_configuration {
            Some(c) => {
                let target = format!("{}/{c}", m.ns());
                let why = format!("does not decode ({}); {target} is not served until the policy is fixed", b.error);
                bad.insert(target);
                why
            }
            None => {
                bad_namespaces.insert(m.ns().to_string());
                format!(
                    "does not decode ({}) and names no config; no config of namespace {} is served until the policy is fixed",
                    b.error,
                    m.ns()
                )
            }
        };
        problems.push(Problem::new(POLICY_KIND, &m.key(), message));
    }
    for pol in policies {
        let m = &pol.metadata;
        let target = format!("{}/{}", m.ns(), pol.spec.gateway_configuration);
        let object = |message: String| Problem::new(POLICY_KIND, &m.key(), message);
        let Some(c) = out.iter_mut().find(|c| c.config.name == target) else {
            problems.push(object(format!(
                "spec.gatewayConfiguration '{}' is not a served StaticGatewayConfiguration in namespace {}",
                pol.spec.gateway_configuration,
                m.ns()
            )));
            continue;
        };
        if c.config.policy.is_some() {
            problems.push(object(format!("{target} already has an EgressPolicy; this one is ignored")));
            continue;
        }
        let mut policy = pol.spec.policy.clone();
        match resolve_pod_selectors(&pol.spec.rules, st, &target) {
            Ok(rules) => policy.rules = rules,
            Err(e) => {
                problems.push(object(format!("{e}; {target} is not served until the policy is fixed")));
                bad.insert(target);
                continue;
            }
        }
        c.config.policy = Some(policy);
        let alone = Plan {
            network_policies: Vec::new(),
            version: 0,
            configs: vec![c.config.clone()],
            bindings: Default::default(),
        };
        if let Err(e) = alone.validate() {
            problems.push(object(format!("{e}; {target} is not served until the policy is fixed")));
            bad.insert(target);
        }
    }
    out.retain(|c| {
        let namespace = c.config.name.split_once('/').map_or("", |(ns, _)| ns);
        !bad.contains(&c.config.name) && !bad_namespaces.contains(namespace)
    });
}

/// Turns each rule's `podSelector` into the IPs of the config's pods (those
/// whose annotation names it) that the selector matches; with `pods` given
/// too, a pod must be in both. Pods come and go with their labels, so this
/// runs on every reconcile and a relabelled pod moves at the next plan.
fn resolve_pod_selectors(rules: &[PolicyRuleSpec], st: &ClusterState, config: &str) -> Result<Vec<PolicyRule>, String> {
    let mut out = Vec::with_capacity(rules.len());
    for spec in rules {
        let mut rule = spec.rule.clone();
        let Some(selector) = &spec.pod_selector else {
            out.push(rule);
            continue;
        };
        selector.validate().map_err(|e| format!("rule '{}': {e}", rule.name))?;
        let mut ips: Vec<Ipv4Addr> = st
            .pods
            .iter()
            .filter(|p| !p.is_finished() && p.gateway_config().as_deref() == Some(config))
            .filter(|p| selector.matches(&p.metadata.labels))
            .flat_map(|p| p.ipv4s())
            .filter(|ip| rule.pods.as_ref().is_none_or(|given| given.contains(ip)))
            .collect();
        ips.sort();
        ips.dedup();
        rule.pods = Some(ips);
        out.push(rule);
    }
    Ok(out)
}

/// Step 3 whole: plain bindings from annotated pods for configs without a
/// tunnel, tunnelled ones from PodEndpoints for configs with one (an
/// annotated pod of a tunnelled config reaches the gateway only through
/// its tunnel, once its CNI plugin has written its PodEndpoint). Also, when
/// the cluster has NetworkPolicies, every bound pod with its namespace and
/// labels: a tunnelled pod's labels are its Pod's (same namespace and name
/// as its PodEndpoint), else its PodEndpoint's own.
fn all_bindings<'a>(
    st: &'a ClusterState,
    cands: &[Candidate],
    served: &BTreeMap<String, EgressIps>,
    unserved: &BTreeMap<String, String>,
    given: &BTreeMap<Ipv4Addr, String>,
    problems: &mut Vec<Problem>,
) -> (BTreeMap<String, Vec<Ipv4Addr>>, Vec<Binding>, Vec<BoundPod<'a>>) {
    let owner = bindings(st, served, unserved, given, problems);
    let with_tunnel: BTreeSet<&str> =
        cands.iter().filter(|c| c.config.tunnel.is_some()).map(|c| c.config.name.as_str()).collect();
    let plain = |config: &str| !with_tunnel.contains(config);
    let mut by_config: HashMap<&str, Vec<Ipv4Addr>> = HashMap::new();
    for (&ip, &(_, config)) in owner.iter().filter(|(_, (_, c))| plain(c)) {
        by_config.entry(config).or_default().push(ip);
    }
    let bound: BTreeMap<String, Vec<Ipv4Addr>> = by_config
        .into_iter()
        .map(|(config, mut ips)| {
            ips.sort_unstable();
            (config.to_string(), ips)
        })
        .collect();
    let taken = |ip: Ipv4Addr| owner.get(&ip).is_some_and(|(_, c)| plain(c));
    let tunnelled = tunnel_bindings(st, &with_tunnel, taken, (served, given), problems);
    // Only NetworkPolicies look at bound pods' labels.
    let mut pods: Vec<BoundPod> = Vec::new();
    if !st.network_policies.is_empty() {
        pods.extend(owner.iter().filter(|(_, (_, c))| plain(c)).map(|(&ip, (p, _))| BoundPod {
            ip,
            namespace: p.metadata.ns(),
            labels: &p.metadata.labels,
        }));
        if !tunnelled.is_empty() {
            let by_key: HashMap<(&str, &str), &Pod> =
                st.pods.iter().map(|p| ((p.metadata.ns(), p.metadata.name.as_str()), p)).collect();
            pods.extend(tunnelled.iter().map(|(b, e)| {
                let m = &e.metadata;
                let pod = by_key.get(&(m.ns(), m.name.as_str()));
                BoundPod { ip: b.pod_ip, namespace: m.ns(), labels: pod.map_or(&m.labels, |p| &p.metadata.labels) }
            }));
        }
    }
    (bound, tunnelled.into_iter().map(|(b, _)| b).collect(), pods)
}

/// Step 3: pod bindings for the served configs, as pod IP → (pod, config).
/// An IP that several pods claim is the pod's first by `namespace/name`,
/// whatever order the pods come in, and the others are told (so no pass
/// sorts every pod: names are compared only for an IP claimed twice).
/// `unserved`: configs that exist but are not served, with the reason,
/// for clearer messages.
fn bindings<'a, 's>(
    st: &'a ClusterState,
    served: &'s BTreeMap<String, EgressIps>,
    unserved: &BTreeMap<String, String>,
    given: &BTreeMap<Ipv4Addr, String>,
    problems: &mut Vec<Problem>,
) -> HashMap<Ipv4Addr, (&'a Pod, &'s str)> {
    let egress = EgressIndex::new(served, given);
    let mut names = ConfigNames::new();
    let mut owner: HashMap<Ipv4Addr, (&'a Pod, &'s str)> = HashMap::with_capacity(st.pods.len());
    let mut refused: Vec<(Ipv4Addr, &'a Pod)> = Vec::new();
    for pod in &st.pods {
        let Some((config, ips)) = pod_claim(pod, &mut names, served, unserved, &egress, problems) else { continue };
        for ip in ips {
            match owner.entry(ip) {
                Entry::Vacant(v) => {
                    v.insert((pod, config));
                }
                Entry::Occupied(mut o) => {
                    let other = o.get().0;
                    if pod.metadata.key() < other.metadata.key() {
                        refused.push((ip, other));
                        o.insert((pod, config));
                    } else {
                        refused.push((ip, pod));
                    }
                }
            }
        }
    }
    for (ip, pod) in refused {
        let other = owner[&ip].0.metadata.key();
        let message = format!("pod IP {ip} is already bound by Pod {other}; not bound");
        problems.push(Problem::new("Pod", &pod.metadata.key(), message));
    }
    owner
}

/// (namespace, annotation) → the served config it names: pods share a few.
pub(crate) type ConfigNames<'a, 's> = HashMap<(&'a str, &'a str), Option<&'s str>>;

/// What `pod` claims: the served config its annotation names and its IPs
/// outside every egress address (each one inside is reported); `None` for
/// a pod without the annotation, finished, or naming a config not served
/// (reported). Whether it gets each IP depends on the other pods.
pub(crate) fn pod_claim<'a, 's>(
    pod: &'a Pod,
    names: &mut ConfigNames<'a, 's>,
    served: &'s BTreeMap<String, EgressIps>,
    unserved: &BTreeMap<String, String>,
    egress: &EgressIndex,
    problems: &mut Vec<Problem>,
) -> Option<(&'s str, Vec<Ipv4Addr>)> {
    let name = pod.config_name()?;
    if pod.is_finished() {
        return None;
    }
    let ns = pod.metadata.ns();
    let config = *names
        .entry((ns, name))
        .or_insert_with(|| served.get_key_value(&format!("{ns}/{name}")).map(|(k, _)| k.as_str()));
    let problem = |message: String| Problem::new("Pod", &pod.metadata.key(), message);
    let Some(config) = config else {
        let config = format!("{ns}/{name}");
        let message = match unserved.get(&config) {
            Some(why) => format!("names StaticGatewayConfiguration '{config}', which is not served: {why}"),
            None => format!("names StaticGatewayConfiguration '{config}', which does not exist"),
        };
        problems.push(problem(message));
        return None;
    };
    let mut ips = pod.ipv4s();
    ips.retain(|&ip| match egress.clash(ip) {
        Some(why) => {
            problems.push(problem(why));
            false
        }
        None => true,
    });
    Some((config, ips))
}

/// Rendezvous weight of `node` for `addr`: FNV-1a over the node name and the
/// address, then a 64-bit finaliser. Stable across runs, builds and
/// platforms (no per-process hash keys), so every control-plane replica
/// assigns the same way.
pub fn rendezvous_weight(node: &str, addr: Ipv4Addr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0xff]).chain(addr.octets()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser: spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Splits `prefix` across `nodes` (every node gets an entry, maybe empty).
///
/// Rendezvous hashing first: each address goes to the node of highest
/// [`rendezvous_weight`], so a node joining or leaving moves only the
/// addresses it wins or held. Then coverage: traffic for a config may reach
/// any node of its pool, so while the prefix has addresses to spare, a node
/// left with none takes, from the nodes holding two or more, the address it
/// weighs highest. Only small prefixes (a few addresses per node) need this
/// step, and it moves one address per idle node.
/// The node of highest rendezvous weight for `addr` (ties to the smaller name).
pub fn rendezvous_owner<'a>(nodes: &[&'a str], addr: Ipv4Addr) -> Option<&'a str> {
    nodes.iter().copied().max_by_key(|n| (rendezvous_weight(n, addr), std::cmp::Reverse(*n)))
}

pub fn split_prefix(prefix: &EgressIps, nodes: &[&str]) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut shares: BTreeMap<String, Vec<Ipv4Addr>> = nodes.iter().map(|n| (n.to_string(), Vec::new())).collect();
    if nodes.is_empty() {
        return shares;
    }
    for addr in prefix.addrs() {
        let best = rendezvous_owner(nodes, addr).expect("nodes is not empty");
        shares.get_mut(best).unwrap().push(addr);
    }
    let idle: Vec<String> = shares.iter().filter(|(_, a)| a.is_empty()).map(|(n, _)| n.clone()).collect();
    for node in idle {
        let donors = shares.iter().filter(|(_, a)| a.len() >= 2);
        let n = node.as_str();
        let best =
            donors.flat_map(|(d, addrs)| addrs.iter().map(move |a| (rendezvous_weight(n, *a), *a, d.clone()))).max();
        let Some((_, addr, donor)) = best else { break };
        shares.get_mut(&donor).unwrap().retain(|a| *a != addr);
        shares.get_mut(&node).unwrap().push(addr);
    }
    shares
}

/// One plan per gateway node, the configs' statuses, and every problem.
/// Each node's own egress address for a config, from its
/// GatewayVMConfiguration (kube-egress-gateway's placement on Azure: the
/// node's secondary IP, which Azure maps 1:1 to a public IP of the prefix),
/// for the ready `members`; a member with no profile gets none.
fn vm_shares(
    vm: &GatewayVmConfiguration,
    members: &[&str],
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut shares: BTreeMap<String, Vec<Ipv4Addr>> = members.iter().map(|m| (m.to_string(), Vec::new())).collect();
    for p in &vm.status.gateway_vm_profiles {
        let Some(share) = shares.get_mut(&p.node_name) else { continue };
        let Some(text) = p.secondary_ip.as_deref().filter(|t| !t.is_empty()) else { continue };
        match text.trim().parse::<Ipv4Addr>() {
            Ok(ip) => share.push(ip),
            Err(_) => problems.push(Problem::new(
                VM_CONFIG_KIND,
                &vm.metadata.key(),
                format!("node {}: secondaryIP '{text}' is not an IPv4 address", p.node_name),
            )),
        }
    }
    shares
}

/// Takes `c`'s shares out of what is still free, so that no node's plan is
/// one its gateway refuses whole (Plan::validate): an address already given
/// (to an older config, or twice by `c`'s own GatewayVMConfiguration), a
/// config's tunnel address, one inside a config's source CIDRs, or more
/// than a pool may hold is left out of its share and reported on the object
/// that gave it. A split prefix can only meet an older config's secondary
/// IPs: candidates() keeps prefixes clear of every other clash.
fn claim_shares(
    c: &Candidate,
    vm: Option<&GatewayVmConfiguration>,
    shares: &mut BTreeMap<String, Vec<Ipv4Addr>>,
    given: &mut BTreeMap<Ipv4Addr, String>,
    cands: &[Candidate],
    problems: &mut Vec<Problem>,
) {
    let name = &c.config.name;
    let problem = |m: String| match vm {
        Some(vm) => Problem::new(VM_CONFIG_KIND, &vm.metadata.key(), m),
        None => Problem::new(SGC_KIND, name, m),
    };
    for (node, addrs) in shares.iter_mut() {
        let mut kept = Vec::with_capacity(addrs.len());
        for &a in addrs.iter() {
            let why = if let Some(other) = given.get(&a) {
                Some(if other == name {
                    format!("{a} is given twice")
                } else {
                    format!("{a} is already an egress address of {other}")
                })
            } else if vm.is_none() {
                None
            } else if let Some(t) = cands.iter().find(|o| o.config.tunnel.as_ref().is_some_and(|t| t.address == a)) {
                Some(format!("{a} is the tunnel address of {}", t.config.name))
            } else if let Some((o, s)) =
                cands.iter().find_map(|o| o.config.sources.iter().find(|s| s.contains(u32::from(a))).map(|s| (o, s)))
            {
                Some(format!("{a} is inside source CIDR {s} of {}", o.config.name))
            } else if kept.len() as u64 >= MAX_POOL_ADDRS {
                Some(format!("{a} is more than the {MAX_POOL_ADDRS} addresses a pool holds"))
            } else {
                None
            };
            match why {
                Some(why) => problems.push(problem(format!("node {node}: {why}; left out"))),
                None => {
                    given.insert(a, name.clone());
                    kept.push(a);
                }
            }
        }
        *addrs = kept;
    }
}

pub fn reconcile(st: &ClusterState) -> Reconciled {
    reconcile_inner(st, false).0
}

/// [`reconcile`], with the index that lets pod changes be applied to its
/// result ([`PodIndex::apply`]) when the cluster allows that.
pub fn reconcile_indexed(st: &ClusterState) -> (Reconciled, Result<PodIndex, NeedsFull>) {
    reconcile_inner(st, true)
}

fn reconcile_inner(st: &ClusterState, want_index: bool) -> (Reconciled, Result<PodIndex, NeedsFull>) {
    let mut problems = Vec::new();
    let st = &*deduped(st, &mut problems);
    let cands = candidates(st, true, &mut problems);

    let mut gw: Vec<&Node> = st.nodes.iter().filter(|n| n.is_gateway()).collect();
    gw.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let nodes: Vec<GatewayNode> = gw
        .iter()
        .map(|n| GatewayNode {
            name: n.metadata.name.clone(),
            pool: n.pool().map(str::to_string),
            internal_ip: n.internal_ip(),
            ready: n.is_ready(),
        })
        .collect();

    let mut served: BTreeMap<String, EgressIps> = BTreeMap::new();
    let mut unserved: BTreeMap<String, String> = BTreeMap::new();
    let mut statuses: BTreeMap<String, ConfigStatus> = BTreeMap::new();
    let mut shares_of: BTreeMap<String, BTreeMap<String, Vec<Ipv4Addr>>> = BTreeMap::new();
    // Every egress address given out, oldest config first → its config.
    let mut given: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for c in &cands {
        let Ok(target) = &c.target else { continue };
        let members: Vec<&str> =
            gw.iter().filter(|n| n.is_ready() && target.matches(n)).map(|n| n.metadata.name.as_str()).collect();
        let mut status = ConfigStatus {
            name: c.config.name.clone(),
            target: target.describe(),
            prefix: Some(c.prefix.clone()),
            ..Default::default()
        };
        if members.is_empty() {
            let why = format!("no ready gateway node in {}", target.describe());
            problems.push(Problem::new(SGC_KIND, &c.config.name, why.clone()));
            unserved.insert(c.config.name.clone(), why);
            statuses.insert(c.config.name.clone(), status);
            continue;
        }
        let vm = st.vm_configs.iter().find(|v| v.metadata.key() == c.config.name);
        let mut shares = match vm {
            Some(vm) => vm_shares(vm, &members, &mut problems),
            None => split_prefix(&c.prefix, &members),
        };
        claim_shares(c, vm, &mut shares, &mut given, &cands, &mut problems);
        let idle: Vec<&str> = shares.iter().filter(|(_, a)| a.is_empty()).map(|(n, _)| n.as_str()).collect();
        if !idle.is_empty() {
            let why = match vm {
                Some(_) => format!("its GatewayVMConfiguration lists no secondaryIP for {}", idle.join(", ")),
                None => format!(
                    "prefix {} has {} addresses for {} gateway nodes; no share for {}",
                    c.prefix,
                    c.prefix.size(),
                    members.len(),
                    idle.join(", ")
                ),
            };
            problems.push(Problem::new(SGC_KIND, &c.config.name, why));
        }
        status.shares = shares.iter().filter(|(_, a)| !a.is_empty()).map(|(n, a)| (n.clone(), a.clone())).collect();
        status.served = true;
        served.insert(c.config.name.clone(), c.prefix.clone());
        shares_of.insert(c.config.name.clone(), shares);
        statuses.insert(c.config.name.clone(), status);
    }
    // Configs that failed a check still show, unserved, with their reason.
    for sgc in &st.configs {
        let key = sgc.metadata.key();
        if !statuses.contains_key(&key) {
            let why = problems
                .iter()
                .find(|p| p.object == format!("{SGC_KIND} {key}"))
                .map(|p| p.message.clone())
                .unwrap_or_else(|| "its EgressPolicy is invalid".into());
            unserved.insert(key.clone(), why);
            statuses.insert(
                key.clone(),
                ConfigStatus {
                    name: key,
                    target: Target::of(sgc).map(|t| t.describe()).unwrap_or_default(),
                    prefix: egress_prefix(sgc).ok(),
                    ..Default::default()
                },
            );
        }
    }

    let (bound, tunnelled, bound_pods) = all_bindings(st, &cands, &served, &unserved, &given, &mut problems);
    let network_policies = network_policies::compile(st, &bound_pods, &mut problems);
    let mut plans: BTreeMap<String, Plan> = nodes.iter().map(|n| (n.name.clone(), Plan::default())).collect();
    // Tunnelled bindings by config, once (not every binding per config).
    let mut tunnelled_of: BTreeMap<&str, Vec<&Binding>> = BTreeMap::new();
    for b in &tunnelled {
        tunnelled_of.entry(&*b.config).or_default().push(b);
    }
    // By name, so that each plan's bindings come nearly in order (the sort
    // below then has little to do).
    let mut by_name: Vec<&Candidate> = cands.iter().collect();
    by_name.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    // Node → the configs it serves, by name.
    let mut serves: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in by_name {
        let Some(shares) = shares_of.get(&c.config.name) else { continue };
        for (node, addrs) in shares.iter().filter(|(_, a)| !a.is_empty()) {
            let plan = plans.get_mut(node).expect("members are gateway nodes");
            let mut config = c.config.clone();
            config.egress = addrs.iter().map(|a| Ipv4Cidr::new(*a, 32).expect("a /32 is valid")).collect();
            plan.configs.push(config);
            serves.entry(node).or_default().push(c);
        }
    }
    // Nodes that serve the same configs (a pool's) hold one list of
    // bindings, made once.
    let mut lists: HashMap<Vec<&str>, Bindings> = HashMap::new();
    for (node, configs) in serves {
        let names: Vec<&str> = configs.iter().map(|c| c.config.name.as_str()).collect();
        let list = lists.entry(names).or_insert_with(|| {
            let mut list = Vec::new();
            for c in &configs {
                // One name for every binding of the config (a count, not a copy).
                let name: std::sync::Arc<str> = c.config.name.as_str().into();
                for ip in bound.get(&c.config.name).into_iter().flatten() {
                    list.push(Binding { pod_ip: *ip, config: name.clone(), public_key: None });
                }
                list.extend(tunnelled_of.get(c.config.name.as_str()).into_iter().flatten().map(|b| (*b).clone()));
            }
            list.sort_by(Binding::canonical_cmp);
            list.into()
        });
        plans.get_mut(node).expect("members are gateway nodes").bindings = list.clone();
    }
    for plan in plans.values_mut() {
        plan.configs.sort_by(|a, b| a.name.cmp(&b.name));
        plan.network_policies = network_policies::for_plan(&network_policies, bound_pods.len(), plan);
    }
    for (name, ips) in &bound {
        if let Some(s) = statuses.get_mut(name) {
            s.pods = ips.clone();
        }
    }
    for b in &tunnelled {
        if let Some(s) = statuses.get_mut(&*b.config) {
            s.pods.push(b.pod_ip);
        }
    }
    problems.sort();
    let reconciled = Reconciled { plans, configs: statuses.into_values().collect(), nodes, problems };
    let index = match want_index {
        true => {
            let tunnelled = cands.iter().filter(|c| c.config.tunnel.is_some()).map(|c| c.config.name.clone()).collect();
            PodIndex::build(st, tunnelled, served, unserved, given, &reconciled)
        }
        false => Err(NeedsFull("no index asked for")),
    };
    (reconciled, index)
}

/// `st` without its duplicate objects (reported): a copy only when it has
/// some.
fn deduped<'a>(st: &'a ClusterState, problems: &mut Vec<Problem>) -> std::borrow::Cow<'a, ClusterState> {
    if !st.may_have_duplicates() {
        return std::borrow::Cow::Borrowed(st);
    }
    let mut st = st.clone();
    st.dedup(problems);
    std::borrow::Cow::Owned(st)
}

/// Standalone mode (one gateway, no control plane): every config with its
/// whole prefix, whatever node pool it names, and every bound pod. Bad
/// objects are left out and reported; the rest make a plan that compiles.
pub fn standalone_plan(st: &ClusterState, version: u64) -> (Plan, Vec<Problem>) {
    let mut problems = Vec::new();
    let st = &*deduped(st, &mut problems);
    let cands = candidates(st, false, &mut problems);
    let served: BTreeMap<String, EgressIps> = cands.iter().map(|c| (c.config.name.clone(), c.prefix.clone())).collect();
    let unserved: BTreeMap<String, String> = st
        .configs
        .iter()
        .map(|s| s.metadata.key())
        .filter(|k| !served.contains_key(k))
        .map(|k| {
            let object = format!("{SGC_KIND} {k}");
            let why = problems.iter().find(|p| p.object == object).map(|p| p.message.clone());
            (k, why.unwrap_or_else(|| "its EgressPolicy is invalid".into()))
        })
        .collect();
    let (bound, tunnelled, bound_pods) = all_bindings(st, &cands, &served, &unserved, &BTreeMap::new(), &mut problems);
    let network_policies = network_policies::compile(st, &bound_pods, &mut problems);
    let mut plan = Plan { version, ..Plan::default() };
    plan.configs = cands.into_iter().map(|c| c.config).collect();
    plan.configs.sort_by(|a, b| a.name.cmp(&b.name));
    for (config, ips) in bound {
        let config: std::sync::Arc<str> = config.into();
        plan.bindings.make_mut().extend(ips.into_iter().map(|pod_ip| Binding {
            pod_ip,
            config: config.clone(),
            public_key: None,
        }));
    }
    plan.bindings.make_mut().extend(tunnelled);
    plan.network_policies = network_policies::for_plan(&network_policies, bound_pods.len(), &plan);
    problems.sort();
    (plan, problems)
}
