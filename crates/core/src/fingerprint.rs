//! Stable leak-group ids, for baselines and for SARIF fingerprints.
//!
//! A CI job wants to fail on *new* leaks only, so a leak group needs a name
//! that survives a rerun: not its addresses (ASLR, heap layout), not its
//! counts (the same leak may repeat more often), and not its line numbers
//! (editing a file above a known leak must not make it "new"). The id is a
//! hash of what identifies the code path:
//!
//! - the kind (direct or indirect);
//! - each frame of the allocation stack, innermost first, down to and
//!   including `main` (what lies below `main` is the C runtime's start-up
//!   and only changes with the C library): its function name when
//!   symbolized (a Rust name without its `::h<hash>` suffix), else the
//!   module's file name and the offset in it.
//!
//! So a stripped binary's group changes id once it is symbolized
//! (`leakscan report --symbolize` recomputes ids), and a rebuilt stripped
//! binary's ids may change with its offsets. The hash is 64-bit FNV-1a,
//! written as 16 hex digits; its input is versioned so that a future change
//! of recipe cannot collide with today's ids.

use crate::report::{Frame, LeakKind, Report};

const RECIPE: &str = "leakscan-group-v1";

/// The id of a group of `kind` allocated from `stack`.
pub fn group_id(kind: LeakKind, stack: &[Frame]) -> String {
    let mut h = Fnv::new();
    h.write(RECIPE.as_bytes());
    h.write(&[0]);
    h.write(kind.as_str().as_bytes());
    for frame in stack {
        h.write(&[0]);
        match frame.function.as_deref() {
            Some(function) => h.write(without_rust_hash(function).as_bytes()),
            None => {
                let module = frame.module.as_deref().map(base_name).unwrap_or("");
                h.write(module.as_bytes());
                h.write(b"+");
                h.write(frame.offset.as_deref().unwrap_or(&frame.ip).as_bytes());
            }
        }
        if frame.function.as_deref() == Some("main") && !frame.inlined {
            break;
        }
    }
    format!("{:016x}", h.0)
}

/// Give every group of `report` its id, replacing any it had: ids follow
/// the stack as it is now (after symbolization).
pub fn assign_ids(report: &mut Report) {
    for group in &mut report.leaks {
        group.id = Some(group_id(group.kind, &group.stack));
    }
}

/// Give an id to every group of `report` that has none.
pub fn fill_missing_ids(report: &mut Report) {
    for group in &mut report.leaks {
        if group.id.is_none() {
            group.id = Some(group_id(group.kind, &group.stack));
        }
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `foo::bar::h0123456789abcdef` → `foo::bar`: the hash changes with every
/// compiler version and dependency bump.
fn without_rust_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

/// 64-bit FNV-1a: tiny, and stable forever, unlike std's hashers.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ip: &str, offset: &str, function: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            ip: ip.into(),
            module: Some("/build/prog".into()),
            offset: Some(offset.into()),
            build_id: Some("abcd".into()),
            function: function.map(Into::into),
            file: line.map(|_| "/src/prog.c".into()),
            line,
            inlined: false,
        }
    }

    #[test]
    fn pinned_value() {
        // The id is a contract: baselines saved today must match tomorrow.
        let stack = [
            frame("0x1", "0x10", Some("make"), Some(3)),
            frame("0x2", "0x20", Some("main"), Some(9)),
        ];
        assert_eq!(group_id(LeakKind::Direct, &stack), "47bd8124948c75f1");
    }

    #[test]
    fn addresses_lines_and_what_lies_below_main_do_not_matter() {
        let a = [
            frame("0x5555", "0x10", Some("make"), Some(3)),
            frame("0x5566", "0x20", Some("main"), Some(9)),
            frame("0x7fff", "0x2724a", Some("__libc_start_call_main"), None),
        ];
        let b = [
            frame("0x6666", "0x99", Some("make"), Some(30)),
            frame("0x6677", "0x98", Some("main"), Some(90)),
        ];
        assert_eq!(
            group_id(LeakKind::Direct, &a),
            group_id(LeakKind::Direct, &b)
        );
        assert_ne!(
            group_id(LeakKind::Direct, &a),
            group_id(LeakKind::Indirect, &a)
        );
        let other = [frame("0x1", "0x10", Some("make2"), Some(3))];
        assert_ne!(
            group_id(LeakKind::Direct, &a[..1]),
            group_id(LeakKind::Direct, &other)
        );
    }

    #[test]
    fn unsymbolized_frames_use_module_and_offset() {
        let a = [frame("0x5555", "0x10", None, None)];
        let b = [frame("0x6666", "0x10", None, None)];
        let c = [frame("0x5555", "0x11", None, None)];
        assert_eq!(
            group_id(LeakKind::Direct, &a),
            group_id(LeakKind::Direct, &b)
        );
        assert_ne!(
            group_id(LeakKind::Direct, &a),
            group_id(LeakKind::Direct, &c)
        );
    }

    #[test]
    fn rust_hashes_are_ignored() {
        assert_eq!(without_rust_hash("a::b::h0123456789abcdef"), "a::b");
        assert_eq!(without_rust_hash("a::b::hello"), "a::b::hello");
        assert_eq!(without_rust_hash("plain"), "plain");
    }
}
