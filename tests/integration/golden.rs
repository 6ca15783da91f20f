//! The three output formats, pinned by golden files.
//!
//! Each fixture is run under `leakscan run`; its JSON report is then made
//! machine-independent (pids, addresses, times, build-ids and the paths of
//! the build become placeholders; the fixture's source paths become
//! `/src/tests/fixtures/…`; start-up frames below `main` and frames inside
//! libc and the dynamic loader are dropped), and `leakscan report` renders
//! that normalized report as JSON, text and SARIF, each compared with
//! `tests/golden/<fixture>.<format>`. The leak-group ids stay as the agent
//! computed them from the real stacks, so the goldens pin the id recipe
//! too. `LEAKSCAN_BLESS=1` rewrites the golden files from the current
//! output; never edit them by hand.

use std::fs;
use std::path::Path;

use leakscan_core::report::{Frame, Process, Report};

use crate::harness::{check_fixture, leakscan, run, FIXTURE_TIME_LIMIT};

/// Where the fixtures' sources are said to live in the normalized report.
const SOURCE_ROOT: &str = "/src";

#[test]
fn golden_pair_in_every_format() {
    check_formats("golden_report", "golden_pair.c");
}

#[test]
fn cxx_symbols_in_every_format() {
    check_formats("golden_cxx", "cxx_symbols.cpp");
}

fn check_formats(test: &str, fixture: &str) {
    let checked = check_fixture(test, fixture);
    let mut report = checked.report;
    normalize(&mut report, Path::new(env!("CARGO_MANIFEST_DIR")));
    let dir = checked.dir;
    let normalized = dir.join("normalized.json");
    fs::write(&normalized, report.to_json()).expect("write the normalized report");

    let stem = Path::new(fixture)
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("UTF-8 name");
    for (format, ext) in [("json", "json"), ("text", "txt"), ("sarif", "sarif")] {
        let mut cmd = leakscan();
        cmd.arg("report")
            .arg(&normalized)
            .args(["--format", format, "--color", "never", "--source-root"])
            .arg(SOURCE_ROOT);
        let out = run(&mut cmd, &dir, format, FIXTURE_TIME_LIMIT);
        assert_eq!(
            out.code, 0,
            "leakscan report --format {format}: {}",
            out.stderr
        );
        let actual = String::from_utf8(out.stdout).expect("UTF-8 output");
        compare_golden(&format!("tests/golden/{stem}.{ext}"), &actual);
    }
}

/// Compare `actual` with the golden file `rel`, or rewrite it when blessing.
pub fn compare_golden(rel: &str, actual: &str) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if std::env::var_os("LEAKSCAN_BLESS").is_some_and(|v| v == "1") {
        fs::create_dir_all(golden.parent().expect("tests/golden")).expect("create tests/golden");
        fs::write(&golden, actual).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        return;
    }
    let expected = fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with LEAKSCAN_BLESS=1 cargo test --release --test integration golden",
            golden.display()
        )
    });
    if expected != actual {
        let (line, want, got) = first_difference(&expected, actual);
        panic!(
            "the output differs from {rel} at line {line}:\n  golden: {want}\n  actual: {got}\n\
             if the change is intended, re-bless with LEAKSCAN_BLESS=1\nactual output:\n{actual}"
        );
    }
}

/// The first line (1-based) where two texts differ, with both versions.
fn first_difference<'a>(a: &'a str, b: &'a str) -> (usize, &'a str, &'a str) {
    let (mut a, mut b) = (a.lines(), b.lines());
    for line in 1.. {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (None, None) => return (line, "<end>", "<end> (only whitespace differs)"),
            (x, y) => return (line, x.unwrap_or("<end>"), y.unwrap_or("<end>")),
        }
    }
    unreachable!("a text has finitely many lines")
}

/// Replace what varies from run to run and machine to machine, in place.
fn normalize(report: &mut Report, repo: &Path) {
    normalize_process(&mut report.process, 1000);
    let scan = &mut report.scan;
    scan.number = 1;
    scan.duration_ms = 0.0;
    scan.scanned_bytes = 0;
    scan.live_blocks = 0;
    scan.live_bytes = 0;
    for (i, child) in report.children.iter_mut().enumerate() {
        normalize_process(&mut child.process, 1001 + i as u32);
    }
    for (g, group) in report.leaks.iter_mut().enumerate() {
        if group.pid.is_some() {
            group.pid = Some(1001);
        }
        for (o, object) in group.objects.iter_mut().enumerate() {
            object.address = format!("{:#x}", 0x10_0000 + g * 0x1000 + o * 0x100);
            object.age_ms = 0;
        }
        normalize_stack(&mut group.stack, repo);
    }
}

fn normalize_process(process: &mut Process, pid: u32) {
    process.pid = pid;
    process.exe = format!("/build/{}", base_name(&process.exe));
    if let Some(argv0) = process.argv.first_mut() {
        *argv0 = format!("./{}", base_name(argv0));
    }
}

/// Keep frames down to `main`, without libc and loader frames; give each
/// return address a made-up address; paths become the placeholders.
fn normalize_stack(stack: &mut Vec<Frame>, repo: &Path) {
    if let Some(main) = stack
        .iter()
        .position(|f| f.function.as_deref() == Some("main") && !f.inlined)
    {
        stack.truncate(main + 1);
    }
    stack.retain(|f| !f.module.as_deref().is_some_and(is_libc_or_loader));
    let mut physical = 0u64;
    for frame in stack.iter_mut() {
        frame.ip = format!("{:#x}", 0x40_0000 + physical * 0x100);
        frame.offset = Some(format!("{:#x}", 0x1000 + physical * 0x100));
        if frame.build_id.is_some() {
            frame.build_id = Some("0123456789abcdef0123456789abcdef01234567".into());
        }
        if let Some(module) = &frame.module {
            frame.module = Some(format!("/build/{}", base_name(module)));
        }
        if let Some(file) = &frame.file {
            frame.file = Some(match Path::new(file).strip_prefix(repo) {
                Ok(rel) => format!("{SOURCE_ROOT}/{}", rel.display()),
                Err(_) => base_name(file).to_string(),
            });
        }
        if !frame.inlined {
            physical += 1;
        }
    }
}

fn is_libc_or_loader(module: &str) -> bool {
    let name = base_name(module);
    name.starts_with("libc.so")
        || name.starts_with("libc-")
        || name.starts_with("ld-linux")
        || name.starts_with("ld.so")
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
