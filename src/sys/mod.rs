//! Safe wrappers around every raw syscall the project makes.
//!
//! Everything here works relative to directory file descriptors and never follows a
//! symlink in the last component: callers pass a parent directory fd and a single name
//! component, so nothing the daemon does can be steered out of a layer by a symlink.
//! `rustix` covers most calls; the few it lacks use `libc` with one `unsafe` block each.

mod fs;
pub mod fuse_dev;
mod lock;
mod mem;
mod process;
pub mod sched;
mod terminal;
mod userns;
mod xattr;

pub use fs::*;
pub use lock::*;
pub use mem::*;
pub use process::*;
pub use terminal::*;
pub use userns::*;
pub use xattr::*;

use std::ffi::{CStr, CString, OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub use rustix::fs::{AtFlags, FileType as RawFileType, Mode, OFlags, Stat, StatFs, Timespec};
pub use rustix::io::Errno;

/// A number field of `/proc/self/status` (`FDSize`, `RssFile` in KiB, ...), for tests.
#[cfg(test)]
pub(crate) fn self_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'));
    line.and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Result of a syscall: the value or the errno it failed with.
pub type SysResult<T> = Result<T, Errno>;

/// File type bits of a `st_mode`.
#[inline]
pub fn mode_type(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

#[inline]
pub fn is_dir_mode(mode: u32) -> bool {
    mode_type(mode) == libc::S_IFDIR
}

/// Major/minor of a device number.
pub fn dev_major(dev: u64) -> u32 {
    rustix::fs::major(dev)
}
pub fn dev_minor(dev: u64) -> u32 {
    rustix::fs::minor(dev)
}

fn proc_fd_path(fd: BorrowedFd<'_>, name: Option<&OsStr>) -> CString {
    let mut p = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(n) = name {
        p.push(b'/');
        p.extend_from_slice(n.as_bytes());
    }
    // A name from the kernel never contains NUL; an fd number never does either.
    CString::new(p).unwrap_or_default()
}

fn cstr(s: &OsStr) -> SysResult<CString> {
    CString::new(s.as_bytes()).map_err(|_| Errno::INVAL)
}

fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}
