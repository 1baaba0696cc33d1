//! Expiry and the safe points: sessions and mappings past their timeouts
//! are ended a bounded number at a time, and idle fallback sources are
//! forgotten only here (never in the middle of a packet).

use super::*;

impl NatEngine {
    /// Notes a fallback source that holds nothing any more; it is forgotten
    /// at the next [`NatEngine::forget_idle`] (the packet being handled may
    /// end its last session and open another).
    #[inline]
    pub(super) fn forget_if_idle(&mut self, pod: u32) {
        if self.pods.get(&pod).is_some_and(PodState::idle_fallback) {
            self.idle_fallback.push(pod);
        }
    }

    /// Forgets the fallback sources noted idle that still are.
    pub(super) fn forget_idle(&mut self) {
        while let Some(pod) = self.idle_fallback.pop() {
            if self.pods.get(&pod).is_some_and(PodState::idle_fallback) {
                self.pods.remove(&pod);
            }
        }
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
        self.counters.drop_n(DropReason::FragmentTimeout, timed_out);
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
}
