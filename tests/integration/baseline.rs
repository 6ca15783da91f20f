//! Baselines: CI fails only on new leaks. An unchanged rerun against the
//! baseline shows nothing and keeps the status; one more leak shows exactly
//! that one group.

use std::fs;

use leakscan_core::report::Report;

use crate::harness::{build, check_fixture, leakscan, read_report, run, Spec, FIXTURE_TIME_LIMIT};

#[test]
fn only_new_leaks_are_shown() {
    let checked = check_fixture("baseline", "baseline_leaks.c");
    let dir = &checked.dir;
    let baseline = dir.join("report.json");

    // The same program again: nothing new, status 0 instead of 23.
    let unchanged = dir.join("unchanged.json");
    let mut cmd = leakscan();
    cmd.args(["run", "--format", "json", "--baseline"])
        .arg(&baseline)
        .arg("--output")
        .arg(&unchanged)
        .arg("--")
        .arg(&checked.binary);
    let out = run(&mut cmd, dir, "unchanged", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = read_report(&unchanged, &out.stderr);
    assert!(report.leaks.is_empty(), "{:?}", report.leaks);
    assert_eq!(report.summary.leaked_blocks, 0);
    assert_eq!(report.omitted.baseline.groups, 2);
    assert_eq!(report.omitted.baseline.bytes, 80);

    // One more leak, in a build whose other lines moved: exactly that one.
    let extra_dir = dir.join("extra");
    fs::create_dir(&extra_dir).unwrap();
    let mut spec = Spec::load("baseline_leaks.c");
    spec.build.push("-DEXTRA_LEAK".into());
    let extra = build(&spec, &extra_dir);
    let mut cmd = leakscan();
    cmd.args(["run", "--format", "json", "--baseline"])
        .arg(&baseline)
        .arg("--")
        .arg(&extra);
    let out = run(&mut cmd, dir, "extra", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 23, "{}", out.stderr);
    let report = Report::from_json(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(report.leaks.len(), 1, "{:?}", report.leaks);
    let group = &report.leaks[0];
    assert_eq!(group.stack[0].function.as_deref(), Some("new_leak"));
    assert_eq!((group.count, group.bytes), (1, 16));
    assert_eq!(group.baseline, None, "a new group, not a grown one");
    assert_eq!(report.summary.leaked_bytes, 16);

    // The same from saved reports, with `leakscan report --fail-on-leaks`.
    let saved = dir.join("extra.json");
    fs::write(&saved, report.to_json()).unwrap();
    let mut cmd = leakscan();
    cmd.args([
        "report",
        "--fail-on-leaks",
        "--format",
        "text",
        "--baseline",
    ])
    .arg(&baseline)
    .arg(&baseline);
    let out = run(&mut cmd, dir, "report-unchanged", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("2 leak groups (80 bytes in 2 objects) already in the baseline"),
        "{text}"
    );
}
