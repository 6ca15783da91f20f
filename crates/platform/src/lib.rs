//! # leakscan-platform: every libc call and syscall leakscan makes
//!
//! Invariant I5: no other crate names libc. Each module wraps one OS facility
//! behind a small documented contract, so the agent and the CLI stay free of
//! raw FFI:
//!
//! - [`real`]: glibc's allocator (`__libc_*`) and its chunk layout;
//! - [`mem`]: leakscan's own mappings and their registry (never roots);
//! - [`sys`]: small syscalls that never allocate (write, futex, tgkill,
//!   clocks, process_vm_readv);
//! - [`modules`]: loaded modules via `dl_iterate_phdr`;
//! - [`maps`]: the `/proc/self/maps` parser;
//! - [`net`]: the control socket's server side (peer uid, bounded I/O);
//! - [`threads`]: stacks, TLS geometry, `pthread_create`, keys, signals;
//! - [`dirs`]: the report directory's safety check (ours, private, no symlink);
//! - [`fdtable`]: the scanner thread's own descriptor table, and stderr from it;
//! - [`user`]: uid/pid for the CLI.

pub mod dirs;
pub mod fdtable;
pub mod maps;
pub mod mem;
pub mod modules;
pub mod net;
pub mod real;
pub mod sys;
pub mod threads;
pub mod user;
