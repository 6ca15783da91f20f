//! The agent alone, as a user preloads it: `LEAKSCAN_OPTIONS`, the report
//! file it writes, and the program's exit status.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{
    agent_library, bare, build, read_report, run, workdir, Run, Spec, FIXTURE_TIME_LIMIT,
};

/// Build fixture `name` and run it with the agent preloaded and `options`;
/// reports go to `<dir>/reports`.
fn preload(test: &str, name: &str, options: &str) -> (Run, PathBuf) {
    let dir = workdir(test);
    let binary = build(&Spec::load(name), &dir);
    let reports = dir.join("reports");
    let mut cmd: Command = bare(&binary);
    cmd.env("LD_PRELOAD", agent_library()).env(
        "LEAKSCAN_OPTIONS",
        format!("report_dir={}:{options}", reports.display()),
    );
    (
        run(&mut cmd, &dir, "preloaded", FIXTURE_TIME_LIMIT),
        reports,
    )
}

fn report_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn report_file_is_private_whole_and_named_by_pid() {
    let (out, reports) = preload("agent_report_file", "direct_leak.c", "verbosity=1");
    assert_eq!(out.code, 0, "the program's own status is kept by default");
    let files = report_files(&reports);
    assert_eq!(
        files.len(),
        1,
        "exactly one file, no temporaries: {files:?}"
    );
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    let pid: u32 = name
        .strip_suffix(".json")
        .unwrap()
        .parse()
        .expect("<pid>.json");
    let report = read_report(&files[0], &out.stderr);
    assert_eq!(report.process.pid, pid);
    assert_eq!(report.summary.direct_blocks, 1);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&reports), 0o700);
    assert_eq!(mode(&files[0]), 0o600);
    assert!(
        out.stderr.contains("leaked blocks") && out.stderr.contains(&name),
        "verbosity=1 says where the report is: {}",
        out.stderr
    );
}

#[test]
fn exitcode_option_sets_the_status_only_when_leaking() {
    let (leaking, _) = preload("agent_exitcode_leak", "direct_leak.c", "exitcode=7");
    assert_eq!(leaking.code, 7);
    let (clean, _) = preload("agent_exitcode_clean", "no_leaks.c", "exitcode=7");
    assert_eq!(clean.code, 0);
}

#[test]
fn without_symbolization_frames_keep_module_offset_and_build_id() {
    let (out, reports) = preload("agent_no_symbolize", "direct_leak.c", "symbolize=0");
    let report = read_report(&report_files(&reports)[0], &out.stderr);
    let frames: Vec<_> = report.leaks.iter().flat_map(|g| &g.stack).collect();
    assert!(!frames.is_empty());
    assert!(frames
        .iter()
        .all(|f| f.function.is_none() && f.file.is_none()));
    let own = frames
        .iter()
        .find(|f| {
            f.module
                .as_deref()
                .is_some_and(|m| m.ends_with("/direct_leak"))
        })
        .expect("a frame in the fixture itself");
    assert!(own.offset.as_deref().is_some_and(|o| o.starts_with("0x")));
    assert!(own.build_id.as_deref().is_some_and(|b| b.len() >= 16));
}

#[test]
fn bad_options_warn_and_the_rest_applies() {
    let (out, reports) = preload(
        "agent_bad_options",
        "direct_leak.c",
        "bogus=1:exitcode=x:exitcode=5",
    );
    assert_eq!(out.code, 5, "the valid item still applies");
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .collect();
    // One line names every bad item (docs/configuration.md).
    assert_eq!(warnings.len(), 1, "one warning line:\n{}", out.stderr);
    assert!(warnings[0].starts_with("leakscan: warning: LEAKSCAN_OPTIONS: "));
    assert!(warnings[0].contains("bogus=1") && warnings[0].contains("exitcode=x"));
    assert_eq!(report_files(&reports).len(), 1);
}

#[test]
fn leak_check_can_be_turned_off() {
    let (out, reports) = preload("agent_detect_leaks_off", "direct_leak.c", "detect_leaks=0");
    assert_eq!(out.code, 0);
    assert!(report_files(&reports).is_empty(), "no check, no report");
}

#[test]
fn a_symlinked_report_directory_is_refused() {
    let dir = workdir("agent_symlinked_dir");
    let binary = build(&Spec::load("direct_leak.c"), &dir);
    let elsewhere = dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let link = dir.join("reports");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let mut cmd = bare(&binary);
    cmd.env("LD_PRELOAD", agent_library())
        .env("LEAKSCAN_OPTIONS", format!("report_dir={}", link.display()));
    let out = run(&mut cmd, &dir, "preloaded", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "the program is unaffected");
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    assert!(
        report_files(&elsewhere).is_empty(),
        "nothing written through the link"
    );
}

#[test]
fn a_program_with_its_own_malloc_is_not_reported_as_clean() {
    let (out, reports) = preload("agent_own_malloc", "own_malloc.c", "verbosity=1");
    assert_eq!(out.code, 0);
    assert!(
        out.stderr.contains("not leakscan's") && out.stderr.contains("leak checking is off"),
        "one line says why nothing is checked:\n{}",
        out.stderr
    );
    assert!(
        report_files(&reports).is_empty(),
        "no report claiming zero leaks"
    );
}

/// What a report says that does not change from one run of a program to
/// the next (addresses, pids and times do): the summary, the heap's size
/// when `heap` (single-threaded programs), and each leak group's kind,
/// count, bytes, object sizes and stack functions.
fn gist(report: &leakscan_core::report::Report, heap: bool) -> String {
    let mut text = format!("{:?}", report.summary);
    if heap {
        text += &format!(
            " live {} blocks {} bytes",
            report.scan.live_blocks, report.scan.live_bytes
        );
    }
    let mut groups: Vec<String> = report
        .leaks
        .iter()
        .map(|g| {
            let mut sizes: Vec<u64> = g.objects.iter().map(|o| o.size).collect();
            sizes.sort_unstable();
            let stack: Vec<_> = g.stack.iter().map(|f| f.function.clone()).collect();
            format!("{:?} {} {} {sizes:?} {stack:?}", g.kind, g.count, g.bytes)
        })
        .collect();
    groups.sort();
    for g in groups {
        text += "\n";
        text += &g;
    }
    text
}

#[test]
fn one_or_four_marker_threads_find_the_same_leaks() {
    // (fixture, processes, single-threaded)
    let cases = [
        ("list_and_tree.c", 1, true),
        ("unreachable_cycle.c", 1, true),
        ("interior_pointer.c", 1, true),
        ("many_reachable.c", 1, true),
        ("exit_while_threads_churn.c", 1, false),
        ("fork_while_threads_allocate.c", 21, false),
    ];
    for (fixture, processes, heap) in cases {
        let stem = fixture.trim_end_matches(".c");
        let mut gists = Vec::new();
        for threads in [1, 4] {
            let (out, reports) = preload(
                &format!("agent_scan_threads_{stem}_{threads}"),
                fixture,
                &format!("verbosity=0:scan_threads={threads}"),
            );
            assert!(!out.stderr.contains("warning"), "{}", out.stderr);
            let files = report_files(&reports);
            assert_eq!(files.len(), processes, "{fixture}: {files:?}");
            let mut all: Vec<String> = files
                .iter()
                .map(|f| gist(&read_report(f, &out.stderr), heap))
                .collect();
            all.sort();
            gists.push(all);
        }
        assert_eq!(gists[0], gists[1], "{fixture}: scan_threads=1 vs 4");
    }
}
