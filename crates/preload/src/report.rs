//! Turning a check's leak records into a schema-v1 report: grouping by
//! allocation stack, symbolizing only the stacks that are reported (I6), and
//! the process description.
//!
//! Runs after the world has been resumed, so it may allocate. Frames carry
//! module + offset + build-id as well as the resolved function/file/line,
//! so a report from a stripped binary can be symbolized later, elsewhere.
//! Each group gets its stable id, and the `suppressions=` file, if any, is
//! applied here, so that the summary (and `exitcode=`) count only what is
//! left.

use std::collections::HashMap;
use std::sync::OnceLock;

use leakscan_core::fingerprint;
use leakscan_core::report::{
    hex, sort_groups, Frame, LeakGroup, LeakKind, LeakedObject, Process, Report, Scan, Summary,
    Tool, Trigger, SCHEMA_VERSION,
};
use leakscan_core::suppress::{self, Suppressions};
use leakscan_platform::{fdtable, modules, sys};

use crate::check::{CheckResult, LeakRecord};
use crate::state::{options, DEPOT, LOADER_GATE};

/// The `suppressions=` file, read once, at the first report. A file that
/// cannot be read or parsed is reported in one line and ignored: the
/// program must keep running (I2), and its leaks are then all reported.
fn suppressions() -> &'static [Suppressions] {
    static LOADED: OnceLock<Vec<Suppressions>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let Some(path) = options().suppressions.as_deref() else {
            return Vec::new();
        };
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| Suppressions::parse(path, &text).map_err(|e| e.to_string()));
        match parsed {
            Ok(set) => vec![set],
            Err(e) => {
                fdtable::write_stderr(
                    format!("leakscan: warning: suppressions={path}: {e}; no leaks suppressed\n")
                        .as_bytes(),
                );
                Vec::new()
            }
        }
    })
}

/// A loaded module, as needed to describe a frame.
struct ModuleInfo {
    path: String,
    base: usize,
    ranges: Vec<(usize, usize)>,
    build_id: Option<String>,
}

/// Path of the running executable (the loader names it "").
fn exe_path() -> String {
    // /proc/self names the main thread: see `sys::read_process_file`.
    std::fs::read_link("/proc/thread-self/exe")
        .or_else(|_| std::fs::read_link("/proc/self/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn snapshot_modules(exe: &str) -> Vec<ModuleInfo> {
    let mut out = Vec::new();
    modules::for_each_module(|m| {
        let path = if m.name.is_empty() {
            exe.to_string()
        } else {
            String::from_utf8_lossy(m.name).into_owned()
        };
        out.push(ModuleInfo {
            path,
            base: m.base,
            ranges: m.segments().iter().map(|s| (s.start, s.end)).collect(),
            build_id: (!m.build_id.is_empty())
                .then(|| m.build_id.iter().map(|b| format!("{b:02x}")).collect()),
        });
        true
    });
    out
}

fn describe_frame(ip: usize, modules: &[ModuleInfo], symbolize: bool) -> Vec<Frame> {
    let module = modules
        .iter()
        .find(|m| m.ranges.iter().any(|&(lo, hi)| lo <= ip && ip < hi));
    let base_frame = Frame {
        ip: hex(ip as u64),
        module: module.map(|m| m.path.clone()),
        offset: module.map(|m| hex((ip - m.base) as u64)),
        build_id: module.and_then(|m| m.build_id.clone()),
        function: None,
        file: None,
        line: None,
        inlined: false,
    };
    let mut frames = Vec::new();
    if !symbolize {
        return vec![base_frame];
    }
    // Return addresses point after the call; look up the call itself.
    backtrace::resolve((ip - 1) as *mut core::ffi::c_void, |sym| {
        let mut f = base_frame.clone();
        f.function = sym.name().map(|n| n.to_string());
        f.file = sym.filename().map(|p| p.to_string_lossy().into_owned());
        f.line = sym.lineno();
        frames.push(f);
    });
    if frames.is_empty() {
        frames.push(base_frame);
    }
    // The resolver yields inlined frames first, the real function last.
    let last = frames.len() - 1;
    for f in &mut frames[..last] {
        f.inlined = true;
    }
    frames
}

/// This process, as a report names it.
pub fn process_info() -> Process {
    process(exe_path())
}

/// The frames of depot stack `id`, described (and symbolized if asked).
pub fn stack_frames(id: u32, symbolize: bool) -> Vec<Frame> {
    // Module walks and symbolization take the loader's lock.
    let _gate = LOADER_GATE.enter();
    let modules = snapshot_modules(&exe_path());
    DEPOT
        .frames(id)
        .into_iter()
        .flat_map(|ip| describe_frame(ip, &modules, symbolize))
        .collect()
}

fn process(exe: String) -> Process {
    let argv = sys::read_process_file("cmdline")
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Process {
        pid: sys::getpid() as u32,
        exe,
        argv,
    }
}

/// Build the report of one check.
pub fn build(
    result: &CheckResult,
    trigger: Trigger,
    number: u64,
    max_objects: usize,
    symbolize: bool,
) -> Report {
    let now = sys::coarse_ms() as u32;
    let mut groups: HashMap<(bool, u32), Vec<LeakRecord>> = HashMap::new();
    for leak in result.leaks.as_slice() {
        groups
            .entry((leak.direct, leak.stack))
            .or_default()
            .push(*leak);
    }
    let exe = exe_path();
    // Module walks and symbolization take the loader's lock.
    let _gate = LOADER_GATE.enter();
    let modules = snapshot_modules(&exe);
    let mut summary = Summary::default();
    let leaks: Vec<LeakGroup> = groups
        .into_iter()
        .map(|((direct, stack), mut blocks)| {
            let kind = if direct {
                LeakKind::Direct
            } else {
                LeakKind::Indirect
            };
            let bytes: u64 = blocks.iter().map(|b| b.size as u64).sum();
            summary.add(kind, blocks.len() as u64, bytes);
            blocks.sort_by_key(|b| (std::cmp::Reverse(b.size), b.start));
            LeakGroup {
                id: None,
                kind,
                count: blocks.len() as u64,
                bytes,
                objects: blocks
                    .iter()
                    .take(max_objects)
                    .map(|b| LeakedObject {
                        address: hex(b.start as u64),
                        size: b.size as u64,
                        age_ms: u64::from(now.wrapping_sub(b.tick)),
                    })
                    .collect(),
                stack: DEPOT
                    .frames(stack)
                    .into_iter()
                    .flat_map(|ip| describe_frame(ip, &modules, symbolize))
                    .collect(),
                pid: None,
                baseline: None,
            }
        })
        .collect();
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        tool: Tool::current(),
        process: process(exe),
        scan: Scan {
            trigger,
            number,
            duration_ms: result.duration_ns as f64 / 1e6,
            scanned_bytes: result.scanned_bytes,
            live_blocks: result.live_blocks,
            live_bytes: result.live_bytes,
        },
        summary,
        leaks,
        children: Vec::new(),
        suppressions: Vec::new(),
        omitted: Default::default(),
    };
    fingerprint::assign_ids(&mut report);
    suppress::apply(&mut report, suppressions());
    sort_groups(&mut report.leaks);
    report
}
