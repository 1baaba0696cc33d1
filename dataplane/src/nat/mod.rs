//! The NAT core: stateful SNAT for TCP, UDP and ICMP with ports pooled
//! across every address of a config's egress pool. Pure: bytes, a clock and
//! a plan in; a verdict and rewritten bytes out. One `NatEngine` per worker,
//! owning its sessions (VPP `per_thread_data` style); the worker loop moves
//! packets and the engine never does I/O.
//!
//! Split by direction as VPP's nat44-ed is: `in2out` (pod → internet),
//! `out2in` (internet → pod), `icmp` (errors both ways and the errors the
//! gateway itself sends), `frag` (shallow virtual reassembly).

pub mod compiled;
mod counters;
mod flow_index;
mod frag;
mod icmp;
mod in2out;
mod mtu;
mod out2in;
pub mod policy;
pub mod port_pool;
pub mod session;
mod snapshot;
pub mod tcp;

pub use compiled::{CompiledConfig, CompiledPlan, CompiledTunnel, SourceCidrs};
pub use counters::{Counters, DropReason};
pub use frag::{ReleaseTo, Released};
pub use policy::{Decision, FqdnCache};
pub use snapshot::{RestoreStats, SessionRecord};

use crate::plan::MappingMode;
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::{l4, Error as WireError};
use frag::FragTable;
use hashbrown::HashMap;
use port_pool::{PortSet, PortSlice, Rng};
use session::{state, EndpointKey, FlowKey, Mapping, MappingTable, Session, SessionTable, NONE};
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Arc;

/// Sessions above which `prefetch_worthwhile` says yes (~3 MB of state).
const PREFETCH_THRESHOLD: usize = 1 << 15;

/// Engine time: a monotonic clock in milliseconds, passed in by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    ms: u64,
}

impl Time {
    pub const fn from_millis(ms: u64) -> Time {
        Time { ms }
    }
    pub const fn from_secs(s: u64) -> Time {
        Time { ms: s * 1000 }
    }
    pub const fn millis(self) -> u64 {
        self.ms
    }
    /// Whole seconds, the resolution of session timers.
    #[inline]
    pub const fn secs(self) -> u32 {
        (self.ms / 1000) as u32
    }
}

/// Which side of the gateway a packet goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Toward the pods.
    Inside,
    /// Toward the internet.
    Outside,
}

/// What the worker does with a packet after `process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place (TTL decremented): route `len` bytes by destination
    /// out of `side`.
    Forward { side: Side, len: usize },
    /// The buffer now holds an ICMP error for the sender: send `len` bytes
    /// back out of the interface the packet came in on, to the sender.
    Reply { len: usize },
    /// Belongs to another worker's sessions: hand it over, for the owner to
    /// process as arriving on `from` (a hairpinned packet's return leg is
    /// an outside → inside packet).
    Handoff { worker: u16, from: Side },
    /// Kept by the engine (an out-of-order fragment); see `take_released`.
    Held,
    /// Dropped; already counted under its reason.
    Drop(DropReason),
}

/// Node-level settings of one worker's engine (the plan carries the rest).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// This worker's index and the number of workers sharing the pools.
    pub worker: u16,
    pub workers: u16,
    /// Sessions this engine can hold; allocated up front, never evicted.
    pub session_capacity: usize,
    /// Source of the ICMP errors the gateway sends to pods (its inside address).
    pub router_ip: Ipv4Addr,
    /// Egress ports used on every address.
    pub ports: RangeInclusive<u16>,
    /// ICMP errors the engine may send per second (RFC 1812 4.3.2.8).
    pub icmp_errors_per_sec: u32,
    /// Datagrams whose fragments are tracked at once.
    pub frag_datagrams: usize,
    /// Out-of-order fragments held at once.
    pub frag_held: usize,
    pub frag_timeout_ms: u64,
    /// Port randomisation seed; 0 picks one at random.
    pub seed: u64,
    /// Session open/close records for compliance logging (who used which
    /// egress address and port when).
    pub nat_log: bool,
    /// Include destinations in those records (RFC 6888 REQ-12: off by default).
    pub nat_log_destinations: bool,
    /// MTU of the interface toward each side, indexed by `Side`.
    pub mtu: [usize; 2],
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            worker: 0,
            workers: 1,
            session_capacity: 4 << 20,
            router_ip: Ipv4Addr::UNSPECIFIED,
            ports: 1024..=65535,
            icmp_errors_per_sec: 1000,
            frag_datagrams: 16384,
            frag_held: 256,
            frag_timeout_ms: 2000,
            seed: 0,
            nat_log: false,
            nat_log_destinations: false,
            mtu: [65535, 65535],
        }
    }
}

/// Per-pod state on this worker.
#[derive(Debug, Clone, Copy)]
struct PodState {
    config: u16,
    /// Index of the pod's paired egress address in its config (rendezvous hash).
    preferred: u16,
    /// Ports held: mappings (endpoint-independent) or sessions (port reuse).
    holdings: u32,
    /// Live sessions of the pod's, however they were opened.
    sessions: u32,
    /// Reaches the gateway through a WireGuard tunnel only.
    tunnelled: bool,
    /// Bound by a fallback source CIDR, not by name: adopted on its first
    /// packet and forgotten once it holds nothing (so the map stays as
    /// small as the sessions, whatever the CIDRs' size).
    fallback: bool,
}

impl PodState {
    /// A fallback source that holds no session and no port.
    #[inline]
    fn idle_fallback(&self) -> bool {
        self.fallback && self.sessions == 0 && self.holdings == 0
    }
}

/// Per-egress-address state on this worker.
#[derive(Debug, Clone)]
struct AddrState {
    config: u16,
    /// Taken ports of this worker's slice, per protocol (TCP, UDP, ICMP).
    ports: [PortSet; 3],
    /// Live port-reuse sessions on this address.
    sessions: u32,
}

/// Port usage of one egress address on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortUsage {
    pub addr: Ipv4Addr,
    pub config: String,
    /// Ports held by endpoint-independent mappings (live or cooling), per protocol.
    pub mapped: [u32; 3],
    /// Port-reuse sessions.
    pub sessions: u32,
    /// Ports in this worker's slice of the address (per protocol).
    pub slice: u32,
}

#[inline]
fn proto_slot(proto: u8) -> usize {
    match proto {
        ipv4::PROTO_TCP => 0,
        ipv4::PROTO_UDP => 1,
        _ => 2,
    }
}

#[inline]
fn is_martian_dst(dst: u32) -> bool {
    let a = dst >> 24;
    a == 0 || a == 127 || a >= 224
}

pub struct NatEngine {
    settings: EngineSettings,
    plan: Arc<CompiledPlan>,
    slice: PortSlice,
    sessions: SessionTable,
    mappings: MappingTable,
    pods: HashMap<u32, PodState>,
    /// Fallback sources that went idle, forgotten at the next safe point
    /// (never in the middle of a packet that may still open a session).
    idle_fallback: Vec<u32>,
    addrs: HashMap<u32, AddrState>,
    /// Per config: this worker's share of the per-pod quota.
    quotas: Vec<u32>,
    /// Per config: this worker's share of the per-pod session limit.
    session_limits: Vec<u32>,
    rng: Rng,
    counters: Counters,
    frags: FragTable,
    sweep_sessions: usize,
    sweep_mappings: usize,
    icmp_tokens: u32,
    icmp_refill_ms: u64,
    /// DNS-learned names, shared by all workers.
    fqdn: Arc<FqdnCache>,
    next_fqdn_sweep: u32,
    /// Per config: hits per policy rule, then the default's hits last.
    policy_hits: Vec<Vec<u64>>,
    deny_events: std::collections::VecDeque<DenyEvent>,
    nat_events: std::collections::VecDeque<NatEvent>,
    /// Live sessions per config index and protocol slot.
    live: Vec<[u64; 3]>,
    /// Ports a plan cut, still cooling in their address's bitmap.
    cooling: port_pool::CoolingPorts,
    /// Port reuse: destinations (proto, address, port, config) whose every
    /// tuple was taken at the last exhaustive scan, until one of theirs is
    /// freed; refused new flows to them cost a lookup, not a scan.
    exhausted: hashbrown::HashSet<(u8, u32, u16, u16)>,
    /// Whether the plan has tunnelled pods at all (spares the hot path a
    /// lookup when none are).
    any_tunnelled: bool,
}

/// Destinations remembered as exhausted at once (beyond: scan as before).
const EXHAUSTED_KEPT: usize = 4096;

/// A new flow the egress policy denied, kept (bounded) for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEvent {
    pub at: Time,
    pub pod: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
    pub config: String,
    /// The denying rule, or `None` for "no rule matched".
    pub rule: Option<String>,
}

/// Policy rule hit counts of one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHits {
    pub config: String,
    /// `(rule name, hits)`, in rule order, then `("default", hits)`.
    pub rules: Vec<(String, u64)>,
}

const DENY_EVENTS_KEPT: usize = 256;
const NAT_EVENTS_KEPT: usize = 8192;

/// A session opened or closed, for the NAT log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatEvent {
    pub open: bool,
    /// Engine time, seconds.
    pub at: u32,
    pub proto: u8,
    pub pod: Ipv4Addr,
    pub pod_port: u16,
    pub egress: Ipv4Addr,
    pub egress_port: u16,
    /// Only with `nat_log_destinations`.
    pub remote: Option<(Ipv4Addr, u16)>,
}

impl NatEngine {
    pub fn new(settings: EngineSettings, plan: Arc<CompiledPlan>) -> Self {
        let seed = if settings.seed != 0 {
            settings.seed
        } else {
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        };
        let slice = PortSlice::new(settings.ports.clone(), settings.worker, settings.workers);
        let cap = settings.session_capacity;
        let mut engine = NatEngine {
            sessions: SessionTable::with_capacity(cap),
            mappings: MappingTable::with_capacity(cap),
            frags: {
                let mut f = FragTable::new(settings.frag_datagrams, settings.frag_held);
                f.set_timeout(settings.frag_timeout_ms);
                f
            },
            rng: Rng::new(seed),
            slice,
            pods: HashMap::new(),
            idle_fallback: Vec::new(),
            addrs: HashMap::new(),
            quotas: Vec::new(),
            session_limits: Vec::new(),
            counters: Counters::default(),
            sweep_sessions: 0,
            sweep_mappings: 0,
            icmp_tokens: settings.icmp_errors_per_sec,
            icmp_refill_ms: 0,
            fqdn: FqdnCache::new(1 << 16),
            next_fqdn_sweep: 0,
            policy_hits: Vec::new(),
            deny_events: std::collections::VecDeque::with_capacity(DENY_EVENTS_KEPT),
            nat_events: std::collections::VecDeque::new(),
            live: Vec::new(),
            cooling: port_pool::CoolingPorts::default(),
            exhausted: hashbrown::HashSet::new(),
            any_tunnelled: false,
            plan: Arc::new(CompiledPlan {
                version: 0,
                configs: Vec::new(),
                pods: HashMap::new(),
                egress: HashMap::new(),
                tunnelled: hashbrown::HashSet::new(),
                tunnels: HashMap::new(),
                sources: Default::default(),
            }),
            settings,
        };
        engine.apply_plan(plan, Time::default());
        engine
    }

    pub fn plan(&self) -> &Arc<CompiledPlan> {
        &self.plan
    }

    /// Shares one DNS-learned name cache between the workers of a gateway.
    pub fn share_fqdn_cache(&mut self, cache: Arc<FqdnCache>) {
        self.fqdn = cache;
    }

    pub fn fqdn_cache(&self) -> &Arc<FqdnCache> {
        &self.fqdn
    }

    /// Policy deny events since the last call (at most 256 are kept; the
    /// rest are counted in `deny_events_lost`).
    pub fn take_deny_events(&mut self) -> impl Iterator<Item = DenyEvent> + '_ {
        self.deny_events.drain(..)
    }

    /// NAT log records since the last call. The queue holds 8192; when the
    /// logger falls behind, records are counted in `nat_events_lost`, never
    /// waited for.
    pub fn take_nat_events(&mut self) -> impl Iterator<Item = NatEvent> + '_ {
        self.nat_events.drain(..)
    }

    #[inline]
    fn log_session(&mut self, open: bool, s: &Session, now: Time) {
        if !self.settings.nat_log {
            return;
        }
        if self.nat_events.len() >= NAT_EVENTS_KEPT {
            self.counters.nat_events_lost += 1;
            return;
        }
        if self.nat_events.capacity() == 0 {
            self.nat_events.reserve_exact(NAT_EVENTS_KEPT);
        }
        self.nat_events.push_back(NatEvent {
            open,
            at: now.secs(),
            proto: s.proto,
            pod: Ipv4Addr::from(s.pod),
            pod_port: s.pod_port,
            egress: Ipv4Addr::from(s.egress),
            egress_port: s.egress_port,
            remote: self.settings.nat_log_destinations.then(|| (Ipv4Addr::from(s.remote), s.remote_port)),
        });
    }

    /// Hits per policy rule, per config with a policy.
    pub fn rule_hits(&self) -> Vec<RuleHits> {
        self.plan
            .configs
            .iter()
            .zip(&self.policy_hits)
            .filter_map(|(c, hits)| {
                let p = c.policy.as_ref()?;
                let mut rules: Vec<(String, u64)> =
                    (0..p.rule_count()).map(|i| (p.rule_name(i as u32).to_string(), hits[i])).collect();
                rules.push(("default".into(), hits[p.rule_count()]));
                Some(RuleHits { config: c.name.clone(), rules })
            })
            .collect()
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }
    pub fn port_slice(&self) -> PortSlice {
        self.slice
    }
    /// Live sessions (excluding cooling tombstones).
    pub fn session_count(&self) -> usize {
        self.live.iter().flatten().sum::<u64>() as usize
    }

    /// Live sessions per config and protocol (TCP, UDP, ICMP).
    pub fn sessions_by_config(&self) -> Vec<(String, [u64; 3])> {
        self.plan.configs.iter().zip(&self.live).map(|(c, l)| (c.name.clone(), *l)).collect()
    }

    #[inline]
    fn count_live(&mut self, ci: u16, proto: u8, up: bool) {
        if let Some(l) = self.live.get_mut(usize::from(ci)) {
            let slot = &mut l[proto_slot(proto)];
            *slot = if up { *slot + 1 } else { slot.saturating_sub(1) };
        }
    }
    /// Occupied session slots, live and cooling: what counts against capacity.
    pub fn session_slots(&self) -> usize {
        self.sessions.len()
    }
    pub fn mapping_count(&self) -> usize {
        self.mappings.len()
    }
    /// Every live session.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.iter().map(|(_, s)| s).filter(|s| s.is_live())
    }

    /// Port usage per egress address on this worker.
    pub fn port_usage(&self) -> Vec<PortUsage> {
        let mut v: Vec<PortUsage> = self
            .addrs
            .iter()
            .map(|(&a, st)| PortUsage {
                addr: Ipv4Addr::from(a),
                config: self.plan.configs[usize::from(st.config)].name.clone(),
                mapped: [st.ports[0].used(), st.ports[1].used(), st.ports[2].used()],
                sessions: st.sessions,
                slice: self.slice.len() as u32,
            })
            .collect();
        v.sort_by_key(|u| u.addr);
        v
    }

    /// The worker that owns an inside → outside flow of a pod endpoint. A
    /// pod endpoint always lands on one worker, so its endpoint-independent
    /// mapping is one mapping.
    #[inline(always)]
    pub fn inside_owner(&self, proto: u8, pod: u32, port: u16) -> u16 {
        if self.settings.workers <= 1 {
            return self.settings.worker;
        }
        if self.is_tunnelled(pod) {
            // A tunnelled pod's flows live where its peer does: decrypt,
            // translate and encrypt on one worker, no handoff.
            return crate::tunnel::owner_of(pod, self.settings.workers);
        }
        let h = (u64::from(pod) << 24 | u64::from(port) << 8 | u64::from(proto)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((h >> 32) % u64::from(self.settings.workers)) as u16
    }

    /// Swaps in a new plan between batches. Sessions survive when their pod
    /// is still bound to a config of the same name and mapping mode whose
    /// pool still holds their egress address; all others are cut at once.
    pub fn apply_plan(&mut self, plan: Arc<CompiledPlan>, now: Time) {
        let old = std::mem::replace(&mut self.plan, plan);
        let plan = self.plan.clone();
        let workers = u32::from(self.settings.workers.max(1));
        self.quotas = plan.configs.iter().map(|c| c.port_quota.div_ceil(workers)).collect();
        self.session_limits = plan.configs.iter().map(|c| c.session_limit.div_ceil(workers)).collect();
        let old_hits: HashMap<(&str, String), u64> = old
            .configs
            .iter()
            .zip(&self.policy_hits)
            .filter_map(|(c, h)| Some((c, c.policy.as_ref()?, h)))
            .flat_map(|(c, p, h)| {
                (0..=p.rule_count()).map(move |i| {
                    let name =
                        if i == p.rule_count() { "default".to_string() } else { p.rule_name(i as u32).to_string() };
                    ((c.name.as_str(), name), h[i])
                })
            })
            .collect();
        let policy_hits: Vec<Vec<u64>> = plan
            .configs
            .iter()
            .map(|c| match &c.policy {
                Some(p) => (0..=p.rule_count())
                    .map(|i| {
                        let name =
                            if i == p.rule_count() { "default".to_string() } else { p.rule_name(i as u32).to_string() };
                        old_hits.get(&(c.name.as_str(), name)).copied().unwrap_or(0)
                    })
                    .collect(),
                None => Vec::new(),
            })
            .collect();
        drop(old_hits);
        self.policy_hits = policy_hits;

        // Egress addresses: keep the port bitmaps of those that stay, in
        // whichever config: ports cut below cool down before reuse (RFC
        // 6888 REQ-8) even when the address moves to another config.
        let mut addrs = HashMap::with_capacity(plan.egress.len());
        for (&a, &(ci, _)) in &plan.egress {
            let st = match self.addrs.remove(&a) {
                Some(mut st) => {
                    st.config = ci;
                    // Recounted below from the sessions that stay.
                    st.sessions = 0;
                    st
                }
                _ => {
                    let n = self.slice.len();
                    AddrState { config: ci, ports: [PortSet::new(n), PortSet::new(n), PortSet::new(n)], sessions: 0 }
                }
            };
            addrs.insert(a, st);
        }
        self.addrs = addrs;
        // Pools may have changed: every destination gets a fresh scan.
        self.exhausted.clear();
        let addrs = &self.addrs;
        self.cooling.retain_addrs(|a| addrs.contains_key(&a));

        let old_pods = std::mem::take(&mut self.pods);
        self.pods = plan
            .pods
            .iter()
            .map(|(&p, &ci)| {
                let preferred = rendezvous(p, &plan.configs[usize::from(ci)]);
                let tunnelled = plan.tunnelled.contains(&p);
                (p, PodState { config: ci, preferred, holdings: 0, sessions: 0, tunnelled, fallback: false })
            })
            .collect();
        // Sources the plan binds only by a source CIDR now keep their
        // sessions under it; idle ones are forgotten below.
        for &p in old_pods.keys().filter(|&p| !plan.pods.contains_key(p)) {
            if let Some(ci) = plan.source_config(p) {
                self.pods.insert(p, fallback_pod(p, ci, &plan));
            }
        }
        drop(old_pods);
        self.any_tunnelled = !plan.tunnelled.is_empty();

        // Re-home or cut sessions, then mappings, recounting holdings.
        let keep = |pod: u32, egress: u32, old_ci: u16, plan: &CompiledPlan| -> Option<u16> {
            let ci = plan.config_of(pod)?;
            let &(eci, _) = plan.egress.get(&egress)?;
            let (o, n) = (&old.configs[usize::from(old_ci)], &plan.configs[usize::from(ci)]);
            (eci == ci && o.name == n.name && o.mapping == n.mapping).then_some(ci)
        };
        // Ports that cool in the bitmaps of addresses that stay.
        let mut cooled: Vec<((u32, u8, u32), u32)> = Vec::new();
        let idxs: Vec<u32> = self.sessions.iter().map(|(i, _)| i).collect();
        for i in idxs {
            let s = *self.sessions.get(i);
            let kept = keep(s.pod, s.egress, s.config, &plan)
                .filter(|&ci| !plan.configs[usize::from(ci)].excludes(s.remote))
                .filter(|&ci| !s.is_live() || !self.policy_cuts(&plan.configs[usize::from(ci)], &s, now));
            match kept {
                Some(ci) => {
                    let hairpin = plan.egress.contains_key(&s.remote);
                    let e = self.sessions.get_mut(i);
                    e.config = ci;
                    e.flags = if hairpin { session::flags::HAIRPIN } else { 0 };
                    if s.is_live() {
                        let pod = self.pods.get_mut(&s.pod).expect("kept pod is bound");
                        pod.sessions += 1;
                        if s.mapping == NONE {
                            pod.holdings += 1;
                            self.addrs.get_mut(&s.egress).expect("kept address").sessions += 1;
                        }
                    }
                }
                None => {
                    if s.is_live() {
                        self.log_session(false, &s, now);
                    }
                    self.counters.sessions_closed += u64::from(s.is_live());
                    if s.mapping != NONE {
                        // The mapping cools down below (its port's cooldown).
                        let cooldown = old.configs[usize::from(s.config)].timeouts.port_cooldown;
                        let m = self.mappings.get_mut(s.mapping);
                        m.refs -= 1;
                        if m.refs == 0 && s.is_live() {
                            m.deadline = now.secs().saturating_add(cooldown);
                        }
                    }
                    // RFC 6888 REQ-8 on an address that stays, in the form
                    // its new config allocates by: port reuse checks tuples,
                    // so the tuple stays as a cooling tombstone; mappings
                    // check the port bitmap, so the port cools there.
                    let Some(&(eci, _)) = plan.egress.get(&s.egress) else {
                        self.sessions.remove(i);
                        continue;
                    };
                    let next = &plan.configs[usize::from(eci)];
                    let cooldown = next.timeouts.port_cooldown;
                    let until = if s.is_live() { now.secs().saturating_add(cooldown) } else { s.deadline };
                    match next.mapping {
                        MappingMode::PortReuse if cooldown > 0 => {
                            if s.is_live() {
                                self.sessions.unlink_in(i);
                            }
                            let e = self.sessions.get_mut(i);
                            e.config = eci;
                            e.mapping = NONE;
                            e.state = state::COOLDOWN;
                            e.deadline = until;
                        }
                        MappingMode::EndpointIndependent if cooldown > 0 && s.mapping == NONE => {
                            let off = u32::from(s.egress_port - self.slice.lo);
                            cooled.push(((s.egress, proto_slot(s.proto) as u8, off), until));
                            self.sessions.remove(i);
                        }
                        _ => self.sessions.remove(i),
                    }
                }
            }
        }
        let midxs: Vec<u32> = self.mappings.iter().map(|(i, _)| i).collect();
        for i in midxs {
            let m = *self.mappings.get(i);
            match keep(m.pod, m.egress, m.config, &plan) {
                Some(ci) if m.refs > 0 || m.deadline > now.secs() => {
                    self.mappings.get_mut(i).config = ci;
                    self.pods.get_mut(&m.pod).expect("kept pod is bound").holdings += 1;
                    let off = u32::from(m.egress_port - self.slice.lo);
                    let set = &mut self.addrs.get_mut(&m.egress).expect("kept address").ports[proto_slot(m.proto)];
                    if !set.is_set(off) {
                        set.set(off);
                    }
                }
                _ => {
                    debug_assert_eq!(m.refs, 0, "sessions of a cut mapping were cut");
                    let off = u32::from(m.egress_port - self.slice.lo);
                    let slot = proto_slot(m.proto);
                    let eim = plan.egress.get(&m.egress).is_some_and(|&(eci, _)| {
                        plan.configs[usize::from(eci)].mapping == MappingMode::EndpointIndependent
                    });
                    if eim && m.deadline > now.secs() {
                        // RFC 6888 REQ-8: the port stays taken until its
                        // cooldown ends, whoever holds the address now.
                        cooled.push(((m.egress, slot as u8, off), m.deadline));
                    } else if let Some(a) = self.addrs.get_mut(&m.egress) {
                        if a.ports[slot].is_set(off) {
                            a.ports[slot].clear(off);
                        }
                    }
                    self.mappings.remove(i);
                }
            }
        }
        for ((addr, slot, off), until) in cooled {
            let Some(a) = self.addrs.get_mut(&addr) else { continue };
            let set = &mut a.ports[usize::from(slot)];
            if !set.is_set(off) {
                set.set(off);
            }
            self.cooling.hold((addr, slot, off), until);
        }
        self.pods.retain(|_, p| !p.idle_fallback());
        self.recount_live();
    }

    fn recount_live(&mut self) {
        let mut live = vec![[0u64; 3]; self.plan.configs.len()];
        for (_, s) in self.sessions.iter() {
            if s.is_live() {
                live[usize::from(s.config)][proto_slot(s.proto)] += 1;
            }
        }
        self.live = live;
    }

    /// Whether a changed policy cuts this live session.
    fn policy_cuts(&self, cfg: &CompiledConfig, s: &Session, now: Time) -> bool {
        let Some(p) = &cfg.policy else { return false };
        if p.live_flows == crate::plan::LiveFlows::Keep {
            return false;
        }
        let names = if p.has_fqdns() { self.fqdn.names(s.pod, s.remote, now.secs()) } else { Vec::new() };
        p.evaluate(s.pod, s.remote, s.proto, s.remote_port, &names).action == crate::plan::PolicyAction::Deny
    }

    /// The policy decision for a new flow, counted per rule; `None` when the
    /// config has no policy.
    fn decide(&mut self, ci: u16, k: &FlowKey, now: Time) -> Option<Decision> {
        let plan = self.plan.clone();
        let p = plan.configs[usize::from(ci)].policy.as_ref()?;
        let names = if p.has_fqdns() { self.fqdn.names(k.local, k.remote, now.secs()) } else { Vec::new() };
        let d = p.evaluate(k.local, k.remote, k.proto, k.remote_port, &names);
        let slot = d.rule.map_or(p.rule_count(), |r| r as usize);
        self.policy_hits[usize::from(ci)][slot] += 1;
        if d.action == crate::plan::PolicyAction::Deny {
            if self.deny_events.len() < DENY_EVENTS_KEPT {
                self.deny_events.push_back(DenyEvent {
                    at: now,
                    pod: Ipv4Addr::from(k.local),
                    dst: Ipv4Addr::from(k.remote),
                    proto: k.proto,
                    port: k.remote_port,
                    config: plan.configs[usize::from(ci)].name.clone(),
                    rule: d.rule.map(|r| p.rule_name(r).to_string()),
                });
            } else {
                self.counters.deny_events_lost += 1;
            }
        }
        Some(d)
    }

    /// Learns which addresses the names in a DNS answer resolved to, for
    /// the pod it goes to, when the pod's config has FQDN rules.
    fn learn_dns(&mut self, s: &Session, dns: &[u8], now: Time) {
        let Some(p) = self.plan.configs[usize::from(s.config)].policy.clone() else { return };
        if !p.has_fqdns() {
            return;
        }
        if !p.trusts_resolver(s.remote) {
            self.counters.dns_untrusted += 1;
            return;
        }
        for a in crate::wire::dns::answers(dns) {
            if p.wants_name(&a.name) {
                let until = now.secs().saturating_add(a.ttl.clamp(p.ttl_floor, 86_400));
                self.fqdn.learn(s.pod, u32::from_be_bytes(a.addr), &a.name, until);
            }
        }
    }

    /// Translates one IPv4 packet in place, not knowing which side it came
    /// from (one-armed: pods and the internet share the interface).
    pub fn process(&mut self, buf: &mut [u8], len: usize, now: Time) -> Verdict {
        self.process_from(buf, len, None, now)
    }

    /// Translates one IPv4 packet in place. `buf` starts at the IP header and
    /// runs to the end of the frame's room (replies may need up to 64 bytes
    /// more than `len`); `len` is the bytes received; `from`, where known,
    /// the side it arrived on: a pod's source is believed only from the
    /// inside, and the outside's traffic (to egress addresses, or from
    /// excluded hosts to pods) only from the outside.
    pub fn process_from(&mut self, buf: &mut [u8], len: usize, from: Option<Side>, now: Time) -> Verdict {
        self.process_arrival(buf, len, from, false, now)
    }

    /// As [`NatEngine::process_from`] for a packet the tunnel stage
    /// decrypted: it comes from the inside, from its peer's pod.
    pub fn process_tunnelled(&mut self, buf: &mut [u8], len: usize, now: Time) -> Verdict {
        self.process_arrival(buf, len, Some(Side::Inside), true, now)
    }

    /// Whether packets for `pod` go through a tunnel (the worker encrypts
    /// what the engine forwards to it).
    #[inline]
    pub fn is_tunnelled(&self, pod: u32) -> bool {
        self.any_tunnelled && self.pods.get(&pod).is_some_and(|p| p.tunnelled)
    }

    fn process_arrival(
        &mut self,
        buf: &mut [u8],
        len: usize,
        from: Option<Side>,
        tunnelled: bool,
        now: Time,
    ) -> Verdict {
        let len = len.min(buf.len());
        let (src, dst, total) = match Ipv4Packet::new_checked(&buf[..len]) {
            Ok(ip) if ip.verify_checksum() => {
                (u32::from_be_bytes(ip.src()), u32::from_be_bytes(ip.dst()), ip.total_len())
            }
            Ok(_) => return self.drop(DropReason::BadIpChecksum),
            Err(WireError::Truncated) => return self.drop(DropReason::Truncated),
            Err(WireError::Malformed) => return self.drop(DropReason::Malformed),
        };
        if let Some(&pod) = self.pods.get(&src) {
            if from == Some(Side::Outside) {
                return self.drop(DropReason::WrongInterface);
            }
            if pod.tunnelled != tunnelled {
                return self.drop(DropReason::NotTunnelled);
            }
            return self.in2out(buf, total, pod.config, now);
        }
        if tunnelled {
            // The tunnel checked the source is its peer's pod; a pod no
            // longer bound (a plan between) is no pod at all.
            return self.drop(DropReason::UnboundSource);
        }
        if let Some(ci) = self.plan.source_config(src) {
            if from == Some(Side::Outside) {
                return self.drop(DropReason::WrongInterface);
            }
            return self.in2out_fallback(buf, total, src, ci, now);
        }
        if self.plan.egress.contains_key(&dst) {
            if from == Some(Side::Inside) {
                return self.drop(DropReason::WrongInterface);
            }
            return self.out2in(buf, total, now);
        }
        if let Some(ci) = self.pods.get(&dst).map(|p| p.config).or_else(|| self.plan.source_config(dst)) {
            if from == Some(Side::Inside) {
                return self.drop(DropReason::WrongInterface);
            }
            return self.excluded_return(buf, total, ci, src, now);
        }
        self.drop(DropReason::UnboundSource)
    }

    /// A source bound only by a fallback CIDR: adopted as a pod of its
    /// config for this packet, kept while it holds a session or a port.
    fn in2out_fallback(&mut self, buf: &mut [u8], len: usize, src: u32, ci: u16, now: Time) -> Verdict {
        let pod = fallback_pod(src, ci, &self.plan);
        self.pods.insert(src, pod);
        let v = self.in2out(buf, len, ci, now);
        self.forget_if_idle(src);
        self.forget_idle();
        v
    }

    /// Notes a fallback source that holds nothing any more; it is forgotten
    /// at the next [`NatEngine::forget_idle`] (the packet being handled may
    /// end its last session and open another).
    #[inline]
    fn forget_if_idle(&mut self, pod: u32) {
        if self.pods.get(&pod).is_some_and(PodState::idle_fallback) {
            self.idle_fallback.push(pod);
        }
    }

    /// Forgets the fallback sources noted idle that still are.
    fn forget_idle(&mut self) {
        while let Some(pod) = self.idle_fallback.pop() {
            if self.pods.get(&pod).is_some_and(PodState::idle_fallback) {
                self.pods.remove(&pod);
            }
        }
    }

    /// Whether batch prefetching pays: once the session state outgrows the
    /// caches. Below that the extra parsing costs more than it hides.
    #[inline]
    pub fn prefetch_worthwhile(&self) -> bool {
        self.sessions.len() > PREFETCH_THRESHOLD
    }

    /// Batch stage 1 (call for every packet of a batch before stage 2):
    /// starts loading the index slot of the packet's session, so the cache
    /// misses of a whole batch overlap instead of queueing (VPP-style).
    #[inline]
    pub fn prefetch_index(&self, pkt: &[u8]) {
        if let Some((k, inside)) = self.peek_key(pkt) {
            self.sessions.prefetch_slot(&k, inside);
        }
    }

    /// Batch stage 2 (then `process` each packet): starts loading the
    /// session itself.
    #[inline]
    pub fn prefetch_session(&self, pkt: &[u8]) {
        if let Some((k, inside)) = self.peek_key(pkt) {
            self.sessions.prefetch_session(&k, inside);
        }
    }

    /// The key a packet's session would be found by; bounds-checked only,
    /// since it serves nothing but prefetching.
    #[inline]
    fn peek_key(&self, pkt: &[u8]) -> Option<(FlowKey, bool)> {
        if pkt.len() < ipv4::HEADER_LEN || pkt[0] >> 4 != 4 || (pkt[6] & 0x1f) | pkt[7] != 0 {
            return None;
        }
        let proto = pkt[9];
        let l4b = pkt.get(usize::from(pkt[0] & 0x0f) * 4..).filter(|l| l.len() >= 8)?;
        match proto {
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => {}
            ipv4::PROTO_ICMP if l4::icmp::is_query(l4b[0]) => {}
            _ => return None,
        }
        let src = u32::from_be_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]);
        let dst = u32::from_be_bytes([pkt[16], pkt[17], pkt[18], pkt[19]]);
        let (a, b) = ports(proto, l4b);
        if self.pods.contains_key(&src) {
            return Some((FlowKey { proto, local: src, local_port: a, remote: dst, remote_port: b }, true));
        }
        let (local_port, remote_port) = if proto == ipv4::PROTO_ICMP { (a, 0) } else { (b, a) };
        Some((FlowKey { proto, local: dst, local_port, remote: src, remote_port }, false))
    }

    /// Bytes of session state held (slabs and indexes, allocated up front).
    pub fn state_bytes(&self) -> usize {
        self.sessions.bytes() + self.mappings.bytes()
    }

    /// To a pod's own address: only replies from its config's excluded
    /// destinations (which it reached untranslated) come back this way.
    fn excluded_return(&mut self, buf: &mut [u8], len: usize, ci: u16, src: u32, now: Time) -> Verdict {
        if !self.config(ci).excludes(src) {
            return self.drop(DropReason::Unsolicited);
        }
        let ip = Ipv4Packet::new_unchecked(&buf[..len]);
        if ip.ttl() <= 1 {
            return self.drop(DropReason::TtlExpired);
        }
        let (router, dst) = (u32::from(self.settings.router_ip), u32::from_be_bytes(ip.dst()));
        if let Some(v) = self.refuse_too_big(buf, len, Side::Inside, dst, router, now) {
            return v;
        }
        Ipv4Packet::new_unchecked(&mut buf[..len]).decrement_ttl();
        self.counters.bypass_packets += 1;
        self.forward_fitted(buf, len, Side::Inside)
    }

    /// Expires idle sessions and cooled mappings and fragments, visiting at
    /// most `budget` slots: bounded work per call, a full sweep every
    /// `capacity / budget` calls. Returns the sessions closed.
    pub fn expire(&mut self, now: Time, budget: usize) -> usize {
        let secs = now.secs();
        let mut closed = 0;
        let hw = self.sessions.high_water();
        for _ in 0..budget.min(hw) {
            if self.sweep_sessions >= hw {
                self.sweep_sessions = 0;
            }
            let i = self.sweep_sessions as u32;
            self.sweep_sessions += 1;
            let s = self.sessions.get(i);
            if s.state & state::FREE == 0 && s.deadline <= secs {
                closed += usize::from(s.is_live());
                self.end_session(i, now);
            }
        }
        let hw = self.mappings.high_water();
        for _ in 0..budget.min(hw) {
            if self.sweep_mappings >= hw {
                self.sweep_mappings = 0;
            }
            let i = self.sweep_mappings as u32;
            self.sweep_mappings += 1;
            let m = self.mappings.get(i);
            if !m.free && m.refs == 0 && m.deadline <= secs {
                self.free_mapping(i);
            }
        }
        while let Some((addr, slot, off)) = self.cooling.pop_due(secs) {
            if let Some(a) = self.addrs.get_mut(&addr) {
                if a.ports[usize::from(slot)].is_set(off) {
                    a.ports[usize::from(slot)].clear(off);
                }
            }
        }
        if self.settings.worker == 0 && secs >= self.next_fqdn_sweep {
            self.next_fqdn_sweep = secs + 1;
            self.fqdn.expire(secs);
        }
        let timed_out = self.frags.expire(now.millis());
        self.counters.drops[DropReason::FragmentTimeout as usize] += timed_out;
        self.forget_idle();
        closed
    }

    /// Fragments held for reassembly order that can now go out.
    pub fn take_released(&mut self) -> Option<Released> {
        let r = self.frags.take_released()?;
        match r.to {
            ReleaseTo::Side(side) if r.bytes.len() > self.mtu(side, Self::dst_of(&r.bytes)) => {
                self.fit_released(r, side)
            }
            _ => Some(r),
        }
    }

    #[inline]
    fn drop(&mut self, reason: DropReason) -> Verdict {
        self.counters.drop(reason);
        Verdict::Drop(reason)
    }

    #[inline]
    fn config(&self, ci: u16) -> &CompiledConfig {
        &self.plan.configs[usize::from(ci)]
    }

    /// The idle timeout a session gets from its state.
    #[inline(always)]
    fn timeout(&self, s: &Session) -> u32 {
        let t = &self.config(s.config).timeouts;
        match s.proto {
            ipv4::PROTO_TCP => tcp::timeout(s.state, t),
            ipv4::PROTO_UDP => t.udp,
            _ => t.icmp,
        }
    }

    /// Finds a live session by its inside key, closing it first if it has
    /// idled past its deadline (the sweep may not have reached it yet).
    #[inline(always)]
    fn find_live_in(&mut self, k: &FlowKey, now: Time) -> Option<u32> {
        let i = self.sessions.find_in(k)?;
        if self.sessions.get(i).deadline <= now.secs() {
            self.end_session(i, now);
            return None;
        }
        Some(i)
    }

    #[inline(always)]
    fn find_live_out(&mut self, k: &FlowKey, now: Time) -> Option<u32> {
        let i = self.sessions.find_out(k)?;
        let s = self.sessions.get(i);
        if !s.is_live() {
            return None;
        }
        if s.deadline <= now.secs() {
            self.end_session(i, now);
            return None;
        }
        Some(i)
    }

    /// Records a packet on a session (TCP state, refreshed deadline) and
    /// returns the updated session.
    #[inline(always)]
    fn touch(&mut self, i: u32, tcp_flags: Option<u8>, outbound: bool, now: Time) -> Session {
        let s = *self.sessions.get(i);
        let st = match tcp_flags {
            Some(f) => tcp::update(s.state, f, outbound),
            None => s.state,
        };
        let mut n = s;
        n.state = st;
        n.deadline = now.secs().saturating_add(self.timeout(&n));
        *self.sessions.get_mut(i) = n;
        n
    }

    /// Creates a session for a new inside → outside flow, allocating its
    /// egress (address, port). Never evicts a live session.
    fn create_session(&mut self, k: &FlowKey, ci: u16, now: Time) -> Result<u32, DropReason> {
        if self.sessions.is_full() {
            return Err(DropReason::SessionTableFull);
        }
        self.check_session_limit(k.local, ci)?;
        let cfg = self.config(ci);
        let mapping_mode = cfg.mapping;
        let (egress, egress_port, mapping) = match mapping_mode {
            MappingMode::EndpointIndependent => {
                let ek = EndpointKey { proto: k.proto, ip: k.local, port: k.local_port };
                let mi = match self.mappings.find_pod(&ek) {
                    Some(mi) => mi,
                    None => self.create_mapping(k, ci, now)?,
                };
                let m = self.mappings.get_mut(mi);
                m.refs += 1;
                (m.egress, m.egress_port, mi)
            }
            MappingMode::PortReuse => {
                let (a, p) = self.alloc_port_reuse(k, ci)?;
                (a, p, NONE)
            }
        };
        let s = Session {
            pod: k.local,
            remote: k.remote,
            egress,
            pod_port: k.local_port,
            remote_port: k.remote_port,
            egress_port,
            proto: k.proto,
            state: 0,
            config: ci,
            deadline: 0,
            mapping,
            created: now.secs(),
            flags: if self.plan.egress.contains_key(&k.remote) { session::flags::HAIRPIN } else { 0 },
        };
        let Some(i) = self.sessions.insert(s) else {
            // Capacity was checked above; undo the mapping reference anyway.
            if mapping != NONE {
                self.release_mapping_ref(mapping, now);
            }
            return Err(DropReason::SessionTableFull);
        };
        let pod = self.pods.get_mut(&k.local).expect("bound pod");
        pod.sessions += 1;
        if mapping == NONE {
            pod.holdings += 1;
            self.addrs.get_mut(&egress).expect("pool address").sessions += 1;
        }
        self.counters.sessions_created += 1;
        self.count_live(ci, k.proto, true);
        self.log_session(true, &s, now);
        Ok(i)
    }

    /// The pod's paired address first, then the others in order.
    #[inline]
    fn addr_order(&self, pod: u32, ci: u16) -> (u16, usize) {
        let n = self.config(ci).addrs.len();
        (self.pods.get(&pod).map_or(0, |p| p.preferred), n)
    }

    /// RFC 6888 REQ-5: one pod may not fill the session table for the rest.
    pub(super) fn check_session_limit(&self, pod: u32, ci: u16) -> Result<(), DropReason> {
        let held = self.pods.get(&pod).map_or(0, |p| p.sessions);
        if held >= self.session_limits[usize::from(ci)] {
            return Err(DropReason::SessionLimit);
        }
        Ok(())
    }

    fn check_quota(&self, pod: u32, ci: u16) -> Result<(), DropReason> {
        let held = self.pods.get(&pod).map_or(0, |p| p.holdings);
        if held >= self.quotas[usize::from(ci)] {
            return Err(DropReason::QuotaExceeded);
        }
        Ok(())
    }

    fn create_mapping(&mut self, k: &FlowKey, ci: u16, _now: Time) -> Result<u32, DropReason> {
        self.check_quota(k.local, ci)?;
        let (first, n) = self.addr_order(k.local, ci);
        let slot = proto_slot(k.proto);
        for step in 0..n {
            let ai = (usize::from(first) + step) % n;
            let addr = u32::from(self.plan.configs[usize::from(ci)].addrs[ai]);
            let start = self.rng.next_u64() as u32;
            let st = self.addrs.get_mut(&addr).expect("pool address");
            if let Some(off) = st.ports[slot].take_from(start) {
                let port = self.slice.lo + off as u16;
                let m = Mapping {
                    pod: k.local,
                    egress: addr,
                    pod_port: k.local_port,
                    egress_port: port,
                    proto: k.proto,
                    free: false,
                    config: ci,
                    refs: 0,
                    deadline: 0,
                };
                let Some(mi) = self.mappings.insert(m) else {
                    st.ports[slot].clear(off);
                    return Err(DropReason::SessionTableFull);
                };
                self.pods.get_mut(&k.local).expect("bound pod").holdings += 1;
                self.counters.mappings_created += 1;
                return Ok(mi);
            }
        }
        Err(DropReason::PoolExhausted)
    }

    /// Port reuse: any port whose outside tuple toward this destination is
    /// unused (live or cooling). Random probes on each address first (the
    /// pod's paired address first), then an exhaustive scan so that
    /// "exhausted" is never claimed while a port is free. Probing every
    /// address before scanning any keeps a full paired address from costing
    /// a scan of its whole port range for every new flow.
    fn alloc_port_reuse(&mut self, k: &FlowKey, ci: u16) -> Result<(u32, u16), DropReason> {
        self.check_quota(k.local, ci)?;
        let dest = (k.proto, k.remote, k.remote_port, ci);
        if self.exhausted.contains(&dest) {
            return Err(DropReason::PoolExhausted);
        }
        let (first, n) = self.addr_order(k.local, ci);
        let (lo, len) = (self.slice.lo, self.slice.len() as u32);
        let mut probe =
            FlowKey { proto: k.proto, local: 0, local_port: 0, remote: k.remote, remote_port: k.remote_port };
        for step in 0..n {
            let ai = (usize::from(first) + step) % n;
            probe.local = u32::from(self.plan.configs[usize::from(ci)].addrs[ai]);
            for _ in 0..16 {
                probe.local_port = lo + (self.rng.next_u64() as u32 % len) as u16;
                if self.sessions.find_out(&probe).is_none() {
                    return Ok((probe.local, probe.local_port));
                }
            }
        }
        self.counters.pool_scans += 1;
        for step in 0..n {
            let ai = (usize::from(first) + step) % n;
            probe.local = u32::from(self.plan.configs[usize::from(ci)].addrs[ai]);
            let start = self.rng.next_u64() as u32 % len;
            for j in 0..len {
                probe.local_port = lo + ((start + j) % len) as u16;
                if self.sessions.find_out(&probe).is_none() {
                    return Ok((probe.local, probe.local_port));
                }
            }
        }
        if self.exhausted.len() < EXHAUSTED_KEPT {
            self.exhausted.insert(dest);
        }
        Err(DropReason::PoolExhausted)
    }

    /// A port-reuse tuple is free again: its destination may be scanned.
    #[inline]
    fn tuple_freed(&mut self, s: &Session) {
        if !self.exhausted.is_empty() {
            self.exhausted.remove(&(s.proto, s.remote, s.remote_port, s.config));
        }
    }

    /// Ends a session: live → cooldown (port reuse) or gone (its mapping
    /// keeps the port cooling); cooling → gone. The cooldown counts from
    /// when the session went idle past its deadline, however late the sweep
    /// notices.
    fn end_session(&mut self, i: u32, now: Time) {
        let s = *self.sessions.get(i);
        let now = Time::from_secs(u64::from(s.deadline.min(now.secs())));
        if s.state & state::COOLDOWN != 0 {
            self.sessions.remove(i);
            self.tuple_freed(&s);
            return;
        }
        self.counters.sessions_closed += 1;
        self.count_live(s.config, s.proto, false);
        self.log_session(false, &s, now);
        if let Some(p) = self.pods.get_mut(&s.pod) {
            p.sessions = p.sessions.saturating_sub(1);
        }
        if s.mapping != NONE {
            self.sessions.remove(i);
            self.release_mapping_ref(s.mapping, now);
            self.forget_if_idle(s.pod);
            return;
        }
        if let Some(p) = self.pods.get_mut(&s.pod) {
            p.holdings -= 1;
        }
        self.forget_if_idle(s.pod);
        if let Some(a) = self.addrs.get_mut(&s.egress) {
            a.sessions -= 1;
        }
        let cooldown = self.config(s.config).timeouts.port_cooldown;
        if cooldown == 0 {
            self.sessions.remove(i);
            self.tuple_freed(&s);
        } else {
            self.sessions.unlink_in(i);
            let e = self.sessions.get_mut(i);
            e.state = state::COOLDOWN;
            e.deadline = now.secs().saturating_add(cooldown);
        }
    }

    fn release_mapping_ref(&mut self, mi: u32, now: Time) {
        let cooldown = self.config(self.mappings.get(mi).config).timeouts.port_cooldown;
        let m = self.mappings.get_mut(mi);
        m.refs -= 1;
        if m.refs == 0 {
            m.deadline = now.secs().saturating_add(cooldown);
            if cooldown == 0 {
                self.free_mapping(mi);
            }
        }
    }

    fn free_mapping(&mut self, mi: u32) {
        let m = *self.mappings.get(mi);
        if let Some(p) = self.pods.get_mut(&m.pod) {
            p.holdings -= 1;
        }
        if let Some(a) = self.addrs.get_mut(&m.egress) {
            a.ports[proto_slot(m.proto)].clear(u32::from(m.egress_port - self.slice.lo));
        }
        self.mappings.remove(mi);
        self.forget_if_idle(m.pod);
    }

    /// Takes an ICMP-error token; tokens refill at `icmp_errors_per_sec`.
    fn icmp_token(&mut self, now: Time) -> bool {
        let rate = self.settings.icmp_errors_per_sec;
        let elapsed = now.millis().saturating_sub(self.icmp_refill_ms);
        if elapsed > 0 {
            let add = (elapsed * u64::from(rate) / 1000) as u32;
            if add > 0 {
                self.icmp_tokens = (self.icmp_tokens + add).min(rate);
                self.icmp_refill_ms = now.millis();
            }
        }
        if self.icmp_tokens == 0 {
            self.counters.icmp_rate_limited += 1;
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }
}

/// The state of a source bound by a fallback CIDR of config `ci`.
fn fallback_pod(src: u32, ci: u16, plan: &CompiledPlan) -> PodState {
    let preferred = rendezvous(src, &plan.configs[usize::from(ci)]);
    PodState { config: ci, preferred, holdings: 0, sessions: 0, tunnelled: false, fallback: true }
}

/// The pod's paired address: highest rendezvous score, so a pool change
/// moves only the pods whose address came or went.
fn rendezvous(pod: u32, cfg: &CompiledConfig) -> u16 {
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

/// Reads the transport key fields at the start of an L4 header (ports, or
/// the ICMP identifier as the local "port").
#[inline(always)]
fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    match proto {
        ipv4::PROTO_ICMP => (l4::read16(l4, l4::icmp::IDENT), 0),
        _ => (l4::read16(l4, 0), l4::read16(l4, 2)),
    }
}

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod port_reuse_tests;
#[cfg(test)]
mod source_cidr_tests;
#[cfg(test)]
mod tests;
