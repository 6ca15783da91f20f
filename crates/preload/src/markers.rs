//! Helper marker threads: the mark phase of a check on `scan_threads`
//! threads (the checking thread plus `scan_threads - 1` helpers).
//!
//! ## Why helpers are made early and kept parked
//!
//! The exact check stops the other program threads, and a stopped thread
//! may hold glibc's malloc locks; creating a thread calls calloc (its TLS
//! and DTV). So helpers are created before the world stops — at the top
//! of [`check::run`](crate::check::run), by [`prepare`] — and then kept,
//! parked on a futex, for every later check. Like the scanner thread, a
//! helper runs on a stack leakscan mapped ([`mem::map`]: its stack, TLS
//! and TCB are leakscan's memory, never roots), with every signal blocked
//! and the reentrancy guard held for its whole life; it is not in the
//! thread registry, so the stop signal never targets it. What it touches
//! during a mark is the index, tracked blocks (kept allocated by the
//! quarantine) and gray chunks in leakscan's own mappings: no malloc.
//!
//! ## A mark with helpers
//!
//! ```text
//! leader (checking thread)              helper (parked on POSTED)
//! JOB = &job; POSTED += 1; wake         BUSY += 1; job = JOB
//! drain_shared(pool)                    if job: drain_shared(pool); hand_in
//! JOB = 0; wait until BUSY == 0         BUSY -= 1 (wake the leader at 0)
//! absorb the helpers' counters
//! ```
//!
//! `JOB`/`BUSY` are the Dekker pattern with SeqCst on both sides: either
//! the leader sees the helper busy and waits for it, or the helper sees
//! `JOB == 0` and leaves; so no helper touches a job (which lives on the
//! leader's stack) after the leader moved on. A helper that wakes late
//! joins a pool whose mark is over and returns at once
//! ([`MarkPool`]: a late marker learns `done`).
//!
//! ## Fork
//!
//! Threads do not survive fork: in the child [`after_fork_in_child`]
//! forgets the parent's helpers (and any job the parent had running), so
//! the child's next check makes its own, on the same stacks (the mappings
//! are inherited and no thread of the child uses them).

use core::ffi::c_void;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

use leakscan_core::options::{DEFAULT_SCAN_THREADS, MAX_SCAN_THREADS};
use leakscan_core::scan::{MarkPool, Marker};
use leakscan_platform::mem::{self, MmapBacking};
use leakscan_platform::{sys, threads as pt};

use crate::check::{block_extent, ExtentOf, RETIRING};
use crate::guard::Guard;
use crate::state::{options, INDEX};
use crate::threads;

const MAX_HELPERS: usize = MAX_SCAN_THREADS - 1;
/// A marker needs little stack (no recursion); glibc puts the thread's
/// TLS and TCB at the top of it too.
const STACK_BYTES: usize = 256 << 10;

/// Each helper's stack, mapped once and reused by a fork child's helpers.
static STACKS: [AtomicUsize; MAX_HELPERS] = [const { AtomicUsize::new(0) }; MAX_HELPERS];
/// Helper threads alive in this process.
static SPAWNED: AtomicUsize = AtomicUsize::new(0);
/// Bumped for every job posted (a futex word the helpers sleep on).
static POSTED: AtomicU32 = AtomicU32::new(0);
/// The job in progress: the address of a [`Job`] on the leader's stack, 0
/// when none.
static JOB: AtomicUsize = AtomicUsize::new(0);
/// Helpers between looking at `JOB` and being done with what they found.
static BUSY: AtomicU32 = AtomicU32::new(0);
/// Each helper's kernel thread id, published as its first act (0 before),
/// for [`retire`] to wait on.
static TIDS: [AtomicI32; MAX_HELPERS] = [const { AtomicI32::new(0) }; MAX_HELPERS];

/// What helpers need to join a mark.
pub struct Job<'a> {
    pub pool: &'a MarkPool<MmapBacking>,
    /// The leader's `give_up`: a live scan stops when the quarantine is
    /// over budget or the process starts to exit, on every marker.
    pub give_up: &'a (dyn Fn() -> bool + Sync),
}

/// Marker threads a check should use: `scan_threads`, or by default
/// [`DEFAULT_SCAN_THREADS`] but no more than the CPUs we may run on.
pub fn wanted() -> usize {
    match options().scan_threads {
        Some(n) => n.clamp(1, MAX_SCAN_THREADS),
        None => DEFAULT_SCAN_THREADS.min(pt::cpu_count()),
    }
}

/// Make sure `wanted() - 1` helpers are running (creating them allocates:
/// call before stopping the world). Returns how many there are.
pub fn prepare(_g: &Guard) -> usize {
    let want = wanted().saturating_sub(1).min(MAX_HELPERS);
    let mut have = SPAWNED.load(Ordering::Acquire);
    if have >= want {
        return have;
    }
    let Some(create) = threads::real_create() else {
        return have;
    };
    while have < want {
        let mut stack = STACKS[have].load(Ordering::Acquire);
        if stack == 0 {
            let Some(p) = mem::map(STACK_BYTES) else {
                break;
            };
            stack = p.as_ptr() as usize;
            STACKS[have].store(stack, Ordering::Release);
        }
        // SAFETY: `create` is the real pthread_create; the stack is our own
        // mapping, never unmapped, and used by this helper alone (helper
        // `have` of this process; the parent's are not in a fork child).
        let started = unsafe {
            pt::spawn_internal(
                create,
                stack as *mut u8,
                STACK_BYTES,
                helper_main,
                // Its index, and the job count: jobs posted after this one
                // are the helper's to join.
                ((have << 32) | POSTED.load(Ordering::Acquire) as usize) as *mut c_void,
            )
        };
        if !started {
            break;
        }
        have += 1;
        SPAWNED.store(have, Ordering::Release);
    }
    have
}

/// Run `lead()` (the leader's own `drain_shared` on `job.pool`) with the
/// helpers joining the mark; returns once every helper has let go of the
/// job. Allocates nothing.
pub fn with_helpers<R>(job: &Job<'_>, lead: impl FnOnce() -> R) -> R {
    JOB.store(job as *const Job<'_> as usize, Ordering::SeqCst);
    POSTED.fetch_add(1, Ordering::SeqCst);
    sys::futex_wake_all(&POSTED);
    let result = lead();
    JOB.store(0, Ordering::SeqCst);
    loop {
        let busy = BUSY.load(Ordering::SeqCst);
        if busy == 0 {
            break;
        }
        sys::futex_wait(&BUSY, busy, 10);
    }
    result
}

/// How a marker waits for work: spin a little (work usually comes within
/// microseconds), then give the CPU away (there may be more markers than
/// CPUs, or program threads to run during a live scan).
pub fn pause(round: u32) {
    if round < 64 {
        for _ in 0..32 {
            core::hint::spin_loop();
        }
    } else {
        sys::yield_now();
    }
}

extern "C" fn helper_main(arg: *mut c_void) -> *mut c_void {
    // Held for the thread's whole life: nothing it does is tracked.
    let _g = Guard::enter_reentrant();
    let (index, posted_before) = (arg as usize >> 32, arg as usize as u32);
    TIDS[index].store(sys::gettid(), Ordering::Release);
    // Not POSTED as it is now: the job that made us may be posted already.
    let mut seen = posted_before;
    loop {
        if RETIRING.load(Ordering::Acquire) {
            // Between jobs: a mark in progress goes on without us.
            pt::recount_internal_thread();
            return core::ptr::null_mut();
        }
        let posted = POSTED.load(Ordering::Acquire);
        if posted == seen {
            sys::futex_wait(&POSTED, seen, 60_000);
            continue;
        }
        seen = posted;
        BUSY.fetch_add(1, Ordering::SeqCst);
        let job = JOB.load(Ordering::SeqCst);
        if job != 0 {
            // SAFETY: a non-zero JOB is a live Job on the leader's stack;
            // the leader does not return from `with_helpers` while we are
            // BUSY (see the module docs).
            let job = unsafe { &*(job as *const Job<'_>) };
            let mut marker = Marker::for_pool(&INDEX, block_extent as ExtentOf, job.pool);
            // SAFETY: the leader's check keeps every tracked block readable
            // (other threads stopped, or frees deferred) until the mark is
            // over, which it waits for.
            unsafe { marker.drain_shared(job.pool, || (job.give_up)(), pause) };
            marker.hand_in(job.pool);
        }
        if BUSY.fetch_sub(1, Ordering::SeqCst) == 1 {
            sys::futex_wake_all(&BUSY);
        }
    }
}

/// Whether helper threads run in this process.
pub fn running() -> bool {
    SPAWNED.load(Ordering::Acquire) > 0
}

/// With `check::RETIRING` set and the scan lock held (no check posts
/// jobs): end every helper and wait until the kernel has released it, so
/// that the process holds only the program's threads and the scanner.
/// The next check makes new helpers, on the same stacks. False if one did
/// not end in time (the count then stays, and no helper is made twice).
pub fn retire() -> bool {
    let have = SPAWNED.load(Ordering::Acquire);
    if have == 0 {
        return true;
    }
    // Wake the parked helpers: they see no job, then the flag.
    POSTED.fetch_add(1, Ordering::SeqCst);
    sys::futex_wake_all(&POSTED);
    let deadline = sys::monotonic_ns() + 2_000_000_000;
    if !TIDS[..have]
        .iter()
        .all(|tid| pt::wait_for_release(tid, deadline))
    {
        return false;
    }
    SPAWNED.store(0, Ordering::Release);
    true
}

/// In a fork child: the parent's helpers do not exist here.
pub fn after_fork_in_child() {
    SPAWNED.store(0, Ordering::Release);
    for tid in &TIDS {
        tid.store(0, Ordering::Relaxed);
    }
    JOB.store(0, Ordering::Release);
    BUSY.store(0, Ordering::Release);
}
