//! Handoff, its own stage (VPP's `nat44-ed-handoff`): a flow belongs to one
//! worker (inside: a hash of the pod endpoint; outside: the worker whose
//! port slice holds the egress port), and a packet that arrives elsewhere
//! is handed to it unchanged. The first fragment of a datagram leaves a
//! note so its later fragments follow it.

use super::frag::{FragAction, FragKey};
use super::*;

impl NatEngine {
    /// Hands the packet to `owner` unless that is this worker (`None`:
    /// process it here). `first_frag`: the datagram whose later fragments
    /// must follow.
    #[inline(always)]
    pub(super) fn hand_off(
        &mut self,
        owner: u16,
        from: Side,
        first_frag: Option<FragKey>,
        now: Time,
    ) -> Option<Verdict> {
        if owner == self.settings.worker {
            return None;
        }
        if let Some(key) = first_frag {
            self.record_fragment(key, FragAction::Handoff { worker: owner, from }, now);
        }
        Some(self.handoff_to(owner, from))
    }

    /// The verdict for a packet leaving for `worker`, counted.
    #[inline]
    pub(super) fn handoff_to(&mut self, worker: u16, from: Side) -> Verdict {
        self.counters.handoffs += 1;
        Verdict::Handoff { worker, from }
    }
}
