//! The report: leakscan's wire format, schema_version 1.
//!
//! This module owns the schema (invariant I7); the CLI only renders it. The
//! types derive both `Serialize` (the agent writes reports) and `Deserialize`
//! (the CLI reads them back), and every optional field is skipped when absent
//! so the JSON stays exactly as documented in docs/report-format.md.
//!
//! Version policy: adding a field keeps `schema_version` 1; renaming,
//! removing or changing the meaning of one bumps it.

use serde::{Deserialize, Serialize};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// One process's leak report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: Tool,
    pub process: Process,
    pub scan: Scan,
    pub summary: Summary,
    /// Leak groups, sorted by `bytes`, largest first.
    pub leaks: Vec<LeakGroup>,
    /// Other processes whose reports were merged into this one (by
    /// `leakscan run`, which follows children). Absent for a single process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildProcess>,
    /// The suppression rules that matched, with what each hid
    /// (LeakSanitizer's "Suppressions used"). Absent when none matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressions: Vec<SuppressionUse>,
    /// What a view of the report (`--baseline`, `--kind`, `--min-bytes`,
    /// `--top`) left out of `leaks` and `summary`. Absent when nothing was.
    #[serde(default, skip_serializing_if = "Omitted::is_empty")]
    pub omitted: Omitted,
}

/// Several reports in one document: what `leakscan report` prints for a
/// report directory, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSet {
    pub schema_version: u32,
    pub tool: Tool,
    pub reports: Vec<Report>,
}

impl ReportSet {
    pub fn new(reports: Vec<Report>) -> ReportSet {
        ReportSet {
            schema_version: SCHEMA_VERSION,
            tool: Tool::current(),
            reports,
        }
    }

    /// Pretty JSON, as `leakscan report` prints it.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("report set serializes");
        s.push('\n');
        s
    }
}

/// One suppression rule and what it hid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionUse {
    /// The pattern after `leak:`, as written.
    pub pattern: String,
    /// The suppression file and the rule's line in it (1-based).
    pub file: String,
    pub line: u32,
    pub blocks: u64,
    pub bytes: u64,
}

/// Blocks in leak groups, counted together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts {
    pub groups: u64,
    pub blocks: u64,
    pub bytes: u64,
}

impl GroupCounts {
    pub fn is_zero(&self) -> bool {
        *self == GroupCounts::default()
    }

    pub fn add(&mut self, group: &LeakGroup) {
        self.groups = self.groups.saturating_add(1);
        self.blocks = self.blocks.saturating_add(group.count);
        self.bytes = self.bytes.saturating_add(group.bytes);
    }

    fn merge(&mut self, other: &GroupCounts) {
        self.groups = self.groups.saturating_add(other.groups);
        self.blocks = self.blocks.saturating_add(other.blocks);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// Leak groups a view of the report did not show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Omitted {
    /// Groups already in the `--baseline` report, no bigger than there.
    #[serde(default, skip_serializing_if = "GroupCounts::is_zero")]
    pub baseline: GroupCounts,
    /// Groups left out by `--kind`, `--min-bytes` or `--top`.
    #[serde(default, skip_serializing_if = "GroupCounts::is_zero")]
    pub filtered: GroupCounts,
}

impl Omitted {
    pub fn is_empty(&self) -> bool {
        self.baseline.is_zero() && self.filtered.is_zero()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl Tool {
    pub fn current() -> Tool {
        Tool {
            name: "leakscan".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub exe: String,
    pub argv: Vec<String>,
}

/// What started a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Exit,
    Periodic,
    Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    pub trigger: Trigger,
    pub number: u64,
    pub duration_ms: f64,
    pub scanned_bytes: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub leaked_blocks: u64,
    pub leaked_bytes: u64,
    pub direct_blocks: u64,
    pub direct_bytes: u64,
    pub indirect_blocks: u64,
    pub indirect_bytes: u64,
    pub suppressed_blocks: u64,
    pub suppressed_bytes: u64,
}

// The counts saturate: a report read back from a file (hand-edited, or
// from another tool) may hold any numbers, and adding them up must not
// wrap (or, in a debug build, panic).
impl Summary {
    /// Count one leaked block of `kind`.
    pub fn add(&mut self, kind: LeakKind, blocks: u64, bytes: u64) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.leaked_blocks, blocks);
        add(&mut self.leaked_bytes, bytes);
        match kind {
            LeakKind::Direct => {
                add(&mut self.direct_blocks, blocks);
                add(&mut self.direct_bytes, bytes);
            }
            LeakKind::Indirect => {
                add(&mut self.indirect_blocks, blocks);
                add(&mut self.indirect_bytes, bytes);
            }
        }
    }

    /// Take one group of `kind` out of the leaked counts and count it as
    /// suppressed.
    pub fn suppress(&mut self, kind: LeakKind, blocks: u64, bytes: u64) {
        let sub = |a: &mut u64, b: u64| *a = a.saturating_sub(b);
        sub(&mut self.leaked_blocks, blocks);
        sub(&mut self.leaked_bytes, bytes);
        match kind {
            LeakKind::Direct => {
                sub(&mut self.direct_blocks, blocks);
                sub(&mut self.direct_bytes, bytes);
            }
            LeakKind::Indirect => {
                sub(&mut self.indirect_blocks, blocks);
                sub(&mut self.indirect_bytes, bytes);
            }
        }
        self.suppressed_blocks = self.suppressed_blocks.saturating_add(blocks);
        self.suppressed_bytes = self.suppressed_bytes.saturating_add(bytes);
    }

    /// The leaked counts of exactly `groups`, keeping the suppressed ones.
    pub fn of_groups(groups: &[LeakGroup], suppressed: &Summary) -> Summary {
        let mut s = Summary {
            suppressed_blocks: suppressed.suppressed_blocks,
            suppressed_bytes: suppressed.suppressed_bytes,
            ..Summary::default()
        };
        for g in groups {
            s.add(g.kind, g.count, g.bytes);
        }
        s
    }

    /// Add another summary into this one (merging processes).
    pub fn merge(&mut self, other: &Summary) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.leaked_blocks, other.leaked_blocks);
        add(&mut self.leaked_bytes, other.leaked_bytes);
        add(&mut self.direct_blocks, other.direct_blocks);
        add(&mut self.direct_bytes, other.direct_bytes);
        add(&mut self.indirect_blocks, other.indirect_blocks);
        add(&mut self.indirect_bytes, other.indirect_bytes);
        add(&mut self.suppressed_blocks, other.suppressed_blocks);
        add(&mut self.suppressed_bytes, other.suppressed_bytes);
    }
}

/// LeakSanitizer's distinction: a *direct* leak is a block nothing points to;
/// an *indirect* one is reachable only through other leaked blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakKind {
    Direct,
    Indirect,
}

impl LeakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LeakKind::Direct => "direct",
            LeakKind::Indirect => "indirect",
        }
    }
}

/// Leaked blocks of one kind that share an allocation stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeakGroup {
    /// Stable identity of the group: a hash of its kind and symbolized
    /// stack, the same across runs, ASLR and machines (see
    /// [`crate::fingerprint`]). Reports that lack it get it when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub kind: LeakKind,
    /// Exact number of blocks in the group (`objects` may be capped).
    pub count: u64,
    /// Exact number of bytes in the group.
    pub bytes: u64,
    pub objects: Vec<LeakedObject>,
    pub stack: Vec<Frame>,
    /// The process that leaked, when reports of several processes were merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// With `--baseline`: the group's size in the baseline, when it was
    /// there and has grown since (a new group has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSize>,
}

/// How big a group was in the baseline report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineSize {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakedObject {
    /// `"0x…"`.
    pub address: String,
    pub size: u64,
    pub age_ms: u64,
}

/// One frame of an allocation stack, innermost first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Return address, `"0x…"`.
    pub ip: String,
    /// Path of the module containing `ip`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// `ip` relative to the module's load base, `"0x…"` (stable across ASLR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// GNU build-id of the module, hex, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// True when this frame was inlined into the next one (same `ip`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

/// A process merged into a parent's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildProcess {
    pub process: Process,
    pub summary: Summary,
}

/// Format an address the way the schema wants it.
pub fn hex(addr: u64) -> String {
    format!("{addr:#x}")
}

/// Why a report could not be read.
#[derive(Debug)]
pub enum ReportError {
    Json(serde_json::Error),
    Version(u64),
    /// Reading the document failed (a directory, an I/O error, or a reader
    /// that refused to give more: see the CLI's size limit).
    Io(std::io::Error),
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportError::Json(e) => write!(f, "not a leakscan report: {e}"),
            ReportError::Version(v) => write!(
                f,
                "report has schema_version {v}; this leakscan reads version {SCHEMA_VERSION}"
            ),
            ReportError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReportError {}

impl From<serde_json::Error> for ReportError {
    fn from(e: serde_json::Error) -> ReportError {
        if e.is_io() {
            ReportError::Io(e.into())
        } else {
            ReportError::Json(e)
        }
    }
}

/// The JSON value of a document, if it is of this schema version.
fn versioned(value: serde_json::Value) -> Result<serde_json::Value, ReportError> {
    match value.get("schema_version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(SCHEMA_VERSION) => Ok(value),
        Some(v) => Err(ReportError::Version(v)),
        None => Err(ReportError::Json(serde::de::Error::custom(
            "missing schema_version (or not a number)",
        ))),
    }
}

/// What a report file holds: one report, or a [`ReportSet`].
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    One(Box<Report>),
    Set(Vec<Report>),
}

impl Document {
    /// Parse a document, checking its schema version first so that a newer
    /// report gets a clear message instead of a field-level error.
    pub fn from_json(text: &str) -> Result<Document, ReportError> {
        Document::from_value(serde_json::from_str(text)?)
    }

    /// The same from a reader, parsing as it reads: garbage (a binary file,
    /// `/dev/urandom`) is refused at its first bytes, not after reading it
    /// all. serde_json's nesting limit (128) bounds the recursion.
    pub fn from_reader(reader: impl std::io::Read) -> Result<Document, ReportError> {
        Document::from_value(serde_json::from_reader(std::io::BufReader::new(reader))?)
    }

    fn from_value(value: serde_json::Value) -> Result<Document, ReportError> {
        let value = versioned(value)?;
        if value.get("reports").is_some() {
            let set: ReportSet = serde_json::from_value(value)?;
            Ok(Document::Set(set.reports))
        } else {
            Ok(Document::One(Box::new(serde_json::from_value(value)?)))
        }
    }

    pub fn into_reports(self) -> Vec<Report> {
        match self {
            Document::One(r) => vec![*r],
            Document::Set(reports) => reports,
        }
    }
}

impl Report {
    /// A report of `process` with nothing in it yet.
    pub fn blank(process: Process, trigger: Trigger) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            tool: Tool::current(),
            process,
            scan: Scan {
                trigger,
                number: 0,
                duration_ms: 0.0,
                scanned_bytes: 0,
                live_blocks: 0,
                live_bytes: 0,
            },
            summary: Summary::default(),
            leaks: Vec::new(),
            children: Vec::new(),
            suppressions: Vec::new(),
            omitted: Omitted::default(),
        }
    }

    /// Parse a report, checking its schema version first so that a newer
    /// report gets a clear message instead of a field-level error.
    pub fn from_json(text: &str) -> Result<Report, ReportError> {
        let value = versioned(serde_json::from_str(text)?)?;
        Ok(serde_json::from_value(value)?)
    }

    /// Parse a document that is either one report or a [`ReportSet`], into
    /// its reports.
    pub fn many_from_json(text: &str) -> Result<Vec<Report>, ReportError> {
        Document::from_json(text).map(Document::into_reports)
    }

    /// Pretty JSON, as written to disk and printed by the CLI.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("report serializes");
        s.push('\n');
        s
    }

    /// Merge `other` (a child process) into this report: its leaks are tagged
    /// with its pid, summaries add up, and it is listed in `children`.
    pub fn absorb_child(&mut self, other: Report) {
        self.summary.merge(&other.summary);
        for used in other.suppressions {
            add_suppression_use(&mut self.suppressions, used);
        }
        self.omitted.baseline.merge(&other.omitted.baseline);
        self.omitted.filtered.merge(&other.omitted.filtered);
        for mut group in other.leaks {
            group.pid.get_or_insert(other.process.pid);
            self.leaks.push(group);
        }
        self.children.push(ChildProcess {
            process: other.process,
            summary: other.summary,
        });
        self.children.extend(other.children);
        sort_groups(&mut self.leaks);
    }
}

/// Count `used` in `list`, adding to the entry of the same rule if any.
pub fn add_suppression_use(list: &mut Vec<SuppressionUse>, used: SuppressionUse) {
    match list
        .iter_mut()
        .find(|u| u.file == used.file && u.line == used.line)
    {
        Some(u) => {
            u.blocks = u.blocks.saturating_add(used.blocks);
            u.bytes = u.bytes.saturating_add(used.bytes);
        }
        None => {
            list.push(used);
            // In rule order, as LeakSanitizer lists them.
            list.sort_by(|a, b| a.file.cmp(&b.file).then(a.line.cmp(&b.line)));
        }
    }
}

/// The schema's order: bytes descending, then direct before indirect, then
/// count, then id and pid, so that output is deterministic.
pub fn sort_groups(groups: &mut [LeakGroup]) {
    groups.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(a.kind.cmp(&b.kind))
            .then(b.count.cmp(&a.count))
            .then_with(|| a.id.cmp(&b.id))
            .then(a.pid.cmp(&b.pid))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::{fuzz_cases, seed_from_env, Rng};

    /// A report with every optional part present.
    fn full_report() -> Report {
        let frame = |i: u64, function: Option<&str>| Frame {
            ip: hex(0x5581a0 + i),
            module: Some("/usr/bin/prog".into()),
            offset: Some(hex(0x1a0 + i)),
            build_id: Some("0123456789abcdef".into()),
            function: function.map(Into::into),
            file: function.map(|_| "/src/prog.c".into()),
            line: function.map(|_| 40 + i as u32),
            inlined: i == 0,
        };
        let process = Process {
            pid: 4242,
            exe: "/usr/bin/prog".into(),
            argv: vec!["prog".into(), "--flag".into(), "é€𝄞".into()],
        };
        let mut r = Report::blank(process.clone(), Trigger::Periodic);
        for (i, kind) in [LeakKind::Direct, LeakKind::Indirect]
            .into_iter()
            .enumerate()
        {
            r.summary.add(kind, 3, 96);
            r.leaks.push(LeakGroup {
                id: Some(format!("{i:016x}")),
                kind,
                count: 3,
                bytes: 96,
                objects: (0..3)
                    .map(|j| LeakedObject {
                        address: hex(0x7000 + j * 32),
                        size: 32,
                        age_ms: 1500,
                    })
                    .collect(),
                stack: vec![
                    frame(0, Some("inlined_fn")),
                    frame(1, Some("main")),
                    frame(2, None),
                ],
                pid: Some(4243),
                baseline: Some(BaselineSize {
                    count: 1,
                    bytes: 32,
                }),
            });
        }
        r.scan.duration_ms = 1.25;
        r.suppressions.push(SuppressionUse {
            pattern: "libfoo*".into(),
            file: "lsan.supp".into(),
            line: 3,
            blocks: 1,
            bytes: 16,
        });
        r.omitted.filtered.add(&r.leaks[0].clone());
        r.children.push(ChildProcess {
            process,
            summary: r.summary.clone(),
        });
        r
    }

    /// Both parsers agree, and a failure is one line.
    fn parse_both(text: &[u8]) -> Result<Vec<Report>, String> {
        let streamed = Document::from_reader(text).map(Document::into_reports);
        let whole = std::str::from_utf8(text)
            .map_err(|e| e.to_string())
            .and_then(|t| Report::many_from_json(t).map_err(|e| e.to_string()));
        match (streamed, whole) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                Ok(a)
            }
            (Err(e), Err(_)) => {
                let line = e.to_string();
                assert!(!line.contains('\n') && !line.is_empty(), "{line}");
                Err(line)
            }
            (a, b) => panic!("the parsers disagree: {a:?} vs {b:?}"),
        }
    }

    #[test]
    fn a_report_cut_anywhere_is_refused() {
        let r = full_report();
        for text in [r.to_json(), serde_json::to_string(&r).unwrap()] {
            assert_eq!(parse_both(text.as_bytes()), Ok(vec![r.clone()]));
            let end = text.trim_end().len();
            for cut in 0..end {
                // A cut inside a multi-byte character is not UTF-8 at all.
                let got = parse_both(&text.as_bytes()[..cut]);
                assert!(got.is_err(), "cut at {cut} of {end} parsed");
            }
        }
    }

    #[test]
    fn wrong_shapes_versions_nesting_and_numbers_are_errors() {
        let deep_array = "[".repeat(100_000);
        let deep_object = format!(
            "{{\"schema_version\":1,\"tool\":{}",
            "{\"a\":".repeat(100_000)
        );
        let mut wrong_types = serde_json::to_value(full_report()).unwrap();
        wrong_types["leaks"][0]["count"] = serde_json::json!(-1);
        let wrong_types = wrong_types.to_string();
        for (text, says) in [
            ("", "EOF"),
            ("null", "schema_version"),
            ("[]", "schema_version"),
            ("\"report\"", "schema_version"),
            ("{\"schema_version\":\"1\"}", "schema_version"),
            ("{\"schema_version\":2}", "schema_version 2"),
            ("{\"schema_version\":1e400}", "number out of range"),
            (
                "{\"schema_version\":18446744073709551616}",
                "schema_version",
            ),
            ("{\"schema_version\":1}", "missing field"),
            ("{\"schema_version\":1,\"reports\":{}}", "invalid type"),
            (deep_array.as_str(), "recursion limit"),
            (deep_object.as_str(), "recursion limit"),
            (wrong_types.as_str(), "invalid value"),
        ] {
            let e = parse_both(text.as_bytes()).unwrap_err();
            assert!(e.contains(says), "{text:.60}: {e}");
        }
    }

    #[test]
    fn randomized_report_mutations_never_panic() {
        let seed = seed_from_env(0x2e_9027);
        let good = full_report().to_json().into_bytes();
        const SPLICES: &[&[u8]] = &[
            b"-1",
            b"1e400",
            b"18446744073709551616",
            b"NaN",
            b"null",
            b"[]",
            b"{}",
            b"\"\"",
            b"\"\\ud800\"",
            b"\xff",
            b"\x00",
            b"[[[[[[[[",
            b"}}}}",
            b",",
            b":",
            b"\"x\":",
            b"\"schema_version\":2",
            b"4294967296",
            b"0.5",
            b"true",
        ];
        for case in fuzz_cases(2000) {
            let mut rng = Rng::for_case(seed, case);
            let mut text = good.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(text.len() + 1);
                match rng.below(4) {
                    0 => text.truncate(at),
                    1 => {
                        if at < text.len() {
                            text[at] = rng.next() as u8;
                        }
                    }
                    2 => {
                        let end = (at + rng.below(16)).min(text.len());
                        text.drain(at..end);
                    }
                    _ => {
                        let piece = SPLICES[rng.below(SPLICES.len())];
                        text.splice(at..at, piece.iter().copied());
                    }
                }
            }
            // A mutation may still be a valid report (a digit changed): any
            // report that parses must render back to JSON.
            if let Ok(reports) = std::panic::catch_unwind(|| parse_both(&text))
                .unwrap_or_else(|_| panic!("seed {seed:#x} case {case}: panicked"))
            {
                for r in reports {
                    let _ = r.to_json();
                }
            }
        }
    }
}
