//! `leakscan report` as a user meets it: sources (a file, stdin, a report
//! directory), formats, filters, and every exit status and error path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use leakscan_core::report::{Report, ReportSet};

use crate::harness::{
    agent_library, bare, build, leakscan, run, workdir, Run, Spec, FIXTURE_TIME_LIMIT,
};

/// Run fixture `name` with the agent preloaded, its report going to
/// `reports`; returns the report file.
fn agent_report(dir: &Path, name: &str, reports: &Path) -> PathBuf {
    let binary = build(&Spec::load(name), dir);
    let mut cmd: Command = bare(&binary);
    cmd.env("LD_PRELOAD", agent_library()).env(
        "LEAKSCAN_OPTIONS",
        format!("report_dir={}:verbosity=0", reports.display()),
    );
    let label = format!("preloaded-{name}");
    let out = run(&mut cmd, dir, &label, FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "{name}: {}", out.stderr);
    newest_report(reports)
}

fn newest_report(reports: &Path) -> PathBuf {
    fs::read_dir(reports)
        .expect("report directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("a report was written")
}

/// `leakscan ARGS` in `dir`.
fn report_cmd(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = leakscan();
    cmd.envs(env.iter().copied()).args(args);
    run(&mut cmd, dir, "report", FIXTURE_TIME_LIMIT)
}

fn one_error_line(out: &Run, contains: &str) {
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("leakscan: ") && lines[0].contains(contains),
        "expected one stderr line with `{contains}`, got:\n{}",
        out.stderr
    );
}

fn stdout(out: &Run) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// A directory with one leaking report (direct_leak.c) in `reports/`.
fn leaking(test: &str) -> (PathBuf, PathBuf) {
    let dir = workdir(test);
    let file = agent_report(&dir, "direct_leak.c", &dir.join("reports"));
    (dir, file)
}

#[test]
fn a_file_is_json_when_piped_and_exit_0() {
    let (dir, file) = leaking("report_file_json");
    let out = report_cmd(&dir, &["report", file.to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = Report::from_json(&stdout(&out)).expect("a report");
    assert_eq!(report.summary.direct_bytes, 48);
    let id = report.leaks[0].id.as_deref().expect("groups have ids");
    assert_eq!(id.len(), 16);

    let out = report_cmd(
        &dir,
        &["report", file.to_str().unwrap(), "--format", "text"],
        &[],
    );
    assert!(stdout(&out).contains("Direct leak of 48 bytes in 1 object allocated from:"));
    assert!(stdout(&out).contains(&format!("[id {id}]")));
    assert!(!stdout(&out).contains('\x1b'), "no colour into a pipe");
    let out = report_cmd(
        &dir,
        &[
            "report",
            file.to_str().unwrap(),
            "--format",
            "text",
            "--color",
            "always",
        ],
        &[],
    );
    assert!(stdout(&out).contains("\x1b[1;31mDirect leak\x1b[0m"));
}

#[test]
fn stdin_and_output_file() {
    let (dir, file) = leaking("report_stdin");
    let out_file = dir.join("out.sarif");
    let mut cmd = leakscan();
    cmd.args(["report", "-", "--format", "sarif", "--output"])
        .arg(&out_file)
        .stdin(fs::File::open(&file).unwrap());
    let out = run(&mut cmd, &dir, "stdin", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let sarif: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(sarif["runs"][0]["results"][0]["ruleId"], "direct-leak");
}

#[test]
fn fail_on_leaks_exits_1_only_with_leaks_shown() {
    let (dir, file) = leaking("report_fail_on_leaks");
    let f = file.to_str().unwrap();
    let out = report_cmd(&dir, &["report", f, "--fail-on-leaks"], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.is_empty(),
        "leaks are not an error: {}",
        out.stderr
    );
    // Filtered away or suppressed: nothing shown, nothing to fail on.
    let out = report_cmd(
        &dir,
        &["report", f, "--fail-on-leaks", "--min-bytes", "49"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = Report::from_json(&stdout(&out)).unwrap();
    assert_eq!(report.summary.leaked_blocks, 0);
    assert_eq!(report.omitted.filtered.bytes, 48);
    let supp = dir.join("s.supp");
    fs::write(&supp, "leak:make_node\n").unwrap();
    let out = report_cmd(
        &dir,
        &[
            "report",
            f,
            "--fail-on-leaks",
            "--suppressions",
            supp.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = Report::from_json(&stdout(&out)).unwrap();
    assert_eq!(report.summary.suppressed_bytes, 48);
    assert_eq!(report.suppressions[0].pattern, "make_node");
    // A clean report never fails.
    let clean = agent_report(&dir, "no_leaks.c", &dir.join("clean"));
    let out = report_cmd(
        &dir,
        &["report", clean.to_str().unwrap(), "--fail-on-leaks"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn the_report_directory_newest_first() {
    let dir = workdir("report_directory");
    let reports = dir.join("reports");
    let first = agent_report(&dir, "direct_leak.c", &reports);
    // Make the order certain whatever the file system's time granularity.
    let older = fs::File::options().write(true).open(&first).unwrap();
    older
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    let second = agent_report(&dir, "golden_pair.c", &reports);
    assert_ne!(first, second);
    // Sockets, temporaries and other files are not reports.
    fs::write(reports.join("77.json.tmp"), "partial").unwrap();
    fs::write(reports.join("notes.txt"), "x").unwrap();
    let options = format!("report_dir={}", reports.display());
    let out = report_cmd(&dir, &["report"], &[("LEAKSCAN_OPTIONS", &options)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let set: ReportSet = serde_json::from_str(&stdout(&out)).expect("a report set");
    let exes: Vec<&str> = set
        .reports
        .iter()
        .map(|r| r.process.exe.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(exes, ["golden_pair", "direct_leak"]);

    // --dir names it directly; text shows both.
    let out = report_cmd(
        &dir,
        &[
            "report",
            "--dir",
            reports.to_str().unwrap(),
            "--format",
            "text",
            "--kind",
            "indirect",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = stdout(&out);
    assert!(text.contains("Indirect leak of 64 bytes"), "{text}");
    assert!(!text.contains("Direct leak of"), "{text}");
    assert_eq!(text.matches("Not shown:").count(), 2, "{text}");
}

#[test]
fn a_bad_report_in_the_directory_is_named_the_rest_shown_exit_2() {
    let dir = workdir("report_directory_bad");
    let reports = dir.join("reports");
    agent_report(&dir, "direct_leak.c", &reports);
    fs::write(reports.join("99.json"), "{not json").unwrap();
    let out = report_cmd(&dir, &["report", "--dir", reports.to_str().unwrap()], &[]);
    assert_eq!(out.code, 2);
    one_error_line(&out, "99.json");
    let set: ReportSet = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(set.reports.len(), 1);
}

#[test]
fn no_reports_yet_is_not_an_error() {
    let dir = workdir("report_none_yet");
    let runtime = dir.join("runtime");
    fs::create_dir(&runtime).unwrap();
    let out = report_cmd(
        &dir,
        &["report", "--format", "text"],
        &[("XDG_RUNTIME_DIR", runtime.to_str().unwrap())],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        stdout(&out),
        format!("leakscan: no reports in {}/leakscan\n", runtime.display())
    );
    let out = report_cmd(
        &dir,
        &["report", "--fail-on-leaks"],
        &[("XDG_RUNTIME_DIR", runtime.to_str().unwrap())],
    );
    assert_eq!(out.code, 0);
    let set: ReportSet = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(set.reports.is_empty());
}

#[test]
fn errors_are_one_line_and_exit_2() {
    let (dir, file) = leaking("report_errors");
    let f = file.to_str().unwrap();
    fs::write(
        dir.join("garbage.json"),
        "{\"schema_version\": 1, \"x\": 2}",
    )
    .unwrap();
    fs::write(dir.join("future.json"), "{\"schema_version\": 2}").unwrap();
    fs::write(dir.join("bad.supp"), "# ok\nleak:fine\nfun:nope\n").unwrap();
    fs::write(dir.join("empty.supp"), "leak:\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["report", "/nonexistent.json"], "No such file"),
        (&["report", "garbage.json"], "not a leakscan report"),
        (&["report", "future.json"], "schema_version 2"),
        (&["report", "--dir", "/nonexistent-dir"], "/nonexistent-dir"),
        (&["report", f, "--suppressions", "bad.supp"], "line 3"),
        (
            &["report", f, "--suppressions", "empty.supp"],
            "empty pattern",
        ),
        (
            &["report", f, "--suppressions", "missing.supp"],
            "missing.supp",
        ),
        (&["report", f, "--baseline", "garbage.json"], "garbage.json"),
        (&["report", f, "--baseline", "missing.json"], "missing.json"),
        (&["report", f, "--debug-dir", "/nonexistent"], "--debug-dir"),
        (&["report", f, "--source-root", f], "--source-root"),
        (
            &["report", f, "--output", "/nonexistent/x.json"],
            "does not exist",
        ),
        (&["report", f, "--format", "xml"], "xml"),
        (&["report", f, "--kind", "both"], "both"),
        (&["report", f, "--top", "0"], "0"),
        (&["report", f, "--dir", "."], "--dir"),
        (&["report", f, "--bogus"], "--bogus"),
    ];
    for (args, contains) in cases {
        let out = report_cmd(&dir, args, &[]);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        one_error_line(&out, contains);
        assert!(out.stdout.is_empty(), "{args:?} printed a report");
    }
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let (dir, file) = leaking("report_broken_pipe");
    let (reader, writer) = std::io::pipe().expect("pipe");
    // The reader is gone before leakscan writes: every write fails with EPIPE.
    drop(reader);
    let out = leakscan()
        .args(["report", "--format", "text"])
        .arg(&file)
        .current_dir(&dir)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run leakscan");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_sarif_to_stdout_and_its_view_flags() {
    let dir = workdir("run_sarif_view");
    let binary = build(&Spec::load("golden_pair.c"), &dir);
    let mut cmd = leakscan();
    cmd.args(["run", "--format", "sarif", "--kind", "indirect", "--"])
        .arg(&binary);
    let out = run(&mut cmd, &dir, "run", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 23, "{}", out.stderr);
    let sarif: serde_json::Value = serde_json::from_slice(&out.stdout).expect("SARIF on stdout");
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["ruleId"], "indirect-leak");

    // Everything suppressed: the program's own status, like LSan.
    let supp = dir.join("all.supp");
    fs::write(&supp, "leak:make_pair\n").unwrap();
    let mut cmd = leakscan();
    cmd.args([
        "run",
        "--print-suppressions",
        "--color",
        "never",
        "--suppressions",
    ])
    .arg(&supp)
    .arg("--")
    .arg(&binary);
    let out = run(&mut cmd, &dir, "run-suppressed", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("no leaks found"), "{}", out.stderr);
    assert!(
        out.stderr.contains("      2         96 make_pair"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("Suppressed: 96 bytes in 2 allocations."),
        "{}",
        out.stderr
    );
}

#[test]
fn run_refuses_a_bad_suppressions_option_before_running() {
    let dir = workdir("run_bad_option_suppressions");
    let marker = dir.join("ran");
    fs::write(dir.join("bad.supp"), "leak:ok\nbogus line\n").unwrap();
    let mut cmd = leakscan();
    cmd.env("LEAKSCAN_OPTIONS", "suppressions=bad.supp")
        .args(["run", "--", "touch"])
        .arg(&marker);
    let out = run(&mut cmd, &dir, "run", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 2, "{}", out.stderr);
    one_error_line(&out, "suppressions=bad.supp: line 2");
    assert!(!marker.exists(), "the program ran");
    let mut cmd = leakscan();
    cmd.args(["run", "--suppressions", "missing.supp", "--", "touch"])
        .arg(&marker);
    let out = run(&mut cmd, &dir, "run-missing", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 2, "{}", out.stderr);
    one_error_line(&out, "missing.supp");
    assert!(!marker.exists(), "the program ran");
}

#[test]
fn a_terminal_gets_coloured_text_by_default() {
    let (dir, file) = leaking("report_terminal");
    // util-linux's `script` (Debian: bsdutils, always installed) gives
    // leakscan a pseudo-terminal for stdout.
    let command = format!(
        "{} report {}",
        env!("CARGO_BIN_EXE_leakscan"),
        file.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    let out = run(&mut cmd, &dir, "terminal", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = stdout(&out);
    assert!(
        text.contains("\x1b[1;31mDirect leak\x1b[0m of 48 bytes"),
        "{text}"
    );
}
