//! The interposed malloc family.
//!
//! Each hook is: guard → real allocator (`__libc_*`, with room for the
//! trailer) → record (stack, trailer, index). `free` always consults the
//! index, even inside the guard or with tracking off, so a freed block can
//! never stay in the index. A pointer the index does not know is handed to
//! glibc untouched: blocks allocated while the guard was held, before a
//! failure switched tracking off, or by anything that bypassed us.
//!
//! No hook takes a lock, allocates from the program's heap for itself, or
//! can panic: errors end in passing through (I2). `errno` is set exactly as
//! glibc would (ENOMEM, EINVAL) and left alone by `free`.

use core::ffi::{c_int, c_void};
use core::sync::atomic::Ordering;

use leakscan_core::index::InsertError;
use leakscan_platform::{real, sys};

use crate::clock;
use crate::guard::Guard;
use crate::quarantine;
use crate::stack;
use crate::state::{disable_tracking, INDEX, SCAN_GEN};
use crate::trailer::{self, TRAILER};

const PAGE: usize = 4096;

/// Record a fresh glibc block `p` of `size` requested bytes (with trailer
/// room). Inlined so that the stack walk starts in the hook's own frame.
#[inline(always)]
fn record(g: &Guard, p: *mut u8, size: usize) -> *mut c_void {
    if p.is_null() {
        return p as *mut c_void;
    }
    let stack = stack::capture(g);
    let tick = clock::stamp();
    let generation = SCAN_GEN.load(Ordering::Relaxed) as u16;
    let flags = if g.ignoring_allocations() {
        trailer::NOT_LEAK
    } else {
        0
    };
    // SAFETY: p is a fresh glibc block of at least size + TRAILER bytes.
    unsafe { trailer::write(p as usize, size, stack, tick, generation, flags) };
    // From the insert until the caller stores it, the block's only
    // reference is a register. A check that cannot see this thread's
    // registers (a fork child's check of the thread that does not exist
    // there; a live scan) reads the whole stack, dead frames included, so
    // the address is also left in this frame: it stays there, below the
    // caller's stack pointer, after the return. Without it a fork child
    // reported one block "leaked" in about one fork in twenty while two
    // threads allocated (fixture fork_while_threads_allocate).
    let mut held = core::mem::MaybeUninit::<*mut u8>::uninit();
    // SAFETY: a write to a local; volatile so that it is not elided.
    unsafe { core::ptr::write_volatile(held.as_mut_ptr(), p) };
    match INDEX.insert(p as usize, size) {
        Ok(()) | Err(InsertError::OutOfRange) => {}
        Err(InsertError::NoMemory) => disable_tracking("out of memory for the block index"),
    }
    p as *mut c_void
}

/// Forget `p` if it is a tracked block; true if it was.
#[inline(always)]
fn untrack(p: *mut c_void) -> bool {
    // Asked only for a block that reaches past its first page: the usable
    // size bounds its extent and sits in the chunk header glibc is about
    // to read anyway (the trailer would be one more cache miss).
    // SAFETY: the closure runs only once p is known to be a live glibc block.
    INDEX.remove(p as usize, || unsafe { real::usable_size(p as *const u8) })
}

#[inline(always)]
fn with_trailer(size: usize) -> Option<usize> {
    size.checked_add(TRAILER)
        .filter(|&n| n <= isize::MAX as usize)
}

/// # Safety
/// The C `malloc` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    match (Guard::enter_tracking(), with_trailer(size)) {
        (Some(g), Some(total)) => record(&g, real::malloc(total), size),
        _ => real::malloc(size) as *mut c_void,
    }
}

/// # Safety
/// The C `free` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    if !untrack(p) {
        // Foreign: the scanner never reads it in place.
        // SAFETY: p is a live glibc block.
        return unsafe { real::free(p as *mut u8) };
    }
    // SAFETY: p was a tracked block, now unlinked and ours to release.
    unsafe {
        if quarantine::deferring() {
            quarantine::defer(p as *mut u8);
        } else {
            real::free(p as *mut u8);
        }
    }
}

/// # Safety
/// The C `calloc` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let Some(bytes) = n.checked_mul(size) else {
        sys::set_errno(sys::ENOMEM);
        return core::ptr::null_mut();
    };
    match (Guard::enter_tracking(), with_trailer(bytes)) {
        (Some(g), Some(total)) => record(&g, real::calloc(1, total), bytes),
        _ => real::calloc(n, size) as *mut c_void,
    }
}

/// # Safety
/// The C `realloc` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        // SAFETY: forwarded contract.
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // glibc frees and returns NULL for realloc(p, 0).
        // SAFETY: forwarded contract.
        unsafe { free(p) };
        return core::ptr::null_mut();
    }
    if !INDEX.is_start(p as usize) {
        // Foreign block: stays foreign.
        // SAFETY: p is a live glibc block.
        return unsafe { real::realloc(p as *mut u8, size) } as *mut c_void;
    }
    // SAFETY: p is a live tracked block.
    let old = unsafe { trailer::read(p as usize) };
    // Unlink before glibc may free and hand the old address to another
    // thread, whose insert we must not undo.
    if !untrack(p) {
        // SAFETY: p is a live glibc block (a racing free would be the
        // program's own double free).
        return unsafe { real::realloc(p as *mut u8, size) } as *mut c_void;
    }
    // The new block is tracked unless this thread is inside leakscan or
    // tracking is off; either way the old one leaves through the quarantine
    // check.
    let track = match (Guard::enter_tracking(), with_trailer(size)) {
        (Some(g), Some(total)) => Some((g, total)),
        _ => None,
    };
    let want = track.as_ref().map_or(size, |&(_, total)| total);
    let q = if quarantine::deferring() {
        // A scan may be reading the old block: move, and defer its free.
        let q = real::malloc(want);
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this
            // long; the old one is then ours to defer.
            unsafe {
                core::ptr::copy_nonoverlapping(p as *const u8, q, old.size.min(size));
                quarantine::defer(p as *mut u8);
            }
        }
        q
    } else {
        // SAFETY: p is a live glibc block.
        unsafe { real::realloc(p as *mut u8, want) }
    };
    if q.is_null() {
        // The old block is untouched and still ours: track it again.
        let _ = INDEX.insert(p as usize, old.size);
        return core::ptr::null_mut();
    }
    match &track {
        Some((g, _)) => record(g, q, size),
        None => q as *mut c_void,
    }
}

/// # Safety
/// The C `reallocarray` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(bytes) => unsafe { realloc(p, bytes) },
        None => {
            sys::set_errno(sys::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

#[inline(always)]
fn aligned(align: usize, size: usize) -> *mut c_void {
    match (Guard::enter_tracking(), with_trailer(size)) {
        (Some(g), Some(total)) => record(&g, real::memalign(align, total), size),
        _ => real::memalign(align, size) as *mut c_void,
    }
}

/// # Safety
/// The C `memalign` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    aligned(align, size)
}

/// # Safety
/// The C `aligned_alloc` contract (glibc 2.36 treats it as memalign).
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    aligned(align, size)
}

/// # Safety
/// The C `posix_memalign` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<usize>()) {
        return sys::EINVAL;
    }
    let p = aligned(align, size);
    if p.is_null() {
        return sys::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-pointer.
    unsafe { *out = p };
    0
}

/// # Safety
/// The C `valloc` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    aligned(PAGE, size)
}

/// # Safety
/// The C `pvalloc` contract: the whole rounded-up size is the caller's.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let Some(rounded) = size
        .checked_add(PAGE - 1)
        .map(|n| (n & !(PAGE - 1)).max(PAGE))
    else {
        sys::set_errno(sys::ENOMEM);
        return core::ptr::null_mut();
    };
    aligned(PAGE, rounded)
}

/// # Safety
/// The C `malloc_usable_size` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    if INDEX.is_start(p as usize) {
        // The requested size, as LeakSanitizer and ASan answer: programs
        // that size their writes by malloc_usable_size (Redis does) then
        // stay inside the bytes the scanner reads and a moving realloc
        // copies.
        // SAFETY: p is a live tracked block.
        unsafe { trailer::read(p as usize) }.size
    } else {
        // SAFETY: p is a live glibc block.
        unsafe { real::usable_size(p as *const u8) }
    }
}
