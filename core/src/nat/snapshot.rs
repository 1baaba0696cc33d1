//! Sessions saved on stop and restored on start, so an upgrade restart
//! keeps established connections: each live session with its remaining
//! idle time (engine clocks restart; remaining time does not).

use super::session::{state, EndpointKey, FlowKey, Mapping, NONE};
use super::{proto_slot, NatEngine, PodInfo, Time};
use crate::plan::MappingMode;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// One live session, independent of engine internals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub config: String,
    pub proto: u8,
    pub pod: Ipv4Addr,
    pub pod_port: u16,
    pub remote: Ipv4Addr,
    pub remote_port: u16,
    pub egress: Ipv4Addr,
    pub egress_port: u16,
    /// TCP state bits.
    pub state: u8,
    /// Seconds left before it idles out.
    pub remaining: u32,
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub restored: usize,
    /// Records the current plan no longer covers, owned by another worker
    /// layout, or clashing with a session already present.
    pub skipped: usize,
}

impl NatEngine {
    /// Every live session, for saving.
    pub fn snapshot(&self, now: Time) -> Vec<SessionRecord> {
        self.snapshot_at_most(now, usize::MAX)
    }

    /// At most `limit` live sessions (a sample, in table order).
    pub fn snapshot_at_most(&self, now: Time, limit: usize) -> Vec<SessionRecord> {
        let mut out = Vec::new();
        self.snapshot_step(0, usize::MAX, limit, now, &mut out);
        out
    }

    /// One bounded step of a snapshot taken across turns of the worker's
    /// loop (a whole one of millions of sessions is a pause of hundreds of
    /// ms): appends the live sessions of `slots` table slots from `from`,
    /// `out` holding at most `limit`; returns where the next step starts,
    /// or `None` once the table (or the limit) is done. Sessions that open
    /// behind the cursor wait for the next snapshot, as those that open
    /// after a whole one do.
    pub fn snapshot_step(
        &self,
        from: usize,
        slots: usize,
        limit: usize,
        now: Time,
        out: &mut Vec<SessionRecord>,
    ) -> Option<usize> {
        let live = self.sessions.in_slots(from, slots).filter(|s| s.is_live() && s.deadline > now.secs());
        out.extend(live.take(limit.saturating_sub(out.len())).map(|s| SessionRecord {
            config: self.config_of_session(s).name.clone(),
            proto: s.proto,
            pod: Ipv4Addr::from(s.pod),
            pod_port: s.pod_port,
            remote: Ipv4Addr::from(s.remote),
            remote_port: s.remote_port,
            egress: Ipv4Addr::from(s.egress),
            egress_port: s.egress_port,
            state: s.state,
            remaining: s.deadline - now.secs(),
        }));
        let next = from.saturating_add(slots);
        (next < self.sessions.high_water() && out.len() < limit).then_some(next)
    }

    /// The worker a record belongs to under this engine's worker layout.
    pub fn record_owner(&self, r: &SessionRecord) -> Option<u16> {
        self.ports.slice.owner(r.egress_port)
    }

    /// Restores saved sessions that this worker owns and the plan still
    /// covers (same config name, pod bound to it, address in its pool).
    pub fn restore(&mut self, records: &[SessionRecord], now: Time) -> RestoreStats {
        self.finish_replan();
        let mut st = RestoreStats::default();
        for r in records {
            if self.restore_one(r, now) {
                st.restored += 1;
            } else {
                st.skipped += 1;
                self.holdings.note_if_idle(u32::from(r.pod));
            }
        }
        self.holdings.forget_idle();
        st
    }

    fn restore_one(&mut self, r: &SessionRecord, now: Time) -> bool {
        let (pod, egress, remote) = (u32::from(r.pod), u32::from(r.egress), u32::from(r.remote));
        let Some(ci) = self.plan.config_of(pod) else { return false };
        if self.pod(pod).is_none() {
            // A source a fallback CIDR binds: adopted as its first packet would.
            self.holdings.fallbacks.insert(pod, PodInfo::fallback(pod, ci, &self.plan));
        }
        let cfg = self.config(ci);
        if cfg.name != r.config || self.plan.egress.get(&egress).map(|e| e.0) != Some(ci) {
            return false;
        }
        let mapping_mode = cfg.mapping;
        let me = self.settings.worker;
        if !self.ports.slice.contains(r.egress_port) || self.inside_owner(r.proto, pod, r.pod_port) != me {
            return false;
        }
        if r.state & (state::FREE | state::COOLDOWN) != 0 || self.sessions.is_full() {
            return false;
        }
        let ik = FlowKey { proto: r.proto, local: pod, local_port: r.pod_port, remote, remote_port: r.remote_port };
        let ok =
            FlowKey { proto: r.proto, local: egress, local_port: r.egress_port, remote, remote_port: r.remote_port };
        if self.sessions.find_in(&ik).is_some() || self.sessions.find_out(&ok).is_some() {
            return false;
        }
        let off = u32::from(r.egress_port - self.ports.slice.lo);
        let mapping = match mapping_mode {
            MappingMode::EndpointIndependent => {
                let ek = EndpointKey { proto: r.proto, ip: pod, port: r.pod_port };
                match self.mappings.find_pod(&ek) {
                    Some(mi) => {
                        let m = self.mappings.get(mi);
                        if (m.egress, m.egress_port) != (egress, r.egress_port) {
                            return false;
                        }
                        mi
                    }
                    None => {
                        let set =
                            &mut self.ports.addrs.get_mut(&egress).expect("pool address").ports[proto_slot(r.proto)];
                        if set.is_set(off) {
                            return false;
                        }
                        let m = Mapping {
                            pod,
                            egress,
                            pod_port: r.pod_port,
                            egress_port: r.egress_port,
                            proto: r.proto,
                            free: false,
                            plan_parity: self.plan_parity,
                            unlinked: false,
                            config: ci,
                            refs: 0,
                            deadline: 0,
                        };
                        let Some(mi) = self.mappings.insert(m) else { return false };
                        set.set(off);
                        self.holdings.of_mut(pod).holdings += 1;
                        mi
                    }
                }
            }
            MappingMode::PortReuse => NONE,
        };
        let inside = FlowKey::outbound(r.proto, pod, remote, (r.pod_port, r.remote_port));
        let mut s = self.new_session(&inside, (egress, r.egress_port), ci, mapping, now);
        s.state = r.state;
        s.deadline = now.secs().saturating_add(r.remaining.min(crate::plan::MAX_TIMEOUT));
        if self.sessions.insert(s).is_none() {
            return false;
        }
        self.count_live(ci, r.proto, true);
        self.holdings.of_mut(pod).sessions += 1;
        if mapping == NONE {
            self.holdings.of_mut(pod).holdings += 1;
            self.ports.addrs.get_mut(&egress).expect("pool address").sessions += 1;
        } else {
            self.mappings.get_mut(mapping).refs += 1;
        }
        true
    }
}
