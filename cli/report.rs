//! `leakscan report`: read reports from a [`Source`], pass each through the
//! [`View`], render them.
//!
//! Exit status: 0; 1 when `--fail-on-leaks` is given and a leak is still
//! shown; 2 when something could not be read (the `Error`s, and reports in
//! a directory that were skipped, after showing the others).

use leakscan_core::report::Report;

use crate::args::Format;
use crate::error::Error;
use crate::render::{self, text, Style};
use crate::settings::ReportSettings;
use crate::source::{self, Shape, Source};
use crate::view::{self, View};

pub fn run(s: &ReportSettings) -> Result<u8, Error> {
    let loaded = source::load(&s.source)?;
    for line in &loaded.skipped {
        eprintln!("leakscan: {}", crate::error::one_line(line));
    }
    let mut reports = loaded.reports;
    apply_view(&s.view, &mut reports);
    show(&reports, loaded.shape, s)?;
    Ok(if !loaded.skipped.is_empty() {
        2
    } else if s.fail_on_leaks && view::any_leaks(&reports) {
        1
    } else {
        0
    })
}

/// The view on every report, with the symbolizer's warnings on stderr.
pub fn apply_view(view: &View, reports: &mut [Report]) {
    let mut symbolizer = view.symbolizer();
    for report in reports.iter_mut() {
        view.apply(report, symbolizer.as_mut());
    }
    if let Some(symbolizer) = &mut symbolizer {
        for warning in symbolizer.take_warnings() {
            eprintln!("leakscan: warning: {}", crate::error::one_line(&warning));
        }
    }
}

fn show(reports: &[Report], shape: Shape, s: &ReportSettings) -> Result<(), Error> {
    let style = Style {
        color: s.color,
        print_suppressions: s.view.print_suppressions,
        source_root: &s.view.source_root,
    };
    let out = if s.format == Format::Text && reports.is_empty() {
        match &s.source {
            Source::Dir { path, .. } => format!("leakscan: no reports in {}\n", path.display()),
            _ => "leakscan: no reports\n".to_string(),
        }
    } else {
        render::render(reports, shape, s.format, style)
    };
    s.destination.write(&out)?;
    print_suppressions_aside(&s.view, s.format, reports);
    Ok(())
}

/// With JSON or SARIF on stdout, the suppressions table goes to stderr
/// (text has it inline).
pub fn print_suppressions_aside(view: &View, format: Format, reports: &[Report]) {
    if view.print_suppressions && format != Format::Text {
        for report in reports {
            eprint!("{}", text::suppressions_table(report));
        }
    }
}
