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
        self.groups += 1;
        self.blocks += group.count;
        self.bytes += group.bytes;
    }

    fn merge(&mut self, other: &GroupCounts) {
        self.groups += other.groups;
        self.blocks += other.blocks;
        self.bytes += other.bytes;
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

impl Summary {
    /// Count one leaked block of `kind`.
    pub fn add(&mut self, kind: LeakKind, blocks: u64, bytes: u64) {
        self.leaked_blocks += blocks;
        self.leaked_bytes += bytes;
        match kind {
            LeakKind::Direct => {
                self.direct_blocks += blocks;
                self.direct_bytes += bytes;
            }
            LeakKind::Indirect => {
                self.indirect_blocks += blocks;
                self.indirect_bytes += bytes;
            }
        }
    }

    /// Take one group of `kind` out of the leaked counts and count it as
    /// suppressed.
    pub fn suppress(&mut self, kind: LeakKind, blocks: u64, bytes: u64) {
        self.leaked_blocks -= blocks;
        self.leaked_bytes -= bytes;
        match kind {
            LeakKind::Direct => {
                self.direct_blocks -= blocks;
                self.direct_bytes -= bytes;
            }
            LeakKind::Indirect => {
                self.indirect_blocks -= blocks;
                self.indirect_bytes -= bytes;
            }
        }
        self.suppressed_blocks += blocks;
        self.suppressed_bytes += bytes;
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
        self.leaked_blocks += other.leaked_blocks;
        self.leaked_bytes += other.leaked_bytes;
        self.direct_blocks += other.direct_blocks;
        self.direct_bytes += other.direct_bytes;
        self.indirect_blocks += other.indirect_blocks;
        self.indirect_bytes += other.indirect_bytes;
        self.suppressed_blocks += other.suppressed_blocks;
        self.suppressed_bytes += other.suppressed_bytes;
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
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportError::Json(e) => write!(f, "not a leakscan report: {e}"),
            ReportError::Version(v) => write!(
                f,
                "report has schema_version {v}; this leakscan reads version {SCHEMA_VERSION}"
            ),
        }
    }
}

impl std::error::Error for ReportError {}

/// The JSON value of a document of this schema version.
fn versioned(text: &str) -> Result<serde_json::Value, ReportError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(ReportError::Json)?;
    match value.get("schema_version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(SCHEMA_VERSION) => Ok(value),
        Some(v) => Err(ReportError::Version(v)),
        None => Err(ReportError::Json(serde::de::Error::custom(
            "missing schema_version",
        ))),
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
        let value = versioned(text)?;
        serde_json::from_value(value).map_err(ReportError::Json)
    }

    /// Parse a document that is either one report or a [`ReportSet`], into
    /// its reports.
    pub fn many_from_json(text: &str) -> Result<Vec<Report>, ReportError> {
        let value = versioned(text)?;
        if value.get("reports").is_some() {
            let set: ReportSet = serde_json::from_value(value).map_err(ReportError::Json)?;
            Ok(set.reports)
        } else {
            serde_json::from_value(value)
                .map(|r| vec![r])
                .map_err(ReportError::Json)
        }
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
            u.blocks += used.blocks;
            u.bytes += used.bytes;
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
