//! What a program can tell leakscan: LeakSanitizer's interface, unchanged,
//! and kmemleak's annotations under leakscan's own names.
//!
//! | call | effect |
//! |---|---|
//! | `__lsan_ignore_object(p)`, `leakscan_not_leak(p)` | the block is never reported, nor anything reachable only through it (kmemleak's `not_leak`) |
//! | `leakscan_no_scan(p)` | the block's contents are not scanned: it may still be reported, and its pointers keep nothing alive |
//! | `leakscan_ignore(p)` | both: neither reported nor scanned (kmemleak's `ignore`) |
//! | `__lsan_disable()` / `__lsan_enable()` | what this thread allocates in between is never reported |
//! | `__lsan_register_root_region(p, n)` / `__lsan_unregister_root_region(p, n)` | `[p, p+n)` is scanned as a root |
//! | `__lsan_do_leak_check()` | the exact check now, once; no check at exit afterwards |
//! | `__lsan_do_recoverable_leak_check()` | the exact check now; returns 1 if leaks were found |
//!
//! Block annotations are flags in the block's trailer. Root regions are a
//! read-mostly registry under RCU (crossbeam-epoch, with the library's own
//! collector): updates copy the list and swap it in; the scan takes a
//! snapshot under a pin *before* it stops any thread (a pin may run deferred
//! destructors, which free). No hook ever pins.
//!
//! A program calls these through weak declarations (see
//! `include/leakscan.h`) so it links and runs without the library too.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crossbeam_epoch::{Atomic, Collector, Owned};
use leakscan_platform::{fdtable, sys};

use crate::check::ScratchVec;
use crate::guard::{self, Guard};
use crate::state::{options, INDEX};
use crate::trailer::{self, NOT_LEAK, NO_SCAN};

static COLLECTOR: OnceLock<Collector> = OnceLock::new();
/// The registered root regions, `(start, len)`.
static REGIONS: Atomic<Vec<(usize, usize)>> = Atomic::null();
/// Serialises region updates (program threads only; reset after fork).
static REGIONS_WRITER: AtomicBool = AtomicBool::new(false);
/// `__lsan_do_leak_check` ran: no more checks, none at exit.
pub static FINAL_CHECK_DONE: AtomicBool = AtomicBool::new(false);

fn collector() -> &'static Collector {
    COLLECTOR.get_or_init(Collector::new)
}

fn warn(msg: &str) {
    if options().verbosity >= 1 {
        fdtable::write_stderr(format!("leakscan: {msg}\n").as_bytes());
    }
}

/// Add `flags` to the tracked block containing `p`; false if none does.
fn annotate(p: *const c_void, flags: u8, who: &str) -> bool {
    let Some(_g) = Guard::enter() else {
        return false;
    };
    // SAFETY: the program passes a pointer into a live block (the
    // annotation contract); the trailer of the candidate is readable then.
    let found = INDEX.find(p as usize, |s| unsafe { trailer::read(s) }.size);
    match found {
        Some((start, _)) => {
            // SAFETY: as above: a live tracked block.
            unsafe { trailer::add_flags(start, flags) };
            true
        }
        None => {
            if options().verbosity >= 2 {
                warn(&format!("{who}({p:?}): no tracked block there"));
            }
            false
        }
    }
}

/// LeakSanitizer: never report the block containing `p`.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn __lsan_ignore_object(p: *const c_void) {
    annotate(p, NOT_LEAK, "__lsan_ignore_object");
}

/// kmemleak's `not_leak`: never report the block containing `p` (it is
/// still scanned, so what it points to is not reported either).
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn leakscan_not_leak(p: *const c_void) {
    annotate(p, NOT_LEAK, "leakscan_not_leak");
}

/// kmemleak's `ignore`: neither report nor scan the block containing `p`.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn leakscan_ignore(p: *const c_void) {
    annotate(p, NOT_LEAK | NO_SCAN, "leakscan_ignore");
}

/// kmemleak's `no_scan`: do not scan the block containing `p` for pointers.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn leakscan_no_scan(p: *const c_void) {
    annotate(p, NO_SCAN, "leakscan_no_scan");
}

/// LeakSanitizer: allocations by this thread are not reported until the
/// matching `__lsan_enable`.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn __lsan_disable() {
    guard::change_ignore_depth(1);
}

#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn __lsan_enable() {
    if !guard::change_ignore_depth(-1) {
        warn("__lsan_enable() without a matching __lsan_disable() (ignored)");
    }
}

/// Replace the region list with `f(old list)`.
fn update_regions(f: impl FnOnce(&mut Vec<(usize, usize)>) -> bool) -> bool {
    let _g = Guard::enter();
    while REGIONS_WRITER
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        sys::yield_now();
    }
    let handle = collector().register();
    let pin = handle.pin();
    let current = REGIONS.load(Ordering::Acquire, &pin);
    // SAFETY: a non-null list is only destroyed after a grace period that
    // this pin holds off.
    let mut list = unsafe { current.as_ref() }.cloned().unwrap_or_default();
    let changed = f(&mut list);
    if changed {
        let old = REGIONS.swap(Owned::new(list), Ordering::AcqRel, &pin);
        if !old.is_null() {
            // SAFETY: `old` is unlinked; readers pinned now may still use
            // it, and the collector frees it only after they unpin.
            unsafe { pin.defer_destroy(old) };
        }
    }
    REGIONS_WRITER.store(false, Ordering::Release);
    changed
}

/// LeakSanitizer: scan `[p, p + size)` as a root from now on.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn __lsan_register_root_region(p: *const c_void, size: usize) {
    update_regions(|list| {
        list.push((p as usize, size));
        true
    });
}

/// LeakSanitizer: stop scanning a region registered with exactly these
/// arguments.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn __lsan_unregister_root_region(p: *const c_void, size: usize) {
    let found = update_regions(|list| {
        let at = list.iter().position(|&r| r == (p as usize, size));
        at.map(|i| list.swap_remove(i)).is_some()
    });
    if !found {
        warn(&format!(
            "__lsan_unregister_root_region({p:?}, {size}): no such region was registered (ignored)"
        ));
    }
}

/// A copy of the registered regions as `(lo, hi)`, taken before a check
/// stops any thread.
pub fn root_regions() -> ScratchVec<(usize, usize)> {
    let mut out = ScratchVec::new();
    let handle = collector().register();
    let pin = handle.pin();
    // SAFETY: the list stays alive while we are pinned.
    if let Some(list) = unsafe { REGIONS.load(Ordering::Acquire, &pin).as_ref() } {
        for &(p, n) in list {
            out.push((p, p.saturating_add(n)));
        }
    }
    out
}

/// In a fork child: a writer that was mid-update is gone.
pub fn after_fork_in_child() {
    REGIONS_WRITER.store(false, Ordering::Release);
}

/// LeakSanitizer: run the exact check now, as at exit (including
/// `exitcode`), and never again.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn __lsan_do_leak_check() {
    if FINAL_CHECK_DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    let sp = leakscan_platform::threads::stack_pointer();
    crate::checked_report(sp, crate::CheckKind::Final);
}

/// LeakSanitizer: run the exact check now; 1 if leaks were found.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn __lsan_do_recoverable_leak_check() -> c_int {
    if FINAL_CHECK_DONE.load(Ordering::Acquire) {
        return 0;
    }
    let sp = leakscan_platform::threads::stack_pointer();
    c_int::from(crate::checked_report(sp, crate::CheckKind::Recoverable) > 0)
}
