//! The command line exactly as clap reads it. Nothing here looks at the
//! environment or the file system; `settings` turns these into decisions.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "leakscan",
    version,
    about = "kmemleak for userspace: find memory leaks in unmodified programs"
)]
pub struct LowArgs {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run PROG under libleakscan.so and report its leaks when it exits.
    ///
    /// Exits with the program's status, with --error-exitcode when leaks were
    /// found, with 128+S when the program was killed by signal S, and with 2
    /// when leakscan itself could not do its job.
    Run(RunArgs),
    /// Show leak reports: one file, or every report in the report directory.
    ///
    /// Without FILE, the reports of every process run with the library
    /// (finished, or running and scanned periodically), newest first. Exits
    /// 0, or 1 when leaks are shown and --fail-on-leaks is given, or 2 when a
    /// report cannot be read or an argument is wrong.
    Report(ReportArgs),
    /// Ask a running process (started with libleakscan.so) to scan now and
    /// print its report: the leaks it has made so far.
    Scan(ScanArgs),
    /// Forget what a running process reports now (kmemleak's `clear`): those
    /// blocks are never reported again; only new leaks are.
    Clear(PidArgs),
    /// Describe the block of a running process that contains ADDR: size,
    /// age, allocation stack, and whether the last scan found it referenced.
    Dump(DumpArgs),
    /// A running process's counters: live blocks and bytes, scans, scan
    /// time, quarantine size.
    Stats(PidArgs),
    /// List the processes running with libleakscan.so (from the control
    /// sockets in the report directory; stale ones are removed).
    Ps(PsArgs),
}

#[derive(Debug, Args)]
pub struct PidArgs {
    /// Process id.
    #[arg(value_name = "PID")]
    pub pid: u32,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Process id.
    #[arg(value_name = "PID")]
    pub pid: u32,
    /// Report only blocks older than SECONDS (default: every block left
    /// unreferenced by two back-to-back scans, whatever its age).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub min_age: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Colour the text report.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Exit with status 1 when the report holds leaks.
    #[arg(long)]
    pub fail_on_leaks: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Process id.
    #[arg(value_name = "PID")]
    pub pid: u32,
    /// An address inside the block (0x… or decimal).
    #[arg(value_name = "ADDR", value_parser = parse_address)]
    pub address: usize,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn parse_seconds(v: &str) -> Result<u64, String> {
    leakscan_core::options::parse_seconds(v)
}

fn parse_address(v: &str) -> Result<usize, String> {
    leakscan_core::control::parse_address(v)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Output format: text (to stderr), json or sarif (to stdout).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report to FILE (atomically) instead.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Exit status when leaks were found; 0 keeps the program's own.
    #[arg(long, value_name = "N", default_value_t = 23)]
    pub error_exitcode: u8,
    /// Colour the text report.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Scan the running program every SECONDS (0 = only at exit); its
    /// socket then answers `leakscan scan PID`. Default: the agent's (10 s).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub scan_interval: Option<u64>,
    /// Periodic scans report only blocks older than SECONDS (default 5).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub min_age: Option<u64>,
    #[command(flatten)]
    pub view: ViewArgs,
    /// The program to run and its arguments (put them after `--`).
    #[arg(
        value_name = "PROG",
        required = true,
        trailing_var_arg = true,
        num_args = 1..
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A report file (`<report_dir>/<pid>.json`, or a saved `leakscan
    /// report` output), or `-` for stdin. Default: the report directory.
    #[arg(value_name = "FILE", conflicts_with = "dir")]
    pub file: Option<PathBuf>,
    /// Show every report in directory D instead of the report directory.
    #[arg(long, value_name = "D")]
    pub dir: Option<PathBuf>,
    /// Ask running process P (started with libleakscan.so) to scan now, and
    /// show its report: the leaks it has made so far.
    #[arg(long, value_name = "P", conflicts_with_all = ["file", "dir"])]
    pub pid: Option<u32>,
    /// With --pid: report only blocks older than SECONDS (default: every
    /// block left unreferenced by two back-to-back scans, whatever its age).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, requires = "pid")]
    pub min_age: Option<u64>,
    /// Output format [default: text on a terminal, else json].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Colour the text report.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Exit 1 when the reports (after suppressions, baseline and filters)
    /// still show leaks.
    #[arg(long)]
    pub fail_on_leaks: bool,
    #[command(flatten)]
    pub view: ViewArgs,
}

/// What to show of a report; shared by `run` and `report`.
#[derive(Debug, Args, Default)]
pub struct ViewArgs {
    /// LeakSanitizer suppression file (`leak:PATTERN` lines); repeatable.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// List the suppression rules that matched, with what each hid.
    #[arg(long)]
    pub print_suppressions: bool,
    /// Show only leak groups that are not in OLD.json (a saved JSON report),
    /// or that grew since.
    #[arg(long, value_name = "OLD.json")]
    pub baseline: Option<PathBuf>,
    /// Show only leak groups of at least N bytes.
    #[arg(long, value_name = "N")]
    pub min_bytes: Option<u64>,
    /// Show only the N biggest leak groups of each report.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub top: Option<u64>,
    /// Show only direct or only indirect leaks.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Resolve function, file and line of frames that have only module +
    /// offset + build-id, from debug files found by build-id.
    #[arg(long)]
    pub symbolize: bool,
    /// Look for debug files in DIR too: its `.build-id/xx/rest.debug` tree,
    /// or unstripped binaries in it (repeatable; implies --symbolize).
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,
    /// SARIF paths are relative to DIR [default: the git work tree around
    /// the current directory, else the current directory].
    #[arg(long, value_name = "DIR")]
    pub source_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Sarif,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Direct,
    Indirect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Never,
    Always,
    Auto,
}

/// What to do when clap refuses the command line: help and version are
/// printed as clap wants them; a mistake becomes one line and status 2.
pub fn clap_exit(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
        _ => {
            eprintln!("leakscan: {}", crate::error::one_line(&one_line(&e)));
            ExitCode::from(2)
        }
    }
}

/// clap's first paragraph (the message, and the names it lists) without its
/// `error: ` prefix, plus its tip if any.
fn one_line(e: &clap::Error) -> String {
    // `StyledStr`'s Display strips the colours.
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let first = first.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    let mut msg = first.strip_prefix("error: ").unwrap_or(&first).to_string();
    if msg.is_empty() {
        msg = "invalid arguments".into();
    }
    // clap may give several tips; the first is the useful one.
    if let Some(tip) = text.lines().find_map(|l| l.trim().strip_prefix("tip: ")) {
        msg.push_str("; ");
        msg.push_str(tip);
    }
    msg.push_str(" (see leakscan --help)");
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LowArgs, clap::Error> {
        LowArgs::try_parse_from(std::iter::once("leakscan").chain(args.iter().copied()))
    }

    #[test]
    fn run_takes_everything_after_prog_verbatim() {
        let Command::Run(run) = parse(&["run", "--format", "json", "--", "prog", "-x", "--format"])
            .unwrap()
            .command
        else {
            panic!("not run");
        };
        assert_eq!(run.format, Format::Json);
        assert_eq!(run.error_exitcode, 23);
        assert_eq!(run.command, ["prog", "-x", "--format"]);

        let Command::Run(run) = parse(&["run", "prog", "--help"]).unwrap().command else {
            panic!("not run");
        };
        assert_eq!(run.command, ["prog", "--help"]);
    }

    #[test]
    fn report_takes_a_file_or_a_directory() {
        let Command::Report(r) = parse(&["report"]).unwrap().command else {
            panic!("not report");
        };
        assert!(r.file.is_none() && r.dir.is_none() && r.format.is_none());
        let Command::Report(r) = parse(&[
            "report",
            "r.json",
            "--format",
            "sarif",
            "--suppressions",
            "a.supp",
            "--suppressions",
            "b.supp",
            "--top",
            "3",
            "--kind",
            "direct",
        ])
        .unwrap()
        .command
        else {
            panic!("not report");
        };
        assert_eq!(r.file.as_deref(), Some(std::path::Path::new("r.json")));
        assert_eq!(r.format, Some(Format::Sarif));
        assert_eq!(r.view.suppressions.len(), 2);
        assert_eq!(r.view.top, Some(3));
        assert_eq!(r.view.kind, Some(KindArg::Direct));
        assert!(parse(&["report", "r.json", "--dir", "d"]).is_err());
        assert!(parse(&["report", "--top", "0"]).is_err());
        assert!(parse(&["report", "--kind", "both"]).is_err());
    }

    #[test]
    fn mistakes_become_one_line() {
        let e = parse(&["run", "--formt", "json", "--", "prog"]).unwrap_err();
        let line = one_line(&e);
        assert!(!line.contains('\n'));
        assert!(line.contains("--formt"), "{line}");
        assert!(line.contains("--format"), "{line}");

        let e = parse(&["run", "--error-exitcode", "300", "--", "p"]).unwrap_err();
        assert!(one_line(&e).contains("300"));
        let e = parse(&["run"]).unwrap_err();
        let line = one_line(&e);
        assert!(!line.contains('\n'));
        assert!(line.contains("<PROG>"), "{line}");
    }
}
