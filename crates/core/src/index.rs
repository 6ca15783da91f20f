//! The block index: which live block contains address A?
//!
//! ## The problem
//!
//! Every `malloc` inserts and every `free` removes, from any thread, millions
//! of times a second; meanwhile the scanner asks "does this word point into a
//! live block?" about 10^8 times per GiB scanned, mostly for words that are
//! not pointers at all. kmemleak keeps its objects in an rbtree under a lock.
//! That tree cannot simply be read under RCU: a rotation moves whole
//! subtrees, so a lockless lookup may miss a block that is there, and for a
//! leak detector a missed lookup is a false leak report.
//!
//! ## The idea: a tree with no rotations
//!
//! A two-level radix tree over the 47-bit address space, keyed by 4 KiB page:
//!
//! ```text
//! addr >> 30           -> L1 slot: the leaf of that GiB (2^17 slots, here)
//! (addr >> 12) & 2^18  -> the page's node and cover, inside the leaf
//! ```
//!
//! A leaf holds, for each of its 2^18 pages, a [`PageNode`] (a start bitmap
//! with one bit per 16-byte granule — glibc aligns every block to 16 — and a
//! mark bitmap: 64 bytes, one cache line) and a `cover` word (the start of
//! the block overlapping the page's first byte, or 0): 72 bytes per heap
//! page. "Which block contains A" is then: the highest start bit at or below
//! A's granule on its page, else the page's cover → range check against the
//! block's size. No search, no rebalancing.
//!
//! The nodes sit in the leaf itself, at an address computed from A, so the
//! hooks reach a node with one dependent load (the L1 slot), not two: that
//! load chain is on every `malloc` and every `free`. A leaf reserves 18 MiB
//! of address space per GiB the heap touches; the kernel backs only the
//! pages written, which for a heap in use is the 72 bytes per page above.
//! One "used" bit per 64 pages (one 4 KiB page of nodes) says which nodes
//! have ever been written: iteration visits only those, and a pointer
//! nothing was allocated near never touches node memory.
//!
//! ## Why readers need no lock and no grace period
//!
//! Leaves are never freed or moved (type-stable memory), so a reader can
//! never follow a pointer into freed index memory. A reader racing with an
//! insert or remove sees the block either present or absent; both are
//! correct answers for a block that is being allocated or freed while the
//! scan runs, and the scanner treats such blocks specially (it never reports
//! a block allocated during the scan, and a freed block is no longer live).
//!
//! ## Write protocol (lock-free, no shared counters on the hot path)
//!
//! - insert: set the page's used bit (once per 64 pages, ever), write the
//!   covers of the pages the block reaches past its first page, then
//!   publish the start bit with a Release `fetch_or` — last, so a reader
//!   that sees the start bit sees the covers.
//! - remove: claim the block by clearing its start bit with `fetch_and`
//!   (exactly one `free` of a pointer wins; a second one sees the bit clear
//!   and treats the pointer as foreign, as glibc would), then clear covers
//!   with compare-and-swap so a cover that already belongs to a newer block
//!   is left alone.
//!
//! Only pages touched by two live blocks at once are written by two threads,
//! and then on different words (a cover vs a start bit, or two start bits).

use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::backing::Backing;

/// Address bits covered by the index (x86-64 and aarch64 user space).
pub const ADDR_BITS: u32 = 47;
const PAGE_SHIFT: u32 = 12;
const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// Block starts are multiples of this (glibc's MALLOC_ALIGNMENT on 64-bit).
pub const GRANULE: usize = 16;
const GRANULE_SHIFT: u32 = 4;
const GRANULES_PER_PAGE: usize = PAGE_SIZE / GRANULE;
const BITMAP_WORDS: usize = GRANULES_PER_PAGE / 64;
const LEAF_SHIFT: u32 = 30;
const LEAF_ENTRIES: usize = 1 << (LEAF_SHIFT - PAGE_SHIFT);
const L1_ENTRIES: usize = 1 << (ADDR_BITS - LEAF_SHIFT);
/// Pages per used bit: their 64 nodes fill one 4 KiB page of the leaf.
const GROUP_PAGES: usize = 64;
const USED_WORDS: usize = LEAF_ENTRIES / GROUP_PAGES / 64;
const LEAF_BYTES: usize = core::mem::size_of::<Leaf>();

/// How far the current scan got with a block: see [`PageMap::unmark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Not marked: the scan has not found it (yet).
    Unreached,
    /// Marked, and maybe waiting on a gray stack to be read.
    Reached,
    /// Marked and read: the scan will not touch it again.
    Scanned,
}

/// Per-page bitmaps: one cache line, inside its leaf.
#[repr(C, align(64))]
pub struct PageNode {
    /// Bit g set ⇔ a live block starts at `page + 16·g`.
    starts: [AtomicU64; BITMAP_WORDS],
    /// Bit g set ⇔ the block starting at `page + 16·g` was reached in the
    /// current scan. (Classification state for the few white blocks lives
    /// in a side table of the scan, not here.)
    marks: [AtomicU64; BITMAP_WORDS],
}

/// The index of one GiB of address space. Zeroed memory is the empty leaf;
/// `base` and `older` are written before it is published.
#[repr(C)]
struct Leaf {
    nodes: [PageNode; LEAF_ENTRIES],
    /// Per page: the start of the live block overlapping its first byte, 0
    /// if none.
    covers: [AtomicUsize; LEAF_ENTRIES],
    /// Bit k set ⇔ a block has started on one of pages `64k..64k + 64` since
    /// the leaf exists: only those nodes can be non-zero.
    used: [AtomicU64; USED_WORDS],
    /// Address of the leaf's first page.
    base: usize,
    /// The leaf created before this one (leaves form a push-only list).
    older: *mut Leaf,
}

/// The radix page map. See the module documentation.
pub struct PageMap<B: Backing> {
    l1: [AtomicPtr<Leaf>; L1_ENTRIES],
    /// [!lo_inverted, hi): union of all leaves created so far; 0/0 = empty.
    lo_inverted: AtomicUsize,
    hi: AtomicUsize,
    /// Newest leaf; every leaf is on this list before it is in `l1`.
    leaves: AtomicPtr<Leaf>,
    _backing: PhantomData<B>,
}

// SAFETY: all shared state is atomics; the raw pointers inside point to
// type-stable memory that is never freed.
unsafe impl<B: Backing> Sync for PageMap<B> {}
// SAFETY: as above.
unsafe impl<B: Backing> Send for PageMap<B> {}

/// Why an insert did not happen. The block then stays untracked and is
/// treated as foreign everywhere, which is always safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The address is outside the indexed address space.
    OutOfRange,
    /// The backing refused memory for a leaf.
    NoMemory,
}

/// Cheap pre-filter bounds, copied into locals by the scanner's inner loop.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    lo: usize,
    span: usize,
}

impl Bounds {
    #[inline(always)]
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.lo) < self.span
    }
}

impl<B: Backing> Default for PageMap<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl Leaf {
    /// The page's position in the leaf.
    #[inline(always)]
    fn index(addr: usize) -> usize {
        (addr >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)
    }

    #[inline(always)]
    fn used_bit(i: usize) -> (usize, u64) {
        let group = i / GROUP_PAGES;
        (group / 64, 1u64 << (group % 64))
    }

    /// Whether page `i`'s node may be non-zero.
    #[inline(always)]
    fn is_used(&self, i: usize) -> bool {
        let (w, bit) = Self::used_bit(i);
        self.used[w].load(Ordering::Acquire) & bit != 0
    }

    /// Page `i`'s node, once a block is to start on it.
    #[inline]
    fn node_for_insert(&self, i: usize) -> &PageNode {
        let (w, bit) = Self::used_bit(i);
        if self.used[w].load(Ordering::Relaxed) & bit == 0 {
            // Release: iteration that sees the bit reads the node after it.
            self.used[w].fetch_or(bit, Ordering::Release);
        }
        &self.nodes[i]
    }

    /// Clear page `i`'s cover if it still names the block at `start`. Read
    /// first: a failed `lock cmpxchg` still writes, and would commit a
    /// page of covers nobody uses.
    #[inline(always)]
    fn clear_cover(&self, i: usize, start: usize) {
        let cover = &self.covers[i];
        if cover.load(Ordering::Relaxed) == start {
            let _ = cover.compare_exchange(start, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

impl<B: Backing> PageMap<B> {
    /// An empty map, usable in a `static`.
    pub const fn new() -> Self {
        PageMap {
            l1: [const { AtomicPtr::new(ptr::null_mut()) }; L1_ENTRIES],
            lo_inverted: AtomicUsize::new(0),
            hi: AtomicUsize::new(0),
            leaves: AtomicPtr::new(ptr::null_mut()),
            _backing: PhantomData,
        }
    }

    /// An empty map on the heap (the struct is 1 MiB: too big for a stack).
    pub fn new_boxed() -> Box<Self> {
        let layout = std::alloc::Layout::new::<Self>();
        // SAFETY: the all-zero bit pattern is the empty map (null pointers,
        // zero atomics, empty bounds), which is what `new` builds; the layout
        // is that of Self and non-zero-sized.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout) as *mut Self;
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(p)
        }
    }

    // ---- leaves and nodes -------------------------------------------------

    #[inline(always)]
    fn leaf(&self, addr: usize) -> Option<&Leaf> {
        let i = addr >> LEAF_SHIFT;
        if i >= L1_ENTRIES {
            return None;
        }
        let leaf = self.l1[i].load(Ordering::Acquire);
        // SAFETY: a non-null L1 entry points to a zeroed, never-freed leaf
        // published with Release after its header was written.
        unsafe { leaf.as_ref() }
    }

    fn leaf_or_create(&self, addr: usize) -> Result<&Leaf, InsertError> {
        if let Some(leaf) = self.leaf(addr) {
            return Ok(leaf);
        }
        let i = addr >> LEAF_SHIFT;
        if i >= L1_ENTRIES {
            return Err(InsertError::OutOfRange);
        }
        let fresh = B::alloc_zeroed(LEAF_BYTES).ok_or(InsertError::NoMemory)?;
        let fresh = fresh.as_ptr() as *mut Leaf;
        // SAFETY: the fresh leaf is zeroed, page-aligned and ours alone
        // until it is pushed below.
        unsafe { (*fresh).base = i << LEAF_SHIFT };
        // On the list first, so that iteration knows every leaf a block can
        // be in. A leaf that then loses the race for its L1 slot stays on
        // the list, empty (address space only, never touched again).
        let mut head = self.leaves.load(Ordering::Acquire);
        loop {
            // SAFETY: as above: not yet published.
            unsafe { (*fresh).older = head };
            match self
                .leaves
                .compare_exchange(head, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        let leaf = match self.l1[i].compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.widen_bounds(i << LEAF_SHIFT, (i + 1) << LEAF_SHIFT);
                fresh
            }
            Err(existing) => existing,
        };
        // SAFETY: `leaf` is a published, never-freed leaf.
        Ok(unsafe { &*leaf })
    }

    fn widen_bounds(&self, lo: usize, hi: usize) {
        // `lo` is stored inverted so that zero (the empty map) means "no
        // lower bound yet" and widening is a plain fetch_max.
        self.lo_inverted.fetch_max(!lo, Ordering::AcqRel);
        self.hi.fetch_max(hi, Ordering::AcqRel);
    }

    /// The current pre-filter bounds (a snapshot; they only ever widen).
    pub fn bounds(&self) -> Bounds {
        let lo = !self.lo_inverted.load(Ordering::Acquire);
        let hi = self.hi.load(Ordering::Acquire);
        Bounds {
            lo,
            span: hi.saturating_sub(lo),
        }
    }

    /// The node of `page` if a block may start on it.
    #[inline(always)]
    fn node(&self, page: usize) -> Option<&PageNode> {
        let leaf = self.leaf(page)?;
        let i = Leaf::index(page);
        leaf.is_used(i).then(|| &leaf.nodes[i])
    }

    #[inline(always)]
    fn granule_bit(addr: usize) -> (usize, u64) {
        let g = (addr >> GRANULE_SHIFT) & (GRANULES_PER_PAGE - 1);
        (g / 64, 1u64 << (g % 64))
    }

    // ---- writers ------------------------------------------------------------

    /// Track the block `[start, start + size)`. `start` must be 16-aligned and
    /// not currently tracked. A zero `size` is tracked as one byte, so a
    /// pointer to the block still references it.
    #[inline(always)]
    pub fn insert(&self, start: usize, size: usize) -> Result<(), InsertError> {
        // The common cases inline, on a page already in use: a block within
        // its page (nearly every malloc), then one reaching into part of the
        // next page (one small block in 14 in the churn benchmark), whose
        // cover goes on that page. A zero size counts as one byte: it
        // cannot reach past its page either way.
        debug_assert_eq!(start % GRANULE, 0);
        if let Some(leaf) = self.leaf(start) {
            let i = Leaf::index(start);
            let reach = (start & (PAGE_SIZE - 1)).wrapping_add(size);
            if leaf.is_used(i)
                && (reach <= PAGE_SIZE || (reach < 2 * PAGE_SIZE && i + 1 < LEAF_ENTRIES))
            {
                if reach > PAGE_SIZE {
                    // The cover first: a reader that sees the start bit sees it.
                    leaf.covers[i + 1].store(start, Ordering::Release);
                }
                let (w, bit) = Self::granule_bit(start);
                // Marks are not touched: a scan clears the sets it uses first.
                leaf.nodes[i].starts[w].fetch_or(bit, Ordering::Release);
                return Ok(());
            }
        }
        self.insert_slow(start, size)
    }

    #[inline(never)]
    fn insert_slow(&self, start: usize, size: usize) -> Result<(), InsertError> {
        debug_assert_eq!(start % GRANULE, 0);
        let end = start
            .checked_add(size.max(1))
            .ok_or(InsertError::OutOfRange)?;
        if (end - 1) >> ADDR_BITS != 0 {
            return Err(InsertError::OutOfRange);
        }
        let first_page = start & !(PAGE_SIZE - 1);
        let mut page = first_page + PAGE_SIZE;
        while page < end {
            let leaf = self.leaf_or_create(page)?;
            leaf.covers[Leaf::index(page)].store(start, Ordering::Release);
            page += PAGE_SIZE;
        }
        let node = self
            .leaf_or_create(first_page)?
            .node_for_insert(Leaf::index(first_page));
        let (w, bit) = Self::granule_bit(start);
        // Marks are not touched: a scan clears the sets it uses first.
        node.starts[w].fetch_or(bit, Ordering::Release);
        Ok(())
    }

    /// Stop tracking the block at `start`. Returns
    /// false when no tracked block starts there (a foreign pointer, or a
    /// second free of the same pointer); nothing is changed then.
    /// `size_of` is asked for the block's extent only when the block
    /// reaches past its first page (which the next page's cover tells
    /// without it); an over-estimate is harmless (covers are cleared only
    /// where they still name this block), so the agent may pass the
    /// allocator's usable size instead of the requested one.
    #[inline(always)]
    pub fn remove(&self, start: usize, size_of: impl FnOnce() -> usize) -> bool {
        if !start.is_multiple_of(GRANULE) {
            return false;
        }
        let Some(leaf) = self.leaf(start) else {
            return false;
        };
        let i = Leaf::index(start);
        if !leaf.is_used(i) {
            return false;
        }
        let (w, bit) = Self::granule_bit(start);
        // SeqCst: the agent's quarantine relies on this unlink and the
        // scanner's switch being ordered (a store-buffering pair; see
        // preload/src/quarantine.rs). On x86 it is the same `lock and`.
        if leaf.nodes[i].starts[w].fetch_and(!bit, Ordering::SeqCst) & bit == 0 {
            return false;
        }
        // A block reaching into the next page named itself in that page's
        // cover, and nothing else can have replaced it while the block
        // lived: no cover there, no page to clear (nearly every free, and
        // no read of the block's size, a cache miss, on the way).
        if i + 1 < LEAF_ENTRIES && leaf.covers[i + 1].load(Ordering::Relaxed) != start {
            return true;
        }
        let next_page = (start & !(PAGE_SIZE - 1)) + PAGE_SIZE;
        let end = start.saturating_add(size_of().max(1));
        self.clear_covers(start, next_page, end);
        true
    }

    /// Clear the covers a removed block left on the pages after its first.
    #[inline(never)]
    fn clear_covers(&self, start: usize, from: usize, end: usize) {
        let mut page = from;
        while page < end {
            let Some(leaf) = self.leaf(page) else { break };
            leaf.clear_cover(Leaf::index(page), start);
            page += PAGE_SIZE;
        }
    }

    /// Whether a tracked block starts exactly at `start`.
    #[inline]
    pub fn is_start(&self, start: usize) -> bool {
        if !start.is_multiple_of(GRANULE) {
            return false;
        }
        let Some(node) = self.node(start & !(PAGE_SIZE - 1)) else {
            return false;
        };
        let (w, bit) = Self::granule_bit(start);
        node.starts[w].load(Ordering::Acquire) & bit != 0
    }

    // ---- readers ------------------------------------------------------------

    /// The start of the tracked block that may contain `addr`: the nearest
    /// start at or below it on its page, else the page's cover. The caller
    /// completes the check with the block's size ([`Self::find`]).
    #[inline(always)]
    pub fn candidate(&self, addr: usize) -> Option<usize> {
        self.locate(addr).map(|(start, _)| start)
    }

    /// Mark the tracked block containing `addr`, if there is one and it was
    /// not marked yet: then return it as `(start, size)`, the size `None`
    /// when `addr` is the block's start. The scanner's inner loop, with one
    /// index walk per word; `size_of` (two cache misses on the block's
    /// chunk header and trailer in the agent) is asked only for an
    /// unmarked candidate that `addr` points inside of, to tell whether
    /// it points past the end. A pointer to a block's start needs no such
    /// check, and the scanner reads the size later, when it has had time
    /// to prefetch it.
    #[inline(always)]
    pub fn mark_containing(
        &self,
        addr: usize,
        size_of: impl Fn(usize) -> usize,
    ) -> Option<(usize, Option<usize>)> {
        let (start, here) = self.locate(addr)?;
        let already = match here {
            Some((node, w, bit)) => node.marks[w].load(Ordering::Relaxed) & bit != 0,
            None => self.is_marked(start),
        };
        if already {
            return None;
        }
        let size = if addr == start {
            None
        } else {
            let size = size_of(start);
            if addr - start >= size.max(1) {
                return None;
            }
            Some(size)
        };
        let newly = match here {
            Some((node, w, bit)) => node.marks[w].fetch_or(bit, Ordering::Relaxed) & bit == 0,
            None => self.mark(start),
        };
        newly.then_some((start, size))
    }

    /// The candidate start, with its node, word and bit when it starts on
    /// `addr`'s own page.
    #[inline(always)]
    #[allow(clippy::type_complexity)] // (start, Some((node, word, bit)))
    fn locate(&self, addr: usize) -> Option<(usize, Option<(&PageNode, usize, u64)>)> {
        let leaf = self.leaf(addr)?;
        let i = Leaf::index(addr);
        if leaf.is_used(i) {
            let node = &leaf.nodes[i];
            let g = (addr >> GRANULE_SHIFT) & (GRANULES_PER_PAGE - 1);
            let mut w = g / 64;
            // Bits 0..=g%64 of the first word, then whole lower words.
            let mut mask = u64::MAX >> (63 - (g % 64));
            loop {
                let bits = node.starts[w].load(Ordering::Acquire) & mask;
                if bits != 0 {
                    let bit = 63 - bits.leading_zeros() as usize;
                    let start = (addr & !(PAGE_SIZE - 1)) + (w * 64 + bit) * GRANULE;
                    return Some((start, Some((node, w, 1u64 << bit))));
                }
                if w == 0 {
                    break;
                }
                w -= 1;
                mask = u64::MAX;
            }
        }
        match leaf.covers[i].load(Ordering::Acquire) {
            0 => None,
            start => Some((start, None)),
        }
    }

    /// The tracked block containing `addr` as `(start, size)`; `size_of`
    /// gives a block's size from its start (the agent reads its trailer).
    #[inline(always)]
    pub fn find(&self, addr: usize, size_of: impl Fn(usize) -> usize) -> Option<(usize, usize)> {
        let start = self.candidate(addr)?;
        let size = size_of(start);
        (addr - start < size.max(1)).then_some((start, size))
    }

    // ---- marks --------------------------------------------------------------

    /// Mark the block starting at `start` as reached; true if it was not
    /// marked before (the caller then scans the block).
    #[inline(always)]
    pub fn mark(&self, start: usize) -> bool {
        let Some(node) = self.node(start & !(PAGE_SIZE - 1)) else {
            return false;
        };
        let (w, bit) = Self::granule_bit(start);
        let word = &node.marks[w];
        if word.load(Ordering::Relaxed) & bit != 0 {
            return false;
        }
        word.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    /// Forget the mark of a block that is going away while a scan runs, so a
    /// new block the allocator puts at the same address during that scan
    /// does not start out "reached" (it would then never be scanned).
    /// Returns how far the scan got with it: a [`Reach::Scanned`] block
    /// will never be read by this scan again ([`Self::set_scanned`]).
    pub fn unmark(&self, start: usize) -> Reach {
        let Some(node) = self.node(start & !(PAGE_SIZE - 1)) else {
            return Reach::Unreached;
        };
        let (w, bit) = Self::granule_bit(start);
        if node.marks[w].load(Ordering::Relaxed) & bit == 0 {
            return Reach::Unreached;
        }
        let scanned = self.scanned_bit(node, start);
        let mut clear = bit;
        if let Some((_, bit2)) = scanned.filter(|&(w2, _)| w2 == w) {
            clear |= bit2;
            let was = node.marks[w].fetch_and(!clear, Ordering::AcqRel);
            return match (was & bit != 0, was & bit2 != 0) {
                (false, _) => Reach::Unreached,
                (true, false) => Reach::Reached,
                (true, true) => Reach::Scanned,
            };
        }
        if node.marks[w].fetch_and(!clear, Ordering::AcqRel) & bit == 0 {
            return Reach::Unreached;
        }
        match scanned {
            Some((w2, bit2)) if node.marks[w2].fetch_and(!bit2, Ordering::AcqRel) & bit2 != 0 => {
                Reach::Scanned
            }
            _ => Reach::Reached,
        }
    }

    /// Record that a marker has read the whole block starting at `start`
    /// and will not read it again in this scan: a free may then give it
    /// back at once instead of holding it until the scan ends. The flag
    /// is the mark bit of the granule after the block's start, which no
    /// block can start on (glibc's smallest chunk spans two granules; where
    /// one does start there, or the granule is on the next page, nothing is
    /// recorded and the block waits for the end of the scan as before).
    /// Release: the marker's reads of the block happen before a free that
    /// sees the flag ([`Self::unmark`], acquire).
    pub fn set_scanned(&self, start: usize) {
        let Some(node) = self.node(start & !(PAGE_SIZE - 1)) else {
            return;
        };
        let (w, bit) = Self::granule_bit(start);
        if node.starts[w].load(Ordering::Relaxed) & bit == 0 {
            return; // not a block start (the rest of a big block), or gone
        }
        if let Some((w2, bit2)) = self.scanned_bit(node, start) {
            node.marks[w2].fetch_or(bit2, Ordering::Release);
        }
    }

    /// Where the "scanned" flag of the block starting at `start` lives, if
    /// it can: the mark bit of the next granule, when that is on the same
    /// page and no block starts there.
    #[inline(always)]
    fn scanned_bit(&self, node: &PageNode, start: usize) -> Option<(usize, u64)> {
        let g = ((start >> GRANULE_SHIFT) & (GRANULES_PER_PAGE - 1)) + 1;
        if g == GRANULES_PER_PAGE {
            return None;
        }
        let (w, bit) = (g / 64, 1u64 << (g % 64));
        (node.starts[w].load(Ordering::Relaxed) & bit == 0).then_some((w, bit))
    }

    /// Whether the block starting at `start` is marked as reached.
    #[inline]
    pub fn is_marked(&self, start: usize) -> bool {
        self.node(start & !(PAGE_SIZE - 1)).is_some_and(|node| {
            let (w, bit) = Self::granule_bit(start);
            node.marks[w].load(Ordering::Relaxed) & bit != 0
        })
    }

    /// Clear every mark (start of a scan).
    pub fn clear_marks(&self) {
        self.for_each_node(|_, node| {
            for word in &node.marks {
                // Only dirty the lines that need it.
                if word.load(Ordering::Relaxed) != 0 {
                    word.store(0, Ordering::Relaxed);
                }
            }
        });
    }

    // ---- iteration ----------------------------------------------------------

    /// Call `f(page, node)` for every node a block may start on.
    fn for_each_node(&self, mut f: impl FnMut(usize, &PageNode)) {
        let mut leaf = self.leaves.load(Ordering::Acquire);
        while !leaf.is_null() {
            // SAFETY: listed leaves are never freed; their header was
            // written before they were listed.
            let l = unsafe { &*leaf };
            for (w, word) in l.used.iter().enumerate() {
                let mut groups = word.load(Ordering::Acquire);
                while groups != 0 {
                    let first = (w * 64 + groups.trailing_zeros() as usize) * GROUP_PAGES;
                    groups &= groups - 1;
                    for i in first..first + GROUP_PAGES {
                        f(l.base + (i << PAGE_SHIFT), &l.nodes[i]);
                    }
                }
            }
            leaf = l.older;
        }
    }

    /// Call `f(start)` for every tracked block, in no particular order.
    pub fn for_each_block(&self, mut f: impl FnMut(usize)) {
        self.for_each_node(|page, node| {
            for (w, word) in node.starts.iter().enumerate() {
                let mut bits = word.load(Ordering::Acquire);
                while bits != 0 {
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    f(page + (w * 64 + bit) * GRANULE);
                }
            }
        });
    }

    /// Call `f(start)` for every tracked block not marked as reached, in no
    /// particular order, until `f` returns false. One pass over the
    /// bitmaps: no per-block lookup.
    pub fn for_each_unmarked(&self, mut f: impl FnMut(usize) -> bool) {
        let mut going = true;
        self.for_each_node(|page, node| {
            if !going {
                return;
            }
            for (w, word) in node.starts.iter().enumerate() {
                let mut bits =
                    word.load(Ordering::Acquire) & !node.marks[w].load(Ordering::Relaxed);
                while bits != 0 {
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if !f(page + (w * 64 + bit) * GRANULE) {
                        going = false;
                        return;
                    }
                }
            }
        });
    }

    /// The start of some tracked block that touches a page of `[lo, hi)`,
    /// searching pages upward from `lo`; `None` if no live block does.
    pub fn first_block_touching(&self, lo: usize, hi: usize) -> Option<usize> {
        let mut page = lo & !(PAGE_SIZE - 1);
        while page < hi {
            let Some(leaf) = self.leaf(page) else {
                // Skip to the next leaf.
                page = ((page >> LEAF_SHIFT) + 1) << LEAF_SHIFT;
                continue;
            };
            let i = Leaf::index(page);
            let cover = leaf.covers[i].load(Ordering::Acquire);
            if cover != 0 {
                return Some(cover);
            }
            if leaf.is_used(i) {
                for (w, word) in leaf.nodes[i].starts.iter().enumerate() {
                    let bits = word.load(Ordering::Acquire);
                    if bits != 0 {
                        return Some(page + (w * 64 + bits.trailing_zeros() as usize) * GRANULE);
                    }
                }
            }
            page += PAGE_SIZE;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::HeapBacking;
    use crate::test_rng::Rng;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    type Map = PageMap<HeapBacking>;

    /// A fake address space: blocks at arbitrary 16-aligned addresses.
    const BASE: usize = 0x5555_0000_0000;

    fn sizes(model: &BTreeMap<usize, usize>) -> impl Fn(usize) -> usize + '_ {
        move |start| model[&start]
    }

    fn model_find(model: &BTreeMap<usize, usize>, addr: usize) -> Option<(usize, usize)> {
        let (&start, &size) = model.range(..=addr).next_back()?;
        (addr - start < size.max(1)).then_some((start, size))
    }

    #[test]
    fn small_block_interior_and_bounds() {
        let map = Map::new_boxed();
        let model = BTreeMap::from([(BASE + 32, 40usize)]);
        map.insert(BASE + 32, 40).unwrap();
        assert_eq!(map.find(BASE + 32, sizes(&model)), Some((BASE + 32, 40)));
        assert_eq!(map.find(BASE + 71, sizes(&model)), Some((BASE + 32, 40)));
        assert_eq!(map.find(BASE + 72, sizes(&model)), None);
        assert_eq!(map.find(BASE + 31, sizes(&model)), None);
        assert!(map.bounds().contains(BASE));
        assert!(!map.bounds().contains(0x1000));
    }

    #[test]
    fn bounds_include_the_first_gigabyte() {
        // Non-PIE programs have their brk heap below 1 GiB: leaf 0.
        let map = Map::new_boxed();
        assert!(!map.bounds().contains(0x60_0000));
        map.insert(0x60_0000, 16).unwrap();
        map.insert(BASE, 16).unwrap();
        assert!(map.bounds().contains(0x60_0000));
        assert!(map.bounds().contains(BASE));
    }

    #[test]
    fn large_block_is_found_through_covers() {
        let map = Map::new_boxed();
        let start = BASE + 4096 - 16; // starts at the end of a page
        let size = 5 * 4096 + 100;
        let model = BTreeMap::from([(start, size)]);
        map.insert(start, size).unwrap();
        for off in [0, 16, 4096, 3 * 4096 + 7, size - 1] {
            assert_eq!(
                map.find(start + off, sizes(&model)),
                Some((start, size)),
                "off {off}"
            );
        }
        assert_eq!(map.find(start + size, sizes(&model)), None);
        assert!(map.remove(start, || size));
        for off in [0, 4096, size - 1] {
            assert_eq!(map.candidate(start + off), None, "off {off}");
        }
        assert!(!map.remove(start, || size), "second remove must fail");
    }

    #[test]
    fn zero_sized_block_is_referenced_by_its_start() {
        let map = Map::new_boxed();
        map.insert(BASE, 0).unwrap();
        let model = BTreeMap::from([(BASE, 0usize)]);
        assert_eq!(map.find(BASE, sizes(&model)), Some((BASE, 0)));
        assert_eq!(map.find(BASE + 1, sizes(&model)), None);
    }

    #[test]
    fn unmark_tells_how_far_the_scan_got() {
        let map = Map::new_boxed();
        // 48-byte blocks, one at the page's last granule, and two only a
        // granule apart (no room for a scanned flag between them).
        for s in [
            BASE,
            BASE + 48,
            BASE + 96,
            BASE + 4080,
            BASE + 4096 + 32,
            BASE + 4096 + 48,
        ] {
            map.insert(s, 8).unwrap();
        }
        assert_eq!(map.unmark(BASE), Reach::Unreached);
        assert!(map.mark(BASE));
        assert_eq!(map.unmark(BASE), Reach::Reached);
        assert!(!map.is_marked(BASE), "unmark forgets the mark");
        assert!(map.mark(BASE));
        map.set_scanned(BASE);
        assert_eq!(map.unmark(BASE), Reach::Scanned);
        assert!(map.mark(BASE), "unmark forgets both");
        assert_eq!(map.unmark(BASE), Reach::Reached);
        // A scanned flag without the mark (the block was unmarked first)
        // does not count.
        map.set_scanned(BASE + 48);
        assert_eq!(map.unmark(BASE + 48), Reach::Unreached);
        // Where the flag has no room, a scanned block stays Reached.
        for s in [BASE + 4080, BASE + 4096 + 32] {
            assert!(map.mark(s));
            map.set_scanned(s);
            assert_eq!(map.unmark(s), Reach::Reached, "{s:#x}");
        }
        assert!(
            !map.is_marked(BASE + 4096 + 48),
            "the neighbour's mark is untouched"
        );
        // Not a block start (the rest of a big block): nothing recorded.
        assert!(map.mark(BASE + 96));
        map.set_scanned(BASE + 96 + 16);
        assert_eq!(map.unmark(BASE + 96), Reach::Reached);
        map.remove(BASE + 96, || 8);
        map.set_scanned(BASE + 96);
        assert_eq!(
            map.unmark(BASE + 96),
            Reach::Unreached,
            "gone: nothing recorded"
        );
    }

    #[test]
    fn marks_and_iteration() {
        let map = Map::new_boxed();
        for i in 0..100 {
            map.insert(BASE + i * 48, 32).unwrap();
        }
        let mut seen = vec![];
        map.for_each_block(|s| seen.push(s));
        seen.sort();
        assert_eq!(seen, (0..100).map(|i| BASE + i * 48).collect::<Vec<_>>());
        assert!(map.mark(BASE + 48));
        assert!(!map.mark(BASE + 48));
        assert!(map.is_marked(BASE + 48));
        assert!(!map.is_marked(BASE + 96));
        // BASE + 48 is marked already; BASE + 96 (size 32) gets marked once.
        assert_eq!(map.mark_containing(BASE + 48 + 20, |_| 32), None);
        assert_eq!(
            map.mark_containing(BASE + 96 + 40, |_| 32),
            None,
            "past the end"
        );
        assert_eq!(
            map.mark_containing(BASE + 96 + 4, |_| 32),
            Some((BASE + 96, Some(32)))
        );
        assert_eq!(
            map.mark_containing(BASE + 96 + 4, |_| 32),
            None,
            "only once"
        );
        // A pointer to a block's start marks it without asking its size.
        assert_eq!(
            map.mark_containing(BASE + 144, |_| unreachable!("no size needed")),
            Some((BASE + 144, None))
        );
        let mut white = vec![];
        map.for_each_unmarked(|s| {
            white.push(s);
            true
        });
        white.sort();
        let expected: Vec<usize> = (0..100)
            .map(|i| BASE + i * 48)
            .filter(|&s| ![BASE + 48, BASE + 96, BASE + 144].contains(&s))
            .collect();
        assert_eq!(white, expected);
        let mut visited = 0;
        map.for_each_unmarked(|_| {
            visited += 1;
            visited < 3
        });
        assert_eq!(visited, 3, "stops when told");
        map.clear_marks();
        assert!(!map.is_marked(BASE + 48));
        assert_eq!(
            map.first_block_touching(BASE + 4096, BASE + 8192),
            Some(BASE + 4080)
        );
    }

    /// Random inserts, removes and lookups against a BTreeMap model.
    #[test]
    fn randomized_against_btreemap() {
        let map = Map::new_boxed();
        let mut model = BTreeMap::new();
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for _ in 0..60_000 {
            let addr = BASE + (rng.next() as usize % (1 << 22)) / GRANULE * GRANULE;
            match rng.next() % 3 {
                0 => {
                    let size = match rng.next() % 10 {
                        0 => rng.next() as usize % 40_000,
                        _ => rng.next() as usize % 600,
                    };
                    let overlaps = model_find(&model, addr).is_some()
                        || model.range(addr..addr + size.max(1)).next().is_some();
                    if !overlaps {
                        map.insert(addr, size).unwrap();
                        model.insert(addr, size);
                    }
                }
                1 => {
                    if let Some((&start, &size)) = model.range(addr..).next() {
                        assert!(map.remove(start, || size));
                        model.remove(&start);
                    }
                }
                _ => {
                    let probe = addr + rng.next() as usize % 64;
                    assert_eq!(
                        map.find(probe, sizes(&model)),
                        model_find(&model, probe),
                        "{probe:#x}"
                    );
                }
            }
        }
        let mut all = vec![];
        map.for_each_block(|s| all.push(s));
        all.sort();
        assert_eq!(all, model.keys().copied().collect::<Vec<_>>());
    }

    /// Threads own disjoint address ranges that share pages at their edges
    /// (so two threads write the same nodes) and check their own blocks
    /// against a private model while the others churn.
    #[test]
    fn concurrent_writers_against_models() {
        let map: Arc<Map> = Arc::from(Map::new_boxed());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let map = map.clone();
                std::thread::spawn(move || {
                    let mut model = BTreeMap::new();
                    let mut rng = Rng(t as u64 * 7919 + 1);
                    // Interleave threads at 16-byte granularity within pages:
                    // thread t uses granules ≡ t (mod 4).
                    for _ in 0..40_000 {
                        let slot = rng.next() as usize % 20_000;
                        let start = BASE + (slot * 4 + t) * GRANULE;
                        if let Some(size) = model.remove(&start) {
                            assert!(map.remove(start, || size));
                        } else {
                            map.insert(start, 8).unwrap();
                            model.insert(start, 8usize);
                        }
                        let probe = BASE + ((rng.next() as usize % 20_000) * 4 + t) * GRANULE + 3;
                        assert_eq!(
                            map.find(probe, |_| 8).map(|b| b.0),
                            model_find(&model, probe).map(|b| b.0)
                        );
                    }
                    model.len()
                })
            })
            .collect();
        let live: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let mut count = 0;
        map.for_each_block(|_| count += 1);
        assert_eq!(count, live);
    }
}
