//! The reentrancy guard and the rest of leakscan's per-thread state.
//!
//! Everything leakscan does can call back into malloc: glibc internals,
//! `dlsym`, the Rust standard library. A hook that finds the guard held
//! passes straight through to glibc and records nothing, so leakscan never
//! tracks (or recurses into) its own work. The state is one `const`-
//! initialised thread-local with no destructor: accessing it never
//! allocates or registers anything, which is what makes it usable in a
//! malloc hook at all (a TLS destructor registration would call calloc).
//!
//! [`Guard`] is an RAII witness: code that may only run inside leakscan's own
//! work takes `&Guard`.

use core::cell::Cell;
use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use crate::state::ENABLED;

pub struct ThreadState {
    busy: Cell<bool>,
    /// `[stack_lo, stack_hi)` of this thread, 0/0 until registered.
    stack_lo: Cell<usize>,
    stack_hi: Cell<usize>,
    /// Index + 1 of this thread's registry slot, 0 if none.
    slot: Cell<usize>,
    /// Depth of `__lsan_disable` calls: while positive, what this thread
    /// allocates is never reported.
    ignore_depth: Cell<u32>,
    /// Direct-mapped cache of recent stacks: (hash, depot id). Most
    /// allocations repeat a stack the thread used moments ago; this skips
    /// the shared depot table for them.
    stacks: [Cell<(u64, u32)>; STACK_CACHE],
}

const STACK_CACHE: usize = 64;

// The thread's state lives in the library's own static TLS block, reached
// with the initial-exec model: one GOT load plus `%fs`, instead of the call
// to `__tls_get_addr` that Rust's `thread_local!` costs in a shared library
// (~1 ns of every malloc in the churn benchmark). The initial-exec model
// marks the library DF_STATIC_TLS: glibc gives it static TLS when it is
// loaded at start-up, which is how it is used (LD_PRELOAD; a malloc
// interposer cannot be dlopen'ed usefully anyway). The block is .tbss:
// zero bytes, which is exactly `ThreadState`'s initial value (false, 0,
// empty cache), set for every thread by glibc without any code of ours.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 6",
    // Global for the other codegen units, hidden from other modules.
    ".globl leakscan_thread_state",
    ".hidden leakscan_thread_state",
    ".type leakscan_thread_state, @object",
    ".size leakscan_thread_state, {size}",
    "leakscan_thread_state:",
    ".zero {size}",
    ".popsection",
    size = const core::mem::size_of::<ThreadState>(),
);

/// The calling thread's state.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn this_thread() -> &'static ThreadState {
    let p: usize;
    // SAFETY: the GOT entry holds the thread-pointer offset of our static
    // TLS block (R_X86_64_TPOFF64, resolved by ld.so at load) and %fs:0 is
    // the thread pointer (glibc's TCB points to itself), so their sum is
    // this thread's copy: `ThreadState`-sized, 64-aligned, zero-initialised
    // (a valid `ThreadState`: every field is a Cell of integers).
    unsafe {
        core::arch::asm!(
            "mov {p}, qword ptr [rip + leakscan_thread_state@GOTTPOFF]",
            "add {p}, qword ptr fs:[0]",
            p = out(reg) p,
            // `add` sets the flags: no preserves_flags.
            options(pure, readonly, nostack),
        );
        // The thread and its TLS outlive every use (the reference never
        // leaves the thread: ThreadState is not Sync).
        &*(p as *const ThreadState)
    }
}

// Elsewhere, Rust's thread-local (a `__tls_get_addr` call in a shared
// library), const-initialised to the same all-zero state.
#[cfg(not(target_arch = "x86_64"))]
thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            busy: Cell::new(false),
            stack_lo: Cell::new(0),
            stack_hi: Cell::new(0),
            slot: Cell::new(0),
            ignore_depth: Cell::new(0),
            stacks: [const { Cell::new((0, 0)) }; STACK_CACHE],
        }
    };
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn this_thread() -> &'static ThreadState {
    // SAFETY: as above: the reference never leaves the thread.
    STATE.with(|s| unsafe { &*(s as *const ThreadState) })
}

/// Proof that the calling thread is inside leakscan's own work. It also
/// carries the thread's state, so a hook looks its TLS block up once, not
/// once per field.
pub struct Guard {
    state: *const ThreadState,
    /// The busy flag to restore on drop (true for a nested entry).
    was_busy: bool,
    _not_send: PhantomData<*const ()>,
}

impl Guard {
    /// Enter for a tracking hook: `None` when the thread is already inside
    /// leakscan or tracking is off (then the hook passes through).
    #[inline(always)]
    pub fn enter_tracking() -> Option<Guard> {
        if !ENABLED.load(Ordering::Relaxed) {
            return None;
        }
        Self::enter()
    }

    /// Enter for leakscan's own work; `None` if the thread already is inside.
    #[inline(always)]
    pub fn enter() -> Option<Guard> {
        let s = this_thread();
        if s.busy.get() {
            None
        } else {
            s.busy.set(true);
            Some(Guard {
                state: s,
                was_busy: false,
                _not_send: PhantomData,
            })
        }
    }

    /// Enter even if this thread is already inside leakscan: for the exit
    /// check when `exit()` runs from a signal handler that interrupted one
    /// of our hooks. The index and the depot are lock-free, so the
    /// interrupted hook holds nothing the check needs.
    pub fn enter_reentrant() -> Guard {
        let s = this_thread();
        let was_busy = s.busy.replace(true);
        Guard {
            state: s,
            was_busy,
            _not_send: PhantomData,
        }
    }

    #[inline(always)]
    fn state(&self) -> &ThreadState {
        // SAFETY: the guard lives on this thread's stack (it is !Send), so
        // the thread — and its TLS block — outlive it.
        unsafe { &*self.state }
    }

    /// This thread's stack bounds, 0/0 if not registered.
    #[inline(always)]
    pub fn stack_bounds(&self) -> (usize, usize) {
        let s = self.state();
        (s.stack_lo.get(), s.stack_hi.get())
    }

    /// Record this thread's stack bounds and registry slot.
    pub fn set_thread(&self, bounds: (usize, usize), slot: usize) {
        let s = self.state();
        s.stack_lo.set(bounds.0);
        s.stack_hi.set(bounds.1);
        s.slot.set(slot + 1);
    }

    /// Whether this thread is between `__lsan_disable` and `__lsan_enable`.
    #[inline(always)]
    pub fn ignoring_allocations(&self) -> bool {
        self.state().ignore_depth.get() != 0
    }

    /// The depot id cached for a stack hash, if any. (An empty entry is
    /// (0, 0): a stack hashing to 0 would get id 0, "unknown", which is
    /// what a full depot gives too.)
    #[inline(always)]
    pub fn cached_stack(&self, hash: u64) -> Option<u32> {
        let (h, id) = self.state().stacks[hash as usize % STACK_CACHE].get();
        (h == hash).then_some(id)
    }

    /// Remember the depot id of a stack hash. Id 0 (the depot not ready
    /// yet, or full) is not remembered: the next allocation asks again.
    #[inline(always)]
    pub fn cache_stack(&self, hash: u64, id: u32) {
        if id != 0 {
            self.state().stacks[hash as usize % STACK_CACHE].set((hash, id));
        }
    }
}

impl Drop for Guard {
    #[inline(always)]
    fn drop(&mut self) {
        self.state().busy.set(self.was_busy);
    }
}

/// `__lsan_disable` (`delta` = 1) and `__lsan_enable` (-1). Returns false
/// for an enable without a matching disable (the depth stays 0).
pub fn change_ignore_depth(delta: i32) -> bool {
    let s = this_thread();
    let d = s.ignore_depth.get();
    match d.checked_add_signed(delta) {
        Some(n) => {
            s.ignore_depth.set(n);
            true
        }
        None => false,
    }
}

/// This thread's registry slot (async-signal-safe: a plain TLS read).
#[inline(always)]
pub fn thread_slot() -> Option<usize> {
    this_thread().slot.get().checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_is_not_reentrant_and_releases_on_drop() {
        let g = Guard::enter().expect("first entry");
        assert!(Guard::enter().is_none(), "nested entry must pass through");
        drop(g);
        assert!(Guard::enter().is_some());
    }

    #[test]
    fn reentrant_entry_restores_the_outer_state() {
        let outer = Guard::enter().unwrap();
        drop(Guard::enter_reentrant());
        assert!(Guard::enter().is_none(), "still inside the outer guard");
        drop(outer);
        assert!(Guard::enter().is_some());
    }

    #[test]
    fn every_thread_starts_with_the_empty_state_and_keeps_its_own() {
        let check = || {
            let s = this_thread();
            assert!(!s.busy.get());
            assert_eq!(
                (s.stack_lo.get(), s.stack_hi.get(), s.slot.get()),
                (0, 0, 0)
            );
            assert_eq!(s.ignore_depth.get(), 0);
            assert!(s.stacks.iter().all(|c| c.get() == (0, 0)));
            s.slot.set(7);
            s as *const ThreadState as usize
        };
        let there = std::thread::spawn(check).join().unwrap();
        let other = std::thread::spawn(check).join().unwrap();
        let here = this_thread() as *const ThreadState as usize;
        assert_ne!(here, there, "each thread has its own block");
        let _ = other;
        assert_eq!(
            this_thread().slot.get(),
            0,
            "another thread's write is not ours"
        );
    }

    #[test]
    fn stack_cache_maps_hashes_to_ids() {
        let g = Guard::enter().unwrap();
        assert_eq!(g.cached_stack(0xabc), None);
        g.cache_stack(0xabc, 0);
        assert_eq!(g.cached_stack(0xabc), None, "id 0 is not remembered");
        g.cache_stack(0xabc, 9);
        assert_eq!(g.cached_stack(0xabc), Some(9));
        // Same slot, different hash: the newer entry replaces the older.
        g.cache_stack(0xabc + STACK_CACHE as u64, 4);
        assert_eq!(g.cached_stack(0xabc), None);
    }
}
