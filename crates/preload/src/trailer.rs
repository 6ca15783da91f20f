//! Per-block metadata, in a 16-byte trailer at the end of the block.
//!
//! The agent asks glibc for `size + 16` bytes and writes, at
//! `block + usable_size - 16`:
//!
//! ```text
//! u64  requested size (low 48 bits) | scan generation (high 16 bits)
//! u32  allocation stack id (0 = unknown)
//! u32  allocation time, CLOCK_MONOTONIC_COARSE ms, truncated
//! ```
//!
//! The scan generation (`state::SCAN_GEN`, modulo 2^16) tells the scanner
//! which blocks were allocated while it ran: those are never reported.
//!
//! The user pointer and its alignment are exactly glibc's, so a pointer the
//! index does not know can always be handed to glibc untouched. The trailer
//! sits past the requested bytes: a pointer to the trailer (as glibc's own
//! bin pointers to the next chunk can be) never counts as a reference.

use leakscan_platform::real;

pub const TRAILER: usize = 16;
const SIZE_MASK: u64 = (1 << 48) - 1;

#[derive(Debug, Clone, Copy)]
pub struct Trailer {
    pub size: usize,
    pub stack: u32,
    pub tick: u32,
    pub generation: u16,
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
pub unsafe fn write(p: usize, size: usize, stack: u32, tick: u32, generation: u16) {
    // SAFETY: per the contract the trailer lies inside the block.
    unsafe {
        slot(p).write_unaligned([
            size as u64 & SIZE_MASK | u64::from(generation) << 48,
            u64::from(stack) | (u64::from(tick) << 32),
        ])
    };
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
        };
    }
    // SAFETY: the trailer lies inside the live block.
    let [a, b] = unsafe { ((p + usable - TRAILER) as *const [u64; 2]).read_unaligned() };
    Trailer {
        size: ((a & SIZE_MASK) as usize).min(usable - TRAILER),
        stack: b as u32,
        tick: (b >> 32) as u32,
        generation: (a >> 48) as u16,
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
            unsafe { write(p, size, 77, 123_456, 9) };
            // SAFETY: p is live.
            let t = unsafe { read(p) };
            assert_eq!(
                (t.size, t.stack, t.tick, t.generation),
                (size, 77, 123_456, 9)
            );
            // SAFETY: p is live and not used again.
            unsafe { real::free(p as *mut u8) };
        }
    }

    #[test]
    fn an_overrun_trailer_cannot_claim_more_than_the_chunk() {
        let p = real::malloc(40 + TRAILER) as usize;
        // SAFETY: p is a fresh block with room for the trailer.
        unsafe { write(p, 40, 1, 1, 1) };
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
