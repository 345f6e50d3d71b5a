//! Extended attributes, relative to a directory fd.
//!
//! Linux 6.13 has `getxattrat` & co; older kernels need the `/proc/self/fd/N/name` form.
//! `name = None` means the object the fd itself refers to.

use super::*;

static XATTRAT_MISSING: AtomicBool = AtomicBool::new(false);

/// The `*xattrat` calls have one number on every architecture with the generic table.
mod nr {
    pub const SETXATTRAT: libc::c_long = 463;
    pub const GETXATTRAT: libc::c_long = 464;
    pub const LISTXATTRAT: libc::c_long = 465;
    pub const REMOVEXATTRAT: libc::c_long = 466;
}

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn at_args(name: Option<&OsStr>) -> SysResult<(CString, libc::c_uint)> {
    match name {
        Some(n) => Ok((cstr(n)?, libc::AT_SYMLINK_NOFOLLOW as libc::c_uint)),
        None => Ok((
            CString::default(),
            (libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
        )),
    }
}

/// The answer of an `*xattrat` syscall, or `None` when the kernel lacks them (then the
/// `/proc/self/fd` form is used from now on).
fn at_result(r: libc::c_long) -> Option<SysResult<usize>> {
    if r >= 0 {
        return Some(Ok(r as usize));
    }
    let e = last_errno();
    if e != Errno::NOSYS {
        return Some(Err(e));
    }
    XATTRAT_MISSING.store(true, Ordering::Relaxed);
    None
}

/// Read a value that may not fit: `raw` fills a buffer (`ERANGE`: too small) or, given
/// an empty one, answers the size; the buffer grows until the value fits.
fn read_growing(
    start: usize,
    mut raw: impl FnMut(&mut [u8]) -> SysResult<usize>,
) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; start];
    loop {
        match raw(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {
                let n = raw(&mut [])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Read an xattr into `buf`; returns the value length. `buf` empty asks only for the size.
fn getxattr_raw(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    attr: &CStr,
    buf: &mut [u8],
) -> SysResult<usize> {
    if name.is_some() && !XATTRAT_MISSING.load(Ordering::Relaxed) {
        let (path, flags) = at_args(name)?;
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: getxattrat reads the NUL-terminated strings and writes at most
        // `args.size` bytes to `args.value`, which points into `buf`.
        let r = unsafe {
            libc::syscall(
                nr::GETXATTRAT,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                flags,
                attr.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if let Some(r) = at_result(r) {
            return r;
        }
    }
    let path = proc_fd_path(dirfd, name);
    // rustix answers 0 for a slice of length 0: a size query has its own call.
    match (name.is_some(), buf.is_empty()) {
        (true, true) => rustix::fs::lgetxattr_query(path.as_c_str(), attr),
        (true, false) => rustix::fs::lgetxattr(path.as_c_str(), attr, buf),
        (false, true) => rustix::fs::getxattr_query(path.as_c_str(), attr),
        (false, false) => rustix::fs::getxattr(path.as_c_str(), attr, buf),
    }
}

/// Read an xattr value; `Ok(None)` when it is not set.
pub fn get_xattr(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    attr: &OsStr,
) -> SysResult<Option<Vec<u8>>> {
    let attr = cstr(attr)?;
    match read_growing(256, |buf| getxattr_raw(dirfd, name, &attr, buf)) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::NODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Query the size of an xattr, or read it into `buf` (FUSE's two-step protocol).
pub fn get_xattr_into(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    attr: &OsStr,
    buf: &mut [u8],
) -> SysResult<usize> {
    let attr = cstr(attr)?;
    getxattr_raw(dirfd, name, &attr, buf)
}

/// List xattr names (each NUL-terminated, as the kernel returns them).
pub fn list_xattr(dirfd: BorrowedFd<'_>, name: Option<&OsStr>) -> SysResult<Vec<u8>> {
    read_growing(512, |buf| listxattr_raw(dirfd, name, buf))
}

fn listxattr_raw(dirfd: BorrowedFd<'_>, name: Option<&OsStr>, buf: &mut [u8]) -> SysResult<usize> {
    if name.is_some() && !XATTRAT_MISSING.load(Ordering::Relaxed) {
        let (path, flags) = at_args(name)?;
        // SAFETY: listxattrat writes at most `buf.len()` bytes into `buf`.
        let r = unsafe {
            libc::syscall(
                nr::LISTXATTRAT,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                flags,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if let Some(r) = at_result(r) {
            return r;
        }
    }
    let path = proc_fd_path(dirfd, name);
    match (name.is_some(), buf.is_empty()) {
        (true, true) => rustix::fs::llistxattr_query(path.as_c_str()),
        (true, false) => rustix::fs::llistxattr(path.as_c_str(), buf),
        (false, true) => rustix::fs::listxattr_query(path.as_c_str()),
        (false, false) => rustix::fs::listxattr(path.as_c_str(), buf),
    }
}

/// `XATTR_CREATE` / `XATTR_REPLACE` flags as given by the caller.
pub fn set_xattr(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    attr: &OsStr,
    value: &[u8],
    flags: i32,
) -> SysResult<()> {
    let attr = cstr(attr)?;
    if name.is_some() && !XATTRAT_MISSING.load(Ordering::Relaxed) {
        let (path, atflags) = at_args(name)?;
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: flags as u32,
        };
        // SAFETY: setxattrat only reads the strings and `args.size` bytes at `args.value`.
        let r = unsafe {
            libc::syscall(
                nr::SETXATTRAT,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                atflags,
                attr.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if let Some(r) = at_result(r) {
            return r.map(drop);
        }
    }
    let path = proc_fd_path(dirfd, name);
    let f = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
    if name.is_some() {
        rustix::fs::lsetxattr(path.as_c_str(), attr.as_c_str(), value, f)
    } else {
        rustix::fs::setxattr(path.as_c_str(), attr.as_c_str(), value, f)
    }
}

pub fn remove_xattr(dirfd: BorrowedFd<'_>, name: Option<&OsStr>, attr: &OsStr) -> SysResult<()> {
    let attr = cstr(attr)?;
    if name.is_some() && !XATTRAT_MISSING.load(Ordering::Relaxed) {
        let (path, atflags) = at_args(name)?;
        // SAFETY: removexattrat only reads the two NUL-terminated strings.
        let r = unsafe {
            libc::syscall(
                nr::REMOVEXATTRAT,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                atflags,
                attr.as_ptr(),
            )
        };
        if let Some(r) = at_result(r) {
            return r.map(drop);
        }
    }
    let path = proc_fd_path(dirfd, name);
    if name.is_some() {
        rustix::fs::lremovexattr(path.as_c_str(), attr.as_c_str())
    } else {
        rustix::fs::removexattr(path.as_c_str(), attr.as_c_str())
    }
}

/// Split a `listxattr` buffer into names.
pub fn split_xattr_names(list: &[u8]) -> impl Iterator<Item = &OsStr> {
    list.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(OsStr::from_bytes)
}
