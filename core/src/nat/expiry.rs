//! Expiry and the safe points: sessions and mappings past their timeouts
//! are ended a bounded number at a time, and idle fallback sources are
//! forgotten only here (never in the middle of a packet).

use super::*;

/// A sweep visits every session and mapping slot once in this long:
/// deadlines are whole seconds, and lookups end the expired sessions they
/// find whenever the sweep has not come by yet.
const SWEEP_PERIOD_MS: u64 = 1000;
/// Slots one paced call visits at most (a worker back from a long sleep).
const SWEEP_BURST: usize = 1 << 16;

impl NatEngine {
    /// Notes a pod (or a fallback source) that holds nothing any more; it
    /// is forgotten at the next [`NatEngine::forget_idle`] (the packet
    /// being handled may end its last session and open another).
    #[inline]
    pub(super) fn forget_if_idle(&mut self, pod: u32) {
        if self.held(pod).is_zero() {
            self.idle_pods.push(pod);
        }
    }

    /// Forgets the pods noted idle that still are: their counts, and the
    /// adoption of a fallback source.
    pub(super) fn forget_idle(&mut self) {
        while let Some(pod) = self.idle_pods.pop() {
            if self.held(pod).is_zero() {
                self.pod_counts.remove(&pod);
                self.fallbacks.remove(&pod);
            }
        }
    }

    /// [`NatEngine::expire`] at the sweep's pace, for a worker to call every
    /// turn: the slots due since the last call, so that every slot is
    /// visited once a [`SWEEP_PERIOD_MS`] however often the worker turns.
    /// (A fixed budget per turn swept 150k sessions many times a second at
    /// a high turn rate, for a tenth of the worker's time.)
    pub fn expire_paced(&mut self, now: Time) -> usize {
        let since = now.millis().saturating_sub(self.swept_at_ms);
        let slots = self.sessions.high_water().max(self.mappings.high_water()) as u64;
        let due = slots.saturating_mul(since) / SWEEP_PERIOD_MS;
        if due == 0 && since < SWEEP_PERIOD_MS {
            // Time accrues until a slot is due; the rest is done every call.
            return self.expire(now, 0);
        }
        self.swept_at_ms = now.millis();
        self.expire(now, (due as usize).clamp(1, SWEEP_BURST))
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
            self.freshen_session(i);
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
            self.freshen_mapping(i);
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
        self.cut_resets.expire(now);
        self.expire_name_checks(now);
        let timed_out = self.frags.expire(now.millis());
        self.counters.drop_n(DropReason::FragmentTimeout, timed_out);
        self.forget_idle();
        closed
    }

    /// Fragments held for reassembly order that can now go out.
    pub fn take_released(&mut self) -> Option<Released> {
        let r = self.frags.take_released()?;
        let mut r = match r.to {
            ReleaseTo::Side(side) if r.bytes.len() > self.mtu(side, Self::dst_of(&r.bytes)) => {
                self.fit_released(r, side)?
            }
            _ => r,
        };
        if r.to == ReleaseTo::Side(Side::Inside) && self.is_tunnelled(Self::dst_of(&r.bytes)) {
            r.to = ReleaseTo::Seal;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{engine, udp, POD_A, SERVER};
    use super::*;

    /// Called every millisecond, the paced sweep ends every idle session
    /// within its period, a share at a time rather than all in one turn.
    #[test]
    fn a_paced_sweep_ends_every_idle_session_within_its_period() {
        let mut e = engine();
        let start = Time::from_secs(1);
        for p in 0..2000u16 {
            assert!(matches!(udp(POD_A, 10_000 + p, SERVER, 53, b"x").run(&mut e, start), Verdict::Forward { .. }));
        }
        // The worker turns all along; the sessions idle past the UDP
        // timeout (300 s) at `idle`.
        let idle = start.millis() + 300_000;
        for t in (start.millis()..idle).step_by(10) {
            assert_eq!(e.expire_paced(Time::from_millis(t)), 0);
        }
        let mut closed = 0;
        for ms in 1..=100 {
            closed += e.expire_paced(Time::from_millis(idle + ms));
        }
        assert!(closed > 0 && closed < 1000, "a tenth of the period ends about a tenth: {closed}");
        for ms in 101..=SWEEP_PERIOD_MS + 1 {
            closed += e.expire_paced(Time::from_millis(idle + ms));
        }
        assert_eq!(e.session_count(), 0, "{closed} closed");
    }
}
