//! # leakscan-platform: every libc call and syscall leakscan makes
//!
//! Invariant I5: no other crate names libc. Each module wraps one OS facility
//! behind a small documented contract, so the agent and the CLI stay free of
//! raw FFI.

pub mod user;
