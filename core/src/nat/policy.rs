//! Egress policy's lookup form, checked once per new flow (never per packet): an ordered
//! rule set per config, first match wins, compiled so a lookup costs a walk
//! down one prefix trie plus the rules that cover the destination. FQDN
//! rules match the addresses a pod's own DNS answers tied to the name
//! (learned from responses the gateway forwards to that pod); names that no
//! pod resolved stay closed.

use crate::plan::{normalise_fqdn, DenyResponse, EgressPolicy, LiveFlows, PolicyAction};

use hashbrown::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug)]
struct Rule {
    name: String,
    action: PolicyAction,
    proto: Option<u8>,
    ports: Vec<(u16, u16)>,
    pods: Option<HashSet<u32>>,
    /// An allow rule with names that reads the name on the wire: its TLS
    /// and HTTP ports (443 and 80 included).
    reads_names: Option<(PortRanges, PortRanges)>,
}

type PortRanges = Vec<(u16, u16)>;

/// Which name on the wire a flow must show before its data passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireName {
    /// The TLS ClientHello's `server_name` (TCP on a TLS port).
    Tls,
    /// The HTTP/1.x request's `Host` (TCP on an HTTP port).
    Http,
    /// UDP on a TLS port: QUIC, whose ClientHello is encrypted with keys
    /// derived from the connection ID (RFC 9001 §5.2). Refused, so that
    /// clients fall back to TCP, where the name can be read.
    Quic,
}

impl Rule {
    /// The name this rule reads on a flow of `proto` to `dport`, if any.
    fn wire_name(&self, proto: u8, dport: u16) -> Option<WireName> {
        let (tls, http) = self.reads_names.as_ref()?;
        let has = |v: &[(u16, u16)]| v.iter().any(|&(lo, hi)| (lo..=hi).contains(&dport));
        match proto {
            6 if has(tls) => Some(WireName::Tls),
            6 if has(http) => Some(WireName::Http),
            17 if has(tls) => Some(WireName::Quic),
            _ => None,
        }
    }

    #[inline]
    fn matches(&self, pod: u32, proto: u8, dport: u16) -> bool {
        if self.proto.is_some_and(|p| p != proto) {
            return false;
        }
        let port_ok = self.ports.is_empty()
            || (matches!(proto, 6 | 17) && self.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&dport)));
        if !port_ok {
            return false;
        }
        self.pods.as_ref().is_none_or(|s| s.contains(&pod))
    }
}

/// A binary trie of destination prefixes → the rules that name them.
#[derive(Debug, Default)]
struct PrefixTrie {
    nodes: Vec<([u32; 2], Vec<u32>)>,
}

impl PrefixTrie {
    fn insert(&mut self, addr: u32, len: u8, rule: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(([0, 0], Vec::new()));
        }
        let mut n = 0usize;
        for bit in 0..len {
            let b = ((addr >> (31 - bit)) & 1) as usize;
            if self.nodes[n].0[b] == 0 {
                self.nodes.push(([0, 0], Vec::new()));
                let new = (self.nodes.len() - 1) as u32;
                self.nodes[n].0[b] = new;
            }
            n = self.nodes[n].0[b] as usize;
        }
        self.nodes[n].1.push(rule);
    }

    /// Calls `f` with every rule whose prefix covers `addr`.
    #[inline]
    fn covering(&self, addr: u32, mut f: impl FnMut(u32)) {
        if self.nodes.is_empty() {
            return;
        }
        let mut n = 0usize;
        for bit in 0..=32u32 {
            self.nodes[n].1.iter().for_each(|&r| f(r));
            if bit == 32 {
                break;
            }
            let next = self.nodes[n].0[((addr >> (31 - bit)) & 1) as usize];
            if next == 0 {
                break;
            }
            n = next as usize;
        }
    }
}

/// The outcome for a new flow: the action and the rule that decided it
/// (`None`: no rule matched, the default applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: PolicyAction,
    pub rule: Option<u32>,
    /// An allow that holds only once the flow shows a name the rule lists.
    pub needs: Option<WireName>,
}

#[derive(Debug)]
pub struct CompiledPolicy {
    pub default_action: PolicyAction,
    pub deny_response: DenyResponse,
    pub live_flows: LiveFlows,
    pub ttl_floor: u32,
    /// Where trusted DNS answers come from.
    resolvers: Vec<crate::plan::Ipv4Cidr>,
    rules: Vec<Rule>,
    trie: PrefixTrie,
    any_dst: Vec<u32>,
    exact: HashMap<String, Vec<u32>>,
    /// `*.example.com` is stored under `example.com`; it matches names below it.
    wildcard: HashMap<String, Vec<u32>>,
}

impl CompiledPolicy {
    /// Whether denied flows are answered (`denyResponse: reject`).
    pub fn rejects(&self) -> bool {
        self.deny_response == DenyResponse::Reject
    }

    /// Compiles a policy [`EgressPolicy::validate`] accepted (as every
    /// policy of a plan that passed [`crate::plan::Plan::validate`] is).
    pub fn new(p: &EgressPolicy) -> CompiledPolicy {
        let mut c = CompiledPolicy {
            default_action: p.default_action,
            deny_response: p.deny_response,
            live_flows: p.live_flows,
            ttl_floor: p.dns_ttl_floor,
            resolvers: p.dns_resolvers.clone(),
            rules: Vec::with_capacity(p.rules.len()),
            trie: PrefixTrie::default(),
            any_dst: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, r) in p.rules.iter().enumerate() {
            let idx = i as u32;
            for &cidr in &r.cidrs {
                c.trie.insert(u32::from(cidr.addr()), cidr.prefix_len(), idx);
            }
            for f in &r.fqdns {
                let (table, name) = match normalise_fqdn(f) {
                    (true, name) => (&mut c.wildcard, name),
                    (false, name) => (&mut c.exact, name),
                };
                table.entry(name).or_default().push(idx);
            }
            if r.cidrs.is_empty() && r.fqdns.is_empty() {
                c.any_dst.push(idx);
            }
            c.rules.push(Rule {
                name: r.name.clone(),
                action: r.action,
                proto: r.protocol.map(|p| p.number()),
                ports: r.ports.iter().map(|p| (p.lo, p.hi)).collect(),
                pods: r.pods.as_ref().map(|v| v.iter().map(|&a| u32::from(a)).collect()),
                reads_names: (r.action == PolicyAction::Allow
                    && !r.fqdns.is_empty()
                    && r.server_name == crate::plan::ServerNameCheck::Required)
                    .then(|| {
                        let ranges = |v: &[crate::plan::PortRange], dflt: u16| {
                            v.iter().map(|p| (p.lo, p.hi)).chain([(dflt, dflt)]).collect::<Vec<_>>()
                        };
                        (ranges(&r.tls_ports, crate::plan::TLS_PORT), ranges(&r.http_ports, crate::plan::HTTP_PORT))
                    }),
            });
        }
        c
    }

    /// Whether DNS answers from `src` may teach FQDN rules.
    #[inline]
    pub fn trusts_resolver(&self, src: u32) -> bool {
        self.resolvers.iter().any(|c| c.contains(src))
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn rule_name(&self, i: u32) -> &str {
        &self.rules[i as usize].name
    }

    pub fn has_fqdns(&self) -> bool {
        !self.exact.is_empty() || !self.wildcard.is_empty()
    }

    /// Whether some rule names `name` (so its answers are worth learning).
    pub fn wants_name(&self, name: &str) -> bool {
        let mut hit = false;
        self.name_rules(name, |_| hit = true);
        hit
    }

    fn name_rules(&self, name: &str, mut f: impl FnMut(u32)) {
        if let Some(v) = self.exact.get(name) {
            v.iter().for_each(|&r| f(r));
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(v) = self.wildcard.get(parent) {
                v.iter().for_each(|&r| f(r));
            }
            rest = parent;
        }
    }

    /// The decision for a new flow from `pod` to `dst`; `names` are the
    /// names the pod's DNS answers tied to `dst` (for FQDN rules). An allow
    /// by a rule that reads the name on the wire on this port says so in
    /// `needs`: the flow's first bytes decide ([`Self::evaluate_named`]).
    pub fn evaluate(&self, pod: u32, dst: u32, proto: u8, dport: u16, names: &[Arc<str>]) -> Decision {
        let best = self.first_match(pod, dst, proto, dport, names, None);
        self.decision(best, proto, dport)
    }

    /// The decision for a flow that showed `wire` as its server name: a rule
    /// that reads names on this port matches only if it lists `wire` too
    /// (both the address, learned from DNS, and the name on the wire must be
    /// the rule's); otherwise the next rule decides.
    pub fn evaluate_named(
        &self,
        pod: u32,
        dst: u32,
        proto: u8,
        dport: u16,
        names: &[Arc<str>],
        wire: &str,
    ) -> Decision {
        let best = self.first_match(pod, dst, proto, dport, names, Some(wire));
        let mut d = self.decision(best, proto, dport);
        d.needs = None;
        d
    }

    fn decision(&self, best: u32, proto: u8, dport: u16) -> Decision {
        if best == u32::MAX {
            return Decision { action: self.default_action, rule: None, needs: None };
        }
        let r = &self.rules[best as usize];
        Decision { action: r.action, rule: Some(best), needs: r.wire_name(proto, dport) }
    }

    fn first_match(&self, pod: u32, dst: u32, proto: u8, dport: u16, names: &[Arc<str>], wire: Option<&str>) -> u32 {
        let mut best = u32::MAX;
        let mut consider = |r: u32| {
            let rule = &self.rules[r as usize];
            if r < best && rule.matches(pod, proto, dport) {
                let name_ok = match wire {
                    Some(w) if rule.wire_name(proto, dport).is_some() => self.lists(r, w),
                    _ => true,
                };
                if name_ok {
                    best = r;
                }
            }
        };
        self.trie.covering(dst, &mut consider);
        self.any_dst.iter().for_each(|&r| consider(r));
        for n in names {
            self.name_rules(n, &mut consider);
        }
        best
    }

    /// Whether rule `r` lists `name` (exactly or under a wildcard).
    fn lists(&self, r: u32, name: &str) -> bool {
        let mut hit = false;
        self.name_rules(name, |x| hit |= x == r);
        hit
    }
}

/// A name and until when (engine seconds) it is trusted.
type LearnedName = (Arc<str>, u32);

/// Which names each pod's DNS answers tied to which addresses, shared by
/// every worker (a pod's DNS reply and its next connection may land on
/// different workers). Read when a flow opens, written when an answer
/// passes: never on the per-packet path of established flows.
#[derive(Debug)]
pub struct FqdnCache {
    inner: RwLock<Learned>,
    capacity: usize,
    /// Answers not learned because the cache was full.
    pub full: AtomicU64,
    pub learned: AtomicU64,
}

/// Names kept per (pod, address): many names on one CDN address are
/// normal, unbounded lists are not.
pub const NAMES_PER_ADDRESS: usize = 32;

/// The part of the cache one pod may hold: a pod whose allowed wildcard
/// name resolves to endless addresses (a domain its own team runs) fills
/// its share, not every other pod's.
pub const POD_SHARE_DIVISOR: usize = 16;

#[derive(Debug, Default)]
struct Learned {
    by_pair: HashMap<(u32, u32), Vec<LearnedName>>,
    /// (pod, address) pairs held per pod.
    per_pod: HashMap<u32, u32>,
}

impl FqdnCache {
    pub fn new(capacity: usize) -> Arc<FqdnCache> {
        Arc::new(FqdnCache {
            inner: RwLock::new(Learned::default()),
            capacity,
            full: AtomicU64::new(0),
            learned: AtomicU64::new(0),
        })
    }

    /// Records that `pod` resolved `name` to `addr`, trusted until `until` (seconds).
    pub fn learn(&self, pod: u32, addr: u32, name: &str, until: u32) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let l = &mut *guard;
        if !l.by_pair.contains_key(&(pod, addr)) {
            let held = l.per_pod.get(&pod).copied().unwrap_or(0) as usize;
            if l.by_pair.len() >= self.capacity || held >= (self.capacity / POD_SHARE_DIVISOR).max(1) {
                self.full.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *l.per_pod.entry(pod).or_default() += 1;
        }
        let v = l.by_pair.entry((pod, addr)).or_default();
        if let Some(e) = v.iter_mut().find(|(n, _)| &**n == name) {
            e.1 = e.1.max(until);
        } else if v.len() >= NAMES_PER_ADDRESS {
            // Bounded: the name that would expire first makes room.
            self.full.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = v.iter_mut().min_by_key(|(_, t)| *t) {
                *e = (Arc::from(name), until);
            }
        } else {
            v.push((Arc::from(name), until));
        }
        self.learned.fetch_add(1, Ordering::Relaxed);
    }

    /// The names still valid for (`pod`, `addr`) at `now`.
    pub fn names(&self, pod: u32, addr: u32, now: u32) -> Vec<Arc<str>> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_pair
            .get(&(pod, addr))
            .map(|v| v.iter().filter(|(_, t)| *t > now).map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    /// Forgets expired answers.
    pub fn expire(&self, now: u32) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Learned { by_pair, per_pod } = &mut *guard;
        by_pair.retain(|(pod, _), v| {
            v.retain(|(_, t)| *t > now);
            let keep = !v.is_empty();
            if !keep {
                if let Some(n) = per_pod.get_mut(pod) {
                    *n -= 1;
                    if *n == 0 {
                        per_pod.remove(pod);
                    }
                }
            }
            keep
        });
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).by_pair.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PolicyRule, Protocol};

    fn rule(
        name: &str,
        action: PolicyAction,
        cidrs: &[&str],
        fqdns: &[&str],
        proto: Option<Protocol>,
        ports: &[&str],
    ) -> PolicyRule {
        PolicyRule {
            name: name.into(),
            action,
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            fqdns: fqdns.iter().map(|s| s.to_string()).collect(),
            protocol: proto,
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            pods: None,
            server_name: Default::default(),
            tls_ports: vec![],
            http_ports: vec![],
        }
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    #[test]
    fn first_match_wins_and_the_default_applies_otherwise() {
        let p = EgressPolicy {
            default_action: PolicyAction::Deny,
            rules: vec![
                rule("block-one", PolicyAction::Deny, &["198.19.0.7/32"], &[], None, &[]),
                rule("web", PolicyAction::Allow, &["198.19.0.0/24"], &[], Some(Protocol::Tcp), &["443", "8000-8080"]),
                rule("dns", PolicyAction::Allow, &[], &[], Some(Protocol::Udp), &["53"]),
            ],
            deny_response: DenyResponse::Reject,
            live_flows: LiveFlows::Cut,
            dns_ttl_floor: 30,
            dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
        };
        let c = CompiledPolicy::new(&p);
        let pod = ip("198.18.0.2");
        let d = |dst: &str, proto, port| c.evaluate(pod, ip(dst), proto, port, &[]);
        assert_eq!(d("198.19.0.9", 6, 443), Decision { action: PolicyAction::Allow, rule: Some(1), needs: None });
        assert_eq!(d("198.19.0.9", 6, 8080).action, PolicyAction::Allow);
        assert_eq!(d("198.19.0.7", 6, 443), Decision { action: PolicyAction::Deny, rule: Some(0), needs: None });
        assert_eq!(d("198.19.0.9", 6, 22), Decision { action: PolicyAction::Deny, rule: None, needs: None });
        assert_eq!(d("198.19.1.9", 17, 53).rule, Some(2));
        assert_eq!(d("198.19.0.9", 1, 0).rule, None);
    }

    #[test]
    fn fqdn_rules_match_learned_names_only() {
        let p = EgressPolicy {
            default_action: PolicyAction::Deny,
            rules: vec![
                rule("api", PolicyAction::Allow, &[], &["api.example.com"], Some(Protocol::Tcp), &["443"]),
                rule("cdn", PolicyAction::Allow, &[], &["*.cdn.example.net"], None, &[]),
            ],
            deny_response: DenyResponse::Drop,
            live_flows: LiveFlows::Cut,
            dns_ttl_floor: 30,
            dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
        };
        let c = CompiledPolicy::new(&p);
        assert!(c.wants_name("api.example.com") && c.wants_name("a.b.cdn.example.net"));
        assert!(!c.wants_name("cdn.example.net") && !c.wants_name("evil.com"));
        let (pod, dst) = (ip("198.18.0.2"), ip("198.19.0.10"));
        assert_eq!(c.evaluate(pod, dst, 6, 443, &[]).action, PolicyAction::Deny, "no pod resolved it");
        let cache = FqdnCache::new(16);
        cache.learn(pod, dst, "api.example.com", 100);
        let names = cache.names(pod, dst, 50);
        assert_eq!(c.evaluate(pod, dst, 6, 443, &names).rule, Some(0));
        assert!(cache.names(ip("198.18.0.3"), dst, 50).is_empty(), "learned per pod");
        assert!(cache.names(pod, dst, 100).is_empty(), "expired");
        cache.expire(100);
        assert!(cache.is_empty());
    }

    #[test]
    fn one_pod_fills_only_its_share_of_the_fqdn_cache() {
        let cache = FqdnCache::new(64);
        let (greedy, other) = (ip("198.18.0.2"), ip("198.18.0.3"));
        for a in 0..100u32 {
            cache.learn(greedy, ip("198.19.0.0") + a, "x.example.org", 100);
        }
        assert_eq!(cache.len(), 64 / POD_SHARE_DIVISOR);
        assert_eq!(cache.full.load(Ordering::Relaxed), 100 - 4);
        cache.learn(other, ip("198.19.0.10"), "api.example.com", 100);
        assert_eq!(cache.names(other, ip("198.19.0.10"), 50).len(), 1, "another pod still learns");
        // Expired entries give the share back.
        cache.expire(100);
        cache.learn(greedy, ip("198.19.1.1"), "x.example.org", 200);
        assert_eq!(cache.names(greedy, ip("198.19.1.1"), 150).len(), 1);
    }
}
