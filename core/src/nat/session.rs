//! Sessions and endpoint-independent mappings, in slabs allocated up front
//! and indexed twice each (one index per direction). Indexes hold only slab
//! indices; nothing is allocated per packet. Both use `FlowIndex`, whose
//! slots can be prefetched: a batch's sessions before it is processed, and
//! a new flow's mapping and outside slots while it is being created.

use super::flow_index::{prefetch, FlowIndex};
use super::huge_slice::HugeSlice;
use hashbrown::DefaultHashBuilder;
use std::hash::{BuildHasher, Hash, Hasher};

pub const NONE: u32 = u32::MAX;

/// One direction's view of a flow: `(proto, local, local_port, remote, remote_port)`.
/// Inside → outside the local side is the pod; outside → inside it is the
/// egress address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub proto: u8,
    pub local: u32,
    pub local_port: u16,
    pub remote: u32,
    pub remote_port: u16,
}

impl FlowKey {
    /// The key of a packet from the inside: its source is the pod's
    /// endpoint. `ports` as [`crate::wire::l4::Transport::ports`] reads them.
    #[inline(always)]
    pub fn outbound(proto: u8, src: u32, dst: u32, (sport, dport): (u16, u16)) -> FlowKey {
        FlowKey { proto, local: src, local_port: sport, remote: dst, remote_port: dport }
    }

    /// The key of a packet from the outside: its destination is the egress
    /// endpoint. For ICMP echo the identifier is the local "port" and the
    /// remote one is 0, whichever way the message travels.
    #[inline(always)]
    pub fn inbound(proto: u8, src: u32, dst: u32, (a, b): (u16, u16)) -> FlowKey {
        let (local_port, remote_port) = if proto == crate::wire::ipv4::PROTO_ICMP { (a, 0) } else { (b, a) };
        FlowKey { proto, local: dst, local_port, remote: src, remote_port }
    }
}

impl Hash for FlowKey {
    /// Two words instead of five fields: one hasher round each.
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(u64::from(self.local) << 32 | u64::from(self.remote));
        h.write_u64(u64::from(self.proto) << 32 | u64::from(self.local_port) << 16 | u64::from(self.remote_port));
    }
}

/// Session flags.
pub mod flags {
    /// The remote is an egress address of this gateway (RFC 4787 REQ-9).
    pub const HAIRPIN: u8 = 1;
    /// Its data passes only once the name on the wire is judged
    /// (`name_check`).
    pub const NAME_CHECK: u8 = 2;
    /// The parity of the plan it was last checked against: one that differs
    /// from the engine's is checked before its next use (`replan`).
    pub const PLAN_PARITY: u8 = 4;
}

/// TCP state bits (RFC 7857 section 2 style tracking).
pub mod state {
    pub const SYN_OUT: u8 = 1;
    pub const SYN_IN: u8 = 2;
    pub const FIN_OUT: u8 = 4;
    pub const FIN_IN: u8 = 8;
    pub const RST: u8 = 16;
    pub const ESTABLISHED: u8 = 32;
    /// Ended; the outside tuple is kept out of use for the port cooldown.
    pub const COOLDOWN: u8 = 64;
    /// Slab slot unused.
    pub const FREE: u8 = 128;

    /// The state's name, as an operator reads it (conntrack's words): a
    /// TCP session by the bits seen, any other protocol by whether it
    /// ended.
    pub fn name(proto: u8, bits: u8) -> &'static str {
        if bits & FREE != 0 {
            return "free";
        }
        if bits & COOLDOWN != 0 {
            return "cooldown";
        }
        if proto != crate::wire::ipv4::PROTO_TCP {
            return "active";
        }
        match (bits & RST != 0, bits & FIN_OUT != 0, bits & FIN_IN != 0) {
            (true, _, _) => "reset",
            (_, true, true) => "closing",
            (_, true, false) => "fin-wait",
            (_, false, true) => "close-wait",
            _ if bits & ESTABLISHED != 0 => "established",
            _ if bits & SYN_IN != 0 => "syn-received",
            _ if bits & SYN_OUT != 0 => "syn-sent",
            _ => "none",
        }
    }

    #[cfg(test)]
    #[test]
    fn names_read_as_conntrack_states() {
        let tcp = crate::wire::ipv4::PROTO_TCP;
        assert_eq!(name(tcp, 0x2f), "closing", "what egretctl showed as 0x2f");
        assert_eq!(name(tcp, SYN_OUT), "syn-sent");
        assert_eq!(name(tcp, SYN_OUT | SYN_IN), "syn-received");
        assert_eq!(name(tcp, SYN_OUT | SYN_IN | ESTABLISHED), "established");
        assert_eq!(name(tcp, SYN_OUT | SYN_IN | ESTABLISHED | FIN_IN), "close-wait");
        assert_eq!(name(tcp, SYN_OUT | ESTABLISHED | RST), "reset");
        assert_eq!(name(tcp, COOLDOWN), "cooldown");
        assert_eq!(name(17, 0), "active");
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub pod: u32,
    pub remote: u32,
    pub egress: u32,
    pub pod_port: u16,
    pub remote_port: u16,
    pub egress_port: u16,
    pub proto: u8,
    pub state: u8,
    pub flags: u8,
    pub config: u16,
    /// Expiry, in seconds of engine time.
    pub deadline: u32,
    /// Endpoint-independent mapping this session uses, or `NONE`.
    pub mapping: u32,
    /// Creation time, in seconds of engine time.
    pub created: u32,
}

impl Session {
    /// An unused slab slot.
    const BLANK: Session = Session {
        pod: 0,
        remote: 0,
        egress: 0,
        pod_port: 0,
        remote_port: 0,
        egress_port: 0,
        proto: 0,
        state: state::FREE,
        flags: 0,
        config: 0,
        deadline: 0,
        mapping: NONE,
        created: 0,
    };

    #[inline]
    pub fn in_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            local: self.pod,
            local_port: self.pod_port,
            remote: self.remote,
            remote_port: self.remote_port,
        }
    }
    #[inline]
    pub fn out_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            local: self.egress,
            local_port: self.egress_port,
            remote: self.remote,
            remote_port: self.remote_port,
        }
    }
    #[inline]
    pub fn is_live(&self) -> bool {
        self.state & (state::FREE | state::COOLDOWN) == 0
    }
}

/// An endpoint-independent mapping: a pod's `(proto, ip, port)` ↔ `(egress, port)`.
#[derive(Debug, Clone, Copy)]
pub struct Mapping {
    pub pod: u32,
    pub egress: u32,
    pub pod_port: u16,
    pub egress_port: u16,
    pub proto: u8,
    pub free: bool,
    /// The parity of the plan it was last checked against (`replan`).
    pub plan_parity: bool,
    /// Cut by a plan while sessions still used it: out of both indexes,
    /// freed when the last of them is cut.
    pub unlinked: bool,
    pub config: u16,
    /// Sessions using it; at zero it cools down until `deadline`.
    pub refs: u32,
    pub deadline: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointKey {
    pub proto: u8,
    pub ip: u32,
    pub port: u16,
}

impl Mapping {
    /// An unused slab slot.
    const BLANK: Mapping = Mapping {
        pod: 0,
        egress: 0,
        pod_port: 0,
        egress_port: 0,
        proto: 0,
        free: true,
        plan_parity: false,
        unlinked: false,
        config: 0,
        refs: 0,
        deadline: 0,
    };

    pub fn pod_key(&self) -> EndpointKey {
        EndpointKey { proto: self.proto, ip: self.pod, port: self.pod_port }
    }
    pub fn egress_key(&self) -> EndpointKey {
        EndpointKey { proto: self.proto, ip: self.egress, port: self.egress_port }
    }
}

/// A slab of `T` with a capacity fixed (and memory touched) at creation:
/// slots below `high` have been used, the rest are `blank`.
struct Indexed<T: Copy> {
    slab: HugeSlice<T>,
    high: usize,
    free: Vec<u32>,
    live: usize,
}

impl<T: Copy> Indexed<T> {
    fn new(capacity: usize, blank: T) -> Self {
        Indexed { slab: HugeSlice::filled(capacity, blank), high: 0, free: Vec::with_capacity(capacity), live: 0 }
    }
    fn capacity(&self) -> usize {
        self.slab.len()
    }
    /// Slots ever used.
    fn used(&self) -> &[T] {
        &self.slab[..self.high]
    }
    fn insert(&mut self, v: T) -> Option<u32> {
        let idx = if let Some(i) = self.free.pop() {
            i
        } else if self.high < self.capacity() {
            self.high += 1;
            (self.high - 1) as u32
        } else {
            return None;
        };
        self.slab[idx as usize] = v;
        self.live += 1;
        Some(idx)
    }
    fn release(&mut self, idx: u32) {
        self.free.push(idx);
        self.live -= 1;
    }
}

/// Sessions, findable from either side.
pub struct SessionTable {
    hasher: DefaultHashBuilder,
    items: Indexed<Session>,
    by_in: FlowIndex,
    by_out: FlowIndex,
}

impl SessionTable {
    pub fn with_capacity(capacity: usize) -> Self {
        SessionTable {
            hasher: DefaultHashBuilder::default(),
            items: Indexed::new(capacity, Session::BLANK),
            by_in: FlowIndex::with_capacity(capacity),
            by_out: FlowIndex::with_capacity(capacity),
        }
    }

    /// Live sessions plus cooling tombstones.
    pub fn len(&self) -> usize {
        self.items.live
    }
    pub fn is_empty(&self) -> bool {
        self.items.live == 0
    }
    pub fn is_full(&self) -> bool {
        self.items.live >= self.items.capacity()
    }
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }
    /// Slots ever used: the range an expiry sweep walks.
    pub fn high_water(&self) -> usize {
        self.items.high
    }

    #[inline(always)]
    fn hash(&self, k: &FlowKey) -> u64 {
        self.hasher.hash_one(k)
    }

    #[inline(always)]
    pub fn find_in(&self, k: &FlowKey) -> Option<u32> {
        let slab = &self.items.slab;
        self.by_in.find(self.hash(k), |i| slab[i as usize].in_key() == *k)
    }

    #[inline(always)]
    pub fn find_out(&self, k: &FlowKey) -> Option<u32> {
        let slab = &self.items.slab;
        self.by_out.find(self.hash(k), |i| slab[i as usize].out_key() == *k)
    }

    /// Batch stage 1: start loading the index slot of a key.
    #[inline]
    pub fn prefetch_slot(&self, k: &FlowKey, inside: bool) {
        let h = self.hash(k);
        if inside {
            self.by_in.prefetch(h)
        } else {
            self.by_out.prefetch(h)
        }
    }

    /// Batch stage 2: start loading the session a key finds; false when
    /// there is none (a new flow).
    #[inline]
    pub fn prefetch_session(&self, k: &FlowKey, inside: bool) -> bool {
        let found = if inside { self.find_in(k) } else { self.find_out(k) };
        if let Some(i) = found {
            prefetch(&self.items.slab[i as usize]);
        }
        found.is_some()
    }

    /// A new session's outside slot, to load while the rest of its
    /// creation goes on (the inside slot is warm from the failed lookup).
    #[inline]
    pub fn prefetch_out_slot(&self, k: &FlowKey) {
        self.by_out.prefetch(self.hash(k));
    }

    /// Bytes of the slab's and indexes' own mappings (the free list is on
    /// the heap).
    pub fn bytes(&self) -> usize {
        self.items.slab.bytes() + self.by_in.bytes() + self.by_out.bytes()
    }

    #[inline]
    pub fn get(&self, idx: u32) -> &Session {
        &self.items.slab[idx as usize]
    }
    #[inline]
    pub fn get_mut(&mut self, idx: u32) -> &mut Session {
        &mut self.items.slab[idx as usize]
    }

    /// Adds a session under both keys; `None` when the table is full.
    pub fn insert(&mut self, s: Session) -> Option<u32> {
        let (hi, ho) = (self.hash(&s.in_key()), self.hash(&s.out_key()));
        let idx = self.items.insert(s)?;
        self.by_in.insert(hi, idx);
        self.by_out.insert(ho, idx);
        Some(idx)
    }

    /// Removes the inside key only (the session starts its cooldown).
    pub fn unlink_in(&mut self, idx: u32) {
        let h = self.hash(&self.items.slab[idx as usize].in_key());
        self.by_in.remove(h, idx);
    }

    /// Removes whatever keys remain and frees the slot.
    pub fn remove(&mut self, idx: u32) {
        let s = self.items.slab[idx as usize];
        if s.state & state::COOLDOWN == 0 {
            self.unlink_in(idx);
        }
        let h = self.hash(&s.out_key());
        self.by_out.remove(h, idx);
        self.items.slab[idx as usize].state = state::FREE;
        self.items.release(idx);
    }

    /// Every slot in use (live and cooling), with its index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Session)> {
        self.items.used().iter().enumerate().filter(|(_, s)| s.state & state::FREE == 0).map(|(i, s)| (i as u32, s))
    }

    /// The sessions in slots `from..from + n` (fewer past `high_water`).
    pub fn in_slots(&self, from: usize, n: usize) -> impl Iterator<Item = &Session> {
        let used = self.items.used();
        let (a, b) = (from.min(used.len()), from.saturating_add(n).min(used.len()));
        used[a..b].iter().filter(|s| s.state & state::FREE == 0)
    }
}

/// Endpoint-independent mappings, findable by pod endpoint and by egress
/// endpoint. Indexed like sessions (`FlowIndex`), so a new flow can load its
/// mapping's slot ahead of the lookup.
pub struct MappingTable {
    hasher: DefaultHashBuilder,
    items: Indexed<Mapping>,
    by_pod: FlowIndex,
    by_egress: FlowIndex,
}

impl Hash for EndpointKey {
    /// One word: one hasher round.
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(u64::from(self.ip) << 32 | u64::from(self.proto) << 16 | u64::from(self.port));
    }
}

impl MappingTable {
    pub fn with_capacity(capacity: usize) -> Self {
        MappingTable {
            hasher: DefaultHashBuilder::default(),
            items: Indexed::new(capacity, Mapping::BLANK),
            by_pod: FlowIndex::with_capacity(capacity),
            by_egress: FlowIndex::with_capacity(capacity),
        }
    }
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }
    pub fn len(&self) -> usize {
        self.items.live
    }
    pub fn is_empty(&self) -> bool {
        self.items.live == 0
    }
    pub fn high_water(&self) -> usize {
        self.items.high
    }
    #[inline]
    pub fn find_pod(&self, k: &EndpointKey) -> Option<u32> {
        let slab = &self.items.slab;
        self.by_pod.find(self.hasher.hash_one(k), |i| slab[i as usize].pod_key() == *k)
    }
    #[inline]
    pub fn find_egress(&self, k: &EndpointKey) -> Option<u32> {
        let slab = &self.items.slab;
        self.by_egress.find(self.hasher.hash_one(k), |i| slab[i as usize].egress_key() == *k)
    }
    /// Starts loading the slot a pod endpoint's mapping is found by.
    #[inline]
    pub fn prefetch_pod(&self, k: &EndpointKey) {
        self.by_pod.prefetch(self.hasher.hash_one(k));
    }
    /// Starts loading the slot a new mapping's egress endpoint goes in.
    #[inline]
    pub fn prefetch_egress(&self, k: &EndpointKey) {
        self.by_egress.prefetch(self.hasher.hash_one(k));
    }
    #[inline]
    pub fn get(&self, idx: u32) -> &Mapping {
        &self.items.slab[idx as usize]
    }
    #[inline]
    pub fn get_mut(&mut self, idx: u32) -> &mut Mapping {
        &mut self.items.slab[idx as usize]
    }
    pub fn insert(&mut self, m: Mapping) -> Option<u32> {
        let (hp, he) = (self.hasher.hash_one(m.pod_key()), self.hasher.hash_one(m.egress_key()));
        let idx = self.items.insert(m)?;
        self.by_pod.insert(hp, idx);
        self.by_egress.insert(he, idx);
        Some(idx)
    }
    /// Bytes of the slab's and indexes' own mappings (the free list is on
    /// the heap).
    pub fn bytes(&self) -> usize {
        self.items.slab.bytes() + self.by_pod.bytes() + self.by_egress.bytes()
    }

    /// Takes a mapping out of both indexes, keeping its slot (and index)
    /// for the sessions that still refer to it.
    pub fn unlink(&mut self, idx: u32) {
        let m = self.items.slab[idx as usize];
        if m.unlinked {
            return;
        }
        self.by_pod.remove(self.hasher.hash_one(m.pod_key()), idx);
        self.by_egress.remove(self.hasher.hash_one(m.egress_key()), idx);
        self.items.slab[idx as usize].unlinked = true;
    }

    /// Removes whatever keys remain and frees the slot.
    pub fn remove(&mut self, idx: u32) {
        self.unlink(idx);
        let m = &mut self.items.slab[idx as usize];
        m.free = true;
        m.unlinked = false;
        self.items.release(idx);
    }
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Mapping)> {
        self.items.used().iter().enumerate().filter(|(_, m)| !m.free).map(|(i, m)| (i as u32, m))
    }
}
