//! `leakscan run` as a user meets it: exit statuses, error messages, the
//! text report, and the program's own output left alone.

use std::path::{Path, PathBuf};

use crate::harness::{bare, build, leakscan, run, workdir, Run, Spec, FIXTURE_TIME_LIMIT};

/// Build fixture `name` into a fresh directory for `test`.
fn fixture(test: &str, name: &str) -> (PathBuf, PathBuf) {
    let dir = workdir(test);
    let binary = build(&Spec::load(name), &dir);
    (dir, binary)
}

/// Build fixture `name` and run `leakscan run FLAGS -- <it>`.
fn run_fixture(test: &str, name: &str, flags: &[&str]) -> Run {
    let (dir, binary) = fixture(test, name);
    let mut cmd = leakscan();
    cmd.arg("run").args(flags).arg("--").arg(&binary);
    run(&mut cmd, &dir, "leakscan", FIXTURE_TIME_LIMIT)
}

/// Run `leakscan ARGS` in a fresh directory for `test`.
fn leakscan_in(test: &str, args: &[&str]) -> Run {
    leakscan_with(&workdir(test), &[], args)
}

/// Run `leakscan ARGS` in `dir` with extra environment variables.
fn leakscan_with(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = leakscan();
    cmd.envs(env.iter().copied()).args(args);
    run(&mut cmd, dir, "leakscan", FIXTURE_TIME_LIMIT)
}

fn assert_one_line_error(out: &Run) {
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("leakscan:"),
        "expected one stderr line starting with `leakscan:`, got:\n{}",
        out.stderr
    );
}

#[test]
fn missing_program_exits_2() {
    let out = leakscan_in("cli_missing_program", &["run", "--", "/nonexistent"]);
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert_one_line_error(&out);
}

#[test]
fn missing_library_exits_2() {
    let out = leakscan_with(
        &workdir("cli_missing_library"),
        &[("LEAKSCAN_LIB", "/nonexistent")],
        &["run", "--", "true"],
    );
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert_one_line_error(&out);
}

#[test]
fn run_without_program_exits_2() {
    let out = leakscan_in("cli_no_program", &["run"]);
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert!(!out.stderr.is_empty(), "a usage error says what is wrong");
}

#[test]
fn unknown_flag_exits_2() {
    let out = leakscan_in("cli_unknown_flag", &["run", "--bogus", "--", "true"]);
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert!(!out.stderr.is_empty(), "a usage error says what is wrong");
}

#[test]
fn leaks_exit_23_by_default() {
    let out = run_fixture("cli_default_exitcode", "direct_leak.c", &[]);
    assert_eq!(out.code, 23, "stderr:\n{}", out.stderr);
}

#[test]
fn error_exitcode_sets_the_status_for_leaks() {
    let out = run_fixture(
        "cli_error_exitcode",
        "direct_leak.c",
        &["--error-exitcode", "5"],
    );
    assert_eq!(out.code, 5, "stderr:\n{}", out.stderr);
}

#[test]
fn program_status_passes_through_without_leaks() {
    let out = run_fixture("cli_exit_status", "exit_status.c", &[]);
    assert_eq!(out.code, 3, "stderr:\n{}", out.stderr);
}

/// A program killed by a signal: leakscan exits 128 + signal and says so.
fn check_killed(test: &str, name: &str, signal: i32, names: &[&str]) {
    let (dir, binary) = fixture(test, name);
    let out = run(
        leakscan().arg("run").arg("--").arg(&binary),
        &dir,
        "leakscan",
        FIXTURE_TIME_LIMIT,
    );
    assert_eq!(out.code, 128 + signal, "stderr:\n{}", out.stderr);
    let number = format!("signal {signal}");
    assert!(
        names
            .iter()
            .chain([&number.as_str()])
            .any(|n| out.stderr.contains(n)),
        "stderr should mention the signal ({names:?} or `{number}`):\n{}",
        out.stderr
    );
}

#[test]
fn sigsegv_exits_139() {
    check_killed(
        "cli_sigsegv",
        "segv.c",
        11,
        &["SIGSEGV", "Segmentation fault"],
    );
}

#[test]
fn static_program_is_refused_before_it_runs() {
    let out = run_fixture("cli_static", "static_binary.c", &[]);
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert_one_line_error(&out);
    assert!(out.stderr.contains("statically linked"), "{}", out.stderr);
}

#[test]
fn abort_exits_134() {
    check_killed("cli_abort", "abort.c", 6, &["SIGABRT", "Aborted"]);
}

#[test]
fn text_report_goes_to_stderr_and_leaves_stdout_alone() {
    let (dir, binary) = fixture("cli_text_format", "direct_leak.c");
    let plain = run(&mut bare(&binary), &dir, "bare", FIXTURE_TIME_LIMIT);
    let mut cmd = leakscan();
    cmd.args(["run", "--format", "text", "--"]).arg(&binary);
    let out = run(&mut cmd, &dir, "leakscan", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 23, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("Direct leak of"),
        "no `Direct leak of` in stderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.lines().any(|line| line.starts_with("SUMMARY")),
        "no SUMMARY line in stderr:\n{}",
        out.stderr
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "the program's stdout changed under leakscan"
    );
    assert_eq!(
        out.stdout, plain.stdout,
        "the program's stdout bytes changed under leakscan"
    );
}

#[test]
fn a_report_directory_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = workdir("cli_shared_report_dir");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let options = format!("report_dir={}", shared.display());
    let out = leakscan_with(
        &dir,
        &[("LEAKSCAN_OPTIONS", options.as_str())],
        &["run", "--", "true"],
    );
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert_one_line_error(&out);
    assert!(
        out.stderr.contains("writable by other users"),
        "{}",
        out.stderr
    );
}
