//! Where the index and the depot get their memory.
//!
//! The core has no syscalls, so it asks a [`Backing`] for zeroed,
//! page-aligned memory that is never given back. The agent backs it with
//! `mmap(MAP_NORESERVE)` (and registers the range so the scanner never treats
//! leakscan's own memory as a root); tests back it with the Rust heap.

use core::ptr::NonNull;

/// A source of zeroed memory that lives until the process ends.
pub trait Backing {
    /// `bytes` of zeroed memory aligned to at least 4096, or `None` when the
    /// system refuses. Callers never free it, so implementations may reserve
    /// address space lazily (untouched pages cost nothing).
    fn alloc_zeroed(bytes: usize) -> Option<NonNull<u8>>;

    /// Give back memory from `alloc_zeroed` (scratch buffers of a scan; the
    /// index and the depot never release theirs).
    ///
    /// # Safety
    /// `ptr` and `bytes` are exactly one earlier `alloc_zeroed`, unused now.
    unsafe fn release(ptr: NonNull<u8>, bytes: usize);
}

/// Rust-heap backing for tests and tools: leaks on purpose, as the contract says.
pub struct HeapBacking;

impl Backing for HeapBacking {
    fn alloc_zeroed(bytes: usize) -> Option<NonNull<u8>> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
    }

    unsafe fn release(ptr: NonNull<u8>, bytes: usize) {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 4096)
            .expect("the layout alloc_zeroed used");
        // SAFETY: per the contract, ptr came from alloc_zeroed with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
    }
}

/// A growable array of `Copy` items in backing memory: scratch space for a
/// scan, which may run while other threads hold malloc's locks.
pub struct BackedVec<T: Copy, B: Backing> {
    ptr: *mut T,
    len: usize,
    cap: usize,
    _backing: core::marker::PhantomData<B>,
}

impl<T: Copy, B: Backing> Default for BackedVec<T, B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy, B: Backing> BackedVec<T, B> {
    pub const fn new() -> Self {
        BackedVec {
            ptr: core::ptr::null_mut(),
            len: 0,
            cap: 0,
            _backing: core::marker::PhantomData,
        }
    }

    fn bytes(cap: usize) -> usize {
        cap * core::mem::size_of::<T>().max(1)
    }

    /// Append; false when backing memory ran out (the item is dropped).
    pub fn push(&mut self, item: T) -> bool {
        if self.len == self.cap {
            let cap = (self.cap * 2).max(4096 / core::mem::size_of::<T>().max(1));
            let Some(fresh) = B::alloc_zeroed(Self::bytes(cap)) else {
                return false;
            };
            let fresh = fresh.as_ptr() as *mut T;
            if let Some(old) = NonNull::new(self.ptr) {
                // SAFETY: both buffers are ours and disjoint; the old one
                // holds len items and is released right after.
                unsafe {
                    core::ptr::copy_nonoverlapping(self.ptr, fresh, self.len);
                    B::release(old.cast(), Self::bytes(self.cap));
                }
            }
            self.ptr = fresh;
            self.cap = cap;
        }
        // SAFETY: len < cap, inside our buffer.
        unsafe { self.ptr.add(self.len).write(item) };
        self.len += 1;
        true
    }

    pub fn pop(&mut self) -> Option<T> {
        self.len = self.len.checked_sub(1)?;
        // SAFETY: the item at len was initialised by push.
        Some(unsafe { self.ptr.add(self.len).read() })
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

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget the items, keeping the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep the first `len` items (items are `Copy`: nothing to drop).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl<T: Copy, B: Backing> Drop for BackedVec<T, B> {
    fn drop(&mut self) {
        if let Some(p) = NonNull::new(self.ptr) {
            // SAFETY: our buffer, of this capacity, unused from now on.
            unsafe { B::release(p.cast(), Self::bytes(self.cap)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backed_vec_grows_and_pops() {
        let mut v = BackedVec::<u64, HeapBacking>::new();
        for i in 0..10_000 {
            assert!(v.push(i));
        }
        assert_eq!(v.len(), 10_000);
        assert_eq!(v.as_slice()[9_999], 9_999);
        assert_eq!(v.pop(), Some(9_999));
        v.as_mut_slice()[0] = 7;
        assert_eq!(v.as_slice()[0], 7);
    }
}
