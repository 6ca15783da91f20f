//! Every way a `leakscan` command can fail before it has an answer.
//!
//! Each error is one line (main prefixes `leakscan: `) and exit status 2,
//! whatever went wrong: a script tells "leakscan failed" from "the program
//! failed" or "leaks found" by that status alone.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;

use leakscan_core::report::ReportError;
use leakscan_core::suppress::ParseError;

#[derive(Debug)]
pub enum Error {
    /// Bad command line, already reduced to one line.
    Usage(String),
    /// Where to look for libleakscan.so could not be decided.
    CurrentExe(io::Error),
    /// libleakscan.so is not where it should be.
    LibraryMissing {
        path: PathBuf,
        from_env: bool,
    },
    /// The library's path cannot be put in LD_PRELOAD, which splits on ':'
    /// and whitespace.
    LibraryPath(PathBuf),
    /// The directory for `--output` does not exist.
    OutputDir(PathBuf),
    ReportDir {
        path: PathBuf,
        source: io::Error,
    },
    /// The report directory is not ours or not private (already one line).
    UnsafeReportDir(String),
    /// The run directory's path cannot be quoted in LEAKSCAN_OPTIONS.
    UnquotablePath(PathBuf),
    Signals(io::Error),
    ProgramNotFound(OsString),
    /// A statically linked program: LD_PRELOAD can never reach it.
    StaticProgram(OsString),
    Spawn {
        program: OsString,
        source: io::Error,
    },
    Wait(io::Error),
    ReadReport {
        path: PathBuf,
        source: io::Error,
    },
    BadReport {
        path: PathBuf,
        source: ReportError,
    },
    Output {
        path: PathBuf,
        source: io::Error,
    },
    /// Talking to a running process failed (already one line).
    Control(String),
    /// A file an option names (suppressions, baseline) cannot be read.
    ReadInput {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Suppressions {
        path: PathBuf,
        source: ParseError,
    },
    /// `LEAKSCAN_OPTIONS=suppressions=` names a file that is unusable.
    OptionSuppressions(String),
    DebugDir(PathBuf),
    SourceRoot(PathBuf),
    /// `--dir D` that cannot be listed.
    ReadDir {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => f.write_str(msg),
            Error::CurrentExe(e) => write!(
                f,
                "cannot locate the leakscan executable to find libleakscan.so beside it \
                 ({}); set LEAKSCAN_LIB",
                os(e)
            ),
            Error::LibraryMissing {
                path,
                from_env: true,
            } => write!(f, "LEAKSCAN_LIB={}: no such file", path.display()),
            Error::LibraryMissing {
                path,
                from_env: false,
            } => write!(
                f,
                "cannot find the agent library {}; build it (cargo build -p leakscan-preload) \
                 or set LEAKSCAN_LIB",
                path.display()
            ),
            Error::LibraryPath(path) => write!(
                f,
                "the agent library path {} contains ':' or whitespace, which LD_PRELOAD cannot carry",
                path.display()
            ),
            Error::OutputDir(path) => write!(
                f,
                "cannot write {}: its directory does not exist",
                path.display()
            ),
            Error::ReportDir { path, source } => write!(
                f,
                "cannot create report directory {}: {}",
                path.display(),
                os(source)
            ),
            Error::UnquotablePath(path) => write!(
                f,
                "the report directory {} contains both quote characters and cannot be passed in LEAKSCAN_OPTIONS",
                path.display()
            ),
            Error::UnsafeReportDir(msg) => f.write_str(msg),
            Error::Signals(e) => write!(f, "cannot ignore SIGINT/SIGQUIT: {}", os(e)),
            Error::ProgramNotFound(program) => {
                write!(f, "{}: command not found", program.to_string_lossy())
            }
            Error::StaticProgram(program) => write!(
                f,
                "{} is statically linked: LD_PRELOAD cannot reach it, so its leaks cannot be checked",
                program.to_string_lossy()
            ),
            Error::Spawn { program, source } => write!(
                f,
                "cannot run {}: {}",
                program.to_string_lossy(),
                os(source)
            ),
            Error::Wait(e) => write!(f, "lost track of the program: {}", os(e)),
            Error::ReadReport { path, source } => {
                write!(f, "cannot read {}: {}", path.display(), os(source))
            }
            Error::BadReport { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Output { path, source } => {
                write!(f, "cannot write {}: {}", path.display(), os(source))
            }
            Error::Control(msg) => f.write_str(msg),
            Error::ReadInput { what, path, source } => {
                write!(f, "cannot read {what} {}: {}", path.display(), os(source))
            }
            Error::Suppressions { path, source } => {
                write!(f, "suppression file {}: {source}", path.display())
            }
            Error::OptionSuppressions(msg) => write!(f, "LEAKSCAN_OPTIONS: {msg}"),
            Error::DebugDir(path) => write!(f, "--debug-dir {}: not a directory", path.display()),
            Error::SourceRoot(path) => {
                write!(f, "--source-root {}: not a directory", path.display())
            }
            Error::ReadDir { path, source } => write!(
                f,
                "cannot list report directory {}: {}",
                path.display(),
                os(source)
            ),
        }
    }
}

impl std::error::Error for Error {}

/// `text` on one line: control characters (a newline in a file name, an
/// escape sequence) written as escapes, so that every message leakscan
/// prints is one line, as promised, whatever the names it quotes.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An I/O error as people read it: "No such file or directory", without
/// Rust's " (os error 2)" tail.
pub fn os(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_without_errno_noise() {
        let e = Error::ReadReport {
            path: "/x/1.json".into(),
            source: io::Error::from_raw_os_error(2),
        };
        assert_eq!(
            e.to_string(),
            "cannot read /x/1.json: No such file or directory"
        );
        let e = Error::ProgramNotFound("nope".into());
        assert_eq!(e.to_string(), "nope: command not found");
        // A newline in a file name stays inside the one line.
        assert_eq!(
            one_line("cannot read a\nb\u{1b}[2J: x"),
            "cannot read a\\nb\\u{1b}[2J: x"
        );
    }
}
