//! The report directory, and the private per-run directory inside it.
//!
//! The agent writes `<pid>.json` for every process that exits into its
//! `report_dir`. `leakscan run` points the program at a fresh
//! `<report_dir>/run-<leakscan pid>-<nanos>` (mode 0700), so that the
//! reports it collects are exactly those of the program and its
//! descendants, never those of an unrelated process sharing the report
//! directory. After the program exits the reports are moved up to
//! `<report_dir>/<pid>.json`, where `leakscan report` finds them, and the run
//! directory is removed.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use leakscan_core::options::{default_report_dir, Options};
use leakscan_core::report::Report;

use crate::error::{os, Error};
use crate::source::report_pid;

/// `report_dir` from LEAKSCAN_OPTIONS, else the default the agent uses too.
pub fn resolve(leakscan_options: Option<&str>, xdg_runtime_dir: Option<&str>, uid: u32) -> PathBuf {
    // A malformed item is the agent's to warn about; only report_dir matters here.
    let (options, _errors) = Options::parse(leakscan_options.unwrap_or(""));
    let dir = options
        .report_dir
        .unwrap_or_else(|| default_report_dir(xdg_runtime_dir, uid));
    PathBuf::from(dir)
}

/// Create `dir` and any missing parents, mode 0700.
pub fn ensure(dir: &Path) -> Result<(), Error> {
    leakscan_platform::dirs::ensure_private_dir(dir).map_err(Error::UnsafeReportDir)
}

/// Create this run's private directory, mode 0700; it must not exist yet.
pub fn create_run_dir(report_dir: &Path, pid: u32, nanos: u128) -> Result<PathBuf, Error> {
    let dir = report_dir.join(format!("run-{pid}-{nanos}"));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| Error::ReportDir {
            path: dir.clone(),
            source,
        })?;
    Ok(dir)
}

/// LEAKSCAN_OPTIONS for the program: what the user set, then the run's
/// directory and a silent agent (leakscan prints the report itself). Later
/// items win, so these override the user's.
pub fn child_options(existing: Option<&str>, run_dir: &Path) -> Result<String, Error> {
    let unquotable = || Error::UnquotablePath(run_dir.to_path_buf());
    let dir = run_dir.to_str().ok_or_else(unquotable)?;
    // The options parser splits on ':' and opens a quote at ' or "
    // anywhere, so a path with any of them is quoted with a quote it lacks.
    let dir = if !dir.contains([':', '"', '\'']) {
        dir.to_string()
    } else if !dir.contains('"') {
        format!("\"{dir}\"")
    } else if !dir.contains('\'') {
        format!("'{dir}'")
    } else {
        return Err(unquotable());
    };
    let ours = format!("report_dir={dir}:verbosity=0");
    Ok(match existing {
        Some(text) if !text.trim().is_empty() => format!("{text}:{ours}"),
        _ => ours,
    })
}

/// The reports found in a run directory, in pid order, and what went wrong
/// on the way (one line each, for stderr).
#[derive(Debug, Default)]
pub struct Collected {
    pub reports: Vec<Report>,
    pub warnings: Vec<String>,
}

/// Read every `<pid>.json` in `run_dir` (in-progress `*.tmp` files and
/// anything else are ignored), move each to `<report_dir>/<pid>.json` and
/// remove `run_dir`. A report that does not parse is skipped with a warning
/// and still moved, so it can be looked at.
pub fn collect(run_dir: &Path, report_dir: &Path) -> Collected {
    let mut out = Collected::default();
    let mut files: Vec<(u32, PathBuf)> = match fs::read_dir(run_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                report_pid(name.to_str()?).map(|pid| (pid, e.path()))
            })
            .collect(),
        Err(e) => {
            out.warnings.push(format!(
                "cannot read run directory {}: {}",
                run_dir.display(),
                os(&e)
            ));
            return out;
        }
    };
    files.sort();
    for (pid, path) in files {
        let dest = report_dir.join(format!("{pid}.json"));
        let (kept, moved) = match fs::rename(&path, &dest) {
            Ok(()) => (dest.clone(), true),
            Err(e) => {
                out.warnings.push(format!(
                    "cannot move {} to {}: {}",
                    path.display(),
                    dest.display(),
                    os(&e)
                ));
                (path.clone(), false)
            }
        };
        match fs::read_to_string(&kept) {
            Ok(text) => match Report::from_json(&text) {
                Ok(report) => out.reports.push(report),
                Err(e) => out.warnings.push(format!(
                    "skipping report {}: {e}",
                    if moved { &dest } else { &path }.display()
                )),
            },
            Err(e) => out
                .warnings
                .push(format!("skipping report {}: {}", kept.display(), os(&e))),
        }
    }
    if let Err(e) = fs::remove_dir_all(run_dir) {
        out.warnings.push(format!(
            "cannot remove run directory {}: {}",
            run_dir.display(),
            os(&e)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakscan_core::report::{Process, Trigger};
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("leakscan-reportdir-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn report_dir_from_options_else_default() {
        assert_eq!(
            resolve(
                Some("verbosity=2:report_dir=/r/a:exitcode=1"),
                Some("/run/user/5"),
                5
            ),
            PathBuf::from("/r/a")
        );
        assert_eq!(
            resolve(Some("report_dir='/r/a:b'"), None, 5),
            PathBuf::from("/r/a:b")
        );
        assert_eq!(
            resolve(Some("verbosity=2:bogus"), Some("/run/user/5"), 5),
            PathBuf::from("/run/user/5/leakscan")
        );
        assert_eq!(resolve(None, None, 42), PathBuf::from("/tmp/leakscan-42"));
        assert_eq!(
            resolve(None, Some("rel"), 42),
            PathBuf::from("/tmp/leakscan-42")
        );
    }

    #[test]
    fn child_options_append_and_quote() {
        let o = child_options(None, Path::new("/r/run-1-2")).unwrap();
        assert_eq!(o, "report_dir=/r/run-1-2:verbosity=0");
        let o =
            child_options(Some("verbosity=2:report_dir=/elsewhere"), Path::new("/r/x")).unwrap();
        assert_eq!(
            o,
            "verbosity=2:report_dir=/elsewhere:report_dir=/r/x:verbosity=0"
        );

        let o = child_options(Some("exitcode=3"), Path::new("/r:s/run-1-2")).unwrap();
        assert_eq!(o, "exitcode=3:report_dir=\"/r:s/run-1-2\":verbosity=0");
        let (parsed, errors) = Options::parse(&o);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(parsed.report_dir.as_deref(), Some("/r:s/run-1-2"));
        assert_eq!(parsed.verbosity, 0);
        assert_eq!(parsed.exitcode, 3);

        let o = child_options(None, Path::new("/r\"x/run")).unwrap();
        let (parsed, _) = Options::parse(&o);
        assert_eq!(parsed.report_dir.as_deref(), Some("/r\"x/run"));

        assert!(matches!(
            child_options(None, Path::new("/a'b\"c/run")),
            Err(Error::UnquotablePath(_))
        ));
    }

    fn report(pid: u32) -> Report {
        let process = Process {
            pid,
            exe: "/bin/p".into(),
            argv: vec!["p".into()],
        };
        Report::blank(process, Trigger::Exit)
    }

    #[test]
    fn directories_are_private_and_collect_moves_reports_up() {
        let base = temp_dir("collect");
        let report_dir = base.join("a/b");
        ensure(&report_dir).unwrap();
        ensure(&report_dir).unwrap();
        let mode = fs::metadata(&report_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");

        let run = create_run_dir(&report_dir, 7, 99).unwrap();
        assert_eq!(run, report_dir.join("run-7-99"));
        assert!(create_run_dir(&report_dir, 7, 99).is_err());
        let mode = fs::metadata(&run).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        fs::write(run.join("20.json"), report(20).to_json()).unwrap();
        fs::write(run.join("3.json"), report(3).to_json()).unwrap();
        fs::write(run.join("5.json"), "{not json").unwrap();
        fs::write(run.join("9.json.tmp"), "partial").unwrap();
        let got = collect(&run, &report_dir);
        let pids: Vec<u32> = got.reports.iter().map(|r| r.process.pid).collect();
        assert_eq!(pids, [3, 20]);
        assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
        assert!(got.warnings[0].contains("5.json"));
        assert!(!run.exists());
        for pid in [3, 5, 20] {
            assert!(report_dir.join(format!("{pid}.json")).is_file());
        }
        fs::remove_dir_all(base).unwrap();
    }
}
