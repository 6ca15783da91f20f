//! Where the index and the depot get their memory.
//!
//! The core has no syscalls, so it asks a [`Backing`] for zeroed,
//! page-aligned memory that is never given back. The agent backs it with
//! `mmap(MAP_NORESERVE)` (and registers the range so the scanner never treats
//! leakscan's own memory as a root); tests back it with the Rust heap.

use core::ptr::NonNull;

/// A source of zeroed memory that lives until the process ends.
pub trait Backing {
    /// `bytes` of zeroed memory aligned to at least 4096, or `None` when the
    /// system refuses. Callers never free it, so implementations may reserve
    /// address space lazily (untouched pages cost nothing).
    fn alloc_zeroed(bytes: usize) -> Option<NonNull<u8>>;
}

/// Rust-heap backing for tests and tools: leaks on purpose, as the contract says.
pub struct HeapBacking;

impl Backing for HeapBacking {
    fn alloc_zeroed(bytes: usize) -> Option<NonNull<u8>> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
    }
}
