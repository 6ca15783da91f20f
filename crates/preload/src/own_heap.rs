//! leakscan's own Rust heap: a `#[global_allocator]` over glibc's
//! `__libc_*` functions, so nothing leakscan allocates reaches its own hooks
//! (I1). Large buffers are mapped directly instead, so they land in the
//! registry of leakscan's own mappings and are never scanned as the
//! program's memory (I3): a big glibc chunk would otherwise be an anonymous
//! mapping that looks like a program arena.

use core::alloc::{GlobalAlloc, Layout};

use leakscan_platform::{mem, real};

const LARGE: usize = 128 * 1024;
const MALLOC_ALIGN: usize = 16;

pub struct OwnHeap;

impl OwnHeap {
    fn is_mapped(layout: &Layout) -> bool {
        layout.size() >= LARGE && layout.align() <= 4096
    }
}

// SAFETY: every block comes from glibc or our own mappings with the requested
// size and alignment, and is returned to where it came from.
unsafe impl GlobalAlloc for OwnHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::is_mapped(&layout) {
            mem::map(layout.size()).map_or(core::ptr::null_mut(), |p| p.as_ptr())
        } else if layout.align() <= MALLOC_ALIGN {
            real::malloc(layout.size())
        } else {
            real::memalign(layout.align(), layout.size())
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::is_mapped(&layout) {
            // Fresh anonymous mappings are zeroed.
            // SAFETY: forwarded contract.
            unsafe { self.alloc(layout) }
        } else if layout.align() <= MALLOC_ALIGN {
            real::calloc(1, layout.size())
        } else {
            let p = real::memalign(layout.align(), layout.size());
            if !p.is_null() {
                // SAFETY: p has layout.size() writable bytes.
                unsafe { p.write_bytes(0, layout.size()) };
            }
            p
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::is_mapped(&layout) {
            // SAFETY: ptr is the mapping alloc made for this layout.
            unsafe { mem::unmap(ptr, layout.size()) }
        } else {
            // SAFETY: ptr came from glibc via alloc.
            unsafe { real::free(ptr) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align(new_size, layout.align());
        match new_layout {
            Ok(nl)
                if layout.align() <= MALLOC_ALIGN
                    && !Self::is_mapped(&layout)
                    && !Self::is_mapped(&nl) =>
            {
                // SAFETY: ptr came from glibc malloc via alloc.
                unsafe { real::realloc(ptr, new_size) }
            }
            Ok(nl) => {
                // SAFETY: nl is a valid layout.
                let fresh = unsafe { self.alloc(nl) };
                if !fresh.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and
                    // distinct; the old one is released after the copy.
                    unsafe {
                        core::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                fresh
            }
            Err(_) => core::ptr::null_mut(),
        }
    }
}
