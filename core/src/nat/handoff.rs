//! Handoff, its own stage (VPP's `nat44-ed-handoff`): a flow belongs to one
//! worker (inside: a hash of the pod endpoint; outside: the worker whose
//! port slice holds the egress port), and a packet that arrives elsewhere
//! is handed to it unchanged. The first fragment of a datagram leaves a
//! note so its later fragments follow it.

use super::frag::{FragAction, FragKey, Origin, Piece};
use super::{NatEngine, Side, Time, Verdict};

impl NatEngine {
    /// Hands the packet to `owner` unless that is this worker (`None`:
    /// process it here). `first_frag`: the datagram whose later fragments
    /// must follow.
    #[inline(always)]
    pub(super) fn hand_off(
        &mut self,
        owner: u16,
        from: Side,
        first_frag: Option<(FragKey, Piece)>,
        now: Time,
    ) -> Option<Verdict> {
        if owner == self.settings.worker {
            return None;
        }
        if let Some(f) = first_frag {
            // Noted before any session is looked up (the owner does that):
            // so the internet's first fragments count against its share.
            let origin = if from == Side::Outside { Origin::Internet } else { Origin::Pod };
            self.record_fragment(f, FragAction::Handoff { worker: owner, from }, origin, now);
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
