//! A xorshift generator for the randomized tests: the same seed replays
//! the same heap, so a failure can be reproduced.
//!
//! The hostile-input tests (here and in `tests/integration/hostile.rs`,
//! which includes this file) run a fixed number of cases from a fixed seed
//! in the normal suite. Two variables turn them into a longer fuzz run:
//! `LEAKSCAN_FUZZ_SEED=N` (decimal or `0x…`) starts from another seed, and
//! `LEAKSCAN_FUZZ_SECS=S` runs as many cases as fit in S seconds instead.
//! A failure names its seed and case; the same seed replays it.

pub struct Rng(pub u64);

impl Rng {
    /// The generator of case `case` of a run seeded with `seed`.
    pub fn for_case(seed: u64, case: u64) -> Rng {
        // splitmix64, so that neighbouring cases start far apart (and the
        // state is never 0, where xorshift would stay).
        let mut z = seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The seed of a randomized test: `LEAKSCAN_FUZZ_SEED`, else `default`.
#[allow(dead_code)] // not every includer fuzzes
pub fn seed_from_env(default: u64) -> u64 {
    let Ok(text) = std::env::var("LEAKSCAN_FUZZ_SEED") else {
        return default;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("LEAKSCAN_FUZZ_SEED={text}: not a number"))
}

/// The cases of a randomized test: `0..default`, or with
/// `LEAKSCAN_FUZZ_SECS=S` as many as fit in S seconds.
#[allow(dead_code)]
pub fn fuzz_cases(default: u64) -> impl Iterator<Item = u64> {
    let deadline = std::env::var("LEAKSCAN_FUZZ_SECS").ok().map(|s| {
        let secs: u64 = s
            .parse()
            .unwrap_or_else(|_| panic!("LEAKSCAN_FUZZ_SECS={s}: not a number of seconds"));
        std::time::Instant::now() + std::time::Duration::from_secs(secs)
    });
    (0..).take_while(move |&case| match deadline {
        Some(d) => std::time::Instant::now() < d,
        None => case < default,
    })
}
