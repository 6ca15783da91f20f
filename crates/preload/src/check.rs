//! The exact leak check: stop the world, mark from every root, classify.
//!
//! ## Pipeline
//!
//! 1. take the loader lock (run inside a `dl_iterate_phdr` callback) so no
//!    module comes or goes and no stopped thread can be holding it;
//! 2. defer frees ([`quarantine`]), then stop every other registered thread
//!    ([`stop`]); threads that cannot be stopped keep running, and blocks
//!    they allocate meanwhile are never reported;
//! 3. roots, graying every block a word points into:
//!    - writable segments of every module except libleakscan itself;
//!    - every thread: saved registers, its stack from the stack pointer up,
//!      its static TLS and TCB (DTV and dynamic TLS are heap blocks
//!      reachable from there); threads that could not be stopped and fork
//!      ghosts are scanned whole;
//!    - memory the program mapped itself: anonymous writable mappings,
//!      minus leakscan's own mappings, thread stacks (live and dead), glibc
//!      arena heaps and the chunks of live blocks (malloc's memory is
//!      reached through the blocks themselves, never as a root);
//! 4. scan gray blocks until none is left;
//! 5. classify what stayed white into direct and indirect leaks;
//! 6. resume the threads and stop deferring frees (the blocks already
//!    deferred stay allocated: the process is ending).
//!
//! Between 2 and 6 other threads may hold glibc's malloc locks, so nothing
//! here allocates from the heap: buffers are leakscan's own mappings
//! ([`ScratchVec`], [`mem::map`]). Memory that another (unregistered) thread
//! could unmap meanwhile is copied with `process_vm_readv`, which reports a
//! vanished page instead of faulting.

use core::sync::atomic::Ordering;

use leakscan_core::backing::BackedVec;
use leakscan_core::scan::{classify, Marker};
use leakscan_platform::mem::{self, MmapBacking};
use leakscan_platform::{maps, modules, real, sys, threads as pt};

use crate::guard::Guard;
use crate::quarantine;
use crate::state::{INDEX, OWN_BASE, SCAN_GEN};
use crate::stop;
use crate::threads::{self, GHOST, LIVE, SLOTS};
use crate::trailer;

/// A growable buffer in leakscan's own mappings: usable while other threads
/// are stopped holding malloc's locks.
pub type ScratchVec<T> = BackedVec<T, MmapBacking>;

/// One leaked block, as found by the check.
#[derive(Debug, Clone, Copy)]
pub struct LeakRecord {
    pub start: usize,
    pub size: usize,
    pub direct: bool,
    pub stack: u32,
    pub tick: u32,
}

pub struct CheckResult {
    pub leaks: ScratchVec<LeakRecord>,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub scanned_bytes: u64,
    pub duration_ns: u64,
    /// False if leakscan ran out of its own memory mid-check; the leak list
    /// is then not trustworthy and is not reported.
    pub complete: bool,
}

/// glibc's non-main arenas live in heaps of this size, aligned to it.
const HEAP_MAX: usize = 64 << 20;
const PAGE: usize = 4096;
/// Stack below the saved stack pointer that may still hold live data (the
/// x86-64 red zone).
const RED_ZONE: usize = 128;
const COPY_BUF: usize = 256 * 1024;

type SizeOf = fn(usize) -> usize;

fn block_size(start: usize) -> usize {
    live_trailer(start).size
}

fn live_trailer(start: usize) -> trailer::Trailer {
    // SAFETY: only called for blocks the index holds, which are live while
    // the world is stopped.
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

/// Run the exact check. Other threads are stopped for its duration.
/// `caller_sp` is the stack pointer of leakscan's entry point (the exit
/// hook): the calling thread's stack is scanned from there up, so the
/// check's own frames are never roots (I3).
pub fn exact_check(g: &Guard, caller_sp: usize) -> CheckResult {
    let started = sys::monotonic_ns();
    let mut result = CheckResult {
        leaks: ScratchVec::new(),
        live_blocks: 0,
        live_bytes: 0,
        scanned_bytes: 0,
        duration_ns: 0,
        complete: false,
    };
    let Some(mut scratch) = Scratch::new() else {
        return result;
    };
    let mut ran = false;
    modules::for_each_module(|_| {
        ran = true;
        check_locked(g, caller_sp, &mut scratch, &mut result);
        false
    });
    if !ran {
        check_locked(g, caller_sp, &mut scratch, &mut result);
    }
    quarantine::end();
    result.duration_ns = sys::monotonic_ns() - started;
    result
}

fn check_locked(g: &Guard, caller_sp: usize, scratch: &mut Scratch, result: &mut CheckResult) {
    let generation = SCAN_GEN.fetch_add(1, Ordering::AcqRel).wrapping_add(1) as u16;
    quarantine::begin();
    let (stop, all_stopped) = stop::stop_others(g);
    INDEX.clear_marks();
    let mut marker = Marker::new(&INDEX, block_size as SizeOf);
    let mut roots = Roots {
        marker: &mut marker,
        // SAFETY: `copy` is our own mapping of COPY_BUF bytes, page-aligned.
        copy: unsafe { core::slice::from_raw_parts_mut(scratch.copy as *mut usize, COPY_BUF / 8) },
        excluded: &mut scratch.excluded,
    };
    roots.globals();
    roots.threads(stop, caller_sp);
    roots.own_memory();
    let maps_ok = roots.program_mappings(scratch.maps, scratch.maps_len);
    // SAFETY: stopped threads cannot free, and frees by the others are
    // deferred by the quarantine: tracked blocks stay mapped.
    unsafe { marker.drain() };
    if !all_stopped {
        gray_new_blocks(&mut marker, generation);
    }
    let mut recorded_all = true;
    // SAFETY: as above.
    let classified = unsafe {
        classify(&INDEX, block_size as SizeOf, |start, size, direct| {
            let t = live_trailer(start);
            if t.generation == generation {
                return; // allocated while we ran: never a leak
            }
            recorded_all &= result.leaks.push(LeakRecord {
                start,
                size,
                direct,
                stack: t.stack,
                tick: t.tick,
            });
        })
    };
    let complete = maps_ok && !marker.overflowed() && classified && recorded_all;
    // Live = reached + leaked: no second pass over every block's trailer.
    let (reached, reached_bytes) = marker.marked();
    result.live_blocks = reached + result.leaks.len() as u64;
    result.live_bytes = reached_bytes
        + result
            .leaks
            .as_slice()
            .iter()
            .map(|l| l.size as u64)
            .sum::<u64>();
    result.scanned_bytes = marker.scanned_bytes();
    result.complete = complete;
    stop::resume_others(stop);
}

/// Threads that could not be stopped kept allocating: blocks allocated
/// while the check ran count as referenced (kmemleak's rule), and so does
/// whatever they point to (a pointer may have moved into a new block).
///
/// One pass: a thread that keeps allocating would otherwise keep the check
/// going; what it allocates after the pass is still never reported.
fn gray_new_blocks(marker: &mut Marker<'_, MmapBacking, SizeOf>, generation: u16) {
    INDEX.for_each_block(|start| {
        if !INDEX.is_marked(start) && live_trailer(start).generation == generation {
            marker.gray_block(start);
        }
    });
    // SAFETY: as in check_locked.
    unsafe { marker.drain() };
}

struct Roots<'a, 'm> {
    marker: &'a mut Marker<'m, MmapBacking, SizeOf>,
    copy: &'a mut [usize],
    /// Ranges that are not the program's own mappings, or that were already
    /// scanned: subtracted from the anonymous mappings.
    excluded: &'a mut ScratchVec<(usize, usize)>,
}

impl Roots<'_, '_> {
    /// Writable segments of every module but ours, read in place: the loader
    /// lock is held, so none can be unmapped.
    fn globals(&mut self) {
        let own = OWN_BASE.load(Ordering::Relaxed);
        let (marker, excluded) = (&mut *self.marker, &mut *self.excluded);
        modules::for_each_module(|m| {
            for seg in m.segments() {
                if m.base == own {
                    excluded.push((seg.start, seg.end));
                } else if seg.writable {
                    excluded.push((seg.start, seg.end));
                    // SAFETY: PT_LOAD segments of a loaded module are mapped
                    // and readable while the loader lock is held.
                    unsafe { marker.scan_range(seg.start, seg.end - seg.start) };
                }
            }
            true
        });
    }

    /// Every registered thread: registers, stack, static TLS and TCB.
    fn threads(&mut self, stop: u32, caller_sp: usize) {
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
            self.excluded.push((lo, hi));
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
            if let Some((tls_size, tcb_size)) = tls {
                let tp = slot.tp.load(Ordering::Relaxed);
                self.copied(tp.saturating_sub(tls_size), tp + tcb_size);
            }
        }
        let mut dead = ScratchVec::<(usize, usize, usize)>::new();
        threads::for_each_dead_stack(|lo, hi, tp| {
            dead.push((lo, hi, tp));
        });
        for &(lo, hi, tp) in dead.as_slice() {
            self.excluded.push((lo, hi));
            if let Some((_, tcb_size)) = tls {
                self.copied(tp, tp + tcb_size);
            }
        }
    }

    /// leakscan's own mappings are never roots (I3), nor are blocks freed
    /// during the check and held back by the quarantine (stale contents).
    fn own_memory(&mut self) {
        let excluded = &mut *self.excluded;
        mem::for_each_own_mapping(|start, len| {
            excluded.push((start, start + len));
        });
        quarantine::for_each_deferred(|p| {
            // SAFETY: deferred blocks stay live glibc blocks (never released).
            excluded.push(unsafe { real::chunk_extent(p as *const u8) });
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
        // Take the list out of `self` while `self` scans; it is complete now.
        let mut excluded = core::mem::take(&mut *self.excluded);
        excluded.as_mut_slice().sort_unstable();
        for m in maps::mappings(&text[..n]) {
            if !(m.readable && m.writable && m.is_anonymous_like()) {
                continue;
            }
            let mut cur = m.start;
            for &(lo, hi) in excluded.as_slice() {
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
