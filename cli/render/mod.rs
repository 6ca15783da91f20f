//! Turning a [`Report`] into what a person or a program reads. The schema
//! belongs to leakscan-core (invariant I7): JSON is its own serialization,
//! text is rendered here.

pub mod text;

use leakscan_core::report::Report;

use crate::args::Format;

pub fn render(report: &Report, format: Format, color: bool) -> String {
    match format {
        Format::Json => report.to_json(),
        Format::Text => text::render(report, color),
    }
}
