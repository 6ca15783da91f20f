//! kfree_rcu for user blocks: while the scanner may be reading heap blocks,
//! frees are deferred until it has moved on.
//!
//! The scanner reads tracked blocks in place. A thread it could not stop (one
//! that blocks the stop signal, or any thread during a concurrent scan) may
//! free a block the scanner is reading, and glibc may then unmap it (an
//! mmapped chunk, a trimmed heap): a fault. So while a scan is active, `free`
//! and `realloc` unlink the block from the index as usual but push it on a
//! lock-free list instead of calling glibc. (Today the only scan is the
//! exit check, after which the list is simply left to the ending process;
//! see [`end`].) Kernel-side the idea is kfree_rcu: free after a grace
//! period, with no per-type callback.
//!
//! ## The handshake (an asymmetric fence)
//!
//! ```text
//! free (fast side)                     scanner (slow side)
//! seq += 1 (odd: inside, plain store)  ACTIVE = true
//! compiler fence                       membarrier(PRIVATE_EXPEDITED)
//! if ACTIVE: push    else: glibc free  for each thread: if seq is odd,
//! seq += 1 (even: outside, Release)      wait until seq changes
//!                                      ... scan ...
//! ```
//!
//! membarrier forces a full barrier on every running thread between the
//! scanner's store and its loads, so a free either sees ACTIVE, or its odd
//! `seq` is visible and the scanner waits for that free to finish. Waiting
//! for a *change* rather than for an even value matters: a thread that
//! frees in a loop is inside a free section most of the time, and every
//! section after the switch is harmless.
//! The free path costs two TLS stores and a load (no fence, no shared
//! cache line). Without membarrier (old kernels, seccomp) both sides use a
//! SeqCst fence instead. Threads without a registry slot use one shared
//! counter (they are rare: registration happens in `pthread_create`).
//!
//! The list links blocks through their first word; the blocks are ours
//! for good (unlinked from the index, never given back to glibc).

use core::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicUsize, Ordering};

use leakscan_platform::sys;

use crate::guard;
use crate::threads::{Slot, LIVE, SLOTS};

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Head of the list of deferred blocks (0 = empty).
static HEAD: AtomicUsize = AtomicUsize::new(0);
static UNREGISTERED_IN_FREE: AtomicUsize = AtomicUsize::new(0);
static MEMBARRIER: AtomicBool = AtomicBool::new(false);

/// Register for membarrier (constructor).
pub fn init() {
    MEMBARRIER.store(sys::membarrier_register(), Ordering::Release);
}

/// Step this thread's free-section counter: odd on entry, even on exit.
/// Only the owning thread writes its counter, so no read-modify-write;
/// threads without a slot share one counter (entry +1, exit −1).
#[inline(always)]
fn step(slot: Option<&Slot>, entering: bool, order: Ordering) {
    match slot {
        Some(s) => s
            .free_seq
            .store(s.free_seq.load(Ordering::Relaxed).wrapping_add(1), order),
        None if entering => {
            UNREGISTERED_IN_FREE.fetch_add(1, Ordering::SeqCst);
        }
        None => {
            UNREGISTERED_IN_FREE.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Run `f(defer)` as a free section: `defer` says whether blocks freed in it
/// must go to [`defer`] instead of glibc.
#[inline(always)]
pub fn free_section<R>(f: impl FnOnce(bool) -> R) -> R {
    let slot = guard::thread_slot().and_then(|i| SLOTS.get(i));
    step(slot, true, Ordering::Relaxed);
    if MEMBARRIER.load(Ordering::Relaxed) {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
    let result = f(ACTIVE.load(Ordering::Relaxed));
    step(slot, false, Ordering::Release);
    result
}

/// Keep `p` (a block already unlinked from the index) until the scan ends.
///
/// # Safety
/// `p` is a live glibc block with at least 8 usable bytes that nobody else
/// will use or free.
pub unsafe fn defer(p: *mut u8) {
    let mut head = HEAD.load(Ordering::Relaxed);
    loop {
        // SAFETY: p is ours and has room for the link.
        unsafe { (p as *mut usize).write(head) };
        match HEAD.compare_exchange_weak(head, p as usize, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// How long `begin` waits for frees that missed the switch. A thread stopped
/// by a debugger inside `free` must not hang the program forever; past this
/// the scan goes ahead (such a free could then still release a block).
const GRACE_TIMEOUT_NS: u64 = 2_000_000_000;

/// Start deferring frees, and wait until no free that missed the switch is
/// still running. Call before reading any block in place.
pub fn begin() {
    ACTIVE.store(true, Ordering::SeqCst);
    if !(MEMBARRIER.load(Ordering::Relaxed) && sys::membarrier()) {
        fence(Ordering::SeqCst);
    }
    let deadline = sys::monotonic_ns() + GRACE_TIMEOUT_NS;
    let waiting = |still: &dyn Fn() -> bool| {
        while still() && sys::monotonic_ns() < deadline {
            sys::yield_now();
        }
    };
    // Our own thread may be inside a free section itself (exit() called
    // from a signal handler that interrupted free): never wait for it.
    let me = guard::thread_slot();
    for (i, slot) in SLOTS.iter().enumerate() {
        if Some(i) == me || slot.state.load(Ordering::Acquire) != LIVE {
            continue;
        }
        let seq = slot.free_seq.load(Ordering::Acquire);
        if seq % 2 == 1 {
            waiting(&|| slot.free_seq.load(Ordering::Acquire) == seq);
        }
    }
    waiting(&|| UNREGISTERED_IN_FREE.load(Ordering::Acquire) != 0);
}

/// Call `f(p)` for every block deferred so far. Blocks are never removed
/// from the list, so the walk is safe while other threads keep pushing (it
/// just misses blocks pushed after it started).
pub fn for_each_deferred(mut f: impl FnMut(usize)) {
    let mut p = HEAD.load(Ordering::Acquire);
    while p != 0 {
        f(p);
        // SAFETY: a listed block holds its link in its first word and stays
        // listed (and live) for good.
        p = unsafe { (p as *const usize).read() };
    }
}

/// Stop deferring. The deferred blocks are not given back: the only scan so
/// far is the exit check, the process is ending, and freeing thousands of
/// blocks into arenas that still-running threads hammer would only delay
/// it. (A scan in a live process must release them here.)
pub fn end() {
    ACTIVE.store(false, Ordering::SeqCst);
}
