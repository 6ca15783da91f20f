//! Hostile input: whatever a user, a script or another process throws at
//! leakscan — report and suppression files, command lines,
//! `LEAKSCAN_OPTIONS`, control-socket requests — the answer is a clear
//! error (exit 2 and one line naming what was wrong) or the normal result,
//! never a panic, a hang, or a change in the program being watched.
//!
//! The cases are random but reproducible: each test prints its seed and
//! case on failure, and `LEAKSCAN_FUZZ_SEED=N` replays it.
//! `LEAKSCAN_FUZZ_SECS=S` turns each randomized test into a fuzz run of S
//! seconds (see docs/testing.md); the parsers themselves are fuzzed much
//! faster, in process, by the unit tests of `leakscan-core`.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use leakscan_core::control::{Reply, MAX_REQUEST};
use leakscan_core::options::Options;
use leakscan_core::report::Report;

use crate::harness::{
    agent_library, bare, build, leakscan, leakscan_for, preloaded, workdir, Spec, RUN_JSON_TO,
};

#[path = "../../crates/core/src/test_rng.rs"]
mod test_rng;
use test_rng::{fuzz_cases, seed_from_env, Rng};

/// How long one leakscan command may take here, however bad its input.
const LIMIT: Duration = Duration::from_secs(20);

/// What a bounded run left.
struct Out {
    /// Exit status, or 128 + signal.
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

/// Run `cmd` with `input` on stdin, killed (and the test failed) past
/// `limit`: a hang is a failure, not a stuck suite.
fn run_bounded(cmd: &mut Command, input: Option<Vec<u8>>, limit: Duration, what: &str) -> Out {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let feeder = child.stdin.take().map(|mut stdin| {
        let data = input.unwrap_or_default();
        // leakscan may stop reading early (bad input): a broken pipe is fine.
        thread::spawn(move || drop(stdin.write_all(&data)))
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: hang: not finished within {limit:?}");
        }
        thread::sleep(Duration::from_millis(1));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Out {
        code: status.code().or(status.signal().map(|s| 128 + s)).unwrap(),
        stdout: out.join().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

/// Never a panic (101 with unwinding, SIGABRT with panic=abort) or any
/// other signal.
fn assert_no_crash(out: &Out, what: &str) {
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "{what}: panicked:\n{}",
        out.stderr
    );
    assert!(
        out.code != 101 && out.code < 128,
        "{what}: crashed with status {}:\n{}",
        out.code,
        out.stderr
    );
}

/// Exit 2 and one `leakscan:` line on stderr, naming `name`.
fn assert_one_line_error(out: &Out, name: &str, what: &str) {
    assert_no_crash(out, what);
    assert_eq!(out.code, 2, "{what}: exit {}:\n{}", out.code, out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("leakscan: ") && lines[0].len() < 400,
        "{what}: not one short error line:\n{}",
        out.stderr
    );
    assert!(
        lines[0].contains(name),
        "{what}: does not name {name}: {}",
        lines[0]
    );
}

/// `leakscan` confined to `dir`: its report directory and cwd.
fn leakscan_in(dir: &Path) -> Command {
    let mut cmd = leakscan();
    cmd.current_dir(dir).env(
        "LEAKSCAN_OPTIONS",
        format!("report_dir={}", dir.join("reports").display()),
    );
    cmd
}

/// A real report: `direct_leak` run under `leakscan run`.
fn real_report(dir: &Path) -> String {
    let binary = build(&Spec::load("direct_leak.c"), dir);
    let path = dir.join("real.json");
    let out = run_bounded(
        leakscan_in(dir)
            .args(RUN_JSON_TO)
            .arg(&path)
            .arg("--")
            .arg(&binary),
        None,
        LIMIT,
        "leakscan run direct_leak",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = fs::read_to_string(&path).unwrap();
    let report = Report::from_json(&text).unwrap();
    // Compact: fewer cut points, the same structure.
    serde_json::to_string(&report).unwrap()
}

/// Every way a user can hand leakscan a report: as FILE, on stdin, as a
/// baseline, in a --dir. Each must refuse `bytes` with one line naming it.
fn assert_refused_everywhere(dir: &Path, bytes: &[u8], what: &str) {
    let file = dir.join("bad.json");
    fs::write(&file, bytes).unwrap();
    let out = run_bounded(
        leakscan_in(dir).args(["report", "bad.json"]),
        None,
        LIMIT,
        what,
    );
    assert_one_line_error(&out, "bad.json", &format!("report FILE: {what}"));
    let out = run_bounded(
        leakscan_in(dir).args(["report", "-"]),
        Some(bytes.to_vec()),
        LIMIT,
        what,
    );
    assert_one_line_error(&out, "<stdin>", &format!("report -: {what}"));
    let out = run_bounded(
        leakscan_in(dir).args(["report", "good.json", "--baseline", "bad.json"]),
        None,
        LIMIT,
        what,
    );
    assert_one_line_error(&out, "bad.json", &format!("--baseline: {what}"));
    // In a directory the others are still shown; the bad one is named.
    let d = dir.join("d");
    fs::write(d.join("2.json"), bytes).unwrap();
    let out = run_bounded(
        leakscan_in(dir).args(["report", "--dir", "d", "--format", "json"]),
        None,
        LIMIT,
        what,
    );
    assert_one_line_error(&out, "2.json", &format!("--dir: {what}"));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--dir: {what}: the good report is not shown: {e}"));
    assert_eq!(shown["reports"].as_array().map(Vec::len), Some(1), "{what}");
}

#[test]
fn report_files_cut_anywhere_or_garbled_fail_in_one_line() {
    let dir = workdir("hostile_reports");
    let good = real_report(&dir);
    fs::write(dir.join("good.json"), &good).unwrap();
    fs::create_dir(dir.join("d")).unwrap();
    fs::write(dir.join("d/1.json"), &good).unwrap();

    // Truncated at every cut point, as FILE (the cheapest way in; the
    // other ways share the reader, and get a sample of cut points).
    let file = dir.join("cut.json");
    for cut in 0..good.len() {
        fs::write(&file, &good.as_bytes()[..cut]).unwrap();
        let what = format!("cut at {cut} of {}", good.len());
        let out = run_bounded(
            leakscan_in(&dir).args(["report", "cut.json"]),
            None,
            LIMIT,
            &what,
        );
        assert_one_line_error(&out, "cut.json", &what);
    }
    for cut in (0..good.len()).step_by(97) {
        assert_refused_everywhere(&dir, &good.as_bytes()[..cut], &format!("cut at {cut}"));
    }

    // Valid JSON of the wrong shape, version or size; and garbage.
    let mut wrong = serde_json::from_str::<serde_json::Value>(&good).unwrap();
    wrong["leaks"][0]["objects"] = serde_json::json!("many");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("an array", b"[1,2,3]".to_vec()),
        ("a string", b"\"report\"".to_vec()),
        (
            "schema_version 2",
            good.replacen("\"schema_version\":1", "\"schema_version\":2", 1)
                .into_bytes(),
        ),
        (
            "schema_version text",
            good.replacen("\"schema_version\":1", "\"schema_version\":\"1\"", 1)
                .into_bytes(),
        ),
        (
            "huge number",
            good.replacen("\"pid\":", "\"pid\":1e999999,\"x\":", 1)
                .into_bytes(),
        ),
        (
            "u64 overflow",
            good.replacen("\"count\":1", "\"count\":18446744073709551616", 1)
                .into_bytes(),
        ),
        ("wrong type", wrong.to_string().into_bytes()),
        ("deep arrays", "[".repeat(1_000_000).into_bytes()),
        (
            "deep objects",
            format!(
                "{{\"schema_version\":1,\"tool\":{}",
                "{\"a\":".repeat(200_000)
            )
            .into_bytes(),
        ),
        (
            "a lone surrogate",
            good.replacen("\"leakscan\"", "\"\\ud800\"", 1).into_bytes(),
        ),
        (
            "not UTF-8",
            good.replacen("leakscan", "leak\u{1}scan", 1)
                .into_bytes()
                .into_iter()
                .map(|b| if b == 1 { 0xff } else { b })
                .collect(),
        ),
        ("trailing garbage", format!("{good} {{}}").into_bytes()),
        ("NUL bytes", vec![0; 4096]),
    ];
    for (what, bytes) in &cases {
        assert_refused_everywhere(&dir, bytes, what);
    }
    let seed = seed_from_env(0x4e_90_27);
    for case in fuzz_cases(12) {
        let mut rng = Rng::for_case(seed, case);
        let bytes: Vec<u8> = (0..rng.below(1 << 16)).map(|_| rng.next() as u8).collect();
        assert_refused_everywhere(
            &dir,
            &bytes,
            &format!("random bytes, seed {seed:#x} case {case}"),
        );
    }

    // Endless or enormous inputs: refused at once, not read forever (a
    // short limit: reading one for long would also fill the memory).
    let quick = Duration::from_secs(5);
    for dev in ["/dev/zero", "/dev/urandom"] {
        for args in [
            vec!["report", dev],
            vec!["report", "good.json", "--baseline", dev],
        ] {
            let out = run_bounded(leakscan_in(&dir).args(&args), None, quick, dev);
            assert_one_line_error(&out, dev, &format!("{args:?}"));
        }
        let out = run_bounded(
            leakscan_in(&dir).args(["report", "good.json", "--suppressions", dev]),
            None,
            quick,
            dev,
        );
        assert_one_line_error(&out, dev, "--suppressions");
    }
    // A sparse file one byte over the limit: refused by its size.
    let big = dir.join("big.json");
    let f = fs::File::create(&big).unwrap();
    f.set_len((1 << 30) + 1).unwrap();
    for args in [
        vec!["report", "big.json"],
        vec!["report", "good.json", "--baseline", "big.json"],
        vec!["report", "good.json", "--suppressions", "big.json"],
    ] {
        let out = run_bounded(leakscan_in(&dir).args(&args), None, LIMIT, "big");
        assert_one_line_error(&out, "big.json", &format!("{args:?}"));
        assert!(out.stderr.contains("larger than"), "{}", out.stderr);
    }
    fs::remove_file(&big).unwrap();

    // The good report still reads, whole and in a directory.
    let out = run_bounded(
        leakscan_in(&dir).args(["report", "good.json", "--format", "json"]),
        None,
        LIMIT,
        "good",
    );
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
}

/// A hand-edited report must render in every format and view without a
/// panic: counts at their limits, odd strings, an empty stack.
#[test]
fn odd_but_valid_reports_render_in_every_format() {
    let dir = workdir("hostile_odd_reports");
    let good = real_report(&dir);
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let g = v["leaks"][0].clone();
    let mut odd = Vec::new();
    // (Frames without a file are what --symbolize works on: there a
    // build-id that is not hex once became a slice at a non-character
    // boundary, and a panic.)
    for (count, bytes, stack, build_id, line) in [
        (u64::MAX, u64::MAX, g["stack"].clone(), "€€€€", 0u64),
        (1, 1, g["stack"].clone(), "€€€€", 1),
        (0, 0, serde_json::json!([]), "", u64::from(u32::MAX)),
        (
            1,
            5,
            serde_json::json!([{"ip": "zz"}, {"ip": "", "offset": "0xzz", "module": "/dev/zero", "build_id": "../../../etc"}]),
            "0",
            1,
        ),
    ] {
        let mut group = g.clone();
        group["count"] = count.into();
        group["bytes"] = bytes.into();
        group["stack"] = stack;
        group["objects"] = serde_json::json!([{"address": "not an address", "size": u64::MAX, "age_ms": u64::MAX}]);
        group["id"] = serde_json::json!("\u{1b}[2J\n");
        if let Some(frames) = group["stack"].as_array_mut() {
            for f in frames.iter_mut().filter(|f| f.get("module").is_some()) {
                f["build_id"] = build_id.into();
                if count == 1 && bytes == 1 {
                    f["file"] = serde_json::Value::Null;
                    f["function"] = serde_json::Value::Null;
                } else {
                    f["line"] = line.into();
                    f["function"] = serde_json::json!("é€𝄞\u{0}");
                }
            }
        }
        odd.push(group);
    }
    v["leaks"] = serde_json::Value::Array(odd);
    v["summary"]["leaked_blocks"] = 0.into();
    fs::write(dir.join("odd.json"), v.to_string()).unwrap();
    fs::write(dir.join("base.json"), &good).unwrap();
    fs::write(dir.join("s.supp"), "leak:€\nleak:^*$\n").unwrap();
    for format in ["text", "json", "sarif"] {
        for extra in [
            &[][..],
            &["--symbolize", "--debug-dir", "."],
            &["--suppressions", "s.supp", "--print-suppressions"],
            &["--baseline", "odd.json"],
            &["--baseline", "base.json", "--symbolize"],
            &[
                "--kind",
                "direct",
                "--min-bytes",
                "18446744073709551615",
                "--top",
                "1",
            ],
            &["--fail-on-leaks", "--color", "always"],
        ] {
            let what = format!("odd report, --format {format} {extra:?}");
            let out = run_bounded(
                leakscan_in(&dir)
                    .args(["report", "odd.json", "--format", format])
                    .args(extra),
                None,
                LIMIT,
                &what,
            );
            assert_no_crash(&out, &what);
            assert!((0..=2).contains(&out.code), "{what}: {}", out.code);
            if out.code == 2 {
                assert_eq!(out.stderr.lines().count(), 1, "{what}: {}", out.stderr);
            }
        }
    }
}

/// Random command lines to every subcommand: exit 0, 1 or 2, and with 2
/// one line; never a panic or a hang. Paths stay inside the test's
/// directory (no value contains '/'), and `run` only ever runs `true`.
#[test]
fn randomized_command_lines_fail_in_one_line() {
    let dir = workdir("hostile_cli");
    fs::write(dir.join("good.json"), real_report(&dir)).unwrap();
    fs::write(dir.join("bad.json"), "{").unwrap();
    fs::write(dir.join("s.supp"), "leak:x\n").unwrap();
    fs::create_dir_all(dir.join("reports")).unwrap();
    const SUBCOMMANDS: &[&str] = &[
        "run", "report", "scan", "clear", "dump", "stats", "ps", "bogus", "",
    ];
    const FLAGS: &[&str] = &[
        "--format",
        "--output",
        "--error-exitcode",
        "--color",
        "--scan-interval",
        "--min-age",
        "--suppressions",
        "--print-suppressions",
        "--baseline",
        "--min-bytes",
        "--top",
        "--kind",
        "--symbolize",
        "--debug-dir",
        "--source-root",
        "--dir",
        "--pid",
        "--fail-on-leaks",
        "--formt",
        "-x",
        "--",
        "-",
        "--=",
        "---",
        "--format=json",
        "--top=0",
    ];
    const VALUES: &[&str] = &[
        "json",
        "text",
        "sarif",
        "xml",
        "never",
        "always",
        "auto",
        "direct",
        "indirect",
        "both",
        "0",
        "1",
        "-1",
        "23",
        "255",
        "256",
        "4294967296",
        "18446744073709551616",
        "1e400",
        "NaN",
        "inf",
        "-0",
        "0.5",
        "0x10",
        "0xzz",
        "",
        " ",
        "good.json",
        "bad.json",
        "s.supp",
        "missing",
        ".",
        "out.json",
        "reports",
        "4000000000",
        "é€𝄞",
        "\u{1b}[2J",
        "a\nb",
    ];
    let seed = seed_from_env(0xc1_1a_55);
    let started = Instant::now();
    let mut cases = 0;
    for case in fuzz_cases(300) {
        let mut rng = Rng::for_case(seed, case);
        let mut args: Vec<OsString> = Vec::new();
        let sub = SUBCOMMANDS[rng.below(SUBCOMMANDS.len())];
        if !sub.is_empty() {
            args.push(sub.into());
        }
        for _ in 0..rng.below(7) {
            args.push(match rng.below(6) {
                0 | 1 => FLAGS[rng.below(FLAGS.len())].into(),
                2..=4 => VALUES[rng.below(VALUES.len())].into(),
                // Bytes that are not UTF-8, never a '/'.
                _ => OsString::from_vec(
                    (0..rng.below(12))
                        .map(|_| (rng.next() as u8).max(1))
                        .filter(|&b| b != b'/')
                        .collect(),
                ),
            });
        }
        if sub == "run" {
            // Whatever the flags, the program is `true` (or nothing).
            if rng.below(4) != 0 {
                args.extend(["--".into(), "true".into()]);
            }
        }
        // Help and version are not errors (and print many lines); neither
        // is `leakscan` alone (or `leakscan --`), which shows the help too.
        if args.iter().all(|a| a == "--")
            || args.iter().any(|a| {
                ["-h", "--help", "-V", "--version", "help"].contains(&a.to_str().unwrap_or(""))
            })
        {
            continue;
        }
        let what = format!("seed {seed:#x} case {case}: leakscan {args:?}");
        let out = run_bounded(leakscan_in(&dir).args(&args), None, LIMIT, &what);
        assert_no_crash(&out, &what);
        match out.code {
            0 | 1 => {}
            2 => {
                let lines: Vec<&str> = out.stderr.lines().collect();
                let errors = lines
                    .iter()
                    .filter(|l| !l.starts_with("leakscan: warning:"))
                    .count();
                assert!(
                    errors == 1 && lines.last().is_some_and(|l| l.starts_with("leakscan: ")),
                    "{what}: not one error line:\n{}",
                    out.stderr
                );
            }
            code => panic!("{what}: exit {code}:\n{}", out.stderr),
        }
        cases += 1;
    }
    eprintln!("{cases} command lines in {:?}", started.elapsed());
}

/// Garbage LEAKSCAN_OPTIONS, of the kinds people and scripts make.
fn hostile_options(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"exitcode",
        b"stack_depth",
        b"max_objects",
        b"verbosity",
        b"enabled",
        b"scan_threads",
        b"scan_interval",
        b"min_age",
        b"bogus",
        b"report_dir",
        b"",
        b"=",
        b"==",
        b":",
        b"::",
        b"'",
        b"\"",
        b" ",
        b"-1",
        b"99999999999999999999",
        b"1e400",
        b"NaN",
        b"inf",
        b"0x1",
        b"\xff",
        b"\xc3",
        b"\x1b[2J",
        b"\t",
        b"\n",
        b"\xe2\x80\xa8",
        b"yes",
        b"maybe",
    ];
    let mut out = Vec::new();
    // An environment string holds at most 128 KiB (MAX_ARG_STRLEN).
    while out.len() < 60_000 && rng.below(13) != 0 {
        match rng.below(12) {
            0 => out.extend((0..rng.below(40)).map(|_| (rng.next() as u8).max(1))),
            1 => out.extend(std::iter::repeat_n(b'7', rng.below(20_000))),
            _ => out.extend_from_slice(PIECES[rng.below(PIECES.len())]),
        }
    }
    out
}

/// The program's behaviour is what it is bare; the agent adds one warning
/// line when LEAKSCAN_OPTIONS has bad items, and the report is exact.
#[test]
fn randomized_leakscan_options_leave_the_program_alone() {
    let dir = workdir("hostile_options");
    let binary = build(&Spec::load("direct_leak.c"), &dir);
    let reports = dir.join("reports");
    let plain = run_bounded(&mut bare(&binary), None, LIMIT, "bare");
    // symbolize=0: no debug info read at each exit, 5 times faster.
    let fixed = format!("report_dir={}:verbosity=0:symbolize=0:", reports.display());
    let seed = seed_from_env(0x0b7_1025);
    let mut tried = 0;
    for case in fuzz_cases(150) {
        let mut rng = Rng::for_case(seed, case);
        let mut text = fixed.clone().into_bytes();
        text.extend(hostile_options(&mut rng));
        // Only garbage that leaves the settings that matter alone: a
        // random `exitcode=7` or `enabled=0` would rightly change things.
        let (opts, errors) = Options::parse(&text);
        let (want, _) = Options::parse(&fixed);
        if (
            opts.report_dir.as_ref(),
            opts.verbosity,
            opts.exitcode,
            opts.enabled,
            opts.leak_check_at_exit,
        ) != (want.report_dir.as_ref(), 0, 0, true, true)
        {
            continue;
        }
        tried += 1;
        let what = format!(
            "seed {seed:#x} case {case}: LEAKSCAN_OPTIONS={:?}",
            String::from_utf8_lossy(&text)
        );
        let _ = fs::remove_dir_all(&reports);
        let mut cmd = bare(&binary);
        cmd.env("LD_PRELOAD", agent_library())
            .env("LEAKSCAN_OPTIONS", OsString::from_vec(text.clone()));
        let out = run_bounded(&mut cmd, None, LIMIT, &what);
        assert_eq!(out.code, plain.code, "{what}\n{}", out.stderr);
        assert_eq!(out.stdout, plain.stdout, "{what}");
        let extra: Vec<&str> = out
            .stderr
            .strip_prefix(plain.stderr.as_str())
            .unwrap_or_else(|| panic!("{what}: the program's stderr changed:\n{}", out.stderr))
            .lines()
            .collect();
        if errors.is_empty() {
            assert!(extra.is_empty(), "{what}: {extra:?}");
        } else {
            assert_eq!(extra.len(), 1, "{what}: {extra:?}");
            assert!(
                extra[0].starts_with("leakscan: warning: LEAKSCAN_OPTIONS: ")
                    && extra[0].len() < 800,
                "{what}: {}",
                extra[0]
            );
        }
        let report = fs::read_dir(&reports)
            .ok()
            .and_then(|mut d| {
                d.find_map(|e| {
                    e.ok()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                })
            })
            .map(|e| Report::from_json(&fs::read_to_string(e.path()).unwrap()).unwrap())
            .unwrap_or_else(|| panic!("{what}: no report"));
        let s = &report.summary;
        assert_eq!(
            (s.direct_blocks, s.direct_bytes, s.indirect_blocks),
            (1, 48, 0),
            "{what}"
        );
    }
    assert!(tried >= 50, "only {tried} usable cases");

    // Under `leakscan run`: one warning, not one per process, and no bad
    // item (an unclosed quote) can swallow the run's own settings.
    for text in [
        &b"exitcode='3"[..],
        b"bogus=1:\xff=2:stack_depth=-1",
        b"\"",
        b"x:y:z:=:'",
    ] {
        let what = format!(
            "leakscan run with LEAKSCAN_OPTIONS={:?}",
            String::from_utf8_lossy(text)
        );
        let mut cmd = leakscan();
        cmd.current_dir(&dir)
            .env("XDG_RUNTIME_DIR", &dir)
            .env("LEAKSCAN_OPTIONS", OsString::from_vec(text.to_vec()))
            .args(["run", "--format", "json", "--output", "run.json", "--"])
            .arg(&binary);
        let out = run_bounded(&mut cmd, None, LIMIT, &what);
        assert_eq!(out.code, 23, "{what}: the leak was missed\n{}", out.stderr);
        assert_eq!(out.stdout, plain.stdout, "{what}");
        let report = Report::from_json(&fs::read_to_string(dir.join("run.json")).unwrap())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(report.summary.direct_bytes, 48, "{what}");
        let warnings = out
            .stderr
            .lines()
            .filter(|l| l.contains("LEAKSCAN_OPTIONS"))
            .count();
        assert_eq!(warnings, 1, "{what}:\n{}", out.stderr);
    }
}

/// `live_leaker`, started with the agent, and its stdin/stdout.
struct Leaker {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::BufReader<ChildStdout>,
    socket: PathBuf,
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Leaker {
    fn start(dir: &Path, options: &str) -> Leaker {
        let binary = build(&Spec::load("live_leaker.c"), dir);
        let reports = dir.join("reports");
        let mut child = preloaded(&binary, dir, options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let socket = reports.join(format!("{}.sock", child.id()));
        let mut l = Leaker {
            stdin: child.stdin.take().unwrap(),
            stdout: std::io::BufReader::new(child.stdout.take().unwrap()),
            child,
            socket,
        };
        assert_eq!(l.line(), "ready");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !request(&l.socket, b"ping\n").contains("\"ok\":true") {
            assert!(Instant::now() < deadline, "no control socket");
            thread::sleep(Duration::from_millis(20));
        }
        l
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        std::io::BufRead::read_line(&mut self.stdout, &mut s).unwrap();
        s.trim_end().to_string()
    }

    fn say(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.line()
    }

    fn stats(&self) -> serde_json::Value {
        let reply: Reply = serde_json::from_str(request(&self.socket, b"stats\n").trim()).unwrap();
        serde_json::to_value(reply.stats.expect("stats")).unwrap()
    }
}

/// One request, the write side closed after it; the reply as text.
fn request(socket: &Path, bytes: &[u8]) -> String {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The `i`th leaked block's address plus `offset`, as text.
fn leaked_addr(leaked: &[String], i: usize, offset: usize) -> String {
    let a = u64::from_str_radix(leaked[i].trim_start_matches("0x"), 16).unwrap();
    format!("{:#x}", a + offset as u64)
}

/// A request as a broken or hostile client sends it.
fn hostile_request(rng: &mut Rng) -> Vec<u8> {
    const WORDS: &[&[u8]] = &[
        b"scan",
        b"report",
        b"stats",
        b"ping",
        b"dump",
        b"clear",
        b"min_age=",
        b"=",
        b" ",
        b"\t",
        b"\r",
        b"\x00",
        b"\xff",
        b"0x",
        b"-1",
        b"0xffffffffffffffff",
        b"0xffff800000000000",
        b"18446744073709551616",
        b"1e400",
        b"NaN",
        b"0.001",
        b"31536001",
        b"0x10",
        b"4096",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.below(8) {
        match rng.below(10) {
            0 => out.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            1 => out.extend(std::iter::repeat_n(b'x', rng.below(4 * MAX_REQUEST))),
            _ => out.extend_from_slice(WORDS[rng.below(WORDS.len())]),
        }
    }
    if rng.below(3) != 0 {
        out.push(b'\n');
    }
    out
}

/// Random requests (random bytes, long lines, lines without a newline,
/// NUL, bad UTF-8, valid commands with random arguments — `dump` of
/// unmapped, kernel and odd addresses, `scan min_age=` garbage), many at
/// once, half-closed, slow: every one that says something gets one JSON
/// reply, and afterwards the process answers, behaves and reports exactly
/// as it would have.
#[test]
fn a_barrage_of_control_requests_leaves_the_process_unharmed() {
    let dir = workdir("hostile_socket");
    let mut leaker = Leaker::start(&dir, "scan_interval=0.05:min_age=0");
    assert_eq!(leaker.say("keep 7"), "kept 7");
    let leaked: Vec<String> = leaker
        .say("leak 5")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(leaked.len(), 5);
    let live_before = leaker.stats()["live_blocks"].as_u64().unwrap();

    let seed = seed_from_env(0x50_c4e7);
    let started = Instant::now();
    let sock = leaker.socket.clone();
    // Four clients at once, each a stream of random requests.
    const CLIENTS: u64 = 4;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let sock = sock.clone();
            thread::spawn(move || {
                let mut sent = 0;
                for case in fuzz_cases(1000).filter(|c| c % CLIENTS == client) {
                    sent += 1;
                    let mut rng = Rng::for_case(seed, case);
                    let bytes = hostile_request(&mut rng);
                    let what = format!(
                        "seed {seed:#x} case {case}: {:?}",
                        String::from_utf8_lossy(&bytes)
                    );
                    let reply = request(&sock, &bytes);
                    if bytes.is_empty() {
                        continue; // said nothing: dropped without a word
                    }
                    let reply: Reply = serde_json::from_str(reply.trim())
                        .unwrap_or_else(|e| panic!("{what}: no JSON reply ({e}): {reply:?}"));
                    assert_eq!(reply.protocol, 1, "{what}");
                    assert!(
                        reply.ok || reply.error.as_ref().is_some_and(|e| !e.contains('\n')),
                        "{what}"
                    );
                }
                sent
            })
        })
        .collect();
    // Meanwhile: connections that send nothing, or half a line and stop,
    // or the write side closed at once.
    for i in 0..20 {
        let mut s = UnixStream::connect(&sock).unwrap();
        match i % 3 {
            0 => drop(s),
            1 => {
                let _ = s.write_all(b"sta");
                drop(s);
            }
            _ => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        }
    }
    let sent: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    eprintln!("{sent} requests in {:?}", started.elapsed());

    // Many at once, beyond the listen backlog (16): each is answered.
    let burst: Vec<_> = (0..64)
        .map(|_| {
            let sock = sock.clone();
            thread::spawn(move || request(&sock, b"ping\n"))
        })
        .collect();
    for t in burst {
        let reply = t.join().unwrap();
        assert!(reply.contains("\"ok\":true"), "{reply:?}");
    }

    // A client that sends far too much still reads the error reply and a
    // clean end of file (no connection reset).
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&vec![b'x'; 100_000]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("the reply to a long request ended with {e}: {reply:?}"));
    assert!(reply.contains("too long"), "{reply}");

    // The CLI's own commands with random arguments: an answer, or one line.
    let pid = leaker.child.id().to_string();
    let reports = dir.join("reports");
    for case in fuzz_cases(40) {
        let mut rng = Rng::for_case(seed ^ 0xc11, case);
        let addr = match rng.below(4) {
            0 => format!("{:#x}", rng.next()),
            1 => rng.next().to_string(),
            2 => leaked_addr(&leaked, rng.below(leaked.len()), rng.below(400)),
            _ => [
                "0",
                "-1",
                "0x",
                "0xffff800000000000",
                "1e3",
                "0x1ffffffffffffffff",
            ][rng.below(6)]
            .to_string(),
        };
        let min_age = ["0", "0.5", "-1", "NaN", "1e400", "x", "31536001"][rng.below(7)];
        for args in [
            vec!["dump", pid.as_str(), addr.as_str()],
            vec!["scan", pid.as_str(), "--min-age", min_age],
        ] {
            let what = format!("seed {seed:#x} case {case}: leakscan {args:?}");
            let mut cmd = leakscan_for(&reports);
            cmd.args(&args);
            let out = run_bounded(&mut cmd, None, LIMIT, &what);
            assert_no_crash(&out, &what);
            match out.code {
                0 => assert!(
                    serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok(),
                    "{what}"
                ),
                2 => assert_eq!(out.stderr.lines().count(), 1, "{what}: {}", out.stderr),
                code => panic!("{what}: exit {code}: {}", out.stderr),
            }
        }
    }

    // Still answering, with the same heap.
    let ping: Reply = serde_json::from_str(request(&sock, b"ping\n").trim()).unwrap();
    assert_eq!(ping.process.unwrap().pid, leaker.child.id());
    assert_eq!(leaker.stats()["live_blocks"].as_u64().unwrap(), live_before);
    assert_eq!(leaker.say("keep 1"), "kept 8");

    // The exit report is exact: the leaked blocks, nothing else.
    assert_eq!(leaker.say("quit"), "");
    let status = leaker.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    leaker
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(err, "", "the agent wrote to the program's stderr");
    let report_path = dir
        .join("reports")
        .join(format!("{}.json", leaker.child.id()));
    let report = Report::from_json(&fs::read_to_string(report_path).unwrap()).unwrap();
    let mut got: Vec<String> = report
        .leaks
        .iter()
        .flat_map(|g| &g.objects)
        .map(|o| o.address.clone())
        .collect();
    let mut want = leaked;
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(report.summary.leaked_blocks, 5);
}

/// A client that sends its request a byte at a time, or never reads the
/// reply, holds the scanner thread at most the documented 2 s each: the
/// periodic scans go on, and the next client is answered.
#[test]
fn slow_clients_cannot_wedge_the_scanner() {
    let dir = workdir("hostile_slow");
    let mut leaker = Leaker::start(&dir, "scan_interval=0.1:min_age=0:max_objects=1000000");
    // Enough leaks that a report overflows the socket's buffer.
    leaker.say("leak 3000");
    let sock = leaker.socket.clone();
    let scans_before = leaker.stats()["scans"].as_u64().unwrap();
    // Two slow writers, one byte every 300 ms, for 6 s each.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let sock = sock.clone();
            thread::spawn(move || {
                let mut s = UnixStream::connect(&sock).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                for _ in 0..20 {
                    if s.write_all(b"s").is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(300));
                }
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            })
        })
        .collect();
    // One that asks for a report and never reads it.
    let mut stalled = Vec::new();
    for _ in 0..1 {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"scan\n").unwrap();
        stalled.push(s);
    }
    thread::sleep(Duration::from_millis(100));
    // Three stalled clients: 2 s each at most (plus the scan), then our turn.
    let t = Instant::now();
    let ping = request(&sock, b"ping\n");
    let waited = t.elapsed();
    assert!(ping.contains("\"ok\":true"), "{ping}");
    assert!(
        waited < Duration::from_secs(3 * 2 + 4),
        "ping waited {waited:?}"
    );
    assert!(
        waited > Duration::from_millis(1500),
        "the clients were not slow: {waited:?}"
    );
    for s in slow {
        let reply = s.join().unwrap();
        assert!(
            reply.contains("too long or incomplete")
                || reply.contains("unknown command")
                || reply.is_empty(),
            "{reply}"
        );
    }
    drop(stalled);
    // The periodic scans went on meanwhile (one per 100 ms, minus the
    // time the clients held the thread).
    let scans = leaker.stats()["scans"].as_u64().unwrap() - scans_before;
    assert!(
        scans >= 3,
        "only {scans} periodic scans in {:?}",
        t.elapsed()
    );
    assert_eq!(leaker.say("quit"), "");
    assert!(leaker.child.wait().unwrap().success());
}
