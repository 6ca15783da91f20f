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

/// Mappings currently registered, and mappings ever made that did not fit
/// in the registry (diagnostics for `stats`).
pub fn registry_usage() -> (usize, usize) {
    let live = REGISTRY
        .iter()
        .filter(|s| s.start.load(Ordering::Acquire) != 0)
        .count();
    (live, UNREGISTERED.load(Ordering::Relaxed))
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

    unsafe fn release(ptr: NonNull<u8>, bytes: usize) {
        // SAFETY: per the Backing contract, this is one mapping from `map`.
        unsafe { unmap(ptr.as_ptr(), bytes) }
    }
}

/// Which pages of `[start, start + 4096 * out.len())` are resident
/// (`mincore`): bit 0 of `out[i]` for page i. False if the range is not
/// (entirely) mapped. Lets a scanner skip stack pages never touched
/// instead of faulting them in.
pub fn resident_pages(start: usize, out: &mut [u8]) -> bool {
    // SAFETY: mincore writes one byte per page into out, which has exactly
    // that many; it never touches the range itself.
    unsafe {
        libc::mincore(
            (start & !4095) as *mut libc::c_void,
            out.len() * 4096,
            out.as_mut_ptr(),
        ) == 0
    }
}

/// Whether every page of `[lo, hi)` is mapped (`mincore` fails with ENOMEM
/// on a range with a hole; protection does not matter).
pub fn fully_mapped(lo: usize, hi: usize) -> bool {
    const BATCH: usize = 256;
    let mut flags = [0u8; BATCH];
    let mut page = lo & !4095;
    while page < hi {
        let n = (hi - page).div_ceil(4096).min(BATCH);
        if !resident_pages(page, &mut flags[..n]) && crate::sys::errno() == libc::ENOMEM {
            return false;
        }
        page += n * 4096;
    }
    true
}

/// Whether the page at `addr` may be read: resident, or its state unknown
/// (`mincore` failed for another reason than an unmapped page). False for
/// a page no mapping covers, or one never touched.
pub fn page_worth_reading(addr: usize) -> bool {
    let mut flag = [0u8];
    if resident_pages(addr, &mut flag) {
        flag[0] & 1 != 0
    } else {
        crate::sys::errno() != libc::ENOMEM
    }
}

/// Give the pages of `[start, start + len)` back to the kernel, keeping
/// the range mapped (`MADV_DONTNEED`: later reads see zeros). For a
/// program block that must stay mapped but whose contents no longer
/// matter. Only whole pages inside the range are affected.
///
/// # Safety
/// The range must be private anonymous memory nobody needs the contents of.
pub unsafe fn discard(start: usize, len: usize) {
    let lo = (start + 4095) & !4095;
    let hi = (start + len) & !4095;
    if hi > lo {
        // SAFETY: per the contract; madvise never unmaps.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
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
}
