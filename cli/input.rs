//! Reading the files a user names: reports (`leakscan report FILE`, `-`,
//! `--dir`, `--baseline`) and suppression files. Whatever they hold, the
//! answer is the contents or one error line naming the file, in bounded
//! time and memory:
//!
//! - a report is parsed as it is read, so garbage (a binary, `/dev/urandom`)
//!   is refused at its first bytes and `/dev/zero` is not read forever;
//! - no input is read past a size limit ([`MAX_REPORT_BYTES`],
//!   [`MAX_SUPPRESSIONS_BYTES`]): a regular file is refused by its size
//!   before reading, a pipe or device when it has given that much.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use leakscan_core::report::{Document, ReportError};

use crate::error::Error;

/// Largest report document read: far above any real report (a group costs
/// about 1 KiB of JSON, an object listed in it about 80 bytes).
pub const MAX_REPORT_BYTES: u64 = 1 << 30;
/// Largest suppression file read (LeakSanitizer's are a few KiB).
pub const MAX_SUPPRESSIONS_BYTES: u64 = 64 << 20;

/// A reader that gives at most `left` bytes, then fails if there is more.
struct Capped<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // At the limit: end of input is fine, one byte more is not.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.over = true;
                    Err(io::Error::other("over the size limit"))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn too_big(limit: u64) -> String {
    format!("larger than {} MiB", limit >> 20)
}

/// Open `path` (or take stdin for `None`), refusing a regular file over
/// `limit` before reading it.
fn open(path: Option<&Path>, limit: u64) -> Result<Box<dyn Read>, io::Error> {
    let Some(path) = path else {
        return Ok(Box::new(io::stdin().lock()));
    };
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from(io::ErrorKind::IsADirectory));
    }
    if meta.is_file() && meta.len() > limit {
        return Err(io::Error::other(too_big(limit)));
    }
    Ok(Box::new(file))
}

/// The report document at `path` (`None`: stdin); `name` is how messages
/// call it.
pub fn read_document(path: Option<&Path>, name: &Path) -> Result<Document, Error> {
    let unreadable = |source| Error::ReadReport {
        path: name.to_path_buf(),
        source,
    };
    let inner = open(path, MAX_REPORT_BYTES).map_err(unreadable)?;
    let mut capped = Capped {
        inner,
        left: MAX_REPORT_BYTES,
        over: false,
    };
    match Document::from_reader(&mut capped) {
        Ok(doc) => Ok(doc),
        Err(_) if capped.over => Err(unreadable(io::Error::other(too_big(MAX_REPORT_BYTES)))),
        Err(ReportError::Io(source)) => Err(unreadable(source)),
        Err(source) => Err(Error::BadReport {
            path: name.to_path_buf(),
            source,
        }),
    }
}

/// The text of a suppression file (or another small text file a flag
/// names): `what` names it in messages.
pub fn read_text(path: &Path, what: &'static str, limit: u64) -> Result<String, Error> {
    let unreadable = |source| Error::ReadInput {
        what,
        path: path.to_path_buf(),
        source,
    };
    let inner = open(Some(path), limit).map_err(unreadable)?;
    let mut bytes = Vec::new();
    let mut capped = Capped {
        inner,
        left: limit,
        over: false,
    };
    match capped.read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(_) if capped.over => return Err(unreadable(io::Error::other(too_big(limit)))),
        Err(e) => return Err(unreadable(e)),
    }
    String::from_utf8(bytes).map_err(|e| {
        unreadable(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_allows_exactly_the_limit() {
        let read = |data: &[u8], limit| {
            let mut c = Capped {
                inner: data,
                left: limit,
                over: false,
            };
            let mut out = Vec::new();
            (c.read_to_end(&mut out).is_ok(), c.over, out.len())
        };
        assert_eq!(read(b"abcd", 4), (true, false, 4));
        assert_eq!(read(b"abcde", 4), (false, true, 4));
        assert_eq!(read(b"", 0), (true, false, 0));
    }
}
