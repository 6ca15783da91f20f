//! `LEAKSCAN_OPTIONS`: the sanitizers' `key=value:key=value` convention.
//!
//! Parsing is pure so the CLI and the agent agree on it and it can be tested
//! without a process. The agent never fails on bad options: it warns once,
//! keeps the defaults for what it could not read, and goes on (I2).

/// Deepest allocation stack we record; deeper requests are clamped.
pub const MAX_STACK_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Where reports and sockets go; `None` = the default directory
    /// (`$XDG_RUNTIME_DIR/leakscan`, else `/tmp/leakscan-$UID`).
    pub report_dir: Option<String>,
    /// Exit status to force when leaks are found at exit; 0 keeps the
    /// program's own status (LeakSanitizer's `exitcode`, but opt-in).
    pub exitcode: i32,
    /// Frames recorded per allocation stack.
    pub stack_depth: usize,
    /// Run the exact check when the program exits.
    pub leak_check_at_exit: bool,
    /// Addresses listed per leak group (counts stay exact).
    pub max_objects: usize,
    /// 0 = silent, 1 = one line on stderr when leaks are found at exit,
    /// 2 = also a line for every report written.
    pub verbosity: u32,
    /// Master switch: `enabled=0` makes the library pass everything through.
    pub enabled: bool,
    /// Resolve function/file/line in the agent. Off: frames keep module,
    /// offset and build-id only (no debug info is read at exit).
    pub symbolize: bool,
    /// A LeakSanitizer suppression file applied when the report is built.
    pub suppressions: Option<String>,
    /// Milliseconds between periodic scans of the running process; 0 = no
    /// periodic scans (the control socket still answers `scan`).
    pub scan_interval_ms: u64,
    /// Blocks younger than this are never reported by a periodic or
    /// requested scan (kmemleak's `min_age`).
    pub min_age_ms: u64,
    /// Serve `<report_dir>/<pid>.sock` for `leakscan report --pid` & co.
    pub control_socket: bool,
    /// Marker threads of a check (the calling thread and helpers); `None`
    /// = [`DEFAULT_SCAN_THREADS`], or fewer on a machine with fewer CPUs.
    pub scan_threads: Option<usize>,
}

/// Default number of marker threads. Two, because that is where the mark
/// (memory-latency bound: a cache miss per pointer) nearly doubles in
/// speed, and a concurrent scan should not take more than one core from
/// the program besides its own; more can be asked for.
pub const DEFAULT_SCAN_THREADS: usize = 2;
/// Most marker threads a check uses: past this the memory system, not the
/// markers, sets the pace.
pub const MAX_SCAN_THREADS: usize = 8;

/// Default period of the background scan: often enough that a leak in a
/// server shows up within half a minute of `min_age`, rarely enough that a
/// scan of a few hundred MiB costs about 1% of one core.
pub const DEFAULT_SCAN_INTERVAL_MS: u64 = 10_000;
/// kmemleak's default minimum age.
pub const DEFAULT_MIN_AGE_MS: u64 = 5_000;

/// Parse a duration in seconds (`10`, `0.1`, `2.5`) into milliseconds.
pub fn parse_seconds(v: &str) -> Result<u64, String> {
    let secs: f64 = v
        .parse()
        .map_err(|_| format!("`{v}` is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err("seconds must be a non-negative number".into());
    }
    if secs > 31_536_000.0 {
        return Err("more than a year".into());
    }
    Ok((secs * 1000.0).round() as u64)
}

impl Default for Options {
    fn default() -> Self {
        Options {
            report_dir: None,
            exitcode: 0,
            stack_depth: 16,
            leak_check_at_exit: true,
            max_objects: 16,
            verbosity: 1,
            enabled: true,
            symbolize: true,
            scan_interval_ms: DEFAULT_SCAN_INTERVAL_MS,
            min_age_ms: DEFAULT_MIN_AGE_MS,
            control_socket: true,
            scan_threads: None,
            suppressions: None,
        }
    }
}

/// One problem found while parsing; the rest of the options still apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub item: String,
    pub reason: String,
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LEAKSCAN_OPTIONS: `{}`: {}", self.item, self.reason)
    }
}

/// Split on ':' outside quotes; a value may be quoted with ' or " to contain ':'.
fn split_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, ':') => items.push(std::mem::take(&mut cur)),
            (None, c) => cur.push(c),
        }
    }
    items.push(cur);
    items.retain(|s| !s.trim().is_empty());
    items
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl Options {
    /// Parse `LEAKSCAN_OPTIONS`. Later items override earlier ones, so a
    /// wrapper may append its own settings.
    pub fn parse(text: &str) -> (Options, Vec<OptionError>) {
        let mut opts = Options::default();
        let mut errors = Vec::new();
        for item in split_items(text) {
            if let Err(reason) = opts.apply(&item) {
                errors.push(OptionError { item, reason });
            }
        }
        (opts, errors)
    }

    fn apply(&mut self, item: &str) -> Result<(), String> {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| "expected key=value".to_string())?;
        let (key, value) = (key.trim(), value.trim());
        let int = |v: &str| -> Result<i64, String> {
            v.parse::<i64>()
                .map_err(|_| format!("`{v}` is not an integer"))
        };
        let boolean =
            |v: &str| parse_bool(v).ok_or_else(|| format!("`{v}` is not a boolean (0 or 1)"));
        match key {
            "report_dir" => {
                if value.is_empty() {
                    return Err("empty path".into());
                }
                self.report_dir = Some(value.to_string());
            }
            "exitcode" => {
                let n = int(value)?;
                if !(0..=255).contains(&n) {
                    return Err("exit codes are 0..=255".into());
                }
                self.exitcode = n as i32;
            }
            "stack_depth" | "depth" | "malloc_context_size" => {
                let n = int(value)?;
                if n < 1 {
                    return Err("depth must be at least 1".into());
                }
                self.stack_depth = (n as usize).min(MAX_STACK_DEPTH);
            }
            "leak_check_at_exit" | "detect_leaks" => self.leak_check_at_exit = boolean(value)?,
            "max_objects" => {
                let n = int(value)?;
                if n < 0 {
                    return Err("must not be negative".into());
                }
                self.max_objects = n as usize;
            }
            "verbosity" => {
                let n = int(value)?;
                if !(0..=2).contains(&n) {
                    return Err("verbosity is 0, 1 or 2".into());
                }
                self.verbosity = n as u32;
            }
            "enabled" => self.enabled = boolean(value)?,
            "symbolize" => self.symbolize = boolean(value)?,
            "scan_interval" => self.scan_interval_ms = parse_seconds(value)?,
            "min_age" => self.min_age_ms = parse_seconds(value)?,
            "control_socket" => self.control_socket = boolean(value)?,
            "scan_threads" => {
                let n = int(value)?;
                if n < 1 {
                    return Err("at least 1 (one marker: no helper threads)".into());
                }
                self.scan_threads = Some((n as usize).min(MAX_SCAN_THREADS));
            }
            "suppressions" => {
                if value.is_empty() {
                    return Err("empty path".into());
                }
                self.suppressions = Some(value.to_string());
            }
            _ => return Err("unknown option".into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_empty() {
        let (o, e) = Options::parse("");
        assert_eq!(o, Options::default());
        assert!(e.is_empty());
    }

    #[test]
    fn later_items_win_and_quotes_protect_colons() {
        let (o, e) = Options::parse("exitcode=3:report_dir='/tmp/a:b':exitcode=7:depth=200");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.exitcode, 7);
        assert_eq!(o.report_dir.as_deref(), Some("/tmp/a:b"));
        assert_eq!(o.stack_depth, MAX_STACK_DEPTH);
    }

    #[test]
    fn bad_items_are_reported_and_the_rest_applies() {
        let (o, e) = Options::parse("bogus=1:exitcode=x:verbosity=0:nokey:exitcode=300");
        assert_eq!(o.verbosity, 0);
        assert_eq!(o.exitcode, 0);
        let items: Vec<_> = e.iter().map(|e| e.item.as_str()).collect();
        assert_eq!(items, ["bogus=1", "exitcode=x", "nokey", "exitcode=300"]);
    }

    #[test]
    fn durations_are_seconds_with_fractions() {
        let (o, e) = Options::parse("scan_interval=0.1:min_age=0:control_socket=0");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!((o.scan_interval_ms, o.min_age_ms), (100, 0));
        assert!(!o.control_socket);
        let (o, e) = Options::parse("scan_interval=-1:min_age=soon:scan_interval=inf");
        assert_eq!(e.len(), 3);
        assert_eq!(o.scan_interval_ms, DEFAULT_SCAN_INTERVAL_MS);
    }

    #[test]
    fn scan_threads_is_a_count_capped_at_the_maximum() {
        assert_eq!(Options::default().scan_threads, None);
        let (o, e) = Options::parse("scan_threads=1");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.scan_threads, Some(1));
        let (o, e) = Options::parse("scan_threads=64");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.scan_threads, Some(MAX_SCAN_THREADS));
        let (o, e) = Options::parse("scan_threads=0:scan_threads=two");
        assert_eq!(e.len(), 2);
        assert_eq!(o.scan_threads, None);
    }

    #[test]
    fn lsan_names_are_accepted() {
        let (o, e) = Options::parse(
            "detect_leaks=0:malloc_context_size=4:symbolize=0:suppressions=/x/lsan.supp",
        );
        assert!(e.is_empty());
        assert_eq!(o.suppressions.as_deref(), Some("/x/lsan.supp"));
        assert!(!o.leak_check_at_exit);
        assert!(!o.symbolize);
        assert_eq!(o.stack_depth, 4);
    }
}

/// The report directory when none is configured: `$XDG_RUNTIME_DIR/leakscan`
/// when that variable is set and absolute, else `/tmp/leakscan-$UID`. The
/// agent and the CLI both call this so they always agree.
pub fn default_report_dir(xdg_runtime_dir: Option<&str>, uid: u32) -> String {
    match xdg_runtime_dir {
        Some(dir) if dir.starts_with('/') => format!("{}/leakscan", dir.trim_end_matches('/')),
        _ => format!("/tmp/leakscan-{uid}"),
    }
}

#[cfg(test)]
mod dir_tests {
    use super::default_report_dir;

    #[test]
    fn xdg_wins_when_absolute() {
        assert_eq!(
            default_report_dir(Some("/run/user/7/"), 7),
            "/run/user/7/leakscan"
        );
        assert_eq!(default_report_dir(Some("relative"), 7), "/tmp/leakscan-7");
        assert_eq!(default_report_dir(None, 0), "/tmp/leakscan-0");
    }
}
