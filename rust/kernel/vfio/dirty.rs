// SPDX-License-Identifier: GPL-2.0

//! Tracking of the pages of device memory that a saving session still has to send.
//!
//! [`DirtyPages`] is a bitmap with one bit per page and an exact count of the set bits, both
//! updated lock-free: writers mark pages from fault handlers and region writes (which must not
//! take the migration lock), the saving session takes them when it sends them. The count makes
//! the precopy information O(1), whatever the memory size.

use crate::{
    alloc::{
        flags::GFP_KERNEL,
        KVVec, //
    },
    prelude::*,
    sync::atomic::{
        Atomic,
        Full,
        Relaxed,
        Release, //
    },
    sync::barrier::smp_mb,
};

/// The tracking unit (a *page* of the set), in bytes.
///
/// It may be smaller than the CPU's `PAGE_SIZE` (16 KiB and 64 KiB kernels): a fault then
/// reports the whole faulting page ([`Driver::bar_mmap_write`]'s `len`), and marking it marks
/// every unit the page holds.
///
/// [`Driver::bar_mmap_write`]: crate::vfio::pci::Driver::bar_mmap_write
pub const PAGE: u64 = 4096;

/// A set of pages with an exact count, updated lock-free.
///
/// # Invariants
///
/// `count` is the number of set bits of `words` (up to the moment of a concurrent update), and
/// no bit at or beyond `pages` is ever set.
pub struct DirtyPages {
    words: KVVec<Atomic<u64>>,
    pages: usize,
    count: Atomic<u64>,
    active: Atomic<bool>,
}

impl DirtyPages {
    /// Creates an empty, inactive set for `bytes` of memory.
    pub fn new(bytes: u64) -> Result<Self> {
        let pages = usize::try_from(bytes.div_ceil(PAGE))?;
        let n = pages.div_ceil(64);
        // One bit per 4 KiB: 4 MiB of words for 128 GiB, more than kmalloc may give.
        let mut words = KVVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            words.push(Atomic::new(0u64), GFP_KERNEL)?;
        }
        Ok(Self {
            words,
            pages,
            count: Atomic::new(0),
            active: Atomic::new(false),
        })
    }

    /// Returns the number of pages covered.
    #[inline]
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Returns the number of marked pages.
    #[inline]
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Returns whether [`DirtyPages::mark`] records anything.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Starts (`true`) or stops recording writes. Starting clears the set.
    ///
    /// Fully ordered: what the caller does next (mark the pages to send, unmap them) is ordered
    /// after it, against a fault path that maps a page and then checks [`DirtyPages::is_active`].
    pub fn set_active(&self, active: bool) {
        if active {
            self.clear();
        }
        self.active.store(active, Release);
        smp_mb(Full);
    }

    /// Unmarks every page.
    pub fn clear(&self) {
        for w in self.words.iter() {
            let old = w.xchg(0, Full);
            self.count
                .fetch_add(0u64.wrapping_sub(u64::from(old.count_ones())), Full);
        }
    }

    /// Marks the pages that bytes `offset..offset + len` touch, if the set is active; returns
    /// whether one of them was not marked before (new data for the saving session).
    pub fn mark(&self, offset: u64, len: u64) -> bool {
        if len == 0 || self.pages == 0 || !self.is_active() {
            return false;
        }
        let mut new = false;
        let first = offset / PAGE;
        let last = (offset.saturating_add(len - 1) / PAGE).min(self.pages as u64 - 1);
        let mut page = first;
        while page <= last {
            let (w, bit) = ((page / 64) as usize, page % 64);
            let n = (64 - bit).min(last - page + 1);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            new |= self.update(w, |old| old | mask) & mask != mask;
            page += n;
        }
        new
    }

    /// Unmarks up to `n` pages from `first` on; returns how many of them were marked.
    pub fn take(&self, first: usize, n: usize) -> u64 {
        let end = first.saturating_add(n).min(self.pages);
        let mut taken = 0;
        let mut page = first;
        while page < end {
            let (w, bit) = (page / 64, page % 64);
            let k = (64 - bit).min(end - page);
            let mask = if k == 64 {
                u64::MAX
            } else {
                ((1u64 << k) - 1) << bit
            };
            taken += u64::from((self.update(w, |old| old & !mask) & mask).count_ones());
            page += k;
        }
        taken
    }

    /// Returns the first marked page at or after `from`.
    pub fn next_marked(&self, from: usize) -> Option<usize> {
        let mut page = from;
        while page < self.pages {
            let (w, bit) = (page / 64, page % 64);
            let v = self.words[w].load(Relaxed) >> bit;
            if v != 0 {
                let p = page + v.trailing_zeros() as usize;
                return (p < self.pages).then_some(p);
            }
            page += 64 - bit;
        }
        None
    }

    /// Atomically replaces word `w` with `f(old)`, keeps the count exact and returns `old`.
    fn update(&self, w: usize, f: impl Fn(u64) -> u64) -> u64 {
        let word = &self.words[w];
        let mut old = word.load(Relaxed);
        loop {
            let new = f(old);
            if new == old {
                return old;
            }
            match word.cmpxchg(old, new, Full) {
                Ok(_) => {
                    let delta = i64::from(new.count_ones()) - i64::from(old.count_ones());
                    // CAST: Two's complement addition of a signed delta.
                    self.count.fetch_add(delta as u64, Full);
                    return old;
                }
                Err(cur) => old = cur,
            }
        }
    }
}

#[macros::kunit_tests(rust_vfio_dirty)]
mod tests {
    use super::*;

    #[test]
    fn mark_take_count() -> Result {
        let d = DirtyPages::new(1000 * PAGE + 1)?;
        assert_eq!(d.pages(), 1001);
        d.mark(0, PAGE);
        // Inactive: nothing recorded.
        assert_eq!(d.count(), 0);
        d.set_active(true);
        // Sub-page and page-crossing writes.
        d.mark(10, 1);
        d.mark(PAGE - 1, 2);
        assert_eq!(d.count(), 2);
        // A range across words, and past the end (clamped).
        d.mark(60 * PAGE, 10 * PAGE);
        d.mark(999 * PAGE, 100 * PAGE);
        assert_eq!(d.count(), 2 + 10 + 2);
        assert_eq!(d.next_marked(2), Some(60));
        assert_eq!(d.next_marked(1001), None);
        assert_eq!(d.take(0, 64), 2 + 4);
        assert_eq!(d.count(), 8);
        assert_eq!(d.take(0, 1001), 8);
        assert_eq!(d.count(), 0);
        assert_eq!(d.next_marked(0), None);
        d.mark(0, 1001 * PAGE);
        assert_eq!(d.count(), 1001);
        d.set_active(false);
        // Stopping keeps what was recorded.
        assert_eq!(d.count(), 1001);
        d.set_active(true);
        // Starting clears.
        assert_eq!(d.count(), 0);
        Ok(())
    }

    #[test]
    fn mark_reports_new_pages() -> Result {
        let d = DirtyPages::new(64 * PAGE)?;
        d.set_active(true);
        assert!(d.mark(PAGE, 1));
        assert!(!d.mark(PAGE + 10, 1));
        assert!(d.mark(0, 2 * PAGE));
        assert!(!d.mark(0, 2 * PAGE));
        let empty = DirtyPages::new(0)?;
        empty.set_active(true);
        assert!(!empty.mark(0, PAGE));
        assert_eq!(empty.count(), 0);
        assert_eq!(empty.next_marked(0), None);
        Ok(())
    }

    /// A fault on a 16 KiB or 64 KiB kernel reports the whole page: every unit of it is marked.
    #[test]
    fn mark_big_cpu_pages() -> Result {
        for cpu_page in [16 * 1024u64, 64 * 1024] {
            let units = cpu_page / PAGE;
            let d = DirtyPages::new(8 * cpu_page)?;
            d.set_active(true);
            // The fault of the page at index 3, written at its last byte.
            assert!(d.mark(3 * cpu_page, cpu_page));
            assert_eq!(d.count(), units);
            let first = usize::try_from(3 * units)?;
            assert_eq!(d.next_marked(0), Some(first));
            assert_eq!(d.take(first, usize::try_from(units)?), units);
            assert_eq!(d.count(), 0);
            // The last page of the set.
            assert!(d.mark(7 * cpu_page, cpu_page));
            assert_eq!(d.count(), units);
            assert_eq!(d.next_marked(0), Some(usize::try_from(7 * units)?));
        }
        Ok(())
    }
}
