//! Process-wide state of the agent. All of it lives in the library's own
//! data segment or its own mappings, which are never roots (I3).

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use leakscan_core::depot::StackDepot;
use leakscan_core::index::PageMap;
use leakscan_core::options::Options;
use leakscan_platform::mem::MmapBacking;
use leakscan_platform::{fdtable, sys};

/// Every live tracked block.
pub static INDEX: PageMap<MmapBacking> = PageMap::new();
/// Every allocation stack seen.
pub static DEPOT: StackDepot<MmapBacking> = StackDepot::new();
/// Tracking switch: hooks pass through when false. Frees of tracked blocks
/// are still recorded, so the index never holds freed blocks.
pub static ENABLED: AtomicBool = AtomicBool::new(true);
/// Number of the scan in progress or last run; trailers record it (mod
/// 2^16) so a scan can tell the blocks allocated while it ran.
pub static SCAN_GEN: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// Frames recorded per allocation (LEAKSCAN_OPTIONS stack_depth).
pub static STACK_DEPTH: AtomicUsize = AtomicUsize::new(16);
/// Address range of the library's own code, to drop its frames from stacks.
pub static OWN_TEXT: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));
/// Load base of the library, to exclude its data from roots.
pub static OWN_BASE: AtomicUsize = AtomicUsize::new(0);
/// Address of glibc's `__curbrk` (0 if unknown): the current end of the
/// brk heap, a global that is not a pointer to any block but equals the
/// start of whichever block glibc next carves at the heap's end. Scanned as
/// a root it would keep such a block "referenced" until the heap grows.
pub static CURBRK: AtomicUsize = AtomicUsize::new(0);

static OPTIONS: OnceLock<Options> = OnceLock::new();

/// The options in force (defaults until the constructor has parsed them).
pub fn options() -> &'static Options {
    OPTIONS.get_or_init(Options::default)
}

/// Set once by the constructor.
pub fn set_options(opts: Options) {
    STACK_DEPTH.store(opts.stack_depth, Ordering::Relaxed);
    let _ = OPTIONS.set(opts);
}

/// Switch tracking off after an internal failure, with one warning (I2).
pub fn disable_tracking(why: &str) {
    if ENABLED.swap(false, Ordering::AcqRel) {
        fdtable::write_stderr(b"leakscan: ");
        fdtable::write_stderr(why.as_bytes());
        fdtable::write_stderr(b"; leak tracking is off for the rest of this process\n");
    }
}

/// One check at a time: the periodic scanner, the control socket's
/// requests, `__lsan_do_*leak_check` and the exit check all clear and set
/// the same mark bits. A futex word (0 free, 1 held) rather than a std
/// mutex so a fork child can simply reset it: the holder may be a thread
/// that does not exist there.
pub struct ScanLock(core::sync::atomic::AtomicU32);

pub static SCAN_LOCK: ScanLock = ScanLock(core::sync::atomic::AtomicU32::new(0));

/// Holding the scan lock.
pub struct ScanLockHeld(());

impl ScanLock {
    pub fn lock(&self) -> ScanLockHeld {
        while self
            .0
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            sys::futex_wait(&self.0, 1, 100);
        }
        ScanLockHeld(())
    }

    /// In a fork child: whoever held it is gone.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Release);
    }
}

impl Drop for ScanLockHeld {
    fn drop(&mut self) {
        SCAN_LOCK.0.store(0, Ordering::Release);
        sys::futex_wake_all(&SCAN_LOCK.0);
    }
}

/// Checks run so far (every kind), and their total time.
pub static SCANS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
pub static SCAN_NS_TOTAL: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Held by leakscan while it may hold the loader's write lock
/// (`dl_iterate_phdr`, symbolization), and by `fork` from its prepare
/// handler to its return. glibc's fork resets the loader's main lock in
/// the child, not the write lock `dl_iterate_phdr` takes: a child forked
/// while the scanner thread walked the modules inherited that lock held by
/// a thread that does not exist there, and its exit check waited for it
/// forever. So fork waits for a walk in progress (microseconds; a report's
/// symbolization at most), and no walk starts until the fork is done.
/// Recursive per thread: the exact check walks the modules inside its own
/// walk. A futex word (the owner's tid, 0 when free), reset in the child.
pub struct LoaderGate {
    owner: core::sync::atomic::AtomicU32,
    /// Entries by the owner; only the owner changes it.
    depth: core::sync::atomic::AtomicU32,
}

pub static LOADER_GATE: LoaderGate = LoaderGate {
    owner: core::sync::atomic::AtomicU32::new(0),
    depth: core::sync::atomic::AtomicU32::new(0),
};

/// Holding the loader gate.
pub struct LoaderGateHeld(());

impl LoaderGate {
    pub fn enter(&self) -> LoaderGateHeld {
        let me = sys::gettid() as u32;
        if self.owner.load(Ordering::Acquire) != me {
            while let Err(owner) =
                self.owner
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                sys::futex_wait(&self.owner, owner, 100);
            }
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        LoaderGateHeld(())
    }

    fn leave(&self) {
        if self.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.owner.store(0, Ordering::Release);
            sys::futex_wake_all(&self.owner);
        }
    }

    /// `fork`'s prepare handler: wait for a walk in progress, block new ones.
    pub fn hold_for_fork(&self) {
        core::mem::forget(self.enter());
    }

    /// `fork`'s parent handler.
    pub fn release_after_fork(&self) {
        self.leave();
    }

    /// In a fork child: the holder was the forking thread of the parent.
    pub fn reset(&self) {
        self.depth.store(0, Ordering::Relaxed);
        self.owner.store(0, Ordering::Release);
    }
}

impl Drop for LoaderGateHeld {
    fn drop(&mut self) {
        LOADER_GATE.leave();
    }
}
