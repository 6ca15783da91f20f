//! Allocation stacks: a frame-pointer walk, bounded and validated.
//!
//! Unwinding with DWARF costs microseconds per call (backtrace::trace
//! measured 6–11 µs); following the rbp chain costs 2–3 ns per frame. The
//! chain is only trustworthy where code keeps frame pointers, so every
//! frame is validated before it is read: it must lie above the current
//! stack pointer and below the top of this thread's stack, be 8-aligned,
//! and frames must strictly grow. A library built without frame pointers
//! then ends the walk early (or adds a bogus frame) but can never make it
//! read outside the thread's stack. A thread whose stack bounds are unknown
//! (not created through our pthread_create) only gets the caller's frame.
//!
//! Frames inside libleakscan itself are dropped, so stack #0 is the
//! program's call to malloc (or the C++ runtime's operator new).

use core::mem::MaybeUninit;
use core::sync::atomic::Ordering;

use leakscan_core::depot;
use leakscan_core::options::MAX_STACK_DEPTH;
use leakscan_platform::threads;

use crate::guard::Guard;
use crate::state::{DEPOT, OWN_TEXT, STACK_DEPTH};

/// Stacks of unregistered threads are walked only through our own frames;
/// this bounds that walk.
const OWN_FRAMES_WINDOW: usize = 64 * 1024;
/// The main thread's stack is found via `__libc_stack_end` before it is
/// registered; mappings below it are at least 128 MiB away (the kernel's
/// stack gap), so this cannot reach into another mapping.
const MAIN_STACK_MAX: usize = 64 << 20;

/// Capture and intern the current allocation stack; 0 if none.
#[inline(always)]
pub fn capture(g: &Guard) -> u32 {
    // Uninitialised: zeroing 512 bytes on every malloc showed in profiles.
    let mut buf = [MaybeUninit::<usize>::uninit(); MAX_STACK_DEPTH];
    let depth = STACK_DEPTH.load(Ordering::Relaxed).min(MAX_STACK_DEPTH);
    let n = walk(g.stack_bounds(), &mut buf[..depth]);
    // SAFETY: walk initialised exactly buf[..n].
    let frames = unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const usize, n) };
    // A 64-bit hash match is taken as identity in the per-thread cache (a
    // collision is ~2^-64 per pair of stacks); the shared depot compares
    // frames in full.
    let h = depot::hash(frames);
    if let Some(id) = g.cached_stack(h) {
        return id;
    }
    let id = DEPOT.intern_hashed(frames, h);
    g.cache_stack(h, id);
    id
}

#[inline(always)]
fn walk((lo, hi): (usize, usize), out: &mut [MaybeUninit<usize>]) -> usize {
    let sp = threads::stack_pointer();
    let mut fp = threads::frame_pointer();
    let (hi, known) = if lo <= sp && sp < hi {
        (hi, true)
    } else {
        let end = threads::main_stack_end();
        if sp < end && end - sp < MAIN_STACK_MAX {
            (end, true)
        } else {
            (sp.saturating_add(OWN_FRAMES_WINDOW), false)
        }
    };
    let own_lo = OWN_TEXT.0.load(Ordering::Relaxed);
    let own_len = OWN_TEXT.1.load(Ordering::Relaxed).wrapping_sub(own_lo);
    // A frame is read only if fp lies in [sp, hi - 16], 8-aligned: one
    // unsigned comparison for the range.
    let Some(span) = hi.saturating_sub(16).checked_sub(sp) else {
        return 0;
    };
    let limit = if known { out.len() } else { out.len().min(1) };
    let mut n = 0;
    while n < limit {
        if fp.wrapping_sub(sp) > span || fp & 7 != 0 {
            break;
        }
        // SAFETY: fp lies in [sp, hi - 16] of this thread's live stack,
        // which is mapped; reading two words there cannot fault.
        let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
        if ret < 4096 {
            break;
        }
        if ret.wrapping_sub(own_lo) >= own_len {
            out[n].write(ret);
            n += 1;
        }
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}
