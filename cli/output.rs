//! Where a rendered report goes, and writing it there.
//!
//! A file is replaced atomically (temporary file in the same directory, then
//! rename), so a CI job never reads half a report. A closed stdout (`| head`)
//! is not an error: the reader has what it wanted.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::args::Format;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Destination {
    /// `--output FILE` if given; else JSON and SARIF go to stdout and text
    /// to `text_stream` (stderr for `run`, whose stdout is the program's).
    pub fn for_output(output: Option<PathBuf>, text_stream: Destination, format: Format) -> Self {
        match (output, format) {
            (Some(path), _) => Destination::File(path),
            (None, Format::Json | Format::Sarif) => Destination::Stdout,
            (None, Format::Text) => text_stream,
        }
    }

    /// Fail early, before running anything, when FILE cannot be written.
    pub fn check(&self) -> Result<(), Error> {
        let Destination::File(path) = self else {
            return Ok(());
        };
        if path.is_dir() || path.file_name().is_none() {
            return Err(Error::Output {
                path: path.clone(),
                source: io::Error::from(io::ErrorKind::IsADirectory),
            });
        }
        if !parent(path).is_dir() {
            return Err(Error::OutputDir(path.clone()));
        }
        Ok(())
    }

    pub fn write(&self, text: &str) -> Result<(), Error> {
        match self {
            Destination::Stdout => write_stream(&mut io::stdout().lock(), text, "<stdout>"),
            // Nowhere left to complain to if stderr fails.
            Destination::Stderr => {
                let _ = write_stream(&mut io::stderr().lock(), text, "<stderr>");
                Ok(())
            }
            Destination::File(path) => {
                write_atomically(path, text).map_err(|source| Error::Output {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
}

fn write_stream(stream: &mut dyn Write, text: &str, name: &str) -> Result<(), Error> {
    match stream
        .write_all(text.as_bytes())
        .and_then(|()| stream.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Error::Output {
            path: name.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `text` to a temporary file beside `path`, then rename it over.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = parent(path).join(tmp_name);
    let result = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_goes_to_the_given_stream_json_to_stdout() {
        let d = Destination::for_output(None, Destination::Stderr, Format::Text);
        assert_eq!(d, Destination::Stderr);
        let d = Destination::for_output(None, Destination::Stderr, Format::Json);
        assert_eq!(d, Destination::Stdout);
        let d = Destination::for_output(Some("r.json".into()), Destination::Stderr, Format::Json);
        assert_eq!(d, Destination::File("r.json".into()));
        assert!(d.check().is_ok());
        let d = Destination::File("/nonexistent-dir/r.json".into());
        assert!(matches!(d.check(), Err(Error::OutputDir(_))));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("leakscan-output-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        write_atomically(&path, "one").unwrap();
        write_atomically(&path, "two").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
