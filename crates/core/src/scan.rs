//! The mark phase and leak classification: kmemleak's algorithm with
//! LeakSanitizer's direct/indirect distinction.
//!
//! ## Colours
//!
//! A block's colour is derived from the index's mark sets:
//!
//! ```text
//! white  — not Reachable: nothing found points to it (yet)
//! gray   — Reachable and on the gray stack: contents not scanned yet
//! black  — Reachable and scanned
//! ```
//!
//! Transitions: white → gray when a scanned word points into the block
//! (start or interior); gray → black when its words have been scanned.
//! Nothing goes back within a scan. What is still white at the end is
//! unreferenced: a leak.
//!
//! ## Pipeline (each step one call, driven by the agent)
//!
//! 1. clear the Reachable marks ([`PageMap::clear_marks`]);
//! 2. scan the roots word by word ([`Marker::scan_words`] for memory copied
//!    out of other threads, [`Marker::scan_range`] for memory read in place),
//!    graying every block a word points into;
//! 3. drain the gray stack, scanning each gray block ([`Marker::drain`]),
//!    or do so with several markers at once, one per thread, sharing gray
//!    work through a [`MarkPool`] ([`Marker::drain_shared`]);
//! 4. classify the white blocks into direct and indirect leaks ([`classify`]).
//!
//! ## Direct and indirect
//!
//! As LeakSanitizer defines them: a leaked block pointed to by another leaked
//! block is *indirect*; one that no leaked block points to is *direct*. A
//! cycle that nothing outside points to would then be all indirect and show
//! no direct leak at all, which hides the culprit; so after the usual rule
//! every leaked block not reachable from a direct leak is in such a cycle,
//! and the first of each one (in iteration order) is reported as direct.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::backing::{BackedVec, Backing};
use crate::index::{Bounds, PageMap};

/// Bytes of a gray block scanned before its children are (see `drain`).
const SCAN_CHUNK: usize = 64 * 1024;
/// The same with other markers around: the scan of one piece of a big
/// block is the longest a marker goes without looking whether another
/// waits for work (a piece of 2048 pointers takes some 100 µs).
const SHARED_SCAN_CHUNK: usize = 16 * 1024;

/// Gray blocks in flight between prefetch and scan.
const PREFETCH_RING: usize = 16;

/// The size of a gray block marked through a pointer to its start, whose
/// extent is not read yet.
const EXTENT_UNKNOWN: usize = usize::MAX;

use crate::prefetch_read as prefetch;

/// Words on thread stacks that are multiples of this count only as
/// pointers to a block starting there (see `Marker::consider`).
const PAGE_ALIGNED: usize = 4096;

/// Values below this are never pointers (small integers, flags); as in
/// LeakSanitizer's `MaybeUserPointer`.
const MIN_POINTER: usize = 1 << 14;

/// A chunk of the gray stack, in backing memory (never the program's heap:
/// the mark phase may run while other threads are stopped holding malloc's
/// locks).
#[repr(C)]
struct GrayChunk {
    prev: *mut GrayChunk,
    len: usize,
    items: [(usize, usize); GRAY_ITEMS],
}
const GRAY_CHUNK_BYTES: usize = 64 * 1024;
const GRAY_ITEMS: usize = (GRAY_CHUNK_BYTES - 16) / 16;

/// A LIFO of `(start, size)` ranges still to scan. Emptied chunks are kept
/// for reuse until the stack is dropped; their memory is leakscan's own and
/// excluded from roots.
pub struct GrayStack<B: Backing> {
    top: *mut GrayChunk,
    spare: *mut GrayChunk,
    /// Set when backing memory ran out; the scan is then incomplete.
    overflowed: bool,
    _backing: core::marker::PhantomData<B>,
}

impl<B: Backing> Default for GrayStack<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backing> GrayStack<B> {
    pub const fn new() -> Self {
        GrayStack {
            top: core::ptr::null_mut(),
            spare: core::ptr::null_mut(),
            overflowed: false,
            _backing: core::marker::PhantomData,
        }
    }

    #[inline]
    pub fn push(&mut self, start: usize, size: usize) {
        // SAFETY: `top` is null or a chunk we own exclusively.
        let full = unsafe { self.top.as_ref() }.is_none_or(|c| c.len == GRAY_ITEMS);
        if full && !self.grow() {
            self.overflowed = true;
            return;
        }
        // SAFETY: grow() or the check above guarantees a chunk with room.
        let top = unsafe { &mut *self.top };
        top.items[top.len] = (start, size);
        top.len += 1;
    }

    #[cold]
    fn grow(&mut self) -> bool {
        let Some(chunk) = self.fresh_chunk() else {
            return false;
        };
        // SAFETY: `chunk` is a chunk-sized, suitably aligned region we own.
        unsafe {
            (*chunk).prev = self.top;
            (*chunk).len = 0;
        }
        self.top = chunk;
        true
    }

    #[inline]
    pub fn pop(&mut self) -> Option<(usize, usize)> {
        loop {
            // SAFETY: `top` is null or a chunk we own exclusively.
            let top = unsafe { self.top.as_mut() }?;
            if top.len > 0 {
                top.len -= 1;
                return Some(top.items[top.len]);
            }
            let empty = self.top;
            self.top = top.prev;
            // SAFETY: `empty` is ours; park it on the spare list.
            unsafe { (*empty).prev = self.spare };
            self.spare = empty;
        }
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// A fresh or spare chunk, unlinked (`None` when backing memory ran out).
    fn fresh_chunk(&mut self) -> Option<*mut GrayChunk> {
        if self.spare.is_null() {
            let p = B::alloc_zeroed(GRAY_CHUNK_BYTES)?;
            return Some(p.as_ptr() as *mut GrayChunk);
        }
        let c = self.spare;
        // SAFETY: spare chunks are ours; `prev` links the spare list.
        self.spare = unsafe { (*c).prev };
        Some(c)
    }

    /// Take the older part of the stack off for another marker: the chunk
    /// under the top one if there is one, else the older half of the top
    /// chunk moved into a chunk of its own, or the top chunk itself if all
    /// it holds is the rest of a big block. `None` if fewer than two items
    /// are left (or no chunk could be had). The chunk is no longer ours.
    fn split_off(&mut self) -> Option<*mut GrayChunk> {
        // SAFETY: `top` is null or a chunk we own exclusively.
        let top = unsafe { self.top.as_mut() }?;
        // SAFETY: `prev` is null or a chunk we own exclusively.
        if let Some(below) = unsafe { top.prev.as_mut() } {
            if below.len > 0 {
                top.prev = below.prev;
                below.prev = core::ptr::null_mut();
                return Some(below);
            }
        }
        let len = top.len;
        if len == 1 && top.items[0].1 > SHARED_SCAN_CHUNK {
            // The unscanned rest of a big block: worth a marker of its own.
            let whole = self.top;
            self.top = top.prev;
            top.prev = core::ptr::null_mut();
            return Some(whole);
        }
        if len < 2 {
            return None;
        }
        let half = len / 2;
        let fresh = self.fresh_chunk()?;
        // SAFETY: `fresh` is a whole chunk we own, distinct from `top`
        // (re-borrowed here: `fresh_chunk` needed `self`).
        unsafe {
            let (top, fresh) = (&mut *self.top, &mut *fresh);
            fresh.items[..half].copy_from_slice(&top.items[..half]);
            fresh.len = half;
            fresh.prev = core::ptr::null_mut();
            top.items.copy_within(half..len, 0);
            top.len = len - half;
            Some(fresh)
        }
    }

    /// Take over `chunk` (from [`Self::split_off`] of some stack of the same
    /// backing) and its items.
    ///
    /// # Safety
    /// `chunk` is a gray chunk nobody else uses any more.
    unsafe fn adopt(&mut self, chunk: *mut GrayChunk) {
        // An emptied top chunk goes to the spare list rather than lie under
        // the new one.
        // SAFETY: `top` is null or a chunk we own exclusively.
        if let Some(top) = unsafe { self.top.as_mut() } {
            if top.len == 0 {
                let empty = self.top;
                self.top = top.prev;
                top.prev = self.spare;
                self.spare = empty;
            }
        }
        // SAFETY: per the contract the chunk is ours now.
        unsafe { (*chunk).prev = self.top };
        self.top = chunk;
    }
}

impl<B: Backing> Drop for GrayStack<B> {
    fn drop(&mut self) {
        for mut chunk in [self.top, self.spare] {
            while let Some(c) = core::ptr::NonNull::new(chunk) {
                // SAFETY: every chunk on either list came from alloc_zeroed
                // with GRAY_CHUNK_BYTES and is ours alone.
                unsafe {
                    chunk = (*c.as_ptr()).prev;
                    B::release(c.cast(), GRAY_CHUNK_BYTES);
                }
            }
        }
    }
}

/// The words of `[addr, addr + len)`, 8-aligned, as atomics: the program
/// may write them while we read (a concurrent scan), and relaxed atomic
/// loads make that defined behaviour.
///
/// # Safety
/// The range must stay mapped and readable while the slice is used.
#[inline(always)]
unsafe fn words<'m>(addr: usize, len: usize) -> &'m [AtomicUsize] {
    let first = (addr + 7) & !7;
    let end = addr.saturating_add(len) & !7;
    if end <= first {
        return &[];
    }
    // SAFETY: per the contract the aligned range is readable.
    unsafe { core::slice::from_raw_parts(first as *const AtomicUsize, (end - first) / 8) }
}

/// The start of the tracked block `word` may point into, after the cheap
/// rejections: small integers, values outside the heap, no block there.
#[inline(always)]
fn candidate<B: Backing>(index: &PageMap<B>, bounds: &Bounds, word: usize) -> Option<usize> {
    if word < MIN_POINTER || !bounds.contains(word) {
        return None;
    }
    index.candidate(word)
}

/// What the marker needs to know about a tracked block: its size (for
/// interior pointers) and whether its contents may hold pointers (kmemleak's
/// `no_scan`: a block annotated so is marked but never scanned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub size: usize,
    pub scan: bool,
}

impl Extent {
    /// A block whose contents are scanned.
    pub fn scanned(size: usize) -> Extent {
        Extent { size, scan: true }
    }
}

/// Marks blocks reached from the ranges it is given.
pub struct Marker<'a, B: Backing, S: Fn(usize) -> Extent> {
    index: &'a PageMap<B>,
    size_of: S,
    bounds: Bounds,
    gray: GrayStack<B>,
    scanned_bytes: u64,
    marked_blocks: u64,
    marked_bytes: u64,
    /// Made by [`Self::for_pool`]: joins the pool's mark when it starts
    /// draining (the first marker is counted in by the pool from the start).
    helper: bool,
    /// Scanning a thread's stack or registers: a page-aligned word there
    /// counts only as a pointer to a block starting on it
    /// ([`Self::set_stack_words`]).
    stack_words: bool,
    /// Record in the index each block read whole ([`PageMap::set_scanned`]),
    /// so a free during the scan can release it at once
    /// ([`Self::set_record_scanned`]).
    record_scanned: bool,
}

impl<'a, B: Backing, S: Fn(usize) -> Extent> Marker<'a, B, S> {
    /// `size_of(start)` must return the extent of the tracked block starting
    /// at `start`.
    pub fn new(index: &'a PageMap<B>, size_of: S) -> Self {
        Marker {
            index,
            size_of,
            bounds: index.bounds(),
            gray: GrayStack::new(),
            scanned_bytes: 0,
            marked_blocks: 0,
            marked_bytes: 0,
            helper: false,
            stack_words: false,
            record_scanned: false,
        }
    }

    /// Whether the words scanned from now on come from a thread's stack or
    /// registers, where a page-aligned word is taken as a pointer only to
    /// a block starting there: page addresses are what allocators (glibc's
    /// brk bookkeeping) and leakscan's own index work with, and copies of
    /// them linger in dead stack frames for seconds; as interior pointers
    /// they would keep whichever block straddles that page alive. Anywhere
    /// else (globals, the program's mappings, blocks) a page-aligned word
    /// is an interior pointer like any other: glibc's loader keeps its
    /// `_dl_find_object` segments through pointers aligned up to 128 bytes
    /// inside malloc'd blocks, which land on a page boundary one time in 32.
    pub fn set_stack_words(&mut self, on: bool) {
        self.stack_words = on;
    }

    /// Record each block read whole in the index (one more atomic
    /// operation per block): worth it where the program keeps freeing
    /// during the mark (a concurrent scan), not where it is stopped.
    /// Helpers of a pool made afterwards do the same.
    pub fn set_record_scanned(&mut self, on: bool) {
        self.record_scanned = on;
    }

    /// Bytes of roots and blocks scanned so far.
    pub fn scanned_bytes(&self) -> u64 {
        self.scanned_bytes
    }

    /// Blocks newly marked by this marker, and their bytes.
    pub fn marked(&self) -> (u64, u64) {
        (self.marked_blocks, self.marked_bytes)
    }

    /// Whether the gray stack ran out of memory (the result is then not exact).
    pub fn overflowed(&self) -> bool {
        self.gray.overflowed()
    }

    #[inline(always)]
    fn push_marked(&mut self, start: usize, extent: Extent) {
        self.marked_blocks += 1;
        self.marked_bytes += extent.size as u64;
        if extent.scan {
            self.gray.push(start, extent.size);
        }
    }

    /// Gray the block at `start` by hand, as if a root pointed to it (e.g.
    /// a block registered as not a leak).
    pub fn gray_block(&mut self, start: usize) {
        if self.index.mark(start) {
            let extent = (self.size_of)(start);
            self.push_marked(start, extent);
        }
    }

    #[inline(always)]
    fn consider(&mut self, word: usize) {
        if word < MIN_POINTER || !self.bounds.contains(word) {
            return;
        }
        if self.stack_words && word.is_multiple_of(PAGE_ALIGNED) && !self.index.is_start(word) {
            // A page address on a stack, inside a block that straddles the
            // page: most likely a stale copy (see `set_stack_words`). A
            // block starting on the page still counts.
            return;
        }
        // The index asks for the size at most once, for the block it marks;
        // keep the scan flag of that answer.
        let scan = core::cell::Cell::new(true);
        let size_of = |s: usize| {
            let e = (self.size_of)(s);
            scan.set(e.scan);
            e.size
        };
        match self.index.mark_containing(word, size_of) {
            Some((start, Some(size))) => {
                let scan = scan.get();
                self.push_marked(start, Extent { size, scan });
            }
            // A pointer to the start: the block's extent is read when it
            // leaves the gray stack, after a prefetch (see `drain_local`).
            Some((start, None)) => {
                self.marked_blocks += 1;
                self.gray.push(start, EXTENT_UNKNOWN);
            }
            None => {}
        }
    }

    /// Scan words already copied into leakscan's memory.
    pub fn scan_words(&mut self, words: &[usize]) {
        self.scanned_bytes += (words.len() * 8) as u64;
        for &w in words {
            self.consider(w);
        }
    }

    /// Scan `[addr, addr + len)` in place, word-aligned.
    ///
    /// # Safety
    /// The range must stay mapped and readable for the duration of the call.
    pub unsafe fn scan_range(&mut self, addr: usize, len: usize) {
        // SAFETY: forwarded contract.
        let words = unsafe { words(addr, len) };
        self.scanned_bytes += (words.len() * 8) as u64;
        for w in words {
            self.consider(w.load(Ordering::Relaxed));
        }
    }

    /// Scan every gray block until none is left.
    ///
    /// # Safety
    /// Every tracked block must stay readable while this runs (other threads
    /// stopped, or frees deferred).
    pub unsafe fn drain(&mut self) {
        // SAFETY: forwarded contract.
        unsafe { self.drain_until(|| false) };
    }

    /// As [`Self::drain`], but asks `give_up()` every few thousand blocks
    /// and stops early when it says so (a concurrent scan whose quarantine
    /// grew too large, or a process that started to exit). Returns false if
    /// it gave up: the marks are then incomplete.
    ///
    /// # Safety
    /// As for [`Self::drain`].
    pub unsafe fn drain_until(&mut self, mut give_up: impl FnMut() -> bool) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.drain_local(None, &mut give_up) }
    }

    /// As [`Self::drain_until`], as one of several markers sharing `pool`:
    /// gray work moves between them through the pool, and this returns
    /// once no marker has any left (true), or once any of them gave up
    /// (false: the marks are incomplete). `pause(n)` is called while this
    /// marker waits for work, `n` counting the rounds so far (spin, then
    /// yield the CPU).
    ///
    /// The first marker is the one the pool was made for ([`MarkPool::new`]
    /// counts it in, working, from the start, so a helper that comes first
    /// cannot take the mark for over before it began); helpers are made by
    /// [`Self::for_pool`], with the pool's bounds. Afterwards a helper
    /// hands its counters in ([`Self::hand_in`]) and the first marker takes
    /// them ([`Self::absorb`]) once every helper has returned.
    ///
    /// # Safety
    /// As for [`Self::drain`], until every marker sharing the pool has
    /// returned.
    pub unsafe fn drain_shared(
        &mut self,
        pool: &MarkPool<B>,
        mut give_up: impl FnMut() -> bool,
        mut pause: impl FnMut(u32),
    ) -> bool {
        if self.helper && !pool.join(&mut pause) {
            return !pool.aborted();
        }
        loop {
            // Working: scan our own gray blocks, sharing when asked.
            // SAFETY: forwarded contract.
            if !unsafe { self.drain_local(Some(pool), &mut give_up) } {
                pool.abort();
                return false;
            }
            // Idle: take donated work, or learn that the mark is over.
            match pool.wait_for_work(&mut pause) {
                // SAFETY: a chunk taken from the pool is ours alone.
                Some(chunk) => unsafe { self.gray.adopt(chunk) },
                None => return !pool.aborted(),
            }
        }
    }

    /// A marker that joins `pool`'s mark with the pool's bounds.
    pub fn for_pool(index: &'a PageMap<B>, size_of: S, pool: &MarkPool<B>) -> Self {
        Marker {
            bounds: pool.bounds,
            helper: true,
            record_scanned: pool.record_scanned,
            ..Marker::new(index, size_of)
        }
    }

    /// Add this (helper) marker's counters to the pool's totals.
    pub fn hand_in(&self, pool: &MarkPool<B>) {
        let t = &pool.totals;
        t.scanned_bytes
            .fetch_add(self.scanned_bytes, Ordering::Relaxed);
        t.marked_blocks
            .fetch_add(self.marked_blocks, Ordering::Relaxed);
        t.marked_bytes
            .fetch_add(self.marked_bytes, Ordering::Relaxed);
        if self.overflowed() {
            t.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// Add the counters the helpers handed in to this marker's, once they
    /// all returned from [`Self::drain_shared`] and handed in.
    pub fn absorb(&mut self, pool: &MarkPool<B>) {
        let t = &pool.totals;
        self.scanned_bytes += t.scanned_bytes.swap(0, Ordering::Relaxed);
        self.marked_blocks += t.marked_blocks.swap(0, Ordering::Relaxed);
        self.marked_bytes += t.marked_bytes.swap(0, Ordering::Relaxed);
        if t.overflowed.load(Ordering::Relaxed) {
            self.gray.overflowed = true;
        }
    }

    /// Scan gray blocks until none is left here; with a pool, give some to
    /// it when another marker is waiting. False if it gave up.
    ///
    /// # Safety
    /// As for [`Self::drain`].
    #[inline(always)]
    unsafe fn drain_local(
        &mut self,
        pool: Option<&MarkPool<B>>,
        give_up: &mut impl FnMut() -> bool,
    ) -> bool {
        let mut budget = GIVE_UP_CHECK;
        let mut share_check = SHARE_CHECK;
        let piece = if pool.is_some() {
            SHARED_SCAN_CHUNK
        } else {
            SCAN_CHUNK
        };
        // Prefetch on gray (Boehm, ISMM 2000): a popped block waits in a
        // small ring while its first cache lines load, so the scan of one
        // block overlaps the memory latency of the next few.
        let mut ring = [(0usize, 0usize); PREFETCH_RING];
        let (mut head, mut queued) = (0, 0);
        loop {
            if queued < PREFETCH_RING {
                if let Some((start, size)) = self.gray.pop() {
                    if size == EXTENT_UNKNOWN {
                        // The chunk header, for the extent (`size_of`).
                        prefetch(start - 8);
                    }
                    prefetch(start);
                    if size > 64 {
                        prefetch(start + 64);
                    }
                    ring[(head + queued) % PREFETCH_RING] = (start, size);
                    queued += 1;
                    continue;
                }
            }
            if queued == 0 {
                break;
            }
            budget -= 1;
            if budget == 0 {
                if give_up() || pool.is_some_and(|p| p.aborted()) {
                    return false;
                }
                budget = GIVE_UP_CHECK;
            }
            if let Some(pool) = pool {
                share_check -= 1;
                if share_check == 0 {
                    share_check = SHARE_CHECK;
                    if pool.hungry() {
                        self.share(pool);
                    }
                }
            }
            let (start, mut size) = ring[head];
            head = (head + 1) % PREFETCH_RING;
            queued -= 1;
            if size == EXTENT_UNKNOWN {
                let extent = (self.size_of)(start);
                self.marked_bytes += extent.size as u64;
                if !extent.scan {
                    continue;
                }
                size = extent.size;
            }
            let whole = size <= piece;
            if size > piece {
                // A big block (an array of a million pointers, say) would
                // push all its children at once; scanning it a chunk at a
                // time keeps the gray stack, and leakscan's memory, small.
                self.gray.push(start + piece, size - piece);
                size = piece;
                // Let a waiting marker scan the rest meanwhile.
                if let Some(pool) = pool.filter(|p| p.hungry()) {
                    self.share(pool);
                }
            }
            // SAFETY: a tracked block is readable per this fn's contract.
            unsafe { self.scan_range(start, size) };
            if whole && self.record_scanned {
                // Read once and for all (the last piece of a big block is
                // not its start: the index ignores it).
                self.index.set_scanned(start);
            }
        }
        true
    }

    /// Give the older part of our gray stack to the pool (a waiting marker
    /// takes it). If the pool is busy this time, keep it: we ask again soon.
    #[cold]
    fn share(&mut self, pool: &MarkPool<B>) {
        let Some(chunk) = self.gray.split_off() else {
            return;
        };
        if !pool.donate(chunk) {
            // SAFETY: the pool refused it, so the chunk is still ours.
            unsafe { self.gray.adopt(chunk) };
        }
    }
}

/// Gray blocks scanned between two calls of `drain_until`'s `give_up`.
const GIVE_UP_CHECK: u32 = 4096;

/// Gray blocks scanned between two looks at whether another marker waits
/// for work (two relaxed loads of a line that is rarely written).
const SHARE_CHECK: u32 = 32;

/// Keeps a group of atomics on cache lines of its own, so markers polling
/// one group do not slow the writers of another.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> core::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What the pool's lock protects. The atomics are written only with the
/// lock held; markers read them without it as hints, and decide only
/// under the lock.
struct Shared {
    /// 0 free, 1 held: a spinlock; critical sections are a few stores.
    lock: core::sync::atomic::AtomicU32,
    /// Donated chunks, linked through `prev`.
    chunks: AtomicPtr<GrayChunk>,
}

struct Hints {
    /// Chunks in the pool.
    available: AtomicUsize,
    /// Markers that joined the mark, and those of them without work.
    joined: AtomicUsize,
    idle: AtomicUsize,
    /// Every marker is idle and the pool empty: the mark is over.
    done: AtomicBool,
    /// A marker gave up: the mark is over and incomplete.
    aborted: AtomicBool,
}

/// Counters of helper markers, handed in when they are done.
struct Totals {
    scanned_bytes: AtomicU64,
    marked_blocks: AtomicU64,
    marked_bytes: AtomicU64,
    overflowed: AtomicBool,
}

/// Gray work shared by the markers of one mark phase.
///
/// ## How markers share work
///
/// Marks are atomic in the index (`fetch_or`), so any number of markers
/// may scan at once: whichever marks a block first scans it, and each
/// block is scanned once. Each marker keeps its own gray stack; a marker
/// whose stack runs dry waits here, and a busy marker that sees one waiting
/// and the pool empty (checked every [`SHARE_CHECK`] blocks) donates the
/// older part of its stack — a whole 64 KiB chunk of it, or half of its
/// only chunk. A big block's unscanned rest sits on the gray stack like
/// any item, so it is shared too.
///
/// ## Marker states
///
/// ```text
/// working --stack and pool empty--> idle --took a chunk--> working
/// idle --all idle and pool empty--> done
/// any --gave up, or saw `aborted`--> done (incomplete)
/// ```
///
/// ## Lock story
///
/// One spinlock guards the chunk list and the `joined`/`idle` counts, so
/// that "every marker that joined is idle and the pool is empty" is read
/// as one state: a marker counts as idle only while it holds no work, and
/// only a working marker donates, so once that state is seen nobody can
/// make new work and the mark is complete. Nobody ever waits on the lock
/// while holding it or anything else; donors only `try_lock` (a busy pool
/// means "share later"). A marker may join late, even after the end: it
/// then learns `done` at once.
pub struct MarkPool<B: Backing> {
    shared: Padded<Shared>,
    hints: Padded<Hints>,
    totals: Padded<Totals>,
    bounds: Bounds,
    record_scanned: bool,
    _backing: core::marker::PhantomData<B>,
}

// SAFETY: all state is atomic; the chunks the list points to are owned by
// the pool and handed to exactly one marker under the lock.
unsafe impl<B: Backing> Sync for MarkPool<B> {}
// SAFETY: as above; chunks are backing memory, not tied to a thread.
unsafe impl<B: Backing> Send for MarkPool<B> {}

impl<B: Backing> MarkPool<B> {
    /// An empty pool for the mark of `first` (counted in as working, until
    /// it calls [`Marker::drain_shared`] and runs out of work); helpers
    /// pre-filter words with its bounds.
    pub fn new<S: Fn(usize) -> Extent>(first: &Marker<'_, B, S>) -> Self {
        debug_assert!(!first.helper, "a pool is made for its first marker");
        MarkPool {
            shared: Padded(Shared {
                lock: core::sync::atomic::AtomicU32::new(0),
                chunks: AtomicPtr::new(core::ptr::null_mut()),
            }),
            hints: Padded(Hints {
                available: AtomicUsize::new(0),
                joined: AtomicUsize::new(1),
                idle: AtomicUsize::new(0),
                done: AtomicBool::new(false),
                aborted: AtomicBool::new(false),
            }),
            totals: Padded(Totals {
                scanned_bytes: AtomicU64::new(0),
                marked_blocks: AtomicU64::new(0),
                marked_bytes: AtomicU64::new(0),
                overflowed: AtomicBool::new(false),
            }),
            bounds: first.bounds,
            record_scanned: first.record_scanned,
            _backing: core::marker::PhantomData,
        }
    }

    fn try_lock(&self) -> bool {
        let lock = &self.shared.lock;
        lock.load(Ordering::Relaxed) == 0
            && lock
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    fn lock(&self, pause: &mut impl FnMut(u32)) {
        let mut round = 0;
        while !self.try_lock() {
            pause(round);
            round += 1;
        }
    }

    fn unlock(&self) {
        self.shared.lock.store(0, Ordering::Release);
    }

    /// Whether a marker gave up.
    pub fn aborted(&self) -> bool {
        self.hints.aborted.load(Ordering::Acquire)
    }

    fn abort(&self) {
        self.hints.aborted.store(true, Ordering::Release);
    }

    /// Whether the mark is over (every marker idle, nothing left; or a
    /// marker gave up).
    pub fn finished(&self) -> bool {
        self.hints.done.load(Ordering::Acquire) || self.aborted()
    }

    /// A marker waits and the pool has nothing for it (a hint).
    #[inline(always)]
    fn hungry(&self) -> bool {
        self.hints.idle.load(Ordering::Relaxed) > 0
            && self.hints.available.load(Ordering::Relaxed) == 0
    }

    /// Count a marker in, working; false if the mark is already over.
    fn join(&self, pause: &mut impl FnMut(u32)) -> bool {
        self.lock(pause);
        let open = !self.finished();
        if open {
            let h = &self.hints;
            h.joined
                .store(h.joined.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        self.unlock();
        open
    }

    /// Put `chunk` in the pool; false (the chunk stays the caller's) if the
    /// lock is busy.
    fn donate(&self, chunk: *mut GrayChunk) -> bool {
        if !self.try_lock() {
            return false;
        }
        let list = &self.shared.chunks;
        // SAFETY: the caller gives the chunk up; we hold the lock over the
        // list.
        unsafe { (*chunk).prev = list.load(Ordering::Relaxed) };
        list.store(chunk, Ordering::Relaxed);
        let h = &self.hints;
        h.available
            .store(h.available.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.unlock();
        true
    }

    /// Take a chunk if there is one; `None` if not. Lock held.
    fn take_locked(&self) -> Option<*mut GrayChunk> {
        let list = &self.shared.chunks;
        let chunk = list.load(Ordering::Relaxed);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: listed chunks belong to the pool; the lock is held.
        list.store(unsafe { (*chunk).prev }, Ordering::Relaxed);
        let h = &self.hints;
        h.available
            .store(h.available.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        Some(chunk)
    }

    /// The caller ran out of work: wait until a chunk can be taken (then
    /// it is the caller's), or the mark is over (`None`).
    fn wait_for_work(&self, pause: &mut impl FnMut(u32)) -> Option<*mut GrayChunk> {
        let h = &self.hints;
        self.lock(pause);
        if let Some(chunk) = self.take_locked() {
            self.unlock();
            return Some(chunk);
        }
        let idle = h.idle.load(Ordering::Relaxed) + 1;
        h.idle.store(idle, Ordering::Relaxed);
        if idle == h.joined.load(Ordering::Relaxed) {
            h.done.store(true, Ordering::Release);
        }
        self.unlock();
        let mut round = 0;
        loop {
            if self.finished() {
                return None;
            }
            if h.available.load(Ordering::Relaxed) > 0 && self.try_lock() {
                if let Some(chunk) = self.take_locked() {
                    h.idle
                        .store(h.idle.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                    self.unlock();
                    return Some(chunk);
                }
                self.unlock();
            }
            pause(round);
            round = round.saturating_add(1);
        }
    }
}

impl<B: Backing> Drop for MarkPool<B> {
    fn drop(&mut self) {
        // Chunks left behind by a mark that gave up.
        let mut chunk = *self.shared.0.chunks.get_mut();
        while let Some(c) = core::ptr::NonNull::new(chunk) {
            // SAFETY: listed chunks came from alloc_zeroed with
            // GRAY_CHUNK_BYTES and belong to the pool alone.
            unsafe {
                chunk = (*c.as_ptr()).prev;
                B::release(c.cast(), GRAY_CHUNK_BYTES);
            }
        }
    }
}

/// A white (unreached) block during classification.
#[derive(Debug, Clone, Copy)]
struct White {
    start: usize,
    size: usize,
    /// Its contents may hold pointers (not `no_scan`).
    scan: bool,
    /// Pointed to by another white block: an indirect leak.
    referenced: bool,
    /// Reached while flooding from the direct leaks.
    visited: bool,
    /// Reachable from an excused block: never a leak.
    excused: bool,
}

/// Which flag a flood sets.
#[derive(Clone, Copy)]
enum Flood {
    Visited,
    Excused,
}

impl White {
    fn flag(&mut self, which: Flood) -> &mut bool {
        match which {
            Flood::Visited => &mut self.visited,
            Flood::Excused => &mut self.excused,
        }
    }
}

/// The white blocks, sorted by address, for lookups by pointer.
struct WhiteSet<'a, B: Backing> {
    index: &'a PageMap<B>,
    bounds: Bounds,
    blocks: BackedVec<White, B>,
}

impl<B: Backing> WhiteSet<'_, B> {
    /// The white block `word` points into, if any.
    #[inline]
    fn find(&self, word: usize) -> Option<usize> {
        let start = candidate(self.index, &self.bounds, word)?;
        let blocks = self.blocks.as_slice();
        let i = blocks.binary_search_by_key(&start, |w| w.start).ok()?;
        (word - start < blocks[i].size.max(1)).then_some(i)
    }

    /// Call `f(j)` for each white block a word of white block `i` points
    /// into, other than `i` itself.
    ///
    /// # Safety
    /// Block `i` must be readable.
    unsafe fn targets(&self, i: usize, mut f: impl FnMut(usize)) {
        let White {
            start, size, scan, ..
        } = self.blocks.as_slice()[i];
        if !scan {
            return;
        }
        // SAFETY: forwarded contract.
        for w in unsafe { words(start, size) } {
            match self.find(w.load(Ordering::Relaxed)) {
                Some(j) if j != i => f(j),
                _ => {}
            }
        }
    }

    /// White blocks that white block `i` points into, into `found`.
    ///
    /// # Safety
    /// Block `i` must be readable.
    unsafe fn collect_targets(&self, i: usize, found: &mut BackedVec<usize, B>) -> bool {
        found.clear();
        let mut complete = true;
        // SAFETY: forwarded contract.
        unsafe { self.targets(i, |j| complete &= found.push(j)) };
        complete
    }

    /// Set flag `which` on everything reachable from white block `root`
    /// that does not have it yet (excused blocks are not entered by a
    /// `Visited` flood: they are never reported).
    ///
    /// # Safety
    /// Every white block must be readable.
    unsafe fn flood(&mut self, root: usize, which: Flood, scratch: &mut Scratch<B>) -> bool {
        let mut complete = true;
        *self.blocks.as_mut_slice()[root].flag(which) = true;
        complete &= scratch.stack.push(root);
        while let Some(i) = scratch.stack.pop() {
            // SAFETY: forwarded contract.
            complete &= unsafe { self.collect_targets(i, &mut scratch.found) };
            for &j in scratch.found.as_slice() {
                let block = &mut self.blocks.as_mut_slice()[j];
                let skip = matches!(which, Flood::Visited) && block.excused;
                let flag = block.flag(which);
                if !*flag && !skip {
                    *flag = true;
                    complete &= scratch.stack.push(j);
                }
            }
        }
        complete
    }
}

/// Reused buffers of the classification.
struct Scratch<B: Backing> {
    stack: BackedVec<usize, B>,
    found: BackedVec<usize, B>,
}

/// What [`classify`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Classified {
    /// False if backing memory ran out (the split is then incomplete).
    pub complete: bool,
    /// Every block left white, excused ones included.
    pub white_blocks: u64,
    pub white_bytes: u64,
}

/// Split the blocks left white after marking into direct and indirect leaks.
/// `out(start, size, direct)` is called once per leaked block.
///
/// A `no_scan` block points nowhere here either.
///
/// `excused(start)` names white blocks that must not be reported even
/// though nothing reached them: blocks too young to judge, allocated while
/// a concurrent scan ran, or annotated as not leaks. Whatever an excused
/// block points to is excused too, as if it had been a root (kmemleak
/// treats such objects as gray): a young block may well hold the only
/// pointer to an old one.
///
/// The white blocks go to a sorted side table rather than per-page bitmaps:
/// they are normally few, and the index stays at one mark bitmap per page.
///
/// # Safety
/// As for [`Marker::drain`]: every tracked block must stay readable.
pub unsafe fn classify<B: Backing, S: Fn(usize) -> Extent>(
    index: &PageMap<B>,
    extent_of: S,
    excused: impl Fn(usize) -> bool,
    mut out: impl FnMut(usize, usize, bool),
) -> Classified {
    let mut complete = true;
    let mut white = WhiteSet {
        index,
        bounds: index.bounds(),
        blocks: BackedVec::new(),
    };
    index.for_each_block(|start| {
        if !index.is_marked(start) {
            let extent = extent_of(start);
            complete &= white.blocks.push(White {
                start,
                size: extent.size,
                scan: extent.scan,
                referenced: false,
                visited: false,
                excused: false,
            });
        }
    });
    white
        .blocks
        .as_mut_slice()
        .sort_unstable_by_key(|w| w.start);
    let n = white.blocks.len();
    let mut scratch = Scratch {
        stack: BackedVec::new(),
        found: BackedVec::new(),
    };

    // 0. Excused blocks and everything they reach are out of the picture.
    for i in 0..n {
        let w = white.blocks.as_slice()[i];
        if !w.excused && excused(w.start) {
            // SAFETY: per this fn's contract.
            complete &= unsafe { white.flood(i, Flood::Excused, &mut scratch) };
        }
    }

    // 1. Every white block pointed to by another white block is indirect.
    for i in 0..n {
        if white.blocks.as_slice()[i].excused {
            continue;
        }
        // SAFETY: per this fn's contract.
        complete &= unsafe { white.collect_targets(i, &mut scratch.found) };
        for &j in scratch.found.as_slice() {
            white.blocks.as_mut_slice()[j].referenced = true;
        }
    }

    // 2. Flood from the direct leaks; 3. what that misses sits in
    //    unreferenced cycles: promote one block of each to direct.
    for i in 0..n {
        let w = white.blocks.as_slice()[i];
        if !w.excused && !w.referenced && !w.visited {
            // SAFETY: per this fn's contract.
            complete &= unsafe { white.flood(i, Flood::Visited, &mut scratch) };
        }
    }
    for i in 0..n {
        let w = white.blocks.as_slice()[i];
        if !w.excused && !w.visited {
            white.blocks.as_mut_slice()[i].referenced = false;
            // SAFETY: per this fn's contract.
            complete &= unsafe { white.flood(i, Flood::Visited, &mut scratch) };
        }
    }

    let mut white_bytes = 0u64;
    for w in white.blocks.as_slice() {
        white_bytes += w.size as u64;
        if !w.excused {
            out(w.start, w.size, !w.referenced);
        }
    }
    Classified {
        complete,
        white_blocks: n as u64,
        white_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::HeapBacking;
    use crate::test_rng::Rng;
    use std::collections::BTreeMap;

    /// A toy heap of real, 16-aligned memory blocks of `words` words each.
    struct Heap {
        index: Box<PageMap<HeapBacking>>,
        blocks: Vec<Box<[u128]>>,
        sizes: BTreeMap<usize, usize>,
    }

    impl Heap {
        fn new() -> Heap {
            Heap {
                index: PageMap::new_boxed(),
                blocks: vec![],
                sizes: BTreeMap::new(),
            }
        }

        fn alloc(&mut self, words: usize) -> usize {
            let b = vec![0u128; words.div_ceil(2)].into_boxed_slice();
            let start = b.as_ptr() as usize;
            self.index.insert(start, words * 8).unwrap();
            self.sizes.insert(start, words * 8);
            self.blocks.push(b);
            start
        }

        fn set(&mut self, block: usize, word: usize, value: usize) {
            // SAFETY: tests only write inside blocks they allocated.
            unsafe { *(block as *mut usize).add(word) = value };
        }

        /// `n` two-word blocks and an array holding a pointer to each:
        /// (children, array).
        fn array_of_children(&mut self, n: usize) -> (Vec<usize>, usize) {
            let children: Vec<usize> = (0..n).map(|_| self.alloc(2)).collect();
            let array = self.alloc(n);
            for (i, &c) in children.iter().enumerate() {
                self.set(array, i, c);
            }
            (children, array)
        }

        /// Mark from `roots`, classify; returns (start → direct?) of leaks.
        fn check(&self, roots: &[usize]) -> BTreeMap<usize, bool> {
            self.check_with(roots, &[], &[])
        }

        /// As `check`, with `roots` read as a thread's stack.
        fn check_stack(&self, roots: &[usize]) -> BTreeMap<usize, bool> {
            self.check_roots(roots, &[], &[], true)
        }

        /// As `check`, with blocks whose contents are not scanned and
        /// blocks excused from reporting.
        fn check_with(
            &self,
            roots: &[usize],
            no_scan: &[usize],
            excused: &[usize],
        ) -> BTreeMap<usize, bool> {
            self.check_roots(roots, no_scan, excused, false)
        }

        fn check_roots(
            &self,
            roots: &[usize],
            no_scan: &[usize],
            excused: &[usize],
            stack: bool,
        ) -> BTreeMap<usize, bool> {
            let sizes = &self.sizes;
            let size_of = move |s: usize| sizes[&s];
            self.index.clear_marks();
            let extent = |s: usize| Extent {
                size: size_of(s),
                scan: !no_scan.contains(&s),
            };
            let mut m = Marker::new(&self.index, extent);
            m.set_record_scanned(true);
            m.set_stack_words(stack);
            m.scan_words(roots);
            m.set_stack_words(false);
            // SAFETY: the blocks live in self.blocks for the whole call.
            unsafe { m.drain() };
            let mut leaks = BTreeMap::new();
            // SAFETY: as above.
            let c = unsafe {
                classify(
                    &self.index,
                    extent,
                    |s| excused.contains(&s),
                    |s, _, d| {
                        leaks.insert(s, d);
                    },
                )
            };
            assert!(c.complete);
            assert!(c.white_blocks >= leaks.len() as u64);
            leaks
        }
    }

    #[test]
    fn reachable_through_interior_pointers_and_chains() {
        let mut h = Heap::new();
        let a = h.alloc(4);
        let b = h.alloc(4);
        let c = h.alloc(4);
        h.set(a, 1, b + 12); // interior pointer
        h.set(b, 3, c);
        assert!(h.check(&[a + 31]).is_empty());
    }

    #[test]
    fn list_is_one_direct_and_indirect_rest() {
        let mut h = Heap::new();
        let nodes: Vec<usize> = (0..5).map(|_| h.alloc(2)).collect();
        for w in nodes.windows(2) {
            h.set(w[0], 0, w[1]);
        }
        let leaks = h.check(&[]);
        assert_eq!(leaks.len(), 5);
        assert_eq!(leaks.values().filter(|d| **d).count(), 1);
        assert!(leaks[&nodes[0]]);
    }

    #[test]
    fn unreferenced_cycle_gets_exactly_one_direct() {
        let mut h = Heap::new();
        let a = h.alloc(2);
        let b = h.alloc(2);
        let c = h.alloc(2);
        h.set(a, 0, b);
        h.set(b, 0, c);
        h.set(c, 0, a);
        let leaks = h.check(&[]);
        assert_eq!(leaks.len(), 3);
        assert_eq!(leaks.values().filter(|d| **d).count(), 1);
    }

    #[test]
    fn self_reference_does_not_make_a_block_indirect() {
        let mut h = Heap::new();
        let a = h.alloc(2);
        h.set(a, 0, a);
        let leaks = h.check(&[]);
        assert_eq!(leaks.get(&a), Some(&true));
    }

    #[test]
    fn leaked_block_pointing_to_reachable_one_changes_nothing() {
        let mut h = Heap::new();
        let kept = h.alloc(2);
        let lost = h.alloc(2);
        h.set(lost, 0, kept);
        let leaks = h.check(&[kept]);
        assert_eq!(leaks.into_iter().collect::<Vec<_>>(), vec![(lost, true)]);
    }

    #[test]
    fn a_big_block_is_scanned_in_chunks_and_completely() {
        let mut h = Heap::new();
        let (_, array) = h.array_of_children(30_000);
        assert!(h.check(&[array]).is_empty());
    }

    #[test]
    fn blocks_read_whole_are_recorded_as_scanned() {
        use crate::index::Reach;
        let mut h = Heap::new();
        // The array is bigger than a scan piece: read in several goes.
        let (children, array) = h.array_of_children(10_000);
        let lost = h.alloc(2);
        assert_eq!(
            h.check(&[array]).into_keys().collect::<Vec<_>>(),
            vec![lost]
        );
        // A free during the scan may give these back at once (but for
        // those on a page's last granule, which have no room for the flag)...
        for &c in &children {
            let room = c % 4096 != 4096 - 16;
            let expected = if room { Reach::Scanned } else { Reach::Reached };
            assert_eq!(h.index.unmark(c), expected, "{c:#x}");
        }
        // ...but not a block read piece by piece, nor one never reached.
        assert_eq!(h.index.unmark(array), Reach::Reached);
        assert_eq!(h.index.unmark(lost), Reach::Unreached);
    }

    #[test]
    fn a_marker_that_does_not_record_leaves_reached_blocks_reached() {
        use crate::index::Reach;
        let mut h = Heap::new();
        let a = h.alloc(2);
        let sizes = &h.sizes;
        let extent = |s: usize| Extent {
            size: sizes[&s],
            scan: true,
        };
        h.index.clear_marks();
        let mut m = Marker::new(&h.index, extent);
        m.scan_words(&[a]);
        // SAFETY: the block lives in h.blocks for the whole test.
        unsafe { m.drain() };
        assert_eq!(h.index.unmark(a), Reach::Reached);
    }

    #[test]
    fn a_no_scan_block_is_kept_but_its_pointers_do_not_count() {
        let mut h = Heap::new();
        let opaque = h.alloc(2);
        let child = h.alloc(2);
        h.set(opaque, 0, child);
        let leaks = h.check_with(&[opaque], &[opaque], &[]);
        assert_eq!(leaks.into_iter().collect::<Vec<_>>(), vec![(child, true)]);
    }

    #[test]
    fn excused_blocks_and_what_they_reach_are_not_reported() {
        let mut h = Heap::new();
        let young = h.alloc(2);
        let old = h.alloc(2);
        let older = h.alloc(2);
        let lost = h.alloc(2);
        h.set(young, 0, old);
        h.set(old, 1, older);
        // `lost` points into the excused chain but nothing points to it.
        h.set(lost, 0, old);
        let leaks = h.check_with(&[], &[], &[young]);
        assert_eq!(leaks.into_iter().collect::<Vec<_>>(), vec![(lost, true)]);
        assert!(h.check_with(&[], &[], &[young, lost]).is_empty());
        // An excused block that is not scanned excuses nothing else.
        let leaks = h.check_with(&[], &[young], &[young]);
        assert_eq!(leaks.len(), 3);
        assert_eq!(leaks.get(&old), Some(&false), "old is pointed to by lost");
    }

    /// What a mark left: the marked blocks and the markers' counters.
    #[derive(Debug, PartialEq, Eq)]
    struct Marked {
        blocks: Vec<usize>,
        scanned_bytes: u64,
        marked: (u64, u64),
        complete: bool,
    }

    impl Heap {
        /// A random heap: mostly small blocks, a few big ones (scanned in
        /// chunks), pointers to starts and interiors, some no_scan blocks,
        /// chains deep enough that the gray stack spans chunks.
        fn random(rng: &mut Rng, blocks: usize) -> (Heap, Vec<usize>, Vec<usize>) {
            let mut h = Heap::new();
            let mut starts = Vec::new();
            for _ in 0..blocks {
                let words = match rng.below(100) {
                    0 => SCAN_CHUNK / 8 * 2 + rng.below(5000),
                    1..=9 => 64 + rng.below(512),
                    _ => 1 + rng.below(16),
                };
                starts.push(h.alloc(words));
            }
            for &b in &starts {
                let words = h.sizes[&b] / 8;
                let pointers = if words > 1000 {
                    words / 2
                } else {
                    rng.below(words.min(4) + 1)
                };
                for _ in 0..pointers {
                    let target = starts[rng.below(starts.len())];
                    let offset = if rng.below(4) == 0 {
                        rng.below(h.sizes[&target])
                    } else {
                        0
                    };
                    let at = rng.below(words);
                    h.set(b, at, target + offset);
                }
            }
            let roots = (0..1 + rng.below(8))
                .map(|_| starts[rng.below(starts.len())])
                .collect();
            let no_scan = (0..rng.below(4))
                .map(|_| starts[rng.below(starts.len())])
                .collect();
            (h, roots, no_scan)
        }

        /// Mark from `roots` with `markers` markers (1: `drain`, the
        /// single-marker path), each helper on a thread of its own.
        fn mark(&self, roots: &[usize], no_scan: &[usize], markers: usize) -> Marked {
            let sizes = &self.sizes;
            let extent = |s: usize| Extent {
                size: sizes[&s],
                scan: !no_scan.contains(&s),
            };
            self.index.clear_marks();
            let mut first = Marker::new(&self.index, extent);
            first.scan_words(roots);
            let complete = if markers == 1 {
                // SAFETY: the blocks live in self.blocks for the whole call.
                unsafe { first.drain() };
                true
            } else {
                let pool = MarkPool::new(&first);
                let pause = |_| std::thread::yield_now();
                let complete = std::thread::scope(|scope| {
                    for _ in 1..markers {
                        scope.spawn(|| {
                            let mut m = Marker::for_pool(&self.index, extent, &pool);
                            // SAFETY: as above.
                            let ok = unsafe { m.drain_shared(&pool, || false, pause) };
                            m.hand_in(&pool);
                            ok
                        });
                    }
                    // SAFETY: as above.
                    unsafe { first.drain_shared(&pool, || false, pause) }
                });
                first.absorb(&pool);
                complete
            };
            let mut blocks: Vec<usize> = self
                .sizes
                .keys()
                .copied()
                .filter(|&s| self.index.is_marked(s))
                .collect();
            blocks.sort_unstable();
            Marked {
                blocks,
                scanned_bytes: first.scanned_bytes(),
                marked: first.marked(),
                complete: complete && !first.overflowed(),
            }
        }
    }

    #[test]
    fn parallel_marking_matches_one_marker_on_random_heaps() {
        for seed in 1..=12u64 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let blocks = 400 + rng.below(3000);
            let (h, roots, no_scan) = Heap::random(&mut rng, blocks);
            let one = h.mark(&roots, &no_scan, 1);
            assert!(one.complete);
            let leaks = h.check_with(&roots, &no_scan, &[]);
            for markers in [2, 3, 4, 8] {
                let many = h.mark(&roots, &no_scan, markers);
                assert_eq!(many, one, "seed {seed}, {markers} markers");
                // Classification reads the marks the parallel mark left.
                let sizes = &h.sizes;
                let extent = |s: usize| Extent {
                    size: sizes[&s],
                    scan: !no_scan.contains(&s),
                };
                let mut found = BTreeMap::new();
                // SAFETY: the blocks live in h.blocks.
                unsafe {
                    classify(
                        &h.index,
                        extent,
                        |_| false,
                        |s, _, d| {
                            found.insert(s, d);
                        },
                    )
                };
                assert_eq!(found, leaks, "seed {seed}, {markers} markers");
            }
        }
    }

    #[test]
    fn a_long_chain_is_marked_whole_by_many_markers() {
        // One path: nothing to share but the big root block's rest.
        let mut h = Heap::new();
        let nodes: Vec<usize> = (0..20_000).map(|_| h.alloc(2)).collect();
        for w in nodes.windows(2) {
            h.set(w[0], 1, w[1]);
        }
        let one = h.mark(&[nodes[0]], &[], 1);
        assert_eq!(one.blocks.len(), nodes.len());
        assert_eq!(h.mark(&[nodes[0]], &[], 4), one);
    }

    #[test]
    fn one_marker_giving_up_stops_them_all() {
        let mut rng = Rng(7);
        let (h, roots, _) = Heap::random(&mut rng, 20_000);
        let sizes = &h.sizes;
        let extent = |s: usize| Extent::scanned(sizes[&s]);
        h.index.clear_marks();
        let mut first = Marker::new(&h.index, extent);
        first.scan_words(&roots);
        let pool = MarkPool::new(&first);
        let pause = |_| std::thread::yield_now();
        let (helper, first_ok) = std::thread::scope(|scope| {
            let helper = scope.spawn(|| {
                let mut m = Marker::for_pool(&h.index, extent, &pool);
                // SAFETY: the blocks live in h.blocks.
                unsafe { m.drain_shared(&pool, || false, pause) }
            });
            // SAFETY: as above.
            let first_ok = unsafe { first.drain_shared(&pool, || true, pause) };
            (helper.join().unwrap(), first_ok)
        });
        assert!(!first_ok);
        assert!(pool.aborted() && pool.finished());
        // The helper either gave up with it or found nothing to do.
        let _ = helper;
        // A marker that comes late learns at once that it is over.
        let mut late = Marker::for_pool(&h.index, extent, &pool);
        // SAFETY: as above.
        assert!(!unsafe { late.drain_shared(&pool, || false, pause) });
    }

    #[test]
    fn a_marker_joining_after_the_end_finds_nothing_to_do() {
        let mut h = Heap::new();
        let a = h.alloc(2);
        let extent = |_| Extent::scanned(16);
        h.index.clear_marks();
        let mut first = Marker::new(&h.index, extent);
        first.scan_words(&[a]);
        let pool = MarkPool::new(&first);
        // SAFETY: the block lives in h.blocks.
        assert!(unsafe { first.drain_shared(&pool, || false, |_| ()) });
        assert!(pool.finished() && !pool.aborted());
        let mut late = Marker::for_pool(&h.index, extent, &pool);
        // SAFETY: as above.
        assert!(unsafe { late.drain_shared(&pool, || false, |_| panic!("waited")) });
        late.hand_in(&pool);
        first.absorb(&pool);
        assert_eq!(first.marked(), (1, 16));
    }

    #[test]
    fn split_off_gives_older_work_and_adopt_takes_it() {
        let mut g = GrayStack::<HeapBacking>::new();
        assert!(g.split_off().is_none());
        g.push(1, 1);
        assert!(g.split_off().is_none(), "one item is not split");
        for i in 2..=10 {
            g.push(i, i);
        }
        // One chunk of 10: the older half (1..=5) goes.
        let c = g.split_off().unwrap();
        let mut other = GrayStack::<HeapBacking>::new();
        // SAFETY: split_off gave the chunk up.
        unsafe { other.adopt(c) };
        let mine: Vec<_> = std::iter::from_fn(|| g.pop()).collect();
        let theirs: Vec<_> = std::iter::from_fn(|| other.pop()).collect();
        assert_eq!(mine, (6..=10).rev().map(|i| (i, i)).collect::<Vec<_>>());
        assert_eq!(theirs, (1..=5).rev().map(|i| (i, i)).collect::<Vec<_>>());
        // Two chunks: the whole older chunk goes.
        for i in 0..GRAY_ITEMS + 3 {
            g.push(i, i);
        }
        let c = g.split_off().unwrap();
        // SAFETY: as above.
        unsafe { other.adopt(c) };
        assert_eq!(std::iter::from_fn(|| g.pop()).count(), 3);
        assert_eq!(std::iter::from_fn(|| other.pop()).count(), GRAY_ITEMS);
    }

    #[test]
    fn a_page_aligned_interior_word_on_a_stack_does_not_keep_a_block() {
        let mut h = Heap::new();
        // Find a block that straddles a page boundary.
        let big = loop {
            let b = h.alloc(64);
            if b / 4096 != (b + 511) / 4096 {
                break b;
            }
        };
        let page = (big + 511) & !4095;
        let leaks = h.check_stack(&[page]);
        assert!(leaks.contains_key(&big), "kept alive by a page address");
        assert!(
            !h.check_stack(&[page + 8]).contains_key(&big),
            "a real interior pointer"
        );
        // Anywhere but a stack, the page address is an interior pointer
        // like any other (glibc's `_dl_find_object` segments).
        assert!(
            !h.check(&[page]).contains_key(&big),
            "a global's page pointer"
        );
    }

    #[test]
    fn gray_stack_spans_chunks() {
        let mut g = GrayStack::<HeapBacking>::new();
        for i in 0..3 * GRAY_ITEMS {
            g.push(i, i);
        }
        for i in (0..3 * GRAY_ITEMS).rev() {
            assert_eq!(g.pop(), Some((i, i)));
        }
        assert_eq!(g.pop(), None);
        g.push(1, 2);
        assert_eq!(g.pop(), Some((1, 2)));
    }
}
