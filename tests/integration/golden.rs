//! The JSON report's shape, pinned by a golden file.
//!
//! Values that change from run to run or machine to machine (addresses,
//! pids, paths, times, totals that depend on the C library) become
//! placeholders; the fixture's own stack frames keep their function, file
//! and line, and start-up frames from libc and the dynamic loader are
//! dropped. Keys come out sorted (serde_json's map), so the file pins
//! names, nesting, types and values, not key order. `LEAKSCAN_BLESS=1`
//! rewrites the golden file from the current output.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::harness::check_fixture;

const FIXTURE: &str = "golden_pair.c";
const GOLDEN: &str = "tests/golden/golden_pair.json";

#[test]
fn report_shape_matches_golden() {
    let checked = check_fixture("golden_report", FIXTURE);
    let mut report: Value = serde_json::from_str(&checked.report_text).expect("report is JSON");
    normalize(&mut report);
    let actual = serde_json::to_string_pretty(&report).expect("serializes") + "\n";

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("LEAKSCAN_BLESS").is_some_and(|v| v == "1") {
        fs::create_dir_all(golden.parent().expect("tests/golden")).expect("create tests/golden");
        fs::write(&golden, &actual).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        return;
    }
    let expected = fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with LEAKSCAN_BLESS=1 cargo test --test integration golden",
            golden.display()
        )
    });
    if expected != actual {
        let (line, want, got) = first_difference(&expected, &actual);
        panic!(
            "the report's shape differs from {GOLDEN} at line {line}:\n  golden: {want}\n  actual: {got}\n\
             if the change is intended, re-bless with LEAKSCAN_BLESS=1\nnormalized report:\n{actual}"
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

/// Replace volatile values by placeholders, in place. Only `get_mut`:
/// indexing a `Value` mutably would add the keys it does not find.
fn normalize(report: &mut Value) {
    if let Some(tool) = report.get_mut("tool") {
        blank(tool, "version", "<version>");
    }
    if let Some(process) = report.get_mut("process") {
        normalize_process(process);
    }
    if let Some(scan) = report.get_mut("scan") {
        for field in [
            "number",
            "duration_ms",
            "scanned_bytes",
            "live_blocks",
            "live_bytes",
        ] {
            blank(scan, field, "<varies>");
        }
    }
    for group in items(report, "leaks") {
        blank(group, "pid", "<pid>");
        for object in items(group, "objects") {
            blank(object, "address", "<address>");
            blank(object, "age_ms", "<ms>");
        }
        if let Some(stack) = group.get_mut("stack") {
            normalize_stack(stack);
        }
    }
    for child in items(report, "children") {
        if let Some(process) = child.get_mut("process") {
            normalize_process(process);
        }
    }
}

fn normalize_process(process: &mut Value) {
    blank(process, "pid", "<pid>");
    blank(process, "exe", "<exe>");
    if let Some(argv0) = process.get_mut("argv").and_then(|argv| argv.get_mut(0)) {
        *argv0 = Value::from("<argv0>");
    }
}

/// Keep frames down to `main`, without libc and loader frames; module and
/// file become base names.
fn normalize_stack(stack: &mut Value) {
    let Some(frames) = stack.as_array_mut() else {
        return;
    };
    if let Some(main) = frames.iter().position(|f| f["function"] == "main") {
        frames.truncate(main + 1);
    }
    frames.retain(|f| !f["module"].as_str().is_some_and(is_libc_or_loader));
    for frame in frames {
        for field in ["ip", "offset", "build_id"] {
            blank(frame, field, &format!("<{field}>"));
        }
        for field in ["module", "file"] {
            if let Some(path) = frame[field].as_str() {
                frame[field] = Value::from(base_name(path));
            }
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

fn base_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// Set `value[key]` to `placeholder` when the key is present: a missing key
/// must stay missing, so that the comparison notices it.
fn blank(value: &mut Value, key: &str, placeholder: &str) {
    if let Some(slot) = value.get_mut(key) {
        *slot = Value::from(placeholder);
    }
}

/// The elements of the array `value[key]`, if there is one.
fn items<'a>(value: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    value
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}
