//! The control socket's server side: a Unix stream socket with the peer's
//! credentials checked, and bounded reads and writes.
//!
//! Contract: every call here is bounded in time (poll with a timeout before
//! each read, accept or write; sockets are non-blocking), never raises
//! SIGPIPE (MSG_NOSIGNAL), and every descriptor is close-on-exec, so the
//! program's children never inherit the socket.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A listening socket bound to a path.
pub struct Listener {
    fd: i32,
    path: PathBuf,
}

/// One accepted connection.
pub struct Conn {
    fd: i32,
}

fn sockaddr(path: &Path) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    let len = core::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Some((addr, len as libc::socklen_t))
}

fn last_error() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Wait until `fd` is ready for `events`; false on timeout or error.
fn wait_for(fd: i32, events: i16, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if n < 0 && crate::sys::errno() == libc::EINTR {
            continue;
        }
        return n > 0 && p.revents & (events | libc::POLLHUP) != 0;
    }
}

impl Listener {
    /// Bind and listen on `path`, mode 0600. A leftover socket file at
    /// `path` (a dead process with our pid) is replaced; anything else there
    /// is an error.
    pub fn bind(path: &Path) -> Result<Listener, String> {
        let (addr, len) =
            sockaddr(path).ok_or_else(|| format!("socket path too long: {}", path.display()))?;
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "socket path contains NUL".to_string())?;
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(format!("socket: {}", last_error()));
        }
        let fail = |what: &str| {
            let e = format!("{what} {}: {}", path.display(), last_error());
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            Err(e)
        };
        // Only a stale socket may be replaced: never unlink a regular file
        // or follow a symlink someone put there.
        // SAFETY: valid C string and stat buffer.
        unsafe {
            let mut st: libc::stat = core::mem::zeroed();
            if libc::lstat(cpath.as_ptr(), &mut st) == 0 {
                if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                    libc::close(fd);
                    return Err(format!("{} exists and is not a socket", path.display()));
                }
                libc::unlink(cpath.as_ptr());
            }
        }
        // SAFETY: addr is a valid sockaddr_un of length len.
        if unsafe { libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) } != 0 {
            return fail("bind");
        }
        // SAFETY: valid C string.
        if unsafe { libc::chmod(cpath.as_ptr(), 0o600) } != 0 {
            return fail("chmod");
        }
        // SAFETY: plain syscall on our socket.
        if unsafe { libc::listen(fd, 16) } != 0 {
            return fail("listen");
        }
        Ok(Listener {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening descriptor (to find it again in a fork child).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// The listener bound at `path` on descriptor `fd` before a fork, as
    /// the child sees it. Nothing is checked here; [`Self::forget`] closes
    /// the descriptor only if it is still that socket.
    pub fn inherited(fd: i32, path: PathBuf) -> Listener {
        Listener { fd, path }
    }

    /// Whether our descriptor is still our socket: a program that closes
    /// every descriptor (daemons do) may have closed it and reused the
    /// number for one of its own files, which we must never touch.
    pub fn is_intact(&self) -> bool {
        // SAFETY: sockaddr_un is plain old data; getsockname fills it.
        unsafe {
            let mut addr: libc::sockaddr_un = core::mem::zeroed();
            let mut len = core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::getsockname(
                self.fd,
                &mut addr as *mut _ as *mut libc::sockaddr,
                &mut len,
            ) != 0
            {
                return false;
            }
            match sockaddr(&self.path) {
                Some((want, want_len)) => {
                    want_len == len && {
                        let n = (len as usize).saturating_sub(2).min(addr.sun_path.len());
                        addr.sun_path[..n] == want.sun_path[..n]
                    }
                }
                None => false,
            }
        }
    }

    /// Wait up to `timeout_ms` for a connection.
    pub fn accept(&self, timeout_ms: i32) -> Option<Conn> {
        if !wait_for(self.fd, libc::POLLIN, timeout_ms) {
            return None;
        }
        // SAFETY: plain syscall; we do not want the peer address.
        let fd = unsafe {
            libc::accept4(
                self.fd,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        (fd >= 0).then_some(Conn { fd })
    }

    /// Close the descriptor without touching the path (a fork child
    /// dropping its parent's socket) — only if it is still ours.
    pub fn forget(self) {
        if self.is_intact() {
            // SAFETY: the descriptor is our socket.
            unsafe { libc::close(self.fd) };
        }
        core::mem::forget(self);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.is_intact() {
            // SAFETY: the descriptor is our socket.
            unsafe { libc::close(self.fd) };
        }
        unlink(&self.path);
    }
}

impl Conn {
    /// The uid of the connected process (SO_PEERCRED, set at connect time
    /// by the kernel: it cannot be forged by the peer).
    pub fn peer_uid(&self) -> Option<u32> {
        // SAFETY: ucred is plain old data; getsockopt fills it.
        unsafe {
            let mut cred: libc::ucred = core::mem::zeroed();
            let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
            let rc = libc::getsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                &mut cred as *mut _ as *mut libc::c_void,
                &mut len,
            );
            (rc == 0).then_some(cred.uid)
        }
    }

    /// Read one line (up to and without '\n') of at most `buf.len()` bytes.
    /// Returns the line, or None when the peer sent nothing usable in time
    /// or sent more than the buffer without a newline (then `Err(len)`).
    pub fn read_line<'a>(&self, buf: &'a mut [u8], timeout_ms: i32) -> Result<&'a [u8], usize> {
        let mut len = 0;
        let deadline = crate::sys::monotonic_ns() + timeout_ms as u64 * 1_000_000;
        while len < buf.len() {
            if let Some(nl) = buf[..len].iter().position(|&b| b == b'\n') {
                return Ok(&buf[..nl]);
            }
            let left = deadline.saturating_sub(crate::sys::monotonic_ns()) / 1_000_000;
            if left == 0 || !wait_for(self.fd, libc::POLLIN, left as i32) {
                return Err(len);
            }
            // SAFETY: reading into the unfilled tail of buf.
            let n = unsafe {
                libc::read(
                    self.fd,
                    buf[len..].as_mut_ptr() as *mut libc::c_void,
                    buf.len() - len,
                )
            };
            if n == 0 {
                // EOF: a request without its newline is still a request.
                return if len > 0 { Ok(&buf[..len]) } else { Err(0) };
            }
            if n < 0 {
                if crate::sys::errno() == libc::EAGAIN || crate::sys::errno() == libc::EINTR {
                    continue;
                }
                return Err(len);
            }
            len += n as usize;
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => Ok(&buf[..nl]),
            None => Err(len),
        }
    }

    /// Send all of `bytes` within `timeout_ms`; false if the peer went away
    /// or stopped reading.
    pub fn send_all(&self, mut bytes: &[u8], timeout_ms: i32) -> bool {
        let deadline = crate::sys::monotonic_ns() + timeout_ms as u64 * 1_000_000;
        while !bytes.is_empty() {
            // SAFETY: sending from a valid slice.
            let n = unsafe {
                libc::send(
                    self.fd,
                    bytes.as_ptr() as *const libc::c_void,
                    bytes.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                bytes = &bytes[n as usize..];
                continue;
            }
            let e = crate::sys::errno();
            if n < 0 && (e == libc::EAGAIN || e == libc::EINTR) {
                let left = deadline.saturating_sub(crate::sys::monotonic_ns()) / 1_000_000;
                if left == 0 || !wait_for(self.fd, libc::POLLOUT, left as i32) {
                    return false;
                }
                continue;
            }
            return false;
        }
        true
    }
}

impl Conn {
    /// Read and drop what the peer sent and we did not read (the rest of
    /// an over-long request, bytes after the request line): at most `max`
    /// bytes, until the peer's end of file; once bytes were there (the
    /// peer is still writing), waiting at most `wait_ms` in all for more,
    /// but never for a peer that sent nothing more (it is waiting for our
    /// end of file). Closing a Unix socket with unread
    /// data makes the peer's next read fail with ECONNRESET instead of
    /// seeing the end of the reply, and closing while the peer still
    /// writes gives it EPIPE; after this, a client that sent too much
    /// still finishes its write and reads our error reply and a clean end
    /// of file.
    pub fn discard_pending(&self, max: usize, wait_ms: i32) {
        let deadline = crate::sys::monotonic_ns() + wait_ms.max(0) as u64 * 1_000_000;
        let mut sink = [0u8; 4096];
        let mut left = max;
        while left > 0 {
            // SAFETY: reading into a local buffer; the socket is
            // non-blocking, so this never waits.
            let n = unsafe {
                libc::read(
                    self.fd,
                    sink.as_mut_ptr() as *mut libc::c_void,
                    sink.len().min(left),
                )
            };
            if n > 0 {
                left -= n as usize;
                continue;
            }
            if n == 0 {
                return;
            }
            match crate::sys::errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    let now = crate::sys::monotonic_ns();
                    if left == max || now >= deadline {
                        return;
                    }
                    let ms = (deadline - now).div_ceil(1_000_000) as i32;
                    if !wait_for(self.fd, libc::POLLIN, ms) {
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this connection's.
        unsafe { libc::close(self.fd) };
    }
}

/// Remove a file, ignoring errors (it may be gone already).
pub fn unlink(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: valid C string.
        unsafe { libc::unlink(c.as_ptr()) };
    }
}
