//! Per-block metadata, in a 16-byte trailer at the end of the block.
//!
//! The agent asks glibc for `size + 16` bytes and writes, at
//! `block + usable_size - 16`:
//!
//! ```text
//! u64  requested size (bits 0..44) | annotation flags (bits 44..48)
//!      | scan generation (bits 48..64)
//! u32  allocation stack id (0 = unknown)
//! u32  allocation time, CLOCK_MONOTONIC_COARSE ms, truncated
//! ```
//!
//! The scan generation (`state::SCAN_GEN`, modulo 2^16) tells the scanner
//! which blocks were allocated while it ran: those are never reported. The
//! flags carry the program's annotations ([`NOT_LEAK`], [`NO_SCAN`]); they
//! are set after the block is published, with an atomic OR on the first
//! word (8-aligned: glibc's usable sizes are 8 mod 16 past a 16-aligned
//! pointer), so a concurrent scan reads either the old or the new word.
//!
//! The user pointer and its alignment are exactly glibc's, so a pointer the
//! index does not know can always be handed to glibc untouched. The trailer
//! sits past the requested bytes: a pointer to the trailer (as glibc's own
//! bin pointers to the next chunk can be) never counts as a reference.

use leakscan_platform::real;

pub const TRAILER: usize = 16;
const SIZE_MASK: u64 = (1 << 44) - 1;
const FLAGS_SHIFT: u32 = 44;
/// Never reported, and what it points to is not reported either: LSan's
/// `__lsan_ignore_object`, kmemleak's `kmemleak_not_leak`, allocations made
/// between `__lsan_disable` and `__lsan_enable`.
pub const NOT_LEAK: u8 = 1;
/// Its contents are never scanned for pointers (kmemleak's `no_scan`).
pub const NO_SCAN: u8 = 2;
/// Set on a block freed while a live scan ran that the scan had already
/// reached: its contents are (or will be) scanned from the gray stack, so
/// the pass over freed blocks skips it (`check::gray_freed_blocks`).
pub const REACHED: u8 = 4;

#[derive(Debug, Clone, Copy)]
pub struct Trailer {
    pub size: usize,
    pub stack: u32,
    pub tick: u32,
    pub generation: u16,
    pub flags: u8,
}

/// Where the trailer of live block `p` lives.
///
/// # Safety
/// `p` is a live glibc block with at least 16 usable bytes.
#[inline(always)]
unsafe fn slot(p: usize) -> *mut [u64; 2] {
    // SAFETY: per the contract p is live, so its chunk header is readable.
    (p + unsafe { real::usable_size(p as *const u8) } - TRAILER) as *mut [u64; 2]
}

/// Write the trailer of a fresh block of `size` requested bytes.
///
/// # Safety
/// `p` is a live glibc block with at least `size + 16` usable bytes.
#[inline(always)]
pub unsafe fn write(p: usize, size: usize, stack: u32, tick: u32, generation: u16, flags: u8) {
    // SAFETY: per the contract the trailer lies inside the block.
    unsafe {
        slot(p).write_unaligned([
            size as u64 & SIZE_MASK | u64::from(flags) << FLAGS_SHIFT | u64::from(generation) << 48,
            u64::from(stack) | (u64::from(tick) << 32),
        ])
    };
}

/// Add annotation `flags` to a tracked block's trailer.
///
/// # Safety
/// `p` is a live tracked block whose trailer has been written.
pub unsafe fn add_flags(p: usize, flags: u8) {
    // SAFETY: per the contract the trailer lies inside the live block.
    let word = unsafe { slot(p) } as *mut u64;
    if !(word as usize).is_multiple_of(8) {
        return;
    }
    // SAFETY: an aligned u64 inside the block; every writer after
    // publication uses atomics.
    let atomic = unsafe { core::sync::atomic::AtomicU64::from_ptr(word) };
    atomic.fetch_or(
        u64::from(flags) << FLAGS_SHIFT,
        core::sync::atomic::Ordering::Relaxed,
    );
}

/// Read a tracked block's trailer. The size is clamped to the usable size,
/// so a program that overran its block into the trailer cannot make us read
/// past the chunk.
///
/// # Safety
/// `p` is a live tracked block.
#[inline(always)]
pub unsafe fn read(p: usize) -> Trailer {
    // SAFETY: p is live, so its chunk header is readable.
    let usable = unsafe { real::usable_size(p as *const u8) };
    if usable < TRAILER {
        return Trailer {
            size: usable,
            stack: 0,
            tick: 0,
            generation: 0,
            flags: 0,
        };
    }
    // SAFETY: the trailer lies inside the live block.
    let [a, b] = unsafe { ((p + usable - TRAILER) as *const [u64; 2]).read_unaligned() };
    Trailer {
        size: ((a & SIZE_MASK) as usize).min(usable - TRAILER),
        stack: b as u32,
        tick: (b >> 32) as u32,
        generation: (a >> 48) as u16,
        flags: ((a >> FLAGS_SHIFT) & 0xf) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_on_real_glibc_blocks() {
        for size in [0usize, 1, 24, 100, 5000, 300_000] {
            let p = real::malloc(size + TRAILER) as usize;
            // SAFETY: p is a fresh glibc block of size + TRAILER bytes.
            unsafe { write(p, size, 77, 123_456, 9, NO_SCAN) };
            // SAFETY: p is live and its trailer written.
            unsafe { add_flags(p, NOT_LEAK) };
            // SAFETY: p is live.
            let t = unsafe { read(p) };
            assert_eq!(
                (t.size, t.stack, t.tick, t.generation, t.flags),
                (size, 77, 123_456, 9, NOT_LEAK | NO_SCAN)
            );
            // SAFETY: p is live and not used again.
            unsafe { real::free(p as *mut u8) };
        }
    }

    #[test]
    fn an_overrun_trailer_cannot_claim_more_than_the_chunk() {
        let p = real::malloc(40 + TRAILER) as usize;
        // SAFETY: p is a fresh block with room for the trailer.
        unsafe { write(p, 40, 1, 1, 1, 0) };
        // The program scribbles over the whole usable area.
        // SAFETY: writing inside the block's usable size.
        let usable = unsafe { real::usable_size(p as *const u8) };
        // SAFETY: as above.
        unsafe { (p as *mut u8).write_bytes(0xff, usable) };
        // SAFETY: p is live.
        let t = unsafe { read(p) };
        assert!(
            t.size <= usable - TRAILER,
            "size {} usable {usable}",
            t.size
        );
        // SAFETY: p is live and not used again.
        unsafe { real::free(p as *mut u8) };
    }
}
