//! `/proc/self/maps`: the program's mappings, read without allocating.
//!
//! The root collector needs the anonymous writable mappings (custom arenas
//! such as CPython's are roots). The file is read with raw syscalls into a
//! caller-provided buffer, because the read happens while other threads are
//! stopped and may hold malloc's locks.

/// One line of /proc/self/maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping<'a> {
    pub start: usize,
    pub end: usize,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    pub shared: bool,
    /// Path or pseudo-name (`[heap]`, `[stack]`, `[anon:…]`), empty if none.
    pub name: &'a [u8],
}

impl Mapping<'_> {
    /// Anonymous memory: no backing file (named anonymous regions count).
    pub fn is_anonymous(&self) -> bool {
        self.name.is_empty() || self.name.starts_with(b"[anon:")
    }

    /// Memory a program uses like anonymous memory although it has a name:
    /// anonymous mappings, `/dev/zero` mappings (the old way to get zeroed
    /// memory), memfd and System V shared memory. Files on disk are not.
    pub fn is_anonymous_like(&self) -> bool {
        self.is_anonymous()
            || self.name.starts_with(b"/dev/zero")
            || self.name.starts_with(b"/memfd:")
            || self.name.starts_with(b"/SYSV")
            || self.name == b"[anon_shmem]"
    }
}

fn hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0usize, |acc, &c| {
        let d = (c as char).to_digit(16)? as usize;
        acc.checked_mul(16)?.checked_add(d)
    })
}

/// Parse one line (without its newline).
pub fn parse_line(line: &[u8]) -> Option<Mapping<'_>> {
    let mut fields = line.splitn(6, |&c| c == b' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let name = fields.next().unwrap_or(b"");
    let dash = range.iter().position(|&c| c == b'-')?;
    let start = hex(&range[..dash])?;
    let end = hex(&range[dash + 1..])?;
    if perms.len() < 4 || end < start {
        return None;
    }
    let first = name.iter().position(|&c| c != b' ').unwrap_or(name.len());
    Some(Mapping {
        start,
        end,
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        executable: perms[2] == b'x',
        shared: perms[3] == b's',
        name: &name[first..],
    })
}

/// Read the process's mappings into `buf` with raw syscalls; returns the
/// bytes read, or None if the file could not be opened or did not fit.
///
/// Through /proc/thread-self: /proc/self names the main thread, and once
/// that has called `pthread_exit` its maps read empty while the process
/// goes on (every root in a mapping would be missed).
pub fn read_maps(buf: &mut [u8]) -> Option<usize> {
    let open = |path: &core::ffi::CStr| {
        // SAFETY: the path is NUL-terminated.
        unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
    };
    let mut fd = open(c"/proc/thread-self/maps");
    if fd < 0 {
        // Linux before 3.17.
        fd = open(c"/proc/self/maps");
    }
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    let ok = loop {
        if len == buf.len() {
            break false;
        }
        // SAFETY: reading into the unused tail of our buffer.
        let n = unsafe {
            libc::read(
                fd,
                buf[len..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - len,
            )
        };
        if n < 0 && crate::sys::errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break n == 0;
        }
        len += n as usize;
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    ok.then_some(len)
}

/// Iterate the mappings in a buffer filled by [`read_maps`].
pub fn mappings(text: &[u8]) -> impl Iterator<Item = Mapping<'_>> {
    text.split(|&c| c == b'\n').filter_map(parse_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
55d0c8a00000-55d0c8a02000 r--p 00000000 fe:01 1048601                    /usr/bin/cat
55d0ca1f1000-55d0ca212000 rw-p 00000000 00:00 0                          [heap]
7f3a2c000000-7f3a2c021000 rw-p 00000000 00:00 0 
7f3a2c021000-7f3a30000000 ---p 00000000 00:00 0 
7f3a31e00000-7f3a31e28000 r-xp 00028000 fe:01 1050711                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a32000000-7f3a32100000 rw-p 00000000 00:00 0                          [anon:arena]
7f3a32200000-7f3a32300000 rw-p 00000000 00:01 1033                       /dev/zero (deleted)
7f3a32300000-7f3a32400000 rw-s 00000000 00:01 1034                       /memfd:arena (deleted)
7ffd4a3f0000-7ffd4a411000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_real_lines() {
        let all: Vec<_> = mappings(SAMPLE).collect();
        assert_eq!(all.len(), 10);
        assert_eq!(all[1].name, b"[heap]");
        assert!(all[1].writable && !all[1].is_anonymous());
        assert_eq!(all[2].start, 0x7f3a2c000000);
        assert!(all[2].is_anonymous() && all[2].writable && all[2].name.is_empty());
        assert!(!all[3].readable);
        assert!(all[4].executable);
        assert_eq!(all[4].name, b"/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert!(all[5].is_anonymous());
        assert!(all[6].is_anonymous_like() && !all[6].is_anonymous());
        assert!(all[7].is_anonymous_like() && all[7].shared);
        assert!(
            !all[8].is_anonymous_like(),
            "the main stack is scanned per thread"
        );
        assert!(!all[4].is_anonymous_like());
        assert_eq!(all[9].end, 0xffffffffff601000);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_line(b""), None);
        assert_eq!(parse_line(b"zz-10 rw-p 0 0 0"), None);
        assert_eq!(parse_line(b"20-10 rw-p 0 0 0"), None);
    }

    #[test]
    fn reads_our_own_maps() {
        let mut buf = vec![0u8; 1 << 20];
        let n = read_maps(&mut buf).unwrap();
        assert!(mappings(&buf[..n]).any(|m| m.name == b"[stack]"));
    }
}
