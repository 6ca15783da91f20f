//! The thread registry: every thread's stack, thread pointer and stop state.
//!
//! ## Lock story
//!
//! A fixed array of slots in the library's own data (never a root). A slot
//! moves through a small state machine, each transition one atomic store or
//! compare-and-swap, so no lock is ever held (fork-safe: a child can never
//! inherit a held lock from a vanished thread):
//!
//! ```text
//! FREE --claim (CAS)--> CLAIMED --filled--> LIVE --thread exit--> FREE
//!                                            |
//!                                            +--fork, in the child, for
//!                                               every other thread--> GHOST
//! ```
//!
//! A GHOST is a thread of the parent that does not exist in the child; its
//! stack is still mapped there and may hold the only pointer to blocks the
//! child inherited, so the child scans it as a root (never stopping it).
//! Stacks of exited threads are remembered (deduplicated, bounded) so the
//! root collector does not mistake glibc's cached stacks for program
//! mappings: stale frames there would hide leaks.
//!
//! Threads are registered from our `pthread_create` trampoline (with the
//! guard held, since `pthread_getattr_np` allocates) and unregistered by a
//! pthread key destructor, which also runs on `pthread_exit` and
//! cancellation.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

use leakscan_platform::threads::{self as pt, PthreadCreate, StartRoutine, SAVED_REGS};
use leakscan_platform::{real, sys};

use crate::guard::Guard;

pub const MAX_THREADS: usize = 4096;
const MAX_DEAD_STACKS: usize = 1024;

pub const FREE: u32 = 0;
pub const CLAIMED: u32 = 1;
pub const LIVE: u32 = 2;
pub const GHOST: u32 = 3;

pub struct Slot {
    pub state: AtomicU32,
    pub tid: AtomicI32,
    /// pthread_self(), which on glibc is the thread pointer (TCB).
    pub tp: AtomicUsize,
    pub stack_lo: AtomicUsize,
    pub stack_hi: AtomicUsize,
    /// Number of the stop this thread acknowledged (see stop.rs).
    pub stopped: AtomicU32,
    /// Stack pointer and registers saved when it stopped.
    pub sp: AtomicUsize,
    pub regs: [AtomicUsize; SAVED_REGS],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU32::new(FREE),
            tid: AtomicI32::new(0),
            tp: AtomicUsize::new(0),
            stack_lo: AtomicUsize::new(0),
            stack_hi: AtomicUsize::new(0),
            stopped: AtomicU32::new(0),
            sp: AtomicUsize::new(0),
            regs: [const { AtomicUsize::new(0) }; SAVED_REGS],
        }
    }
}

pub static SLOTS: [Slot; MAX_THREADS] = [const { Slot::new() }; MAX_THREADS];
/// (stack_lo, stack_hi, thread pointer) of exited threads.
static DEAD_STACKS: [[AtomicUsize; 3]; MAX_DEAD_STACKS] = [const {
    [
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]
}; MAX_DEAD_STACKS];
static DEAD_NEXT: AtomicUsize = AtomicUsize::new(0);

static EXIT_KEY: AtomicU32 = AtomicU32::new(u32::MAX);
/// (static TLS size, sizeof(struct pthread)); 0 = unknown. Resolved at init
/// because the lookup allocates and the check cannot.
static TLS_GEOMETRY: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));
static REAL_CREATE: AtomicUsize = AtomicUsize::new(0);

/// Create the exit key and resolve `pthread_create` (constructor, guarded).
pub fn init(_g: &Guard) {
    if EXIT_KEY.load(Ordering::Acquire) == u32::MAX {
        if let Some(key) = pt::key_create(thread_exit) {
            EXIT_KEY.store(key, Ordering::Release);
        }
    }
    resolve_create();
    pt::resolve_thread_count();
    if let Some((tls, tcb)) = pt::static_tls_geometry() {
        TLS_GEOMETRY.0.store(tls, Ordering::Relaxed);
        TLS_GEOMETRY.1.store(tcb, Ordering::Relaxed);
    }
}

/// Static TLS size and TCB size, if known.
pub fn tls_geometry() -> Option<(usize, usize)> {
    let tls = TLS_GEOMETRY.0.load(Ordering::Relaxed);
    let tcb = TLS_GEOMETRY.1.load(Ordering::Relaxed);
    (tls != 0 && tcb != 0).then_some((tls, tcb))
}

fn resolve_create() -> Option<PthreadCreate> {
    let mut f = REAL_CREATE.load(Ordering::Acquire);
    if f == 0 {
        f = pt::real_pthread_create()? as usize;
        REAL_CREATE.store(f, Ordering::Release);
    }
    // SAFETY: only pthread_create's address is ever stored here.
    Some(unsafe { core::mem::transmute::<usize, PthreadCreate>(f) })
}

/// The real `pthread_create` (resolved by [`init`]).
pub fn real_create() -> Option<PthreadCreate> {
    resolve_create()
}

/// Register the calling thread (call with the guard held: allocates).
pub fn register_current(g: &Guard) {
    let Some(bounds) = pt::current_stack_bounds() else {
        return;
    };
    for (i, slot) in SLOTS.iter().enumerate() {
        if slot
            .state
            .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.tid.store(sys::gettid(), Ordering::Relaxed);
            slot.tp.store(pt::pthread_self(), Ordering::Relaxed);
            slot.stack_lo.store(bounds.0, Ordering::Relaxed);
            slot.stack_hi.store(bounds.1, Ordering::Relaxed);
            slot.stopped.store(0, Ordering::Relaxed);
            slot.state.store(LIVE, Ordering::Release);
            g.set_thread(bounds, i);
            let key = EXIT_KEY.load(Ordering::Acquire);
            if key != u32::MAX {
                pt::key_set(key, i + 1);
            }
            return;
        }
    }
    // Registry full: the thread still runs; its stack is then scanned as an
    // anonymous mapping (conservative) and its stacks get one frame.
}

unsafe extern "C" fn thread_exit(value: *mut c_void) {
    let Some(i) = (value as usize).checked_sub(1) else {
        return;
    };
    let Some(slot) = SLOTS.get(i) else { return };
    remember_dead_stack(
        slot.stack_lo.load(Ordering::Relaxed),
        slot.stack_hi.load(Ordering::Relaxed),
        slot.tp.load(Ordering::Relaxed),
    );
    slot.state.store(FREE, Ordering::Release);
}

fn remember_dead_stack(lo: usize, hi: usize, tp: usize) {
    let same = |d: &[AtomicUsize; 3]| {
        d[0].load(Ordering::Relaxed) == lo && d[1].load(Ordering::Relaxed) == hi
    };
    if let Some(d) = DEAD_STACKS.iter().find(|d| same(d)) {
        d[2].store(tp, Ordering::Relaxed);
        return;
    }
    let d = &DEAD_STACKS[DEAD_NEXT.fetch_add(1, Ordering::Relaxed) % MAX_DEAD_STACKS];
    d[0].store(lo, Ordering::Relaxed);
    d[1].store(hi, Ordering::Relaxed);
    d[2].store(tp, Ordering::Relaxed);
}

/// Call `f(lo, hi, tp)` for every remembered stack of an exited thread.
/// glibc caches such stacks with the dead thread's TCB still in use (its
/// DTV is reused by the next thread), so the TCB stays a root while the
/// stale frames below it must not.
pub fn for_each_dead_stack(mut f: impl FnMut(usize, usize, usize)) {
    for d in &DEAD_STACKS {
        let [lo, hi, tp] = [0, 1, 2].map(|k| d[k].load(Ordering::Relaxed));
        if hi > lo {
            f(lo, hi, tp);
        }
    }
}

/// In a fork child: only the calling thread exists. Others become ghosts.
pub fn after_fork_in_child() {
    let me = pt::pthread_self();
    for slot in &SLOTS {
        if slot.state.load(Ordering::Acquire) == LIVE {
            if slot.tp.load(Ordering::Relaxed) == me {
                slot.tid.store(sys::gettid(), Ordering::Relaxed);
            } else {
                slot.state.store(GHOST, Ordering::Release);
            }
        }
    }
}

struct StartInfo {
    start: StartRoutine,
    arg: *mut c_void,
}

extern "C" fn trampoline(info: *mut c_void) -> *mut c_void {
    // The program's start routine has not begun, so by the program's
    // lights this thread is in no libc call and its signal handlers may
    // call malloc here. Our work below does call glibc's allocator (free,
    // pthread_getattr_np): a handler allocating while it holds an arena
    // lock would deadlock the thread on itself. The program's signals wait
    // until we are done (they stay pending, none is lost).
    let program_mask = pt::block_program_signals();
    // SAFETY: `info` is the StartInfo our pthread_create wrote for this
    // thread; we own it now and free it once read.
    let StartInfo { start, arg } = unsafe { (info as *mut StartInfo).read() };
    // SAFETY: it came from real::malloc in pthread_create.
    unsafe { real::free(info as *mut u8) };
    if let Some(g) = Guard::enter() {
        register_current(&g);
    }
    drop(program_mask);
    start(arg)
}

/// # Safety
/// The POSIX `pthread_create` contract.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pthread_create(
    thread: *mut pt::pthread_t,
    attr: *const pt::pthread_attr_t,
    start: StartRoutine,
    arg: *mut c_void,
) -> c_int {
    let real_create = {
        let g = Guard::enter();
        let f = resolve_create();
        drop(g);
        match f {
            Some(f) => f,
            None => return sys::EAGAIN,
        }
    };
    // Foreign (untracked) memory: it belongs to leakscan until the
    // trampoline frees it.
    let info = real::malloc(core::mem::size_of::<StartInfo>()) as *mut StartInfo;
    if info.is_null() {
        // SAFETY: forwarded contract; the thread just goes unregistered.
        return unsafe { real_create(thread, attr, start, arg) };
    }
    // SAFETY: info is a fresh block of the right size.
    unsafe { info.write(StartInfo { start, arg }) };
    // SAFETY: forwarded contract, with our trampoline as start routine.
    let rc = unsafe { real_create(thread, attr, trampoline, info as *mut c_void) };
    if rc != 0 {
        // SAFETY: the thread was not created; the block is still ours.
        unsafe { real::free(info as *mut u8) };
    }
    rc
}
