//! SARIF 2.1.0, for code scanning (GitHub, GitLab, Azure DevOps).
//!
//! One run (code scanning wants one run per tool), one result per leak
//! group of every report:
//!
//! - rule `direct-leak` (level `error`) or `indirect-leak` (`warning`:
//!   fixing the direct leak that owns it fixes it too);
//! - message: bytes, objects and the allocating function;
//! - location: the first frame in the user's own code — the innermost frame
//!   whose file lies under the source root, else the innermost with a
//!   source file outside system directories — as a path relative to the
//!   source root (`uriBaseId` `SRCROOT`) when it is under it;
//! - the allocation stack as a code flow, outermost call first, as SARIF
//!   orders thread flows;
//! - `partialFingerprints.leakscanGroupId/v1`: the group's stable id, so
//!   that code scanning tracks one alert across runs.
//!
//! The document is built as a `serde_json::Value`, whose map keeps keys
//! sorted: the output is deterministic.

use std::path::Path;

use serde_json::{json, Map, Value};

use leakscan_core::report::{Frame, LeakGroup, LeakKind, Report, Tool};

use super::text;

const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
const BASE_ID: &str = "SRCROOT";

pub fn render(reports: &[Report], source_root: &Path) -> String {
    let tool = Tool::current();
    let results: Vec<Value> = reports
        .iter()
        .flat_map(|r| {
            r.leaks
                .iter()
                .map(move |g| result(g, r.process.pid, source_root))
        })
        .collect();
    let log = json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": tool.name,
                "version": tool.version,
                "semanticVersion": tool.version,
                "rules": [rule(LeakKind::Direct), rule(LeakKind::Indirect)],
            }},
            "originalUriBaseIds": {
                BASE_ID: {"uri": directory_uri(source_root)},
            },
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    });
    let mut out = serde_json::to_string_pretty(&log).expect("SARIF serializes");
    out.push('\n');
    out
}

fn rule(kind: LeakKind) -> Value {
    let (name, short, full, level) = match kind {
        LeakKind::Direct => (
            "DirectLeak",
            "Direct memory leak",
            "A heap block that nothing points to any more: no pointer to it is left in \
             globals, thread stacks, TLS or other reachable heap blocks, so it can never \
             be freed.",
            "error",
        ),
        LeakKind::Indirect => (
            "IndirectLeak",
            "Indirect memory leak",
            "A heap block reachable only through other leaked blocks: it is lost with \
             them, and freeing the direct leak that owns it frees it too.",
            "warning",
        ),
    };
    json!({
        "id": rule_id(kind),
        "name": name,
        "shortDescription": {"text": short},
        "fullDescription": {"text": full},
        "help": {"text": "Free the block on every path, or keep a pointer to it for as \
                          long as it is used. The allocation stack shows where it was made."},
        "defaultConfiguration": {"level": level},
    })
}

fn rule_id(kind: LeakKind) -> &'static str {
    match kind {
        LeakKind::Direct => "direct-leak",
        LeakKind::Indirect => "indirect-leak",
    }
}

fn result(group: &LeakGroup, root_pid: u32, root: &Path) -> Value {
    let (title, level, index) = match group.kind {
        LeakKind::Direct => ("Direct leak", "error", 0),
        LeakKind::Indirect => ("Indirect leak", "warning", 1),
    };
    let primary = primary_frame(&group.stack, root);
    let mut message = format!(
        "{title} of {} in {} allocated",
        plural(group.bytes, "byte", "bytes"),
        plural(group.count, "object", "objects")
    );
    if let Some(frame) = primary {
        if let Some(function) = &frame.function {
            message.push_str(&format!(" from {function}"));
        }
        if let (Some(file), Some(line)) = (&frame.file, frame.line) {
            message.push_str(&format!(" ({}:{line})", display_path(file, root)));
        }
    }
    message.push('.');

    let mut value = json!({
        "ruleId": rule_id(group.kind),
        "ruleIndex": index,
        "level": level,
        "message": {"text": message},
        "locations": [location(primary.or(group.stack.first()), root)],
        "properties": {
            "count": group.count,
            "bytes": group.bytes,
            "pid": group.pid.unwrap_or(root_pid),
        },
    });
    let map = value.as_object_mut().expect("an object");
    if let Some(id) = &group.id {
        map.insert(
            "partialFingerprints".into(),
            json!({"leakscanGroupId/v1": id}),
        );
    }
    if !group.stack.is_empty() {
        let steps: Vec<Value> = group
            .stack
            .iter()
            .enumerate()
            .rev()
            .enumerate()
            .map(|(depth, (i, frame))| {
                let mut loc = location(Some(frame), root);
                loc["message"] = json!({"text": text::frame_line(i, frame, text::Paint(false))});
                json!({"location": loc, "nestingLevel": depth})
            })
            .collect();
        map.insert(
            "codeFlows".into(),
            json!([{
                "message": {"text": "allocation stack, outermost call first"},
                "threadFlows": [{"locations": steps}],
            }]),
        );
    }
    value
}

/// The frame a person should look at first (see the module comment).
fn primary_frame<'a>(stack: &'a [Frame], root: &Path) -> Option<&'a Frame> {
    stack
        .iter()
        .find(|f| f.file.as_deref().is_some_and(|p| under(p, root)))
        .or_else(|| {
            stack.iter().find(|f| {
                f.file.as_deref().is_some_and(|p| !is_system(p))
                    && !f.module.as_deref().is_some_and(is_system)
            })
        })
        .or_else(|| stack.iter().find(|f| f.file.is_some()))
}

fn is_system(path: &str) -> bool {
    ["/usr/", "/lib/", "/lib64/", "/lib32/"]
        .iter()
        .any(|p| path.starts_with(p))
}

fn under(path: &str, root: &Path) -> bool {
    Path::new(path).strip_prefix(root).is_ok()
}

fn display_path(path: &str, root: &Path) -> String {
    match Path::new(path).strip_prefix(root) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string(),
    }
}

/// A SARIF location for `frame`: its source file and line when known, else
/// its module; the function as a logical location.
fn location(frame: Option<&Frame>, root: &Path) -> Value {
    let Some(frame) = frame else {
        return json!({});
    };
    let mut loc = Map::new();
    let artifact = match (&frame.file, &frame.module) {
        (Some(file), _) => Some((file, true)),
        (None, Some(module)) => Some((module, false)),
        (None, None) => None,
    };
    if let Some((path, is_source)) = artifact {
        let mut physical = Map::new();
        physical.insert("artifactLocation".into(), artifact_location(path, root));
        if let (true, Some(line)) = (is_source, frame.line.filter(|l| *l > 0)) {
            physical.insert("region".into(), json!({"startLine": line}));
        }
        loc.insert("physicalLocation".into(), Value::Object(physical));
    }
    if let Some(function) = &frame.function {
        loc.insert(
            "logicalLocations".into(),
            json!([{"name": function, "kind": "function"}]),
        );
    }
    Value::Object(loc)
}

fn artifact_location(path: &str, root: &Path) -> Value {
    match Path::new(path).strip_prefix(root) {
        Ok(rel) => json!({
            "uri": encode(&rel.to_string_lossy()),
            "uriBaseId": BASE_ID,
        }),
        Err(_) if path.starts_with('/') => json!({"uri": format!("file://{}", encode(path))}),
        // A relative path the compiler recorded: relative to where it ran,
        // which is unknown here.
        Err(_) => json!({"uri": encode(path)}),
    }
}

/// `file:///abs/dir/` (SARIF wants base URIs to end with a slash).
fn directory_uri(dir: &Path) -> String {
    let mut text = dir.to_string_lossy().into_owned();
    if !text.ends_with('/') {
        text.push('/');
    }
    format!("file://{}", encode(&text))
}

/// Percent-encode a path for a URI, keeping `/` and RFC 3986's unreserved
/// characters.
fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(file: Option<&str>, module: &str, function: Option<&str>) -> Frame {
        Frame {
            ip: "0x1".into(),
            module: Some(module.into()),
            offset: Some("0x1".into()),
            build_id: None,
            function: function.map(Into::into),
            file: file.map(Into::into),
            line: file.map(|_| 7),
            inlined: false,
        }
    }

    #[test]
    fn the_first_frame_in_the_users_code_is_the_location() {
        let root = Path::new("/repo");
        let stack = [
            frame(Some("/usr/include/c++/12/new"), "/repo/build/p", Some("op")),
            frame(None, "/lib/x86_64-linux-gnu/libc.so.6", Some("strdup")),
            frame(Some("/repo/src/a.c"), "/repo/build/p", Some("make")),
            frame(Some("/repo/src/main.c"), "/repo/build/p", Some("main")),
        ];
        assert_eq!(
            primary_frame(&stack, root).unwrap().function.as_deref(),
            Some("make")
        );
        // Outside the root: the first frame with a file outside /usr.
        let elsewhere = Path::new("/other");
        assert_eq!(
            primary_frame(&stack, elsewhere)
                .unwrap()
                .function
                .as_deref(),
            Some("make")
        );
        let loc = location(Some(&stack[2]), root);
        assert_eq!(
            loc["physicalLocation"]["artifactLocation"],
            json!({"uri": "src/a.c", "uriBaseId": "SRCROOT"})
        );
        assert_eq!(loc["physicalLocation"]["region"]["startLine"], 7);
        let loc = location(Some(&stack[1]), root);
        assert_eq!(
            loc["physicalLocation"]["artifactLocation"]["uri"],
            "file:///lib/x86_64-linux-gnu/libc.so.6"
        );
        assert!(loc["physicalLocation"].get("region").is_none());
    }

    #[test]
    fn uris_are_encoded() {
        assert_eq!(encode("/a b/c%d.c"), "/a%20b/c%25d.c");
        assert_eq!(directory_uri(Path::new("/r")), "file:///r/");
    }
}
