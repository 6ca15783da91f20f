//! Offline symbolization: `leakscan report --symbolize [--debug-dir DIR]`.
//!
//! The agent records every frame as module + offset + GNU build-id, and
//! resolves names only from what the running machine has. A report from a
//! stripped binary, or one written with `symbolize=0`, is resolved here,
//! later and possibly elsewhere, from debug files found by build-id:
//!
//! 1. `DIR/.build-id/xx/rest.debug` for each `--debug-dir` DIR, then
//!    `/usr/lib/debug/.build-id/xx/rest.debug` (the layout of distribution
//!    debug packages and of `objcopy --only-keep-debug` trees);
//! 2. a file in a `--debug-dir` with the module's name (or that name plus
//!    `.debug`), or any other file there, with the same build-id: an
//!    unstripped copy of the binary is enough;
//! 3. the module itself, where the report says it was, if its build-id
//!    still matches.
//!
//! A file is only used when its build-id is the frame's: a debug file from
//! another build would give confidently wrong lines. The DWARF is read with
//! `addr2line` and `object` (the crates the agent's `backtrace` uses), so
//! names, inlined frames and demangling come out as the agent's would.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use addr2line::Loader;
use leakscan_core::report::{Frame, Report};
use object::{Object, ReadCache};

/// Where distributions install debug files.
const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

pub struct Symbolizer {
    /// `--debug-dir`s, in order.
    dirs: Vec<PathBuf>,
    /// (module, build-id) → the debug file chosen for it.
    chosen: HashMap<(String, Option<String>), Option<PathBuf>>,
    loaders: HashMap<PathBuf, Option<Loader>>,
    /// Build-ids of the plain files in the `--debug-dir`s, read on first need.
    by_build_id: Option<HashMap<String, PathBuf>>,
    /// Modules whose frames stay unresolved, reported once each.
    unresolved: Vec<String>,
    warned: HashSet<String>,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Symbolizer {
    pub fn new(dirs: &[PathBuf]) -> Symbolizer {
        Symbolizer {
            dirs: dirs.to_vec(),
            chosen: HashMap::new(),
            loaders: HashMap::new(),
            by_build_id: None,
            unresolved: Vec::new(),
            warned: HashSet::new(),
        }
    }

    /// One line for each module whose frames could not be resolved.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.unresolved)
    }

    /// Resolve the frames of every leak group of `report` that a debug file
    /// is found for. Frames that already have a file and line are kept.
    pub fn symbolize(&mut self, report: &mut Report) {
        for group in &mut report.leaks {
            let stack = std::mem::take(&mut group.stack);
            for physical in split_physical(stack) {
                let resolved = self.resolve(&physical);
                group.stack.extend(resolved.unwrap_or(physical));
            }
        }
    }

    /// The frames of one return address, from its debug file.
    fn resolve(&mut self, physical: &[Frame]) -> Option<Vec<Frame>> {
        let outer = physical.last()?;
        if physical
            .iter()
            .all(|f| f.file.is_some() && f.line.is_some())
        {
            return None;
        }
        let module = outer.module.clone()?;
        let offset = parse_hex(outer.offset.as_deref()?)?;
        let key = (module.clone(), outer.build_id.clone());
        let path = match self.chosen.get(&key) {
            Some(path) => path.clone(),
            None => {
                let path = self.find_debug_file(&module, outer.build_id.as_deref());
                self.chosen.insert(key, path.clone());
                path
            }
        };
        let resolved = path
            .and_then(|path| self.loader(&path))
            // Return addresses point after the call; look up the call.
            .map(|loader| lookup(loader, offset.saturating_sub(1), outer))
            .filter(|frames| !frames.is_empty());
        if resolved.is_none() && outer.function.is_none() && self.warned.insert(module.clone()) {
            let id = outer
                .build_id
                .as_deref()
                .map(|b| format!(" (build-id {b})"))
                .unwrap_or_default();
            self.unresolved.push(format!(
                "no debug information for {module}{id}: its frames stay as module+offset"
            ));
        }
        resolved
    }

    fn loader(&mut self, path: &Path) -> Option<&Loader> {
        self.loaders
            .entry(path.to_path_buf())
            .or_insert_with(|| Loader::new(path).ok())
            .as_ref()
    }

    /// The first debug file for `module` with `build_id` (see the module
    /// comment for the order).
    fn find_debug_file(&mut self, module: &str, build_id: Option<&str>) -> Option<PathBuf> {
        let matches = |path: &Path| path.is_file() && build_id_matches(path, build_id);
        // Only a hex build-id names a file in a .build-id tree (anything
        // else, from a hand-edited report, must not become a path).
        let hex_id =
            build_id.filter(|id| id.len() > 2 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        if let Some(id) = hex_id {
            let (head, tail) = id.split_at(2);
            let in_tree = self
                .dirs
                .iter()
                .map(PathBuf::as_path)
                .chain([Path::new(SYSTEM_DEBUG_DIR)])
                .map(|dir| {
                    dir.join(".build-id")
                        .join(head)
                        .join(format!("{tail}.debug"))
                })
                .find(|p| p.is_file());
            if in_tree.is_some() {
                return in_tree;
            }
        }
        let name = Path::new(module)
            .file_name()?
            .to_string_lossy()
            .into_owned();
        let by_name = self
            .dirs
            .iter()
            .flat_map(|dir| [dir.join(&name), dir.join(format!("{name}.debug"))])
            .find(|p| matches(p));
        if by_name.is_some() {
            return by_name;
        }
        if let Some(id) = build_id {
            if let Some(path) = self.dir_index().get(id) {
                return Some(path.clone());
            }
        }
        let original = PathBuf::from(module);
        matches(&original).then_some(original)
    }

    fn dir_index(&mut self) -> &HashMap<String, PathBuf> {
        let dirs = &self.dirs;
        self.by_build_id.get_or_insert_with(|| {
            let mut index = HashMap::new();
            for dir in dirs {
                let Ok(entries) = fs::read_dir(dir) else {
                    continue;
                };
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                for file in files {
                    if let Some(id) = read_build_id(&file) {
                        index.entry(id).or_insert(file);
                    }
                }
            }
            index
        })
    }
}

/// Split a stack into the frames of each return address: inlined frames
/// (`inlined: true`) followed by the function they were inlined into.
fn split_physical(stack: Vec<Frame>) -> Vec<Vec<Frame>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for frame in stack {
        let last = !frame.inlined;
        current.push(frame);
        if last {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The frames at `probe` in `loader`'s file, innermost (inlined) first, each
/// keeping `outer`'s address, module, offset and build-id.
fn lookup(loader: &Loader, probe: u64, outer: &Frame) -> Vec<Frame> {
    let mut frames = Vec::new();
    if let Ok(mut iter) = loader.find_frames(probe) {
        while let Ok(Some(f)) = iter.next() {
            let function = f
                .function
                .as_ref()
                .and_then(|n| n.demangle().ok())
                .map(|n| n.into_owned());
            let (file, line) = f
                .location
                .map(|l| (l.file.map(str::to_string), l.line))
                .unwrap_or_default();
            frames.push(Frame {
                function,
                file,
                line,
                inlined: true,
                ..outer.clone()
            });
        }
    }
    // No DWARF here: the symbol table may still name the function.
    if frames.iter().all(|f| f.function.is_none()) {
        if let Some(name) = loader.find_symbol(probe) {
            let name = addr2line::demangle_auto(name.into(), None).into_owned();
            match frames.last_mut() {
                Some(f) => f.function = Some(name),
                None => frames.push(Frame {
                    function: Some(name),
                    inlined: true,
                    ..outer.clone()
                }),
            }
        }
    }
    if frames
        .iter()
        .all(|f| f.function.is_none() && f.file.is_none())
    {
        return Vec::new();
    }
    if let Some(last) = frames.last_mut() {
        last.inlined = false;
    }
    frames
}

fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

/// The GNU build-id of an ELF file, as lowercase hex; only the headers and
/// the note are read.
pub fn read_build_id(path: &Path) -> Option<String> {
    let file = fs::File::open(path).ok()?;
    let cache = ReadCache::new(file);
    let object = object::File::parse(&cache).ok()?;
    let id = object.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

fn build_id_matches(path: &Path, want: Option<&str>) -> bool {
    match want {
        Some(want) => read_build_id(path).as_deref() == Some(want),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ip: &str, function: Option<&str>, inlined: bool) -> Frame {
        Frame {
            ip: ip.into(),
            module: None,
            offset: None,
            build_id: None,
            function: function.map(Into::into),
            file: None,
            line: None,
            inlined,
        }
    }

    #[test]
    fn physical_frames_end_at_the_non_inlined_one() {
        let stack = vec![
            frame("0x1", Some("inner"), true),
            frame("0x1", Some("outer"), false),
            frame("0x2", Some("main"), false),
        ];
        let split = split_physical(stack);
        let sizes: Vec<usize> = split.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 1]);
    }

    #[test]
    fn this_test_binary_has_a_build_id_and_resolves_itself() {
        let exe = std::env::current_exe().unwrap();
        let id = read_build_id(&exe).expect("rustc links with a build-id");
        assert!(id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(build_id_matches(&exe, Some(&id)));
        assert!(!build_id_matches(&exe, Some("00")));
        assert_eq!(read_build_id(Path::new("/nonexistent")), None);
        assert_eq!(parse_hex("0x1f"), Some(31));
        assert_eq!(parse_hex("1f"), None);
    }
}
