//! `unshare` and `setns`: calls that need the process to hold the
//! program's threads only.
//!
//! The kernel refuses (EINVAL) to move a process with more than one thread
//! into a user namespace (`unshare(CLONE_NEWUSER)`, `setns` to a user
//! namespace), and a thread whose filesystem context other threads share
//! into another mount namespace (`setns` to a mount namespace). leakscan's
//! scanner and marker threads would make every single-threaded program
//! fail these: `unshare -U`, bubblewrap, rootless container tools,
//! browsers' sandboxes.
//!
//! So when such a call fails with EINVAL while leakscan's threads run,
//! they stand down and the call is made again:
//!
//! 1. `check::RETIRING` is set: a live scan in progress gives up, the
//!    scanner thread ends at its next turn (at least every tick), taking
//!    its descriptor table and socket with it;
//! 2. once the kernel has released it (it is gone from /proc/self/task),
//!    the scan lock is taken, so no check posts work, and the marker
//!    threads end the same way;
//! 3. the call is made again, its result and errno kept for the caller;
//! 4. the flag is cleared and the scanner starts afresh, in the namespaces
//!    the program now lives in (a new socket, the same report directory
//!    path); marker threads start at the next check that wants them.
//!
//! A call that fails for any other reason, or while none of leakscan's
//! threads runs, is returned as the kernel gave it. A program with
//! threads of its own still gets EINVAL, after a few milliseconds.
//!
//! In a new user namespace without a uid mapping, getuid() says 65534: the
//! default report directory stays the one of the uid the process had
//! before (`writer::pin_default_dir`), where its user will look.

use core::ffi::c_int;
use core::sync::atomic::Ordering;

use leakscan_platform::sys;

use crate::check::{EXITING, RETIRING};
use crate::guard::Guard;
use crate::state::SCAN_LOCK;
use crate::{markers, scanner, writer};

/// glibc's `unshare`, with leakscan's threads out of the way when the
/// kernel wants the process to itself.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn unshare(flags: c_int) -> c_int {
    alone(&|| sys::unshare_syscall(flags))
}

/// glibc's `setns`, likewise.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn setns(fd: c_int, nstype: c_int) -> c_int {
    alone(&|| sys::setns_syscall(fd, nstype))
}

/// Make `call`; if the kernel refused it for our threads, again with them
/// stood down.
fn alone(call: &dyn Fn() -> c_int) -> c_int {
    // Before the uid the process sees may change (a user namespace).
    writer::pin_default_dir();
    let first = call();
    if first == 0 || sys::errno() != sys::EINVAL {
        return first;
    }
    if !scanner::running() && !markers::running() {
        return first;
    }
    let g = Guard::enter_reentrant();
    RETIRING.store(true, Ordering::SeqCst);
    let restart_scanner = scanner::retire();
    let lock = SCAN_LOCK.lock();
    markers::retire();
    let result = call();
    let errno = sys::errno();
    RETIRING.store(false, Ordering::SeqCst);
    drop(lock);
    if restart_scanner && !EXITING.load(Ordering::Acquire) {
        scanner::start(&g);
    }
    drop(g);
    sys::set_errno(errno);
    result
}
