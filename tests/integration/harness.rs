//! The harness: fixture headers, building, running with a time limit, and
//! checking a report against what a fixture's header expects.
//!
//! A fixture states its expectation in the `//` comment lines that open the
//! file. A line `// key: value` whose key is lowercase letters and dashes
//! must be one of these keys; any other line is prose:
//!
//! ```text
//! leakscan-test: WHAT           what the fixture is about (a test fixture)
//! leakscan-lib: WHAT            a library built for another fixture, not a test
//! expect: KEY=N KEY=N ...       summary fields, each checked exactly
//! expect-stack: FUNCTION        must appear in some leak group's stack (repeatable)
//! expect-sizes: N N ...         the multiset of leaked object sizes
//! expect-processes: N           processes in the merged report: 1 + children
//! expect-exit: N                exit status, bare and under --error-exitcode 0
//!                               (128 + signal when killed); default 0
//! build: FLAGS                  extra compiler flags, after the source (the
//!                               compiler runs in the binary's directory)
//! build-lib: SOURCE             another fixture built as lib<stem>.so next to
//!                               the binary (repeatable)
//! ```
//!
//! Fixtures without `expect:` (the ones that die of a signal) are run only
//! by the CLI tests: no report is promised for them.

use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use leakscan_core::report::{Report, Summary, Trigger};

/// How long a fixture may run, bare or under leakscan.
pub const FIXTURE_TIME_LIMIT: Duration = Duration::from_secs(120);

/// Held by the tests that keep both CPUs of a CI machine busy for tens of
/// seconds (the 60 s churning server, the 8- and 16-thread stress tests,
/// the real programs): they run one at a time, next to the light tests,
/// so none of them starves the others' scanner threads and deadlines.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The built `leakscan` binary, with the caller's leakscan settings removed.
/// Panics when the agent library is not next to it.
pub fn leakscan() -> Command {
    let exe = Path::new(env!("CARGO_BIN_EXE_leakscan"));
    let lib = exe.with_file_name("libleakscan.so");
    if !lib.exists() {
        panic!(
            "build the agent first: cargo build --release --workspace (no {}; \
             build it with the profile the tests use)",
            lib.display()
        );
    }
    let mut cmd = Command::new(exe);
    cmd.env_remove("LEAKSCAN_LIB")
        .env_remove("LEAKSCAN_OPTIONS")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null());
    cmd
}

/// [`leakscan`] pointed at the report directory `reports` (where the
/// commands that talk to running processes find their sockets).
pub fn leakscan_for(reports: &Path) -> Command {
    let mut cmd = leakscan();
    cmd.env(
        "LEAKSCAN_OPTIONS",
        format!("report_dir={}", reports.display()),
    );
    cmd
}

/// `leakscan run` writing the JSON report to the path that follows, with
/// the program's own exit status whatever it leaked.
pub const RUN_JSON_TO: [&str; 6] = [
    "run",
    "--format",
    "json",
    "--error-exitcode",
    "0",
    "--output",
];

/// `binary` run in `dir` with the agent preloaded, its reports in
/// `dir/reports`, quiet, plus `options` (LEAKSCAN_OPTIONS syntax).
pub fn preloaded(binary: &Path, dir: &Path, options: &str) -> Command {
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir).env("LD_PRELOAD", agent_library()).env(
        "LEAKSCAN_OPTIONS",
        format!(
            "report_dir={}:verbosity=0:{options}",
            dir.join("reports").display()
        ),
    );
    cmd
}

/// The agent library next to the `leakscan` binary.
pub fn agent_library() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_leakscan")).with_file_name("libleakscan.so")
}

/// `program` run directly, for comparison with a run under leakscan.
pub fn bare(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    cmd
}

/// A fresh, empty directory for one test: `target/fixture-build/<test>`.
pub fn workdir(test: &str) -> PathBuf {
    // The binary is <target>/<profile>/leakscan.
    let exe = Path::new(env!("CARGO_BIN_EXE_leakscan"));
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("leakscan lives in a target directory");
    let dir = target.join("fixture-build").join(test);
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("cannot clear {}: {e}", dir.display()));
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What a fixture's header expects (see the module comment for the grammar).
#[derive(Debug, Default)]
pub struct Spec {
    pub source: PathBuf,
    pub expect: Vec<(String, u64)>,
    pub stacks: Vec<String>,
    pub sizes: Option<Vec<u64>>,
    pub processes: Option<usize>,
    pub exit: i32,
    pub build: Vec<String>,
    pub libs: Vec<String>,
}

impl Spec {
    /// Parse the header of `tests/fixtures/<name>`; panics on a malformed one.
    pub fn load(name: &str) -> Spec {
        let source = fixtures_dir().join(name);
        let text = fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", source.display()));
        let mut spec = Spec {
            source,
            ..Spec::default()
        };
        let header = text.lines().map_while(|line| line.strip_prefix("//"));
        for (key, value) in header.filter_map(header_entry) {
            spec.set(key, value)
                .unwrap_or_else(|e| panic!("{name}: `{key}: {value}`: {e}"));
        }
        spec
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "leakscan-test" | "leakscan-lib" => {}
            "expect" => {
                for pair in value.split_whitespace() {
                    let (field, n) = pair.split_once('=').ok_or("expected KEY=N")?;
                    if summary_field(&Summary::default(), field).is_none() {
                        return Err(format!("`{field}` is not a summary field"));
                    }
                    self.expect.push((field.to_string(), number(n)?));
                }
            }
            "expect-stack" => self.stacks.push(value.to_string()),
            "expect-sizes" => {
                let sizes = value
                    .split_whitespace()
                    .map(number)
                    .collect::<Result<_, _>>()?;
                self.sizes = Some(sizes);
            }
            "expect-processes" => self.processes = Some(number(value)?),
            "expect-exit" => self.exit = number(value)?,
            "build" => self
                .build
                .extend(value.split_whitespace().map(String::from)),
            "build-lib" => self.libs.push(value.to_string()),
            _ => return Err("unknown header key".to_string()),
        }
        Ok(())
    }

    /// Whether a run under leakscan promises a report to check.
    pub fn has_report(&self) -> bool {
        !self.expect.is_empty()
    }

    fn is_cpp(&self) -> bool {
        self.source.extension().is_some_and(|e| e == "cpp")
    }

    fn stem(&self) -> &str {
        self.source
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("fixture names are UTF-8")
    }
}

/// `key: value` when the line names a key (lowercase letters and dashes).
fn header_entry(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.trim().split_once(':')?;
    let is_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    is_key.then(|| (key, value.trim()))
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a number"))
}

/// The summary counter named `field`.
pub fn summary_field(summary: &Summary, field: &str) -> Option<u64> {
    Some(match field {
        "leaked_blocks" => summary.leaked_blocks,
        "leaked_bytes" => summary.leaked_bytes,
        "direct_blocks" => summary.direct_blocks,
        "direct_bytes" => summary.direct_bytes,
        "indirect_blocks" => summary.indirect_blocks,
        "indirect_bytes" => summary.indirect_bytes,
        "suppressed_blocks" => summary.suppressed_blocks,
        "suppressed_bytes" => summary.suppressed_bytes,
        _ => return None,
    })
}

/// Compile a fixture and the libraries it names into `dir`; returns the binary.
pub fn build(spec: &Spec, dir: &Path) -> PathBuf {
    for lib in &spec.libs {
        let lib = Spec::load(lib);
        let stem = lib.stem();
        let name = if stem.starts_with("lib") {
            format!("{stem}.so")
        } else {
            format!("lib{stem}.so")
        };
        compile(&lib, &dir.join(name), &["-fPIC", "-shared"]);
    }
    let binary = dir.join(spec.stem());
    compile(spec, &binary, &[]);
    binary
}

fn compile(spec: &Spec, output: &Path, extra: &[&str]) {
    let compiler = if spec.is_cpp() { "g++" } else { "gcc" };
    // In the output's directory, so that `build: -L.` finds the `build-lib`s.
    let out = Command::new(compiler)
        .current_dir(output.parent().expect("output in a directory"))
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-Wall"])
        .args(extra)
        .arg("-o")
        .arg(output)
        .arg(&spec.source)
        .args(&spec.build)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} failed on {}:\n{}",
        spec.source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a finished command left behind.
pub struct Run {
    /// The exit status as a shell reports it: 128 + signal when killed.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Run `cmd` in `dir` with a time limit, its output going to
/// `dir/<label>.stdout` and `dir/<label>.stderr`.
pub fn run(cmd: &mut Command, dir: &Path, label: &str, limit: Duration) -> Run {
    let stdout_path = dir.join(format!("{label}.stdout"));
    let stderr_path = dir.join(format!("{label}.stderr"));
    let create =
        |path: &Path| File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut child = cmd
        .current_dir(dir)
        .stdout(create(&stdout_path))
        .stderr(create(&stderr_path))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let code = status
        .code()
        .or(status.signal().map(|s| 128 + s))
        .expect("exited or killed");
    Run {
        code,
        stdout: fs::read(&stdout_path).expect("read stdout"),
        stderr: fs::read_to_string(&stderr_path).expect("read stderr"),
    }
}

/// A fixture run under leakscan, with its report.
pub struct Checked {
    pub run: Run,
    pub report: Report,
    pub report_text: String,
    /// The test's directory and the fixture's binary in it.
    pub dir: PathBuf,
    pub binary: PathBuf,
}

/// Build fixture `name` for test `test`, run it bare and under
/// `leakscan run --format json`, and check the report against its header.
pub fn check_fixture(test: &str, name: &str) -> Checked {
    let spec = Spec::load(name);
    assert!(spec.has_report(), "{name} has no `expect:` line");
    let dir = workdir(test);
    let binary = build(&spec, &dir);

    let plain = run(&mut bare(&binary), &dir, "bare", FIXTURE_TIME_LIMIT);
    assert_eq!(
        plain.code, spec.exit,
        "the fixture {name} itself is broken: run bare it exits {}, its header says {}\n{}",
        plain.code, spec.exit, plain.stderr
    );

    let report_path = dir.join("report.json");
    let mut cmd = leakscan();
    cmd.args(["run", "--format", "json", "--output"])
        .arg(&report_path)
        .args(["--error-exitcode", "0", "--"])
        .arg(&binary);
    let traced = run(&mut cmd, &dir, "leakscan", FIXTURE_TIME_LIMIT);
    let report_text = fs::read_to_string(&report_path).unwrap_or_default();
    assert_eq!(
        traced.code, spec.exit,
        "{name} under leakscan exits {}, expected {}\nstderr:\n{}\nreport:\n{report_text}",
        traced.code, spec.exit, traced.stderr
    );
    let report = read_report(&report_path, &traced.stderr);

    let failures = check_report(&spec, &report);
    assert!(
        failures.is_empty(),
        "{name}: the report does not match the fixture's header:\n  {}\nreport:\n{report_text}",
        failures.join("\n  ")
    );
    Checked {
        run: traced,
        report,
        report_text,
        dir,
        binary,
    }
}

/// Parse a report file; the panic shows what leakscan printed.
pub fn read_report(path: &Path, leakscan_stderr: &str) -> Report {
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "no report at {}: {e}\nleakscan stderr:\n{leakscan_stderr}",
            path.display()
        )
    });
    Report::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// Everything in `report` that contradicts `spec` or the report contract.
pub fn check_report(spec: &Spec, report: &Report) -> Vec<String> {
    let mut failures = contract_violations(report);
    for (field, want) in &spec.expect {
        let got = summary_field(&report.summary, field).expect("checked when parsed");
        if got != *want {
            failures.push(format!("summary.{field} is {got}, expected {want}"));
        }
    }
    for function in &spec.stacks {
        let found = report
            .leaks
            .iter()
            .flat_map(|g| &g.stack)
            .any(|f| f.function.as_deref() == Some(function));
        if !found {
            failures.push(format!("no leak stack contains function `{function}`"));
        }
    }
    if let Some(want) = &spec.sizes {
        let mut want = want.clone();
        want.sort_unstable();
        let mut got: Vec<u64> = report
            .leaks
            .iter()
            .flat_map(|g| &g.objects)
            .map(|o| o.size)
            .collect();
        got.sort_unstable();
        if got != want {
            failures.push(format!(
                "leaked object sizes are {got:?}, expected {want:?}"
            ));
        }
    }
    if let Some(want) = spec.processes {
        let got = 1 + report.children.len();
        if got != want {
            failures.push(format!(
                "the report covers {got} processes, expected {want}"
            ));
        }
    }
    failures
}

/// Consistency the schema promises for any report: totals add up, groups
/// are sorted, an exit report says so.
fn contract_violations(report: &Report) -> Vec<String> {
    let mut failures = Vec::new();
    let s = &report.summary;
    if s.leaked_blocks != s.direct_blocks + s.indirect_blocks
        || s.leaked_bytes != s.direct_bytes + s.indirect_bytes
    {
        failures.push("summary: leaked is not direct + indirect".to_string());
    }
    let mut from_groups = Summary::default();
    for group in &report.leaks {
        from_groups.add(group.kind, group.count, group.bytes);
        let listed: u64 = group.objects.iter().map(|o| o.size).sum();
        if group.objects.len() as u64 > group.count
            || (group.objects.len() as u64 == group.count && listed != group.bytes)
        {
            failures.push(format!(
                "a {} group of {} blocks / {} bytes lists {} objects of {listed} bytes",
                group.kind.as_str(),
                group.count,
                group.bytes,
                group.objects.len()
            ));
        }
    }
    for field in [
        "direct_blocks",
        "direct_bytes",
        "indirect_blocks",
        "indirect_bytes",
    ] {
        let (total, added) = (summary_field(s, field), summary_field(&from_groups, field));
        if total != added {
            failures.push(format!(
                "summary.{field} is {total:?}, the leak groups add up to {added:?}"
            ));
        }
    }
    if report.leaks.windows(2).any(|w| w[0].bytes < w[1].bytes) {
        failures.push("leaks are not sorted by bytes, largest first".to_string());
    }
    if report.scan.trigger != Trigger::Exit {
        failures.push(format!(
            "scan.trigger is {:?}, expected exit",
            report.scan.trigger
        ));
    }
    failures
}

/// `name` on PATH, or a panic saying how to install it.
/// Every thread's stack of the (hung) process `pid`, from gdb, for a
/// failure message: what a hang was waiting on.
pub fn thread_backtraces(pid: u32) -> String {
    let mut gdb = Command::new(find_program("gdb"));
    gdb.args([
        "-batch",
        "-nx",
        "-p",
        &pid.to_string(),
        "-ex",
        "thread apply all bt",
    ]);
    match gdb.stdin(Stdio::null()).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(gdb could not run: {e})"),
    }
}

pub fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run scripts/install-deps"))
}
