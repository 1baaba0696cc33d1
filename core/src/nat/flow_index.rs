//! The session indexes: open addressing with linear probing over one flat
//! array of `(tag, slab index)` words. hashbrown is used everywhere else;
//! here the slot a key lands on must be computable from its hash alone, so
//! a batch of packets can prefetch their slots before anyone probes (VPP
//! and DPDK do the same with their bihash/cuckoo tables). Deletion shifts
//! entries back, so there are no tombstones and probes stay short.

use super::huge_slice::HugeSlice;

const EMPTY: u64 = u64::MAX;

pub struct FlowIndex {
    slots: HugeSlice<u64>,
    mask: usize,
}

#[inline]
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl FlowIndex {
    /// Room for `capacity` entries at a load factor of at most 3/4.
    pub fn with_capacity(capacity: usize) -> Self {
        let n = (capacity.max(8) * 4).div_ceil(3).next_power_of_two();
        FlowIndex { slots: HugeSlice::filled(n, EMPTY), mask: n - 1 }
    }

    #[inline]
    fn home(&self, t: u32) -> usize {
        t as usize & self.mask
    }

    /// Starts loading the slot `hash` lands on into the cache.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        prefetch(&self.slots[self.home(tag(hash))]);
    }

    /// The entry whose tag matches and for which `eq(index)` holds.
    #[inline(always)]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let t = tag(hash);
        let mut i = self.home(t);
        loop {
            let e = self.slots[i];
            if e == EMPTY {
                return None;
            }
            if (e >> 32) as u32 == t && eq(e as u32) {
                return Some(e as u32);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds an entry; the caller keeps keys unique and within capacity.
    #[inline]
    pub fn insert(&mut self, hash: u64, index: u32) {
        let t = tag(hash);
        let mut i = self.home(t);
        while self.slots[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = u64::from(t) << 32 | u64::from(index);
    }

    /// Removes the entry for `index` (found under `hash`); false if absent.
    pub fn remove(&mut self, hash: u64, index: u32) -> bool {
        let t = tag(hash);
        let want = u64::from(t) << 32 | u64::from(index);
        let mut i = self.home(t);
        loop {
            let e = self.slots[i];
            if e == EMPTY {
                return false;
            }
            if e == want {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward-shift deletion (Knuth 6.4 algorithm R).
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let e = self.slots[j];
            if e == EMPTY {
                break;
            }
            let home = self.home((e >> 32) as u32);
            // Move e into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = e;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        true
    }

    /// Bytes of memory the index holds.
    pub fn bytes(&self) -> usize {
        self.slots.bytes()
    }
}

/// A cache prefetch hint; a no-op where the target has none.
#[inline(always)]
pub fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const T as *const i8, core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn h(x: u32) -> u64 {
        // Tags that collide on purpose: few distinct homes.
        (u64::from(x % 7) << 32) | u64::from(x)
    }

    #[test]
    fn finds_what_it_holds_through_collisions_and_deletions() {
        let mut idx = FlowIndex::with_capacity(64);
        let mut live: HashMap<u32, ()> = HashMap::new();
        let mut rng = 12345u64;
        for step in 0..5000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = (rng % 64) as u32;
            if live.remove(&k).is_some() {
                assert!(idx.remove(h(k), k), "step {step}");
            } else if live.len() < 48 {
                idx.insert(h(k), k);
                live.insert(k, ());
            }
            for probe in 0..64u32 {
                let found = idx.find(h(probe), |i| i == probe);
                assert_eq!(found.is_some(), live.contains_key(&probe), "step {step} key {probe}");
            }
        }
    }
}
