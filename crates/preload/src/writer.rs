//! Writing a report atomically: a temporary file in the report directory,
//! then rename, so a reader (or a crash mid-write) never sees half a report.
//! The directory is created 0700 and files are 0600: reports describe the
//! program's memory layout and stacks, which are nobody else's business.
//! The directory is opened without following symlinks and checked on the
//! open descriptor (`platform::dirs::PrivateDir`), and the files are made
//! relative to it with O_EXCL|O_NOFOLLOW.

use std::path::{Path, PathBuf};

use leakscan_core::options::default_report_dir;
use leakscan_platform::{dirs, sys, user};

/// The report directory in force for this process.
pub fn report_dir(configured: Option<&str>) -> PathBuf {
    match configured {
        Some(dir) => PathBuf::from(dir),
        None => {
            let xdg = sys::getenv(c"XDG_RUNTIME_DIR").and_then(|v| std::str::from_utf8(v).ok());
            PathBuf::from(default_report_dir(xdg, user::uid()))
        }
    }
}

/// Write `json` as `<dir>/<pid>.json`, atomically. Returns the path.
pub fn write_report(dir: &Path, pid: u32, json: &str) -> Result<PathBuf, String> {
    dirs::PrivateDir::open(dir)?.write_atomically(&format!("{pid}.json"), json.as_bytes())
}
