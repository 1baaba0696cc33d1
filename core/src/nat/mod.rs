//! The NAT core: stateful SNAT for TCP, UDP and ICMP with ports pooled
//! across every address of a config's egress pool. Pure: bytes, a clock and
//! a plan in; a verdict and rewritten bytes out. One `NatEngine` per worker,
//! owning its sessions (VPP `per_thread_data` style); the worker loop moves
//! packets and the engine never does I/O.
//!
//! Split as VPP's nat44-ed is. The stages: `dispatch` (which way a packet
//! goes), `handoff` (to the worker that owns the flow), `in2out` (pod →
//! internet), `out2in` (internet → pod), `icmp` (errors both ways, the
//! errors the gateway sends, their rate limit), `frag` (shallow virtual
//! reassembly), `mtu`. They share `rewrite` (the in-place rewrite, the
//! bare segments the gateway writes), `frag`'s types and the packet's
//! checked header (`wire::ipv4::Header`); each imports by name what it
//! uses. The state they work on, in
//! parts with types of their own: the sessions and mappings (`session`,
//! `lifecycle`), what each pod holds (`holdings::Holdings`), the ports (`alloc::Ports`: `port_pool`, rendezvous), what
//! the policies keep (`policy_check::PolicyState`), the flows awaiting
//! their name (`name_check::NameChecks`), fragments (`frag::FragTable`),
//! the log queues (`events::EventLog`), the expiry sweep (`expiry::Sweep`)
//! and the counters; `replan`, `prefetch`, `snapshot` (restart), and the
//! plan's lookup form (`compiled`).

mod alloc;
mod counters;
mod dispatch;
mod events;
mod expiry;
mod flow_index;
mod frag;
mod handoff;
mod holdings;
mod huge_slice;
mod icmp;
mod in2out;
mod lifecycle;
mod mtu;
mod name_check;
pub mod network_policy;
mod out2in;
pub mod policy;
mod policy_check;
pub mod port_pool;
mod prefetch;
mod replan;
mod rewrite;
pub mod session;
mod snapshot;
pub mod tcp;

pub use crate::compiled::{CompiledConfig, CompiledPlan, CompiledTunnel, PodInfo, SourceCidrs};
pub use counters::{Counters, DropReason};
pub use events::{DenyEvent, NameEvent, NatEvent};
pub use flow_index::prefetch;
pub use frag::{ReleaseTo, Released};
pub use name_check::{
    NameRefusal, NAME_CHECKS_CONFIG_SHARE_DIVISOR, NAME_CHECKS_MAX, NAME_CHECKS_POD_SHARE_DIVISOR, NAME_VERDICT_MS,
};
pub use network_policy::{CompiledNetworkPolicies, NetworkPolicyDenials};
pub use policy::{Decision, FqdnCache, WireName};
pub use policy_check::RuleHits;
pub use snapshot::{RestoreStats, SessionRecord};

use crate::plan::MappingMode;
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::{l4, Error as WireError, IpProtocol};
use frag::FragTable;
use hashbrown::HashMap;
use port_pool::{Draws, PortSet, PortSlice, Rng};
use session::{state, EndpointKey, FlowKey, Mapping, MappingTable, Session, SessionTable, NONE};
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Arc;

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
    /// For a tunnelled pod (forwarded to it, or an error replied to it):
    /// the tunnel stage encrypts the `len` bytes to the pod's peer.
    Seal { len: usize },
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

/// Per-egress-address state on this worker.
#[derive(Debug, Clone)]
struct AddrState {
    config: u16,
    /// Taken ports of this worker's slice, per protocol (TCP, UDP, ICMP).
    ports: [PortSet; 3],
    /// Live port-reuse sessions on this address.
    sessions: u32,
    /// New flows refused for want of a port whose pod is paired with this
    /// address (the one tried first), per protocol.
    refused: [u64; 3],
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
    /// New flows refused for want of a port, counted on the address of
    /// the pods paired with it, per protocol.
    pub refused: [u64; 3],
}

/// Under port reuse, a destination whose tuples are getting scarce: new
/// flows to it found no free port in their random probes and scanned
/// (a sign it is ~85% taken or more), or found none at all and were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyDestination {
    pub config: String,
    pub proto: u8,
    pub remote: Ipv4Addr,
    pub remote_port: u16,
    pub scans: u64,
    pub refused: u64,
}

/// Busy destinations kept per worker (beyond: not followed), and reported.
pub const BUSY_DESTINATIONS_KEPT: usize = 256;
/// One config follows at most this share of them (a tenant whose pods
/// hammer many destinations leaves the others room).
pub const BUSY_DESTINATIONS_CONFIG_SHARE_DIVISOR: usize = 4;
pub const BUSY_DESTINATIONS_REPORTED: usize = 10;

/// Index of a protocol in per-protocol arrays (TCP, UDP, ICMP); sessions
/// hold only these three.
#[inline]
fn proto_slot(proto: u8) -> usize {
    IpProtocol::from_number(proto).map_or(2, IpProtocol::slot)
}

#[inline]
fn is_martian_dst(dst: u32) -> bool {
    let a = dst >> 24;
    a == 0 || a == 127 || a >= 224
}

/// One worker's NAT state, owned by that worker alone (VPP's
/// `per_thread_data`): its sessions and mappings and the pods they are
/// for, its ports, what the policies keep, fragments in flight, the
/// bounded log queues the worker drains and counters. Nothing here is
/// shared but the plan and the DNS-learned names.
pub struct NatEngine {
    settings: EngineSettings,
    plan: Arc<CompiledPlan>,
    /// This worker's ports: its slice of every address, what is taken.
    ports: alloc::Ports,
    sessions: SessionTable,
    mappings: MappingTable,
    /// What this worker holds per pod, and the fallback sources it adopted.
    holdings: holdings::Holdings,
    /// New flows the batch prefetch's stage 2 saw, for its stage 3.
    new_flows: prefetch::NewFlows,
    counters: Counters,
    frags: FragTable,
    /// Where the paced expiry sweep stands.
    sweep: expiry::Sweep,
    icmp_budget: icmp::IcmpBudget,
    /// What the egress policies keep: learned names, hits, cut flows.
    policy: policy_check::PolicyState,
    /// Log records the worker drains: sessions, denials, names.
    events: events::EventLog,
    /// Live sessions per config index and protocol slot.
    live: Vec<[u64; 3]>,
    /// Whether the plan has tunnelled pods at all (spares the hot path a
    /// lookup when none are).
    any_tunnelled: bool,
    /// Flows awaiting their name on the wire (TLS SNI, HTTP Host).
    name_checks: name_check::NameChecks,
    /// The parity of the plan applied last (see `replan`).
    plan_parity: bool,
    /// A plan change's walk still under way.
    replan: Option<replan::Walk>,
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
            ports: alloc::Ports::new(slice, seed),
            new_flows: prefetch::NewFlows::new(),
            holdings: holdings::Holdings::default(),
            counters: Counters::default(),
            sweep: expiry::Sweep::default(),
            icmp_budget: icmp::IcmpBudget::new(settings.icmp_errors_per_sec),
            policy: policy_check::PolicyState::new(FqdnCache::new(1 << 16)),
            events: events::EventLog::new(settings.nat_log, settings.nat_log_destinations),
            live: Vec::new(),
            any_tunnelled: false,
            name_checks: name_check::NameChecks::default(),
            plan_parity: false,
            replan: None,
            plan: Arc::new(CompiledPlan {
                version: 0,
                configs: Vec::new(),
                pods: HashMap::new(),
                egress: HashMap::new(),
                tunnelled: hashbrown::HashSet::new(),
                tunnels: HashMap::new(),
                sources: Default::default(),
                network_policies: Default::default(),
                pools_digest: 0,
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
        self.policy.fqdn = cache;
    }

    pub fn fqdn_cache(&self) -> &Arc<FqdnCache> {
        &self.policy.fqdn
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }
    pub fn port_slice(&self) -> PortSlice {
        self.ports.slice
    }
    /// Live sessions (excluding cooling tombstones).
    pub fn session_count(&self) -> usize {
        self.live.iter().flatten().sum::<u64>() as usize
    }

    /// Live sessions per config and protocol (TCP, UDP, ICMP).
    pub fn sessions_by_config(&self) -> Vec<(String, [u64; 3])> {
        self.plan.configs.iter().zip(&self.live).map(|(c, l)| (c.name.clone(), *l)).collect()
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
            .ports
            .addrs
            .iter()
            .map(|(&a, st)| PortUsage {
                addr: Ipv4Addr::from(a),
                config: self.plan.configs[usize::from(st.config)].name.clone(),
                mapped: [st.ports[0].used(), st.ports[1].used(), st.ports[2].used()],
                sessions: st.sessions,
                slice: self.ports.slice.len() as u32,
                refused: st.refused,
            })
            .collect();
        v.sort_by_key(|u| u.addr);
        v
    }

    /// Under port reuse, the destinations whose tuples ran scarcest since the
    /// plan was applied: most refusals, then most scans, at most
    /// `BUSY_DESTINATIONS_REPORTED`.
    pub fn busy_destinations(&self) -> Vec<BusyDestination> {
        let mut v: Vec<BusyDestination> = self
            .ports
            .busy
            .iter()
            .map(|(&(proto, remote, remote_port, ci), &(scans, refused))| BusyDestination {
                config: self.plan.configs[usize::from(ci)].name.clone(),
                proto,
                remote: Ipv4Addr::from(remote),
                remote_port,
                scans,
                refused,
            })
            .collect();
        v.sort_by(|a, b| {
            (b.refused, b.scans, a.remote, a.remote_port).cmp(&(a.refused, a.scans, b.remote, b.remote_port))
        });
        v.truncate(BUSY_DESTINATIONS_REPORTED);
        v
    }

    /// Bytes of the session and mapping tables' own mappings (slabs and
    /// indexes, touched up front; not the allocator's).
    pub fn table_bytes(&self) -> usize {
        self.sessions.bytes() + self.mappings.bytes()
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

    /// What the plan says of pod `ip`, or of a source adopted under a
    /// fallback source CIDR.
    #[inline(always)]
    fn pod(&self, ip: u32) -> Option<PodInfo> {
        match self.plan.pods.get(&ip) {
            Some(p) => Some(*p),
            None => self.holdings.fallback(ip),
        }
    }
}

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod name_check_tests;
#[cfg(test)]
mod port_reuse_tests;
#[cfg(test)]
mod replan_tests;
#[cfg(test)]
mod source_cidr_tests;
#[cfg(test)]
mod tests;
