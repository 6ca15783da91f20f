//! The report directory's safety contract, shared by the agent and the CLI.
//!
//! Reports describe a process's memory layout and allocation stacks, and the
//! default directory lives under the world-writable /tmp. Another user could
//! create `/tmp/leakscan-$UID` first (or plant a symlink there) and collect
//! what we write. So the directory is created 0700 and, existing or new, it
//! must be a real directory (not a symlink) owned by us and writable by
//! nobody else; otherwise nothing is written.
//!
//! The agent writes through [`PrivateDir`]: the directory is opened once
//! with `O_NOFOLLOW`, the checks are made on that descriptor (so what was
//! checked is what is written into, even if the path is swapped
//! afterwards), and the report goes to a fresh temporary file made with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` relative to it, then `renameat` over
//! `<name>`: a symlink planted at either name is never followed (rename
//! replaces a link at the target itself), and a reader or a crash never
//! sees half a file. A write that fails (disk full, `RLIMIT_FSIZE`) removes
//! the temporary file and is an error; SIGXFSZ is held off meanwhile, so a
//! program running under a file-size limit is not killed by leakscan's
//! report.

use std::ffi::CString;
use std::fs::{DirBuilder, File, Metadata};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{sys, user};

/// Create `dir` (and parents) mode 0700 if missing, then check it is ours
/// and private. The error is one line, ready for `leakscan: …`.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create report directory {}: {e}", dir.display()))?;
    check_private_dir(dir, user::uid())
}

/// The check alone, for a given owner.
pub fn check_private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("report directory {}: {e}", dir.display()))?;
    check_metadata(dir, &meta, uid)
}

fn check_metadata(dir: &Path, meta: &Metadata, uid: u32) -> Result<(), String> {
    let problem = if meta.file_type().is_symlink() {
        Some("is a symbolic link")
    } else if !meta.is_dir() {
        Some("is not a directory")
    } else if meta.uid() != uid {
        Some("belongs to another user")
    } else if meta.mode() & 0o022 != 0 {
        Some("is writable by other users")
    } else {
        None
    };
    match problem {
        Some(why) => Err(format!(
            "report directory {} {why}; refusing to write reports there",
            dir.display()
        )),
        None => Ok(()),
    }
}

/// A report directory, open and checked: see the module documentation.
pub struct PrivateDir {
    dir: File,
    path: PathBuf,
}

fn c_path(bytes: &[u8], what: &Path) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("{} contains a NUL byte", what.display()))
}

impl PrivateDir {
    /// Create `dir` (and parents) 0700 if missing, open it without
    /// following a symlink, and check the open directory is ours and
    /// private. The error is one line, ready for `leakscan: …`.
    pub fn open(dir: &Path) -> Result<PrivateDir, String> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                // Something that is not a directory is in the way: say what.
                match std::fs::symlink_metadata(dir) {
                    Ok(meta) => check_metadata(dir, &meta, user::uid()).err(),
                    Err(_) => None,
                }
                .unwrap_or_else(|| format!("cannot create report directory {}: {e}", dir.display()))
            })?;
        let cdir = c_path(dir.as_os_str().as_bytes(), dir)?;
        // SAFETY: a NUL-terminated path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                cdir.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            // ELOOP / ENOTDIR: a symlink or a file; say which, as the
            // path-based check does.
            check_private_dir(dir, user::uid())?;
            return Err(format!(
                "cannot open report directory {}: {e}",
                dir.display()
            ));
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file
            .metadata()
            .map_err(|e| format!("report directory {}: {e}", dir.display()))?;
        check_metadata(dir, &meta, user::uid())?;
        Ok(PrivateDir {
            dir: file,
            path: dir.to_path_buf(),
        })
    }

    /// Write `bytes` as `<dir>/<name>` atomically (a temporary file
    /// `.<name>.<nanos>.tmp`, mode 0600, then rename). Returns the path.
    pub fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        let target = self.path.join(name);
        let tmp = format!(".{name}.{}.tmp", sys::monotonic_ns());
        self.write_via(name, &tmp, bytes)
            .map_err(|e| format!("cannot write report {}: {e}", target.display()))?;
        Ok(target)
    }

    fn write_via(&self, name: &str, tmp: &str, bytes: &[u8]) -> std::io::Result<()> {
        let bad_name = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
        let cname = CString::new(name).map_err(|_| bad_name())?;
        let ctmp = CString::new(tmp).map_err(|_| bad_name())?;
        let dirfd = self.dir.as_raw_fd();
        let _quiet = QuietFileSizeLimit::new();
        // SAFETY: dirfd is our open directory, ctmp a NUL-terminated name;
        // the descriptor is owned below.
        let fd = unsafe {
            libc::openat(
                dirfd,
                ctmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| {
                // SAFETY: both names are NUL-terminated and relative to our
                // open directory.
                let rc = unsafe { libc::renameat(dirfd, ctmp.as_ptr(), dirfd, cname.as_ptr()) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        if written.is_err() {
            // SAFETY: a NUL-terminated name relative to our directory: the
            // temporary file we created (never a half-written report left).
            unsafe { libc::unlinkat(dirfd, ctmp.as_ptr(), 0) };
        }
        written
    }
}

/// SIGXFSZ blocked in this thread while a report is written, and a SIGXFSZ
/// raised by that write discarded: under `RLIMIT_FSIZE` the write then
/// fails with EFBIG (an error leakscan reports) instead of killing the
/// program. A SIGXFSZ that was already pending stays pending.
struct QuietFileSizeLimit {
    old: libc::sigset_t,
    was_pending: bool,
}

fn xfsz_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a local set.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGXFSZ);
        set
    }
}

fn xfsz_pending() -> bool {
    // SAFETY: sigpending fills a local set; sigismember reads it.
    unsafe {
        let mut pending: libc::sigset_t = core::mem::zeroed();
        libc::sigpending(&mut pending) == 0 && libc::sigismember(&pending, libc::SIGXFSZ) == 1
    }
}

impl QuietFileSizeLimit {
    fn new() -> QuietFileSizeLimit {
        let set = xfsz_set();
        // SAFETY: valid sets; changes this thread's mask only.
        let old = unsafe {
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            old
        };
        QuietFileSizeLimit {
            old,
            was_pending: xfsz_pending(),
        }
    }
}

impl Drop for QuietFileSizeLimit {
    fn drop(&mut self) {
        if !self.was_pending && xfsz_pending() {
            let set = xfsz_set();
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: takes the pending SIGXFSZ our write raised, without
            // waiting.
            unsafe { libc::sigtimedwait(&set, core::ptr::null_mut(), &now) };
        }
        // SAFETY: restores this thread's mask as it was.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, core::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("leakscan-dirs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn creates_private_directories() {
        let dir = scratch("new").join("nested");
        ensure_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn refuses_symlinks_shared_and_foreign_directories() {
        let real = scratch("real");
        ensure_private_dir(&real).unwrap();
        let link = scratch("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(check_private_dir(&link, user::uid())
            .unwrap_err()
            .contains("symbolic link"));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_private_dir(&real, user::uid())
            .unwrap_err()
            .contains("writable by other"));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_private_dir(&real, user::uid() + 1)
            .unwrap_err()
            .contains("another user"));
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&real).unwrap();
    }

    #[test]
    fn private_dir_refuses_what_the_check_refuses() {
        let real = scratch("pd-real");
        let dir = PrivateDir::open(&real).unwrap();
        let link = scratch("pd-link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(PrivateDir::open(&link)
            .err()
            .unwrap()
            .contains("symbolic link"));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(PrivateDir::open(&real)
            .err()
            .unwrap()
            .contains("writable by other"));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = real.join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(PrivateDir::open(&file)
            .err()
            .unwrap()
            .contains("not a directory"));
        drop(dir);
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&real).unwrap();
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let real = scratch("pd-plant");
        let outside = scratch("pd-outside");
        std::fs::write(&outside, "precious").unwrap();
        let dir = PrivateDir::open(&real).unwrap();
        // At the temporary name: O_EXCL|O_NOFOLLOW refuses, nothing written.
        std::os::unix::fs::symlink(&outside, real.join(".7.json.1.tmp")).unwrap();
        let err = dir.write_via("7.json", ".7.json.1.tmp", b"{}").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        assert!(!real.join("7.json").exists());
        // At the report's name: the link itself is replaced.
        std::os::unix::fs::symlink(&outside, real.join("8.json")).unwrap();
        let path = dir.write_atomically("8.json", b"{\"n\":8}").unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":8}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        std::fs::remove_file(&outside).unwrap();
        std::fs::remove_dir_all(&real).unwrap();
    }
}
