//! Writing a report atomically: a temporary file in the report directory,
//! then rename, so a reader (or a crash mid-write) never sees half a report.
//! The directory is created 0700 and files are 0600: reports describe the
//! program's memory layout and stacks, which are nobody else's business.
//! The directory is opened without following symlinks and checked on the
//! open descriptor (`platform::dirs::PrivateDir`), and the files are made
//! relative to it with O_EXCL|O_NOFOLLOW.

use core::sync::atomic::{AtomicI64, Ordering};
use std::path::{Path, PathBuf};

use leakscan_core::options::default_report_dir;
use leakscan_platform::{dirs, sys, user};

/// The uid whose default directory reports go to, once the process is
/// about to change namespaces (-1: none pinned; the current uid counts).
static PINNED_UID: AtomicI64 = AtomicI64::new(-1);

/// The report directory in force for this process.
pub fn report_dir(configured: Option<&str>) -> PathBuf {
    match configured {
        Some(dir) => PathBuf::from(dir),
        None => {
            let xdg = sys::getenv(c"XDG_RUNTIME_DIR").and_then(|v| std::str::from_utf8(v).ok());
            let pinned = PINNED_UID.load(Ordering::Acquire);
            let uid = u32::try_from(pinned).unwrap_or_else(|_| user::uid());
            PathBuf::from(default_report_dir(xdg, uid))
        }
    }
}

/// Keep the default report directory of the uid the process has now. In a
/// new user namespace without a mapping, getuid() says 65534 although the
/// files the process creates are still its old uid's, and that user looks
/// for the report in their own directory (`leakscan report`).
pub fn pin_default_dir() {
    let _ = PINNED_UID.compare_exchange(
        -1,
        i64::from(user::uid()),
        Ordering::AcqRel,
        Ordering::Acquire,
    );
}

/// Write `json` as `<dir>/<pid>.json`, atomically. Returns the path.
pub fn write_report(dir: &Path, pid: u32, json: &str) -> Result<PathBuf, String> {
    dirs::PrivateDir::open(dir)?.write_atomically(&format!("{pid}.json"), json.as_bytes())
}
