//! The real-program reliability suite in its bounded variant: python3
//! (CPython's own tests and a JSON/regex/threads/asyncio workload),
//! sqlite3, redis-server, git, gcc, perl and make, each bare and under
//! `leakscan run --scan-interval 0.1` (a live scan every 100 ms). Same
//! output and exit status, no crash or hang, a report `leakscan report`
//! reads with one report per process, and every leak reported confirmed
//! by valgrind. The suite is `tests/reliability/reliability.py` (also run
//! on demand, bigger, by `bash scripts/reliability`); this test runs it
//! with `--quick` against the binaries under test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{find_program, run, workdir};

/// The quick suite takes about a minute on 2 cores; a hang inside it is
/// caught by its own per-run limits first.
const TIME_LIMIT: Duration = Duration::from_secs(600);

#[test]
fn real_programs_under_periodic_scans() {
    let _heavy = crate::harness::heavy();
    let dir = workdir("reliability");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reliability/reliability.py");
    let mut cmd = Command::new(find_program("python3"));
    cmd.arg(&script)
        .arg("--quick")
        .arg("--leakscan")
        .arg(env!("CARGO_BIN_EXE_leakscan"))
        .arg("--work")
        .arg(&dir)
        .env_remove("LEAKSCAN_OPTIONS")
        .env_remove("LD_PRELOAD");
    let done = run(&mut cmd, &dir, "reliability", TIME_LIMIT);
    let table = String::from_utf8_lossy(&done.stdout);
    assert_eq!(
        done.code, 0,
        "the reliability suite failed:\n{table}\n{}",
        done.stderr
    );
    assert!(
        table.contains("| redis-server | yes | yes | 0 | 0 |"),
        "no redis-server row:\n{table}"
    );
}
