//! A descriptor table of its own for leakscan's scanner thread.
//!
//! A program's threads share one descriptor table, and a single-threaded
//! program may rely on nobody else opening descriptors in it. dash runs
//! `echo x > f` as `fcntl(1, F_DUPFD, 10); close(1); dup2(f, 1)`; daemons
//! run `close(0); open("/dev/null")` and expect 0. A descriptor that the
//! scanner thread opened in between (its control socket at start,
//! /proc/self/maps at every scan, a report file, a connection) took the
//! number the program had just freed: the program's `dup2` replaced it, and
//! the scanner's `close` then closed the program's file (dash printed
//! "echo: I/O error" under make), or the program's `open` got another
//! number and its stdin was the scanner's socket.
//!
//! So the scanner thread leaves the shared table when it starts:
//! `close_range(0, ~0, CLOSE_RANGE_UNSHARE)` gives it a table of its own
//! holding nothing (Linux 5.9; unprivileged, unlike `unshare`, and allowed
//! by container runtimes' default seccomp filters). Nothing of the
//! program's is copied into it: a copy of a pipe would keep the pipe open
//! after the program closed it, and whoever reads the other end (a shell's
//! `$(...)`, a CI log) would wait for an end of file that never comes. What
//! the scanner opens there the program never sees, never closes, a fork
//! child does not inherit, and exec does not keep; marker threads the
//! scanner starts share its table.
//!
//! Its messages still go to the program's stderr, borrowed from the shared
//! table for each message (`pidfd_getfd`, Linux 5.6), or reopened through
//! /proc/self/fd/2 where that is refused. Descriptors 0–2 of the private
//! table are /dev/null, so that nothing written to "stderr" there by
//! mistake lands in one of the scanner's own files.
//!
//! Before 5.9 it falls back to `unshare(CLONE_FILES)` and closes the copies
//! that makes. Where both are refused (an old kernel inside a container
//! whose filter allows `unshare` only to CAP_SYS_ADMIN), the scanner keeps
//! sharing the program's table, and the race above remains.

use core::sync::atomic::{AtomicI32, Ordering};

use crate::sys;

/// Kernel thread id of the thread with a private table (0: none).
static PRIVATE_TID: AtomicI32 = AtomicI32::new(0);
/// A pidfd of this process, in that private table (-1: none).
static PIDFD: AtomicI32 = AtomicI32::new(-1);

/// Give the calling thread a descriptor table of its own, with /dev/null
/// on 0–2 and nothing else. False if the kernel refused: the thread then
/// still shares the program's table.
pub fn leave_shared_table() -> bool {
    // SAFETY: close_range takes no pointers; with CLOSE_RANGE_UNSHARE it
    // closes descriptors only in the calling thread's new table.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            0u32,
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if r != 0 && !unshare_and_close_copies() {
        return false;
    }
    for want in 0..3 {
        // SAFETY: a NUL-terminated path and plain flags.
        let fd = unsafe {
            libc::open(
                c"/dev/null".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        if fd != want {
            // No /dev/null (a bare chroot): the numbers stay free; a stray
            // write to 2 then fails or, at worst, lands in our own file.
            if fd >= 0 {
                // SAFETY: our own descriptor, in our own table.
                unsafe { libc::close(fd) };
            }
            break;
        }
    }
    // SAFETY: pidfd_open takes no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, sys::getpid(), 0u32) };
    PIDFD.store(
        if pidfd >= 0 { pidfd as i32 } else { -1 },
        Ordering::Relaxed,
    );
    PRIVATE_TID.store(sys::gettid(), Ordering::Release);
    true
}

/// Before Linux 5.9: `unshare(CLONE_FILES)` (refused without
/// CAP_SYS_ADMIN by container runtimes' default filters) copies the whole
/// table; close every copy at once, listed from /proc/thread-self/fd (a
/// loop up to RLIMIT_NOFILE could be a million system calls). The copies
/// exist for the microseconds this takes.
fn unshare_and_close_copies() -> bool {
    // The system call, not glibc's wrapper: leakscan interposes `unshare`.
    if sys::unshare_syscall(libc::CLONE_FILES) != 0 {
        return false;
    }
    // SAFETY: a NUL-terminated path and plain flags.
    let dir = unsafe {
        libc::open(
            c"/proc/thread-self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        // Private, but holding copies we cannot list: closing by number up
        // to a bounded limit is the best left.
        for fd in 0..4096 {
            // SAFETY: every descriptor of this table is a copy, ours to close.
            unsafe { libc::close(fd) };
        }
        return true;
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is writable for its length; getdents64 fills it with
        // whole linux_dirent64 records.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at + 19 < n as usize {
            // linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type
            // (1), d_name (NUL-terminated).
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[at + 19..(at + reclen).min(n as usize)];
            // "." and ".." are not numbers; the listing's own descriptor
            // is closed last.
            if let Some(fd) = descriptor_number(name).filter(|&fd| fd != dir) {
                // SAFETY: a copy in our own table.
                unsafe { libc::close(fd) };
            }
            at += reclen;
        }
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(dir) };
    true
}

/// The number a /proc/*/fd entry names (its NUL-terminated name).
fn descriptor_number(name: &[u8]) -> Option<i32> {
    let digits = name.split(|&c| c == 0).next()?;
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0i32, |v, &c| {
        if !c.is_ascii_digit() {
            return None;
        }
        v.checked_mul(10)?.checked_add((c - b'0') as i32)
    })
}

/// Whether the calling thread has a table of its own.
pub fn in_private_table() -> bool {
    let tid = PRIVATE_TID.load(Ordering::Acquire);
    tid != 0 && tid == sys::gettid()
}

/// In a fork child: the thread that had a private table is not here (the
/// child's threads all share the forking thread's table).
pub fn forget_after_fork() {
    PRIVATE_TID.store(0, Ordering::Relaxed);
    PIDFD.store(-1, Ordering::Relaxed);
}

/// Write a diagnostic to the program's stderr, from any thread.
pub fn write_stderr(bytes: &[u8]) {
    write_shared(2, bytes)
}

/// Write all of `bytes` to the shared table's descriptor `target`.
fn write_shared(target: i32, bytes: &[u8]) {
    if !in_private_table() {
        return sys::write_all(target, bytes);
    }
    let fd = borrow(target);
    if fd >= 0 {
        sys::write_all(fd, bytes);
        // SAFETY: the borrowed copy is ours, in our own table.
        unsafe { libc::close(fd) };
    }
}

/// The shared table's descriptor `target`, in the calling thread's private
/// table: the same open file (offset and flags shared), or a new opening
/// of it.
fn borrow(target: i32) -> i32 {
    let pidfd = PIDFD.load(Ordering::Relaxed);
    if pidfd >= 0 {
        // SAFETY: pidfd_getfd takes no pointers; the copy is close-on-exec.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0u32) };
        if fd >= 0 {
            return fd as i32;
        }
    }
    let path = sys::numbered_path(b"/proc/self/fd/", target.max(0) as u32, b"");
    // Appending: a new opening of a regular file starts at offset 0.
    // SAFETY: path is NUL-terminated within the array.
    unsafe {
        libc::open(
            path.as_ptr() as *const libc::c_char,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The table is per thread: what the private thread opens, the rest of
    /// the process never sees, and its stderr writes still reach the
    /// process's descriptor 2 (here a pipe, read by the test).
    #[test]
    fn a_private_table_is_empty_and_invisible_but_stderr_still_works() {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid out-array of two ints.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (read_end, write_end) = (fds[0], fds[1]);
        let handle = std::thread::spawn(move || {
            if !leave_shared_table() {
                return None;
            }
            // Nothing of the process is open here: not even the pipe.
            // SAFETY: fcntl on a number we only query.
            let pipe_visible = unsafe { libc::fcntl(write_end, libc::F_GETFD) } >= 0;
            // SAFETY: a NUL-terminated path and plain flags.
            let ours = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY) };
            let stdio_is_null = (0..3).all(|fd| {
                std::fs::read_link(format!("/proc/thread-self/fd/{fd}"))
                    .is_ok_and(|p| p == std::path::Path::new("/dev/null"))
            });
            Some((pipe_visible, ours, stdio_is_null))
        });
        let (pipe_visible, ours, stdio_is_null) = handle
            .join()
            .unwrap()
            .expect("close_range(CLOSE_RANGE_UNSHARE) refused: kernel before 5.9?");
        assert!(!pipe_visible, "the private table holds the process's pipe");
        assert!(stdio_is_null, "0-2 of the private table are not /dev/null");
        assert!(ours >= 3, "the private open got {ours}");
        // The descriptor the private thread opened is not in the shared
        // table (or, if the number is used here, not /proc/self/maps).
        let here = std::fs::read_link(format!("/proc/self/fd/{ours}"));
        assert!(
            here.map_or(true, |p| !p.ends_with("maps")),
            "the private descriptor is visible to the process"
        );

        // Writes from the private thread reach the process's descriptors
        // (the path stderr takes; here the pipe, read by the test).
        let handle = std::thread::spawn(move || {
            assert!(leave_shared_table());
            write_shared(write_end, b"from the private table\n");
            // Without pidfd_getfd (before Linux 5.6, or filtered): reopened
            // through /proc/self/fd.
            PIDFD.store(-1, Ordering::Relaxed);
            write_shared(write_end, b"reopened\n");
        });
        handle.join().unwrap();
        // SAFETY: write_end is ours.
        unsafe { libc::close(write_end) };
        let mut got = String::new();
        // SAFETY: read_end is ours; File takes it over and closes it.
        let mut pipe = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(read_end) };
        pipe.read_to_string(&mut got).unwrap();
        assert_eq!(got, "from the private table\nreopened\n");
    }

    /// The fallback for kernels before 5.9 closes every copy it made,
    /// however high its number.
    #[test]
    fn the_unshare_fallback_closes_every_copy() {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid out-array of two ints.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: duplicating our own descriptor to a free high number.
        let high = unsafe { libc::fcntl(fds[1], libc::F_DUPFD_CLOEXEC, 900) };
        assert!(high >= 900);
        let open_after = std::thread::spawn(move || {
            assert!(unshare_and_close_copies(), "unshare(CLONE_FILES) refused");
            [0, 1, 2, fds[0], fds[1], high]
                .into_iter()
                // SAFETY: fcntl on numbers we only query.
                .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        assert_eq!(open_after, Vec::<i32>::new(), "copies left open");
        // SAFETY: our own descriptors, still open in the shared table.
        unsafe {
            assert_eq!(libc::fcntl(high, libc::F_GETFD), libc::FD_CLOEXEC);
            libc::close(high);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn proc_fd_entries_are_read_as_numbers() {
        assert_eq!(descriptor_number(b"0\0"), Some(0));
        assert_eq!(descriptor_number(b"1023\0\0\0"), Some(1023));
        assert_eq!(descriptor_number(b".\0"), None);
        assert_eq!(descriptor_number(b"..\0"), None);
        assert_eq!(descriptor_number(b"\0"), None);
        assert_eq!(descriptor_number(b"99999999999\0"), None);
    }
}
