//! Threads: stack bounds, the thread pointer, static TLS geometry, the real
//! `pthread_create`, thread-exit keys, and the stop signal.
//!
//! Several of these allocate inside glibc (`pthread_getattr_np` reads
//! /proc/self/maps for the main thread and reallocs a cpuset for others;
//! `dlsym` callocs its error buffer), so they must only be called with the
//! agent's reentrancy guard held, never from inside a malloc hook.

use core::ffi::{c_int, c_void, CStr};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};

pub use libc::{pthread_attr_t, pthread_t};

/// `void *(*)(void *)`, a thread start routine.
pub type StartRoutine = extern "C" fn(*mut c_void) -> *mut c_void;
/// The signature of `pthread_create`.
pub type PthreadCreate =
    unsafe extern "C" fn(*mut pthread_t, *const pthread_attr_t, StartRoutine, *mut c_void) -> c_int;

/// The calling thread's `pthread_t`; on glibc this is also its thread
/// pointer (the TCB address, what %fs points at on x86-64).
pub fn pthread_self() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// Whether a thread descriptor (glibc's `struct pthread`, whose first words
/// are the TCB header) still lies at `tp`: glibc sets the header's `tcb`
/// (word 0) and `self` (word 2) to the descriptor's own address, and keeps
/// them while the stack waits in its cache. Memory that was unmapped, or
/// mapped again for something else, almost never holds its own address
/// twice there. Read with `process_vm_readv`: `tp` may be unmapped.
pub fn is_thread_descriptor(tp: usize) -> bool {
    let mut words = [0usize; 3];
    // SAFETY: a [usize; 3] viewed as its 24 bytes.
    let bytes = unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, 24) };
    tp != 0 && crate::sys::read_self(tp, bytes) == 24 && words[0] == tp && words[2] == tp
}

/// `[low, high)` of the calling thread's stack. Allocates inside glibc.
pub fn current_stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: attr is initialised by pthread_getattr_np before use and
    // destroyed after; out-pointers are valid locals.
    let (low, high) = unsafe {
        let mut attr: pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut c_void = core::ptr::null_mut();
        let mut size: usize = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 || addr.is_null() {
            return None;
        }
        (addr as usize, addr as usize + size)
    };
    if crate::sys::gettid() == crate::sys::getpid() {
        return Some((low, main_stack_top(high)));
    }
    Some((low, high))
}

/// glibc says the main thread's stack ends with the page holding
/// `__libc_stack_end`, but the program's arguments, environment and
/// auxiliary vector lie above it, up to the end of the stack mapping, and a
/// program may keep heap pointers there: setproctitle-style code (redis,
/// PostgreSQL) replaces `argv[]` and `environ` entries with copies it
/// `strdup`s, and where those arrays cross that page boundary (it depends on
/// where ASLR put the stack top) the copies looked unreferenced. The end of
/// the mapping that holds `high - 1`, from /proc/self/maps; `high` if it
/// cannot be read.
fn main_stack_top(high: usize) -> usize {
    const BUF: usize = 1 << 20;
    let Some(buf) = crate::mem::map(BUF) else {
        return high;
    };
    // SAFETY: buf is our own fresh mapping of BUF bytes.
    let text = unsafe { core::slice::from_raw_parts_mut(buf.as_ptr(), BUF) };
    let top = crate::maps::read_maps(text)
        .and_then(|len| {
            crate::maps::mappings(&text[..len])
                .find(|m| m.start < high && high <= m.end)
                .map(|m| m.end)
        })
        // The stack's own mapping is at most RLIMIT_STACK-sized; anything
        // far above is not it.
        .filter(|&end| end >= high && end - high <= 64 << 20)
        .unwrap_or(high);
    // SAFETY: our own mapping of BUF bytes, no longer used.
    unsafe { crate::mem::unmap(buf.as_ptr(), BUF) };
    top
}

/// The current stack pointer (approximately: this function's frame).
#[inline(always)]
pub fn stack_pointer() -> usize {
    let sp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reading rsp has no side effects.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reading sp has no side effects.
    unsafe {
        core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    sp
}

/// The current frame pointer (start of the frame-pointer chain).
#[inline(always)]
pub fn frame_pointer() -> usize {
    let fp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reading rbp has no side effects.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reading x29 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    fp
}

extern "C" {
    /// Set by the dynamic loader to the initial stack pointer of the process
    /// (the top of the main thread's frames).
    static __libc_stack_end: *mut c_void;
}

/// Where the main thread's frames end (its highest frame address).
pub fn main_stack_end() -> usize {
    // SAFETY: ld.so initialises __libc_stack_end before any user code runs.
    unsafe { __libc_stack_end as usize }
}

fn dlsym(handle: *mut c_void, name: &CStr) -> *mut c_void {
    // SAFETY: name is NUL-terminated; dlsym tolerates unknown names.
    unsafe { libc::dlsym(handle, name.as_ptr()) }
}

/// The address of glibc's `__nptl_nthreads` (0: not looked up yet; 1:
/// absent). See [`uncount_internal_thread`].
static NPTL_NTHREADS: AtomicUsize = AtomicUsize::new(0);

/// Look up glibc's count of running threads, `__nptl_nthreads`
/// (GLIBC_PRIVATE, exported for libthread_db, as LeakSanitizer reads
/// `_thread_db_sizeof_pthread`). Allocates: call at start-up.
pub fn resolve_thread_count() {
    if NPTL_NTHREADS.load(Ordering::Acquire) != 0 {
        return;
    }
    // SAFETY: NUL-terminated names; dlvsym tolerates unknown ones.
    let p = unsafe {
        libc::dlvsym(
            libc::RTLD_DEFAULT,
            c"__nptl_nthreads".as_ptr(),
            c"GLIBC_PRIVATE".as_ptr(),
        )
    };
    let aligned = !p.is_null() && (p as usize).is_multiple_of(core::mem::align_of::<AtomicU32>());
    let addr = if aligned { p as usize } else { 1 };
    NPTL_NTHREADS.store(addr, Ordering::Release);
}

fn thread_count() -> Option<&'static AtomicU32> {
    let addr = NPTL_NTHREADS.load(Ordering::Acquire);
    // SAFETY: a non-sentinel address is glibc's `unsigned int
    // __nptl_nthreads`, aligned (checked), which glibc itself only changes
    // with atomic instructions; it lives as long as libc.
    (addr > 1).then(|| unsafe { &*(addr as *const AtomicU32) })
}

/// Take a thread leakscan just started out of glibc's count of running
/// threads. glibc ends the process with `exit(0)` when the thread that
/// leaves `start_thread` takes that count to 0: that is how a program whose
/// main thread called `pthread_exit` ends when its last thread returns,
/// and how a fork child made by a thread other than main ends when that
/// thread returns. Counted, leakscan's threads (which never return) kept
/// such processes alive forever. Called by the thread that created it:
/// when that is a thread of the program's, it is running, so the count
/// cannot reach 0 in between; when it is the scanner, it may, and then
/// [`program_ended`] says so. Without the symbol, nothing is done.
pub fn uncount_internal_thread() {
    if let Some(count) = thread_count() {
        if count.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The creator was a thread of leakscan's (a marker thread made
            // by the scanner), and the program's last thread ended after
            // pthread_create counted the new one: its exit(0) did not
            // happen, and is leakscan's to make (`program_ended`).
            PROGRAM_ENDED.store(true, Ordering::SeqCst);
        }
    }
}

/// Set when glibc's count of the program's threads reached 0 at leakscan's
/// hand (see [`uncount_internal_thread`]).
static PROGRAM_ENDED: AtomicBool = AtomicBool::new(false);

/// Whether the program's last thread has ended without glibc's `exit(0)`:
/// the scanner then calls it.
pub fn program_ended() -> bool {
    PROGRAM_ENDED.load(Ordering::Acquire)
}

/// Wait until the thread whose kernel id `tid` holds (published by the
/// thread as its first act, 0 until then) has ended and the kernel has
/// released it: gone from /proc/self/task, so its stack is free and it no
/// longer counts as one of the process's threads. Clears `tid` then and
/// returns true; false at `deadline_ns` (CLOCK_MONOTONIC).
pub fn wait_for_release(tid: &AtomicI32, deadline_ns: u64) -> bool {
    loop {
        let t = tid.load(Ordering::Acquire);
        if t != 0 && !crate::sys::thread_exists(t) {
            tid.store(0, Ordering::Relaxed);
            return true;
        }
        if crate::sys::monotonic_ns() >= deadline_ns {
            return false;
        }
        crate::sys::sleep_ms(1);
    }
}

/// A thread of leakscan's is about to end (see `namespaces`): count it
/// again, since `start_thread` takes every ending thread out of the count.
pub fn recount_internal_thread() {
    if let Some(count) = thread_count() {
        count.fetch_add(1, Ordering::SeqCst);
    }
}

/// glibc's `pthread_create`, the next definition after ours. Allocates.
pub fn real_pthread_create() -> Option<PthreadCreate> {
    let p = dlsym(libc::RTLD_NEXT, c"pthread_create");
    // SAFETY: the symbol pthread_create has this signature.
    (!p.is_null()).then(|| unsafe { core::mem::transmute::<*mut c_void, PthreadCreate>(p) })
}

/// Size of the static TLS area and of `struct pthread`, as LeakSanitizer
/// obtains them (glibc-private symbols; `None` if absent). Allocates.
pub fn static_tls_geometry() -> Option<(usize, usize)> {
    type GetInfo = unsafe extern "C" fn(*mut usize, *mut usize);
    let get = dlsym(libc::RTLD_DEFAULT, c"_dl_get_tls_static_info");
    let tcb = dlsym(libc::RTLD_DEFAULT, c"_thread_db_sizeof_pthread");
    if get.is_null() || tcb.is_null() {
        return None;
    }
    let (mut size, mut align) = (0usize, 0usize);
    // SAFETY: _dl_get_tls_static_info has this signature; the sizeof symbol
    // is a const u32 in libc's read-only data.
    unsafe {
        core::mem::transmute::<*mut c_void, GetInfo>(get)(&mut size, &mut align);
        Some((size, *(tcb as *const u32) as usize))
    }
}

/// A pthread key whose destructor runs at thread exit (also on pthread_exit
/// and cancellation).
pub fn key_create(destructor: unsafe extern "C" fn(*mut c_void)) -> Option<u32> {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: key is a valid out-pointer; destructor is a plain function.
    (unsafe { libc::pthread_key_create(&mut key, Some(destructor)) } == 0).then_some(key)
}

/// Set the calling thread's value for `key` (non-null: destructor will run).
pub fn key_set(key: u32, value: usize) {
    // SAFETY: key came from key_create.
    unsafe { libc::pthread_setspecific(key, value as *const c_void) };
}

/// Signal-handler signature with siginfo and ucontext.
pub type SigHandler = extern "C" fn(c_int, *mut c_void, *mut c_void);

/// Install `handler` for `sig` (restarting interrupted syscalls, on the
/// thread's alternate stack if it has one, all signals blocked meanwhile).
pub fn install_handler(sig: c_int, handler: SigHandler) -> bool {
    // SAFETY: the sigaction struct is fully initialised; the handler is a
    // plain function valid for the process lifetime.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, core::ptr::null_mut()) == 0
    }
}

/// General-purpose registers saved in a signal frame, plus the interrupted
/// stack pointer.
pub const SAVED_REGS: usize = 23;

/// Copy the interrupted thread's registers out of a signal handler's
/// ucontext; returns its stack pointer. Async-signal-safe.
///
/// # Safety
/// `uctx` must be the third argument of an SA_SIGINFO handler.
pub unsafe fn saved_registers(uctx: *mut c_void, out: &mut [usize; SAVED_REGS]) -> usize {
    // SAFETY: per the contract uctx points to a ucontext_t.
    let uc = unsafe { &*(uctx as *const libc::ucontext_t) };
    #[cfg(target_arch = "x86_64")]
    {
        for (o, r) in out.iter_mut().zip(uc.uc_mcontext.gregs.iter()) {
            *o = *r as usize;
        }
        uc.uc_mcontext.gregs[libc::REG_RSP as usize] as usize
    }
    #[cfg(target_arch = "aarch64")]
    {
        for (o, r) in out.iter_mut().zip(uc.uc_mcontext.regs.iter()) {
            *o = *r as usize;
        }
        uc.uc_mcontext.sp as usize
    }
}

/// The signal leakscan uses to stop threads for the exact at-exit check
/// (Boehm GC's choice; its default action is never reached because the
/// handler stays installed once set).
pub const STOP_SIGNAL: c_int = libc::SIGPWR;

/// Address of the next definition of `name` after this library
/// (`dlsym(RTLD_NEXT)`), or 0. Allocates: call with the guard held.
pub fn next_symbol(name: &CStr) -> usize {
    dlsym(libc::RTLD_NEXT, name) as usize
}

/// Address that `name` resolves to for the whole process (the first
/// definition in the global scope: the executable, then LD_PRELOAD
/// libraries, then the rest), or 0. Allocates: call with the guard held.
pub fn global_symbol(name: &CStr) -> usize {
    dlsym(libc::RTLD_DEFAULT, name) as usize
}

/// Start a detached thread running `start(arg)` on `stack` (a mapping of
/// `len` bytes the caller owns), with every signal blocked: signals meant
/// for the program must never run its handlers on leakscan's thread. The
/// caller's signal mask is restored before returning. The thread does not
/// count among the program's for glibc's exit after the last thread
/// ([`uncount_internal_thread`]); one that ends calls
/// [`recount_internal_thread`] first.
///
/// # Safety
/// `create` is the real `pthread_create`; `stack` is a writable mapping of
/// `len` bytes, 16-aligned, that stays mapped for the thread's lifetime.
pub unsafe fn spawn_internal(
    create: PthreadCreate,
    stack: *mut u8,
    len: usize,
    start: StartRoutine,
    arg: *mut c_void,
) -> bool {
    // SAFETY: attr and the signal sets are initialised before use; the
    // stack contract is the caller's.
    unsafe {
        let mut attr: pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            return false;
        }
        let mut ok = libc::pthread_attr_setstack(&mut attr, stack as *mut c_void, len) == 0
            && libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED) == 0;
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        if ok {
            let mut thread: pthread_t = 0;
            ok = create(&mut thread, &attr, start, arg) == 0;
            if ok {
                uncount_internal_thread();
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        ok
    }
}

/// The calling thread's signal mask as it was before
/// [`block_program_signals`]; dropping it restores that mask.
pub struct SavedSignalMask(libc::sigset_t);

/// Block every signal but the stop signal on the calling thread, until the
/// returned value is dropped: for leakscan's work on a program thread at a
/// point where the program believes it is in no libc call (its handlers
/// may then call malloc), while that work is inside glibc's allocator. The
/// stop signal stays deliverable: its handler only touches atomics, and an
/// exact check must never wait for this thread.
pub fn block_program_signals() -> SavedSignalMask {
    // SAFETY: both sets are initialised before use; pthread_sigmask only
    // changes the calling thread's mask.
    unsafe {
        let mut block: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut block);
        libc::sigdelset(&mut block, STOP_SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        SavedSignalMask(old)
    }
}

impl Drop for SavedSignalMask {
    fn drop(&mut self) {
        // SAFETY: self.0 is a mask pthread_sigmask filled in.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, core::ptr::null_mut()) };
    }
}

/// CPUs this process may run on (its affinity mask), at least 1. Does not
/// allocate.
pub fn cpu_count() -> usize {
    // SAFETY: set is a valid cpu_set_t out-parameter of the size passed;
    // CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        (libc::CPU_COUNT(&set) as usize).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calling_thread_has_a_descriptor_and_other_memory_does_not() {
        assert!(is_thread_descriptor(pthread_self()));
        let other = std::thread::spawn(pthread_self).join().unwrap();
        // Its stack went to glibc's cache with the descriptor in place, or
        // was unmapped: either answer is allowed, but the call must not fault.
        let _ = is_thread_descriptor(other);
        let fake = [0usize; 8];
        assert!(!is_thread_descriptor(fake.as_ptr() as usize));
        assert!(!is_thread_descriptor(0));
        assert!(!is_thread_descriptor(8));
    }
}
