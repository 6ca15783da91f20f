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

use leakscan_core::depot::FrameHash;
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
    let (n, h) = walk(g.stack_bounds(), &mut buf[..depth]);
    // A 64-bit hash match is taken as identity in the per-thread cache (a
    // collision is ~2^-64 per pair of stacks); the shared depot compares
    // frames in full.
    if let Some(id) = g.cached_stack(h) {
        return id;
    }
    // SAFETY: walk initialised exactly buf[..n].
    let frames = unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const usize, n) };
    let id = DEPOT.intern_hashed(frames, h);
    g.cache_stack(h, id);
    id
}

/// Walk this thread's frame chain into `out`; returns how many frames it
/// wrote and their depot hash, computed on the way (the hash's multiplies
/// overlap the chain's dependent loads).
#[inline(always)]
fn walk((lo, hi): (usize, usize), out: &mut [MaybeUninit<usize>]) -> (usize, u64) {
    let sp = threads::stack_pointer();
    let mut fp = threads::frame_pointer();
    // A registered thread on its own stack (not a signal's alternate
    // stack) walks up to its stack's top; any other case is rare.
    let (hi, limit) = if sp.wrapping_sub(lo) < hi.wrapping_sub(lo) {
        (hi, out.len())
    } else {
        unregistered_bounds(sp, out.len())
    };
    let own_lo = OWN_TEXT.0.load(Ordering::Relaxed);
    let own_len = OWN_TEXT.1.load(Ordering::Relaxed).wrapping_sub(own_lo);
    let mut h = FrameHash::new();
    // A frame is read only if fp lies in [sp, hi - 16] and is 8-aligned.
    // Both in one comparison: rotating fp - sp right by 3 moves a
    // misalignment into the top bits, past any span.
    let Some(span) = hi.saturating_sub(16).checked_sub(sp) else {
        return (0, h.finish(0));
    };
    let span8 = span >> 3;
    let out = &mut out[..limit];
    let mut n = 0;
    while n < out.len() {
        if fp.wrapping_sub(sp).rotate_right(3) > span8 {
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
            h.push(ret);
            n += 1;
        }
        if next <= fp {
            break;
        }
        fp = next;
    }
    (n, h.finish(n))
}

/// The walk's upper bound and frame limit when `sp` is not on the thread's
/// registered stack: the main thread before it registers (its stack ends
/// at `__libc_stack_end`), else only our own frames, and the caller's.
#[cold]
#[inline(never)]
fn unregistered_bounds(sp: usize, depth: usize) -> (usize, usize) {
    let end = threads::main_stack_end();
    if sp < end && end - sp < MAIN_STACK_MAX {
        (end, depth)
    } else {
        (sp.saturating_add(OWN_FRAMES_WINDOW), depth.min(1))
    }
}
