//! LeakSanitizer suppression files, read and matched as LSan does, so that
//! a file written for LSan hides the same leaks under leakscan.
//!
//! The format: one rule a line, `leak:PATTERN`; `#` starts a comment line;
//! blank lines and surrounding white space are ignored. A pattern matches a
//! string when it occurs anywhere in it; `*` matches any run of characters,
//! a leading `^` anchors at the start and a trailing `$` at the end. The
//! matcher is a port of sanitizer_common's `TemplateMatch`, including its
//! greedy, non-backtracking search (`a*b$` does not match `abxb`).
//!
//! A leak group is suppressed when, for some frame of its stack (innermost
//! first), a rule matches the frame's module path, or its function name, or
//! its source file; the first such rule in file order gets the credit, as in
//! LSan's `GetSuppressionForAddr`. One difference stays: LSan's stacks start
//! with its own `malloc` interceptor, leakscan's with the caller, so a rule
//! that only matches the interceptor suppresses nothing here.
//!
//! Parsing is strict where LSan is strict (a line without `leak:` is an
//! error, with its number) and stricter where LSan is dangerous: an empty
//! pattern, which LSan takes as "suppress everything", is an error.

use crate::options::excerpt;
use crate::report::{add_suppression_use, Frame, LeakGroup, Report, SuppressionUse};

/// One `leak:` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    /// 1-based line in the file.
    pub line: u32,
}

/// The rules of one suppression file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressions {
    /// The file's name, as given (for messages and the report).
    pub file: String,
    pub rules: Vec<Rule>,
}

/// A line that is not a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: u32,
    pub reason: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl Suppressions {
    /// Parse the text of suppression file `file`.
    pub fn parse(file: &str, text: &str) -> Result<Suppressions, ParseError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let item = raw.trim();
            if item.is_empty() || item.starts_with('#') {
                continue;
            }
            let error = |reason: String| ParseError { line, reason };
            let Some((kind, pattern)) = item.split_once(':') else {
                return Err(error(format!(
                    "`{}` is not a rule; expected leak:PATTERN",
                    excerpt(item)
                )));
            };
            if kind.trim() != "leak" {
                return Err(error(format!(
                    "unknown suppression type `{}`; leakscan (as LeakSanitizer) knows only `leak:`",
                    excerpt(kind.trim())
                )));
            }
            let pattern = pattern.trim();
            if pattern.is_empty() {
                return Err(error(
                    "empty pattern (it would suppress every leak)".to_string(),
                ));
            }
            rules.push(Rule {
                pattern: pattern.to_string(),
                line,
            });
        }
        Ok(Suppressions {
            file: file.to_string(),
            rules,
        })
    }
}

/// The first rule (as `(set, rule)` indices) that suppresses `stack`.
pub fn find_rule(sets: &[Suppressions], stack: &[Frame]) -> Option<(usize, usize)> {
    let first_match = |text: Option<&str>| {
        let text = text.filter(|t| !t.is_empty())?;
        sets.iter().enumerate().find_map(|(s, set)| {
            set.rules
                .iter()
                .position(|r| template_match(&r.pattern, text))
                .map(|r| (s, r))
        })
    };
    stack.iter().find_map(|frame| {
        first_match(frame.module.as_deref())
            .or_else(|| first_match(frame.function.as_deref()))
            .or_else(|| first_match(frame.file.as_deref()))
    })
}

/// Move every group of `report` that a rule matches out of `leaks`: the
/// summary counts it as suppressed, and `report.suppressions` what each
/// rule hid.
pub fn apply(report: &mut Report, sets: &[Suppressions]) {
    if sets.iter().all(|s| s.rules.is_empty()) {
        return;
    }
    let groups = std::mem::take(&mut report.leaks);
    for group in groups {
        match find_rule(sets, &group.stack) {
            Some((s, r)) => suppress(report, &sets[s], &sets[s].rules[r], &group),
            None => report.leaks.push(group),
        }
    }
}

fn suppress(report: &mut Report, set: &Suppressions, rule: &Rule, group: &LeakGroup) {
    report
        .summary
        .suppress(group.kind, group.count, group.bytes);
    add_suppression_use(
        &mut report.suppressions,
        SuppressionUse {
            pattern: rule.pattern.clone(),
            file: set.file.clone(),
            line: rule.line,
            blocks: group.count,
            bytes: group.bytes,
        },
    );
}

/// sanitizer_common's `TemplateMatch`: does `templ` match `s`?
pub fn template_match(templ: &str, s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let (mut templ, mut start) = match templ.strip_prefix('^') {
        Some(rest) => (rest, true),
        None => (templ, false),
    };
    let mut s = s;
    let mut asterisk = false;
    while !templ.is_empty() {
        if let Some(rest) = templ.strip_prefix('*') {
            templ = rest;
            start = false;
            asterisk = true;
            continue;
        }
        if templ.starts_with('$') {
            return s.is_empty() || asterisk;
        }
        if s.is_empty() {
            return false;
        }
        // The literal chunk runs to the next `*` or `$`.
        let end = templ.find(['*', '$']).unwrap_or(templ.len());
        let chunk = &templ[..end];
        let Some(at) = s.find(chunk) else {
            return false;
        };
        if start && at != 0 {
            return false;
        }
        s = &s[at + chunk.len()..];
        templ = &templ[end..];
        start = false;
        asterisk = false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{LeakKind, Summary};
    use crate::test_rng::{fuzz_cases, seed_from_env, Rng};

    #[test]
    fn template_match_as_lsan() {
        assert!(template_match("foo", "xfooy"));
        assert!(template_match("^foo", "foobar"));
        assert!(!template_match("^foo", "xfoo"));
        assert!(template_match("foo$", "xfoo"));
        assert!(!template_match("foo$", "foox"));
        assert!(template_match("^foo$", "foo"));
        assert!(template_match("a*c", "abbbc"));
        assert!(!template_match("a*c", "cba"));
        assert!(template_match("*", "x"));
        assert!(template_match("a*$", "abc"));
        assert!(template_match("^*bar", "foobar"));
        assert!(!template_match("foo", ""));
        // Greedy, no backtracking: the first `b` is taken.
        assert!(!template_match("a*b$", "abxb"));
        assert!(template_match("libfoo.so", "/usr/lib/libfoo.so.1"));
    }

    #[test]
    fn parse_rules_comments_and_errors() {
        let text = "# LSan file\n\n  leak:foo  \nleak:^bar$\n\t# indented comment\nleak:lib*.so\n";
        let s = Suppressions::parse("s.supp", text).unwrap();
        let rules: Vec<(&str, u32)> = s
            .rules
            .iter()
            .map(|r| (r.pattern.as_str(), r.line))
            .collect();
        assert_eq!(rules, [("foo", 3), ("^bar$", 4), ("lib*.so", 6)]);

        let e = Suppressions::parse("s", "leak:a\nfoo\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("line 2: "), "{e}");
        let e = Suppressions::parse("s", "race:a\n").unwrap_err();
        assert!(e.reason.contains("race"), "{e}");
        let e = Suppressions::parse("s", "leak:\n").unwrap_err();
        assert!(e.reason.contains("empty"), "{e}");
    }

    fn frame(module: &str, function: Option<&str>, file: Option<&str>) -> Frame {
        Frame {
            ip: "0x1".into(),
            module: Some(module.into()),
            offset: Some("0x1".into()),
            build_id: None,
            function: function.map(Into::into),
            file: file.map(Into::into),
            line: None,
            inlined: false,
        }
    }

    fn group(kind: LeakKind, count: u64, bytes: u64, stack: Vec<Frame>) -> LeakGroup {
        LeakGroup {
            id: None,
            kind,
            count,
            bytes,
            objects: vec![],
            stack,
            pid: None,
            baseline: None,
        }
    }

    /// Suppression-file text as a broken editor, a wrong file or an
    /// attacker might give it.
    fn hostile_text(rng: &mut Rng) -> String {
        const PIECES: &[&str] = &[
            "leak:",
            "leak:",
            "leak",
            ":",
            "#",
            "\n",
            "\r\n",
            "\r",
            " ",
            "\t",
            "^",
            "$",
            "*",
            "**",
            "foo",
            "main",
            "lib*.so",
            "\u{0}",
            "\u{feff}",
            "é",
            "€",
            "𝄞",
            "\u{2028}",
            "\u{1b}[2J",
            "race:",
            "LEAK:",
            "leak :",
            "interceptor_via_fun:",
        ];
        let mut out = String::new();
        for _ in 0..rng.below(20) {
            match rng.below(10) {
                0 => out.extend(
                    (0..rng.below(16)).filter_map(|_| char::from_u32(rng.below(0x11_0000) as u32)),
                ),
                1 => out.push_str(&"x".repeat(rng.below(3000))),
                _ => out.push_str(PIECES[rng.below(PIECES.len())]),
            }
        }
        out
    }

    #[test]
    fn randomized_suppression_files_parse_or_fail_in_one_short_line() {
        let seed = seed_from_env(0x5a9_9e55);
        for case in fuzz_cases(3000) {
            let mut rng = Rng::for_case(seed, case);
            let text = hostile_text(&mut rng);
            let context = || format!("seed {seed:#x} case {case}: {text:?}");
            match Suppressions::parse("f.supp", &text) {
                Ok(set) => {
                    // Every rule is a non-empty pattern from a numbered line;
                    // matching it against anything terminates without a panic.
                    let subject = hostile_text(&mut rng);
                    for rule in &set.rules {
                        assert!(!rule.pattern.is_empty() && rule.line >= 1, "{}", context());
                        let _ = template_match(&rule.pattern, &subject);
                        let _ = template_match(&subject, &rule.pattern);
                    }
                }
                Err(e) => {
                    let line = e.to_string();
                    assert!(!line.contains(['\n', '\r']), "{}: {line}", context());
                    assert!(line.chars().count() < 200, "{}: {line}", context());
                    assert!(e.line >= 1, "{}", context());
                }
            }
        }
    }

    #[test]
    fn a_summary_that_does_not_match_its_groups_is_no_panic() {
        // A hand-edited report: the summary says less than the groups hold.
        let mut report = Report {
            leaks: vec![group(
                LeakKind::Direct,
                u64::MAX,
                u64::MAX,
                vec![frame("/bin/p", Some("drop_me"), None)],
            )],
            ..Report::blank(
                crate::report::Process {
                    pid: 1,
                    exe: "/bin/p".into(),
                    argv: vec![],
                },
                crate::report::Trigger::Exit,
            )
        };
        report.summary.suppressed_blocks = 5;
        let sets = [Suppressions::parse("s", "leak:drop").unwrap()];
        apply(&mut report, &sets);
        apply(&mut report, &sets);
        assert_eq!(report.summary.leaked_blocks, 0);
        assert_eq!(report.summary.suppressed_blocks, u64::MAX);
    }

    #[test]
    fn module_function_or_file_and_first_rule_wins() {
        let sets = [Suppressions::parse(
            "s",
            "leak:by_function\nleak:libhelper.so\nleak:helper.c\nleak:by_*",
        )
        .unwrap()];
        let stack = |f: Frame| vec![f, frame("/bin/p", Some("main"), Some("/src/p.c"))];
        let by_function = stack(frame("/bin/p", Some("by_function"), None));
        assert_eq!(find_rule(&sets, &by_function), Some((0, 0)));
        let by_module = stack(frame("/lib/libhelper.so", Some("by_x"), None));
        assert_eq!(find_rule(&sets, &by_module), Some((0, 1)));
        let by_file = stack(frame("/bin/p", None, Some("/src/helper.c")));
        assert_eq!(find_rule(&sets, &by_file), Some((0, 2)));
        let none = stack(frame("/bin/p", Some("other"), Some("/src/o.c")));
        assert_eq!(find_rule(&sets, &none), None);
    }

    #[test]
    fn apply_moves_groups_to_suppressed() {
        let mut summary = Summary::default();
        summary.add(LeakKind::Direct, 3, 96);
        summary.add(LeakKind::Indirect, 1, 16);
        let process = crate::report::Process {
            pid: 1,
            exe: "/bin/p".into(),
            argv: vec![],
        };
        let mut report = Report {
            summary,
            leaks: vec![
                group(
                    LeakKind::Direct,
                    2,
                    64,
                    vec![frame("/bin/p", Some("keep"), None)],
                ),
                group(
                    LeakKind::Direct,
                    1,
                    32,
                    vec![frame("/bin/p", Some("drop_me"), None)],
                ),
                group(
                    LeakKind::Indirect,
                    1,
                    16,
                    vec![frame("/bin/p", Some("drop_me"), None)],
                ),
            ],
            ..Report::blank(process, crate::report::Trigger::Exit)
        };
        let sets = [Suppressions::parse("s.supp", "leak:nothing\nleak:drop").unwrap()];
        apply(&mut report, &sets);
        assert_eq!(report.leaks.len(), 1);
        let s = &report.summary;
        assert_eq!((s.leaked_blocks, s.leaked_bytes), (2, 64));
        assert_eq!((s.direct_blocks, s.indirect_blocks), (2, 0));
        assert_eq!((s.suppressed_blocks, s.suppressed_bytes), (2, 48));
        assert_eq!(
            report.suppressions,
            [SuppressionUse {
                pattern: "drop".into(),
                file: "s.supp".into(),
                line: 2,
                blocks: 2,
                bytes: 48,
            }]
        );
    }
}
