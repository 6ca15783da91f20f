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
    /// Render one report file written by the agent (JSON by default).
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
    /// Report blocks older than this many seconds (default: the process's
    /// min_age, 5 s unless set).
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
    /// Output format: text (to stderr) or json (to stdout).
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
    /// The report file (`<report_dir>/<pid>.json`), or `-` for stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Write to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Colour the text report.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
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
            eprintln!("leakscan: {}", one_line(&e));
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
