//! Process-wide state of the agent. All of it lives in the library's own
//! data segment or its own mappings, which are never roots (I3).

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use leakscan_core::depot::StackDepot;
use leakscan_core::index::PageMap;
use leakscan_core::options::Options;
use leakscan_platform::mem::MmapBacking;
use leakscan_platform::sys;

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
        sys::write_all(2, b"leakscan: ");
        sys::write_all(2, why.as_bytes());
        sys::write_all(2, b"; leak tracking is off for the rest of this process\n");
    }
}
