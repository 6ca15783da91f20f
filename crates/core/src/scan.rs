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
//! 3. drain the gray stack, scanning each gray block ([`Marker::drain`]);
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

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::backing::Backing;
use crate::index::{Bounds, MarkSet, PageMap};

/// Gray blocks in flight between prefetch and scan.
const PREFETCH_RING: usize = 16;

/// Hint the CPU to load the cache line at `addr` (no fault if unmapped).
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

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

/// A LIFO of `(start, size)` ranges still to scan. Chunks are reused, never
/// returned: their memory is leakscan's own and excluded from roots.
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
        let chunk = if self.spare.is_null() {
            match B::alloc_zeroed(GRAY_CHUNK_BYTES) {
                Some(p) => p.as_ptr() as *mut GrayChunk,
                None => return false,
            }
        } else {
            let c = self.spare;
            // SAFETY: spare chunks are ours; `prev` links the spare list.
            self.spare = unsafe { (*c).prev };
            c
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
}

/// What a marker does with a block that a word points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Policy {
    set: MarkSet,
    /// Push newly marked blocks so their contents get scanned too.
    push: bool,
    /// Ignore blocks already Reachable (used when classifying leaks).
    skip_reachable: bool,
}

/// Marks blocks reached from the ranges it is given.
pub struct Marker<'a, B: Backing, S: Fn(usize) -> usize> {
    index: &'a PageMap<B>,
    size_of: S,
    bounds: Bounds,
    gray: GrayStack<B>,
    policy: Policy,
    /// While scanning a block's own contents: its range, so that
    /// self-references do not count as "referenced by another block".
    current: (usize, usize),
    scanned_bytes: u64,
    marked_blocks: u64,
    marked_bytes: u64,
}

impl<'a, B: Backing, S: Fn(usize) -> usize> Marker<'a, B, S> {
    /// A marker for the Reachable set. `size_of(start)` must return the size
    /// of the tracked block starting at `start`.
    pub fn new(index: &'a PageMap<B>, size_of: S) -> Self {
        Self::with_policy(
            index,
            size_of,
            Policy {
                set: MarkSet::Reachable,
                push: true,
                skip_reachable: false,
            },
        )
    }

    fn with_policy(index: &'a PageMap<B>, size_of: S, policy: Policy) -> Self {
        Marker {
            index,
            size_of,
            bounds: index.bounds(),
            gray: GrayStack::new(),
            policy,
            current: (0, 0),
            scanned_bytes: 0,
            marked_blocks: 0,
            marked_bytes: 0,
        }
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

    /// Mark the block at `start` as a root-reached block by hand (e.g. a block
    /// the program asked never to report, whose children must stay alive).
    pub fn gray_block(&mut self, start: usize) {
        if self.index.mark(self.policy.set, start) {
            let size = (self.size_of)(start);
            self.marked_blocks += 1;
            self.marked_bytes += size as u64;
            self.gray.push(start, size);
        }
    }

    #[inline(always)]
    fn consider(&mut self, word: usize) {
        if word < MIN_POINTER || !self.bounds.contains(word) {
            return;
        }
        let Some(start) = self.index.candidate(word) else {
            return;
        };
        // Most words that hit a block hit one already marked: skip the size
        // lookup (a cache miss on the block's trailer) when marking is moot.
        if self.index.is_marked(self.policy.set, start) {
            return;
        }
        let size = (self.size_of)(start);
        if word - start >= size.max(1) {
            return;
        }
        if start == self.current.0 && self.current.1 != 0 {
            return; // a block pointing into itself
        }
        if self.policy.skip_reachable && self.index.is_marked(MarkSet::Reachable, start) {
            return;
        }
        if self.index.mark(self.policy.set, start) {
            self.marked_blocks += 1;
            self.marked_bytes += size as u64;
            if self.policy.push {
                self.gray.push(start, size);
            }
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
        let first = (addr + 7) & !7;
        let end = addr.saturating_add(len) & !7;
        if end <= first {
            return;
        }
        let n = (end - first) / 8;
        // SAFETY: the caller guarantees the range is readable; relaxed atomic
        // loads make racing writes by the program defined behaviour.
        let words = unsafe { core::slice::from_raw_parts(first as *const AtomicUsize, n) };
        self.scanned_bytes += (n * 8) as u64;
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
        // Prefetch on gray (Boehm, ISMM 2000): a popped block waits in a
        // small ring while its first cache lines load, so the scan of one
        // block overlaps the memory latency of the next few.
        let mut ring = [(0usize, 0usize); PREFETCH_RING];
        let (mut head, mut queued) = (0, 0);
        loop {
            if queued < PREFETCH_RING {
                if let Some((start, size)) = self.gray.pop() {
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
            let (start, size) = ring[head];
            head = (head + 1) % PREFETCH_RING;
            queued -= 1;
            self.current = (start, size);
            // SAFETY: a tracked block is readable per this fn's contract.
            unsafe { self.scan_range(start, size) };
        }
        self.current = (0, 0);
    }
}

/// Split the blocks left white after marking into direct and indirect leaks.
/// `out(start, size, direct)` is called once per leaked block. Returns false
/// if backing memory ran out (the split is then incomplete).
///
/// # Safety
/// As for [`Marker::drain`]: every tracked block must stay readable.
pub unsafe fn classify<B: Backing, S: Fn(usize) -> usize + Copy>(
    index: &PageMap<B>,
    size_of: S,
    mut out: impl FnMut(usize, usize, bool),
) -> bool {
    index.clear_marks(MarkSet::Referenced);
    index.clear_marks(MarkSet::Visited);
    let leaked = |start: usize| !index.is_marked(MarkSet::Reachable, start);

    // 1. Every leaked block pointed to by another leaked block is indirect.
    let mut referenced = Marker::with_policy(
        index,
        size_of,
        Policy {
            set: MarkSet::Referenced,
            push: false,
            skip_reachable: true,
        },
    );
    index.for_each_block(|start| {
        if leaked(start) {
            let size = size_of(start);
            referenced.current = (start, size);
            // SAFETY: per this fn's contract.
            unsafe { referenced.scan_range(start, size) };
        }
    });

    // 2. Flood from the direct leaks; 3. what that misses sits in
    //    unreferenced cycles: promote one block of each to direct.
    let mut flood = Marker::with_policy(
        index,
        size_of,
        Policy {
            set: MarkSet::Visited,
            push: true,
            skip_reachable: true,
        },
    );
    index.for_each_block(|start| {
        if leaked(start) && !index.is_marked(MarkSet::Referenced, start) {
            flood.gray_block(start);
        }
    });
    // SAFETY: per this fn's contract.
    unsafe { flood.drain() };
    index.for_each_block(|start| {
        if leaked(start) && !index.is_marked(MarkSet::Visited, start) {
            index.unmark(MarkSet::Referenced, start);
            flood.gray_block(start);
            // SAFETY: per this fn's contract.
            unsafe { flood.drain() };
        }
    });

    index.for_each_block(|start| {
        if leaked(start) {
            out(
                start,
                size_of(start),
                !index.is_marked(MarkSet::Referenced, start),
            );
        }
    });
    !referenced.overflowed() && !flood.overflowed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::HeapBacking;
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

        /// Mark from `roots`, classify; returns (start → direct?) of leaks.
        fn check(&self, roots: &[usize]) -> BTreeMap<usize, bool> {
            let sizes = &self.sizes;
            let size_of = move |s: usize| sizes[&s];
            self.index.clear_marks(MarkSet::Reachable);
            let mut m = Marker::new(&self.index, size_of);
            m.scan_words(roots);
            // SAFETY: the blocks live in self.blocks for the whole call.
            unsafe { m.drain() };
            let mut leaks = BTreeMap::new();
            // SAFETY: as above.
            assert!(unsafe {
                classify(&self.index, size_of, |s, _, d| {
                    leaks.insert(s, d);
                })
            });
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
