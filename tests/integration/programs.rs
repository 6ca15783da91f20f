//! Real programs under leakscan: their output and status must not change,
//! and a program that frees (or keeps reachable) all it allocates must get
//! an empty report. CPython and SQLite each bring their own allocators on
//! top of malloc, threads, and dlopen'ed modules.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{bare, find_program, leakscan, read_report, run, workdir};

const TIME_LIMIT: Duration = Duration::from_secs(300);

/// Build a dict of lists, round-trip it through JSON in 4 threads, print a checksum.
const PYTHON_WORKLOAD: &str = r#"
import json, threading
data = {f"key{i}": [i * j for j in range(40)] for i in range(2000)}
sums = [0] * 4
def work(slot):
    total = 0
    for _ in range(5):
        text = json.dumps(data, sort_keys=True)
        back = json.loads(text)
        total += len(text) + sum(sum(v) for v in back.values())
    sums[slot] = total
threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sum(sums))
"#;

#[test]
fn python_json_threads_leaks_nothing() {
    let dir = workdir("program_python");
    // `python3` may be a shim script (pyenv) that forks helpers: ask the
    // interpreter for its own path.
    let mut which = bare(&find_program("python3"));
    which.args(["-c", "import sys; print(sys.executable)"]);
    let which = run(&mut which, &dir, "which", TIME_LIMIT);
    let python = String::from_utf8(which.stdout).expect("UTF-8 path");
    check_unchanged_and_clean(
        &dir,
        Path::new(python.trim()),
        &["-c", PYTHON_WORKLOAD],
        None,
    );
}

#[test]
fn sqlite3_bulk_insert_leaks_nothing() {
    let dir = workdir("program_sqlite3");
    let script = dir.join("workload.sql");
    fs::write(&script, sqlite_workload()).expect("write the SQL script");
    // No database argument: an in-memory database.
    check_unchanged_and_clean(&dir, &find_program("sqlite3"), &["-batch"], Some(&script));
}

/// 100,000 inserts in one transaction, an index, and queries over it.
fn sqlite_workload() -> String {
    let mut sql = String::from(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, bucket INTEGER NOT NULL);\nBEGIN;\n",
    );
    for id in 1..=100_000u64 {
        writeln!(
            sql,
            "INSERT INTO t VALUES({id}, 'name-{id}', {});",
            id * 7919 % 1000
        )
        .expect("write to String");
    }
    sql.push_str(
        "COMMIT;\n\
         CREATE INDEX t_bucket ON t(bucket);\n\
         SELECT bucket, count(*), sum(id) FROM t WHERE bucket BETWEEN 10 AND 14 GROUP BY bucket;\n\
         SELECT count(*), sum(length(name)), max(bucket) FROM t;\n",
    );
    sql
}

/// Run `program` bare and under `leakscan run` (default options): same
/// stdout, same status, and a report without leaks. HOME is `dir`, so that
/// no rc or history file of the user's takes part.
fn check_unchanged_and_clean(dir: &Path, program: &Path, args: &[&str], stdin: Option<&Path>) {
    let setup = |cmd: &mut Command| {
        cmd.args(args).env("HOME", dir);
        if let Some(input) = stdin {
            cmd.stdin(File::open(input).expect("open stdin file"));
        }
    };
    let mut plain = bare(program);
    setup(&mut plain);
    let plain = run(&mut plain, dir, "bare", TIME_LIMIT);
    assert_eq!(
        plain.code,
        0,
        "{} fails without leakscan:\n{}",
        program.display(),
        plain.stderr
    );

    let report_path = dir.join("report.json");
    let mut traced = leakscan();
    traced
        .args(["run", "--format", "json", "--output"])
        .arg(&report_path)
        .arg("--")
        .arg(program);
    setup(&mut traced);
    let traced = run(&mut traced, dir, "leakscan", TIME_LIMIT);
    let report = read_report(&report_path, &traced.stderr);

    let report_text = fs::read_to_string(&report_path).expect("the report was just read");
    let excerpt: String = report_text.chars().take(20_000).collect();
    assert_eq!(
        report.summary.leaked_blocks,
        0,
        "{} leaks under leakscan; report (first 20,000 characters):\n{excerpt}",
        program.display()
    );
    assert_eq!(
        traced.code, plain.code,
        "the exit status changed under leakscan\nstderr:\n{}",
        traced.stderr
    );
    assert!(
        traced.stdout == plain.stdout,
        "stdout changed under leakscan:\nbare:\n{}\nunder leakscan:\n{}",
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&traced.stdout)
    );
}
