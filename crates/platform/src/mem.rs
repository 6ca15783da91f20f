//! leakscan's own memory: anonymous mappings, and the registry of them.
//!
//! Invariant I3 says leakscan's memory is never a root: the index holds the
//! start address of every live block, and scanning it would make every block
//! reachable. Every mapping leakscan makes goes through [`map`], which records
//! it in a fixed-size lock-free registry that the root collector subtracts
//! from the program's anonymous mappings. The registry is a static array
//! (so it lives in our own excluded data segment) of `(start, len)` slots
//! claimed with compare-and-swap; no lock, so it is safe after fork and in
//! any hook.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use leakscan_core::backing::Backing;

const REGISTRY_SLOTS: usize = 4096;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
}

static REGISTRY: [Slot; REGISTRY_SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
    }
}; REGISTRY_SLOTS];

/// Mappings that did not fit in the registry (they would be scanned as
/// roots, which can only hide leaks, never invent them).
static UNREGISTERED: AtomicUsize = AtomicUsize::new(0);

fn register(start: usize, len: usize) {
    for slot in &REGISTRY {
        if slot
            .start
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.len.store(len, Ordering::Release);
            return;
        }
    }
    UNREGISTERED.fetch_add(1, Ordering::Relaxed);
}

fn unregister(start: usize) {
    for slot in &REGISTRY {
        if slot.start.load(Ordering::Acquire) == start {
            slot.len.store(0, Ordering::Release);
            slot.start.store(0, Ordering::Release);
            return;
        }
    }
}

/// Call `f(start, len)` for every live mapping of leakscan's own.
pub fn for_each_own_mapping(mut f: impl FnMut(usize, usize)) {
    for slot in &REGISTRY {
        let start = slot.start.load(Ordering::Acquire);
        let len = slot.len.load(Ordering::Acquire);
        if start != 0 && len != 0 {
            f(start, len);
        }
    }
}

/// Round up to whole pages.
pub fn page_round(len: usize) -> usize {
    (len + 4095) & !4095
}

/// Map `len` bytes of zeroed, private, read-write memory (address space
/// only until touched: MAP_NORESERVE) and register it as leakscan's own.
pub fn map(len: usize) -> Option<NonNull<u8>> {
    let len = page_round(len.max(1));
    // SAFETY: an anonymous private mapping with no address hint has no
    // preconditions; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    register(p as usize, len);
    NonNull::new(p as *mut u8)
}

/// Give back a mapping made by [`map`].
///
/// # Safety
/// `p`/`len` must be exactly a mapping returned by [`map`], no longer used.
pub unsafe fn unmap(p: *mut u8, len: usize) {
    unregister(p as usize);
    // SAFETY: per the contract the range is one of our mappings.
    unsafe { libc::munmap(p as *mut libc::c_void, page_round(len.max(1))) };
}

/// The backing for the index, the depot and the gray stack.
pub struct MmapBacking;

impl Backing for MmapBacking {
    fn alloc_zeroed(bytes: usize) -> Option<NonNull<u8>> {
        map(bytes)
    }
}

/// A growable buffer of `T: Copy` in leakscan's own mappings, usable while
/// other threads are stopped (it never calls malloc).
pub struct MapVec<T: Copy> {
    ptr: *mut T,
    len: usize,
    cap: usize,
}

impl<T: Copy> Default for MapVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> MapVec<T> {
    pub const fn new() -> Self {
        MapVec {
            ptr: core::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    /// Append; false when memory ran out (the element is dropped).
    pub fn push(&mut self, value: T) -> bool {
        if self.len == self.cap && !self.grow() {
            return false;
        }
        // SAFETY: len < cap, inside our mapping.
        unsafe { self.ptr.add(self.len).write(value) };
        self.len += 1;
        true
    }

    fn grow(&mut self) -> bool {
        let size = core::mem::size_of::<T>().max(1);
        let new_cap = (self.cap * 2).max(page_round(size * 64) / size);
        let Some(fresh) = map(new_cap * size) else {
            return false;
        };
        let fresh = fresh.as_ptr() as *mut T;
        if !self.ptr.is_null() {
            // SAFETY: both regions are ours, disjoint, and hold len items.
            unsafe {
                core::ptr::copy_nonoverlapping(self.ptr, fresh, self.len);
                unmap(self.ptr as *mut u8, self.cap * size);
            }
        }
        self.ptr = fresh;
        self.cap = new_cap;
        true
    }

    pub fn as_slice(&self) -> &[T] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: ptr holds len initialised items.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: ptr holds len initialised items, borrowed mutably.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Copy> Drop for MapVec<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: our own mapping of cap items, not used after drop.
            unsafe {
                unmap(
                    self.ptr as *mut u8,
                    self.cap * core::mem::size_of::<T>().max(1),
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_registered_until_unmapped() {
        let p = map(10_000).unwrap();
        let mut found = false;
        for_each_own_mapping(|s, l| found |= s == p.as_ptr() as usize && l == 12288);
        assert!(found);
        // SAFETY: p is our mapping of that length.
        unsafe { unmap(p.as_ptr(), 10_000) };
        let mut still = false;
        for_each_own_mapping(|s, _| still |= s == p.as_ptr() as usize);
        assert!(!still);
    }

    #[test]
    fn mapvec_grows() {
        let mut v = MapVec::new();
        for i in 0..100_000usize {
            assert!(v.push(i));
        }
        assert_eq!(v.len(), 100_000);
        assert_eq!(v.as_slice()[99_999], 99_999);
    }
}
