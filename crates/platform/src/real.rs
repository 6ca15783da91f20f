//! The real allocator: glibc's `__libc_*` entry points.
//!
//! These aliases are exported by glibc (GLIBC_2.2.5) precisely so that a
//! replacement malloc can reach the original without `dlsym`, which itself
//! allocates and would recurse into our hooks. `posix_memalign`,
//! `aligned_alloc` and `reallocarray` have no public alias; the agent builds
//! them from these.

use core::ffi::c_void;

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

/// glibc's `malloc`.
#[inline(always)]
pub fn malloc(size: usize) -> *mut u8 {
    // SAFETY: __libc_malloc accepts any size and returns null on failure.
    unsafe { __libc_malloc(size) as *mut u8 }
}

/// glibc's `calloc` (overflow of `n * size` is checked by glibc).
#[inline(always)]
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    // SAFETY: as malloc.
    unsafe { __libc_calloc(n, size) as *mut u8 }
}

/// glibc's `memalign`.
#[inline(always)]
pub fn memalign(align: usize, size: usize) -> *mut u8 {
    // SAFETY: glibc validates the alignment itself.
    unsafe { __libc_memalign(align, size) as *mut u8 }
}

/// glibc's `realloc`.
///
/// # Safety
/// `p` is null or a live pointer from glibc's allocator.
#[inline(always)]
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { __libc_realloc(p as *mut c_void, size) as *mut u8 }
}

/// glibc's `free`.
///
/// # Safety
/// `p` is null or a live pointer from glibc's allocator, not used afterwards.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { __libc_free(p as *mut c_void) }
}

const SIZE_SZ: usize = 8;
const IS_MMAPPED: usize = 0x2;
const FLAG_BITS: usize = 0x7;

/// Usable bytes of a live glibc block, read from its chunk header as glibc's
/// own `malloc_usable_size` does (`musable` in malloc/malloc.c): the chunk
/// size minus one header word, or minus two for an mmapped chunk. Reading it
/// inline avoids resolving the real function, which we interpose.
///
/// # Safety
/// `p` must be a live block returned by glibc's allocator.
#[inline(always)]
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: a live glibc block is preceded by its chunk's size word.
    let word = unsafe { *(p.sub(SIZE_SZ) as *const usize) };
    // One header word, two for an mmapped chunk, without a branch: the
    // flag is bit 1, so shifting it left twice gives SIZE_SZ (8) or 0.
    const _: () = assert!(IS_MMAPPED << 2 == SIZE_SZ);
    (word & !FLAG_BITS).saturating_sub(SIZE_SZ + ((word & IS_MMAPPED) << 2))
}

/// The address range a live block occupies in glibc's heap, chunk header
/// included: `[chunk, chunk + size)`, or for an mmapped chunk the whole
/// mapping (glibc keeps the alignment slack before it in `prev_size`).
///
/// # Safety
/// As [`usable_size`].
pub unsafe fn chunk_extent(p: *const u8) -> (usize, usize) {
    let chunk = p as usize - 2 * SIZE_SZ;
    // SAFETY: a live glibc block is preceded by prev_size and size words.
    let (prev_size, word) = unsafe {
        (
            *(chunk as *const usize),
            *((chunk + SIZE_SZ) as *const usize),
        )
    };
    let size = word & !FLAG_BITS;
    if word & IS_MMAPPED != 0 {
        (chunk - prev_size, chunk + size)
    } else {
        (chunk, chunk + size)
    }
}

/// Whether a live block is an mmapped chunk of its own (glibc unmaps it at
/// free, and it shows up in /proc/self/maps as an anonymous mapping).
///
/// # Safety
/// As [`usable_size`].
pub unsafe fn is_mmapped(p: *const u8) -> bool {
    // SAFETY: a live glibc block is preceded by its chunk's size word.
    unsafe { *(p.sub(SIZE_SZ) as *const usize) & IS_MMAPPED != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_size_matches_glibc() {
        for size in [0usize, 1, 24, 25, 100, 4000, 200_000, 5 << 20] {
            let p = malloc(size);
            assert!(!p.is_null());
            // SAFETY: p is live and from glibc; malloc_usable_size here is
            // glibc's, since the test binary does not interpose it.
            let (ours, theirs) = unsafe { (usable_size(p), libc::malloc_usable_size(p as *mut _)) };
            assert_eq!(ours, theirs, "size {size}");
            // SAFETY: p is live and not used again.
            unsafe { free(p) };
        }
    }
}
