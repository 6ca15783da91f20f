//! Where `leakscan report` gets its reports from.
//!
//! A [`Source`] is one place; [`load`] turns it into reports, each with the
//! name it is known by in messages. A source either yields one report (a
//! file) or a set (a directory, newest first); the JSON output keeps that
//! shape, so a script can rely on it whatever the count. Another source (a
//! live process over its control socket) is one more variant and one more
//! arm in [`load`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use leakscan_core::report::{Document, Report};

use crate::error::Error;
use crate::input;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One report file (or a saved report set).
    File(PathBuf),
    Stdin,
    /// Every `<pid>.json` in a directory. `explicit` when named by `--dir`:
    /// then a missing directory is an error; the default report directory
    /// not existing yet only means that nothing has run.
    Dir {
        path: PathBuf,
        explicit: bool,
    },
    /// A running process, asked to scan now over its control socket
    /// (found under `report_dir`); `min_age_ms` overrides its `min_age`.
    Pid {
        pid: u32,
        report_dir: PathBuf,
        min_age_ms: Option<u64>,
    },
}

/// How the reports of a source are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One report document.
    One,
    /// A report set (`{"reports": [...]}`), newest first.
    Set,
}

/// What a source gave.
#[derive(Debug)]
pub struct Loaded {
    pub shape: Shape,
    pub reports: Vec<Report>,
    /// Reports in a directory that could not be read, one line each.
    pub skipped: Vec<String>,
}

pub fn load(source: &Source) -> Result<Loaded, Error> {
    match source {
        Source::File(path) => Ok(one_document(input::read_document(Some(path), path)?)),
        Source::Stdin => Ok(one_document(input::read_document(
            None,
            Path::new("<stdin>"),
        )?)),
        Source::Dir { path, explicit } => load_dir(path, *explicit),
        Source::Pid {
            pid,
            report_dir,
            min_age_ms,
        } => Ok(Loaded {
            shape: Shape::One,
            reports: vec![crate::live::scan(report_dir, *pid, *min_age_ms)?],
            skipped: Vec::new(),
        }),
    }
}

/// A file holds one report, or a set saved from `leakscan report`.
fn one_document(doc: Document) -> Loaded {
    let shape = match doc {
        Document::One(_) => Shape::One,
        Document::Set(_) => Shape::Set,
    };
    Loaded {
        shape,
        reports: doc.into_reports(),
        skipped: Vec::new(),
    }
}

fn load_dir(dir: &Path, explicit: bool) -> Result<Loaded, Error> {
    let mut loaded = Loaded {
        shape: Shape::Set,
        reports: Vec::new(),
        skipped: Vec::new(),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => return Ok(loaded),
        Err(source) => {
            return Err(Error::ReadDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    // Sockets, temporaries and run directories share the directory: only
    // `<pid>.json` files are reports.
    let mut files: Vec<(SystemTime, u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = report_pid(e.file_name().to_str()?)?;
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            Some((
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                pid,
                e.path(),
            ))
        })
        .collect();
    // Newest first; the pid breaks ties so that output is deterministic.
    files.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    for (_, _, path) in files {
        match input::read_document(Some(&path), &path) {
            // A directory holds single reports, never sets.
            Ok(Document::One(report)) => loaded.reports.push(*report),
            Ok(Document::Set(_)) => loaded.skipped.push(format!(
                "skipping report {}: a report set, not one process's report",
                path.display()
            )),
            // A finished process's report removed meanwhile is no error.
            Err(Error::ReadReport { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => loaded.skipped.push(format!("skipping report: {e}")),
        }
    }
    Ok(loaded)
}

/// `1234.json` → 1234; anything else (`1234.json.tmp`, `x.json`) → None.
pub fn report_pid(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".json")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_file_names() {
        assert_eq!(report_pid("1234.json"), Some(1234));
        assert_eq!(report_pid("1234.json.tmp"), None);
        assert_eq!(report_pid(".json"), None);
        assert_eq!(report_pid("+1.json"), None);
        assert_eq!(report_pid("x1.json"), None);
        assert_eq!(report_pid("1234.sock"), None);
    }

    #[test]
    fn a_missing_default_directory_is_empty_a_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/leakscan-reports");
        let loaded = load(&Source::Dir {
            path: missing.into(),
            explicit: false,
        })
        .unwrap();
        assert!(loaded.reports.is_empty() && loaded.shape == Shape::Set);
        let err = load(&Source::Dir {
            path: missing.into(),
            explicit: true,
        })
        .unwrap_err();
        assert!(matches!(err, Error::ReadDir { .. }), "{err}");
    }
}
