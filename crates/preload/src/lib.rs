//! # libleakscan.so: the LD_PRELOAD agent
//!
//! Loaded into an unmodified program, the agent interposes the malloc family
//! ([`hooks`]), records every live block in the lock-free index with its
//! allocation stack ([`stack`], [`trailer`]), and when the program exits runs
//! an exact leak check ([`check`]) and writes a schema-v1 JSON report
//! ([`report`], [`writer`]).
//!
//! ## Lifecycle
//!
//! - Hooks work from the very first allocation, even before our constructor
//!   (other libraries' constructors may run first): the index is a static,
//!   the depot maps itself on first use, and defaults apply until the
//!   options are read.
//! - The constructor ([`init`]) reads `LEAKSCAN_OPTIONS`, finds our own
//!   code and data (frames and roots to ignore), resolves what must not be
//!   resolved inside a hook (`pthread_create`, TLS geometry), registers the
//!   main thread, a fork handler and the exit check.
//! - Threads register from our `pthread_create` trampoline ([`threads`]).
//! - fork: the child keeps tracking its own heap; the parent's other threads
//!   become ghosts whose stacks are roots; the parent's scanner and helper
//!   marker threads ([`markers`]) are gone, and the child makes its own. exec: the new image loads the
//!   library afresh, and its report is its own.
//! - exit: [`at_exit`] runs the check; the report is `<pid>.json`.
//!
//! Invariants (see docs/architecture.md): nothing we do reaches our own
//! hooks (I1: [`guard`], [`own_heap`]); a hook never panics, unwinds or
//! blocks (I2: panic=abort, no locks, pass-through on failure); our memory
//! is never a root (I3).

// In a unit-test build the C entry points are not exported (so the test
// harness does not interpose its own malloc), which leaves them unused.
#![cfg_attr(test, allow(dead_code))]

mod annotations;
mod check;
mod clock;
mod cxx;
mod guard;
mod hooks;
mod markers;
mod namespaces;
mod own_heap;
mod quarantine;
mod report;
mod scanner;
mod stack;
mod state;
mod stop;
mod threads;
mod trailer;
mod writer;

use core::sync::atomic::{AtomicBool, Ordering};

use leakscan_core::options::Options;
use leakscan_core::report::Trigger;
use leakscan_platform::{fdtable, modules, sys};

use guard::Guard;
use state::{options, ENABLED, OWN_BASE, OWN_TEXT};

#[global_allocator]
static OWN_HEAP: own_heap::OwnHeap = own_heap::OwnHeap;

static INITIALISED: AtomicBool = AtomicBool::new(false);

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// Find libleakscan's own code and load base.
fn locate_self() {
    let here = locate_self as fn() as usize;
    modules::for_each_module(|m| {
        if !m.contains(here) {
            return true;
        }
        OWN_BASE.store(m.base, Ordering::Relaxed);
        let exec = m.segments().iter().filter(|s| s.executable);
        let lo = exec.clone().map(|s| s.start).min().unwrap_or(0);
        let hi = exec.map(|s| s.end).max().unwrap_or(0);
        OWN_TEXT.0.store(lo, Ordering::Relaxed);
        OWN_TEXT.1.store(hi, Ordering::Relaxed);
        false
    });
}

fn read_options() -> Options {
    let (mut opts, errors) = Options::parse(sys::getenv(c"LEAKSCAN_OPTIONS").unwrap_or_default());
    // One line for all the bad items, however many (the program's stderr
    // is not ours to flood).
    if let Some(line) = leakscan_core::options::warning(&errors) {
        fdtable::write_stderr(format!("leakscan: {line}\n").as_bytes());
    }
    // A relative report_dir or suppressions file means relative to where
    // the program started, not to wherever it has chdir'ed by the time it
    // exits.
    for path in [&mut opts.report_dir, &mut opts.suppressions] {
        if let Some(rel) = path.as_deref().filter(|d| !d.starts_with('/')) {
            if let Ok(cwd) = std::env::current_dir() {
                *path = Some(cwd.join(rel).to_string_lossy().into_owned());
            }
        }
    }
    opts
}

extern "C" fn init() {
    let Some(g) = Guard::enter() else { return };
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return;
    }
    locate_self();
    let opts = read_options();
    if !opts.enabled || sys::secure_execution() {
        // Secure-execution programs are left alone: their memory layout is
        // not ours to publish.
        ENABLED.store(false, Ordering::Release);
        state::set_options(opts);
        return;
    }
    state::set_options(opts);
    if !malloc_is_ours() {
        // dlopen'ed after start, or the program defines malloc itself:
        // allocations never reach us, and an empty report would lie.
        ENABLED.store(false, Ordering::Release);
        fdtable::write_stderr(
            b"leakscan: malloc in this process is not leakscan's (the library must be \
              LD_PRELOADed, and the program must not bring its own malloc); leak checking is off\n",
        );
        return;
    }
    own_heap::init_reserve();
    threads::init(&g);
    cxx::init(&g);
    state::CURBRK.store(
        leakscan_platform::threads::global_symbol(c"__curbrk"),
        Ordering::Relaxed,
    );
    threads::register_current(&g);
    sys::at_fork(Some(before_fork), Some(in_fork_parent), Some(in_fork_child));
    sys::at_exit(at_exit);
    scanner::start(&g);
}

/// Whether the process's `malloc` is our hook: the global definition lies
/// in our own code. (Comparing with `hooks::malloc as usize` would not do:
/// in position-independent code that address itself comes through the GOT,
/// that is, from the same global lookup.)
fn malloc_is_ours() -> bool {
    let global = leakscan_platform::threads::global_symbol(c"malloc");
    let (lo, hi) = (
        OWN_TEXT.0.load(Ordering::Relaxed),
        OWN_TEXT.1.load(Ordering::Relaxed),
    );
    global == 0 || lo == hi || (lo <= global && global < hi)
}

/// No leakscan thread may hold the loader's write lock when the process
/// forks (see [`state::LoaderGate`]).
unsafe extern "C" fn before_fork() {
    state::LOADER_GATE.hold_for_fork();
}

unsafe extern "C" fn in_fork_parent() {
    state::LOADER_GATE.release_after_fork();
}

unsafe extern "C" fn in_fork_child() {
    state::LOADER_GATE.reset();
    threads::after_fork_in_child();
    quarantine::after_fork_in_child();
    annotations::after_fork_in_child();
    markers::after_fork_in_child();
    state::SCAN_LOCK.reset();
    if let Some(g) = Guard::enter() {
        scanner::after_fork_in_child(&g);
    }
}

/// Why an exact check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// `exit()` or return from main.
    Exit,
    /// `__lsan_do_leak_check`: as at exit, but the process goes on.
    Final,
    /// `__lsan_do_recoverable_leak_check`.
    Recoverable,
}

/// The exact check at `exit()` (and return from main).
extern "C" fn at_exit() {
    let entry_sp = leakscan_platform::threads::stack_pointer();
    check::EXITING.store(true, Ordering::Release);
    scanner::shut_down();
    if annotations::FINAL_CHECK_DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    checked_report(entry_sp, CheckKind::Exit);
}

/// Address space a check must be able to get before it starts: a program
/// that has filled its address space up to `RLIMIT_AS`/`RLIMIT_DATA` and
/// then exits gets no check (one warning) rather than one that runs out
/// half-way. (A check that runs out anyway ends incomplete, or finishes
/// from the own heap's reserve with tracking off; either way no report.)
const CHECK_HEADROOM: usize = 4 << 20;

fn enough_memory_for_a_check() -> bool {
    match leakscan_platform::mem::map(CHECK_HEADROOM) {
        Some(p) => {
            // SAFETY: the mapping just made, never used.
            unsafe { leakscan_platform::mem::unmap(p.as_ptr(), CHECK_HEADROOM) };
            true
        }
        None => false,
    }
}

/// Run an exact check from a program thread, write the report and say so
/// on stderr; apply `exitcode` for the exit and final checks. Returns the
/// number of leaked blocks found.
pub fn checked_report(entry_sp: usize, kind: CheckKind) -> u64 {
    let g = Guard::enter_reentrant();
    let opts = options();
    let wanted = match kind {
        CheckKind::Exit => opts.leak_check_at_exit,
        CheckKind::Final | CheckKind::Recoverable => true,
    };
    if !wanted || !ENABLED.load(Ordering::Acquire) {
        return 0;
    }
    if !enough_memory_for_a_check() {
        state::disable_tracking("too little memory left for the leak check");
        return 0;
    }
    let exiting = kind == CheckKind::Exit;
    let lock = state::SCAN_LOCK.lock();
    let result = check::run(
        &g,
        check::Mode::Exact {
            caller_sp: entry_sp,
            exiting,
        },
        &|_, _| false,
    );
    state::SCANS.fetch_add(1, Ordering::Relaxed);
    state::SCAN_NS_TOTAL.fetch_add(result.duration_ns, Ordering::Relaxed);
    // Held until the report is written: a periodic report the scanner built
    // meanwhile must not be written over it (see `scanner::periodic`).
    if !result.complete {
        fdtable::write_stderr(b"leakscan: the leak check ran out of memory; no report written\n");
        return 0;
    }
    if !ENABLED.load(Ordering::Acquire) {
        // Tracking went off while the check ran (its warning is out): blocks
        // allocated since were neither tracked nor scanned, so a report
        // could name a block as leaked that one of them still points to.
        return 0;
    }
    // `__lsan_do_leak_check` is the end-of-process check, run early.
    let trigger = if kind == CheckKind::Recoverable {
        Trigger::Request
    } else {
        Trigger::Exit
    };
    let number = state::SCANS.load(Ordering::Relaxed);
    let report = report::build(&result, trigger, number, opts.max_objects, opts.symbolize);
    let dir = writer::report_dir(opts.report_dir.as_deref());
    let written = writer::write_report(&dir, report.process.pid, &report.to_json());
    let leaked = report.summary.leaked_blocks;
    match &written {
        Err(e) => fdtable::write_stderr(format!("leakscan: {e}\n").as_bytes()),
        Ok(path) if leaked > 0 && opts.verbosity >= 1 => fdtable::write_stderr(
            format!(
                "leakscan: {} leaked blocks ({} bytes) in process {}; report: {}\n",
                leaked,
                report.summary.leaked_bytes,
                report.process.pid,
                path.display()
            )
            .as_bytes(),
        ),
        Ok(path) if opts.verbosity >= 2 => fdtable::write_stderr(
            format!("leakscan: no leaks; report: {}\n", path.display()).as_bytes(),
        ),
        Ok(_) => {}
    }
    drop(lock);
    if leaked > 0 && opts.exitcode != 0 && kind != CheckKind::Recoverable {
        scanner::shut_down();
        sys::flush_stdio();
        sys::exit_now(opts.exitcode);
    }
    leaked
}
