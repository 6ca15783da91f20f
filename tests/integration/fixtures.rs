//! One test per fixture program: its report must match its header.

use std::fs;

use crate::harness::{check_fixture, fixtures_dir, Spec};

macro_rules! fixture_tests {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_fixture(stringify!($test), $file);
            }
        )*

        /// The fixtures checked by the tests above.
        const PLAIN_FIXTURES: &[&str] = &[$($file),*];
    };
}

fixture_tests! {
    no_leaks => "no_leaks.c",
    direct_leak => "direct_leak.c",
    list_and_tree => "list_and_tree.c",
    global_root => "global_root.c",
    static_local_root => "static_local_root.c",
    thread_stack_root => "thread_stack_root.c",
    tls_root => "tls_root.c",
    interior_pointer => "interior_pointer.c",
    page_aligned_interior => "page_aligned_interior.c",
    unreachable_cycle => "unreachable_cycle.c",
    realloc_chain => "realloc_chain.c",
    alloc_functions => "alloc_functions.c",
    cxx_new => "cxx_new.cpp",
    before_main => "before_main.c",
    exited_thread_leak => "exited_thread_leak.c",
    dlopen_root => "dlopen_root.c",
    many_reachable => "many_reachable.c",
    exit_status => "exit_status.c",
    exit_while_threads_churn => "exit_while_threads_churn.c",
    fork_in_threaded_process => "fork_in_threaded_process.c",
    exec_fresh_image => "exec_fresh_image.c",
    mapped_arena_root => "mapped_arena_root.c",
    garbage_frame_pointers => "garbage_frame_pointers.c",
    dlopen_tls_root => "dlopen_tls_root.c",
    exit_from_signal_handler => "exit_from_signal_handler.c",
    fork_while_threads_allocate => "fork_while_threads_allocate.c",
    annotate_not_leak => "annotate_not_leak.c",
    annotate_no_scan => "annotate_no_scan.c",
    lsan_disable => "lsan_disable.c",
    lsan_root_region => "lsan_root_region.c",
    lsan_recoverable_check => "lsan_recoverable_check.c",
    lsan_do_leak_check => "lsan_do_leak_check.c",
    argv_env_copies => "argv_env_copies.c",
    main_thread_exits_first => "main_thread_exits_first.c",
}

/// Fixtures whose tests add checks of their own (here and in golden.rs).
const OWN_TESTS: &[&str] = &[
    "fork_child_leak.c",
    "golden_pair.c",
    "cxx_symbols.cpp",
    "lsan_suppressions.c",
    "baseline_leaks.c",
];

#[test]
fn fork_child_leak() {
    let checked = check_fixture("fork_child_leak", "fork_child_leak.c");
    let stdout = String::from_utf8_lossy(&checked.run.stdout);
    let child: u32 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("child "))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the child did not print its pid: {stdout:?}"));
    let report = &checked.report;
    assert_ne!(
        report.process.pid, child,
        "the report's main process is the child\n{}",
        checked.report_text
    );
    assert!(
        report.children.iter().any(|c| c.process.pid == child),
        "child {child} is not among the report's children\n{}",
        checked.report_text
    );
    assert!(
        report.leaks.iter().all(|g| g.pid == Some(child)),
        "every leak should carry the child's pid {child}\n{}",
        checked.report_text
    );
}

/// Every header parses, and every fixture with a report to check has a test.
#[test]
fn every_fixture_has_a_test() {
    let mut missing = Vec::new();
    for entry in fs::read_dir(fixtures_dir()).expect("tests/fixtures") {
        let name = entry
            .expect("directory entry")
            .file_name()
            .into_string()
            .expect("UTF-8 name");
        if !(name.ends_with(".c") || name.ends_with(".cpp")) {
            continue;
        }
        let spec = Spec::load(&name);
        let tested = PLAIN_FIXTURES.contains(&name.as_str()) || OWN_TESTS.contains(&name.as_str());
        if spec.has_report() && !tested {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "fixtures without a test in fixtures.rs: {missing:?}"
    );
}
