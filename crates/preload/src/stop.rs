//! Stopping the other threads for the exact at-exit check.
//!
//! The exact check needs a heap that does not move under it. LeakSanitizer
//! stops threads with a ptrace tracer; that fails under strace/gdb, with
//! Yama ptrace_scope 3, and under seccomp. We use Boehm GC's signal
//! handshake instead, which needs none of that:
//!
//! 1. the checker installs the stop handler (once; it stays installed, and
//!    a late or stray delivery returns at once), bumps `STOP`, and sends
//!    the stop signal to every LIVE registered thread;
//! 2. each thread's handler copies its interrupted registers and stack
//!    pointer into its slot, acknowledges, and sleeps on a futex until
//!    `RELEASE` reaches its stop number;
//! 3. the checker waits for all acknowledgements. A thread that blocks the
//!    signal (read from /proc/self/task/TID/status) is not signalled: it is
//!    scanned whole, unstopped, and its frees meanwhile are deferred by the
//!    quarantine. The wait is bounded for threads stuck in the kernel;
//! 4. after marking, the checker releases everyone.
//!
//! Everything in the handler is async-signal-safe: atomics, futex, a plain
//! TLS read. Stopped threads may hold glibc's malloc locks, so between
//! [`stop_others`] and [`resume_others`] the checker must not allocate.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use leakscan_platform::sys;
use leakscan_platform::threads::{self as pt, SAVED_REGS};

use crate::guard::{self, Guard};
use crate::threads::{LIVE, SLOTS};

/// Number of the stop in progress (0 = none).
static STOP: AtomicU32 = AtomicU32::new(0);
static NEXT_STOP: AtomicU32 = AtomicU32::new(1);
/// Number of the last stop released; stopped threads wait for it.
static RELEASE: AtomicU32 = AtomicU32::new(0);
static ACKS: AtomicU32 = AtomicU32::new(0);
static HANDLER_INSTALLED: AtomicBool = AtomicBool::new(false);

/// How long to wait for every thread to acknowledge a stop.
const ACK_TIMEOUT_MS: u64 = 2000;

extern "C" fn on_stop_signal(_sig: c_int, _info: *mut c_void, uctx: *mut c_void) {
    let stop = STOP.load(Ordering::Acquire);
    let Some(i) = guard::thread_slot() else {
        return;
    };
    if stop == 0 || RELEASE.load(Ordering::Acquire) >= stop {
        return;
    }
    let saved_errno = sys::errno();
    let slot = &SLOTS[i];
    let mut regs = [0usize; SAVED_REGS];
    // SAFETY: uctx is the ucontext argument of this SA_SIGINFO handler.
    let sp = unsafe { pt::saved_registers(uctx, &mut regs) };
    for (dst, r) in slot.regs.iter().zip(regs) {
        dst.store(r, Ordering::Relaxed);
    }
    slot.sp.store(sp, Ordering::Relaxed);
    slot.stopped.store(stop, Ordering::Release);
    ACKS.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake_all(&ACKS);
    loop {
        let released = RELEASE.load(Ordering::Acquire);
        if released >= stop {
            break;
        }
        sys::futex_wait(&RELEASE, released, 1000);
    }
    sys::set_errno(saved_errno);
}

/// Stop every other registered live thread. Returns the stop number (a
/// slot whose `stopped` equals it is stopped with its registers saved) and
/// whether every other registered thread did stop.
pub fn stop_others(_g: &Guard) -> (u32, bool) {
    if !HANDLER_INSTALLED.swap(true, Ordering::AcqRel) {
        pt::install_handler(pt::STOP_SIGNAL, on_stop_signal);
    }
    let stop = NEXT_STOP.fetch_add(1, Ordering::AcqRel);
    ACKS.store(0, Ordering::Release);
    STOP.store(stop, Ordering::Release);
    let me = sys::gettid();
    let mut sent = 0u32;
    let mut others = 0u32;
    for slot in &SLOTS {
        if slot.state.load(Ordering::Acquire) != LIVE {
            continue;
        }
        let tid = slot.tid.load(Ordering::Relaxed);
        if tid != me {
            others += 1;
        }
        // A thread that blocks the signal would never answer: leave it
        // running (the quarantine keeps its frees from unmapping blocks).
        if tid != me
            && tid != 0
            && !sys::thread_blocks_signal(tid, pt::STOP_SIGNAL)
            && sys::tgkill(tid, pt::STOP_SIGNAL)
        {
            sent += 1;
        }
    }
    let deadline = sys::monotonic_ns() + ACK_TIMEOUT_MS * 1_000_000;
    loop {
        let acks = ACKS.load(Ordering::Acquire);
        if acks >= sent || sys::monotonic_ns() >= deadline {
            break;
        }
        sys::futex_wait(&ACKS, acks, 50);
    }
    (stop, ACKS.load(Ordering::Acquire) >= others)
}

/// Let every thread stopped by `stop` run again.
pub fn resume_others(stop: u32) {
    STOP.store(0, Ordering::Release);
    RELEASE.store(stop, Ordering::Release);
    sys::futex_wake_all(&RELEASE);
}
