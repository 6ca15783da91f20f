//! leakscan's integration tests: one binary with a small harness.
//!
//! Each program in `tests/fixtures/` states in its header comment what
//! leakscan must report for it (grammar in `harness.rs`). A test compiles
//! it into `target/fixture-build/<test>/`, runs it bare and under
//! `leakscan run`, and checks the JSON report against the header. The CLI
//! tests check exit statuses and messages; the agent tests use the library
//! alone (LD_PRELOAD, LEAKSCAN_OPTIONS); the golden tests pin the JSON,
//! text and SARIF outputs; the report tests cover `leakscan report`'s
//! sources, filters and exit statuses; SARIF goes through a real validator;
//! suppression files are checked against LeakSanitizer itself; baselines
//! and offline symbolization of stripped binaries have their own tests; the
//! program tests run CPython and sqlite3; the live tests talk to running
//! programs over their control sockets and check periodic scans.
//!
//! The tests need the agent next to the `leakscan` binary: build the
//! workspace with the profile the tests use (`cargo build --release
//! --workspace` for `cargo test --release`).

mod agent;
mod baseline;
mod cli;
mod faults;
mod fixtures;
mod golden;
mod harness;
mod hostile;
mod live;
mod programs;
mod reliability;
mod report;
mod sarif;
mod security;
mod stress;
mod suppressions;
mod symbolize;
