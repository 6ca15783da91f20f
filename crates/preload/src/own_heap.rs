//! leakscan's own Rust heap: a `#[global_allocator]` over glibc's
//! `__libc_*` functions, so nothing leakscan allocates reaches its own hooks
//! (I1). Large buffers are mapped directly instead, so they land in the
//! registry of leakscan's own mappings and are never scanned as the
//! program's memory (I3): a big glibc chunk would otherwise be an anonymous
//! mapping that looks like a program arena.
//!
//! Running out must not kill the program: Rust aborts the process when a
//! global allocator returns NULL, and the program may well be one that
//! fills its address space up to `RLIMIT_AS` and then exits. So when glibc
//! (or mmap) refuses, the request is served from an emergency *reserve*
//! mapped at start-up (address space only until touched), and tracking is
//! switched off with one warning (`state::disable_tracking`): nothing new
//! is started, and what is in flight finishes from the reserve. Reserve
//! blocks are handed out by a lock-free bump pointer and never reused
//! (freeing one is a no-op), so the reserve is always fresh, zeroed memory.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

use leakscan_platform::{mem, real};

const LARGE: usize = 128 * 1024;
const MALLOC_ALIGN: usize = 16;

/// Size of the emergency reserve.
const RESERVE_BYTES: usize = 8 << 20;
/// Start of the reserve (0 until `init_reserve`, or if it could not be
/// mapped) and bytes handed out from it so far.
static RESERVE_BASE: AtomicUsize = AtomicUsize::new(0);
static RESERVE_USED: AtomicUsize = AtomicUsize::new(0);

/// Map the emergency reserve (once, from the constructor).
pub fn init_reserve() {
    if RESERVE_BASE.load(Ordering::Acquire) == 0 {
        if let Some(p) = mem::map(RESERVE_BYTES) {
            RESERVE_BASE.store(p.as_ptr() as usize, Ordering::Release);
        }
    }
}

fn in_reserve(p: *mut u8) -> bool {
    let base = RESERVE_BASE.load(Ordering::Acquire);
    base != 0 && (base..base + RESERVE_BYTES).contains(&(p as usize))
}

/// Serve `layout` from the reserve after the normal source refused it;
/// NULL (and then Rust aborts) only when the reserve is spent too.
fn from_reserve(layout: &Layout) -> *mut u8 {
    let base = RESERVE_BASE.load(Ordering::Acquire);
    if base == 0 {
        return core::ptr::null_mut();
    }
    crate::state::disable_tracking("out of memory for leakscan's own heap");
    let align = layout.align().max(MALLOC_ALIGN);
    let mut used = RESERVE_USED.load(Ordering::Relaxed);
    loop {
        let start = (base + used + align - 1) & !(align - 1);
        let Some(end) = start.checked_add(layout.size().max(1)) else {
            return core::ptr::null_mut();
        };
        if end > base + RESERVE_BYTES {
            return core::ptr::null_mut();
        }
        match RESERVE_USED.compare_exchange_weak(
            used,
            end - base,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return start as *mut u8,
            Err(now) => used = now,
        }
    }
}

/// `p`, or a reserve block when `p` is NULL.
fn or_reserve(p: *mut u8, layout: &Layout) -> *mut u8 {
    if p.is_null() {
        from_reserve(layout)
    } else {
        p
    }
}

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
        let p = if Self::is_mapped(&layout) {
            mem::map(layout.size()).map_or(core::ptr::null_mut(), |p| p.as_ptr())
        } else if layout.align() <= MALLOC_ALIGN {
            real::malloc(layout.size())
        } else {
            real::memalign(layout.align(), layout.size())
        };
        or_reserve(p, &layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::is_mapped(&layout) {
            // Fresh anonymous mappings are zeroed, and so is the reserve
            // (never reused).
            // SAFETY: forwarded contract.
            unsafe { self.alloc(layout) }
        } else if layout.align() <= MALLOC_ALIGN {
            or_reserve(real::calloc(1, layout.size()), &layout)
        } else {
            let p = real::memalign(layout.align(), layout.size());
            if !p.is_null() {
                // SAFETY: p has layout.size() writable bytes.
                unsafe { p.write_bytes(0, layout.size()) };
            }
            or_reserve(p, &layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_reserve(ptr) {
            // Reserve blocks are never reused.
        } else if Self::is_mapped(&layout) {
            // SAFETY: ptr is the mapping alloc made for this layout.
            unsafe { mem::unmap(ptr, layout.size()) }
        } else {
            // SAFETY: ptr came from glibc via alloc.
            unsafe { real::free(ptr) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(nl) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        if layout.align() <= MALLOC_ALIGN
            && !in_reserve(ptr)
            && !Self::is_mapped(&layout)
            && !Self::is_mapped(&nl)
        {
            // SAFETY: ptr came from glibc malloc via alloc.
            let q = unsafe { real::realloc(ptr, new_size) };
            if !q.is_null() {
                return q;
            }
            // glibc refused and left the block alone: move it below.
        }
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
}
