//! Expiry and the safe points: sessions and mappings past their timeouts
//! are ended a bounded number at a time, and idle fallback sources are
//! forgotten only here (never in the middle of a packet).

use super::{ipv4, state, DropReason, NatEngine, ReleaseTo, Released, Side, Time};

/// A sweep visits every session and mapping slot once in this long:
/// deadlines are whole seconds, and lookups end the expired sessions they
/// find whenever the sweep has not come by yet.
const SWEEP_PERIOD_MS: u64 = 1000;
/// Slots one paced call visits at most (a worker back from a long sleep).
const SWEEP_BURST: usize = 1 << 16;

/// Where the paced sweep stands: the next session and mapping slot it
/// visits, when it last went, and when DNS-learned names next expire.
#[derive(Debug, Default)]
pub(super) struct Sweep {
    next_session: usize,
    next_mapping: usize,
    at_ms: u64,
    next_fqdn_secs: u32,
}

impl Sweep {
    /// The slots due at `now`, of `slots` visited once a period: `None`
    /// while none is (time accrues until one is).
    fn due(&mut self, now: Time, slots: usize) -> Option<usize> {
        let since = now.millis().saturating_sub(self.at_ms);
        let due = (slots as u64).saturating_mul(since) / SWEEP_PERIOD_MS;
        if due == 0 && since < SWEEP_PERIOD_MS {
            return None;
        }
        self.at_ms = now.millis();
        Some((due as usize).clamp(1, SWEEP_BURST))
    }

    /// The slot after `cursor`'s, wrapping at `high_water`.
    #[inline]
    fn step(cursor: &mut usize, high_water: usize) -> u32 {
        if *cursor >= high_water {
            *cursor = 0;
        }
        *cursor += 1;
        (*cursor - 1) as u32
    }

    /// Whether DNS-learned names are due to expire (once a second).
    fn fqdn_due(&mut self, secs: u32) -> bool {
        let due = secs >= self.next_fqdn_secs;
        if due {
            self.next_fqdn_secs = secs + 1;
        }
        due
    }
}

impl NatEngine {
    /// [`NatEngine::expire`] at the sweep's pace, for a worker to call every
    /// turn: the slots due since the last call, so that every slot is
    /// visited once a [`SWEEP_PERIOD_MS`] however often the worker turns.
    /// (A fixed budget per turn swept 150k sessions many times a second at
    /// a high turn rate, for a tenth of the worker's time.)
    pub fn expire_paced(&mut self, now: Time) -> usize {
        let slots = self.sessions.high_water().max(self.mappings.high_water());
        // With no slot due, the rest is still done every call.
        let budget = self.sweep.due(now, slots).unwrap_or(0);
        self.expire(now, budget)
    }

    /// Expires idle sessions and cooled mappings and fragments, visiting at
    /// most `budget` slots: bounded work per call, a full sweep every
    /// `capacity / budget` calls. Returns the sessions closed.
    pub fn expire(&mut self, now: Time, budget: usize) -> usize {
        let secs = now.secs();
        let mut closed = 0;
        let hw = self.sessions.high_water();
        for _ in 0..budget.min(hw) {
            let i = Sweep::step(&mut self.sweep.next_session, hw);
            self.freshen_session(i);
            let s = self.sessions.get(i);
            if s.state & state::FREE == 0 && s.deadline <= secs {
                closed += usize::from(s.is_live());
                self.end_session(i, now);
            }
        }
        let hw = self.mappings.high_water();
        for _ in 0..budget.min(hw) {
            let i = Sweep::step(&mut self.sweep.next_mapping, hw);
            self.freshen_mapping(i);
            let m = self.mappings.get(i);
            if !m.free && m.refs == 0 && m.deadline <= secs {
                self.free_mapping(i);
            }
        }
        while let Some((addr, slot, off)) = self.ports.cooling.pop_due(secs) {
            if let Some(a) = self.ports.addrs.get_mut(&addr) {
                if a.ports[usize::from(slot)].is_set(off) {
                    a.ports[usize::from(slot)].clear(off);
                }
            }
        }
        if self.settings.worker == 0 && self.sweep.fqdn_due(secs) {
            self.policy.fqdn.expire(secs);
        }
        self.policy.cut_resets.expire(now);
        self.expire_name_checks(now);
        let timed_out = self.frags.expire(now.millis());
        self.counters.drop_n(DropReason::FragmentTimeout, timed_out);
        self.holdings.forget_idle();
        closed
    }

    /// Fragments held for reassembly order that can now go out.
    pub fn take_released(&mut self) -> Option<Released> {
        let r = self.frags.take_released()?;
        let mut r = match r.to {
            ReleaseTo::Side(side) if r.bytes.len() > self.mtu(side, ipv4::destination(&r.bytes)) => {
                self.fit_released(r, side)?
            }
            _ => r,
        };
        match &mut r.to {
            ReleaseTo::Side(Side::Inside) if self.is_tunnelled(ipv4::destination(&r.bytes)) => r.to = ReleaseTo::Seal,
            ReleaseTo::Worker { from: Side::Inside, tunnelled, .. } => {
                *tunnelled = self.is_tunnelled(ipv4::source(&r.bytes))
            }
            _ => {}
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{engine, udp, POD_A, SERVER};
    use super::*;
    use crate::nat::Verdict;

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
