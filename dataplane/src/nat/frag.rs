//! Shallow virtual reassembly (RFC 4787 REQ-14, VPP's "virtual reassembly"):
//! only a datagram's first fragment carries ports, so the translation found
//! for it is remembered under (src, dst, id, proto) and applied to the
//! fragments that follow. Fragments that arrive before their first are held
//! (copied, within a bound) and released once it comes. Fragments are never
//! reassembled, only translated.

use super::rewrite::Parsed;
use super::{DropReason, NatEngine, Time};
use super::{Side, Verdict};
use crate::wire::ipv4::Ipv4Packet;
use hashbrown::HashMap;
use std::collections::VecDeque;

/// Largest fragment that can be held out of order.
pub const MAX_HELD_FRAGMENT: usize = 9216;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub proto: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragAction {
    /// Write these addresses and send out of `side`.
    Translate { src: u32, dst: u32, side: Side },
    /// The first fragment went to another worker (as arriving `from`);
    /// so do the rest.
    Handoff { worker: u16, from: Side },
    /// A hairpinned datagram whose return leg belongs to another worker:
    /// write the pod's egress source and hand over, TTL untouched (the
    /// owner's outside → inside leg takes the hop's one decrement).
    HairpinHandoff { src: u32, worker: u16 },
}

/// Where a released fragment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseTo {
    Side(Side),
    /// Hand to `worker`, which takes it as arriving on `from`.
    Worker {
        worker: u16,
        from: Side,
    },
}

/// A held fragment that can now be sent: an IPv4 packet, already translated
/// when it goes to a side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub bytes: Vec<u8>,
    pub to: ReleaseTo,
}

struct Entry {
    /// `None` until the first fragment is seen.
    action: Option<FragAction>,
    deadline_ms: u64,
}

/// Where a fragment came from. The internet may hold at most half of the
/// hold buffers, and one outside source an eighth of that half, so a flood
/// of orphan fragments (random IDs, ~130 pps was enough before) cannot
/// starve the pods' out-of-order fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Pod,
    Internet,
}

pub(super) struct FragTable {
    entries: HashMap<FragKey, Entry>,
    max_entries: usize,
    /// Held fragments with their origin.
    held: Vec<(FragKey, Vec<u8>, Origin)>,
    max_held: usize,
    released: VecDeque<Released>,
    timeout_ms: u64,
    next_sweep_ms: u64,
    /// Fragments that were held and then released translated or handed off.
    pub released_count: u64,
}

impl FragTable {
    pub fn new(max_entries: usize, max_held: usize) -> Self {
        FragTable {
            entries: HashMap::with_capacity(max_entries),
            max_entries,
            held: Vec::with_capacity(max_held),
            max_held,
            released: VecDeque::with_capacity(max_held),
            timeout_ms: 2000,
            next_sweep_ms: 0,
            released_count: 0,
        }
    }

    pub fn set_timeout(&mut self, ms: u64) {
        self.timeout_ms = ms;
    }

    /// Remembers what the first fragment got, and releases held followers.
    /// Returns the held followers dropped instead because their TTL ran out.
    #[must_use]
    pub fn record(&mut self, key: FragKey, action: FragAction, now_ms: u64) -> u64 {
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&key) {
            // Full: the followers will be held or dropped and counted.
            return 0;
        }
        let mut ttl_expired = 0;
        self.entries.insert(key, Entry { action: Some(action), deadline_ms: now_ms + self.timeout_ms });
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].0 != key {
                i += 1;
                continue;
            }
            let (_, mut bytes, _) = self.held.swap_remove(i);
            let to = match action {
                FragAction::Translate { src, dst, side } => {
                    let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
                    if ip.ttl() <= 1 {
                        ttl_expired += 1;
                        continue;
                    }
                    ip.set_src(src.to_be_bytes());
                    ip.set_dst(dst.to_be_bytes());
                    ip.decrement_ttl();
                    ReleaseTo::Side(side)
                }
                FragAction::Handoff { worker, from } => ReleaseTo::Worker { worker, from },
                FragAction::HairpinHandoff { src, worker } => {
                    Ipv4Packet::new_unchecked(&mut bytes[..]).set_src(src.to_be_bytes());
                    ReleaseTo::Worker { worker, from: Side::Outside }
                }
            };
            self.released_count += 1;
            self.released.push_back(Released { bytes, to });
        }
        ttl_expired
    }

    /// The action for a later fragment (`None`: first not seen yet);
    /// forgets the datagram after its last fragment.
    pub fn lookup(&mut self, key: &FragKey, last: bool, now_ms: u64) -> Option<FragAction> {
        let e = self.entries.get(key).filter(|e| e.deadline_ms > now_ms)?;
        let a = e.action?;
        if last && !self.held.iter().any(|(k, _, _)| k == key) {
            self.entries.remove(key);
        }
        Some(a)
    }

    /// Holds a fragment until its first fragment comes.
    pub fn hold(&mut self, key: FragKey, packet: &[u8], origin: Origin, now_ms: u64) -> Result<(), DropReason> {
        if packet.len() > MAX_HELD_FRAGMENT {
            return Err(DropReason::FragmentTooLarge);
        }
        if self.held.len() >= self.max_held {
            return Err(DropReason::FragmentTableFull);
        }
        if origin == Origin::Internet {
            let share = (self.max_held / 2).max(1);
            let per_source = (share / 8).max(1);
            let (mut internet, mut same_source) = (0, 0);
            for (k, _, o) in &self.held {
                if *o == Origin::Internet {
                    internet += 1;
                    same_source += usize::from(k.src == key.src);
                }
            }
            if internet >= share || same_source >= per_source {
                return Err(DropReason::FragmentTableFull);
            }
        }
        if !self.entries.contains_key(&key) {
            if self.entries.len() >= self.max_entries {
                return Err(DropReason::FragmentTableFull);
            }
            self.entries.insert(key, Entry { action: None, deadline_ms: now_ms + self.timeout_ms });
        }
        self.held.push((key, packet.to_vec(), origin));
        Ok(())
    }

    /// Queues a packet to be sent after the current one.
    pub fn release(&mut self, r: Released) {
        self.released.push_back(r);
    }

    pub fn take_released(&mut self) -> Option<Released> {
        self.released.pop_front()
    }

    /// Forgets timed-out datagrams; returns the held fragments dropped.
    pub fn expire(&mut self, now_ms: u64) -> u64 {
        if now_ms < self.next_sweep_ms {
            return 0;
        }
        self.next_sweep_ms = now_ms + 100;
        self.entries.retain(|_, e| e.deadline_ms > now_ms);
        let before = self.held.len();
        let entries = &self.entries;
        self.held.retain(|(k, _, _)| entries.get(k).is_some_and(|e| e.action.is_none()));
        (before - self.held.len()) as u64
    }
}

impl NatEngine {
    /// Remembers what a first fragment got (see `FragTable::record`),
    /// counting the held followers whose TTL ran out while they waited.
    pub(super) fn record_fragment(&mut self, key: FragKey, action: FragAction, now: Time) {
        let expired = self.frags.record(key, action, now.millis());
        self.counters.drop_n(DropReason::TtlExpired, expired);
    }

    /// A fragment after the first: translate as its first fragment was.
    pub(super) fn follow_fragment(
        &mut self,
        buf: &mut [u8],
        len: usize,
        p: &Parsed,
        origin: Origin,
        now: Time,
    ) -> Verdict {
        // RFC 1858 3.1 (the indirect rule, RFC 3128): a TCP fragment at
        // offset 8 can only overwrite the first fragment's header from its
        // flags on, so it would smuggle flags past the check of the first.
        if p.proto == crate::wire::ipv4::PROTO_TCP && Ipv4Packet::new_unchecked(&buf[..len]).frag_offset() == 8 {
            return self.drop(DropReason::FragmentTooShort);
        }
        match self.frags.lookup(&p.frag_key(), !p.more_frags, now.millis()) {
            Some(FragAction::Translate { src, dst, side }) => {
                if p.ttl <= 1 {
                    return self.drop(DropReason::TtlExpired);
                }
                let mut ip = Ipv4Packet::new_unchecked(&mut buf[..len]);
                ip.set_src(src.to_be_bytes());
                ip.set_dst(dst.to_be_bytes());
                ip.decrement_ttl();
                self.counters.fragments_translated += 1;
                self.forward_fitted(buf, len, side)
            }
            Some(FragAction::Handoff { worker, from }) => {
                self.counters.handoffs += 1;
                Verdict::Handoff { worker, from }
            }
            Some(FragAction::HairpinHandoff { src, worker }) => {
                Ipv4Packet::new_unchecked(&mut buf[..len]).set_src(src.to_be_bytes());
                self.counters.handoffs += 1;
                // Its return leg: an outside → inside packet on the owner.
                Verdict::Handoff { worker, from: Side::Outside }
            }
            None => match self.frags.hold(p.frag_key(), &buf[..len], origin, now.millis()) {
                Ok(()) => {
                    self.counters.fragments_held += 1;
                    Verdict::Held
                }
                Err(r) => self.drop(r),
            },
        }
    }
}

impl Parsed {
    /// The datagram a fragment belongs to.
    #[inline]
    pub(super) fn frag_key(&self) -> FragKey {
        FragKey { src: self.src, dst: self.dst, id: self.ident, proto: self.proto }
    }
}
