//! A suppression file written for LeakSanitizer hides the same leaks under
//! leakscan: the fixture runs under gcc's LSan runtime (preloaded) and
//! under leakscan with tests/fixtures/lsan.supp, and each rule must have
//! hidden the same count and bytes, and the same leaks must be left.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::harness::{
    bare, check_fixture, fixtures_dir, leakscan, read_report, run, FIXTURE_TIME_LIMIT, RUN_JSON_TO,
};

/// template → (count, bytes) from LSan's "Suppressions used" table.
type Table = BTreeMap<String, (u64, u64)>;

fn liblsan() -> PathBuf {
    let out = Command::new("gcc")
        .arg("-print-file-name=liblsan.so")
        .output()
        .expect("run gcc");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        path.is_absolute() && path.exists(),
        "gcc's LeakSanitizer runtime is missing ({}): run scripts/install-deps",
        path.display()
    );
    path
}

/// LSan's table and its SUMMARY's (bytes, allocations).
fn parse_lsan(stderr: &str) -> (Table, (u64, u64)) {
    let mut table = Table::new();
    let mut lines = stderr
        .lines()
        .skip_while(|l| !l.starts_with("Suppressions used:"));
    lines.next();
    lines.next(); // the column titles
    for line in lines.take_while(|l| !l.starts_with("---")) {
        let mut words = line.split_whitespace();
        let count = words.next().unwrap().parse().unwrap();
        let bytes = words.next().unwrap().parse().unwrap();
        table.insert(words.next().unwrap().to_string(), (count, bytes));
    }
    let summary = stderr
        .lines()
        .find_map(|l| l.strip_prefix("SUMMARY: LeakSanitizer: "))
        .unwrap_or_else(|| panic!("no LSan summary:\n{stderr}"));
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (table, (numbers[0], numbers[1]))
}

#[test]
fn an_lsan_suppression_file_hides_the_same_leaks() {
    let checked = check_fixture("suppressions_as_lsan", "lsan_suppressions.c");
    let dir = &checked.dir;
    let supp = fixtures_dir().join("lsan.supp");

    let mut lsan = bare(&checked.binary);
    lsan.env("LD_PRELOAD", liblsan()).env(
        "LSAN_OPTIONS",
        format!(
            "suppressions={}:print_suppressions=1:exitcode=0",
            supp.display()
        ),
    );
    let lsan = run(&mut lsan, dir, "lsan", FIXTURE_TIME_LIMIT);
    assert_eq!(lsan.code, 0, "{}", lsan.stderr);
    let (lsan_table, lsan_left) = parse_lsan(&lsan.stderr);
    assert_eq!(
        lsan_table.len(),
        4,
        "LSan used four rules:\n{}",
        lsan.stderr
    );

    // Applied by the CLI, and by the agent (LEAKSCAN_OPTIONS).
    let by_cli = dir.join("by-cli.json");
    let mut cli = leakscan();
    cli.args([
        "run",
        "--format",
        "json",
        "--error-exitcode",
        "0",
        "--suppressions",
    ])
    .arg(&supp)
    .arg("--output")
    .arg(&by_cli)
    .arg("--")
    .arg(&checked.binary);
    let by_agent = dir.join("by-agent.json");
    let mut agent = leakscan();
    agent
        .env(
            "LEAKSCAN_OPTIONS",
            format!("suppressions={}", supp.display()),
        )
        .args(RUN_JSON_TO)
        .arg(&by_agent)
        .arg("--")
        .arg(&checked.binary);
    for (cmd, path, label) in [(cli, by_cli, "cli"), (agent, by_agent, "agent")] {
        let mut cmd = cmd;
        let out = run(&mut cmd, dir, label, FIXTURE_TIME_LIMIT);
        assert_eq!(out.code, 0, "{label}: {}", out.stderr);
        let report = read_report(&path, &out.stderr);
        let table: Table = report
            .suppressions
            .iter()
            .map(|u| (u.pattern.clone(), (u.blocks, u.bytes)))
            .collect();
        assert_eq!(table, lsan_table, "{label}: rules and what they hid");
        let s = &report.summary;
        assert_eq!(
            (s.leaked_bytes, s.leaked_blocks),
            lsan_left,
            "{label}: leaks left"
        );
        assert_eq!(
            (s.suppressed_blocks, s.suppressed_bytes),
            (4, 160),
            "{label}"
        );
    }
}
