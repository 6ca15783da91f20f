//! The stack depot: allocation stacks interned as `u32` ids.
//!
//! Most allocations come from a few thousand distinct call stacks, so each
//! block stores a 4-byte id instead of its frames (LeakSanitizer's
//! StackDepot idea). The depot is append-only and lock-free:
//!
//! - a hash table of 2^20 `u64` buckets, each `tag << 32 | id` (0 = empty),
//!   probed linearly; a bucket is claimed with one compare-and-swap;
//! - an append-only word store holding `len, frame0, frame1, …` per stack;
//! - an id → store offset table.
//!
//! A writer fills the store and the offset table *before* publishing the
//! bucket with Release, so a reader that finds the bucket (Acquire) sees the
//! frames. Two threads interning the same new stack at once may both append
//! it; one bucket wins and the loser's copy is unreferenced (rare, bounded).
//! Nothing is ever removed, so readers need no lock and no grace period.
//! When a table or the store is full, `intern` returns 0 ("unknown stack")
//! instead of failing the allocation.

use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::backing::Backing;

const TABLE_BITS: u32 = 20;
const TABLE_LEN: usize = 1 << TABLE_BITS;
/// Ids are below this; id 0 means "no stack".
pub const MAX_STACKS: usize = 1 << 20;
const STORE_WORDS: usize = 1 << 25;
const MAX_PROBES: usize = 128;

const UNINIT: u8 = 0;
const INITIALISING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

pub struct StackDepot<B: Backing> {
    state: AtomicU8,
    table: AtomicPtr<AtomicU64>,
    offsets: AtomicPtr<AtomicU32>,
    store: AtomicPtr<AtomicU64>,
    store_used: AtomicUsize,
    next_id: AtomicU32,
    _backing: PhantomData<B>,
}

// SAFETY: all shared state is atomics or points to never-freed memory.
unsafe impl<B: Backing> Sync for StackDepot<B> {}
// SAFETY: as above.
unsafe impl<B: Backing> Send for StackDepot<B> {}

impl<B: Backing> Default for StackDepot<B> {
    fn default() -> Self {
        Self::new()
    }
}

/// The depot's hash of a stack, computed one frame at a time so that a
/// stack walk can hash as it goes ([`hash`] is the same fold over a
/// slice). Callers may use it to key a private cache in front of
/// [`StackDepot::intern_hashed`].
#[derive(Debug, Clone, Copy)]
pub struct FrameHash(u64);

impl Default for FrameHash {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameHash {
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

    #[inline(always)]
    pub const fn new() -> Self {
        FrameHash(0x243f_6a88_85a3_08d3)
    }

    /// Add the next frame. One multiply per frame: in a stack walk its
    /// latency overlaps the load of the next frame, which is longer.
    #[inline(always)]
    pub fn push(&mut self, frame: usize) {
        self.0 = (self.0 ^ frame as u64)
            .wrapping_mul(Self::K1)
            .rotate_left(31);
    }

    /// The hash of the `frames` frames pushed; the count is mixed in so
    /// that a stack and its prefix padded with zero frames differ.
    #[inline(always)]
    pub fn finish(self, frames: usize) -> u64 {
        let mut h = self.0 ^ (frames as u64).wrapping_mul(Self::K2);
        h ^= h >> 33;
        h = h.wrapping_mul(Self::K2);
        h ^= h >> 29;
        h
    }
}

/// The depot's hash of a stack: [`FrameHash`] over `frames`.
#[inline(always)]
pub fn hash(frames: &[usize]) -> u64 {
    let mut h = FrameHash::new();
    for &f in frames {
        h.push(f);
    }
    h.finish(frames.len())
}

impl<B: Backing> StackDepot<B> {
    pub const fn new() -> Self {
        StackDepot {
            state: AtomicU8::new(UNINIT),
            table: AtomicPtr::new(ptr::null_mut()),
            offsets: AtomicPtr::new(ptr::null_mut()),
            store: AtomicPtr::new(ptr::null_mut()),
            store_used: AtomicUsize::new(0),
            next_id: AtomicU32::new(1),
            _backing: PhantomData,
        }
    }

    /// Map the tables on first use. A thread that finds another one
    /// initialising does not wait: it gets "unknown stack" this once.
    #[cold]
    fn init(&self) -> bool {
        if self
            .state
            .compare_exchange(UNINIT, INITIALISING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return self.state.load(Ordering::Acquire) == READY;
        }
        let table = B::alloc_zeroed(TABLE_LEN * 8);
        let offsets = B::alloc_zeroed(MAX_STACKS * 4);
        let store = B::alloc_zeroed(STORE_WORDS * 8);
        let (Some(table), Some(offsets), Some(store)) = (table, offsets, store) else {
            self.state.store(FAILED, Ordering::Release);
            return false;
        };
        self.table.store(table.as_ptr().cast(), Ordering::Relaxed);
        self.offsets
            .store(offsets.as_ptr().cast(), Ordering::Relaxed);
        self.store.store(store.as_ptr().cast(), Ordering::Relaxed);
        self.state.store(READY, Ordering::Release);
        true
    }

    #[inline(always)]
    fn ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY || self.init()
    }

    #[inline(always)]
    fn bucket(&self, i: usize) -> &AtomicU64 {
        // SAFETY: ready() returned true, so `table` points to TABLE_LEN
        // never-freed atomics; callers mask i below TABLE_LEN.
        unsafe { &*self.table.load(Ordering::Relaxed).add(i) }
    }

    #[inline(always)]
    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: ready() returned true; callers keep i < STORE_WORDS.
        unsafe { &*self.store.load(Ordering::Relaxed).add(i) }
    }

    #[inline(always)]
    fn offset(&self, id: u32) -> &AtomicU32 {
        // SAFETY: ready() returned true; callers keep id < MAX_STACKS.
        unsafe { &*self.offsets.load(Ordering::Relaxed).add(id as usize) }
    }

    /// The id of `frames`, adding them if new; 0 if the depot is full,
    /// unavailable, or `frames` is empty.
    pub fn intern(&self, frames: &[usize]) -> u32 {
        self.intern_hashed(frames, hash(frames))
    }

    /// [`Self::intern`] with `h == hash(frames)` already computed.
    pub fn intern_hashed(&self, frames: &[usize], h: u64) -> u32 {
        if frames.is_empty() || !self.ready() {
            return 0;
        }
        let tag = (h >> 32) | 1;
        let mut i = h as usize & (TABLE_LEN - 1);
        for _ in 0..MAX_PROBES {
            let mut entry = self.bucket(i).load(Ordering::Acquire);
            if entry == 0 {
                let Some(id) = self.append(frames) else {
                    return 0;
                };
                match self.bucket(i).compare_exchange(
                    0,
                    tag << 32 | u64::from(id),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return id,
                    Err(now) => entry = now,
                }
            }
            if entry >> 32 == tag && self.equals(entry as u32, frames) {
                return entry as u32;
            }
            i = (i + 1) & (TABLE_LEN - 1);
        }
        0
    }

    /// Write `frames` to the store and give them an id (not yet findable).
    fn append(&self, frames: &[usize]) -> Option<u32> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id as usize >= MAX_STACKS {
            return None;
        }
        let need = frames.len() + 1;
        let off = self.store_used.fetch_add(need, Ordering::Relaxed);
        if off + need > STORE_WORDS || off > u32::MAX as usize {
            return None;
        }
        self.word(off).store(frames.len() as u64, Ordering::Relaxed);
        for (k, &f) in frames.iter().enumerate() {
            self.word(off + 1 + k).store(f as u64, Ordering::Relaxed);
        }
        self.offset(id).store(off as u32, Ordering::Relaxed);
        Some(id)
    }

    fn equals(&self, id: u32, frames: &[usize]) -> bool {
        let off = self.offset(id).load(Ordering::Relaxed) as usize;
        self.word(off).load(Ordering::Relaxed) as usize == frames.len()
            && frames
                .iter()
                .enumerate()
                .all(|(k, &f)| self.word(off + 1 + k).load(Ordering::Relaxed) as usize == f)
    }

    /// The frames of `id`, innermost first (empty for 0 or an unknown id).
    pub fn frames(&self, id: u32) -> Vec<usize> {
        if id == 0
            || id >= self.next_id.load(Ordering::Acquire)
            || id as usize >= MAX_STACKS
            || self.state.load(Ordering::Acquire) != READY
        {
            return Vec::new();
        }
        let off = self.offset(id).load(Ordering::Relaxed) as usize;
        let len = self.word(off).load(Ordering::Relaxed) as usize;
        (0..len)
            .map(|k| self.word(off + 1 + k).load(Ordering::Relaxed) as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::HeapBacking;
    use std::sync::Arc;

    #[test]
    fn hash_separates_order_length_and_values() {
        let base = hash(&[1, 2, 3, 4, 5]);
        assert_ne!(base, hash(&[2, 1, 3, 4, 5]), "order");
        assert_ne!(base, hash(&[1, 2, 3, 4]), "length");
        assert_ne!(base, hash(&[1, 2, 3, 4, 6]), "odd tail");
        assert_ne!(hash(&[0x40_1000]), hash(&[0x40_1001]));
        let mut seen = std::collections::HashSet::new();
        for i in 0..50_000usize {
            assert!(seen.insert(hash(&[
                0x5555_0000_1000 + i * 7,
                0x7f00_0000_2000 + (i % 13)
            ])));
        }
    }

    #[test]
    fn same_frames_same_id() {
        let depot = StackDepot::<HeapBacking>::new();
        let a = depot.intern(&[1, 2, 3]);
        let b = depot.intern(&[1, 2, 4]);
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(depot.intern(&[1, 2, 3]), a);
        assert_eq!(depot.frames(a), vec![1, 2, 3]);
        assert_eq!(depot.frames(b), vec![1, 2, 4]);
        assert_eq!(depot.intern(&[]), 0);
        assert!(depot.frames(0).is_empty());
    }

    #[test]
    fn concurrent_interning_agrees() {
        let depot = Arc::new(StackDepot::<HeapBacking>::new());
        // Initialise first: a thread that races the initialiser gets 0.
        assert_ne!(depot.intern(&[7]), 0);
        let results: Vec<Vec<u32>> = (0..4)
            .map(|_| {
                let depot = depot.clone();
                std::thread::spawn(move || {
                    (0..2000usize)
                        .map(|i| depot.intern(&[i, i * 7, 42]))
                        .collect()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for i in 0..2000 {
            let id = results[0][i];
            assert!(
                results.iter().all(|r| r[i] == id),
                "stack {i} got different ids"
            );
            assert_eq!(depot.frames(id), vec![i, i * 7, 42]);
        }
    }
}
