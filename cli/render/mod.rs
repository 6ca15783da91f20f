//! Turning reports into what a person or a program reads. The schema
//! belongs to leakscan-core (invariant I7): JSON is its own serialization,
//! text and SARIF are rendered here.

pub mod sarif;
pub mod text;

use std::path::Path;

use leakscan_core::report::{Report, ReportSet};

use crate::args::Format;
use crate::source::Shape;

/// How to render, beyond the format.
#[derive(Debug, Clone, Copy)]
pub struct Style<'a> {
    pub color: bool,
    /// Text: include LeakSanitizer's "Suppressions used" table.
    pub print_suppressions: bool,
    /// SARIF: paths under it are written relative to it.
    pub source_root: &'a Path,
}

/// `reports` in `format`; a one-report shape is the report itself in JSON,
/// a set is a [`ReportSet`].
pub fn render(reports: &[Report], shape: Shape, format: Format, style: Style) -> String {
    match (format, shape, reports) {
        (Format::Json, Shape::One, [report]) => report.to_json(),
        (Format::Json, _, _) => ReportSet::new(reports.to_vec()).to_json(),
        (Format::Text, _, _) => text::render_all(reports, style.color, style.print_suppressions),
        (Format::Sarif, _, _) => sarif::render(reports, style.source_root),
    }
}
