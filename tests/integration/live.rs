//! Online detection: periodic scans of running programs, the control socket
//! and the commands that use it (`scan`, `clear`, `dump`, `stats`, `ps`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leakscan_core::control::Reply;
use leakscan_core::report::{LeakKind, Report, Trigger};

use crate::harness::{bare, build, leakscan_for, preloaded, workdir, Spec};

/// A fixture started with the agent preloaded; killed if the test fails.
pub(crate) struct Live {
    pub(crate) child: Child,
    pub(crate) reports: PathBuf,
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Live {
    pub(crate) fn start(dir: &Path, binary: &Path, args: &[&str], options: &str) -> Live {
        let reports = dir.join("reports");
        let child = preloaded(binary, dir, options)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Live { child, reports }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `leakscan ARGS…` against this process's report directory.
    pub(crate) fn leakscan(&self, args: &[&str]) -> (i32, String, String) {
        let out = leakscan_for(&self.reports)
            .args(args)
            .output()
            .expect("run leakscan");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Wait for the program to end; its status and everything it printed.
    fn finish(&mut self) -> (std::process::ExitStatus, String) {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout)
                .expect("read the program's output");
        }
        (self.child.wait().expect("wait for the program"), stdout)
    }

    fn socket(&self) -> PathBuf {
        self.reports.join(format!("{}.sock", self.pid()))
    }

    /// Wait until the agent answers on its socket.
    pub(crate) fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = UnixStream::connect(self.socket()).is_ok_and(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut reply = String::new();
                s.write_all(b"ping\n").is_ok()
                    && s.read_to_string(&mut reply).is_ok()
                    && reply.contains("\"ok\":true")
            });
            if answered {
                return;
            }
            assert!(Instant::now() < deadline, "no control socket answered");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Talk to `live_leaker` over its stdin/stdout.
struct Leaker {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Leaker {
    fn new(live: &mut Live) -> Leaker {
        let mut l = Leaker {
            stdin: live.child.stdin.take().unwrap(),
            stdout: BufReader::new(live.child.stdout.take().unwrap()),
        };
        assert_eq!(l.line(), "ready");
        l
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout
            .read_line(&mut s)
            .expect("read from the fixture");
        s.trim_end().to_string()
    }

    fn say(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to the fixture");
        self.line()
    }

    fn leak(&mut self, n: usize) -> BTreeSet<u64> {
        self.say(&format!("leak {n}"))
            .split_whitespace()
            .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap())
            .collect()
    }
}

fn addresses(report: &Report) -> BTreeSet<u64> {
    report
        .leaks
        .iter()
        .flat_map(|g| &g.objects)
        .map(|o| u64::from_str_radix(o.address.trim_start_matches("0x"), 16).unwrap())
        .collect()
}

pub(crate) fn parse_report(json: &str) -> Report {
    Report::from_json(json).unwrap_or_else(|e| panic!("not a report ({e}):\n{json}"))
}

fn raw_request(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn scan_clear_dump_stats_and_ps_talk_to_a_running_process() {
    let dir = workdir("live_commands");
    let binary = build(&Spec::load("live_leaker.c"), &dir);
    let mut live = Live::start(&dir, &binary, &[], "scan_interval=0");
    let mut leaker = Leaker::new(&mut live);
    live.wait_for_socket();
    let pid = live.pid().to_string();
    let mode = fs::metadata(live.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is private");

    assert_eq!(leaker.say("keep 5"), "kept 5");
    let first = leaker.leak(3);

    // scan: exactly the blocks lost so far.
    let (code, out, err) = live.leakscan(&["scan", &pid, "--min-age", "0"]);
    assert_eq!(code, 0, "{err}");
    let report = parse_report(&out);
    assert_eq!(report.scan.trigger, Trigger::Request);
    assert_eq!(report.process.pid, live.pid());
    assert_eq!(addresses(&report), first, "{out}");
    assert!(report.leaks.iter().all(|g| g.kind == LeakKind::Direct));
    assert!(report.scan.live_blocks >= 8, "{:?}", report.scan);

    // `report --pid` is the same request through `leakscan report`.
    let (code, out, err) = live.leakscan(&[
        "report",
        "--pid",
        &pid,
        "--min-age",
        "0",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(addresses(&parse_report(&out)), first, "{out}");

    // --fail-on-leaks turns leaks into status 1.
    let (code, _, _) = live.leakscan(&["scan", &pid, "--min-age", "0", "--fail-on-leaks"]);
    assert_eq!(code, 1);

    // dump: an interior address names its block.
    let a = *first.iter().next().unwrap();
    let (code, out, err) = live.leakscan(&["dump", &pid, &format!("{:#x}", a + 100)]);
    assert_eq!(code, 0, "{err}");
    let block: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(block["address"], format!("{a:#x}"));
    assert_eq!(block["size"], 320);
    assert_eq!(block["state"], "leak");
    assert!(block["stack"].as_array().is_some_and(|s| !s.is_empty()));
    let (code, _, err) = live.leakscan(&["dump", &pid, "0x10"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no tracked block") && err.lines().count() == 1,
        "{err}"
    );

    // clear: what is reported now is never reported again.
    let (code, out, err) = live.leakscan(&["clear", &pid]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cleared 3 leaked blocks (960 bytes)"), "{out}");
    let (_, out, _) = live.leakscan(&["scan", &pid, "--min-age", "0"]);
    assert!(addresses(&parse_report(&out)).is_empty(), "{out}");

    // ...until a new leak.
    let second = leaker.leak(1);
    let (_, out, _) = live.leakscan(&["scan", &pid, "--min-age", "0"]);
    assert_eq!(addresses(&parse_report(&out)), second, "{out}");

    // stats and ps.
    let (code, out, err) = live.leakscan(&["stats", &pid]);
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(stats["live_blocks"].as_u64().unwrap() >= 9, "{out}");
    assert_eq!(stats["reported_blocks"], 1, "{out}");
    assert_eq!(stats["cleared_blocks"], 3, "{out}");
    assert_eq!(stats["scan_interval_ms"], 0, "{out}");
    let (code, out, _) = live.leakscan(&["ps"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().next() == Some(pid.as_str())),
        "{out}"
    );
    let (_, out, _) = live.leakscan(&["ps", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["pid"].as_u64() == Some(live.pid() as u64)));

    // Malformed requests get an error reply; the process goes on.
    for bad in [
        &b"bogus\n"[..],
        b"dump\n",
        b"scan please\n",
        &[b'x'; 700],
        b"\xff\n",
    ] {
        let reply: Reply = serde_json::from_str(raw_request(&live.socket(), bad).trim())
            .unwrap_or_else(|e| panic!("no error reply to {bad:?}: {e}"));
        assert!(!reply.ok && reply.error.is_some(), "{reply:?}");
        assert_eq!(reply.protocol, 1);
    }
    // A client that connects and says nothing is dropped, not waited for.
    drop(UnixStream::connect(live.socket()).unwrap());
    let ping = raw_request(&live.socket(), b"ping\n");
    assert!(ping.contains("\"ok\":true"), "{ping}");

    // At exit: the socket goes away; the process is then not running.
    leaker.say("quit");
    let status = live.child.wait().unwrap();
    assert!(status.success());
    assert!(!live.socket().exists(), "the socket outlived its process");
    let (code, _, err) = live.leakscan(&["scan", &pid]);
    assert_eq!(code, 2);
    assert!(err.contains("not running"), "{err}");
}

#[test]
fn commands_for_processes_without_a_socket_fail_in_one_line() {
    let dir = workdir("live_errors");
    let reports = dir.join("reports");
    fs::create_dir_all(&reports).unwrap();
    let run = |args: &[&str]| {
        let out = leakscan_for(&reports).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // This test's own process is alive but has no socket there.
    let me = std::process::id().to_string();
    for args in [vec!["scan", me.as_str()], vec!["stats", me.as_str()]] {
        let (code, err) = run(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains("no leakscan control socket"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let (code, err) = run(&["clear", "4000000000"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    let (code, err) = run(&["report", "--pid", "4000000000"]);
    assert_eq!(code, 2);
    assert!(err.contains("not running"), "{err}");
    let (code, err) = run(&["report", "--min-age", "1"]);
    assert_eq!(code, 2, "--min-age needs --pid: {err}");
    let (code, err) = run(&["dump", &me, "zz"]);
    assert_eq!(code, 2);
    assert!(err.contains("not an address"), "{err}");
    // A stale socket (its process is gone) is removed by ps.
    let stale = reports.join("4000000001.sock");
    fs::write(&stale, "").unwrap();
    let (code, _) = run(&["ps"]);
    assert_eq!(code, 0);
    assert!(!stale.exists(), "ps left a stale socket");
}

#[test]
fn another_user_is_refused_by_the_socket() {
    if leakscan_platform::user::uid() != 0 {
        // Switching to another uid needs root; CI runs as root.
        eprintln!(
            "another_user_is_refused_by_the_socket: NOT RUN (needs root to become another user)"
        );
        return;
    }
    let setpriv = crate::harness::find_program("setpriv");
    let dir = workdir("live_other_user");
    let binary = build(&Spec::load("live_leaker.c"), &dir);
    let mut live = Live::start(&dir, &binary, &[], "scan_interval=0");
    let mut leaker = Leaker::new(&mut live);
    live.wait_for_socket();
    // Open the file-system path to everyone, so that only the peer check
    // stands between another user and the process's memory.
    let open = |p: &Path, mode| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    for d in dir.ancestors().take_while(|d| *d != Path::new("/")) {
        let m = fs::metadata(d).unwrap().permissions().mode();
        open(d, m | 0o011);
    }
    open(&live.reports, 0o711);
    open(&live.socket(), 0o666);
    let cli = dir.join("leakscan-copy");
    fs::copy(env!("CARGO_BIN_EXE_leakscan"), &cli).unwrap();
    open(&cli, 0o755);
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&cli)
        .args(["stats", &live.pid().to_string()])
        .env(
            "LEAKSCAN_OPTIONS",
            format!("report_dir={}", live.reports.display()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("permission denied: only the process's own user"),
        "{err}"
    );
    // The process is unharmed and still answers its own user.
    let (code, _, err) = live.leakscan(&["stats", &live.pid().to_string()]);
    assert_eq!(code, 0, "{err}");
    leaker.say("quit");
    assert!(live.child.wait().unwrap().success());
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

fn mtime_ms(path: &Path) -> Option<f64> {
    let m = fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() * 1e3)
}

/// The leaks `live_server` logged so far: address → allocation time (ms).
fn logged_leaks(log: &Path) -> BTreeMap<u64, f64> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, t) = l.split_once(' ')?;
            Some((
                u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()?,
                t.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn a_churning_server_is_reported_exactly_and_in_time() {
    let _heavy = crate::harness::heavy();
    const SECONDS: u64 = 60;
    const INTERVAL_MS: f64 = 1000.0;
    const MIN_AGE_MS: f64 = 2000.0;
    // Scans take time, and this machine is shared with the other tests.
    const SLACK_MS: f64 = 1500.0;
    let dir = workdir("live_server");
    let binary = build(&Spec::load("live_server.c"), &dir);
    let log = dir.join("leaks.log");
    let mut live = Live::start(
        &dir,
        &binary,
        &[&SECONDS.to_string(), log.to_str().unwrap()],
        "scan_interval=1:min_age=2:max_objects=1000000",
    );
    let report_file = live.reports.join(format!("{}.json", live.pid()));
    let (mut checked, mut fresh_reports) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(SECONDS + 60);
    let mut last_seen = 0.0;
    while live.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not finish");
        thread::sleep(Duration::from_millis(700));
        let Some(written) = mtime_ms(&report_file) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(&report_file) else {
            continue;
        };
        let Ok(report) = Report::from_json(&text) else {
            continue; // replaced between stat and read: next round
        };
        if report.scan.trigger != Trigger::Periodic {
            continue;
        }
        let logged = logged_leaks(&log);
        let reported = addresses(&report);
        let false_positives: Vec<_> = reported
            .iter()
            .filter(|a| !logged.contains_key(a))
            .collect();
        assert!(
            false_positives.is_empty(),
            "scan {} reported blocks the server never leaked: {false_positives:x?}",
            report.scan.number
        );
        let overdue: Vec<_> = logged
            .iter()
            .filter(|(a, &t)| {
                t + MIN_AGE_MS + 2.0 * INTERVAL_MS + SLACK_MS <= written && !reported.contains(a)
            })
            .collect();
        assert!(
            overdue.is_empty(),
            "scan {} (written at {written:.0}, now {:.0}) misses leaks older than min_age + 2 \
             intervals: {overdue:x?}",
            report.scan.number,
            now_ms()
        );
        checked += 1;
        if written > last_seen {
            fresh_reports += 1;
            last_seen = written;
        }
    }
    let (status, stdout) = live.finish();
    assert!(status.success(), "the server failed: {status:?}");
    let leaks: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no leak count from the server: {stdout:?}"));
    assert!(
        fresh_reports >= (SECONDS as usize) / 4,
        "only {fresh_reports} periodic reports in {SECONDS} s ({checked} checks)"
    );
    // The exact check at exit agrees with the log, block for block.
    let report = parse_report(&fs::read_to_string(&report_file).unwrap());
    assert_eq!(report.scan.trigger, Trigger::Exit);
    let logged: BTreeSet<u64> = logged_leaks(&log).into_keys().collect();
    assert_eq!(logged.len(), leaks, "the log holds every leak");
    assert!(
        leaks as u64 >= SECONDS * 10,
        "the server leaks 10/s: {leaks}"
    );
    assert_eq!(addresses(&report), logged);
    assert_eq!(report.summary.leaked_blocks, logged.len() as u64);
}

#[test]
fn realloc_keeps_the_usable_size_while_scans_defer_frees() {
    let dir = workdir("live_usable_size");
    let binary = build(&Spec::load("live_usable_size.c"), &dir);
    let mut live = Live::start(&dir, &binary, &["4"], "scan_interval=0.01:min_age=0");
    let (status, stdout) = live.finish();
    assert_eq!(
        status.code(),
        Some(0),
        "status 3: realloc lost bytes malloc_usable_size promised ({stdout})"
    );
    let report = parse_report(
        &fs::read_to_string(live.reports.join(format!("{}.json", live.pid()))).unwrap(),
    );
    assert!(
        report.scan.number > 20,
        "too few scans ran: {:?}",
        report.scan
    );
}

#[test]
fn eight_threads_churning_under_scans_every_100ms() {
    let _heavy = crate::harness::heavy();
    const SECONDS: u64 = 30;
    let dir = workdir("live_stress");
    let binary = build(&Spec::load("live_stress.c"), &dir);
    let mut live = Live::start(
        &dir,
        &binary,
        &[&SECONDS.to_string(), "8"],
        "scan_interval=0.1:min_age=0.5",
    );
    live.wait_for_socket();
    let report_file = live.reports.join(format!("{}.json", live.pid()));
    let pid = live.pid().to_string();
    let deadline = Instant::now() + Duration::from_secs(SECONDS + 90);
    let (mut scans, mut quarantined) = (0u64, 0u64);
    while live.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "hang: the program did not finish"
        );
        thread::sleep(Duration::from_millis(500));
        // A periodic report is written only when a scan finds a leak: this
        // program never leaks, so any such report is a false positive.
        if let Ok(text) = fs::read_to_string(&report_file) {
            if let Ok(r) = Report::from_json(&text) {
                assert_ne!(r.scan.trigger, Trigger::Periodic, "false positive:\n{text}");
            }
        }
        let (code, out, _) = live.leakscan(&["stats", &pid]);
        if code == 0 {
            let s: serde_json::Value = serde_json::from_str(&out).unwrap();
            scans = scans.max(s["scans"].as_u64().unwrap());
            quarantined += s["last_quarantine_blocks"].as_u64().unwrap();
        }
    }
    let (status, stdout) = live.finish();
    assert_eq!(
        status.code(),
        Some(0),
        "status 3 = a block was written after it was freed; stdout: {stdout}"
    );
    assert!(stdout.starts_with("ops "), "{stdout}");
    // Coverage, not speed: scans must really have run all along while the
    // threads churned (every 100 ms when the scanner gets a core; on 2
    // shared cores with the rest of the suite running it gets less).
    assert!(scans >= SECONDS / 2, "only {scans} scans in {SECONDS} s");
    assert!(
        quarantined > 0,
        "no free was ever deferred: the quarantine was not exercised"
    );
    let report = parse_report(&fs::read_to_string(&report_file).unwrap());
    assert_eq!(report.scan.trigger, Trigger::Exit);
    assert_eq!(report.summary.leaked_blocks, 0, "{:?}", report.leaks);
}

/// The inode of the Unix socket bound at `path`, from /proc/net/unix.
fn unix_socket_inode(path: &Path) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/unix").expect("read /proc/net/unix");
    let path = path.to_str()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() >= 8 && fields[7] == path).then(|| fields[6].parse().ok())?
    })
}

/// The socket inodes among a process's open descriptors.
fn socket_inodes_of(pid: u32) -> BTreeSet<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the child's descriptors")
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

#[test]
fn a_fork_child_does_not_keep_its_parents_socket() {
    let dir = workdir("live_fork_child");
    let binary = build(&Spec::load("live_fork_child.c"), &dir);
    let reports = dir.join("reports");
    let mut live = Live::start(
        &dir,
        &binary,
        &[reports.to_str().unwrap()],
        "scan_interval=0",
    );
    live.wait_for_socket();
    let mut out = BufReader::new(live.child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("read the child's pid");
    let child: u32 = line.trim().parse().expect("the child prints its pid");
    let parent_socket = unix_socket_inode(&live.socket()).expect("the parent's socket is bound");
    // The child binds its own socket; it must not hold its parent's.
    let child_sockets = socket_inodes_of(child);
    assert!(
        !child_sockets.contains(&parent_socket),
        "the fork child holds its parent's listening socket (inode {parent_socket})"
    );
    // The parent still answers.
    let (code, stdout, stderr) = live.leakscan(&["stats", &live.pid().to_string()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    drop(live.child.stdin.take());
    let status = live.child.wait().expect("wait for the parent");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_requested_scan_reports_no_leak_younger_than_min_age() {
    let dir = workdir("live_min_age");
    let binary = build(&Spec::load("live_leaker.c"), &dir);
    // Periodic scans every 200 ms keep the allocation clock ticking and
    // make its largest gap (the slack a stamp may lag) a scan's length.
    let mut live = Live::start(&dir, &binary, &[], "scan_interval=0.2:min_age=60");
    let mut leaker = Leaker::new(&mut live);
    live.wait_for_socket();
    let pid = live.pid().to_string();
    let leaked_at = Instant::now();
    let lost = leaker.leak(2);
    // Young: however many scans run, not reported before it is 1.5 s old.
    loop {
        let before = leaked_at.elapsed();
        let (code, out, err) = live.leakscan(&["scan", &pid, "--min-age", "1.5"]);
        assert_eq!(code, 0, "{err}");
        let reported = addresses(&parse_report(&out));
        if before < Duration::from_millis(1500) {
            assert!(
                reported.is_empty(),
                "reported at {before:?}, younger than min_age 1.5 s: {out}"
            );
        } else if reported == lost {
            break;
        }
        assert!(
            leaked_at.elapsed() < Duration::from_secs(8),
            "a leak older than min_age was never reported: {out}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `unshare(CLONE_NEWUSER)` and `setns` into a mount namespace fail with
/// EINVAL in a process with other threads, and leakscan's scanner and
/// marker threads are such threads: `unshare -U`, bubblewrap and rootless
/// container tools failed under leakscan. They now stand down for the call
/// and the scanner starts again after it.
#[test]
fn unshare_and_setns_succeed_and_scans_go_on_after_them() {
    let dir = workdir("live_namespaces");
    let binary = build(&Spec::load("live_namespaces.c"), &dir);
    let alone = bare(&binary)
        .current_dir(&dir)
        .output()
        .expect("run the fixture bare");
    let bare_out = String::from_utf8_lossy(&alone.stdout).into_owned();
    assert!(
        bare_out.contains("unshare 0\n"),
        "this kernel refuses unshare(CLONE_NEWUSER) even without leakscan \
         (user.max_user_namespaces?), so nothing can be checked here: {bare_out}"
    );
    let mut live = Live::start(&dir, &binary, &[], "scan_interval=0.05");
    let mut out = BufReader::new(live.child.stdout.take().unwrap());
    let mut under = String::new();
    while !under.ends_with("ready\n") {
        let before = under.len();
        out.read_line(&mut under).expect("read the fixture");
        assert!(under.len() > before, "the fixture ended early: {under}");
    }
    assert_eq!(
        under, bare_out,
        "leakscan changed what setns/unshare return"
    );
    // The scanner is back: it answers, and a scan finds the block lost
    // after the calls.
    live.wait_for_socket();
    let pid = live.pid().to_string();
    let (code, report, err) = live.leakscan(&["scan", &pid, "--min-age", "0"]);
    assert_eq!(code, 0, "{err}");
    let report = parse_report(&report);
    assert_eq!(
        (report.summary.leaked_blocks, report.summary.leaked_bytes),
        (1, 48),
        "{:?}",
        report.leaks
    );
    writeln!(live.child.stdin.take().unwrap(), "exit").unwrap();
    let status = live.child.wait().expect("wait for the fixture");
    assert_eq!(status.code(), Some(0));
    let exit = parse_report(&fs::read_to_string(live.reports.join(format!("{pid}.json"))).unwrap());
    assert_eq!(exit.scan.trigger, Trigger::Exit);
    assert_eq!(exit.summary.leaked_blocks, 1, "{:?}", exit.leaks);
    assert!(!live.socket().exists(), "the socket outlived the process");

    // With the default report directory, /tmp/leakscan-<uid>: inside the
    // new namespace getuid() says 65534, but the report belongs where the
    // user who ran the program looks, the directory of the uid it had.
    let uid = std::os::unix::fs::MetadataExt::uid(&fs::metadata(&dir).unwrap());
    let mut cmd = bare(&binary);
    let run = cmd
        .current_dir(&dir)
        .env("LD_PRELOAD", crate::harness::agent_library())
        .env("LEAKSCAN_OPTIONS", "scan_interval=0.05:verbosity=0")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run the fixture with the default report directory");
    assert_eq!(run.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&run.stdout), bare_out);
    let pid: u32 = String::from_utf8_lossy(&run.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.parse().ok())
        .expect("the fixture prints its pid on stderr");
    let expected = PathBuf::from(format!("/tmp/leakscan-{uid}/{pid}.json"));
    let found = fs::read_to_string(&expected);
    let _ = fs::remove_file(&expected);
    assert!(found.is_ok(), "no report at {}", expected.display());
    // Not a stale report of another process that had the same pid.
    let report = parse_report(&found.unwrap());
    assert!(
        report.process.exe.ends_with("live_namespaces"),
        "{:?}",
        report.process
    );
    assert_eq!(report.summary.leaked_blocks, 1);
}
