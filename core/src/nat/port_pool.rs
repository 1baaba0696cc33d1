//! Egress ports. Every worker owns one contiguous slice of the port range of
//! every egress address (VPP NAT44-ED style), so the owner of a returning
//! packet is a function of its destination port. Within a slice, ports are
//! picked at random (RFC 6056 spirit) from a bitmap per (address, protocol).

use std::ops::RangeInclusive;

/// The slice of the egress port range one worker allocates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSlice {
    /// First port of the whole range (all workers).
    pub range_lo: u16,
    /// Ports per worker; the last worker also takes the remainder.
    pub per_worker: u16,
    pub workers: u16,
    /// This worker's ports: `lo..=hi`.
    pub lo: u16,
    pub hi: u16,
}

impl PortSlice {
    pub fn new(range: RangeInclusive<u16>, worker: u16, workers: u16) -> Self {
        let (lo, hi) = (*range.start(), *range.end());
        let total = u32::from(hi) - u32::from(lo) + 1;
        let workers = workers.max(1);
        let per_worker = (total / u32::from(workers)).max(1) as u16;
        let my_lo = lo + per_worker * worker;
        let my_hi = if worker + 1 == workers { hi } else { my_lo + per_worker - 1 };
        PortSlice { range_lo: lo, per_worker, workers, lo: my_lo, hi: my_hi }
    }

    /// Ports in this worker's slice.
    pub fn len(&self) -> usize {
        usize::from(self.hi - self.lo) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The worker that owns `port`, or `None` below the range.
    #[inline]
    pub fn owner(&self, port: u16) -> Option<u16> {
        if port < self.range_lo {
            return None;
        }
        Some(((port - self.range_lo) / self.per_worker).min(self.workers - 1))
    }

    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// Which ports of a slice are taken, for one (address, protocol).
#[derive(Debug, Clone)]
pub struct PortSet {
    bits: Box<[u64]>,
    len: u32,
    used: u32,
}

impl PortSet {
    pub fn new(len: usize) -> Self {
        PortSet { bits: vec![0u64; len.div_ceil(64)].into_boxed_slice(), len: len as u32, used: 0 }
    }

    pub fn used(&self) -> u32 {
        self.used
    }

    pub fn free(&self) -> u32 {
        self.len - self.used
    }

    #[inline]
    pub fn is_set(&self, i: u32) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    #[inline]
    pub fn set(&mut self, i: u32) {
        debug_assert!(!self.is_set(i));
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
        self.used += 1;
    }

    #[inline]
    pub fn clear(&mut self, i: u32) {
        debug_assert!(self.is_set(i));
        self.bits[(i / 64) as usize] &= !(1 << (i % 64));
        self.used -= 1;
    }

    /// Takes a free index at or after a random start (wrapping); `None` when full.
    pub fn take_from(&mut self, start: u32) -> Option<u32> {
        let i = self.free_from(start)?;
        self.set(i);
        Some(i)
    }

    /// The index `take_from(start)` would take, leaving it free.
    pub fn free_from(&self, start: u32) -> Option<u32> {
        if self.used >= self.len {
            return None;
        }
        let start = start % self.len;
        let words = self.bits.len();
        let first = (start / 64) as usize;
        // The first word only from `start` on; then whole words; then the
        // first word's low bits last.
        for step in 0..=words {
            let w = (first + step) % words;
            let mut free = !self.bits[w];
            if step == 0 {
                free &= u64::MAX << (start % 64);
            } else if step == words {
                free &= !(u64::MAX << (start % 64));
            }
            while free != 0 {
                let bit = free.trailing_zeros();
                let i = w as u32 * 64 + bit;
                if i < self.len {
                    return Some(i);
                }
                free &= free - 1;
            }
        }
        None
    }
}

/// xorshift64*: fast, good enough to make ports hard to guess from outside.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Draws enough to read ahead of a whole receive batch.
const AHEAD: usize = 64;

/// Random draws that can be read ahead. Every new flow takes one draw for
/// its port; the batch prefetch stage peeks the draws the batch's new flows
/// will take, in order, so it can load the slots their ports go in before
/// the flows are created. A wrong guess costs a cache miss, nothing else.
#[derive(Debug)]
pub struct Draws {
    rng: Rng,
    ahead: [u32; AHEAD],
    head: usize,
    /// Draws peeked since the last `settle`.
    peeked: std::cell::Cell<usize>,
}

impl Draws {
    pub fn new(mut rng: Rng) -> Self {
        let ahead = std::array::from_fn(|_| rng.next_u64() as u32);
        Draws { rng, ahead, head: 0, peeked: std::cell::Cell::new(0) }
    }

    /// The next new flow's draw.
    #[inline]
    pub fn take(&mut self) -> u32 {
        let v = self.ahead[self.head];
        self.ahead[self.head] = self.rng.next_u64() as u32;
        self.head = (self.head + 1) % AHEAD;
        v
    }

    /// The draw of the new flow after those already peeked; `None` past
    /// the lookahead.
    #[inline]
    pub fn peek(&self) -> Option<u32> {
        let j = self.peeked.get();
        if j >= AHEAD {
            return None;
        }
        self.peeked.set(j + 1);
        Some(self.ahead[(self.head + j) % AHEAD])
    }

    /// Draws peeked since the last `settle`.
    #[inline(always)]
    pub fn peeked(&self) -> usize {
        self.peeked.get()
    }

    /// The batch is being processed: the next peek starts at the next take.
    #[inline(always)]
    pub fn settle(&self) {
        self.peeked.set(0);
    }

    /// Draws outside the one-per-new-flow sequence (further probes).
    #[inline]
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_see_the_draws_takes_will_return() {
        let mut d = Draws::new(Rng::new(9));
        let _ = d.take();
        let peeked: Vec<u32> = (0..AHEAD).map(|_| d.peek().unwrap()).collect();
        assert_eq!(d.peek(), None, "no further than the lookahead");
        d.settle();
        let taken: Vec<u32> = (0..AHEAD).map(|_| d.take()).collect();
        assert_eq!(peeked, taken);
        d.settle();
        assert_eq!(d.peek(), Some(d.take()));
    }

    #[test]
    fn free_from_names_what_take_from_takes() {
        let mut set = PortSet::new(130);
        for i in 0..70 {
            set.set(i);
        }
        assert_eq!(set.free_from(3), Some(70));
        assert_eq!(set.take_from(3), Some(70));
        assert_eq!(set.free_from(3), Some(71));
    }

    #[test]
    fn slices_cover_the_range_without_overlap() {
        for workers in 1..=7u16 {
            let mut seen = vec![0u8; 65536];
            for w in 0..workers {
                let s = PortSlice::new(1024..=65535, w, workers);
                for p in s.lo..=s.hi {
                    seen[usize::from(p)] += 1;
                    assert_eq!(s.owner(p), Some(w));
                }
            }
            assert!(seen[1024..].iter().all(|&c| c == 1));
            assert!(seen[..1024].iter().all(|&c| c == 0));
            assert_eq!(PortSlice::new(1024..=65535, 0, workers).owner(80), None);
        }
    }

    #[test]
    fn takes_every_port_once_then_reports_full() {
        let mut set = PortSet::new(100);
        let mut rng = Rng::new(7);
        let mut got = std::collections::HashSet::new();
        for _ in 0..100 {
            assert!(got.insert(set.take_from(rng.next_u64() as u32).unwrap()));
        }
        assert!(got.iter().all(|&i| i < 100));
        assert_eq!(set.take_from(5), None);
        set.clear(42);
        assert_eq!(set.take_from(99), Some(42));
    }
}

/// One port of one address: (address, protocol slot, offset in the slice).
pub type PortKey = (u32, u8, u32);

/// Ports held out of use until their cooldown ends (RFC 6888 REQ-8), keyed
/// `(address, protocol slot, offset)`: one deadline per port, the latest
/// asked for, so a port is freed once, when its last cooldown ends.
#[derive(Debug, Default)]
pub struct CoolingPorts {
    until: hashbrown::HashMap<PortKey, u32>,
    /// (deadline, key), soonest first; entries whose deadline was since
    /// raised are skipped when they come up.
    order: std::collections::BinaryHeap<std::cmp::Reverse<(u32, PortKey)>>,
}

impl CoolingPorts {
    /// Holds `key` until at least `until` (seconds).
    pub fn hold(&mut self, key: PortKey, until: u32) {
        let e = self.until.entry(key).or_insert(0);
        if until > *e {
            *e = until;
            self.order.push(std::cmp::Reverse((until, key)));
        }
    }

    /// A port whose cooldown has ended by `now`, if any.
    pub fn pop_due(&mut self, now: u32) -> Option<PortKey> {
        while let Some(&std::cmp::Reverse((until, key))) = self.order.peek() {
            if until > now {
                return None;
            }
            self.order.pop();
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
                return Some(key);
            }
        }
        None
    }

    /// Forgets the ports of addresses for which `keep` is false.
    pub fn retain_addrs(&mut self, keep: impl Fn(u32) -> bool) {
        self.until.retain(|k, _| keep(k.0));
        self.order.retain(|std::cmp::Reverse((_, k))| keep(k.0));
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod cooling_tests {
    use super::*;

    #[test]
    fn a_port_held_twice_is_freed_once_at_its_later_deadline() {
        let mut c = CoolingPorts::default();
        c.hold((1, 0, 7), 100);
        c.hold((1, 0, 7), 200);
        c.hold((1, 0, 8), 150);
        assert_eq!(c.pop_due(120), None, "port 7's earlier deadline no longer counts");
        assert_eq!(c.pop_due(150), Some((1, 0, 8)));
        assert_eq!(c.pop_due(199), None);
        assert_eq!(c.pop_due(200), Some((1, 0, 7)));
        assert!(c.is_empty());
    }
}
