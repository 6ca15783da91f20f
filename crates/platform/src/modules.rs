//! Loaded modules, from `dl_iterate_phdr`: load base, segments, static TLS
//! block and GNU build-id of the executable and every shared object.
//!
//! `dl_iterate_phdr` holds the loader's (recursive) lock while it calls us,
//! so no module can be dlclosed under our feet during the callback, and a
//! nested call from inside a callback is allowed.

use core::ffi::{c_int, c_void, CStr};

/// At most this many PT_LOAD segments are kept per module (ELF objects
/// normally have 2–5).
pub const MAX_SEGMENTS: usize = 16;

#[derive(Debug, Clone, Copy, Default)]
pub struct Segment {
    pub start: usize,
    pub end: usize,
    pub writable: bool,
    pub executable: bool,
}

/// One loaded module, valid during the callback only.
pub struct Module<'a> {
    /// Path as the loader knows it; empty for the main executable.
    pub name: &'a [u8],
    pub base: usize,
    pub segments: [Segment; MAX_SEGMENTS],
    pub segment_count: usize,
    /// The calling thread's TLS block of this module, if it has one.
    pub tls_block: Option<(usize, usize)>,
    pub build_id: &'a [u8],
}

impl Module<'_> {
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.segment_count]
    }

    /// Whether `addr` lies in one of this module's segments.
    pub fn contains(&self, addr: usize) -> bool {
        self.segments()
            .iter()
            .any(|s| s.start <= addr && addr < s.end)
    }
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PT_TLS: u32 = 7;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const NT_GNU_BUILD_ID: u32 = 3;

/// Find the GNU build-id note in a PT_NOTE segment's bytes.
///
/// # Safety
/// `[start, start + len)` must be readable.
unsafe fn find_build_id<'a>(start: usize, len: usize) -> Option<&'a [u8]> {
    let mut off = 0usize;
    let align4 = |n: usize| (n + 3) & !3;
    while off + 12 <= len {
        // SAFETY: within the readable note segment (checked above).
        let (namesz, descsz, kind) = unsafe {
            let p = (start + off) as *const u32;
            (*p as usize, *p.add(1) as usize, *p.add(2))
        };
        let name_at = off + 12;
        let desc_at = name_at + align4(namesz);
        let next = desc_at + align4(descsz);
        if next > len {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && namesz == 4 {
            // SAFETY: both ranges lie inside the segment (next <= len).
            let name = unsafe { core::slice::from_raw_parts((start + name_at) as *const u8, 4) };
            if name == b"GNU\0" {
                // SAFETY: as above.
                return Some(unsafe {
                    core::slice::from_raw_parts((start + desc_at) as *const u8, descsz)
                });
            }
        }
        off = next;
    }
    None
}

type Callback<'f> = &'f mut dyn FnMut(&Module) -> bool;

unsafe extern "C" fn trampoline(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info for this call, and `data`
    // is the `&mut Callback` that for_each_module passed in.
    let (info, f) = unsafe { (&*info, &mut *(data as *mut Callback)) };
    let name: &[u8] = if info.dlpi_name.is_null() {
        b""
    } else {
        // SAFETY: the loader's name strings are NUL-terminated.
        unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    let base = info.dlpi_addr as usize;
    let mut module = Module {
        name,
        base,
        segments: [Segment::default(); MAX_SEGMENTS],
        segment_count: 0,
        tls_block: None,
        build_id: &[],
    };
    for i in 0..info.dlpi_phnum as usize {
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        let start = base + ph.p_vaddr as usize;
        match ph.p_type {
            PT_LOAD if module.segment_count < MAX_SEGMENTS => {
                module.segments[module.segment_count] = Segment {
                    start,
                    end: start + ph.p_memsz as usize,
                    writable: ph.p_flags & PF_W != 0,
                    executable: ph.p_flags & PF_X != 0,
                };
                module.segment_count += 1;
            }
            PT_NOTE if module.build_id.is_empty() => {
                // SAFETY: PT_NOTE segments are mapped (inside a PT_LOAD).
                if let Some(id) = unsafe { find_build_id(start, ph.p_memsz as usize) } {
                    module.build_id = id;
                }
            }
            PT_TLS if !info.dlpi_tls_data.is_null() => {
                module.tls_block = Some((info.dlpi_tls_data as usize, ph.p_memsz as usize));
            }
            _ => {}
        }
    }
    if f(&module) {
        0
    } else {
        1
    }
}

/// Call `f` for every loaded module, in load order (the executable first);
/// `f` returns false to stop early. Does not allocate.
pub fn for_each_module(mut f: impl FnMut(&Module) -> bool) {
    let mut cb: Callback = &mut f;
    // SAFETY: the trampoline only uses `data` as the &mut Callback we pass,
    // which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(trampoline), &mut cb as *mut Callback as *mut c_void) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_binary_and_libc() {
        let here = finds_the_test_binary_and_libc as fn() as usize;
        let mut found_self = false;
        let mut found_libc = false;
        for_each_module(|m| {
            if m.contains(here) {
                found_self = true;
                assert!(m.segments().iter().any(|s| s.writable));
            }
            if m.name.windows(7).any(|w| w == b"libc.so") {
                found_libc = true;
                assert!(m.build_id.len() >= 16, "Debian's libc has a build-id");
            }
            true
        });
        assert!(found_self && found_libc);
    }
}
