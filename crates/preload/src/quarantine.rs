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
//! ## Why no free can release a block the scanner reads
//!
//! ```text
//! free (fast side)                          scanner (slow side)
//! unlink from the index (RMW, SeqCst)       ACTIVE = true (SeqCst), then a SeqCst fence
//! if ACTIVE (SeqCst load): defer            ... find blocks through the index, read them ...
//! else: glibc free
//! ```
//!
//! This is the store-buffering (Dekker) pattern with sequentially
//! consistent operations on both sides, so the two sides cannot both miss
//! each other: either the free sees ACTIVE and defers, or its unlink is
//! visible to the scanner, which then never finds the block through the
//! index, and the index is the scanner's only way to a heap block. A free
//! that missed the switch may thus still run inside glibc during the scan,
//! but on a block the scan cannot reach; glibc's own trimming after it only
//! returns free memory, never a live block's. No waiting for such frees
//! (kfree_rcu's grace period) is needed at the start of a scan, and the
//! free path pays one load (on x86 the RMW is the `lock and` it always was
//! and a SeqCst load is a plain load).
//!
//! A block the scan has already read whole, and will not read again
//! (`Reach::Scanned` from the index, see `PageMap::set_scanned`), is
//! released at once instead: the marker's reads happen before its
//! Release of the flag, which the free's unmark acquires.
//!
//! The list links blocks through the last word of their trailer (the
//! stack id and time, which a freed block no longer needs), so a deferred
//! block's own contents stay as the program left them: a live scan still
//! reads them (`check::gray_freed_blocks`) for pointers the program moved
//! out of the block just before freeing it. A free that saw ACTIVE
//! just before [`end`] cleared it may push after `end` took the list: its
//! block simply waits in the next list (released by the next scan's end),
//! which is harmless; no block is ever released while a scan that could
//! read it is running, because `end` only runs once the reading is over.

use core::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};

use leakscan_core::backing::BackedVec;
use leakscan_core::index::Reach;
use leakscan_platform::mem::MmapBacking;
use leakscan_platform::real;

use crate::trailer::TRAILER;

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Head of the list of deferred blocks (0 = empty).
static HEAD: AtomicUsize = AtomicUsize::new(0);
/// Blocks larger than this have their pages discarded when deferred.
pub const DISCARD_FROM: usize = 64 * 1024;

/// Blocks and bytes deferred since the last [`begin`]: a live scan whose
/// quarantine outgrows its budget gives up (`check::Mode::Live`).
static DEFERRED_BLOCKS: AtomicUsize = AtomicUsize::new(0);
static DEFERRED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Whether a block the caller has just unlinked from the index must go to
/// [`defer`] instead of glibc (the SeqCst half of the pairing above).
#[inline(always)]
pub fn deferring() -> bool {
    ACTIVE.load(Ordering::SeqCst)
}

/// Where a deferred block keeps its link: the last word of its trailer
/// (8-aligned: glibc's usable sizes are 8 mod 16 past a 16-aligned pointer).
///
/// # Safety
/// `p` is a live glibc block that carried a trailer.
unsafe fn link(p: usize) -> *mut usize {
    // SAFETY: per the contract the chunk header is readable.
    (p + unsafe { real::usable_size(p as *const u8) } - 8) as *mut usize
}

/// Keep `p` (a tracked block already unlinked from the index) until the
/// scan ends.
///
/// # Safety
/// `p` is a live glibc block with a trailer that nobody else will use or
/// free.
pub unsafe fn defer(p: *mut u8) {
    let reached = match crate::state::INDEX.unmark(p as usize) {
        // The check has read it and will not again: nothing to wait for.
        // Only while a check is marking: outside, the flags are a past
        // check's (a fork child's parent's, say), and `dump` or `stats` may
        // be reading the block.
        Reach::Scanned if MARKING.load(Ordering::Acquire) => {
            // SAFETY: per the contract, p is ours to release.
            return unsafe { real::free(p) };
        }
        Reach::Scanned | Reach::Reached => true,
        Reach::Unreached => false,
    };
    if reached {
        // SAFETY: p is a tracked block with a written trailer, ours now.
        unsafe { crate::trailer::add_flags(p as usize, crate::trailer::REACHED) };
    }
    DEFERRED_BLOCKS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: p is a live glibc block.
    let size = unsafe { real::usable_size(p) };
    // A reached block may still wait in a gray stack: its pages stay.
    let held = if size > DISCARD_FROM && !reached {
        // A big block must stay allocated (mapped, for an mmapped chunk)
        // while the scanner may read it, but its pages can go back to the
        // kernel now, as glibc's own malloc_trim does for free chunks. The
        // first page (the chunk header and what a scan of a freed block
        // reads) and the last (the trailer with our link) stay; the
        // discarded pages lie inside the block, never on a chunk header.
        let keep_tail = size - TRAILER;
        // SAFETY: the block is ours alone; the discarded range lies inside
        // it, between its first page and its trailer.
        unsafe { leakscan_platform::mem::discard(p as usize + 4096, keep_tail - 4096) };
        4096 + 4096 + size % 4096
    } else {
        size
    };
    DEFERRED_BYTES.fetch_add(held, Ordering::Relaxed);
    // SAFETY: p carried a trailer.
    let link = unsafe { link(p as usize) };
    let mut head = HEAD.load(Ordering::Relaxed);
    loop {
        // SAFETY: the trailer's last word is ours now.
        unsafe { link.write(head) };
        match HEAD.compare_exchange_weak(head, p as usize, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// Set while a check marks with marks it cleared itself: a block the
/// index says was scanned ([`Reach::Scanned`]) may then be freed at once.
static MARKING: AtomicBool = AtomicBool::new(false);

/// A check has cleared the index's marks and starts marking (`true`), or
/// is done reading blocks (`false`, before [`end`]).
pub fn set_marking(on: bool) {
    MARKING.store(on, Ordering::Release);
}

/// Start deferring frees. Call before reading any block in place.
pub fn begin() {
    DEFERRED_BLOCKS.store(0, Ordering::Relaxed);
    DEFERRED_BYTES.store(0, Ordering::Relaxed);
    ACTIVE.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
}

/// Call `f(p)` for every block deferred so far. Only [`end`] removes
/// blocks from the list, and it never runs during a scan, so the walk is
/// safe while other threads keep pushing (it just misses blocks pushed
/// after it started).
pub fn for_each_deferred(mut f: impl FnMut(usize)) {
    let mut p = HEAD.load(Ordering::Acquire);
    while p != 0 {
        f(p);
        // SAFETY: a listed block holds its link in its trailer and stays
        // listed (and live) until `end`, which the caller does not overlap.
        p = unsafe { link(p).read() };
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
    // Freed in address order, neighbours coalesce into a few large free
    // chunks at once: each free is cheaper (the previous chunk's header is
    // still in cache), this thread holds the program's arena locks for less
    // time, and the program's next mallocs split a few large chunks instead
    // of sorting hundreds of thousands of small ones out of the unsorted bin.
    let mut sorted = BackedVec::<usize, MmapBacking>::new();
    while p != 0 {
        // SAFETY: a listed block holds its link in its trailer; taking the
        // list made its blocks ours alone.
        let next = unsafe { link(p).read() };
        if !sorted.push(p) {
            // Out of memory for the array: free as listed.
            // SAFETY: a deferred block is a live glibc block nobody else uses.
            unsafe { real::free(p as *mut u8) };
        }
        p = next;
    }
    sorted.as_mut_slice().sort_unstable();
    for &p in sorted.as_slice() {
        // SAFETY: as above.
        unsafe { real::free(p as *mut u8) };
    }
}

/// In a fork child: a scan that was running in the parent is not running
/// here. The list stays (its blocks are valid) and goes at the next end.
pub fn after_fork_in_child() {
    MARKING.store(false, Ordering::Release);
    ACTIVE.store(false, Ordering::SeqCst);
}
