//! # leakscan-core: kmemleak's algorithm, without the kernel
//!
//! A leak detector for running programs has to answer "is anything still
//! pointing at this block?" while the program keeps allocating and freeing on
//! every thread. kmemleak answers it in the kernel with an address-keyed
//! rbtree under a lock; that tree cannot be read without the lock because a
//! rotation moves whole subtrees, and a lookup that misses a live block is a
//! false leak report. This crate holds the pieces that make the question
//! cheap and lock-free in userspace, with no libc and no syscalls (those live
//! in `leakscan-platform`):
//!
//! - [`index`]: the block index, a two-level radix page map with per-page
//!   start bitmaps. No rotations, nodes never freed, so readers need no lock
//!   and no grace period; "which block contains address A" is O(1).
//! - [`depot`]: the stack depot, interning allocation stacks as `u32` ids.
//! - [`scan`]: the mark phase (roots → gray → words) and the direct/indirect
//!   classification of what stays white.
//! - [`report`]: the versioned report schema every output is rendered from.
//! - [`fingerprint`]: stable leak-group ids, the same across runs and ASLR.
//! - [`suppress`]: LeakSanitizer suppression files, parsed and matched.
//! - [`options`]: `LEAKSCAN_OPTIONS` parsing.
//! - [`control`]: the control-socket protocol between the CLI and a running
//!   process.
//!
//! Memory for the index and the depot comes from a [`backing::Backing`]
//! supplied by the caller: `mmap` in the agent, the Rust heap in tests.

pub mod backing;
pub mod control;
pub mod depot;
pub mod fingerprint;
pub mod index;
pub mod options;
pub mod report;
pub mod scan;
pub mod suppress;
#[cfg(test)]
mod test_rng;

/// Hint the CPU to load the cache line at `addr`; never faults.
#[inline(always)]
pub fn prefetch_read(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint and never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}
