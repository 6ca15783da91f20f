//! Validated settings: the raw arguments plus the environment, checked and
//! resolved once, so that `run` and `report` only act on decisions.
//!
//! Everything taken from the environment comes in through [`Env`], which
//! keeps the resolution rules testable without touching the process.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use leakscan_core::options::{self, Options};
use leakscan_core::suppress::Suppressions;

use crate::args::{ColorChoice, Format, ReportArgs, RunArgs};
use crate::error::Error;
use crate::output::Destination;
use crate::reportdir;
use crate::source::Source;
use crate::view::View;

/// The name the agent library is built and installed under.
pub const LIBRARY_NAME: &str = "libleakscan.so";

/// The parts of the environment leakscan reads.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub leakscan_lib: Option<OsString>,
    pub leakscan_options: Option<OsString>,
    pub xdg_runtime_dir: Option<OsString>,
    pub ld_preload: Option<OsString>,
    pub no_color: bool,
    pub uid: u32,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        Env {
            leakscan_lib: var("LEAKSCAN_LIB"),
            leakscan_options: var("LEAKSCAN_OPTIONS"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            ld_preload: var("LD_PRELOAD"),
            no_color: var("NO_COLOR").is_some(),
            uid: leakscan_platform::user::uid(),
        }
    }

    /// The good items of LEAKSCAN_OPTIONS, written back as one value, and
    /// the warning line for the bad ones, if any. Bad items (not UTF-8, an
    /// unclosed quote, an unknown key, a bad value) are ignored here as the
    /// agent ignores them, so both agree on `report_dir`.
    fn options_text(&self) -> (Option<String>, Option<String>) {
        match &self.leakscan_options {
            None => (None, None),
            Some(v) => {
                let (text, errors) = Options::sanitize(v.as_bytes());
                (Some(text), options::warning(&errors))
            }
        }
    }
}

/// Everything `leakscan run` needs, validated.
#[derive(Debug)]
pub struct RunSettings {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub format: Format,
    pub destination: Destination,
    pub color: bool,
    /// Status when leaks were found; 0 keeps the program's own.
    pub error_exitcode: u8,
    /// Absolute path of libleakscan.so.
    pub library: PathBuf,
    /// LD_PRELOAD as inherited, to keep after the library.
    pub ld_preload: Option<OsString>,
    /// The good items of LEAKSCAN_OPTIONS as inherited, to append the
    /// run's own items to.
    pub leakscan_options: Option<String>,
    /// The one warning line for its bad items, printed by `run` (which
    /// passes only the good ones on, so the agent in each process does
    /// not warn again).
    pub option_warning: Option<String>,
    pub report_dir: PathBuf,
    /// LEAKSCAN_OPTIONS items from the run's own flags.
    pub agent_options: Vec<String>,
    pub view: View,
}

impl RunSettings {
    pub fn new(args: RunArgs, env: &Env) -> Result<RunSettings, Error> {
        let mut command = args.command.into_iter();
        let program = command
            .next()
            .ok_or_else(|| Error::Usage("run: missing PROG".into()))?;
        if program.is_empty() {
            return Err(Error::Usage("run: PROG is empty".into()));
        }
        let destination = Destination::for_output(args.output, Destination::Stderr, args.format);
        destination.check()?;
        let current_exe = std::env::current_exe();
        let library = find_library(env.leakscan_lib.as_deref(), current_exe)?;
        let (leakscan_options, option_warning) = env.options_text();
        check_option_suppressions(leakscan_options.as_deref())?;
        let view = View::new(args.view)?;
        let report_dir = reportdir::resolve(
            leakscan_options.as_deref(),
            env.xdg_runtime_dir.as_deref().and_then(|s| s.to_str()),
            env.uid,
        );
        Ok(RunSettings {
            program,
            args: command.collect(),
            format: args.format,
            color: use_color(args.color, &destination, args.format, env.no_color),
            destination,
            error_exitcode: args.error_exitcode,
            library,
            ld_preload: env.ld_preload.clone(),
            leakscan_options,
            option_warning,
            report_dir,
            agent_options: [
                ("scan_interval", args.scan_interval),
                ("min_age", args.min_age),
            ]
            .into_iter()
            .filter_map(|(k, ms)| ms.map(|ms| format!("{k}={}.{:03}", ms / 1000, ms % 1000)))
            .collect(),
            view,
        })
    }
}

/// The report directory for commands that talk to running processes.
pub fn live_report_dir(env: &Env) -> Result<PathBuf, Error> {
    let (options, _) = env.options_text();
    Ok(reportdir::resolve(
        options.as_deref(),
        env.xdg_runtime_dir.as_deref().and_then(|s| s.to_str()),
        env.uid,
    ))
}

/// The agent only warns about a bad `suppressions=` file (it must not stop
/// the program); `leakscan run` can refuse before running anything.
fn check_option_suppressions(leakscan_options: Option<&str>) -> Result<(), Error> {
    let (options, _) = Options::parse(leakscan_options.unwrap_or(""));
    let Some(path) = options.suppressions else {
        return Ok(());
    };
    let text = crate::input::read_text(
        Path::new(&path),
        "suppression file",
        crate::input::MAX_SUPPRESSIONS_BYTES,
    )
    .map_err(|e| match e {
        Error::ReadInput { source, .. } => Error::OptionSuppressions(format!(
            "suppressions={path}: {}",
            crate::error::os(&source)
        )),
        e => Error::OptionSuppressions(format!("suppressions={path}: {e}")),
    })?;
    Suppressions::parse(&path, &text)
        .map(|_| ())
        .map_err(|e| Error::OptionSuppressions(format!("suppressions={path}: {e}")))
}

/// Everything `leakscan report` needs, validated.
#[derive(Debug)]
pub struct ReportSettings {
    pub source: Source,
    pub format: Format,
    pub destination: Destination,
    pub color: bool,
    pub fail_on_leaks: bool,
    pub view: View,
}

impl ReportSettings {
    pub fn new(args: ReportArgs, env: &Env) -> Result<ReportSettings, Error> {
        let source = match (args.file, args.dir) {
            _ if args.pid.is_some() => Source::Pid {
                pid: args.pid.unwrap_or_default(),
                report_dir: live_report_dir(env)?,
                min_age_ms: args.min_age,
            },
            (Some(file), _) if file == Path::new("-") => Source::Stdin,
            (Some(file), _) => Source::File(file),
            (None, Some(dir)) => Source::Dir {
                path: dir,
                explicit: true,
            },
            (None, None) => Source::Dir {
                path: reportdir::resolve(
                    env.options_text().0.as_deref(),
                    env.xdg_runtime_dir.as_deref().and_then(|s| s.to_str()),
                    env.uid,
                ),
                explicit: false,
            },
        };
        // People at a terminal get text; pipes and files get JSON.
        let format = args.format.unwrap_or_else(|| {
            if args.output.is_none() && std::io::stdout().is_terminal() {
                Format::Text
            } else {
                Format::Json
            }
        });
        let destination = Destination::for_output(args.output, Destination::Stdout, format);
        destination.check()?;
        Ok(ReportSettings {
            source,
            format,
            color: use_color(args.color, &destination, format, env.no_color),
            destination,
            fail_on_leaks: args.fail_on_leaks,
            view: View::new(args.view)?,
        })
    }
}

/// Colour only for text, and with `auto` only for a terminal and when
/// NO_COLOR (no-color.org) is not set.
pub fn use_color(choice: ColorChoice, dest: &Destination, format: Format, no_color: bool) -> bool {
    if format != Format::Text {
        return false;
    }
    match choice {
        ColorChoice::Never => false,
        ColorChoice::Always => true,
        ColorChoice::Auto => {
            !no_color
                && match dest {
                    Destination::Stdout => std::io::stdout().is_terminal(),
                    Destination::Stderr => std::io::stderr().is_terminal(),
                    Destination::File(_) => false,
                }
        }
    }
}

/// libleakscan.so: `LEAKSCAN_LIB` if set, else beside the leakscan
/// executable. The result is absolute, exists, and fits in LD_PRELOAD.
pub fn find_library(
    from_env: Option<&std::ffi::OsStr>,
    current_exe: std::io::Result<PathBuf>,
) -> Result<PathBuf, Error> {
    let (path, from_env) = match from_env {
        Some(lib) => {
            let lib = Path::new(lib);
            let abs = std::path::absolute(lib).unwrap_or_else(|_| lib.to_path_buf());
            (abs, true)
        }
        None => {
            let exe = current_exe.map_err(Error::CurrentExe)?;
            let dir = exe.parent().unwrap_or(Path::new("/"));
            (dir.join(LIBRARY_NAME), false)
        }
    };
    if !path.is_file() {
        return Err(Error::LibraryMissing { path, from_env });
    }
    // ld.so splits LD_PRELOAD on ':' and spaces; such a path would preload
    // pieces of it.
    let text = path.as_os_str().as_encoded_bytes();
    if text.iter().any(|b| *b == b':' || b.is_ascii_whitespace()) {
        return Err(Error::LibraryPath(path));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("leakscan-settings-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn library_beside_the_executable_or_from_env() {
        let dir = temp_dir("lib");
        let exe = dir.join("leakscan");
        let err = find_library(None, Ok(exe.clone())).unwrap_err();
        assert!(matches!(
            err,
            Error::LibraryMissing {
                from_env: false,
                ..
            }
        ));

        std::fs::write(dir.join(LIBRARY_NAME), b"").unwrap();
        assert_eq!(find_library(None, Ok(exe)).unwrap(), dir.join(LIBRARY_NAME));

        let custom = dir.join("custom.so");
        let err = find_library(
            Some(custom.as_os_str()),
            Err(std::io::ErrorKind::Other.into()),
        );
        assert!(matches!(
            err,
            Err(Error::LibraryMissing { from_env: true, .. })
        ));
        std::fs::write(&custom, b"").unwrap();
        assert_eq!(
            find_library(Some(custom.as_os_str()), Ok("/x".into())).unwrap(),
            custom
        );

        let colon = dir.join("a:b.so");
        std::fs::write(&colon, b"").unwrap();
        let err = find_library(Some(colon.as_os_str()), Ok("/x".into()));
        assert!(matches!(err, Err(Error::LibraryPath(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn colour_follows_choice_and_format() {
        let file = Destination::File("/tmp/x".into());
        assert!(use_color(ColorChoice::Always, &file, Format::Text, true));
        assert!(!use_color(ColorChoice::Always, &file, Format::Json, false));
        assert!(!use_color(ColorChoice::Auto, &file, Format::Text, false));
        assert!(!use_color(
            ColorChoice::Never,
            &Destination::Stderr,
            Format::Text,
            false
        ));
        assert!(!use_color(
            ColorChoice::Auto,
            &Destination::Stderr,
            Format::Text,
            true
        ));
    }
}
