// SPDX-License-Identifier: GPL-2.0

//! Pinned user pages.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)
//!
//! A copy between userspace and something the kernel can only reach with a lock held (device
//! memory that must not be accessed while its memory decoding is off, for example) cannot use
//! `copy_to_user()` under that lock: the copy may fault, and the fault may need the same lock.
//! The usual answer is a bounce buffer, which costs a second copy of every byte. Pinning the user
//! pages first (`pin_user_pages_fast()`, which may fault, with no lock held) and then copying
//! into or out of their kernel mapping under the lock needs one copy and cannot fault.

use crate::{
    alloc::{
        flags::GFP_KERNEL,
        KVec, //
    },
    bindings,
    page::PAGE_SIZE,
    prelude::*,
    uaccess::UserPtr,
};

/// Pins the pages of `len` bytes of user memory at `ptr` for a short-term kernel access.
///
/// Pages are faulted in as needed (for writing if `write` is set), so this must be called
/// without locks that a fault on that memory may take.
///
/// # Invariants
///
/// - Each of `pages` is pinned once (`pin_user_pages_fast()`, with `FOLL_WRITE` if `write`) and
///   unpinned in `drop`.
/// - Together they hold the `len` bytes of the range, which starts `offset` bytes into the first
///   page: `offset < PAGE_SIZE` and `pages.len() == (offset + len).div_ceil(PAGE_SIZE)`.
pub struct PinnedUserPages {
    pages: KVec<*mut bindings::page>,
    offset: usize,
    len: usize,
    write: bool,
}

// SAFETY: The pinned pages are only accessed through the raw pointers that
// `PinnedUserPages::for_each_mapped` hands out on the calling thread; unpinning them works on any
// thread.
unsafe impl Send for PinnedUserPages {}

impl PinnedUserPages {
    /// Pins the pages of the `len` bytes of user memory at `ptr`, for writing by the kernel if
    /// `write` is set (the pages are then marked dirty when unpinned).
    ///
    /// Fails with `EFAULT` if part of the range is not mapped or cannot be pinned (for example an
    /// `mmap()` of device memory, `VM_IO | VM_PFNMAP`), or is read-only and `write` is set; with
    /// another error of `pin_user_pages_fast()` (e.g. `ENOMEM`, `EINTR`) otherwise.
    pub fn new(ptr: UserPtr, len: usize, write: bool) -> Result<Self> {
        // CAST: A user address is an integer.
        let addr = ptr.as_const_ptr() as usize;
        let offset = addr % PAGE_SIZE;
        // The range must not wrap around the address space.
        addr.checked_add(len).ok_or(EFAULT)?;
        let count = (offset + len).div_ceil(PAGE_SIZE);
        let mut this = Self {
            pages: KVec::with_capacity(count, GFP_KERNEL)?,
            offset,
            len,
            write,
        };
        let flags = if write { bindings::FOLL_WRITE } else { 0 };
        let mut start = addr - offset;
        while this.pages.len() < count {
            let want = i32::try_from(count - this.pages.len()).unwrap_or(i32::MAX);
            let spare = this.pages.spare_capacity_mut();
            // SAFETY: `spare` has room for `count - pages.len()` page pointers, at least `want`;
            // `pin_user_pages_fast()` writes at most `want` of them and returns how many.
            let n = unsafe {
                bindings::pin_user_pages_fast(start, want, flags, spare.as_mut_ptr().cast())
            };
            if n <= 0 {
                // `drop` unpins what was pinned so far.
                return Err(if n < 0 { Error::from_errno(n) } else { EFAULT });
            }
            // CAST: `0 < n <= want`.
            let n = n as usize;
            // SAFETY: The first `n` spare entries were initialised, and `pages.len() + n <= count`
            // is within the capacity.
            unsafe { this.pages.inc_len(n) };
            start += n * PAGE_SIZE;
        }
        // INVARIANT: `count` pages were pinned, covering `offset..offset + len` of them.
        Ok(this)
    }

    /// Returns the number of bytes in the pinned range.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns `true` if the pinned range is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f(ptr, n, at)` for the bytes `at..at + n` of the range, in order, until `len` bytes
    /// starting at `start` were visited or `f` fails.
    ///
    /// `ptr` is a kernel mapping (`kmap_local_page()`) of those `n` bytes, valid only during the
    /// call, for reads and, if the pages were pinned for writing, for writes. No piece crosses a
    /// page boundary. Userspace may access the same memory concurrently, so the bytes behind
    /// `ptr` must only be accessed through raw pointers (e.g. with `memcpy`-like functions),
    /// never through references.
    pub fn for_each_mapped(
        &self,
        start: usize,
        len: usize,
        mut f: impl FnMut(*mut u8, usize, usize) -> Result,
    ) -> Result {
        let end = start.checked_add(len).ok_or(EINVAL)?;
        if end > self.len {
            return Err(EINVAL);
        }
        let mut at = start;
        while at < end {
            let pos = self.offset + at;
            let in_page = pos % PAGE_SIZE;
            let n = (PAGE_SIZE - in_page).min(end - at);
            // By the type invariants, `pos / PAGE_SIZE < pages.len()` since `at < len`.
            let page = self.pages[pos / PAGE_SIZE];
            // SAFETY: `page` is pinned, so it is a valid page until `drop`.
            let base = unsafe { bindings::kmap_local_page(page) };
            let ret = f(base.cast::<u8>().wrapping_add(in_page), n, at);
            // SAFETY: `base` was returned by the matching `kmap_local_page()` above and is the
            // innermost local mapping again: the only safe ways to make local mappings unmap
            // them before they return, so `f` left none behind.
            unsafe { bindings::kunmap_local(base) };
            ret?;
            at += n;
        }
        Ok(())
    }
}

impl Drop for PinnedUserPages {
    fn drop(&mut self) {
        let n = self.pages.len();
        // SAFETY: By the type invariants, `pages` holds `n` pinned pages, unpinned only here.
        unsafe { bindings::unpin_user_pages_dirty_lock(self.pages.as_mut_ptr(), n, self.write) };
    }
}
