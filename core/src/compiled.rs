//! A validated plan in the shape the pipeline's stages look things up in:
//! hash maps by pod, egress address and tunnel endpoint, exclusions longest
//! first, policies compiled, each config's tunnel with its peers. Built
//! only from a plan that [`Plan::validate`] accepted, so building cannot
//! fail. Both the tunnel stage and the NAT engine read it; neither reads
//! the other: what both must agree on (which worker owns a tunnelled pod,
//! the MTU inside its tunnel) is said here once.

use crate::nat::policy::CompiledPolicy;
use crate::plan::{FilteringMode, Ipv4Cidr, MappingMode, Plan, PlanDelta, PlanError, Timeouts, WgSecret};
use hashbrown::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The inner MTU of a pod's tunnel: kube-egress-cni never sets one, so
/// `wg0` has WireGuard's default (1500 less the 80 bytes of an IPv6 outer
/// header, UDP and WireGuard's own).
pub const TUNNEL_MTU: usize = 1420;

/// The worker that owns a tunnelled pod's peer (and its flows): a function
/// of the pod's address alone, so every worker can tell without asking.
#[inline]
pub fn owner_of(pod: u32, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    let h = u64::from(pod).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> 32) % u64::from(workers)) as u16
}

/// One tunnelled pod: its WireGuard public key and the pod address its
/// decrypted packets must come from (kube-egress-gateway's PodEndpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: [u8; 32],
    pub pod_ip: Ipv4Addr,
}

/// What the plan says of one pod the NAT core sees: worked out once per
/// plan, here, rather than by every worker at every plan change (for 100k
/// pods that was milliseconds in each worker's loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodInfo {
    /// Index into the plan's `configs`.
    pub config: u16,
    /// Index of the pod's paired egress address in its config (rendezvous hash).
    pub preferred: u16,
    /// Reaches the gateway through a WireGuard tunnel only.
    pub tunnelled: bool,
    /// Some NetworkPolicy of the plan selects it: its new flows are judged.
    pub policed: bool,
}

impl PodInfo {
    /// Pod `ip` bound in plain to config `ci` of `configs`.
    fn plain(
        ip: u32,
        ci: u16,
        configs: &[CompiledConfig],
        network_policies: &crate::nat::network_policy::CompiledNetworkPolicies,
    ) -> PodInfo {
        PodInfo {
            config: ci,
            preferred: rendezvous(ip, &configs[usize::from(ci)]),
            tunnelled: false,
            policed: network_policies.selects(ip),
        }
    }

    /// A source bound only by the fallback source CIDR of config `ci`.
    pub fn fallback(src: u32, ci: u16, plan: &CompiledPlan) -> PodInfo {
        let preferred = rendezvous(src, &plan.configs[usize::from(ci)]);
        PodInfo { config: ci, preferred, tunnelled: false, policed: false }
    }
}

/// The pod's paired address: highest rendezvous score, so a pool change
/// moves only the pods whose address came or went.
pub fn rendezvous(pod: u32, cfg: &CompiledConfig) -> u16 {
    let score = |a: Ipv4Addr| {
        (u64::from(pod) << 32 | u64::from(u32::from(a)))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9)
    };
    let mut best = (0u64, 0u16);
    for (i, &a) in cfg.addrs.iter().enumerate() {
        let s = score(a);
        if i == 0 || s > best.0 {
            best = (s, i as u16);
        }
    }
    best.1
}

/// A validated plan in lookup form.
#[derive(Debug, Clone)]
pub struct CompiledPlan {
    pub version: u64,
    pub configs: Vec<CompiledConfig>,
    /// pod IP → what the plan says of it.
    pub pods: HashMap<u32, PodInfo>,
    /// egress IP → (config index, index into that config's `addrs`).
    pub egress: HashMap<u32, (u16, u16)>,
    /// Pods that reach the gateway through a tunnel (never in plain).
    pub tunnelled: HashSet<u32>,
    /// (tunnel address, port) → config index.
    pub tunnels: HashMap<(u32, u16), u16>,
    /// Fallback source CIDRs → config index.
    pub sources: SourceCidrs,
    /// Kubernetes NetworkPolicies' egress rules, by pod.
    pub network_policies: crate::nat::network_policy::CompiledNetworkPolicies,
    /// A digest of the egress addresses, their configs' positions and
    /// mapping modes: equal digests, equal pools (a plan that changed only
    /// pods spares each worker a pass over thousands of addresses).
    pub pools_digest: u64,
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
        self.pods.get(&ip).map(|p| p.config).or_else(|| self.source_config(ip))
    }
}

/// A config's tunnel with its peers, as the tunnel stage builds it.
#[derive(Clone, PartialEq, Eq)]
pub struct CompiledTunnel {
    pub address: Ipv4Addr,
    pub port: u16,
    pub private_key: WgSecret,
    pub peers: Vec<PeerConfig>,
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
    pub policy: Option<Arc<CompiledPolicy>>,
    pub tunnel: Option<Arc<CompiledTunnel>>,
}

impl CompiledConfig {
    #[inline]
    pub fn excludes(&self, dst: u32) -> bool {
        self.exclude.iter().any(|c| c.contains(dst))
    }
}

impl CompiledPlan {
    /// Validates `plan` whole and compiles it; an invalid plan gives the
    /// first problem and nothing.
    pub fn new(plan: &Plan) -> Result<CompiledPlan, PlanError> {
        plan.validate()?;
        let mut configs = Vec::with_capacity(plan.configs.len());
        let mut by_name: HashMap<&str, u16> = HashMap::new();
        let mut egress: HashMap<u32, (u16, u16)> = HashMap::new();
        let mut tunnels: HashMap<(u32, u16), u16> = HashMap::new();
        let mut compiled_tunnels: Vec<Option<CompiledTunnel>> = Vec::new();
        for (ci, c) in plan.configs.iter().enumerate() {
            by_name.insert(&c.name, ci as u16);
            let mut addrs = Vec::new();
            for a in c.egress.iter().flat_map(|p| p.addrs()) {
                egress.insert(u32::from(a), (ci as u16, addrs.len() as u16));
                addrs.push(a);
            }
            let policy = c.policy.as_ref().map(|p| Arc::new(CompiledPolicy::new(p)));
            compiled_tunnels.push(c.tunnel.as_ref().map(|t| {
                tunnels.insert((u32::from(t.address), t.port), ci as u16);
                CompiledTunnel {
                    address: t.address,
                    port: t.port,
                    private_key: t.private_key.clone(),
                    peers: Vec::new(),
                }
            }));
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
        let network_policies = crate::nat::network_policy::CompiledNetworkPolicies::new(&plan.network_policies);
        let mut pods: HashMap<u32, PodInfo> = HashMap::with_capacity(plan.bindings.len());
        let mut tunnelled = HashSet::new();
        for b in &plan.bindings {
            let ci = by_name[&*b.config];
            let ip = u32::from(b.pod_ip);
            let mut info = PodInfo::plain(ip, ci, &configs, &network_policies);
            if let (Some(key), Some(t)) = (b.public_key, compiled_tunnels[usize::from(ci)].as_mut()) {
                t.peers.push(PeerConfig { public_key: key.0, pod_ip: b.pod_ip });
                tunnelled.insert(ip);
                info.tunnelled = true;
            }
            pods.insert(ip, info);
        }
        for (c, t) in configs.iter_mut().zip(compiled_tunnels) {
            c.tunnel = t.map(Arc::new);
        }
        let mut by_cidr: HashMap<Ipv4Cidr, u16> = HashMap::new();
        for (ci, c) in plan.configs.iter().enumerate() {
            by_cidr.extend(c.sources.iter().map(|&cidr| (cidr, ci as u16)));
        }
        let sources = SourceCidrs::new(by_cidr);
        let pools_digest = {
            use std::hash::{BuildHasher, Hash, Hasher};
            // Fixed keys: digests of two plans must compare.
            let mut h =
                std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
            for c in &configs {
                c.addrs.hash(&mut h);
                (c.mapping as u8).hash(&mut h);
            }
            h.finish()
        };
        Ok(CompiledPlan {
            version: plan.version,
            configs,
            pods,
            egress,
            tunnelled,
            tunnels,
            sources,
            network_policies,
            pools_digest,
        })
    }
}

impl CompiledPlan {
    /// `plan`, which `delta` makes of the plan `self` was compiled from,
    /// compiled by changing `self`'s pod table, not building every table
    /// again (at 100,000 pods a whole compile hashes each pod over its
    /// config's addresses); checked as [`PlanDelta::validate`] checks a
    /// delta on a plan that passed whole. `None` where the delta changes
    /// more than plain pods' bindings (configs, NetworkPolicies, a tunnel's
    /// peers) or is not on `self`: compile `plan` whole.
    pub fn changed_by(&self, delta: &PlanDelta, plan: &Plan) -> Option<Result<CompiledPlan, PlanError>> {
        let tunnelled = |ip: Ipv4Addr| self.tunnelled.contains(&u32::from(ip));
        if delta.base != self.version
            || delta.version != plan.version
            || delta.configs.is_some()
            || delta.network_policies.is_some()
            || delta.bind.iter().any(|b| b.public_key.is_some() || tunnelled(b.pod_ip))
            || delta.unbind.iter().any(|ip| tunnelled(*ip))
        {
            return None;
        }
        if let Err(e) = delta.validate(plan) {
            return Some(Err(e));
        }
        let mut next = self.clone();
        next.version = plan.version;
        for ip in &delta.unbind {
            next.pods.remove(&u32::from(*ip));
        }
        if !delta.bind.is_empty() {
            let by_name: HashMap<&str, u16> =
                self.configs.iter().enumerate().map(|(i, c)| (c.name.as_str(), i as u16)).collect();
            for b in &delta.bind {
                // Validated: the config is the plan's, and so `self`'s.
                let ci = *by_name.get(&*b.config)?;
                let ip = u32::from(b.pod_ip);
                next.pods.insert(ip, PodInfo::plain(ip, ci, &self.configs, &self.network_policies));
            }
        }
        Some(Ok(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Binding, GatewayConfig, TunnelConfig, WgKey};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn pools_and_bindings_are_looked_up_by_address() {
        let plan = Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![
                GatewayConfig::new("a", vec![cidr("198.19.100.0/28")]),
                GatewayConfig::new("b", vec![cidr("198.19.101.0/31"), cidr("198.19.102.7/32")]),
            ],
            bindings: vec![
                Binding { pod_ip: "198.18.0.2".parse().unwrap(), config: "a".into(), public_key: None },
                Binding { pod_ip: "198.18.0.3".parse().unwrap(), config: "b".into(), public_key: None },
            ]
            .into(),
        };
        let c = CompiledPlan::new(&plan).unwrap();
        assert_eq!(c.configs[0].addrs.len(), 16);
        assert_eq!(c.configs[1].addrs.len(), 3);
        assert_eq!(c.pods[&ip(198, 18, 0, 3)].config, 1);
        assert_eq!(c.egress[&ip(198, 19, 102, 7)], (1, 2));
    }

    #[test]
    fn an_invalid_plan_compiles_to_nothing() {
        let mut plan = Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![GatewayConfig::new("a", vec![cidr("198.19.100.0/28")])],
            bindings: Default::default(),
        };
        plan.configs[0].timeouts.udp = 0;
        assert!(matches!(CompiledPlan::new(&plan), Err(PlanError::BadTimeout { field: "udp", .. })));
    }

    #[test]
    fn the_longest_source_cidr_wins() {
        let mut a = GatewayConfig::new("a", vec![cidr("198.19.100.0/28")]);
        let mut b = GatewayConfig::new("b", vec![cidr("198.19.101.0/28")]);
        a.sources = vec![cidr("198.18.0.0/16")];
        b.sources = vec![cidr("198.18.5.0/24")];
        let c = CompiledPlan::new(&Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![a, b],
            bindings: Default::default(),
        })
        .unwrap();
        assert_eq!(c.config_of(ip(198, 18, 5, 9)), Some(1));
        assert_eq!(c.config_of(ip(198, 18, 6, 9)), Some(0));
        assert_eq!(c.config_of(ip(198, 20, 0, 1)), None);
    }

    #[test]
    fn a_tunnelled_binding_makes_its_pod_a_peer_of_the_configs_tunnel() {
        let mut a = GatewayConfig::new("a", vec![cidr("198.19.100.0/30")]);
        a.tunnel =
            Some(TunnelConfig { address: Ipv4Addr::new(198, 18, 50, 100), port: 6000, private_key: WgSecret([7; 32]) });
        let pod =
            Binding { pod_ip: Ipv4Addr::new(198, 18, 0, 2), config: "a".into(), public_key: Some(WgKey([1; 32])) };
        let c = CompiledPlan::new(&Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![a],
            bindings: vec![pod].into(),
        })
        .unwrap();
        assert!(c.tunnelled.contains(&ip(198, 18, 0, 2)));
        assert_eq!(c.tunnels[&(ip(198, 18, 50, 100), 6000)], 0);
        assert_eq!(c.configs[0].tunnel.as_ref().unwrap().peers.len(), 1);
    }

    /// Configs a and b, pods 198.18.0.x bound by `pods` (x → config), pod
    /// .200 tunnelled in b.
    fn plan_of(version: u64, pods: &BTreeMap<u8, bool>) -> Plan {
        let mut b = GatewayConfig::new("b", vec![cidr("198.19.101.0/29")]);
        b.tunnel =
            Some(TunnelConfig { address: Ipv4Addr::new(198, 19, 200, 1), port: 51820, private_key: WgSecret([7; 32]) });
        let configs = vec![GatewayConfig::new("a", vec![cidr("198.19.100.0/28")]), b];
        let mut bindings: Vec<Binding> = pods
            .iter()
            .map(|(&x, &in_a)| Binding {
                pod_ip: Ipv4Addr::new(198, 18, 0, x),
                config: if in_a { "a" } else { "b" }.into(),
                public_key: None,
            })
            .collect();
        bindings.push(Binding {
            pod_ip: Ipv4Addr::new(198, 18, 0, 200),
            config: "b".into(),
            public_key: Some(WgKey([1; 32])),
        });
        bindings.sort_by(Binding::canonical_cmp);
        // Selects some pods, bound or not: their flows are judged (policed).
        let policy = crate::plan::NetworkPolicy {
            name: "demo/np".into(),
            pods: (1..40).step_by(3).map(|x| Ipv4Addr::new(198, 18, 0, x)).collect(),
            egress: Vec::new(),
        };
        Plan { version, configs, bindings: bindings.into(), network_policies: vec![policy] }
    }

    proptest! {
        #[test]
        fn a_plan_changed_by_pod_bindings_compiles_to_what_it_compiles_to_whole(
            old in proptest::collection::btree_map(1u8..40, any::<bool>(), 0..30),
            new in proptest::collection::btree_map(1u8..40, any::<bool>(), 0..30),
        ) {
            let (old, new) = (plan_of(1, &old), plan_of(2, &new));
            let delta = PlanDelta::between(&old, &new).expect("canonical plans");
            let base = CompiledPlan::new(&old).unwrap();
            let changed = base.changed_by(&delta, &new).expect("plain pods only").unwrap();
            let whole = CompiledPlan::new(&new).unwrap();
            prop_assert_eq!(changed.version, whole.version);
            prop_assert_eq!(changed.pools_digest, whole.pools_digest);
            prop_assert_eq!(&changed.pods, &whole.pods);
            prop_assert_eq!(&changed.tunnelled, &whole.tunnelled);
        }
    }

    #[test]
    fn a_delta_that_touches_a_tunnelled_pod_or_the_configs_compiles_whole() {
        let old = plan_of(1, &BTreeMap::new());
        let base = CompiledPlan::new(&old).unwrap();
        let mut unpeered = old.clone();
        unpeered.version = 2;
        unpeered.bindings.make_mut().clear();
        let delta = PlanDelta::between(&old, &unpeered).unwrap();
        assert!(base.changed_by(&delta, &unpeered).is_none(), "the tunnel loses a peer");
        let mut reconfigured = old.clone();
        reconfigured.version = 2;
        reconfigured.configs[0].port_quota = 7;
        let delta = PlanDelta::between(&old, &reconfigured).unwrap();
        assert!(base.changed_by(&delta, &reconfigured).is_none(), "a config changed");
    }
}
