//! The text report, for people: LeakSanitizer's layout with kmemleak's
//! "unreferenced object" lines.
//!
//! ```text
//! leakscan: 3 leaked blocks (96 bytes) in process 1234: ./prog arg
//!
//! Direct leak of 32 bytes in 1 object allocated from:
//!     #0 0x401136 in make_node prog.c:12 (/path/prog+0x1136)
//!     #1 0x401180 in main prog.c:30 (/path/prog+0x1180)
//!   unreferenced object 0x5581a0 (size 32, age 1500 ms)
//!
//! SUMMARY: leakscan: 96 bytes leaked in 3 allocations (direct 32 bytes in 1, indirect 64 bytes in 2).
//! ```
//!
//! Direct groups come first (they are the ones to fix; indirect leaks go
//! away with them), each kind biggest first. Each group ends its header with
//! its stable id, the name to give it in a baseline or a bug report.

use std::fmt::Write;

use leakscan_core::report::{Frame, GroupCounts, LeakGroup, LeakKind, Report, Summary};

/// Object lines shown per group; the rest are counted.
pub const MAX_OBJECT_LINES: usize = 4;

/// Several reports, one after the other.
pub fn render_all(reports: &[Report], color: bool, print_suppressions: bool) -> String {
    reports
        .iter()
        .map(|r| render(r, color, print_suppressions))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn render(report: &Report, color: bool, print_suppressions: bool) -> String {
    let paint = Paint(color);
    let mut out = String::new();
    let s = &report.summary;
    let who = process_line(report);
    if s.leaked_blocks == 0 && report.leaks.is_empty() {
        let line = format!(
            "leakscan: no leaks found in process {who} ({} checked)",
            count(report.scan.live_blocks, "live block", "live blocks")
        );
        let _ = writeln!(out, "{}", paint.green(&line));
        if print_suppressions {
            out.push_str(&suppressions_table(report));
        }
        for line in [suppressed_line(s), omitted_line(report)]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(out, "{line}");
        }
        return out;
    }
    let line = format!(
        "leakscan: {} ({}) in process {who}",
        count(s.leaked_blocks, "leaked block", "leaked blocks"),
        bytes(s.leaked_bytes)
    );
    let _ = writeln!(out, "{}", paint.bold_red(&line));

    let mut groups: Vec<&LeakGroup> = report.leaks.iter().collect();
    groups.sort_by(|a, b| {
        a.kind
            .cmp(&b.kind)
            .then(b.bytes.cmp(&a.bytes))
            .then(b.count.cmp(&a.count))
    });
    for group in groups {
        out.push('\n');
        group_lines(&mut out, group, report.process.pid, paint);
    }
    out.push('\n');
    if print_suppressions {
        out.push_str(&suppressions_table(report));
        out.push('\n');
    }
    let _ = writeln!(out, "{}", paint.bold(&summary_line(s)));
    if let Some(line) = omitted_line(report) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// LeakSanitizer's "Suppressions used" table, or a line saying none matched.
pub fn suppressions_table(report: &Report) -> String {
    let rule = "-----------------------------------------------------\n";
    if report.suppressions.is_empty() {
        return "leakscan: no suppression rule matched\n".to_string();
    }
    let mut out = String::from(rule);
    out.push_str("Suppressions used:\n");
    out.push_str("  count      bytes template\n");
    for used in &report.suppressions {
        let _ = writeln!(
            out,
            "{:>7} {:>10} {}  ({}:{})",
            used.blocks, used.bytes, used.pattern, used.file, used.line
        );
    }
    out.push_str(rule);
    out
}
/// `1234: ./prog arg`, plus the number of merged child processes.
fn process_line(report: &Report) -> String {
    let p = &report.process;
    let cmd = if p.argv.is_empty() {
        quote(&p.exe)
    } else {
        p.argv
            .iter()
            .map(|a| quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut line = format!("{}: {cmd}", p.pid);
    if !report.children.is_empty() {
        let n = report.children.len() as u64;
        let _ = write!(
            line,
            " (and {})",
            count(n, "child process", "child processes")
        );
    }
    line
}

fn group_lines(out: &mut String, group: &LeakGroup, root_pid: u32, paint: Paint) {
    let title = match group.kind {
        LeakKind::Direct => paint.bold_red("Direct leak"),
        LeakKind::Indirect => paint.bold_magenta("Indirect leak"),
    };
    let pid = match group.pid {
        Some(pid) if pid != root_pid => format!(" (pid {pid})"),
        _ => String::new(),
    };
    let grew = group
        .baseline
        .map(|b| {
            format!(
                " (grew from {} in {})",
                bytes(b.bytes),
                count(b.count, "object", "objects")
            )
        })
        .unwrap_or_default();
    let id = group
        .id
        .as_deref()
        .map(|id| format!(" [id {id}]"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{title} of {} in {}{pid}{grew} allocated from:{id}",
        bytes(group.bytes),
        count(group.count, "object", "objects")
    );
    if group.stack.is_empty() {
        let _ = writeln!(out, "    (no stack recorded)");
    }
    for (i, frame) in group.stack.iter().enumerate() {
        let _ = writeln!(out, "    {}", frame_line(i, frame, paint));
    }
    let shown = group.objects.len().min(MAX_OBJECT_LINES);
    for obj in &group.objects[..shown] {
        let _ = writeln!(
            out,
            "  unreferenced object {} (size {}, age {} ms)",
            obj.address, obj.size, obj.age_ms
        );
    }
    let more = group.count.saturating_sub(shown as u64);
    if more > 0 {
        let _ = writeln!(out, "  … and {more} more");
    }
}

/// `#i <ip> in <function> <file>:<line> (<module>+<offset>)`, leaving out
/// what the report does not have.
pub fn frame_line(i: usize, frame: &Frame, paint: Paint) -> String {
    let function = frame.function.as_deref().unwrap_or("??");
    let mut line = format!("#{i} {} in {}", frame.ip, paint.bold(function));
    if let Some(file) = &frame.file {
        let _ = write!(line, " {file}");
        if let Some(n) = frame.line {
            let _ = write!(line, ":{n}");
        }
    }
    if let Some(module) = &frame.module {
        let offset = frame
            .offset
            .as_deref()
            .map(|o| format!("+{o}"))
            .unwrap_or_default();
        // An unresolved frame names its build-id: what `leakscan report
        // --symbolize` (or a person with the debug files) needs.
        let build_id = match (&frame.build_id, &frame.function, &frame.file) {
            (Some(id), None, None) => format!(", build-id {id}"),
            _ => String::new(),
        };
        let _ = write!(line, " ({module}{offset}{build_id})");
    }
    line
}

fn summary_line(s: &Summary) -> String {
    let mut line = format!(
        "SUMMARY: leakscan: {} leaked in {} (direct {} in {}, indirect {} in {}).",
        bytes(s.leaked_bytes),
        count(s.leaked_blocks, "allocation", "allocations"),
        bytes(s.direct_bytes),
        s.direct_blocks,
        bytes(s.indirect_bytes),
        s.indirect_blocks,
    );
    if let Some(suppressed) = suppressed_line(s) {
        line.push(' ');
        line.push_str(&suppressed);
    }
    line
}

fn suppressed_line(s: &Summary) -> Option<String> {
    (s.suppressed_blocks > 0).then(|| {
        format!(
            "Suppressed: {} in {}.",
            bytes(s.suppressed_bytes),
            count(s.suppressed_blocks, "allocation", "allocations")
        )
    })
}

/// What a view left out, in one line.
fn omitted_line(report: &Report) -> Option<String> {
    let part = |c: &GroupCounts, why: &str| {
        (!c.is_zero()).then(|| {
            format!(
                "{} ({} in {}) {why}",
                count(c.groups, "leak group", "leak groups"),
                bytes(c.bytes),
                count(c.blocks, "object", "objects")
            )
        })
    };
    let parts: Vec<String> = [
        part(&report.omitted.baseline, "already in the baseline"),
        part(
            &report.omitted.filtered,
            "left out by --kind/--min-bytes/--top",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| format!("Not shown: {}.", parts.join("; ")))
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn bytes(n: u64) -> String {
    count(n, "byte", "bytes")
}

/// An argument as a shell would need it, so the command line can be pasted.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+,:@%^".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// ANSI colour, or nothing.
#[derive(Debug, Clone, Copy)]
pub struct Paint(pub bool);

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }
    fn bold_red(self, text: &str) -> String {
        self.wrap("1;31", text)
    }
    fn bold_magenta(self, text: &str) -> String {
        self.wrap("1;35", text)
    }
    fn green(self, text: &str) -> String {
        self.wrap("32", text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakscan_core::report::{
        BaselineSize, ChildProcess, LeakedObject, Process, Scan, SuppressionUse, Tool, Trigger,
        SCHEMA_VERSION,
    };

    fn frame(ip: &str, function: Option<&str>, file: Option<(&str, u32)>) -> Frame {
        Frame {
            ip: ip.into(),
            module: Some("/path/prog".into()),
            offset: Some(format!("0x{}", &ip[4..])),
            build_id: None,
            function: function.map(Into::into),
            file: file.map(|f| f.0.into()),
            line: file.map(|f| f.1),
            inlined: false,
        }
    }

    fn objects(n: u64, size: u64) -> Vec<LeakedObject> {
        (0..n)
            .map(|i| LeakedObject {
                address: format!("{:#x}", 0x5581a0 + i * 0x40),
                size,
                age_ms: 1500,
            })
            .collect()
    }

    fn sample() -> Report {
        let mut summary = Summary::default();
        summary.add(LeakKind::Direct, 1, 32);
        summary.add(LeakKind::Indirect, 6, 192);
        Report {
            schema_version: SCHEMA_VERSION,
            tool: Tool::current(),
            process: Process {
                pid: 1234,
                exe: "/path/prog".into(),
                argv: vec!["./prog".into(), "arg".into(), "two words".into()],
            },
            scan: Scan {
                trigger: Trigger::Exit,
                number: 1,
                duration_ms: 1.0,
                scanned_bytes: 4096,
                live_blocks: 10,
                live_bytes: 640,
            },
            summary,
            // Schema order (bytes first): the indirect group is bigger.
            leaks: vec![
                LeakGroup {
                    id: None,
                    kind: LeakKind::Indirect,
                    count: 6,
                    bytes: 192,
                    objects: objects(5, 32),
                    stack: vec![frame("0x401150", None, None)],
                    pid: Some(1240),
                    baseline: None,
                },
                LeakGroup {
                    id: Some("00112233aabbccdd".into()),
                    kind: LeakKind::Direct,
                    count: 1,
                    bytes: 32,
                    objects: objects(1, 32),
                    stack: vec![
                        frame("0x401136", Some("make_node"), Some(("prog.c", 12))),
                        frame("0x401180", Some("main"), Some(("prog.c", 30))),
                    ],
                    pid: None,
                    baseline: Some(BaselineSize {
                        count: 1,
                        bytes: 16,
                    }),
                },
            ],
            children: vec![ChildProcess {
                process: Process {
                    pid: 1240,
                    exe: "/path/prog".into(),
                    argv: vec!["./prog".into()],
                },
                summary: Summary::default(),
            }],
            suppressions: vec![],
            omitted: Default::default(),
        }
    }

    #[test]
    fn leaks_in_text() {
        let text = render(&sample(), false, false);
        let lines: Vec<&str> = text.lines().collect();
        let expected = [
            "leakscan: 7 leaked blocks (224 bytes) in process 1234: ./prog arg 'two words' (and 1 child process)",
            "",
            "Direct leak of 32 bytes in 1 object (grew from 16 bytes in 1 object) allocated from: [id 00112233aabbccdd]",
            "    #0 0x401136 in make_node prog.c:12 (/path/prog+0x1136)",
            "    #1 0x401180 in main prog.c:30 (/path/prog+0x1180)",
            "  unreferenced object 0x5581a0 (size 32, age 1500 ms)",
            "",
            "Indirect leak of 192 bytes in 6 objects (pid 1240) allocated from:",
            "    #0 0x401150 in ?? (/path/prog+0x1150)",
            "  unreferenced object 0x5581a0 (size 32, age 1500 ms)",
            "  unreferenced object 0x5581e0 (size 32, age 1500 ms)",
            "  unreferenced object 0x558220 (size 32, age 1500 ms)",
            "  unreferenced object 0x558260 (size 32, age 1500 ms)",
            "  … and 2 more",
            "",
            "SUMMARY: leakscan: 224 bytes leaked in 7 allocations (direct 32 bytes in 1, indirect 192 bytes in 6).",
        ];
        assert_eq!(lines, expected);
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn no_leaks_is_one_line() {
        let mut report = sample();
        report.leaks.clear();
        report.children.clear();
        report.summary = Summary::default();
        report.process.argv.truncate(1);
        assert_eq!(
            render(&report, false, false),
            "leakscan: no leaks found in process 1234: ./prog (10 live blocks checked)\n"
        );
    }

    #[test]
    fn frames_leave_out_what_is_missing() {
        let bare = Frame {
            ip: "0x10".into(),
            module: None,
            offset: None,
            build_id: None,
            function: None,
            file: None,
            line: None,
            inlined: false,
        };
        assert_eq!(frame_line(3, &bare, Paint(false)), "#3 0x10 in ??");
        let with_file = Frame {
            file: Some("a.c".into()),
            module: Some("/lib/x.so".into()),
            ..bare.clone()
        };
        assert_eq!(
            frame_line(0, &with_file, Paint(false)),
            "#0 0x10 in ?? a.c (/lib/x.so)"
        );
        let stripped = Frame {
            module: Some("/bin/p".into()),
            offset: Some("0x1136".into()),
            build_id: Some("ab12".into()),
            ..bare
        };
        assert_eq!(
            frame_line(1, &stripped, Paint(false)),
            "#1 0x10 in ?? (/bin/p+0x1136, build-id ab12)"
        );
    }

    #[test]
    fn suppressions_table_and_what_was_not_shown() {
        let mut report = sample();
        report.suppressions.push(SuppressionUse {
            pattern: "make_*".into(),
            file: "lsan.supp".into(),
            line: 3,
            blocks: 2,
            bytes: 96,
        });
        report.omitted.baseline = GroupCounts {
            groups: 1,
            blocks: 2,
            bytes: 64,
        };
        let text = render(&report, false, true);
        assert!(
            text.contains(
                "Suppressions used:\n  count      bytes template\n      2         96 make_*  (lsan.supp:3)\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "Not shown: 1 leak group (64 bytes in 2 objects) already in the baseline.\n"
            ),
            "{text}"
        );
        report.leaks.clear();
        report.summary = Summary::default();
        let text = render(&report, false, false);
        assert!(text.starts_with("leakscan: no leaks found"), "{text}");
        assert!(text.contains("already in the baseline"), "{text}");
    }

    #[test]
    fn suppressed_and_colour() {
        let mut report = sample();
        report.summary.suppressed_blocks = 1;
        report.summary.suppressed_bytes = 8;
        let text = render(&report, true, false);
        assert!(text.contains("\x1b[1;31mDirect leak\x1b[0m of 32 bytes"));
        assert!(text.contains("Suppressed: 8 bytes in 1 allocation."));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(quote("a-b/c.d=1"), "a-b/c.d=1");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
