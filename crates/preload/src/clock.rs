//! The allocation clock: the millisecond stamp every trailer carries.
//!
//! ## Why not just read the clock
//!
//! `clock_gettime(CLOCK_MONOTONIC_COARSE)` goes through glibc's wrapper and
//! the vDSO on every `malloc`: about 2.5 ns of a ~40 ns malloc+free pair
//! under leakscan (measured by taking it out, docs/performance.md). The
//! stamp only needs to be good to a fraction of `min_age` (seconds), so the
//! scanner thread, which waits on its socket between scans anyway, wakes at
//! least every [`TICK_MS`] to publish the coarse time in one word, and the
//! hooks read that word.
//!
//! ## What a stamp promises
//!
//! While the scanner thread ticks, a block's stamp is the time of the last
//! tick before its allocation: at most one tick gap *older* than the truth,
//! never younger. The largest gap seen so far ([`slack_ms`]; a scan in
//! progress makes a gap as long as the scan) is what a live scan adds to
//! `min_age`, so a block is never reported younger than `min_age`; reported
//! ages may be over by that much. Without a ticking scanner thread (none
//! configured, it could not start, the process exiting), the hooks read the
//! real clock. A fork child stamps with its parent's last tick until its
//! own scanner's first tick, which counts that gap like any other.
//!
//! ## Who writes what
//!
//! Only [`tick`] writes the clock words; it runs on the scanner thread (one
//! per process), or in `scanner::start` just before that thread exists. The
//! hooks only load them, Relaxed: a stale value is an older stamp, which
//! the slack already allows for.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use leakscan_platform::sys;

/// How often the scanner thread wakes to publish the time, at the least.
pub const TICK_MS: u64 = 50;

/// The words every `malloc` reads, on their own cache line: written once
/// per tick, never next to anything written more often.
#[repr(C, align(64))]
struct Clock {
    /// The coarse monotonic time at the last tick, ms, truncated to 32 bits.
    now: AtomicU32,
    /// Whether a scanner thread is ticking.
    ticking: AtomicBool,
}

static CLOCK: Clock = Clock {
    now: AtomicU32::new(0),
    ticking: AtomicBool::new(false),
};
/// The largest gap between two ticks so far, ms.
static MAX_GAP_MS: AtomicU32 = AtomicU32::new(0);

fn real_ms() -> u32 {
    sys::coarse_ms() as u32
}

/// The stamp for a block allocated now. Inlined into the hooks.
#[inline(always)]
pub fn stamp() -> u32 {
    if CLOCK.ticking.load(Ordering::Relaxed) {
        CLOCK.now.load(Ordering::Relaxed)
    } else {
        real_ms()
    }
}

/// Publish the time (the scanner thread, or `scanner::start` before the
/// thread exists: one writer at a time). Returns it.
pub fn tick() -> u32 {
    let now = real_ms();
    if CLOCK.ticking.load(Ordering::Relaxed) {
        let gap = now.wrapping_sub(CLOCK.now.load(Ordering::Relaxed));
        MAX_GAP_MS.fetch_max(gap, Ordering::Relaxed);
    }
    CLOCK.now.store(now, Ordering::Relaxed);
    CLOCK.ticking.store(true, Ordering::Release);
    now
}

/// Nobody ticks any more (the process exits, or a scanner thread could not
/// start): the hooks go back to the real clock.
pub fn stop() {
    CLOCK.ticking.store(false, Ordering::Release);
}

/// How much older than the truth a stamp may be (see the module comment).
pub fn slack_ms() -> u32 {
    MAX_GAP_MS.load(Ordering::Relaxed)
}

/// Whether a block stamped `stamp` may be younger than `min_age_ms` at `now`
/// (a tick's time): the stamp's possible lag counts against the age. A
/// `min_age` of 0 asks for no age filter at all.
pub fn maybe_younger(stamp: u32, now: u32, min_age_ms: u64) -> bool {
    min_age_ms > 0
        && u64::from(now.wrapping_sub(stamp)) < min_age_ms.saturating_add(u64::from(slack_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_stamp_is_not_old_enough_until_the_slack_has_passed() {
        // The test thread plays the scanner: one tick, then a gap of 300 ms
        // recorded as the largest so far.
        tick();
        MAX_GAP_MS.store(300, Ordering::Relaxed);
        let stamp = 10_000;
        // 1 s of min_age: a stamp 1.2 s old may be a block 0.9 s old.
        assert!(maybe_younger(stamp, 11_200, 1000));
        assert!(!maybe_younger(stamp, 11_300, 1000));
        // The 32-bit wrap of the millisecond counter is harmless.
        assert!(!maybe_younger(u32::MAX - 2000, 1000, 1000));
        // No minimum age: nothing is too young, however fresh.
        assert!(!maybe_younger(11_200, 11_200, 0));
        stop();
        assert!(!CLOCK.ticking.load(Ordering::Relaxed));
    }
}
