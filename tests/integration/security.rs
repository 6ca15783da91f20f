//! Security: what leakscan writes is its user's alone, it never writes the
//! program's memory contents, and it leaves secure-execution programs
//! alone.
//!
//! - Report directories are 0700 and reports and sockets 0600, even under
//!   `umask 000` (and the directories leakscan creates on the way too).
//! - Leaked blocks holding a secret: the secret appears in no report file
//!   (periodic or exit), in no `scan`/`dump`/`stats` answer, and in no
//!   text or SARIF rendering. There is no option that adds memory contents.
//! - A setuid-root program run by another user, with the library preloaded
//!   the only way the loader allows (a setuid copy in the system library
//!   directory, named without a slash): the library is mapped but does
//!   nothing — no thread, no socket, no report.
//!
//! The control socket refusing other uids (`SO_PEERCRED`) is tested in
//! live.rs (`another_user_is_refused_by_the_socket`).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use leakscan_core::report::{Report, Trigger};

use crate::faults::as_nobody;
use crate::harness::{agent_library, build, leakscan_for, run, workdir, Spec, FIXTURE_TIME_LIMIT};

const SECRET: &str = "s3cr3t-token";

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Wait (bounded) until `path` exists.
fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no {what} at {} after 30 s",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Everything leakscan produced for `security_secret`, run under
/// `umask 000` with a report directory that does not exist yet.
struct SecretRun {
    dir: PathBuf,
    /// The directories leakscan had to create, outermost first.
    created: Vec<PathBuf>,
    reports: PathBuf,
    socket_mode: u32,
    periodic: String,
    periodic_mode: u32,
    exit_report: PathBuf,
    /// (what, output) of every command that looked at the process.
    outputs: Vec<(String, String)>,
}

fn run_secret(test: &str) -> SecretRun {
    let dir = workdir(test);
    let binary = build(&Spec::load("security_secret.c"), &dir);
    let created = vec![dir.join("new"), dir.join("new/nested")];
    let reports = dir.join("new/nested/reports");
    let options = format!(
        "report_dir={}:scan_interval=0.05:min_age=0:verbosity=0",
        reports.display()
    );
    // The shell sets the umask and execs env, which preloads the agent
    // into the fixture alone.
    let mut child = Command::new("sh")
        .args(["-c", "umask 000 && exec env LD_PRELOAD=\"$1\" \"$0\""])
        .arg(&binary)
        .arg(agent_library())
        .current_dir(&dir)
        .env_remove("LD_PRELOAD")
        .env("LEAKSCAN_OPTIONS", &options)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("a line").expect("UTF-8");
    let address = ready
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("{ready}"))
        .to_string();
    let socket = reports.join(format!("{pid}.sock"));
    let report = reports.join(format!("{pid}.json"));
    wait_for(&socket, "control socket");
    wait_for(&report, "periodic report");
    let socket_mode = mode(&socket);
    let periodic_mode = mode(&report);
    let periodic = fs::read_to_string(&report).unwrap();

    let ask = |args: &[&str]| {
        let out = leakscan_for(&reports).args(args).output().unwrap();
        assert!(
            out.status.code() == Some(0),
            "leakscan {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let pid_arg = pid.to_string();
    let mut outputs = vec![
        ("scan".to_string(), ask(&["scan", &pid_arg])),
        (
            "scan --format text".to_string(),
            ask(&["scan", &pid_arg, "--format", "text"]),
        ),
        ("dump".to_string(), ask(&["dump", &pid_arg, &address])),
        ("stats".to_string(), ask(&["stats", &pid_arg])),
    ];
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"quit\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let exit_report = report;
    for (what, format) in [
        ("report --format text", "text"),
        ("report --format sarif", "sarif"),
    ] {
        let text = ask(&["report", "--format", format, exit_report.to_str().unwrap()]);
        outputs.push((what.to_string(), text));
    }
    SecretRun {
        dir,
        created,
        reports,
        socket_mode,
        periodic,
        periodic_mode,
        exit_report,
        outputs,
    }
}

#[test]
fn reports_directories_and_sockets_are_private_even_under_umask_000() {
    let run_ = run_secret("security_modes");
    for d in run_.created.iter().chain([&run_.reports]) {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    assert_eq!(run_.socket_mode, 0o600, "control socket");
    assert_eq!(run_.periodic_mode, 0o600, "periodic report");
    assert_eq!(mode(&run_.exit_report), 0o600, "exit report");
    // Nothing else was left there (no socket, no temporary file).
    let left: Vec<_> = fs::read_dir(&run_.reports)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // `leakscan run` too: its report directory, and the report it moves
    // there from its private run directory.
    let reports = run_.dir.join("run-reports");
    let binary = run_.dir.join("security_secret");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_leakscan"))
        .args(["run", "--format", "json", "--error-exitcode", "0", "--"])
        .arg(&binary)
        .env_remove("LD_PRELOAD")
        .env(
            "LEAKSCAN_OPTIONS",
            format!("report_dir={}", reports.display()),
        )
        .stdin(Stdio::null());
    // EOF on stdin: the fixture exits 1 at once (after leaking).
    let traced = run(&mut cmd, &run_.dir, "leakscan-run", FIXTURE_TIME_LIMIT);
    assert_eq!(traced.code, 1, "{}", traced.stderr);
    assert_eq!(mode(&reports), 0o700);
    let names: Vec<_> = fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].extension().is_some_and(|e| e == "json"));
    assert_eq!(mode(&names[0]), 0o600);
}

#[test]
fn memory_contents_never_reach_a_report() {
    let run_ = run_secret("security_secret");
    let exit_text = fs::read_to_string(&run_.exit_report).unwrap();
    let exit = Report::from_json(&exit_text).unwrap();
    // The leaks are there (the test looks at real reports of them)…
    assert_eq!(exit.scan.trigger, Trigger::Exit);
    assert_eq!(exit.summary.direct_blocks, 3, "{exit_text}");
    assert_eq!(exit.summary.indirect_blocks, 1, "{exit_text}");
    let periodic = Report::from_json(&run_.periodic).unwrap();
    assert_eq!(periodic.scan.trigger, Trigger::Periodic);
    assert!(periodic.summary.leaked_blocks > 0, "{}", run_.periodic);
    // …and their contents are not: neither the string nor its bytes in hex.
    let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    let mut everything = vec![
        ("exit report".to_string(), exit_text),
        ("periodic report".to_string(), run_.periodic.clone()),
    ];
    everything.extend(run_.outputs);
    for (what, text) in &everything {
        assert!(!text.is_empty(), "{what} printed nothing");
        for needle in [SECRET, "s3cr3t", &hex, &hex.to_uppercase()] {
            assert!(
                !text.contains(needle),
                "{what} contains the block's contents ({needle}):\n{text}"
            );
        }
    }
    // The dump did describe the block it was asked about.
    let dump = &everything.iter().find(|(w, _)| w == "dump").unwrap().1;
    assert!(dump.contains("\"size\": 64"), "{dump}");
}

/// A copy of the agent in the system library directory, setuid root (the
/// loader preloads into a secure-execution program only such a library,
/// and only when named without a slash); removed on drop.
struct TrustedCopy {
    path: PathBuf,
}

impl TrustedCopy {
    fn install(name: &str) -> TrustedCopy {
        // The directory that holds libc is one the loader trusts.
        let dir = [
            "/usr/lib/x86_64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/lib64",
        ]
        .iter()
        .map(Path::new)
        .find(|d| d.join("libc.so.6").exists())
        .expect("a system library directory with libc.so.6");
        let path = dir.join(name);
        fs::copy(agent_library(), &path).unwrap();
        let copy = TrustedCopy { path };
        fs::set_permissions(&copy.path, fs::Permissions::from_mode(0o4755)).unwrap();
        copy
    }
}

impl Drop for TrustedCopy {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[test]
fn setuid_programs_are_left_alone() {
    if leakscan_platform::user::uid() != 0 {
        eprintln!(
            "setuid_programs_are_left_alone: NOT RUN (needs root to install a setuid program)"
        );
        return;
    }
    let dir = workdir("security_setuid");
    let binary = build(&Spec::load("security_setuid.c"), &dir);
    let shared = std::env::temp_dir().join(format!("leakscan-setuid-{}", std::process::id()));
    let _ = fs::remove_dir_all(&shared);
    fs::create_dir(&shared).unwrap();
    let _cleanup = RemoveDir(shared.clone());
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    let setuid = shared.join("setuid");
    let plain = shared.join("plain");
    for (path, mode) in [(&setuid, 0o4755), (&plain, 0o755)] {
        fs::copy(&binary, path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let reports = shared.join("reports");
    fs::create_dir(&reports).unwrap();
    std::os::unix::fs::chown(&reports, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&reports, fs::Permissions::from_mode(0o700)).unwrap();
    let name = format!("libleakscan-test-{}.so", std::process::id());
    let _lib = TrustedCopy::install(&name);
    let options = format!(
        "report_dir={}:scan_interval=0.05:min_age=0:verbosity=2",
        reports.display()
    );
    let preloaded = |program: &Path, label: &str| {
        let mut cmd = as_nobody(
            program,
            &[
                ("LD_PRELOAD", name.as_ref()),
                ("LEAKSCAN_OPTIONS", options.as_ref()),
            ],
        );
        let r = run(&mut cmd, &dir, label, FIXTURE_TIME_LIMIT);
        (
            r.code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            r.stderr,
        )
    };

    // Control: the same program without the setuid bit is checked as
    // usual, so the library really is found by that name.
    let (code, out, err) = preloaded(&plain, "plain");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("euid=65534 libleakscan mapped=yes threads=")
            && !out.contains("threads=1\n"),
        "{out}"
    );
    assert!(err.contains("leakscan: 1 leaked blocks"), "{err}");
    let reports_made: Vec<_> = fs::read_dir(&reports).unwrap().collect();
    assert!(!reports_made.is_empty());
    for entry in reports_made {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }

    // The setuid program: the loader maps the library, which stays off.
    let (code, out, err) = preloaded(&setuid, "setuid");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "euid=0 libleakscan mapped=yes threads=1\n", "{err}");
    assert_eq!(err, "", "leakscan spoke in a setuid program");
    let left: Vec<_> = fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "a setuid program left {left:?}");
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
