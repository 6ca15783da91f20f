//! What of a report is shown: the steps between reading a report and
//! rendering it, shared by `leakscan run` and `leakscan report`.
//!
//! 1. Symbolize (`--symbolize`, `--debug-dir`): frames that have only
//!    module + offset + build-id get function, file and line.
//! 2. Ids: every group gets its stable id, recomputed after step 1.
//! 3. Suppress (`--suppressions`): matching groups leave `leaks` and are
//!    counted in `summary.suppressed_*` and `suppressions`.
//! 4. Baseline (`--baseline OLD.json`): groups whose id is in the baseline
//!    and that have not grown there leave `leaks` (`omitted.baseline`).
//! 5. Filter (`--kind`, `--min-bytes`, then `--top`): `omitted.filtered`.
//! 6. The summary is recounted from the groups that are left, so that it
//!    always describes `leaks`: what a CI job reads from `summary` is what
//!    the report shows, and "leaks found" means "some group is shown".
//!
//! Every file a view needs (suppressions, baseline, debug directories) is
//! read when the view is built, before anything runs, so that a mistake in
//! one is an error (exit 2) rather than a surprise after a long test run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use leakscan_core::fingerprint;
use leakscan_core::report::{BaselineSize, LeakKind, Report, Summary};
use leakscan_core::suppress::{self, Suppressions};

use crate::args::{KindArg, ViewArgs};
use crate::error::Error;
use crate::input;
use crate::symbolize::Symbolizer;

/// A validated view.
#[derive(Debug, Default)]
pub struct View {
    pub suppressions: Vec<Suppressions>,
    pub print_suppressions: bool,
    pub baseline: Option<Baseline>,
    pub min_bytes: Option<u64>,
    pub top: Option<usize>,
    pub kind: Option<LeakKind>,
    /// `Some` with `--symbolize` or `--debug-dir`: the extra debug directories.
    pub debug_dirs: Option<Vec<PathBuf>>,
    /// Where SARIF paths are relative to.
    pub source_root: PathBuf,
}

impl View {
    pub fn new(args: ViewArgs) -> Result<View, Error> {
        let suppressions = args
            .suppressions
            .iter()
            .map(|path| load_suppressions(path))
            .collect::<Result<_, _>>()?;
        let baseline = args.baseline.as_deref().map(Baseline::load).transpose()?;
        for dir in &args.debug_dir {
            if !dir.is_dir() {
                return Err(Error::DebugDir(dir.clone()));
            }
        }
        // The root need not exist here: SARIF may be made on another
        // machine than the one that built the program.
        let source_root = match args.source_root {
            Some(dir) if dir.exists() && !dir.is_dir() => return Err(Error::SourceRoot(dir)),
            Some(dir) => std::path::absolute(&dir).unwrap_or(dir),
            None => default_source_root(),
        };
        Ok(View {
            suppressions,
            print_suppressions: args.print_suppressions,
            baseline,
            min_bytes: args.min_bytes,
            top: args.top.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            kind: args.kind.map(|k| match k {
                KindArg::Direct => LeakKind::Direct,
                KindArg::Indirect => LeakKind::Indirect,
            }),
            debug_dirs: (args.symbolize || !args.debug_dir.is_empty()).then_some(args.debug_dir),
            source_root,
        })
    }

    /// A symbolizer when the view asks for one.
    pub fn symbolizer(&self) -> Option<Symbolizer> {
        self.debug_dirs.as_ref().map(|dirs| Symbolizer::new(dirs))
    }

    /// Steps 1-6 on one report.
    pub fn apply(&self, report: &mut Report, symbolizer: Option<&mut Symbolizer>) {
        // 1-2. Symbols, then ids from them.
        match symbolizer {
            Some(symbolizer) => {
                symbolizer.symbolize(report);
                fingerprint::assign_ids(report);
            }
            None => fingerprint::fill_missing_ids(report),
        }
        // 3. Suppressions.
        suppress::apply(report, &self.suppressions);
        // 4. Baseline.
        if let Some(baseline) = &self.baseline {
            baseline.apply(report);
        }
        // 5. Filters.
        let mut shown = Vec::with_capacity(report.leaks.len());
        for group in std::mem::take(&mut report.leaks) {
            let wanted = self.kind.is_none_or(|k| k == group.kind)
                && self.min_bytes.is_none_or(|n| group.bytes >= n)
                && self.top.is_none_or(|n| shown.len() < n);
            if wanted {
                shown.push(group);
            } else {
                report.omitted.filtered.add(&group);
            }
        }
        report.leaks = shown;
        // 6. The summary describes what is shown.
        report.summary = Summary::of_groups(&report.leaks, &report.summary);
    }
}

fn load_suppressions(path: &Path) -> Result<Suppressions, Error> {
    let text = input::read_text(path, "suppression file", input::MAX_SUPPRESSIONS_BYTES)?;
    Suppressions::parse(&path.to_string_lossy(), &text).map_err(|source| Error::Suppressions {
        path: path.to_path_buf(),
        source,
    })
}

/// The git work tree around the current directory, else the current
/// directory: SARIF consumers (code scanning) want paths relative to the
/// repository.
fn default_source_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    cwd.ancestors()
        .find(|dir| dir.join(".git").exists())
        .unwrap_or(&cwd)
        .to_path_buf()
}

/// The leak groups of a saved report, by id.
#[derive(Debug, Default)]
pub struct Baseline {
    sizes: HashMap<String, BaselineSize>,
}

impl Baseline {
    pub fn load(path: &Path) -> Result<Baseline, Error> {
        let reports = match input::read_document(Some(path), path) {
            Ok(doc) => doc.into_reports(),
            Err(Error::ReadReport { path, source }) => {
                return Err(Error::ReadInput {
                    what: "baseline",
                    path,
                    source,
                })
            }
            Err(e) => return Err(e),
        };
        Ok(Baseline::from_reports(reports))
    }

    pub fn from_reports(reports: Vec<Report>) -> Baseline {
        let mut baseline = Baseline::default();
        for mut report in reports {
            fingerprint::fill_missing_ids(&mut report);
            for (id, size) in sizes_by_id(&report) {
                let total = baseline
                    .sizes
                    .entry(id)
                    .or_insert(BaselineSize { count: 0, bytes: 0 });
                total.count = total.count.saturating_add(size.count);
                total.bytes = total.bytes.saturating_add(size.bytes);
            }
        }
        baseline
    }

    /// Keep the groups whose id is new, or whose id's total grew (all the
    /// groups of that id, each told how big the id was in the baseline).
    pub fn apply(&self, report: &mut Report) {
        let now = sizes_by_id(report);
        for group in std::mem::take(&mut report.leaks) {
            let id = group.id.clone().unwrap_or_default();
            let before = self.sizes.get(&id).copied();
            let grew = match (before, now.get(&id)) {
                (None, _) => true,
                (Some(b), Some(n)) => n.count > b.count || n.bytes > b.bytes,
                (Some(_), None) => false,
            };
            if grew {
                report.leaks.push(leakscan_core::report::LeakGroup {
                    baseline: before,
                    ..group
                });
            } else {
                report.omitted.baseline.add(&group);
            }
        }
    }
}

fn sizes_by_id(report: &Report) -> HashMap<String, BaselineSize> {
    let mut sizes: HashMap<String, BaselineSize> = HashMap::new();
    for group in &report.leaks {
        let size = sizes
            .entry(group.id.clone().unwrap_or_default())
            .or_insert(BaselineSize { count: 0, bytes: 0 });
        size.count = size.count.saturating_add(group.count);
        size.bytes = size.bytes.saturating_add(group.bytes);
    }
    sizes
}

/// Whether anything is left to show in `reports`.
pub fn any_leaks(reports: &[Report]) -> bool {
    reports.iter().any(|r| r.summary.leaked_blocks > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakscan_core::report::{Frame, GroupCounts, LeakGroup, Process, Trigger};

    fn group(kind: LeakKind, function: &str, count: u64, bytes: u64) -> LeakGroup {
        LeakGroup {
            id: None,
            kind,
            count,
            bytes,
            objects: vec![],
            stack: vec![Frame {
                ip: "0x1".into(),
                module: Some("/bin/p".into()),
                offset: Some("0x1".into()),
                build_id: None,
                function: Some(function.into()),
                file: None,
                line: None,
                inlined: false,
            }],
            pid: None,
            baseline: None,
        }
    }

    fn report(groups: Vec<LeakGroup>) -> Report {
        let mut summary = Summary::default();
        for g in &groups {
            summary.add(g.kind, g.count, g.bytes);
        }
        let process = Process {
            pid: 1,
            exe: "/bin/p".into(),
            argv: vec!["p".into()],
        };
        Report {
            summary,
            leaks: groups,
            ..Report::blank(process, Trigger::Exit)
        }
    }

    fn shown(r: &Report) -> Vec<&str> {
        r.leaks
            .iter()
            .map(|g| g.stack[0].function.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn baseline_shows_new_and_grown_groups_only() {
        let old = report(vec![
            group(LeakKind::Direct, "same", 1, 32),
            group(LeakKind::Direct, "grows", 1, 32),
            group(LeakKind::Direct, "shrinks", 4, 128),
        ]);
        let view = View {
            baseline: Some(Baseline::from_reports(vec![old.clone()])),
            ..View::default()
        };
        let mut unchanged = old.clone();
        view.apply(&mut unchanged, None);
        assert!(unchanged.leaks.is_empty());
        assert_eq!(unchanged.summary.leaked_blocks, 0);
        assert_eq!(unchanged.omitted.baseline.groups, 3);
        assert_eq!(unchanged.omitted.baseline.bytes, 192);

        let mut now = report(vec![
            group(LeakKind::Direct, "same", 1, 32),
            group(LeakKind::Direct, "grows", 2, 64),
            group(LeakKind::Direct, "shrinks", 1, 32),
            group(LeakKind::Direct, "new", 1, 16),
        ]);
        view.apply(&mut now, None);
        assert_eq!(shown(&now), ["grows", "new"]);
        assert_eq!(
            now.leaks[0].baseline,
            Some(BaselineSize {
                count: 1,
                bytes: 32
            })
        );
        assert_eq!(now.leaks[1].baseline, None);
        assert_eq!(now.summary.leaked_blocks, 3);
        assert_eq!(now.summary.leaked_bytes, 80);
    }

    #[test]
    fn filters_count_what_they_hide() {
        let view = View {
            kind: Some(LeakKind::Direct),
            min_bytes: Some(20),
            top: Some(1),
            ..View::default()
        };
        let mut r = report(vec![
            group(LeakKind::Direct, "big", 1, 64),
            group(LeakKind::Indirect, "ind", 1, 48),
            group(LeakKind::Direct, "mid", 1, 32),
            group(LeakKind::Direct, "small", 1, 16),
        ]);
        view.apply(&mut r, None);
        assert_eq!(shown(&r), ["big"]);
        assert_eq!(
            r.omitted.filtered,
            GroupCounts {
                groups: 3,
                blocks: 3,
                bytes: 96
            }
        );
        assert_eq!((r.summary.leaked_bytes, r.summary.indirect_bytes), (64, 0));
        assert!(r.leaks[0].id.is_some(), "every group gets its id");
    }

    #[test]
    fn suppressed_groups_are_counted_not_shown() {
        let view = View {
            suppressions: vec![Suppressions::parse("s", "leak:mid").unwrap()],
            ..View::default()
        };
        let mut r = report(vec![
            group(LeakKind::Direct, "big", 1, 64),
            group(LeakKind::Direct, "mid", 2, 32),
        ]);
        view.apply(&mut r, None);
        assert_eq!(shown(&r), ["big"]);
        assert_eq!(r.summary.suppressed_blocks, 2);
        assert_eq!(r.summary.leaked_blocks, 1);
        assert!(r.omitted.is_empty());
    }
}
