//! kfree_rcu for user blocks: while the scanner may be reading heap blocks,
//! frees are deferred until it has moved on.
//!
//! The scanner reads tracked blocks in place. A thread it could not stop (one
//! that blocks the stop signal, or any thread during a concurrent scan) may
//! free a block the scanner is reading, and glibc may then unmap it (an
//! mmapped chunk, a trimmed heap): a fault. So while a scan is active, `free`
//! and `realloc` unlink the block from the index as usual but push it on a
//! lock-free list instead of calling glibc. When the scan has moved on,
//! [`end`] takes the list and gives its blocks back to glibc (the exit check
//! leaves them to the ending process). Kernel-side the idea is kfree_rcu:
//! free after a grace period, with no per-type callback.
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
//! The list links blocks through their first word. A free that saw ACTIVE
//! just before [`end`] cleared it may push after `end` took the list: its
//! block simply waits in the next list (released by the next scan's end),
//! which is harmless; no block is ever released while a scan that could
//! read it is running, because `end` only runs once the reading is over.

use core::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicUsize, Ordering};

use leakscan_platform::{real, sys};

use crate::guard;
use crate::threads::{Slot, LIVE, SLOTS};

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Head of the list of deferred blocks (0 = empty).
static HEAD: AtomicUsize = AtomicUsize::new(0);
static UNREGISTERED_IN_FREE: AtomicUsize = AtomicUsize::new(0);
/// Blocks and bytes deferred since the last [`begin`]: a scan that lets
/// the quarantine grow past its budget gives up early (see `over_budget`).
static DEFERRED_BLOCKS: AtomicUsize = AtomicUsize::new(0);
static DEFERRED_BYTES: AtomicUsize = AtomicUsize::new(0);
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
    DEFERRED_BLOCKS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: p is a live glibc block.
    DEFERRED_BYTES.fetch_add(unsafe { real::usable_size(p) }, Ordering::Relaxed);
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
    DEFERRED_BLOCKS.store(0, Ordering::Relaxed);
    DEFERRED_BYTES.store(0, Ordering::Relaxed);
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

/// Call `f(p)` for every block deferred so far. Only [`end`] removes
/// blocks from the list, and it never runs during a scan, so the walk is
/// safe while other threads keep pushing (it just misses blocks pushed
/// after it started).
pub fn for_each_deferred(mut f: impl FnMut(usize)) {
    let mut p = HEAD.load(Ordering::Acquire);
    while p != 0 {
        f(p);
        // SAFETY: a listed block holds its link in its first word and stays
        // listed (and live) until `end`, which the caller does not overlap.
        p = unsafe { (p as *const usize).read() };
    }
}

/// Blocks and bytes deferred since [`begin`].
pub fn deferred() -> (usize, usize) {
    (
        DEFERRED_BLOCKS.load(Ordering::Relaxed),
        DEFERRED_BYTES.load(Ordering::Relaxed),
    )
}

/// Stop deferring, and with `release` give every deferred block back to
/// glibc. Call only once nothing reads tracked blocks in place any more.
/// The exit check passes `release = false`: the process is ending, and
/// freeing thousands of blocks into arenas that still-running threads
/// hammer would only delay it.
pub fn end(release: bool) {
    ACTIVE.store(false, Ordering::SeqCst);
    if !release {
        return;
    }
    let mut p = HEAD.swap(0, Ordering::AcqRel);
    while p != 0 {
        // SAFETY: a listed block holds its link in its first word; taking
        // the list made its blocks ours alone.
        let next = unsafe { (p as *const usize).read() };
        // SAFETY: a deferred block is a live glibc block nobody else uses.
        unsafe { real::free(p as *mut u8) };
        p = next;
    }
}

/// In a fork child: a scan that was running in the parent is not running
/// here. The list stays (its blocks are valid) and goes at the next end.
pub fn after_fork_in_child() {
    ACTIVE.store(false, Ordering::SeqCst);
    UNREGISTERED_IN_FREE.store(0, Ordering::Relaxed);
}
