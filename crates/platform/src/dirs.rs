//! The report directory's safety contract, shared by the agent and the CLI.
//!
//! Reports describe a process's memory layout and allocation stacks, and the
//! default directory lives under the world-writable /tmp. Another user could
//! create `/tmp/leakscan-$UID` first (or plant a symlink there) and collect
//! what we write. So the directory is created 0700 and, existing or new, it
//! must be a real directory (not a symlink) owned by us and writable by
//! nobody else; otherwise nothing is written.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use crate::user;

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
}
