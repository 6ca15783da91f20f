//! `leakscan report FILE`: render one report the agent wrote.

use std::io::Read;
use std::path::PathBuf;

use leakscan_core::report::Report;

use crate::error::Error;
use crate::render;
use crate::settings::ReportSettings;

pub fn run(s: &ReportSettings) -> Result<u8, Error> {
    let name = s.file.clone().unwrap_or_else(|| PathBuf::from("<stdin>"));
    let text = match &s.file {
        Some(path) => std::fs::read_to_string(path),
        None => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map(|_| text)
        }
    }
    .map_err(|source| Error::ReadReport {
        path: name.clone(),
        source,
    })?;
    let report =
        Report::from_json(&text).map_err(|source| Error::BadReport { path: name, source })?;
    s.destination
        .write(&render::render(&report, s.format, s.color))?;
    Ok(0)
}
