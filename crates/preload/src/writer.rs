//! Writing a report atomically: a temporary file in the report directory,
//! then rename, so a reader (or a crash mid-write) never sees half a report.
//! The directory is created 0700 and files are 0600: reports describe the
//! program's memory layout and stacks, which are nobody else's business.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    dirs::ensure_private_dir(dir)?;
    let target = dir.join(format!("{pid}.json"));
    let tmp = dir.join(format!(".{pid}.json.{}.tmp", sys::monotonic_ns()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(sys::O_NOFOLLOW | sys::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(json.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write report {}: {e}", target.display())
    })?;
    Ok(target)
}
