//! What this worker holds per pod: the ports and sessions counted against
//! the pod's quota and session limit, and the fallback sources it adopted.
//! A pod that holds nothing any more is forgotten at the next safe point,
//! never in the middle of a packet that may still open a session.

use super::PodInfo;
use hashbrown::HashMap;

/// What this worker holds for one pod (the plan says the rest: `PodInfo`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PodCounts {
    /// Ports held: mappings (endpoint-independent) or sessions (port reuse).
    pub(super) holdings: u32,
    /// Live sessions of the pod's, however they were opened.
    pub(super) sessions: u32,
}

impl PodCounts {
    #[inline]
    pub(super) fn is_zero(&self) -> bool {
        self.holdings == 0 && self.sessions == 0
    }
}

#[derive(Debug, Default)]
pub(super) struct Holdings {
    /// For the pods that hold anything.
    pub(super) counts: HashMap<u32, PodCounts>,
    /// Sources a fallback source CIDR binds, adopted on their first packet
    /// and forgotten once they hold nothing (so the map stays as small as
    /// the sessions, whatever the CIDRs' size).
    pub(super) fallbacks: HashMap<u32, PodInfo>,
    /// Pods that went idle, to forget at the next safe point.
    idle: Vec<u32>,
}

impl Holdings {
    /// What this worker holds for pod `ip`.
    #[inline]
    pub(super) fn of(&self, ip: u32) -> PodCounts {
        self.counts.get(&ip).copied().unwrap_or_default()
    }

    #[inline]
    pub(super) fn of_mut(&mut self, ip: u32) -> &mut PodCounts {
        self.counts.entry(ip).or_default()
    }

    /// The fallback source `ip` as adopted, if it is.
    #[inline]
    pub(super) fn fallback(&self, ip: u32) -> Option<PodInfo> {
        if self.fallbacks.is_empty() {
            return None;
        }
        self.fallbacks.get(&ip).copied()
    }

    /// Lowers what pod `ip` holds (a session ended, a port freed) and notes
    /// it for forgetting when that was all.
    #[inline]
    pub(super) fn release(&mut self, ip: u32, holdings: u32, sessions: u32) {
        let idle = self.counts.get_mut(&ip).is_none_or(|c| {
            c.holdings = c.holdings.saturating_sub(holdings);
            c.sessions = c.sessions.saturating_sub(sessions);
            c.is_zero()
        });
        if idle {
            self.idle.push(ip);
        }
    }

    /// Notes a pod (or a fallback source) that holds nothing any more; it
    /// is forgotten at the next [`Holdings::forget_idle`] (the packet
    /// being handled may end its last session and open another).
    #[inline]
    pub(super) fn note_if_idle(&mut self, ip: u32) {
        if self.of(ip).is_zero() {
            self.idle.push(ip);
        }
    }

    /// Forgets the pods noted idle that still are: their counts, and the
    /// adoption of a fallback source.
    pub(super) fn forget_idle(&mut self) {
        while let Some(ip) = self.idle.pop() {
            if self.of(ip).is_zero() {
                self.counts.remove(&ip);
                self.fallbacks.remove(&ip);
            }
        }
    }
}
