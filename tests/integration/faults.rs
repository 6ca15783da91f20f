//! Fault injection: what the program and the user see when something runs
//! out or is in the way.
//!
//! - The real allocator failing (absurd sizes, bad alignments, `RLIMIT_AS`
//!   set by the fixture): the program sees exactly what it sees bare.
//! - leakscan's own memory running out (its block index, its own heap, a
//!   process that fills its address space and exits): tracking switches off
//!   with one warning, the program's output and exit status are unchanged,
//!   and no report is written (documented in docs/configuration.md).
//! - The report directory unwritable, full (`RLIMIT_FSIZE`), a symlink,
//!   another user's or shared, a symlink planted at `<pid>.json`: one line
//!   on stderr, no report half-written, nothing written outside.
//! - SIGKILL while the report is being rewritten: `<pid>.json` is always
//!   whole, and the temporary files a killed writer leaves are ignored by
//!   `leakscan report`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use leakscan_core::report::Report;

use crate::harness::{
    agent_library, bare, build, find_program, leakscan, run, workdir, Run, Spec,
    FIXTURE_TIME_LIMIT, RUN_JSON_TO,
};

/// `binary args` with the agent preloaded and `options`.
fn preloaded(binary: &Path, args: &[&str], options: &str) -> Command {
    let mut cmd = bare(binary);
    cmd.args(args)
        .env("LD_PRELOAD", agent_library())
        .env("LEAKSCAN_OPTIONS", options)
        .env_remove("XDG_RUNTIME_DIR");
    cmd
}

/// The lines leakscan printed on stderr.
fn leakscan_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("leakscan:"))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Run `fixture args` bare, preloaded (with periodic scans every 50 ms,
/// unless `extra` says otherwise) and under `leakscan run` (with `extra` as
/// LEAKSCAN_OPTIONS); the three must print the same and exit the same.
/// Returns the bare run's stdout and the preloaded run.
fn same_as_bare(test: &str, fixture: &str, args: &[&str], extra: &str) -> (String, Run) {
    let dir = workdir(test);
    let binary = build(&Spec::load(fixture), &dir);
    let plain = run(bare(&binary).args(args), &dir, "bare", FIXTURE_TIME_LIMIT);
    let reports = dir.join("reports");
    let options = format!(
        "report_dir={}:scan_interval=0.05:min_age=0:{extra}",
        reports.display()
    );
    let agent = run(
        &mut preloaded(&binary, args, &options),
        &dir,
        "preloaded",
        FIXTURE_TIME_LIMIT,
    );
    let out = dir.join("report.json");
    let mut cmd = leakscan();
    cmd.env("LEAKSCAN_OPTIONS", extra)
        .args(RUN_JSON_TO)
        .arg(&out)
        .arg("--")
        .arg(&binary)
        .args(args);
    let traced = run(&mut cmd, &dir, "leakscan", FIXTURE_TIME_LIMIT);
    let text = |r: &Run| String::from_utf8_lossy(&r.stdout).into_owned();
    for (label, r) in [("preloaded", &agent), ("leakscan run", &traced)] {
        assert_eq!(
            (text(r).as_str(), r.code),
            (text(&plain).as_str(), plain.code),
            "{fixture} {args:?}: {label} differs from the bare run\nstderr:\n{}",
            r.stderr
        );
    }
    (text(&plain), agent)
}

fn assert_lines(output: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            output.lines().any(|l| l == *line),
            "the fixture's output lacks `{line}` (so the fault was not injected):\n{output}"
        );
    }
}

#[test]
fn allocator_failures_look_the_same_under_leakscan() {
    let (out, agent) = same_as_bare("faults_alloc", "fault_alloc.c", &[], "");
    // The failures really happened, bare.
    assert_lines(
        &out,
        &[
            "malloc(huge): NULL errno=ENOMEM",
            "calloc(half, 2): NULL errno=ENOMEM",
            "memalign(half + 1, 16): NULL errno=EINVAL",
            "realloc(p, SIZE_MAX): NULL errno=ENOMEM old block intact",
            "reallocarray(p, SIZE_MAX/2+1, 2): NULL errno=ENOMEM old block intact",
            "posix_memalign(align 24): returns EINVAL, out untouched, errno=0",
            "posix_memalign(align 64, SIZE_MAX): returns ENOMEM, out untouched, errno=ENOMEM",
            "malloc(too_big): NULL errno=ENOMEM",
            "realloc(p big, 64 MiB) under RLIMIT_AS: NULL errno=ENOMEM old block intact",
            "realloc(p big, 64 MiB) under RLIMIT_AS: old block reallocs afterwards: yes",
            "posix_memalign(align 64, 64 MiB) under RLIMIT_AS: returns ENOMEM, out untouched, errno=ENOMEM",
            "malloc(1u << 20): ok",
            "done",
        ],
    );
    assert!(
        leakscan_lines(&agent.stderr).is_empty(),
        "leakscan had something to say about the program's own failures:\n{}",
        agent.stderr
    );
    no_leaks_reported("faults_alloc");
}

/// Tracking stayed on through the failures, and the report is exact.
fn no_leaks_reported(test: &str) {
    let path = workdir_of(test).join("report.json");
    let report = Report::from_json(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(report.summary.leaked_blocks, 0, "{}", path.display());
}

#[test]
fn operator_new_failures_look_the_same_under_leakscan() {
    let (out, agent) = same_as_bare("faults_new", "fault_new.cpp", &[], "");
    assert_lines(
        &out,
        &[
            "new(n): std::bad_alloc, new_handler ran 1 times",
            "new[](n, align 64): std::bad_alloc, new_handler ran 1 times",
            "new(n, nothrow): NULL, new_handler ran 1 times",
            "new[](n, align 64, nothrow): NULL, new_handler ran 1 times",
            "new uint64_t[SIZE_MAX/4]: std::bad_array_new_length, new_handler ran 0 times",
            "part 2: 64 MiB under RLIMIT_AS = current size + 32 MiB",
            "new char[n]: std::bad_alloc, new_handler ran 1 times",
            "done",
        ],
    );
    assert!(leakscan_lines(&agent.stderr).is_empty(), "{}", agent.stderr);
    no_leaks_reported("faults_new");
}

/// Exactly one leakscan line, the tracking-off warning, naming `why`.
fn one_tracking_off_warning(stderr: &str, why: &str) {
    let lines = leakscan_lines(stderr);
    let off: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("leak tracking is off for the rest of this process"))
        .collect();
    assert_eq!(off.len(), 1, "expected one tracking-off warning:\n{stderr}");
    assert!(off[0].contains(why), "{}", off[0]);
}

#[test]
fn index_out_of_memory_switches_tracking_off_once() {
    // No scanner thread: it would allocate (its glibc arena, a live scan's
    // scratch) at moments of its own, and the fixture's arithmetic on its
    // address space, which makes exactly the index run out, would race.
    let quiet = "scan_interval=0:control_socket=0";
    let (out, agent) = same_as_bare("faults_index_oom", "fault_oom.c", &["index"], quiet);
    assert_lines(
        &out,
        &["1 GiB block: ok", "small blocks: 1000 of 1000, realloc ok"],
    );
    one_tracking_off_warning(&agent.stderr, "out of memory for the block index");
    assert_eq!(leakscan_lines(&agent.stderr).len(), 1, "{}", agent.stderr);
    // No check ran after tracking went off: no report claims a clean run
    // (or names leaks it could no longer see).
    let dir = workdir_of("faults_index_oom");
    let reports = dir.join("reports");
    // (The directory exists only if the scanner thread got to binding its
    // socket before the exit.)
    let json: Vec<_> = if reports.exists() {
        entries(&reports)
    } else {
        Vec::new()
    }
    .into_iter()
    .filter(|n| n.ends_with(".json"))
    .collect();
    assert!(
        json.is_empty(),
        "a report after tracking went off: {json:?}"
    );
    assert!(!dir.join("report.json").exists());
    let traced = fs::read_to_string(dir.join("leakscan.stderr")).unwrap();
    one_tracking_off_warning(&traced, "out of memory for the block index");

    // In text, `leakscan run` says why there is no report.
    let binary = dir.join("fault_oom");
    let mut cmd = leakscan();
    cmd.env("LEAKSCAN_OPTIONS", quiet)
        .args(["run", "--format", "text", "--"])
        .arg(&binary)
        .arg("index");
    let text = run(&mut cmd, &dir, "leakscan-text", FIXTURE_TIME_LIMIT);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stderr.contains("no report from")
            && text.stderr.contains("leak tracking was switched off"),
        "{}",
        text.stderr
    );
}

fn workdir_of(test: &str) -> PathBuf {
    // workdir() clears the directory; this only names it.
    let exe = Path::new(env!("CARGO_BIN_EXE_leakscan"));
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("fixture-build")
        .join(test)
}

#[test]
fn a_full_address_space_at_exit_leaves_the_program_alone() {
    // Until leakscan had an emergency reserve, its own heap failing at exit
    // made Rust abort the program (SIGABRT instead of its exit status 3).
    let (out, agent) = same_as_bare("faults_full", "fault_oom.c", &["full"], "");
    assert_lines(
        &out,
        &[
            "1048576-byte blocks until NULL errno=ENOMEM",
            "16-byte blocks until NULL errno=ENOMEM",
        ],
    );
    assert_eq!(agent.code, 3, "{}", agent.stderr);
    one_tracking_off_warning(&agent.stderr, "out of memory");
    assert_eq!(leakscan_lines(&agent.stderr).len(), 1, "{}", agent.stderr);
}

/// Whether this process may become another user (only root may).
fn can_switch_users(test: &str) -> bool {
    let root = leakscan_platform::user::uid() == 0;
    if !root {
        eprintln!("{test}: NOT RUN (needs root to become another user)");
    }
    root
}

/// A directory everyone may enter, outside the (root-only) target tree,
/// with copies of the agent and `binary`; removed on drop.
struct Shared {
    dir: PathBuf,
    lib: PathBuf,
    binary: PathBuf,
}

impl Shared {
    fn new(test: &str, binary: &Path) -> Shared {
        let dir = std::env::temp_dir().join(format!("leakscan-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let lib = dir.join("libleakscan.so");
        fs::copy(agent_library(), &lib).unwrap();
        let copy = dir.join(binary.file_name().unwrap());
        fs::copy(binary, &copy).unwrap();
        for f in [&lib, &copy] {
            fs::set_permissions(f, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Shared {
            dir,
            lib,
            binary: copy,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

const NOBODY: u32 = 65534;

/// `program` run as nobody, with `vars` set for it alone: with LD_PRELOAD
/// set for setpriv itself, leakscan's scanner thread would be in setpriv,
/// whose per-thread capabilities then make glibc's setxid broadcast fail.
pub fn as_nobody(program: &Path, vars: &[(&str, &std::ffi::OsStr)]) -> Command {
    let mut cmd = Command::new(find_program("setpriv"));
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(find_program("env"));
    for (k, v) in vars {
        let mut item = std::ffi::OsString::from(format!("{k}="));
        item.push(v);
        cmd.arg(item);
    }
    cmd.arg(program)
        .stdin(Stdio::null())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("LD_PRELOAD")
        .env_remove("LEAKSCAN_OPTIONS");
    cmd
}

#[test]
fn an_unwritable_report_directory_is_one_line_and_the_program_goes_on() {
    if !can_switch_users("an_unwritable_report_directory_is_one_line_and_the_program_goes_on") {
        return;
    }
    let dir = workdir("faults_unwritable");
    let binary = build(&Spec::load("direct_leak.c"), &dir);
    let shared = Shared::new("unwritable", &binary);
    // Ours (nobody's) and private, but read-only: root would ignore the
    // mode, so the program runs as nobody.
    let reports = shared.dir.join("reports");
    fs::create_dir(&reports).unwrap();
    std::os::unix::fs::chown(&reports, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(&reports, fs::Permissions::from_mode(0o500)).unwrap();
    let plain = run(
        &mut as_nobody(&shared.binary, &[]),
        &dir,
        "bare",
        FIXTURE_TIME_LIMIT,
    );
    let options = format!("report_dir={}", reports.display());
    let mut cmd = as_nobody(
        &shared.binary,
        &[
            ("LD_PRELOAD", shared.lib.as_os_str()),
            ("LEAKSCAN_OPTIONS", options.as_ref()),
        ],
    );
    let agent = run(&mut cmd, &dir, "preloaded", FIXTURE_TIME_LIMIT);
    assert_eq!(
        (agent.code, &agent.stdout),
        (plain.code, &plain.stdout),
        "{}",
        agent.stderr
    );
    // One line for the report; the control socket, if the scanner got to
    // binding it before the exit, fails the same way in a line of its own.
    let lines = leakscan_lines(&agent.stderr);
    let report_lines: Vec<_> = lines
        .iter()
        .filter(|l| {
            l.starts_with(&format!(
                "leakscan: cannot write report {}/",
                reports.display()
            ))
        })
        .collect();
    assert_eq!(report_lines.len(), 1, "{}", agent.stderr);
    assert!(
        lines.iter().all(|l| l.contains("Permission denied")),
        "{}",
        agent.stderr
    );
    assert!(entries(&reports).is_empty(), "{:?}", entries(&reports));
}

#[test]
fn a_full_disk_is_one_line_no_half_report_and_no_sigxfsz() {
    // RLIMIT_FSIZE makes the disk "full" for this process without
    // privileges: a write past it fails with EFBIG and raises SIGXFSZ,
    // whose default action kills. leakscan must report the error and keep
    // the signal to itself; the bare program never writes that much.
    let dir = workdir("faults_full_disk");
    let binary = build(&Spec::load("direct_leak.c"), &dir);
    let reports = dir.join("reports");
    let prlimit = find_program("prlimit");
    let limited = |cmd: &mut Command| {
        let mut wrapped = Command::new(&prlimit);
        wrapped
            .arg("--fsize=1000")
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::null());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        wrapped
    };
    let plain = run(
        &mut limited(&mut bare(&binary)),
        &dir,
        "bare",
        FIXTURE_TIME_LIMIT,
    );
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let options = format!("report_dir={}", reports.display());
    let agent = run(
        &mut limited(&mut preloaded(&binary, &[], &options)),
        &dir,
        "preloaded",
        FIXTURE_TIME_LIMIT,
    );
    assert_eq!(
        (agent.code, &agent.stdout),
        (plain.code, &plain.stdout),
        "{}",
        agent.stderr
    );
    let lines = leakscan_lines(&agent.stderr);
    assert_eq!(lines.len(), 1, "{}", agent.stderr);
    assert!(lines[0].contains("cannot write report"), "{}", lines[0]);
    assert!(lines[0].contains("File too large"), "{}", lines[0]);
    // Neither the report nor its temporary file is left.
    assert!(entries(&reports).is_empty(), "{:?}", entries(&reports));
}

#[test]
fn unsafe_report_directories_are_refused_in_one_line() {
    let dir = workdir("faults_unsafe_dirs");
    let binary = build(&Spec::load("direct_leak.c"), &dir);
    let plain = run(&mut bare(&binary), &dir, "bare", FIXTURE_TIME_LIMIT);
    let real = dir.join("real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let shared = dir.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let foreign = dir.join("foreign");
    fs::create_dir(&foreign).unwrap();
    fs::set_permissions(&foreign, fs::Permissions::from_mode(0o700)).unwrap();
    let foreign_owned = std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).is_ok();
    let mut cases = vec![
        (&link, "is a symbolic link"),
        (&shared, "is writable by other users"),
    ];
    if foreign_owned {
        cases.push((&foreign, "belongs to another user"));
    } else {
        eprintln!("unsafe_report_directories_are_refused_in_one_line: foreign case NOT RUN (chown needs root)");
    }
    for (i, (reports, why)) in cases.into_iter().enumerate() {
        let options = format!("report_dir={}", reports.display());
        let agent = run(
            &mut preloaded(&binary, &[], &options),
            &dir,
            &format!("case{i}"),
            FIXTURE_TIME_LIMIT,
        );
        assert_eq!((agent.code, &agent.stdout), (plain.code, &plain.stdout));
        let lines = leakscan_lines(&agent.stderr);
        let expected = format!(
            "leakscan: report directory {} {why}; refusing to write reports there",
            reports.display()
        );
        assert!(lines.contains(&expected.as_str()), "{}", agent.stderr);
        assert!(
            lines.iter().all(|l| l.contains("refusing")),
            "{}",
            agent.stderr
        );
        assert!(entries(reports).is_empty(), "{:?}", entries(reports));
    }
    assert!(entries(&real).is_empty(), "written through the symlink");
    // `leakscan run` refuses the same directories before starting anything.
    let mut cmd = leakscan();
    cmd.env("LEAKSCAN_OPTIONS", format!("report_dir={}", link.display()))
        .args(["run", "--"])
        .arg(&binary);
    let cli = run(&mut cmd, &dir, "run-link", FIXTURE_TIME_LIMIT);
    assert_eq!(cli.code, 2, "{}", cli.stderr);
    assert!(cli.stderr.contains("is a symbolic link"), "{}", cli.stderr);
    assert!(cli.stdout.is_empty(), "the program ran");
}

#[test]
fn a_symlink_planted_at_the_report_name_is_replaced_not_followed() {
    let dir = workdir("faults_planted");
    let binary = build(&Spec::load("fault_plant_symlink.c"), &dir);
    let reports = dir.join("reports");
    fs::create_dir(&reports).unwrap();
    fs::set_permissions(&reports, fs::Permissions::from_mode(0o700)).unwrap();
    let outside = dir.join("precious.txt");
    fs::write(&outside, "precious\n").unwrap();
    let options = format!("report_dir={}", reports.display());
    let args = [reports.to_str().unwrap(), outside.to_str().unwrap()];
    let agent = run(
        &mut preloaded(&binary, &args, &options),
        &dir,
        "preloaded",
        FIXTURE_TIME_LIMIT,
    );
    assert_eq!(agent.code, 0, "{}", agent.stderr);
    let out = String::from_utf8_lossy(&agent.stdout);
    let name = out
        .strip_prefix("planted ")
        .map(str::trim)
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(fs::read_to_string(&outside).unwrap(), "precious\n");
    let path = reports.join(name);
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.is_file(), "{name} is still a symlink");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let report = Report::from_json(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(report.summary.direct_blocks, 1);
}

/// `<pid>.json` files in `reports` all parse; returns how many there were
/// and how many temporary files a killed writer left.
fn check_whole(reports: &Path) -> (usize, usize) {
    let (mut whole, mut temporaries) = (0, 0);
    for name in entries(reports) {
        let path = reports.join(&name);
        if name.starts_with('.') && name.ends_with(".tmp") {
            temporaries += 1;
        } else if name.ends_with(".json") {
            let text = fs::read_to_string(&path).unwrap();
            Report::from_json(&text)
                .unwrap_or_else(|e| panic!("{name} is not a whole report: {e}\n{text}"));
            whole += 1;
        }
    }
    (whole, temporaries)
}

/// A small deterministic generator for kill times (no dependency).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The number of SIGKILL rounds: `LEAKSCAN_FAULT_KILLS` (the soak), else 25.
fn kill_rounds() -> usize {
    std::env::var("LEAKSCAN_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

#[test]
fn sigkill_while_rewriting_the_report_leaves_it_whole() {
    let dir = workdir("faults_sigkill");
    let binary = build(&Spec::load("fault_rewrite.c"), &dir);
    let reports = dir.join("reports");
    let options = format!(
        "report_dir={}:scan_interval=0.02:min_age=0:max_objects=100000:verbosity=0",
        reports.display()
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let (mut with_report, mut with_temporary) = (0, 0);
    let rounds = kill_rounds();
    for _ in 0..rounds {
        let mut child = preloaded(&binary, &[], &options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Periodic reports start after two scans; kill somewhere in the
        // first 1.8 s, while reports of a growing size (hundreds of KiB)
        // are rewritten every 20 ms or so.
        let wait = Duration::from_millis(200 + next_random(&mut seed) % 1600);
        let started = Instant::now();
        while started.elapsed() < wait {
            thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let (whole, temporaries) = check_whole(&reports);
        with_report += usize::from(whole > 0);
        with_temporary += usize::from(temporaries > 0);
        // `leakscan report` over the directory shows the whole reports and
        // skips the temporaries.
        let mut cmd = leakscan();
        cmd.args(["report", "--format", "json", "--dir"])
            .arg(&reports);
        let listed = run(&mut cmd, &dir, "report", FIXTURE_TIME_LIMIT);
        assert_eq!(listed.code, 0, "{}", listed.stderr);
        assert!(listed.stderr.is_empty(), "{}", listed.stderr);
        for name in entries(&reports) {
            fs::remove_file(reports.join(name)).unwrap();
        }
    }
    eprintln!(
        "sigkill: {rounds} kills, {with_report} left a whole report, \
         {with_temporary} left a temporary file (ignored)"
    );
    // The test must have killed processes that were writing reports.
    assert!(
        with_report >= rounds / 3,
        "only {with_report} of {rounds} runs had written a report before the kill"
    );
}
