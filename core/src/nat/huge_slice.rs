//! Memory for the session tables: one anonymous mapping per table, on
//! transparent huge pages where the kernel has them, written in full when
//! the table is made. A million random flows touch tens of MiB at random:
//! on 4 KiB pages nearly every lookup also misses the TLB (DPDK and VPP run
//! their tables on huge pages for the same reason), and a slab grown on
//! demand takes a page fault every hundred sessions, in the data path.
//! Touched up front, a gateway holds all the memory it was sized for from
//! the start, and fails then, not under load.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The huge page size on x86_64 and aarch64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// A fixed-length slice of `T` in its own mapping.
pub struct HugeSlice<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    mapped: usize,
}

// SAFETY: HugeSlice owns its mapping as a Box<[T]> owns its allocation.
unsafe impl<T: Copy + Send> Send for HugeSlice<T> {}
// SAFETY: shared access is only through &[T].
unsafe impl<T: Copy + Sync> Sync for HugeSlice<T> {}

impl<T: Copy> HugeSlice<T> {
    /// `len` copies of `value`. Aborts, as a failed allocation does, when
    /// the memory cannot be had.
    pub fn filled(len: usize, value: T) -> Self {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).expect("table size overflows");
        // Whole huge pages from one up, so the kernel can place and back the
        // mapping with them; small tables take whole base pages.
        let mapped =
            if bytes >= HUGE_PAGE { bytes.next_multiple_of(HUGE_PAGE) } else { bytes.max(1).next_multiple_of(4096) };
        let layout = std::alloc::Layout::from_size_align(mapped, 4096).expect("table layout");
        // SAFETY: a fresh private anonymous mapping; no existing memory is named.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(layout);
        }
        if mapped >= HUGE_PAGE {
            // A hint: where THP is off (or "never") the table stays on base pages.
            // SAFETY: the range is the mapping just made.
            unsafe { libc::madvise(p, mapped, libc::MADV_HUGEPAGE) };
        }
        let ptr = NonNull::new(p.cast::<T>()).expect("mmap returned null");
        for i in 0..len {
            // SAFETY: i < len, within the mapping; page-aligned suits any T here.
            unsafe { ptr.as_ptr().add(i).write(value) };
        }
        HugeSlice { ptr, len, mapped }
    }

    /// Bytes of memory the slice holds (its mapping).
    pub fn bytes(&self) -> usize {
        self.mapped
    }
}

impl<T: Copy> Deref for HugeSlice<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: len initialised Ts, alive as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> DerefMut for HugeSlice<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as deref, and &mut self is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `filled`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_it_was_filled_with_and_what_is_written() {
        for len in [0usize, 1, 1000, (HUGE_PAGE / 8) + 3] {
            let mut s = HugeSlice::filled(len, u64::MAX);
            assert_eq!(s.len(), len);
            assert!(s.iter().all(|&v| v == u64::MAX));
            if len > 0 {
                s[len - 1] = 7;
                assert_eq!(s[len - 1], 7);
            }
            assert!(s.bytes() >= len * 8);
        }
    }
}
