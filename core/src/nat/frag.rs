//! Shallow virtual reassembly (RFC 4787 REQ-14, VPP's "virtual reassembly"):
//! only a datagram's first fragment carries ports, so the translation found
//! for it is remembered under (src, dst, id, proto) and applied to the
//! fragments that follow. Fragments that arrive before their first are held
//! (copied, within a bound) and released once it comes. Fragments are never
//! reassembled, only translated. A datagram is forgotten once its
//! fragments' payload covers it (in any order: first, last, middle is as
//! good as in order), or at its timeout.

use super::{DropReason, NatEngine, Time};
use super::{Side, Verdict};
use crate::wire::ipv4::Header;
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
    /// To a tunnelled pod: through the tunnel stage's encryption.
    Seal,
    /// Hand to `worker`, which takes it as arriving on `from`;
    /// `tunnelled`: a tunnelled pod's, out of its tunnel (only such are
    /// held for it), so not to be taken for a plain packet there.
    Worker {
        worker: u16,
        from: Side,
        tunnelled: bool,
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
    /// Payload bytes of the fragments seen so far, and the datagram's
    /// payload length once its last fragment came.
    covered: u32,
    end: Option<u32>,
    origin: Origin,
}

impl Entry {
    fn add(&mut self, piece: Piece) {
        self.covered = self.covered.saturating_add(piece.bytes);
        self.end = piece.end.or(self.end);
    }

    fn complete(&self) -> bool {
        self.end.is_some_and(|end| self.covered >= end)
    }
}

/// A fragment's part of its datagram: the payload bytes it carries, and,
/// for the last fragment, where the datagram's payload ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub bytes: u32,
    pub end: Option<u32>,
}

impl Piece {
    /// The part `buf[..len]` (an IPv4 fragment) is.
    pub fn of(buf: &[u8], len: usize) -> Piece {
        let ip = Ipv4Packet::new_unchecked(&buf[..len]);
        let bytes = len.saturating_sub(ip.header_len()) as u32;
        let end = (!ip.more_frags()).then(|| ip.frag_offset() as u32 + bytes);
        Piece { bytes, end }
    }
}

/// Where a fragment came from. The internet may hold at most half of the
/// hold buffers and half of the datagram notes, and one outside source an
/// eighth of that half, so a flood of orphan or first fragments (random
/// IDs, ~130 pps was enough before) cannot starve the pods' datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Pod,
    Internet,
}

pub(super) struct FragTable {
    entries: HashMap<FragKey, Entry>,
    max_entries: usize,
    /// Notes of datagrams from the internet, in all and per source.
    internet_entries: usize,
    internet_by_source: HashMap<u32, u32>,
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
            internet_entries: 0,
            internet_by_source: HashMap::new(),
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

    /// Whether a new note for `key` fits: the table's room, and for the
    /// internet its half and one source's eighth of that.
    fn admits(&self, key: &FragKey, origin: Origin) -> bool {
        if self.entries.len() >= self.max_entries {
            return false;
        }
        if origin == Origin::Internet {
            let share = (self.max_entries / 2).max(1);
            let per_source = (share / 8).max(1);
            let same = self.internet_by_source.get(&key.src).copied().unwrap_or(0) as usize;
            return self.internet_entries < share && same < per_source;
        }
        true
    }

    /// The datagram's note, made (empty, until the timeout) if `origin`
    /// has room for one.
    fn entry_for(&mut self, key: FragKey, origin: Origin, now_ms: u64) -> Result<&mut Entry, DropReason> {
        if !self.entries.contains_key(&key) {
            if !self.admits(&key, origin) {
                return Err(DropReason::FragmentTableFull);
            }
            if origin == Origin::Internet {
                self.internet_entries += 1;
                *self.internet_by_source.entry(key.src).or_default() += 1;
            }
            let deadline_ms = now_ms + self.timeout_ms;
            self.entries.insert(key, Entry { action: None, deadline_ms, covered: 0, end: None, origin });
        }
        Ok(self.entries.get_mut(&key).expect("just made"))
    }

    fn remove_entry(&mut self, key: &FragKey) {
        if let Some(e) = self.entries.remove(key) {
            if e.origin == Origin::Internet {
                forget_internet(&mut self.internet_entries, &mut self.internet_by_source, key.src);
            }
        }
    }

    /// Remembers what the first fragment (`first`) got, and releases held
    /// followers. Returns the held followers dropped instead because their
    /// TTL ran out; `Err` when the table (or `origin`'s share of it) has no
    /// room for the note: the followers will be held or dropped, counted.
    pub fn record(
        &mut self,
        key: FragKey,
        action: FragAction,
        first: Piece,
        origin: Origin,
        now_ms: u64,
    ) -> Result<u64, DropReason> {
        let deadline_ms = now_ms + self.timeout_ms;
        let e = self.entry_for(key, origin, now_ms)?;
        e.action = Some(action);
        e.deadline_ms = deadline_ms;
        e.add(first);
        let mut ttl_expired = 0;
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
                FragAction::Handoff { worker, from } => ReleaseTo::Worker { worker, from, tunnelled: false },
                FragAction::HairpinHandoff { src, worker } => {
                    Ipv4Packet::new_unchecked(&mut bytes[..]).set_src(src.to_be_bytes());
                    ReleaseTo::Worker { worker, from: Side::Outside, tunnelled: false }
                }
            };
            self.released_count += 1;
            self.released.push_back(Released { bytes, to });
        }
        if self.entries.get(&key).is_some_and(Entry::complete) {
            self.remove_entry(&key);
        }
        Ok(ttl_expired)
    }

    /// The action for a later fragment (`None`: first not seen yet);
    /// forgets the datagram once its fragments cover it.
    pub fn lookup(&mut self, key: &FragKey, piece: Piece, now_ms: u64) -> Option<FragAction> {
        let e = self.entries.get_mut(key).filter(|e| e.deadline_ms > now_ms)?;
        let a = e.action?;
        e.add(piece);
        if e.complete() {
            self.remove_entry(key);
        }
        Some(a)
    }

    /// Holds a fragment until its first fragment comes.
    pub fn hold(
        &mut self,
        key: FragKey,
        packet: &[u8],
        piece: Piece,
        origin: Origin,
        now_ms: u64,
    ) -> Result<(), DropReason> {
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
        self.entry_for(key, origin, now_ms)?.add(piece);
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
        let (count, by_source) = (&mut self.internet_entries, &mut self.internet_by_source);
        self.entries.retain(|k, e| {
            let keep = e.deadline_ms > now_ms;
            if !keep && e.origin == Origin::Internet {
                forget_internet(count, by_source, k.src);
            }
            keep
        });
        let before = self.held.len();
        let entries = &self.entries;
        self.held.retain(|(k, _, _)| entries.get(k).is_some_and(|e| e.action.is_none()));
        (before - self.held.len()) as u64
    }
}

fn forget_internet(count: &mut usize, by_source: &mut HashMap<u32, u32>, src: u32) {
    *count = count.saturating_sub(1);
    if let Some(n) = by_source.get_mut(&src) {
        *n -= 1;
        if *n == 0 {
            by_source.remove(&src);
        }
    }
}

impl NatEngine {
    /// Remembers what a first fragment (`key`, `piece`) got (see
    /// `FragTable::record`), counting the held followers whose TTL ran out
    /// while they waited, and a note the table had no room for.
    pub(super) fn record_fragment(
        &mut self,
        (key, piece): (FragKey, Piece),
        action: FragAction,
        origin: Origin,
        now: Time,
    ) {
        match self.frags.record(key, action, piece, origin, now.millis()) {
            Ok(expired) => self.counters.drop_n(DropReason::TtlExpired, expired),
            Err(_) => self.counters.fragment_notes_refused += 1,
        }
    }

    /// A fragment after the first: translate as its first fragment was.
    pub(super) fn follow_fragment(
        &mut self,
        buf: &mut [u8],
        len: usize,
        p: &Header,
        origin: Origin,
        now: Time,
    ) -> Verdict {
        // RFC 1858 3.1 (the indirect rule, RFC 3128): a TCP fragment at
        // offset 8 can only overwrite the first fragment's header from its
        // flags on, so it would smuggle flags past the check of the first.
        if p.proto == crate::wire::ipv4::PROTO_TCP && Ipv4Packet::new_unchecked(&buf[..len]).frag_offset() == 8 {
            return self.drop(DropReason::FragmentTooShort);
        }
        let piece = Piece::of(buf, len);
        match self.frags.lookup(&p.frag_key(), piece, now.millis()) {
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
            None => match self.frags.hold(p.frag_key(), &buf[..len], piece, origin, now.millis()) {
                Ok(()) => {
                    self.counters.fragments_held += 1;
                    Verdict::Held
                }
                Err(r) => self.drop(r),
            },
        }
    }
}

impl Header {
    /// The datagram a fragment belongs to.
    #[inline]
    pub(super) fn frag_key(&self) -> FragKey {
        FragKey { src: self.src, dst: self.dst, id: self.ident, proto: self.proto }
    }

    /// The datagram a fragment (`buf[..len]`, read into `self`) belongs
    /// to, and its part of it.
    #[inline]
    pub(super) fn fragment(&self, buf: &[u8], len: usize) -> (FragKey, Piece) {
        (self.frag_key(), Piece::of(buf, len))
    }
}
