//! A session's life: looked up, touched (timers and TCP state), created
//! with its port, ended into cool-down.

use super::{ipv4, session, state, tcp, DropReason, EndpointKey, FlowKey, MappingMode, NatEngine, Session, Time, NONE};

impl NatEngine {
    /// A fresh session of the pod's flow `inside` on `egress`: no TCP state
    /// yet, no deadline until its first touch, hairpinned when the remote is
    /// one of the plan's egress addresses.
    #[inline]
    pub(super) fn new_session(
        &self,
        inside: &FlowKey,
        (egress, egress_port): (u32, u16),
        config: u16,
        mapping: u32,
        now: Time,
    ) -> Session {
        Session {
            pod: inside.local,
            remote: inside.remote,
            egress,
            pod_port: inside.local_port,
            remote_port: inside.remote_port,
            egress_port,
            proto: inside.proto,
            state: 0,
            config,
            deadline: 0,
            mapping,
            created: now.secs(),
            flags: self.parity_flag()
                | if self.plan.egress.contains_key(&inside.remote) { session::flags::HAIRPIN } else { 0 },
        }
    }

    /// The idle timeout a session gets from its state.
    #[inline(always)]
    pub(super) fn timeout(&self, s: &Session) -> u32 {
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
    pub(super) fn find_live_in(&mut self, k: &FlowKey, now: Time) -> Option<u32> {
        let mut i = self.sessions.find_in(k)?;
        if self.session_stale(i) {
            // Not yet checked against the plan applied last: checked now.
            self.freshen_session(i);
            i = self.sessions.find_in(k)?;
        }
        if self.sessions.get(i).deadline <= now.secs() {
            self.end_session(i, now);
            return None;
        }
        Some(i)
    }

    #[inline(always)]
    pub(super) fn find_live_out(&mut self, k: &FlowKey, now: Time) -> Option<u32> {
        let mut i = self.sessions.find_out(k)?;
        if self.session_stale(i) {
            self.freshen_session(i);
            i = self.sessions.find_out(k)?;
        }
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
    pub(super) fn touch(&mut self, i: u32, tcp_flags: Option<u8>, outbound: bool, now: Time) -> Session {
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
    /// egress (address, port) from the flow's `draw`. Never evicts a live
    /// session.
    pub(super) fn create_session(&mut self, k: &FlowKey, ci: u16, draw: u32, now: Time) -> Result<u32, DropReason> {
        if self.sessions.is_full() {
            return Err(DropReason::SessionTableFull);
        }
        self.check_session_limit(k.local, ci)?;
        let cfg = self.config(ci);
        let mapping_mode = cfg.mapping;
        let (egress, egress_port, mapping) = match mapping_mode {
            MappingMode::EndpointIndependent => {
                let ek = EndpointKey { proto: k.proto, ip: k.local, port: k.local_port };
                let mi = match self.find_fresh_mapping(|t| t.find_pod(&ek)) {
                    Some(mi) => mi,
                    None => self.create_mapping(k, ci, draw)?,
                };
                let m = self.mappings.get_mut(mi);
                m.refs += 1;
                (m.egress, m.egress_port, mi)
            }
            MappingMode::PortReuse => {
                let (a, p) = self.alloc_port_reuse(k, ci, draw)?;
                (a, p, NONE)
            }
        };
        let s = self.new_session(k, (egress, egress_port), ci, mapping, now);
        let Some(i) = self.sessions.insert(s) else {
            // Capacity was checked above; undo the mapping reference anyway.
            if mapping != NONE {
                self.release_mapping_ref(mapping, now);
            }
            return Err(DropReason::SessionTableFull);
        };
        let pod = self.holdings.of_mut(k.local);
        pod.sessions += 1;
        if mapping == NONE {
            pod.holdings += 1;
            self.ports.addrs.get_mut(&egress).expect("pool address").sessions += 1;
        }
        self.counters.sessions_created += 1;
        self.count_live(ci, k.proto, true);
        self.log_session(true, &s, now);
        Ok(i)
    }

    /// A port-reuse tuple is free again: its destination may be scanned.
    #[inline]
    pub(super) fn tuple_freed(&mut self, s: &Session) {
        if !self.ports.exhausted.is_empty() {
            self.ports.exhausted.remove(&(s.proto, s.remote, s.remote_port, s.config));
        }
    }

    /// Ends a session: live → cooldown (port reuse) or gone (its mapping
    /// keeps the port cooling); cooling → gone. The cooldown counts from
    /// when the session went idle past its deadline, however late the sweep
    /// notices.
    pub(super) fn end_session(&mut self, i: u32, now: Time) {
        let s = *self.sessions.get(i);
        if s.flags & session::flags::NAME_CHECK != 0 {
            self.name_checks.forget(i);
            self.sessions.get_mut(i).flags &= !session::flags::NAME_CHECK;
        }
        let now = Time::from_secs(u64::from(s.deadline.min(now.secs())));
        if s.state & state::COOLDOWN != 0 {
            self.sessions.remove(i);
            self.tuple_freed(&s);
            return;
        }
        self.counters.sessions_closed += 1;
        self.count_live(s.config, s.proto, false);
        self.log_session(false, &s, now);
        if s.mapping != NONE {
            self.holdings.release(s.pod, 0, 1);
            self.sessions.remove(i);
            self.release_mapping_ref(s.mapping, now);
            return;
        }
        self.holdings.release(s.pod, 1, 1);
        if let Some(a) = self.ports.addrs.get_mut(&s.egress) {
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

    /// RFC 6888 REQ-5: one pod may not fill the session table for the rest.
    pub(super) fn check_session_limit(&self, pod: u32, ci: u16) -> Result<(), DropReason> {
        // As `check_quota`: a tunnelled pod's sessions are all on one worker.
        let held = self.holdings.of(pod).sessions;
        if held < self.ports.session_limits[usize::from(ci)] {
            return Ok(());
        }
        let whole = self.pod(pod).is_some_and(|p| p.tunnelled);
        if !whole || held >= self.config(ci).session_limit {
            return Err(DropReason::SessionLimit);
        }
        Ok(())
    }
}
