//! Records for the logs, kept bounded: sessions opened and closed (the NAT
//! log) and new flows the policy denied. The worker drains them between
//! batches, off the per-packet path.

use super::{CompiledConfig, FlowKey, NatEngine, Session, Time};
use std::collections::VecDeque;
use std::net::Ipv4Addr;

const DENY_EVENTS_KEPT: usize = 256;
const NAT_EVENTS_KEPT: usize = 8192;

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

/// A session opened or closed, for the NAT log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatEvent {
    pub open: bool,
    /// Engine time, seconds.
    pub at: u32,
    /// Engine time, milliseconds (IPFIX's observationTimeMilliseconds).
    pub at_ms: u64,
    pub proto: u8,
    pub pod: Ipv4Addr,
    pub pod_port: u16,
    pub egress: Ipv4Addr,
    pub egress_port: u16,
    /// Only with `nat_log_destinations`.
    pub remote: Option<(Ipv4Addr, u16)>,
}

/// A flow allowed for the name it showed (TLS SNI, HTTP Host), for the
/// NAT log: which name an egress endpoint was used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEvent {
    /// Engine time, seconds.
    pub at: u32,
    pub pod: Ipv4Addr,
    pub pod_port: u16,
    pub egress: Ipv4Addr,
    pub egress_port: u16,
    pub remote: (Ipv4Addr, u16),
    pub config: String,
    pub rule: String,
    pub name: String,
}

/// The engine's bounded queues of log records, which the worker drains
/// between batches. A record that finds its queue full is not queued: the
/// caller counts it lost.
#[derive(Debug, Default)]
pub(super) struct EventLog {
    /// Whether sessions (and the names flows were allowed for) are logged.
    sessions: bool,
    /// Whether session records carry their destinations.
    destinations: bool,
    deny: VecDeque<DenyEvent>,
    nat: VecDeque<NatEvent>,
    names: VecDeque<NameEvent>,
}

impl EventLog {
    pub(super) fn new(sessions: bool, destinations: bool) -> EventLog {
        EventLog { sessions, destinations, deny: VecDeque::with_capacity(DENY_EVENTS_KEPT), ..Default::default() }
    }

    /// Queues a session's open or close; false when the queue is full.
    #[inline]
    pub(super) fn session(&mut self, open: bool, s: &Session, now: Time) -> bool {
        if !self.sessions {
            return true;
        }
        if self.nat.len() >= NAT_EVENTS_KEPT {
            return false;
        }
        if self.nat.capacity() == 0 {
            self.nat.reserve_exact(NAT_EVENTS_KEPT);
        }
        self.nat.push_back(NatEvent {
            open,
            at: now.secs(),
            at_ms: now.millis(),
            proto: s.proto,
            pod: Ipv4Addr::from(s.pod),
            pod_port: s.pod_port,
            egress: Ipv4Addr::from(s.egress),
            egress_port: s.egress_port,
            remote: self.destinations.then(|| (Ipv4Addr::from(s.remote), s.remote_port)),
        });
        true
    }

    /// Queues the name a flow of `cfg` was allowed for (by `rule`, or the
    /// default); false when the queue is full.
    pub(super) fn name(&mut self, cfg: &CompiledConfig, s: &Session, rule: Option<u32>, name: &str, now: Time) -> bool {
        if !self.sessions {
            return true;
        }
        if self.names.len() >= NAT_EVENTS_KEPT {
            return false;
        }
        let rule = match (cfg.policy.as_ref(), rule) {
            (Some(p), Some(r)) if (r as usize) < p.rule_count() => p.rule_name(r).to_string(),
            _ => "default".to_string(),
        };
        self.names.push_back(NameEvent {
            at: now.secs(),
            pod: Ipv4Addr::from(s.pod),
            pod_port: s.pod_port,
            egress: Ipv4Addr::from(s.egress),
            egress_port: s.egress_port,
            remote: (Ipv4Addr::from(s.remote), s.remote_port),
            config: cfg.name.clone(),
            rule,
            name: name.to_string(),
        });
        true
    }

    /// Queues a new flow the policy of `cfg` denied; false when the queue is full.
    pub(super) fn deny(&mut self, cfg: &CompiledConfig, k: &FlowKey, rule: Option<u32>, now: Time) -> bool {
        if self.deny.len() >= DENY_EVENTS_KEPT {
            return false;
        }
        self.deny.push_back(DenyEvent {
            at: now,
            pod: Ipv4Addr::from(k.local),
            dst: Ipv4Addr::from(k.remote),
            proto: k.proto,
            port: k.remote_port,
            config: cfg.name.clone(),
            rule: rule.and_then(|r| cfg.policy.as_ref().map(|p| p.rule_name(r).to_string())),
        });
        true
    }
}

impl NatEngine {
    /// Names flows were allowed for since the last call (bounded as the
    /// NAT log's queue is; the rest counted in `nat_events_lost`).
    pub fn take_name_events(&mut self) -> impl Iterator<Item = NameEvent> + '_ {
        self.events.names.drain(..)
    }

    /// Policy deny events since the last call (at most 256 are kept; the
    /// rest are counted in `deny_events_lost`).
    pub fn take_deny_events(&mut self) -> impl Iterator<Item = DenyEvent> + '_ {
        self.events.deny.drain(..)
    }

    /// NAT log records since the last call. The queue holds 8192; when the
    /// logger falls behind, records are counted in `nat_events_lost`, never
    /// waited for.
    pub fn take_nat_events(&mut self) -> impl Iterator<Item = NatEvent> + '_ {
        self.events.nat.drain(..)
    }

    #[inline]
    pub(super) fn log_session(&mut self, open: bool, s: &Session, now: Time) {
        if !self.events.session(open, s, now) {
            self.counters.nat_events_lost += 1;
        }
    }
}
