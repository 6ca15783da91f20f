//! The leak check: mark from every root, classify what stays white.
//!
//! Two modes share one pipeline:
//!
//! - **exact** ([`Mode::Exact`]: the exit check, `__lsan_do_leak_check`):
//!   the other threads are stopped, so their registers are roots and
//!   nothing moves; every white block is a leak.
//! - **live** ([`Mode::Live`]: periodic and requested scans by the scanner
//!   thread, kmemleak-style): nothing is stopped and the program keeps
//!   allocating, freeing and moving pointers. This pass only reports
//!   *candidates*; the scanner confirms them over two scans (see
//!   `scanner.rs`).
//!
//! ## Pipeline
//!
//! 1. exact: take the loader lock (run inside a `dl_iterate_phdr` callback)
//!    so no module comes or goes and no stopped thread can be holding it;
//!    live: copy the list of writable module segments under the lock and
//!    release it at once (dlopen/dlclose never wait for a scan);
//! 2. defer frees ([`quarantine`]); exact: stop every other registered
//!    thread ([`stop`]);
//! 3. roots, graying every block a word points into:
//!    - writable segments of every module except libleakscan itself;
//!    - every thread: its stack and its static TLS and TCB; exact: also its
//!      saved registers, and the stack only from its stack pointer up;
//!      live: the whole stack, minus pages never touched; on stacks and
//!      in registers a page-aligned word counts only as a pointer to a
//!      block starting there (stale page addresses linger in dead frames);
//!    - regions registered with `__lsan_register_root_region`;
//!    - memory the program mapped itself: anonymous writable mappings,
//!      minus leakscan's own mappings, thread stacks (live and dead), glibc
//!      arena heaps and the chunks of live blocks (malloc's memory is
//!      reached through the blocks themselves, never as a root);
//! 4. scan gray blocks until none is left (blocks marked `no_scan` are
//!    marked but not scanned), on `scan_threads` markers: this thread and
//!    helpers made before step 2 ([`markers`]); then, unless a live
//!    check found no white block it could report, gray the blocks
//!    allocated during the check, and in live mode the contents of blocks
//!    freed during it, and scan again;
//! 5. classify what stayed white into direct and indirect leaks, excusing
//!    blocks allocated while the check ran (kmemleak: they count as
//!    referenced), blocks annotated as not leaks, what the caller excuses,
//!    and everything those reach;
//! 6. exact: resume the threads; stop deferring frees and release the
//!    deferred blocks (not at exit: the process is ending).
//!
//! In exact mode other threads may hold glibc's malloc locks between 2 and
//! 6, so nothing here allocates from the heap: buffers are leakscan's own
//! mappings ([`ScratchVec`], [`mem::map`]). Memory that another thread
//! could unmap meanwhile (stacks, dlclose'd segments, registered regions)
//! is copied with `process_vm_readv`, which reports a vanished page
//! instead of faulting. Heap blocks are read in place: the quarantine keeps
//! every block the scan may read allocated until it ends.

use core::sync::atomic::{AtomicBool, Ordering};

use leakscan_core::backing::BackedVec;
use leakscan_core::scan::{classify, Classified, Extent, MarkPool, Marker};
use leakscan_platform::mem::{self, MmapBacking};
use leakscan_platform::{maps, modules, real, sys, threads as pt};

use crate::annotations;
use crate::guard::Guard;
use crate::markers;
use crate::quarantine;
use crate::state::{CURBRK, INDEX, LOADER_GATE, OWN_BASE, SCAN_GEN};
use crate::stop;
use crate::threads::{self, Slot, GHOST, LIVE, SLOTS};
use crate::trailer::{self, Trailer, TRAILER};

/// A growable buffer in leakscan's own mappings: usable while other threads
/// are stopped holding malloc's locks.
pub type ScratchVec<T> = BackedVec<T, MmapBacking>;

/// How a check runs.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Stop the world. `caller_sp`: the stack pointer of leakscan's entry
    /// point; the calling thread's stack is scanned from there up, so the
    /// check's own frames are never roots (I3). `exiting`: the process is
    /// ending (deferred frees are not released).
    Exact { caller_sp: usize, exiting: bool },
    /// Concurrent, from the scanner thread. Gives up if the quarantine
    /// grows past `quarantine_budget` bytes.
    Live { quarantine_budget: usize },
}

/// One unreferenced block, as found by the check.
#[derive(Debug, Clone, Copy)]
pub struct LeakRecord {
    pub start: usize,
    pub size: usize,
    pub direct: bool,
    pub stack: u32,
    pub tick: u32,
    /// Hash of the block's contents (live mode only; 0 otherwise): a block
    /// whose contents changed between two scans is in use.
    pub checksum: u64,
}

pub struct CheckResult {
    pub leaks: ScratchVec<LeakRecord>,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub scanned_bytes: u64,
    pub duration_ns: u64,
    /// Blocks and bytes freed during the check and held back until it ended.
    pub quarantined: (usize, usize),
    /// False if leakscan ran out of its own memory mid-check, or a live
    /// check gave up; the leak list is then not trustworthy.
    pub complete: bool,
}

/// Set when the process starts to exit: a live scan in progress gives up
/// so the exact check can start.
pub static EXITING: AtomicBool = AtomicBool::new(false);

/// Set while a program thread needs the process to itself (`unshare`,
/// `setns`: see `namespaces`): a live scan in progress gives up, and
/// leakscan's threads end.
pub static RETIRING: AtomicBool = AtomicBool::new(false);

/// glibc's non-main arenas live in heaps of this size, aligned to it.
const HEAP_MAX: usize = 64 << 20;
const PAGE: usize = 4096;
/// Stack below the saved stack pointer that may still hold live data (the
/// x86-64 red zone).
const RED_ZONE: usize = 128;
const COPY_BUF: usize = 256 * 1024;

pub(crate) type ExtentOf = fn(usize) -> Extent;

pub(crate) fn block_extent(start: usize) -> Extent {
    let t = live_trailer(start);
    Extent {
        size: t.size,
        scan: t.flags & trailer::NO_SCAN == 0,
    }
}

fn live_trailer(start: usize) -> Trailer {
    // SAFETY: only called for blocks the index holds; the quarantine keeps
    // them allocated for the duration of a check.
    unsafe { trailer::read(start) }
}

/// Memory the check uses, mapped before the world stops.
struct Scratch {
    copy: *mut u8,
    maps: *mut u8,
    maps_len: usize,
    excluded: ScratchVec<(usize, usize)>,
}

impl Scratch {
    fn new() -> Option<Scratch> {
        let copy = mem::map(COPY_BUF)?.as_ptr();
        let maps_len = 4 << 20;
        let maps = mem::map(maps_len)?.as_ptr();
        Some(Scratch {
            copy,
            maps,
            maps_len,
            excluded: ScratchVec::new(),
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: both are our own mappings of these lengths, unused now.
        unsafe {
            mem::unmap(self.copy, COPY_BUF);
            mem::unmap(self.maps, self.maps_len);
        }
    }
}

/// Run a check. `excused(start, trailer)` names white blocks the caller
/// does not want reported (on top of those allocated during the check and
/// those annotated as not leaks). The caller holds the scan lock.
pub fn run(g: &Guard, mode: Mode, excused: &dyn Fn(usize, &Trailer) -> bool) -> CheckResult {
    let started = sys::monotonic_ns();
    let mut result = CheckResult {
        leaks: ScratchVec::new(),
        live_blocks: 0,
        live_bytes: 0,
        scanned_bytes: 0,
        duration_ns: 0,
        quarantined: (0, 0),
        complete: false,
    };
    let Some(mut scratch) = Scratch::new() else {
        return result;
    };
    // Helper markers are created now, if need be: creating a thread
    // allocates, which it must not do once the world is stopped.
    let helpers = markers::prepare(g);
    match mode {
        Mode::Exact { .. } => {
            let _gate = LOADER_GATE.enter();
            let mut ran = false;
            modules::for_each_module(|_| {
                ran = true;
                check_locked(g, mode, excused, helpers, &mut scratch, &mut result);
                false
            });
            if !ran {
                check_locked(g, mode, excused, helpers, &mut scratch, &mut result);
            }
        }
        Mode::Live { .. } => check_locked(g, mode, excused, helpers, &mut scratch, &mut result),
    }
    result.quarantined = quarantine::deferred();
    // The check's time ends here; giving the deferred blocks back is the
    // quarantine's, paid by this thread, not by the program.
    result.duration_ns = sys::monotonic_ns() - started;
    quarantine::end(!matches!(mode, Mode::Exact { exiting: true, .. }));
    result
}

/// Writable segments of every module but ours, as (start, end).
fn module_segments() -> ScratchVec<(usize, usize, bool)> {
    let own = OWN_BASE.load(Ordering::Relaxed);
    let mut out = ScratchVec::new();
    modules::for_each_module(|m| {
        for seg in m.segments() {
            if m.base == own || seg.writable {
                let _ = out.push((seg.start, seg.end, m.base != own));
            }
        }
        true
    });
    out
}

fn check_locked(
    g: &Guard,
    mode: Mode,
    excused: &dyn Fn(usize, &Trailer) -> bool,
    helpers: usize,
    scratch: &mut Scratch,
    result: &mut CheckResult,
) {
    let generation = SCAN_GEN.fetch_add(1, Ordering::AcqRel).wrapping_add(1) as u16;
    // Live mode: the module list is taken first, under the loader lock
    // and without the quarantine, so dlopen never waits on a scan.
    let segments = {
        let _gate = LOADER_GATE.enter();
        module_segments()
    };
    let regions = annotations::root_regions();
    quarantine::begin();
    let stop = match mode {
        Mode::Exact { .. } => Some(stop::stop_others(g)),
        Mode::Live { .. } => None,
    };
    INDEX.clear_marks();
    quarantine::set_marking(true);
    let give_up = || match mode {
        Mode::Exact { .. } => false,
        Mode::Live { quarantine_budget } => {
            EXITING.load(Ordering::Relaxed)
                || RETIRING.load(Ordering::Relaxed)
                || quarantine::deferred().1 > quarantine_budget
        }
    };
    let mut marker = Marker::new(&INDEX, block_extent as ExtentOf);
    // Only a live scan has a program freeing blocks the mark has read (and
    // a free only looks at the record while `set_marking` says so).
    marker.set_record_scanned(matches!(mode, Mode::Live { .. }));
    let mut roots = Roots {
        marker: &mut marker,
        give_up: &give_up,
        gave_up: false,
        // SAFETY: `copy` is our own mapping of COPY_BUF bytes, page-aligned.
        copy: unsafe { core::slice::from_raw_parts_mut(scratch.copy as *mut usize, COPY_BUF / 8) },
        excluded: &mut scratch.excluded,
    };
    roots.globals(segments.as_slice(), mode);
    roots.threads(match (mode, stop) {
        (Mode::Exact { caller_sp, .. }, Some((stop, _))) => Some((stop, caller_sp)),
        _ => None,
    });
    roots.registered_regions(regions.as_slice());
    let maps_ok = roots.program_mappings(scratch.maps, scratch.maps_len);
    let roots_done = !roots.gave_up;
    let live = matches!(mode, Mode::Live { .. });
    let is_excused_trailer = |start: usize, t: &Trailer| {
        t.generation == generation || t.flags & trailer::NOT_LEAK != 0 || excused(start, t)
    };
    let drained = roots_done && drain(&mut marker, helpers, &give_up);
    // A live scan whose first drain left no white block it could report is
    // done: the rescue passes and the classification below can only excuse
    // white blocks, never add one. In a healthy program that is nearly every
    // scan, and it spares rereading the blocks allocated and freed meanwhile.
    let unreportable = if live && drained {
        white_if_unreportable(&is_excused_trailer)
    } else {
        None
    };
    let mut recorded_all = true;
    let (drained, classified) = match unreportable {
        Some(white) => (true, white),
        None => {
            let drained = drained
                && gray_new_blocks(&mut marker, generation, helpers, &give_up)
                && (!live || gray_freed_blocks(&mut marker, helpers, &give_up));
            let is_excused = |start: usize| is_excused_trailer(start, &live_trailer(start));
            // SAFETY: as above.
            let classified = unsafe {
                classify(&INDEX, block_extent, is_excused, |start, size, direct| {
                    let t = live_trailer(start);
                    recorded_all &= result.leaks.push(LeakRecord {
                        start,
                        size,
                        direct,
                        stack: t.stack,
                        tick: t.tick,
                        // The block stays allocated (quarantine), as the
                        // enclosing SAFETY line says.
                        checksum: if live { checksum(start, size) } else { 0 },
                    });
                })
            };
            (drained, classified)
        }
    };
    quarantine::set_marking(false);
    let complete =
        drained && maps_ok && !marker.overflowed() && classified.complete && recorded_all;
    let (reached, reached_bytes) = marker.marked();
    result.live_blocks = reached + classified.white_blocks;
    result.live_bytes = reached_bytes + classified.white_bytes;
    result.scanned_bytes = marker.scanned_bytes();
    result.complete = complete;
    if let Some((stop, _)) = stop {
        stop::resume_others(stop);
    }
}

/// Scan gray blocks until none is left, on this thread and `helpers`
/// helper markers; false if `give_up` said so.
fn drain(
    marker: &mut Marker<'_, MmapBacking, ExtentOf>,
    helpers: usize,
    give_up: &(dyn Fn() -> bool + Sync),
) -> bool {
    if helpers == 0 {
        // SAFETY: stopped threads cannot free, and frees by the others are
        // deferred by the quarantine: tracked blocks stay mapped.
        return unsafe { marker.drain_until(give_up) };
    }
    let pool = MarkPool::new(marker);
    let job = markers::Job {
        pool: &pool,
        give_up,
    };
    let drained = markers::with_helpers(&job, || {
        // SAFETY: as above; for the helpers too, since `with_helpers`
        // returns only once they have let go of the pool.
        unsafe { marker.drain_shared(&pool, give_up, markers::pause) }
    });
    marker.absorb(&pool);
    drained
}

/// Blocks allocated while the check ran count as referenced (kmemleak's
/// rule), and so does whatever they point to: a pointer may have moved into
/// a new block after the block that held it was scanned. Graying them here,
/// rather than excusing them in `classify`, keeps the white set small in a
/// program that allocates fast while a live scan runs. One pass: a thread
/// that keeps allocating would otherwise keep the check going; what it
/// allocates after the pass is excused by `classify`. Returns false if the
/// drain gave up.
fn gray_new_blocks(
    marker: &mut Marker<'_, MmapBacking, ExtentOf>,
    generation: u16,
    helpers: usize,
    give_up: &(dyn Fn() -> bool + Sync),
) -> bool {
    INDEX.for_each_unmarked(|start| {
        if live_trailer(start).generation == generation {
            marker.gray_block(start);
        }
        true
    });
    drain(marker, helpers, give_up)
}

/// The white blocks' totals if none of them would be reported (every one
/// is excused: allocated during the check, annotated, or excused by the
/// caller, such as too young), else `None`: stops at the first that would.
/// What an excused block reaches is excused too (see `classify`), so when
/// all are excused, the white set needs no classifying.
fn white_if_unreportable(is_excused: &dyn Fn(usize, &Trailer) -> bool) -> Option<Classified> {
    let mut white = Classified {
        complete: true,
        white_blocks: 0,
        white_bytes: 0,
    };
    let mut reportable = false;
    INDEX.for_each_unmarked(|start| {
        let t = live_trailer(start);
        reportable = !is_excused(start, &t);
        white.white_blocks += 1;
        white.white_bytes += t.size as u64;
        !reportable
    });
    (!reportable).then_some(white)
}

/// Blocks freed while a live scan ran were in use when it began, and what
/// they pointed to may since have moved into memory the scan had already
/// read: `head = n->next; free(n)` after the scan copied `head` (still `n`)
/// and before it looked `n` up, leaves the rest of the list reachable only
/// through `n`. So their contents count as roots, as the new blocks' do.
/// Only those the scan had not reached when they were freed: the others
/// are scanned from the gray stack, with the contents the program left.
/// One pass; the quarantine keeps them readable until the scan ends, with
/// their contents intact (its link is in the trailer, which is not read);
/// the middle pages of big blocks were given back (only the first page is
/// read). Returns false if the drain gave up.
fn gray_freed_blocks(
    marker: &mut Marker<'_, MmapBacking, ExtentOf>,
    helpers: usize,
    give_up: &(dyn Fn() -> bool + Sync),
) -> bool {
    quarantine::for_each_deferred(|p| {
        // SAFETY: a deferred block is a live glibc block with its trailer
        // until the quarantine ends, after this check.
        if unsafe { trailer::read(p) }.flags & (trailer::REACHED | trailer::NO_SCAN) != 0 {
            // Scanned from the gray stack (or never to be scanned).
            return;
        }
        // SAFETY: as above.
        let usable = unsafe { real::usable_size(p as *const u8) };
        // The program's bytes end at the trailer; a big block kept only its
        // first page (see quarantine::defer).
        let len = if usable > quarantine::DISCARD_FROM {
            PAGE
        } else {
            usable.saturating_sub(TRAILER)
        };
        // SAFETY: as above; [p, p + len) lies inside the block.
        unsafe { marker.scan_range(p, len) };
    });
    drain(marker, helpers, give_up)
}

/// A fast hash of a block's contents (FNV-style over 64-bit words, with a
/// final mix): only equality between two scans matters.
///
/// # Safety
/// `[start, start + size)` is readable.
unsafe fn checksum(start: usize, size: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ size as u64;
    // SAFETY: forwarded contract; the words are read atomically because the
    // program may be writing them.
    let words = unsafe {
        core::slice::from_raw_parts(start as *const core::sync::atomic::AtomicUsize, size / 8)
    };
    for w in words {
        h = (h ^ w.load(Ordering::Relaxed) as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 29)
}

/// Where a thread's static TLS begins. glibc's static TLS size
/// (`_dl_get_tls_static_info`) includes the TCB, which lies above the
/// thread pointer; counting it below as well would reach past the TLS block
/// into whatever is mapped under it — for the main thread, whose TLS ld.so
/// allocates on its own, possibly one of leakscan's mappings (an index
/// chunk, whose page and cover words would then keep blocks "referenced").
fn tls_below(tp: usize, tls_size: usize, tcb_size: usize) -> usize {
    tp.saturating_sub(tls_size.saturating_sub(tcb_size))
}

/// Merge overlapping or touching ranges of a sorted list, in place.
fn coalesce(ranges: &mut ScratchVec<(usize, usize)>) {
    let list = ranges.as_mut_slice();
    let mut out = 0;
    for i in 0..list.len() {
        let (lo, hi) = list[i];
        if out > 0 && lo <= list[out - 1].1 {
            list[out - 1].1 = list[out - 1].1.max(hi);
        } else {
            list[out] = (lo, hi);
            out += 1;
        }
    }
    ranges.truncate(out);
}

struct Roots<'a, 'm> {
    marker: &'a mut Marker<'m, MmapBacking, ExtentOf>,
    /// Asked between chunks of root memory: true = stop scanning roots.
    give_up: &'a dyn Fn() -> bool,
    gave_up: bool,
    copy: &'a mut [usize],
    /// Ranges that are not the program's own mappings, or that were already
    /// scanned: subtracted from the anonymous mappings.
    excluded: &'a mut ScratchVec<(usize, usize)>,
}

impl Roots<'_, '_> {
    /// Writable segments of every module but ours. Exact mode holds the
    /// loader lock, so they are read in place; live mode copies them (a
    /// module may be dlclose'd mid-scan).
    fn globals(&mut self, segments: &[(usize, usize, bool)], mode: Mode) {
        // glibc's `__curbrk` is the heap's end, not a pointer to a block.
        let curbrk = CURBRK.load(Ordering::Relaxed);
        for &(start, end, scan) in segments {
            let _ = self.excluded.push((start, end));
            if !scan {
                continue;
            }
            let pieces = if start <= curbrk && curbrk + 8 <= end {
                [(start, curbrk), (curbrk + 8, end)]
            } else {
                [(start, end), (end, end)]
            };
            for (lo, hi) in pieces.into_iter().filter(|(lo, hi)| hi > lo) {
                match mode {
                    // SAFETY: PT_LOAD segments of a loaded module are mapped
                    // and readable while the loader lock is held.
                    Mode::Exact { .. } => unsafe { self.marker.scan_range(lo, hi - lo) },
                    Mode::Live { .. } => self.copied(lo, hi),
                }
            }
        }
    }

    /// Regions registered with `__lsan_register_root_region` (the program
    /// may unmap one at any time: copied).
    fn registered_regions(&mut self, regions: &[(usize, usize)]) {
        for &(lo, hi) in regions {
            self.copied(lo, hi);
        }
    }

    /// Every registered thread: its stack, static TLS and TCB. In a
    /// stopped world (`stop` = Some((stop number, caller's sp))) also its
    /// saved registers, and the stack only from the saved stack pointer up.
    /// In a running world registers are not known (the two-scan rule covers
    /// pointers that live only in them for a moment) and the whole stack is
    /// read, minus pages never touched.
    fn threads(&mut self, stop: Option<(u32, usize)>) {
        let me = sys::gettid();
        let tls = threads::tls_geometry();
        for slot in &SLOTS {
            let state = slot.state.load(Ordering::Acquire);
            if state != LIVE && state != GHOST {
                continue;
            }
            let (lo, hi) = (
                slot.stack_lo.load(Ordering::Relaxed),
                slot.stack_hi.load(Ordering::Relaxed),
            );
            let _ = self.excluded.push((lo, hi));
            // Stale page addresses linger in dead frames: see
            // `Marker::set_stack_words`.
            self.marker.set_stack_words(true);
            match stop {
                None => self.resident(lo, hi),
                Some((stop, caller_sp)) => self.stopped_stack(slot, state, me, stop, caller_sp),
            }
            self.marker.set_stack_words(false);
            if let Some((tls_size, tcb_size)) = tls {
                let tp = slot.tp.load(Ordering::Relaxed);
                self.copied(tls_below(tp, tls_size, tcb_size), tp + tcb_size);
            }
        }
        self.dead_threads();
    }

    /// One thread's registers and live stack in a stopped world.
    fn stopped_stack(&mut self, slot: &Slot, state: u32, me: i32, stop: u32, caller_sp: usize) {
        let (lo, hi) = (
            slot.stack_lo.load(Ordering::Relaxed),
            slot.stack_hi.load(Ordering::Relaxed),
        );
        if state == LIVE && slot.tid.load(Ordering::Relaxed) == me {
            if lo <= caller_sp && caller_sp < hi {
                // SAFETY: our own live stack, above our entry frame.
                unsafe { self.marker.scan_range(caller_sp, hi - caller_sp) };
            } else {
                // Exiting from an alternate signal stack or a coroutine.
                self.copied(lo, hi);
            }
        } else if state == LIVE && slot.stopped.load(Ordering::Acquire) == stop {
            let mut regs = [0usize; pt::SAVED_REGS];
            for (r, saved) in regs.iter_mut().zip(&slot.regs) {
                *r = saved.load(Ordering::Relaxed);
            }
            self.marker.scan_words(&regs);
            let sp = slot.sp.load(Ordering::Relaxed);
            if lo <= sp && sp < hi {
                self.copied(sp.saturating_sub(RED_ZONE).max(lo), hi);
            } else {
                // On an alternate signal stack or a coroutine stack.
                self.copied(lo, hi);
            }
        } else {
            self.copied(lo, hi);
        }
    }

    /// Exited threads: their stacks are excluded (stale frames), their TCBs
    /// are roots (glibc reuses the DTV). Only while the stack is still
    /// glibc's cached mapping — the thread descriptor in place and the whole
    /// range mapped: glibc unmaps cached stacks beyond its cache size, and
    /// the range may then hold anything — the program's own mapping, next
    /// to another thread's smaller stack whose descriptor landed at the
    /// same address — which must be scanned as such.
    fn dead_threads(&mut self) {
        let tls = threads::tls_geometry();
        let mut dead = ScratchVec::<(usize, usize, usize)>::new();
        threads::for_each_dead_stack(|lo, hi, tp| {
            dead.push((lo, hi, tp));
        });
        for &(lo, hi, tp) in dead.as_slice() {
            if !pt::is_thread_descriptor(tp) || !mem::fully_mapped(lo, hi) {
                continue;
            }
            self.excluded.push((lo, hi));
            if let Some((_, tcb_size)) = tls {
                self.copied(tp, tp + tcb_size);
            }
        }
    }

    /// Scan the resident pages of `[lo, hi)` through copies: a stack's
    /// untouched pages hold nothing, and reading them would fault them in.
    fn resident(&mut self, lo: usize, hi: usize) {
        const BATCH: usize = 256;
        let mut page = lo & !(PAGE - 1);
        let mut flags = [0u8; BATCH];
        while page < hi {
            let n = ((hi - page).div_ceil(PAGE)).min(BATCH);
            if !mem::resident_pages(page, &mut flags[..n]) {
                // Part of the batch is not mapped: the main thread's stack
                // below its mapping (the kernel grows it on a fault, and
                // warns when a remote read would). Page by page, then.
                for k in 0..n {
                    let p = page + k * PAGE;
                    if mem::page_worth_reading(p) {
                        self.copied(p.max(lo), (p + PAGE).min(hi));
                    }
                }
                page += n * PAGE;
                continue;
            }
            let mut i = 0;
            while i < n {
                if flags[i] & 1 == 0 {
                    i += 1;
                    continue;
                }
                let run_start = i;
                while i < n && flags[i] & 1 != 0 {
                    i += 1;
                }
                let from = (page + run_start * PAGE).max(lo);
                let to = (page + i * PAGE).min(hi);
                self.copied(from, to);
            }
            page += n * PAGE;
        }
    }

    /// leakscan's own mappings are never roots (I3), nor are blocks freed
    /// during the check and held back by the quarantine (stale contents).
    fn own_memory(&mut self) {
        let excluded = &mut *self.excluded;
        mem::for_each_own_mapping(|start, len| {
            let _ = excluded.push((start, start + len));
        });
    }

    /// Deferred blocks that are mappings of their own: stale contents, never
    /// roots. (Deferred blocks inside arena heaps are skipped with the
    /// heaps.) Taken after /proc/self/maps was read, so every mapping in
    /// that snapshot that was freed since is in the list.
    fn deferred_mappings(&mut self) {
        let excluded = &mut *self.excluded;
        quarantine::for_each_deferred(|p| {
            // SAFETY: deferred blocks stay live glibc blocks until the
            // quarantine ends, after this check.
            unsafe {
                if real::is_mmapped(p as *const u8) {
                    let _ = excluded.push(real::chunk_extent(p as *const u8));
                }
            }
        });
    }

    /// Anonymous writable mappings the program made itself (custom arenas,
    /// e.g. CPython's), minus everything excluded so far and malloc's own
    /// memory. Returns false if /proc/self/maps could not be read.
    fn program_mappings(&mut self, buf: *mut u8, len: usize) -> bool {
        // SAFETY: buf is our own mapping of len bytes.
        let text = unsafe { core::slice::from_raw_parts_mut(buf, len) };
        let Some(n) = maps::read_maps(text) else {
            return false;
        };
        // Taken after /proc/self/maps was read: a mapping leakscan made
        // since the last check (an index chunk a program thread added a
        // moment ago) must be excluded too.
        self.own_memory();
        self.deferred_mappings();
        // Take the list out of `self` while `self` scans; it is complete now.
        // Sorted and merged, its ends increase too, so the first range that
        // can touch a mapping is found by binary search (a live scan may
        // exclude a great many freed mappings).
        let mut excluded = core::mem::take(&mut *self.excluded);
        excluded.as_mut_slice().sort_unstable();
        coalesce(&mut excluded);
        for m in maps::mappings(&text[..n]) {
            if !(m.readable && m.writable && m.is_anonymous_like()) {
                continue;
            }
            if self.gave_up {
                break;
            }
            let mut cur = m.start;
            let first = excluded.as_slice().partition_point(|&(_, hi)| hi <= cur);
            for &(lo, hi) in &excluded.as_slice()[first..] {
                if hi <= cur || lo >= m.end {
                    continue;
                }
                if lo > cur {
                    self.program_region(cur, lo);
                }
                cur = cur.max(hi);
                if cur >= m.end {
                    break;
                }
            }
            if cur < m.end {
                self.program_region(cur, m.end);
            }
        }
        *self.excluded = excluded;
        true
    }

    /// Scan `[lo, hi)` of a program mapping, skipping glibc arena heaps.
    fn program_region(&mut self, lo: usize, hi: usize) {
        let mut cur = lo;
        while cur < hi {
            if cur.is_multiple_of(HEAP_MAX) {
                if let Some(len) = self.arena_heap_len(cur) {
                    cur = cur.saturating_add(len);
                    continue;
                }
            }
            let end = ((cur / HEAP_MAX + 1) * HEAP_MAX).min(hi);
            self.outside_blocks(cur, end);
            cur = end;
        }
    }

    /// The length of the glibc arena heap starting at `a`, if one does: its
    /// `heap_info` header (arena pointer, previous heap, size, mprotect size)
    /// has a recognisable shape.
    fn arena_heap_len(&mut self, a: usize) -> Option<usize> {
        let mut words = [0usize; 4];
        // SAFETY: a [usize; 4] viewed as bytes.
        let bytes = unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, 32) };
        if sys::read_self(a, bytes) != 32 {
            return None;
        }
        let [arena, prev, size, protected] = words;
        let header_ok = matches!(arena % HEAP_MAX, 32 | 48) && arena != 0;
        let prev_ok = prev == 0 || prev % HEAP_MAX == 0;
        let size_ok = size > 0 && size <= HEAP_MAX && size % PAGE == 0;
        let prot_ok = protected >= size && protected <= HEAP_MAX && protected % PAGE == 0;
        (header_ok && prev_ok && size_ok && prot_ok).then_some(protected)
    }

    /// Scan `[lo, hi)` except the pages of live tracked blocks' chunks.
    fn outside_blocks(&mut self, lo: usize, hi: usize) {
        let mut cur = lo;
        while cur < hi {
            let Some(block) = INDEX.first_block_touching(cur, hi) else {
                self.copied(cur, hi);
                return;
            };
            // SAFETY: the index holds only live blocks while the world is
            // stopped, so the chunk header is readable.
            let (clo, chi) = unsafe { real::chunk_extent(block as *const u8) };
            let skip_from = (clo & !(PAGE - 1)).max(cur);
            if skip_from > cur {
                self.copied(cur, skip_from.min(hi));
            }
            let next = (chi + PAGE - 1) & !(PAGE - 1);
            cur = next.max((cur & !(PAGE - 1)) + PAGE);
        }
    }

    /// Scan memory that might vanish, through process_vm_readv copies.
    fn copied(&mut self, lo: usize, hi: usize) {
        let mut cur = (lo + 7) & !7;
        let cap = self.copy.len() * 8;
        while cur + 8 <= hi {
            if self.gave_up || (self.give_up)() {
                self.gave_up = true;
                return;
            }
            let want = (hi - cur).min(cap) & !7;
            // SAFETY: the copy buffer viewed as bytes.
            let bytes =
                unsafe { core::slice::from_raw_parts_mut(self.copy.as_mut_ptr() as *mut u8, want) };
            let got = sys::read_self(cur, bytes) & !7;
            self.marker.scan_words(&self.copy[..got / 8]);
            cur = if got == want {
                cur + got
            } else {
                // Skip the page that could not be read.
                ((cur + got) & !(PAGE - 1)) + PAGE
            };
        }
    }
}
