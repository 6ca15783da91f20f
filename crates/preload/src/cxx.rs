//! C++ `operator new` / `operator delete`, interposed directly.
//!
//! libstdc++'s `operator new` calls `malloc`, so C++ allocations are tracked
//! without this module. But libstdc++ is built without frame pointers, so a
//! stack walked from inside `malloc` skips the function that called `new`:
//! the report would say "allocated from main" when the culprit is
//! `make_node`. LeakSanitizer interposes the operators for the same reason.
//! `delete` is interposed too, so `new` and `delete` always pair up with the
//! same allocator even if some library brings its own operators.
//!
//! The throwing forms must keep C++ semantics when memory runs out: call the
//! `new_handler` in a loop, then throw `std::bad_alloc`. An exception must
//! not unwind through Rust frames, so those forms are small assembly
//! trampolines: they keep a frame pointer (so the stack walk passes through
//! them to the caller), call the Rust allocator, and on failure *tail-jump*
//! to libstdc++'s own operator (found with `dlsym(RTLD_NEXT)` at start-up),
//! which retries `malloc`, runs the handler and throws from its own frame.
//! The `nothrow` forms must run the `new_handler` loop too (a handler may
//! free a reserve, and then the retry succeeds; the standard defines them as
//! "call the throwing operator, NULL if it throws"): on failure they hand
//! over to libstdc++'s own nothrow operator, which is `noexcept` (it catches
//! inside), so they can be plain Rust calls.

// The exported names are the Itanium C++ ABI's mangled operator names.
#![allow(non_snake_case)]

use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};

use leakscan_platform::threads as pt;

use crate::guard::Guard;
use crate::hooks;

/// libstdc++'s throwing operators, tail-called when we return NULL.
static NEXT_NEW: AtomicUsize = AtomicUsize::new(0);
static NEXT_NEW_ARRAY: AtomicUsize = AtomicUsize::new(0);
static NEXT_NEW_ALIGNED: AtomicUsize = AtomicUsize::new(0);
static NEXT_NEW_ARRAY_ALIGNED: AtomicUsize = AtomicUsize::new(0);
/// libstdc++'s nothrow operators, called when we return NULL.
static NEXT_NEW_NOTHROW: AtomicUsize = AtomicUsize::new(0);
static NEXT_NEW_ARRAY_NOTHROW: AtomicUsize = AtomicUsize::new(0);
static NEXT_NEW_ALIGNED_NOTHROW: AtomicUsize = AtomicUsize::new(0);
static NEXT_NEW_ARRAY_ALIGNED_NOTHROW: AtomicUsize = AtomicUsize::new(0);

/// Resolve the next definitions of the throwing operators (guarded: dlsym
/// allocates). Absent when the program does not use libstdc++.
pub fn init(_g: &Guard) {
    let next = |name: &core::ffi::CStr, slot: &AtomicUsize| {
        slot.store(pt::next_symbol(name), Ordering::Release);
    };
    next(c"_Znwm", &NEXT_NEW);
    next(c"_Znam", &NEXT_NEW_ARRAY);
    next(c"_ZnwmSt11align_val_t", &NEXT_NEW_ALIGNED);
    next(c"_ZnamSt11align_val_t", &NEXT_NEW_ARRAY_ALIGNED);
    next(c"_ZnwmRKSt9nothrow_t", &NEXT_NEW_NOTHROW);
    next(c"_ZnamRKSt9nothrow_t", &NEXT_NEW_ARRAY_NOTHROW);
    next(
        c"_ZnwmSt11align_val_tRKSt9nothrow_t",
        &NEXT_NEW_ALIGNED_NOTHROW,
    );
    next(
        c"_ZnamSt11align_val_tRKSt9nothrow_t",
        &NEXT_NEW_ARRAY_ALIGNED_NOTHROW,
    );
}

/// Allocation for a throwing `new`: NULL hands over to libstdc++'s operator.
/// If that operator is unknown (it cannot be: the program references it),
/// failing loudly beats returning NULL from a `new` that must not.
extern "C" fn new_impl(size: usize, next: &AtomicUsize) -> *mut c_void {
    // SAFETY: the C malloc contract holds for any size.
    let p = unsafe { hooks::malloc(size) };
    if p.is_null() && next.load(Ordering::Acquire) == 0 {
        leakscan_platform::sys::abort_with(b"leakscan: operator new: out of memory\n");
    }
    p
}

extern "C" fn new_aligned_impl(size: usize, align: usize, next: &AtomicUsize) -> *mut c_void {
    // SAFETY: memalign accepts any alignment and size.
    let p = unsafe { hooks::memalign(align, size) };
    if p.is_null() && next.load(Ordering::Acquire) == 0 {
        leakscan_platform::sys::abort_with(b"leakscan: operator new: out of memory\n");
    }
    p
}

// A throwing operator new(size [, align]), as a naked function:
//   push rbp; mov rbp, rsp      -- a real frame, so the walk reaches the caller
//   save the arguments, call the Rust allocation with the `next` slot
//   non-NULL: return it; NULL: restore the arguments, drop the frame and
//   jump to libstdc++'s operator, which may throw from its own frame.
macro_rules! throwing_new {
    ($name:ident, $next:ident, $alloc:ident, $next_reg:literal, ($($arg:ident: $ty:ty),*)) => {
        /// # Safety
        /// The C++ throwing `operator new` contract.
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> *mut c_void {
            core::arch::naked_asm!(
                "push rbp",
                "mov rbp, rsp",
                "push rdi",
                "push rsi",
                concat!("lea ", $next_reg, ", [rip + {next}]"),
                "call {alloc}",
                "pop rsi",
                "pop rdi",
                "pop rbp",
                "test rax, rax",
                "jz 2f",
                "ret",
                "2:",
                "jmp qword ptr [rip + {next}]",
                next = sym $next,
                alloc = sym $alloc,
            )
        }
    };
}

throwing_new!(_Znwm, NEXT_NEW, new_impl, "rsi", (size: usize));
throwing_new!(_Znam, NEXT_NEW_ARRAY, new_impl, "rsi", (size: usize));
throwing_new!(_ZnwmSt11align_val_t, NEXT_NEW_ALIGNED, new_aligned_impl, "rdx", (size: usize, align: usize));
throwing_new!(_ZnamSt11align_val_t, NEXT_NEW_ARRAY_ALIGNED, new_aligned_impl, "rdx", (size: usize, align: usize));

type NothrowNew = unsafe extern "C" fn(usize, *const c_void) -> *mut c_void;
type NothrowNewAligned = unsafe extern "C" fn(usize, usize, *const c_void) -> *mut c_void;

/// Define `nothrow` operators new: ours, then on failure libstdc++'s, which
/// runs the `new_handler` loop and returns NULL when that gives up.
macro_rules! nothrow_new {
    ($($name:ident, $next:ident);*) => {$(
        /// # Safety
        /// The C++ `operator new(size_t, const std::nothrow_t&)` contract.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name(size: usize, nothrow: *const c_void) -> *mut c_void {
            // SAFETY: the C malloc contract holds for any size.
            let p = unsafe { hooks::malloc(size) };
            match $next.load(Ordering::Acquire) {
                0 => p,
                _ if !p.is_null() => p,
                next => {
                    // SAFETY: `next` is libstdc++'s definition of this very
                    // operator (same signature), found by dlsym at start-up;
                    // it is noexcept, so nothing unwinds through this frame.
                    let next: NothrowNew = unsafe { core::mem::transmute(next) };
                    // SAFETY: forwarded contract.
                    unsafe { next(size, nothrow) }
                }
            }
        }
    )*};
}
nothrow_new!(_ZnwmRKSt9nothrow_t, NEXT_NEW_NOTHROW; _ZnamRKSt9nothrow_t, NEXT_NEW_ARRAY_NOTHROW);

macro_rules! nothrow_new_aligned {
    ($($name:ident, $next:ident);*) => {$(
        /// # Safety
        /// The C++ aligned nothrow `operator new` contract.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name(size: usize, align: usize, nothrow: *const c_void) -> *mut c_void {
            // SAFETY: memalign accepts any alignment and size.
            let p = unsafe { hooks::memalign(align, size) };
            match $next.load(Ordering::Acquire) {
                0 => p,
                _ if !p.is_null() => p,
                next => {
                    // SAFETY: as in `nothrow_new`: libstdc++'s own,
                    // noexcept definition of this operator.
                    let next: NothrowNewAligned = unsafe { core::mem::transmute(next) };
                    // SAFETY: forwarded contract.
                    unsafe { next(size, align, nothrow) }
                }
            }
        }
    )*};
}
nothrow_new_aligned!(
    _ZnwmSt11align_val_tRKSt9nothrow_t, NEXT_NEW_ALIGNED_NOTHROW;
    _ZnamSt11align_val_tRKSt9nothrow_t, NEXT_NEW_ARRAY_ALIGNED_NOTHROW
);

/// Define every `operator delete` form: all of them are `free(p)` (sizes,
/// alignments and nothrow tags carry nothing free needs).
macro_rules! delete {
    ($($name:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        /// # Safety
        /// The C++ `operator delete` contract.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name(p: *mut c_void $(, $arg: $ty)*) {
            $(let _ = $arg;)*
            // SAFETY: p came from one of our operators new.
            unsafe { hooks::free(p) }
        }
    )*};
}
delete!(
    _ZdlPv(),
    _ZdaPv(),
    _ZdlPvm(size: usize),
    _ZdaPvm(size: usize),
    _ZdlPvSt11align_val_t(align: usize),
    _ZdaPvSt11align_val_t(align: usize),
    _ZdlPvmSt11align_val_t(size: usize, align: usize),
    _ZdaPvmSt11align_val_t(size: usize, align: usize),
    _ZdlPvRKSt9nothrow_t(nothrow: *const c_void),
    _ZdaPvRKSt9nothrow_t(nothrow: *const c_void),
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: usize, nothrow: *const c_void),
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: usize, nothrow: *const c_void),
);
