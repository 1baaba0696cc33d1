//! Records for the logs, kept bounded: sessions opened and closed (the NAT
//! log) and new flows the policy denied. The worker drains them between
//! batches, off the per-packet path.

use super::*;

pub(super) const DENY_EVENTS_KEPT: usize = 256;
pub(super) const NAT_EVENTS_KEPT: usize = 8192;

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

impl NatEngine {
    /// Names flows were allowed for since the last call (bounded as the
    /// NAT log's queue is; the rest counted in `nat_events_lost`).
    pub fn take_name_events(&mut self) -> impl Iterator<Item = NameEvent> + '_ {
        self.name_events.drain(..)
    }

    pub(super) fn log_name(&mut self, s: &Session, rule: Option<u32>, name: &str, now: Time) {
        if !self.settings.nat_log {
            return;
        }
        if self.name_events.len() >= NAT_EVENTS_KEPT {
            self.counters.nat_events_lost += 1;
            return;
        }
        let cfg = &self.plan.configs[usize::from(s.config)];
        let rule = match (cfg.policy.as_ref(), rule) {
            (Some(p), Some(r)) if (r as usize) < p.rule_count() => p.rule_name(r).to_string(),
            _ => "default".to_string(),
        };
        self.name_events.push_back(NameEvent {
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
    pub(super) fn log_session(&mut self, open: bool, s: &Session, now: Time) {
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
            at_ms: now.millis(),
            proto: s.proto,
            pod: Ipv4Addr::from(s.pod),
            pod_port: s.pod_port,
            egress: Ipv4Addr::from(s.egress),
            egress_port: s.egress_port,
            remote: self.settings.nat_log_destinations.then(|| (Ipv4Addr::from(s.remote), s.remote_port)),
        });
    }
}
