//! C++ symbols, stripped binaries and offline symbolization: the -g build
//! shows demangled names with file:line; the same binary stripped shows
//! module + offset + build-id; `leakscan report --symbolize` with the
//! unstripped copy (or an `objcopy --only-keep-debug` file in a
//! `.build-id` tree) restores exactly the -g report's frames and ids.

use std::fs;
use std::path::Path;
use std::process::Command;

use leakscan_core::report::{Frame, Report};

use crate::harness::{
    check_fixture, leakscan, read_report, run, Run, FIXTURE_TIME_LIMIT, RUN_JSON_TO,
};

/// (function, file, line) of one frame.
type Place = (String, String, u32);

/// The program's own frames of every group, with the group's id.
fn own_frames(report: &Report, module_name: &str) -> Vec<(String, Vec<Place>)> {
    report
        .leaks
        .iter()
        .map(|g| {
            let frames = g
                .stack
                .iter()
                .filter(|f| {
                    f.module
                        .as_deref()
                        .is_some_and(|m| m.ends_with(module_name))
                })
                .map(|f| {
                    (
                        f.function.clone().unwrap_or_default(),
                        f.file.clone().unwrap_or_default(),
                        f.line.unwrap_or(0),
                    )
                })
                .collect();
            (g.id.clone().unwrap_or_default(), frames)
        })
        .collect()
}

fn tool(program: &str, args: &[&str], dir: &Path) {
    let out = run(
        Command::new(program).args(args),
        dir,
        program,
        FIXTURE_TIME_LIMIT,
    );
    assert_eq!(out.code, 0, "{program} {args:?}: {}", out.stderr);
}

fn leakscan_in(dir: &Path, label: &str, args: &[&str]) -> Run {
    let mut cmd = leakscan();
    cmd.args(args);
    run(&mut cmd, dir, label, FIXTURE_TIME_LIMIT)
}

#[test]
fn stripped_binary_round_trip() {
    // 1. -g: demangled names, file:line, an inlined frame.
    let checked = check_fixture("symbolize_round_trip", "cxx_symbols.cpp");
    let dir = &checked.dir;
    let with_debug = &checked.report;
    let frames: Vec<&Frame> = with_debug.leaks.iter().flat_map(|g| &g.stack).collect();
    let polygon = frames
        .iter()
        .find(|f| f.function.as_deref() == Some("shapes::Polygon::Polygon()"))
        .expect("a demangled constructor");
    assert!(polygon
        .file
        .as_deref()
        .is_some_and(|f| f.ends_with("tests/fixtures/cxx_symbols.cpp")));
    assert!(polygon.line.is_some_and(|l| l > 0));
    assert!(frames
        .iter()
        .any(|f| f.function.as_deref() == Some("make_label") && f.inlined));

    // 2. The same binary, stripped.
    let stripped_dir = dir.join("stripped");
    fs::create_dir(&stripped_dir).unwrap();
    let stripped = stripped_dir.join("cxx_symbols");
    fs::copy(&checked.binary, &stripped).unwrap();
    tool("strip", &["--strip-all", stripped.to_str().unwrap()], dir);
    let raw = dir.join("stripped.json");
    let args = [raw.to_str().unwrap(), "--", stripped.to_str().unwrap()];
    let out = leakscan_in(dir, "stripped", &[&RUN_JSON_TO[..], &args].concat());
    let bare_report = read_report(&raw, &out.stderr);
    let build_id = polygon
        .build_id
        .clone()
        .expect("the -g binary has a build-id");
    for g in &bare_report.leaks {
        let own: Vec<&Frame> = g
            .stack
            .iter()
            .filter(|f| f.module.as_deref() == stripped.to_str())
            .collect();
        assert!(!own.is_empty());
        for f in own {
            assert_eq!(f.file, None, "a stripped binary has no lines: {f:?}");
            assert!(f.offset.is_some());
            assert_eq!(f.build_id.as_deref(), Some(build_id.as_str()));
        }
    }
    let text = leakscan_in(
        dir,
        "stripped-text",
        &["report", raw.to_str().unwrap(), "--format", "text"],
    );
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&format!("{}+0x", stripped.display())) && text.contains(&build_id),
        "{text}"
    );

    // 3. --symbolize with the unstripped copy in a debug directory.
    let symbolized = leakscan_in(
        dir,
        "symbolized",
        &[
            "report",
            raw.to_str().unwrap(),
            "--symbolize",
            "--debug-dir",
            checked.binary.parent().unwrap().to_str().unwrap(),
        ],
    );
    assert_eq!(symbolized.code, 0, "{}", symbolized.stderr);
    assert!(symbolized.stderr.is_empty(), "{}", symbolized.stderr);
    let symbolized = Report::from_json(&String::from_utf8(symbolized.stdout).unwrap()).unwrap();
    assert_eq!(
        own_frames(&symbolized, "cxx_symbols"),
        own_frames(with_debug, "cxx_symbols"),
        "symbolized frames and ids must be the -g run's"
    );

    // 4. The same from a .build-id tree of separate debug files.
    let tree = dir.join("debug").join(".build-id").join(&build_id[..2]);
    fs::create_dir_all(&tree).unwrap();
    let debug_file = tree.join(format!("{}.debug", &build_id[2..]));
    tool(
        "objcopy",
        &[
            "--only-keep-debug",
            checked.binary.to_str().unwrap(),
            debug_file.to_str().unwrap(),
        ],
        dir,
    );
    let from_tree = leakscan_in(
        dir,
        "from-tree",
        &[
            "report",
            raw.to_str().unwrap(),
            "--debug-dir",
            dir.join("debug").to_str().unwrap(),
        ],
    );
    assert_eq!(from_tree.code, 0, "{}", from_tree.stderr);
    let from_tree = Report::from_json(&String::from_utf8(from_tree.stdout).unwrap()).unwrap();
    assert_eq!(
        own_frames(&from_tree, "cxx_symbols"),
        own_frames(with_debug, "cxx_symbols")
    );

    // 5. Without debug files, frames stay as they are, with one warning.
    let nothing = leakscan_in(
        dir,
        "no-debug",
        &["report", raw.to_str().unwrap(), "--symbolize"],
    );
    assert_eq!(nothing.code, 0);
    assert_eq!(nothing.stderr.lines().count(), 1, "{}", nothing.stderr);
    assert!(nothing.stderr.contains(&build_id), "{}", nothing.stderr);
}
