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
        .map_err(|_| format!("`{}` is not a number of seconds", excerpt(v)))?;
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
        write!(f, "`{}`: {}", excerpt(&self.item), self.reason)
    }
}

/// Bad items named in the warning line; the rest are counted.
const WARNED_ITEMS: usize = 4;

/// The one warning line (without `leakscan: ` and the newline) for the
/// bad items of `LEAKSCAN_OPTIONS`, or `None` when there are none. One
/// line however many there are, each item cut short, so that garbage in
/// the variable cannot flood the program's stderr.
pub fn warning(errors: &[OptionError]) -> Option<String> {
    if errors.is_empty() {
        return None;
    }
    let named: Vec<String> = errors
        .iter()
        .take(WARNED_ITEMS)
        .map(ToString::to_string)
        .collect();
    let mut line = format!("warning: LEAKSCAN_OPTIONS: {}", named.join("; "));
    if errors.len() > WARNED_ITEMS {
        line.push_str(&format!(
            "; and {} more bad items",
            errors.len() - WARNED_ITEMS
        ));
    }
    line.push_str(if errors.len() == 1 {
        " (ignored)"
    } else {
        " (all ignored)"
    });
    Some(line)
}

/// Longest excerpt of untrusted text quoted in a message, in characters.
const EXCERPT_CHARS: usize = 48;

/// `text` as a message may quote it: control characters escaped (so the
/// message stays one line and cannot drive a terminal) and cut to a few
/// dozen characters, with `…` where it was cut. Messages that quote what a
/// user or a peer supplied (options, suppression lines, control requests)
/// use it, so a megabyte of garbage gives a short line.
pub fn excerpt(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == EXCERPT_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One item of `LEAKSCAN_OPTIONS`, its quotes removed.
struct Item {
    text: Vec<u8>,
    /// A quote opened in it was never closed.
    unclosed: bool,
}

/// Split on ':' outside quotes; a value may be quoted with ' or " to
/// contain ':'. Works on bytes: the separators and quotes are ASCII, which
/// never occurs inside a multi-byte UTF-8 character, so an item that is
/// not UTF-8 stays one item (and is refused alone).
fn split_items(text: &[u8]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut cur = Vec::new();
    let mut quote: Option<u8> = None;
    for &c in text {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, b'\'' | b'"') => quote = Some(c),
            (None, b':') => items.push(Item {
                text: std::mem::take(&mut cur),
                unclosed: false,
            }),
            (None, c) => cur.push(c),
        }
    }
    items.push(Item {
        text: cur,
        unclosed: quote.is_some(),
    });
    items.retain(|i| i.unclosed || !i.text.trim_ascii().is_empty());
    items
}

/// `item` written so that [`split_items`] gives it back unchanged: every
/// ':' and quote character inside a quote of the other kind.
fn quote_item(item: &str) -> String {
    let mut out = String::with_capacity(item.len());
    for c in item.chars() {
        match c {
            ':' | '\'' => {
                out.push('"');
                out.push(c);
                out.push('"');
            }
            '"' => out.push_str("'\"'"),
            c => out.push(c),
        }
    }
    out
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl Options {
    /// Parse `LEAKSCAN_OPTIONS` (text, or the raw bytes of the variable).
    /// Later items override earlier ones, so a wrapper may append its own
    /// settings. Bad items are returned, the rest applies: an unknown key,
    /// a bad value, an item without `=`, one that is not UTF-8, or one
    /// whose quote is never closed (it would swallow the items after it).
    pub fn parse(text: impl AsRef<[u8]>) -> (Options, Vec<OptionError>) {
        let mut opts = Options::default();
        let errors = opts.apply_all(text.as_ref(), |_| {});
        (opts, errors)
    }

    /// The good items of `text` only, written back as one
    /// `LEAKSCAN_OPTIONS` value (quoted where needed), and the bad ones:
    /// what `leakscan run` passes on after warning once, so that the
    /// program and each of its children do not warn again, and so that no
    /// bad item (an unclosed quote) can swallow the items `run` appends.
    pub fn sanitize(text: impl AsRef<[u8]>) -> (String, Vec<OptionError>) {
        let mut good: Vec<String> = Vec::new();
        let errors =
            Options::default().apply_all(text.as_ref(), |item| good.push(quote_item(item)));
        (good.join(":"), errors)
    }

    /// Apply every item of `text`; `good` sees each item that applied.
    fn apply_all(&mut self, text: &[u8], mut good: impl FnMut(&str)) -> Vec<OptionError> {
        let mut errors = Vec::new();
        for item in split_items(text) {
            let lossy = || String::from_utf8_lossy(&item.text).into_owned();
            let result = if item.unclosed {
                Err("its quote is never closed".to_string())
            } else {
                match std::str::from_utf8(&item.text) {
                    Ok(text) => self.apply(text).map(|()| good(text)),
                    Err(_) => Err("not UTF-8".to_string()),
                }
            };
            if let Err(reason) = result {
                errors.push(OptionError {
                    item: lossy(),
                    reason,
                });
            }
        }
        errors
    }

    fn apply(&mut self, item: &str) -> Result<(), String> {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| "expected key=value".to_string())?;
        let (key, value) = (key.trim(), value.trim());
        let int = |v: &str| -> Result<i64, String> {
            v.parse::<i64>()
                .map_err(|_| format!("`{}` is not an integer", excerpt(v)))
        };
        let boolean = |v: &str| {
            parse_bool(v).ok_or_else(|| format!("`{}` is not a boolean (0 or 1)", excerpt(v)))
        };
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
    use crate::test_rng::{fuzz_cases, seed_from_env, Rng};

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
    fn an_unclosed_quote_or_bytes_that_are_not_utf8_spoil_only_their_item() {
        // The unclosed quote would swallow every item after it: refused.
        let (o, e) = Options::parse("verbosity=0:exitcode='3:report_dir=/r");
        assert_eq!((o.verbosity, o.exitcode, o.report_dir), (0, 0, None));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].reason.contains("quote"), "{e:?}");
        let (o, e) = Options::parse(&b"report_dir=/r\xff:verbosity=2:\xfe=1"[..]);
        assert_eq!((o.verbosity, o.report_dir), (2, None));
        let reasons: Vec<_> = e.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["not UTF-8", "not UTF-8"]);
    }

    #[test]
    fn one_short_warning_line_whatever_the_garbage() {
        assert_eq!(warning(&[]), None);
        let (_, e) = Options::parse("exitcode=x");
        assert_eq!(
            warning(&e).unwrap(),
            "warning: LEAKSCAN_OPTIONS: `exitcode=x`: `x` is not an integer (ignored)"
        );
        let huge = format!(
            "bogus={}\n\x1b[31m:{}",
            "a".repeat(100_000),
            "x:".repeat(1000)
        );
        let (_, e) = Options::parse(&huge);
        assert_eq!(e.len(), 1001);
        let line = warning(&e).unwrap();
        assert!(line.len() < 600, "{line}");
        assert!(!line.contains(['\n', '\x1b']), "{line}");
        assert!(
            line.ends_with("; and 997 more bad items (all ignored)"),
            "{line}"
        );
    }

    #[test]
    fn sanitize_keeps_exactly_the_good_items_and_they_parse_back() {
        let (text, e) = Options::sanitize(
            &b"exitcode=3:bogus=1:report_dir='/a:b\"c':\xff=1:suppressions=/s's':verbosity='2"[..],
        );
        assert_eq!(e.len(), 3, "{e:?}");
        let (o, e) = Options::parse(&text);
        assert!(e.is_empty(), "{text}: {e:?}");
        assert_eq!(o.exitcode, 3);
        assert_eq!(o.report_dir.as_deref(), Some("/a:b\"c"));
        assert_eq!(o.suppressions.as_deref(), Some("/ss"));
        assert_eq!(o.verbosity, 1);
    }

    /// Text made of the pieces options are made of, and of garbage.
    fn hostile_options(rng: &mut Rng) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"report_dir",
            b"exitcode",
            b"stack_depth",
            b"depth",
            b"detect_leaks",
            b"max_objects",
            b"verbosity",
            b"enabled",
            b"symbolize",
            b"scan_interval",
            b"min_age",
            b"scan_threads",
            b"control_socket",
            b"suppressions",
            b"=",
            b"=",
            b":",
            b":",
            b"'",
            b"\"",
            b" ",
            b"\t",
            b"0",
            b"1",
            b"-1",
            b"255",
            b"256",
            b"99999999999999999999",
            b"-9223372036854775808",
            b"1e400",
            b"NaN",
            b"inf",
            b"-0",
            b"0.001",
            b"1e-9",
            b"0x10",
            b"yes",
            b"\xff",
            b"\xc3",
            b"\xe2\x82",
            b"\x00",
            b"\n",
            b"\x1b[2J",
            b"\xe2\x80\xa8",
            b"/tmp/x",
            b"",
        ];
        let mut out = Vec::new();
        for _ in 0..rng.below(24) {
            match rng.below(10) {
                0 => out.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                1 => out.extend(std::iter::repeat_n(b'9', rng.below(5000))),
                _ => out.extend_from_slice(PIECES[rng.below(PIECES.len())]),
            }
        }
        out
    }

    #[test]
    fn randomized_options_never_panic_and_always_agree() {
        let seed = seed_from_env(0x0b71_0115);
        for case in fuzz_cases(3000) {
            let mut rng = Rng::for_case(seed, case);
            let text = hostile_options(&mut rng);
            let context = || {
                format!(
                    "seed {seed:#x} case {case}: {:?}",
                    String::from_utf8_lossy(&text)
                )
            };
            let (o, errors) = Options::parse(&text);
            // The documented ranges hold whatever the input.
            assert!(
                (1..=MAX_STACK_DEPTH).contains(&o.stack_depth),
                "{}",
                context()
            );
            assert!(
                (0..=255).contains(&o.exitcode) && o.verbosity <= 2,
                "{}",
                context()
            );
            assert!(o
                .scan_threads
                .is_none_or(|n| (1..=MAX_SCAN_THREADS).contains(&n)));
            assert!(o.scan_interval_ms <= 31_536_000_000 && o.min_age_ms <= 31_536_000_000);
            assert!(
                o.report_dir.as_ref().is_none_or(|d| !d.is_empty()),
                "{}",
                context()
            );
            // One short line, however bad.
            match warning(&errors) {
                None => assert!(errors.is_empty()),
                Some(line) => {
                    assert!(!line.contains(['\n', '\r']), "{}: {line}", context());
                    assert!(line.chars().count() < 700, "{}: {line}", context());
                }
            }
            // What `leakscan run` passes on means the same and is clean.
            let (clean, bad) = Options::sanitize(&text);
            assert_eq!(bad, errors, "{}", context());
            let (again, e) = Options::parse(&clean);
            assert!(e.is_empty(), "{}: {clean:?} {e:?}", context());
            assert_eq!(again, o, "{}: {clean:?}", context());
            // Items appended after it are never swallowed.
            let (tail, e) = Options::parse(format!("{clean}:verbosity=2"));
            assert!(
                e.is_empty() && tail.verbosity == 2,
                "{}: {clean:?}",
                context()
            );
        }
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
