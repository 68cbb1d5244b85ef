//! The keydir's allocator: large blocks are anonymous memory maps.
//!
//! Why: the keydir's arrays grow by doubling. Through malloc, the block a
//! resize frees stays in the heap (and in the process' RSS), and a freshly
//! doubled array is half empty. Mapped blocks go back to the OS the moment
//! they are freed, `mremap` grows them without copying, and capacity that
//! was never written costs no RSS at all.
//!
//! Invariant: a block is mapped iff its layout's size is at least [`LARGE`]
//! and its alignment at most a page; `allocate`, `deallocate` and `grow`
//! decide with the same rule, so a block is always freed the way it was
//! obtained.

use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};

/// Blocks of at least this many bytes are mapped.
const LARGE: usize = 256 << 10;
/// The page size assumed for rounding (x86-64 and aarch64 Linux default).
const PAGE: usize = 4096;

/// See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageAlloc;

/// Whether a block of `layout` is (or will be) mapped.
fn mapped(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

/// `n` rounded up to whole pages.
fn pages(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

// SAFETY: mapped blocks are page-aligned (so any alignment up to a page is
// met), exclusively owned until `deallocate`, and freed with the length they
// were mapped with (recomputed from the layout by the same rounding).
unsafe impl Allocator for PageAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if !mapped(layout) {
            return Global.allocate(layout);
        }
        let len = pages(layout.size());
        // SAFETY: an anonymous private mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AllocError);
        }
        let p = NonNull::new(p.cast::<u8>()).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if !mapped(layout) {
            // SAFETY: the block came from Global with this layout.
            return unsafe { Global.deallocate(ptr, layout) };
        }
        // SAFETY: the block is a mapping of exactly this rounded length.
        unsafe {
            libc::munmap(ptr.as_ptr().cast(), pages(layout.size()));
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if mapped(old) && mapped(new) {
            // SAFETY: `ptr` is a mapping of `pages(old.size())` bytes; the
            // kernel moves it if it cannot grow in place, keeping the data.
            let p = unsafe {
                libc::mremap(
                    ptr.as_ptr().cast(),
                    pages(old.size()),
                    pages(new.size()),
                    libc::MREMAP_MAYMOVE,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(AllocError);
            }
            let p = NonNull::new(p.cast::<u8>()).ok_or(AllocError)?;
            return Ok(NonNull::slice_from_raw_parts(p, new.size()));
        }
        let fresh = self.allocate(new)?;
        // SAFETY: both blocks are valid for `old.size()` bytes and distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.cast::<u8>().as_ptr(), old.size());
            self.deallocate(ptr, old);
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_grows_through_small_and_mapped_blocks() {
        let mut v: allocator_api2::vec::Vec<u64, PageAlloc> =
            allocator_api2::vec::Vec::new_in(PageAlloc);
        for i in 0..200_000u64 {
            v.push(i);
        }
        assert_eq!(v.len(), 200_000);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(&v[..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
}
