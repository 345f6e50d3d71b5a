//! The daemon's own memory: large buffers mapped from the kernel's zero pages, and
//! letting go of the executable pages only start-up used.

use std::io;
use std::ptr::NonNull;

/// A zero-filled buffer mapped straight from the kernel: a page costs memory only once
/// written. (`vec![0; n]` asks the allocator's `calloc`, which clears memory it takes
/// from a thread's new arena by hand: about 132 KiB per ring thread, never used.)
pub struct ZeroedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value alone.
unsafe impl Send for ZeroedBuf {}
// SAFETY: shared access only reads; writes need `&mut`.
unsafe impl Sync for ZeroedBuf {}

impl ZeroedBuf {
    /// A buffer of `len` bytes (at least one page is mapped).
    pub fn new(len: usize) -> io::Result<ZeroedBuf> {
        let map_len = len.max(1);
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(ZeroedBuf { ptr, len })
    }
}

impl std::ops::Deref for ZeroedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for ZeroedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes mapped writable, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ZeroedBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len.max(1));
        }
    }
}

/// Unmap (not evict) the pages of this process's read-only file mappings — the
/// executable's code and constants and the shared libraries' — that nothing has written:
/// start-up code it ran once stops counting in its resident size, and whatever runs again
/// maps its page back from the page cache (a minor fault, no read). A mapping with a
/// private copy of any page (relocated data, a debugger's breakpoint) is left alone.
/// Returns the bytes of mappings released.
pub fn release_clean_file_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for (start, end) in clean_file_mappings(&smaps) {
        // SAFETY: a private file mapping no page of which differs from the file: dropping
        // its page-table entries changes no content the process can see.
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if r == 0 {
            released += end - start;
        }
    }
    released
}

/// The `[start, end)` of each mapping in `smaps` (the format of `/proc/PID/smaps`) that
/// is a private, read-only (possibly executable) file mapping without anonymous pages.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_ascii_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            cur = (matches!(perms, "r--p" | "r-xp") && path.starts_with('/')).then_some((a, b));
        } else if first == "Anonymous:"
            && let Some(m) = cur.take()
            && f.next() == Some("0")
        {
            out.push(m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buf_is_zero_and_writable() {
        let mut b = ZeroedBuf::new(3 << 20).unwrap();
        assert_eq!(b.len(), 3 << 20);
        assert!(b.iter().all(|&x| x == 0));
        b[(3 << 20) - 1] = 7;
        assert_eq!(b[(3 << 20) - 1], 7);
        assert!(ZeroedBuf::new(0).unwrap().is_empty());
    }

    #[test]
    fn only_clean_private_read_only_file_mappings() {
        let smaps = "\
5600-5700 r--p 00000000 fe:01 12 /usr/bin/prog
Size: 4 kB
Anonymous:             0 kB
5700-5800 r-xp 00001000 fe:01 12 /usr/bin/prog
Anonymous:             0 kB
5800-5900 r--p 00002000 fe:01 12 /usr/bin/prog
Anonymous:             8 kB
5900-5a00 rw-p 00003000 fe:01 12 /usr/bin/prog
Anonymous:             0 kB
5a00-5b00 r--s 00000000 fe:01 13 /dev/shm/x
Anonymous:             0 kB
5b00-5c00 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
5c00-5d00 r-xp 00000000 00:00 0 
Anonymous:             0 kB
7f00-7f10 r-xp 00000000 fe:01 14 /usr/lib/libc.so.6 (deleted)
Anonymous:             0 kB
";
        assert_eq!(
            clean_file_mappings(smaps),
            vec![(0x5600, 0x5700), (0x5700, 0x5800), (0x7f00, 0x7f10)]
        );
    }

    #[test]
    fn releasing_unmaps_file_pages_and_code_still_runs() {
        let rss_file_kib = || crate::sys::self_status("RssFile");
        let before = rss_file_kib();
        assert!(release_clean_file_pages() > 0);
        let after = rss_file_kib();
        assert!(after < before, "RssFile {before} KiB -> {after} KiB");
        // Code and constants come back from the page cache as they are used.
        assert_eq!(format!("{}", std::hint::black_box(6) * 7), "42");
    }
}
