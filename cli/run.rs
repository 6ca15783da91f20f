//! `leakscan run -- PROG ARGS…`: run a program under the agent and report
//! its leaks when it exits.
//!
//! 1. Make the report directory and a private run directory inside it.
//! 2. Start PROG with libleakscan.so first in LD_PRELOAD and the run
//!    directory in LEAKSCAN_OPTIONS, stdio inherited; ignore SIGINT and
//!    SIGQUIT while it runs, as a shell does, so Ctrl-C stops the program
//!    and we still report.
//! 3. Collect the `<pid>.json` the agent wrote for PROG and each descendant,
//!    merge them into PROG's report.
//! 4. Render it, and exit with what PROG's status means (see [`exit_code`]).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{SystemTime, UNIX_EPOCH};

use leakscan_core::report::{Process, Report, Trigger};
use leakscan_platform::user::{signal_name, ShellSignals};

use crate::args::Format;
use crate::elf;
use crate::error::Error;
use crate::render::{self, Style};
use crate::report;
use crate::reportdir;
use crate::settings::RunSettings;
use crate::source::Shape;
use crate::view;

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramStatus {
    Exited(u8),
    Signaled(i32),
}

impl From<ExitStatus> for ProgramStatus {
    fn from(status: ExitStatus) -> Self {
        match (status.signal(), status.code()) {
            (Some(sig), _) => ProgramStatus::Signaled(sig),
            (None, Some(code)) => ProgramStatus::Exited(u8::try_from(code).unwrap_or(1)),
            // wait() reports only terminations, which have one or the other.
            (None, None) => ProgramStatus::Exited(1),
        }
    }
}

/// leakscan's exit status: 128+S for a program killed by signal S (as a
/// shell reports it); else `error_exitcode` when leaks were found, unless it
/// is 0; else the program's own status.
pub fn exit_code(status: ProgramStatus, leaked: bool, error_exitcode: u8) -> u8 {
    match status {
        ProgramStatus::Signaled(sig) => u8::try_from(128 + sig.clamp(0, 127)).unwrap_or(255),
        ProgramStatus::Exited(_) if leaked && error_exitcode != 0 => error_exitcode,
        ProgramStatus::Exited(code) => code,
    }
}

pub fn run(s: &RunSettings) -> Result<u8, Error> {
    if let Some(warning) = &s.option_warning {
        eprintln!("leakscan: {warning}");
    }
    // 0. A program the agent can never reach gets an error, not a silent
    //    "no report" that CI would read as "no leaks".
    if elf::program_linkage(Path::new(&s.program)) == elf::Linkage::Static {
        return Err(Error::StaticProgram(s.program.clone()));
    }
    // 1. Directories.
    reportdir::ensure(&s.report_dir)?;
    let run_dir = reportdir::create_run_dir(&s.report_dir, std::process::id(), now_nanos())?;

    // 2. The program.
    let (pid, status) = match spawn_and_wait(s, &run_dir) {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(e);
        }
    };

    // 3. Its reports.
    let collected = reportdir::collect(&run_dir, &s.report_dir);
    for warning in &collected.warnings {
        eprintln!("leakscan: warning: {}", crate::error::one_line(warning));
    }
    let merged = merge(pid, collected.reports, &s.program, &s.args);

    // 4. Tell.
    let program = crate::error::one_line(&s.program.to_string_lossy());
    if let ProgramStatus::Signaled(sig) = status {
        let name = signal_name(sig)
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        eprintln!("leakscan: {program} was killed by signal {sig}{name}");
    }
    let leaked = match merged {
        Some(report) => {
            let mut reports = [report];
            report::apply_view(&s.view, &mut reports);
            let style = Style {
                color: s.color,
                print_suppressions: s.view.print_suppressions,
                source_root: &s.view.source_root,
            };
            let text = render::render(&reports, Shape::One, s.format, style);
            s.destination.write(&text)?;
            report::print_suppressions_aside(&s.view, s.format, &reports);
            view::any_leaks(&reports)
        }
        None => {
            if s.format == Format::Text {
                eprintln!(
                    "leakscan: no report from {program} ({})",
                    no_report_reason(status)
                );
            }
            false
        }
    };
    Ok(exit_code(status, leaked, s.error_exitcode))
}

fn spawn_and_wait(s: &RunSettings, run_dir: &Path) -> Result<(u32, ProgramStatus), Error> {
    let mut options = reportdir::child_options(s.leakscan_options.as_deref(), run_dir)?;
    for item in &s.agent_options {
        options.push(':');
        options.push_str(item);
    }
    let mut cmd = Command::new(&s.program);
    cmd.args(&s.args)
        .env(
            "LD_PRELOAD",
            preload_value(&s.library, s.ld_preload.as_deref()),
        )
        .env("LEAKSCAN_OPTIONS", options);
    let signals = ShellSignals::ignore().map_err(Error::Signals)?;
    signals.restore_in_child(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::ProgramNotFound(s.program.clone()),
        _ => Error::Spawn {
            program: s.program.clone(),
            source,
        },
    })?;
    let status = child.wait().map_err(Error::Wait)?;
    drop(signals);
    Ok((child.id(), status.into()))
}

/// LD_PRELOAD for the program: the agent first, then whatever was there.
pub fn preload_value(library: &Path, existing: Option<&OsStr>) -> OsString {
    let mut value = library.as_os_str().to_owned();
    if let Some(existing) = existing.filter(|e| !e.is_empty()) {
        value.push(":");
        value.push(existing);
    }
    value
}

/// One report from many processes: the program's own (the one whose pid is
/// the child we started) with every descendant's absorbed in pid order.
/// When the program left none but descendants did, a blank report stands in
/// for it.
pub fn merge(
    root_pid: u32,
    mut reports: Vec<Report>,
    program: &OsStr,
    args: &[OsString],
) -> Option<Report> {
    if reports.is_empty() {
        return None;
    }
    reports.sort_by_key(|r| r.process.pid);
    let mut root = match reports.iter().position(|r| r.process.pid == root_pid) {
        Some(i) => reports.remove(i),
        None => stand_in(root_pid, program, args),
    };
    for child in reports {
        root.absorb_child(child);
    }
    Some(root)
}

fn stand_in(pid: u32, program: &OsStr, args: &[OsString]) -> Report {
    let exe = program.to_string_lossy().into_owned();
    let argv = std::iter::once(program)
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Report::blank(Process { pid, exe, argv }, Trigger::Exit)
}

fn no_report_reason(status: ProgramStatus) -> String {
    match status {
        ProgramStatus::Signaled(sig) => {
            format!("it was killed by signal {sig} before the exit check could run")
        }
        ProgramStatus::Exited(_) => "it exited via _exit or exec'd a static or setuid binary, \
             which LD_PRELOAD cannot reach, or leak_check_at_exit=0, or leak tracking \
             was switched off (see leakscan's warning above)"
            .to_string(),
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakscan_core::report::{LeakGroup, LeakKind};

    #[test]
    fn exit_codes() {
        use ProgramStatus::*;
        // A signal wins over everything, as a shell reports it.
        assert_eq!(exit_code(Signaled(11), true, 23), 139);
        assert_eq!(exit_code(Signaled(9), false, 0), 137);
        // Leaks → N, unless N is 0.
        assert_eq!(exit_code(Exited(0), true, 23), 23);
        assert_eq!(exit_code(Exited(4), true, 23), 23);
        assert_eq!(exit_code(Exited(4), true, 0), 4);
        assert_eq!(exit_code(Exited(0), true, 0), 0);
        // No leaks → the program's own status.
        assert_eq!(exit_code(Exited(0), false, 23), 0);
        assert_eq!(exit_code(Exited(3), false, 23), 3);
    }

    #[test]
    fn status_from_wait() {
        assert_eq!(
            ProgramStatus::from(ExitStatus::from_raw(3 << 8)),
            ProgramStatus::Exited(3)
        );
        assert_eq!(
            ProgramStatus::from(ExitStatus::from_raw(11)),
            ProgramStatus::Signaled(11)
        );
    }

    #[test]
    fn preload_keeps_what_was_there() {
        let lib = Path::new("/opt/libleakscan.so");
        assert_eq!(preload_value(lib, None), "/opt/libleakscan.so");
        assert_eq!(
            preload_value(lib, Some(OsStr::new(""))),
            "/opt/libleakscan.so"
        );
        assert_eq!(
            preload_value(lib, Some(OsStr::new("/a.so:/b.so"))),
            "/opt/libleakscan.so:/a.so:/b.so"
        );
    }

    fn report(pid: u32, leaked: u64) -> Report {
        let mut r = stand_in(pid, OsStr::new("p"), &[]);
        if leaked > 0 {
            r.summary.add(LeakKind::Direct, leaked, 8 * leaked);
            r.leaks.push(LeakGroup {
                id: None,
                kind: LeakKind::Direct,
                count: leaked,
                bytes: 8 * leaked,
                objects: vec![],
                stack: vec![],
                pid: None,
                baseline: None,
            });
        }
        r
    }

    #[test]
    fn merge_roots_at_the_program() {
        assert!(merge(10, vec![], OsStr::new("p"), &[]).is_none());

        let merged = merge(
            10,
            vec![report(30, 1), report(10, 2), report(20, 0)],
            OsStr::new("p"),
            &[],
        )
        .unwrap();
        assert_eq!(merged.process.pid, 10);
        assert_eq!(merged.summary.leaked_blocks, 3);
        let children: Vec<u32> = merged.children.iter().map(|c| c.process.pid).collect();
        assert_eq!(children, [20, 30]);
        assert_eq!(
            merged
                .leaks
                .iter()
                .find(|g| g.pid == Some(30))
                .unwrap()
                .count,
            1
        );
    }

    #[test]
    fn merge_stands_in_for_a_silent_program() {
        let args = [OsString::from("-x")];
        let merged = merge(10, vec![report(11, 1)], OsStr::new("./p"), &args).unwrap();
        assert_eq!(merged.process.pid, 10);
        assert_eq!(merged.process.exe, "./p");
        assert_eq!(merged.process.argv, ["./p", "-x"]);
        assert_eq!(merged.scan.trigger, Trigger::Exit);
        assert_eq!(merged.summary.leaked_blocks, 1);
        assert_eq!(merged.children.len(), 1);
    }
}
