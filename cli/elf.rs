//! Just enough ELF to tell, before running it, whether a program can be
//! checked at all: LD_PRELOAD works through the dynamic loader, and a
//! statically linked executable (no PT_INTERP) never runs one.

use std::path::{Path, PathBuf};

const PT_INTERP: u32 = 3;

/// What the first bytes of a file say about LD_PRELOAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// An ELF executable with a dynamic loader: preloading works.
    Dynamic,
    /// An ELF executable without one: preloading cannot work.
    Static,
    /// Not a 64-bit little-endian ELF file (a script, another format): we
    /// cannot tell, the kernel or the interpreter decides.
    Unknown,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Classify an executable from its leading bytes (the ELF header and the
/// program header table must be among them).
pub fn linkage(bytes: &[u8]) -> Linkage {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Linkage::Unknown;
    }
    let parsed = (|| {
        let phoff = usize::try_from(u64_at(bytes, 32)?).ok()?;
        let phentsize = usize::from(u16_at(bytes, 54)?);
        let phnum = usize::from(u16_at(bytes, 56)?);
        let mut interp = false;
        for i in 0..phnum {
            interp |= u32_at(bytes, phoff + i * phentsize)? == PT_INTERP;
        }
        Some(interp)
    })();
    match parsed {
        Some(true) => Linkage::Dynamic,
        Some(false) => Linkage::Static,
        None => Linkage::Unknown,
    }
}

/// Where `program` would be found, as execvp searches: as given when it
/// contains a '/', else the first match in PATH.
pub fn resolve(program: &Path) -> Option<PathBuf> {
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The linkage of the program `leakscan run` is about to start.
pub fn program_linkage(program: &Path) -> Linkage {
    use std::io::Read;
    let Some(path) = resolve(program) else {
        return Linkage::Unknown;
    };
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    linkage(&head[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header followed by `types` as program headers.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * types.len()];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            b[64 + i * 56..68 + i * 56].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn interp_makes_it_dynamic() {
        assert_eq!(linkage(&elf(&[6, 3, 1, 1])), Linkage::Dynamic);
        assert_eq!(linkage(&elf(&[1, 1, 4])), Linkage::Static);
    }

    #[test]
    fn scripts_and_truncated_files_are_unknown() {
        assert_eq!(linkage(b"#!/bin/sh\necho hi\n"), Linkage::Unknown);
        let mut cut = elf(&[1, 3]);
        cut.truncate(80);
        assert_eq!(linkage(&cut), Linkage::Unknown);
    }

    #[test]
    fn real_programs() {
        assert_eq!(program_linkage(Path::new("sh")), Linkage::Dynamic);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(program_linkage(&exe), Linkage::Dynamic);
    }
}
