//! Small syscall wrappers that never allocate (usable in hooks, in signal
//! handlers where noted, and while other threads are stopped).

use core::sync::atomic::AtomicU32;

/// Write all of `bytes` to `fd`, retrying on EINTR; errors are ignored
/// (this is for diagnostics on stderr).
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr() as *const libc::c_void, bytes.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns the thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Set the calling thread's errno (hooks must report ENOMEM/EINVAL as glibc).
pub fn set_errno(value: i32) {
    // SAFETY: as errno().
    unsafe { *libc::__errno_location() = value };
}

/// Kernel thread id of the caller. Async-signal-safe.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Process id of the caller. Async-signal-safe.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Send `sig` to thread `tid` of this process; false if it is gone.
pub fn tgkill(tid: i32, sig: i32) -> bool {
    // SAFETY: tgkill has no memory preconditions.
    unsafe { libc::syscall(libc::SYS_tgkill, getpid(), tid, sig) == 0 }
}

/// Milliseconds on CLOCK_MONOTONIC_COARSE (vDSO, a few ns; tick ≈ 1–4 ms).
#[inline]
pub fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Nanoseconds on CLOCK_MONOTONIC (for durations).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleep on a futex word while it equals `expected`, at most `timeout_ms`.
/// Async-signal-safe.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout_ms: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: the word is a valid aligned u32 for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// Sleep for `ms` milliseconds (less if a signal interrupts). Allocates
/// nothing; async-signal-safe.
pub fn sleep_ms(ms: u64) {
    let word = AtomicU32::new(0);
    futex_wait(&word, 0, ms);
}

/// Wake every waiter on a futex word. Async-signal-safe.
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: the word is a valid aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// Copy `len` bytes at `addr` of our own address space into `buf` without
/// ever faulting: process_vm_readv reports unmapped memory as a short read.
/// Returns the number of bytes copied (0 if the first page is unmapped).
pub fn read_self(addr: usize, buf: &mut [u8]) -> usize {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: the local iovec describes our own writable buffer; the remote
    // one is only read by the kernel, which checks it.
    // By the calling thread's id: the process id names the main thread,
    // which has no memory to read once it has called `pthread_exit` while
    // other threads go on.
    let n = unsafe { libc::process_vm_readv(gettid(), &local, 1, &remote, 1, 0) };
    n.max(0) as usize
}

/// End the process with `code` as `exit` does: exit handlers, stdio.
pub fn exit_normally(code: i32) -> ! {
    // SAFETY: exit never returns and has no preconditions.
    unsafe { libc::exit(code) }
}

/// End the process now with `code`, without running exit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Flush every stdio stream (before [`exit_now`] skips glibc's own flush).
pub fn flush_stdio() {
    // SAFETY: fflush(NULL) flushes all open output streams.
    unsafe { libc::fflush(core::ptr::null_mut()) };
}

/// Register `f` to run at `exit()`.
pub fn at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: f is a plain function valid for the process lifetime.
    unsafe { libc::atexit(f) == 0 }
}

/// Register fork handlers (prepare, parent, child).
pub fn at_fork(
    prepare: Option<unsafe extern "C" fn()>,
    parent: Option<unsafe extern "C" fn()>,
    child: Option<unsafe extern "C" fn()>,
) -> bool {
    // SAFETY: the handlers are plain functions valid for the process lifetime.
    unsafe { libc::pthread_atfork(prepare, parent, child) == 0 }
}

/// Value of an environment variable, read without allocating in libc.
pub fn getenv(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: name is NUL-terminated; the returned pointer, if any, points
    // into the environment, valid until the program changes it.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

/// Read a whole small file (e.g. under /proc) into a Vec. Uses the Rust
/// heap: call only when allocating is allowed.
pub fn read_file(path: &str) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// Whether this process runs in secure-execution mode (setuid/setgid/caps).
pub fn secure_execution() -> bool {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// errno values the hooks report, as glibc does.
pub const ENOMEM: i32 = libc::ENOMEM;
pub const EINVAL: i32 = libc::EINVAL;
pub const EAGAIN: i32 = libc::EAGAIN;
pub const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;
pub const O_CLOEXEC: i32 = libc::O_CLOEXEC;

/// A file of /proc about the whole process (its memory, executable or
/// command line), read through /proc/thread-self: /proc/self names the
/// main thread, whose files read empty once it has called `pthread_exit`
/// while other threads go on. /proc/self before Linux 3.17.
pub fn read_process_file(name: &str) -> Option<Vec<u8>> {
    read_file(&format!("/proc/thread-self/{name}"))
        .or_else(|| read_file(&format!("/proc/self/{name}")))
}

/// The process's resident set size in bytes (`statm`), or 0.
pub fn resident_bytes() -> usize {
    let Some(text) = read_process_file("statm") else {
        return 0;
    };
    let pages = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Print `msg` on stderr and abort the process.
pub fn abort_with(msg: &[u8]) -> ! {
    write_all(2, msg);
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Give up the CPU once (while waiting for another thread).
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// Parse the `SigBlk:` mask out of a /proc/<pid>/task/<tid>/status text.
pub fn parse_sigblk(status: &[u8]) -> Option<u64> {
    let line = status
        .split(|&c| c == b'\n')
        .find(|l| l.starts_with(b"SigBlk:"))?;
    let mut hex = line[7..].iter().filter(|c| !c.is_ascii_whitespace());
    hex.try_fold(0u64, |acc, &c| {
        Some(acc << 4 | (c as char).to_digit(16)? as u64)
    })
}

/// unshare(2) as the system call itself (leakscan's `unshare` interposes
/// glibc's): 0, or -1 with errno set.
pub fn unshare_syscall(flags: i32) -> i32 {
    // SAFETY: unshare takes no pointers.
    unsafe { libc::syscall(libc::SYS_unshare, flags) as i32 }
}

/// setns(2) as the system call itself (leakscan's `setns` interposes
/// glibc's): 0, or -1 with errno set.
pub fn setns_syscall(fd: i32, nstype: i32) -> i32 {
    // SAFETY: setns takes no pointers.
    unsafe { libc::syscall(libc::SYS_setns, fd, nstype) as i32 }
}

/// Whether thread `tid` is still part of this process: listed in
/// /proc/self/task, which the kernel stops doing when it releases the
/// thread (after its last touch of its stack). Opens no descriptor.
pub fn thread_exists(tid: i32) -> bool {
    let path = numbered_path(b"/proc/self/task/", tid.max(0) as u32, b"");
    // SAFETY: path is NUL-terminated within the array.
    unsafe { libc::access(path.as_ptr() as *const libc::c_char, libc::F_OK) == 0 }
}

/// `prefix`, `number` in decimal and `suffix`, NUL-terminated, in a stack
/// buffer (no allocation): a /proc path. Prefix and suffix together are at
/// most 52 bytes.
pub(crate) fn numbered_path(prefix: &[u8], number: u32, suffix: &[u8]) -> [u8; 64] {
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (number, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[..len].reverse();
    let mut path = [0u8; 64];
    let mut at = 0;
    for part in [prefix, &digits[..len], suffix] {
        path[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    path
}

/// Whether thread `tid` of this process currently blocks `sig`. Reads
/// /proc with raw syscalls into a stack buffer: no allocation.
pub fn thread_blocks_signal(tid: i32, sig: i32) -> bool {
    let path = numbered_path(b"/proc/self/task/", tid.max(0) as u32, b"/status");
    // SAFETY: path is NUL-terminated within the array.
    let fd = unsafe {
        libc::open(
            path.as_ptr() as *const libc::c_char,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 4096];
    // SAFETY: reading into our stack buffer.
    let len = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if len <= 0 {
        return false;
    }
    parse_sigblk(&buf[..len as usize]).is_some_and(|mask| mask & (1u64 << (sig - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_self_stops_at_unmapped_memory() {
        let data = [7u8; 64];
        let mut buf = [0u8; 64];
        assert_eq!(read_self(data.as_ptr() as usize, &mut buf), 64);
        assert_eq!(buf, data);
        assert_eq!(read_self(0x10, &mut buf), 0);
    }

    #[test]
    fn sigblk_from_real_status_text() {
        let status = b"Name:\tpython3\nSigQ:\t0/127\nSigPnd:\t0000000000000000\nSigBlk:\t0000000020000000\nSigIgn:\t0000000001001000\n";
        assert_eq!(parse_sigblk(status), Some(0x2000_0000));
        assert_eq!(parse_sigblk(b"Name: x\n"), None);
    }

    #[test]
    fn blocked_signals_of_a_live_thread() {
        // The test harness thread blocks nothing by default.
        assert!(!thread_blocks_signal(gettid(), libc::SIGPWR));
    }
}
