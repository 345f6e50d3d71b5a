//! Safe wrappers around every raw syscall the project makes.
//!
//! Everything here works relative to directory file descriptors and never follows a
//! symlink in the last component: callers pass a parent directory fd and a single name
//! component, so nothing the daemon does can be steered out of a layer by a symlink.
//! `rustix` covers most calls; the few it lacks use `libc` with one `unsafe` block each.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub use rustix::fs::{AtFlags, FileType as RawFileType, Mode, OFlags, Stat, StatFs, Timespec};
pub use rustix::io::Errno;

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

/// Open a directory as an `O_PATH` handle (no read permission needed, never follows a
/// symlink in the last component).
pub fn open_dir_path(dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<OwnedFd> {
    rustix::fs::openat(
        dirfd,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open a top-level path (a layer root, the work dir) as an `O_PATH` directory handle.
/// Symlinks in the given path are followed, as a user would expect for command-line paths.
pub fn open_root_dir(path: &Path) -> SysResult<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `openat` with `O_NOFOLLOW | O_CLOEXEC` always added.
pub fn open_at(
    dirfd: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlags,
    mode: u32,
) -> SysResult<OwnedFd> {
    rustix::fs::openat(
        dirfd,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
}

/// Open a non-directory as an `O_PATH` handle.
pub fn open_path_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<OwnedFd> {
    rustix::fs::openat(
        dirfd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Re-open an `O_PATH` handle with real access flags (through `/proc/self/fd`).
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> SysResult<OwnedFd> {
    let path = proc_fd_path(fd, None);
    rustix::fs::open(
        path.as_c_str(),
        (flags | OFlags::CLOEXEC) & !(OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW),
        Mode::empty(),
    )
}

/// Open a directory for reading its entries.
pub fn open_dir_read(dirfd: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    rustix::fs::openat(
        dirfd,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`.
#[inline]
pub fn stat_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<Stat> {
    rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// `fstat` that also works on `O_PATH` handles.
#[inline]
pub fn stat_fd(fd: BorrowedFd<'_>) -> SysResult<Stat> {
    rustix::fs::statat(fd, c"", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
}

pub fn statfs_fd(fd: BorrowedFd<'_>) -> SysResult<StatFs> {
    rustix::fs::fstatfs(fd)
}

/// One directory entry as read by `getdents64`.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    /// `DT_*` value.
    pub dtype: u8,
}

/// Read all entries of a directory (given as any fd to it), without `.` and `..`.
pub fn read_dir_all(dirfd: BorrowedFd<'_>) -> SysResult<Vec<RawEntry>> {
    let mut out = Vec::new();
    read_dir_each(dirfd, |e| {
        out.push(e);
        true
    })?;
    Ok(out)
}

/// Visit the entries of a directory; the visitor returns `false` to stop early.
pub fn read_dir_each(
    dirfd: BorrowedFd<'_>,
    mut visit: impl FnMut(RawEntry) -> bool,
) -> SysResult<()> {
    let fd = open_dir_read(dirfd)?;
    let mut buf: Vec<MaybeUninit<u8>> = Vec::with_capacity(32 * 1024);
    buf.resize(32 * 1024, MaybeUninit::uninit());
    let mut iter = rustix::fs::RawDir::new(&fd, &mut buf);
    while let Some(entry) = iter.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let e = RawEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: entry.ino(),
            dtype: dtype_of(entry.file_type()),
        };
        if !visit(e) {
            break;
        }
    }
    Ok(())
}

fn dtype_of(t: RawFileType) -> u8 {
    match t {
        RawFileType::RegularFile => libc::DT_REG,
        RawFileType::Directory => libc::DT_DIR,
        RawFileType::Symlink => libc::DT_LNK,
        RawFileType::Fifo => libc::DT_FIFO,
        RawFileType::Socket => libc::DT_SOCK,
        RawFileType::CharacterDevice => libc::DT_CHR,
        RawFileType::BlockDevice => libc::DT_BLK,
        RawFileType::Unknown => libc::DT_UNKNOWN,
    }
}

/// Convert a `st_mode` type to a `DT_*` value.
pub fn dtype_of_mode(mode: u32) -> u8 {
    match mode_type(mode) {
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        _ => libc::DT_UNKNOWN,
    }
}

pub fn readlink_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<Vec<u8>> {
    rustix::fs::readlinkat(dirfd, name, Vec::new()).map(|c| c.into_bytes())
}

pub fn mkdir_at(dirfd: BorrowedFd<'_>, name: &OsStr, mode: u32) -> SysResult<()> {
    rustix::fs::mkdirat(dirfd, name, Mode::from_raw_mode(mode))
}

pub fn mknod_at(dirfd: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> SysResult<()> {
    let ftype = RawFileType::from_raw_mode(mode);
    rustix::fs::mknodat(
        dirfd,
        name,
        ftype,
        Mode::from_raw_mode(mode & !libc::S_IFMT),
        rdev,
    )
}

pub fn symlink_at(target: &OsStr, dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    rustix::fs::symlinkat(target, dirfd, name)
}

pub fn link_at(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
) -> SysResult<()> {
    rustix::fs::linkat(olddir, oldname, newdir, newname, AtFlags::empty())
}

/// Hard-link the file behind an `O_PATH` handle to a new name.
pub fn link_fd(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, newname: &OsStr) -> SysResult<()> {
    rustix::fs::linkat(fd, c"", newdir, newname, AtFlags::EMPTY_PATH)
}

pub fn unlink_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    rustix::fs::unlinkat(dirfd, name, AtFlags::empty())
}

pub fn rmdir_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    rustix::fs::unlinkat(dirfd, name, AtFlags::REMOVEDIR)
}

/// `renameat2` flags.
pub use rustix::fs::RenameFlags;

pub fn rename_at(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
    flags: RenameFlags,
) -> SysResult<()> {
    rustix::fs::renameat_with(olddir, oldname, newdir, newname, flags)
}

/// chown of `name` in `dirfd` (never following a symlink), or of `dirfd` itself when
/// `name` is `None`. `None` ids are left unchanged.
pub fn chown_at(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> SysResult<()> {
    let uid = uid.map(rustix::fs::Uid::from_raw);
    let gid = gid.map(rustix::fs::Gid::from_raw);
    match name {
        Some(n) => rustix::fs::chownat(dirfd, n, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
        None => rustix::fs::chownat(
            dirfd,
            c"",
            uid,
            gid,
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        ),
    }
}

/// chmod of `name` in `dirfd` (known not to be a symlink), or of `dirfd` itself.
pub fn chmod_at(dirfd: BorrowedFd<'_>, name: Option<&OsStr>, mode: u32) -> SysResult<()> {
    let mode = Mode::from_raw_mode(mode);
    match name {
        Some(n) => rustix::fs::chmodat(dirfd, n, mode, AtFlags::empty()),
        None => rustix::fs::chmod(proc_fd_path(dirfd, None).as_c_str(), mode),
    }
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
}

pub fn fchown(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> SysResult<()> {
    rustix::fs::fchown(
        fd,
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
    )
}

/// A timestamp to set: a value, "now", or "leave alone".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    Set(i64, i64),
    Now,
    Omit,
}

fn to_timespec(t: TimeSpec) -> Timespec {
    match t {
        TimeSpec::Set(sec, nsec) => Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
        TimeSpec::Now => Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW as _,
        },
        TimeSpec::Omit => Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT as _,
        },
    }
}

/// Set timestamps of `name` in `dirfd` (never following a symlink), or of `dirfd` itself.
pub fn utimens_at(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> SysResult<()> {
    let ts = rustix::fs::Timestamps {
        last_access: to_timespec(atime),
        last_modification: to_timespec(mtime),
    };
    match name {
        Some(n) => rustix::fs::utimensat(dirfd, n, &ts, AtFlags::SYMLINK_NOFOLLOW),
        None => rustix::fs::utimensat(
            rustix::fs::CWD,
            proc_fd_path(dirfd, None).as_c_str(),
            &ts,
            AtFlags::empty(),
        ),
    }
}

pub fn futimens(fd: BorrowedFd<'_>, atime: TimeSpec, mtime: TimeSpec) -> SysResult<()> {
    let ts = rustix::fs::Timestamps {
        last_access: to_timespec(atime),
        last_modification: to_timespec(mtime),
    };
    rustix::fs::futimens(fd, &ts)
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    rustix::io::pread(fd, buf, offset)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> SysResult<usize> {
    rustix::io::pwrite(fd, buf, offset)
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> SysResult<()> {
    rustix::fs::ftruncate(fd, len)
}

pub fn fsync(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::fs::fsync(fd)
}

pub fn fdatasync(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::fs::fdatasync(fd)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    rustix::fs::fallocate(
        fd,
        rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
        offset,
        len,
    )
}

/// `copy_file_range` between explicit offsets; returns bytes copied (0 at EOF).
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> SysResult<usize> {
    let mut oi = off_in;
    let mut oo = off_out;
    rustix::fs::copy_file_range(fd_in, Some(&mut oi), fd_out, Some(&mut oo), len)
}

/// Whence values for `lseek`.
#[derive(Debug, Clone, Copy)]
pub enum Whence {
    Set,
    Cur,
    End,
    Data,
    Hole,
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: Whence) -> SysResult<u64> {
    use rustix::fs::SeekFrom;
    let pos = match whence {
        Whence::Set => SeekFrom::Start(offset as u64),
        Whence::Cur => SeekFrom::Current(offset),
        Whence::End => SeekFrom::End(offset),
        Whence::Data => SeekFrom::Data(offset as u64),
        Whence::Hole => SeekFrom::Hole(offset as u64),
    };
    rustix::fs::seek(fd, pos)
}

/// Reflink the whole of `src` into `dst` (`FICLONE`).
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> SysResult<()> {
    rustix::fs::ioctl_ficlone(dst, src)
}

// ---------------------------------------------------------------------------------------
// Extended attributes, relative to a directory fd.
//
// Linux 6.13 has `getxattrat` & co; older kernels need the `/proc/self/fd/N/name` form.
// `name = None` means the object the fd itself refers to.

static XATTRAT_MISSING: AtomicBool = AtomicBool::new(false);

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const SETXATTRAT: libc::c_long = 463;
    pub const GETXATTRAT: libc::c_long = 464;
    pub const LISTXATTRAT: libc::c_long = 465;
    pub const REMOVEXATTRAT: libc::c_long = 466;
}
#[cfg(not(target_arch = "x86_64"))]
mod nr {
    // The *xattrat calls share one number on every architecture with the generic table.
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

fn at_args(name: Option<&OsStr>) -> SysResult<(CString, libc::c_uint)> {
    match name {
        Some(n) => Ok((cstr(n)?, libc::AT_SYMLINK_NOFOLLOW as libc::c_uint)),
        None => Ok((
            CString::default(),
            (libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
        )),
    }
}

fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
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
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = last_errno();
        if e != Errno::NOSYS {
            return Err(e);
        }
        XATTRAT_MISSING.store(true, Ordering::Relaxed);
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
    let mut buf = vec![0u8; 256];
    loop {
        match getxattr_raw(dirfd, name, &attr, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) => {
                let n = getxattr_raw(dirfd, name, &attr, &mut [])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
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
    let mut buf = vec![0u8; 512];
    loop {
        match listxattr_raw(dirfd, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {
                let n = listxattr_raw(dirfd, name, &mut [])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
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
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = last_errno();
        if e != Errno::NOSYS {
            return Err(e);
        }
        XATTRAT_MISSING.store(true, Ordering::Relaxed);
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
        if r >= 0 {
            return Ok(());
        }
        let e = last_errno();
        if e != Errno::NOSYS {
            return Err(e);
        }
        XATTRAT_MISSING.store(true, Ordering::Relaxed);
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
        if r >= 0 {
            return Ok(());
        }
        let e = last_errno();
        if e != Errno::NOSYS {
            return Err(e);
        }
        XATTRAT_MISSING.store(true, Ordering::Relaxed);
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

// ---------------------------------------------------------------------------------------
// Process-level helpers.

/// Raise `RLIMIT_NOFILE` as far as allowed; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let want = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = lim.maximum.map_or(want, |m| m.max(want));
    let try_lim = rustix::process::Rlimit {
        current: Some(target),
        maximum: Some(target),
    };
    if setrlimit(Resource::Nofile, try_lim).is_ok() {
        return target;
    }
    // Unprivileged: the soft limit can go up to the hard one.
    if let Some(max) = lim.maximum {
        lim.current = Some(max);
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

pub fn set_umask(mask: u32) -> u32 {
    rustix::process::umask(Mode::from_raw_mode(mask)).as_raw_mode()
}

pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

pub fn getegid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// Supplementary groups of a process, from `/proc/PID/status`.
pub fn process_groups(pid: u32) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Detach-unmount a path (`umount2(path, MNT_DETACH)`).
pub fn umount_detach(path: &Path) -> SysResult<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)
}

pub fn umount(path: &Path) -> SysResult<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty())
}

/// Whether this process may create device nodes and set `trusted.*` xattrs.
pub fn is_privileged() -> bool {
    geteuid() == 0
}

/// A pipe for parent/child readiness signalling.
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
}

/// `fork()`. Must be called before any thread is started.
///
/// Returns `Ok(None)` in the child and `Ok(Some(pid))` in the parent.
pub fn fork() -> SysResult<Option<u32>> {
    // SAFETY: called only while the process is single-threaded (before the FUSE session
    // starts any thread), so the child can safely continue running Rust code.
    let r = unsafe { libc::fork() };
    match r {
        -1 => Err(last_errno()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

pub fn setsid() {
    let _ = rustix::process::setsid();
}

/// Point stdin/stdout/stderr at /dev/null (a daemon must not hold its caller's pipes).
pub fn redirect_stdio_to_null() {
    let Ok(null) = rustix::fs::open(c"/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
    else {
        return;
    };
    for target in 0..3 {
        // SAFETY: fds 0..2 are the standard streams; dup2 over them is always sound,
        // and the OwnedFd we create is forgotten so it is not closed twice.
        unsafe {
            let mut t = OwnedFd::from_raw_fd(target);
            let _ = rustix::io::dup2(&null, &mut t);
            std::mem::forget(t);
        }
    }
}

pub fn write_all_fd(fd: BorrowedFd<'_>, mut data: &[u8]) -> SysResult<()> {
    while !data.is_empty() {
        let n = rustix::io::write(fd, data)?;
        data = &data[n..];
    }
    Ok(())
}

pub fn read_to_end_fd(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Restore the default `SIGPIPE` action (Rust ignores it, which turns `| head` into
/// write errors).
pub fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL has no memory-safety effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Block the given signals in this thread (and threads it starts later).
pub fn block_signals(signals: &[i32]) {
    // SAFETY: sigset manipulation on a local, zero-initialised set; pthread_sigmask
    // only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Wait for one of the given (blocked) signals.
pub fn wait_signal(signals: &[i32]) -> i32 {
    // SAFETY: as above; sigwait writes the received signal number into `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        let mut sig: libc::c_int = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// Major/minor of a device number.
pub fn dev_major(dev: u64) -> u32 {
    rustix::fs::major(dev)
}
pub fn dev_minor(dev: u64) -> u32 {
    rustix::fs::minor(dev)
}

/// Borrow a raw fd held elsewhere for the duration of a call.
///
/// # Safety
/// The caller must guarantee that `fd` stays open while the result is used.
pub unsafe fn borrow_raw(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: delegated to the caller.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// The fd of a `File` or `OwnedFd`.
pub fn fd_of(f: &impl AsFd) -> BorrowedFd<'_> {
    f.as_fd()
}

// ---------------------------------------------------------------------------------------
// Store helpers: whole-file locks and filesystem-wide sync.

/// Take an exclusive `flock` on `fd`; with `wait = false`, `Err(WOULDBLOCK)` when another
/// process holds it. The lock goes away with the last fd of the open file description.
pub fn flock_exclusive(fd: BorrowedFd<'_>, wait: bool) -> SysResult<()> {
    let op = if wait {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    rustix::fs::flock(fd, op)
}

/// Write back every dirty page of the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::fs::syncfs(fd)
}

// ---------------------------------------------------------------------------------------
// Container helpers.

/// `statfs` of a command-line path. On a FUSE mount it always reaches the daemon (no
/// cache answers it), so it fails with `ENOTCONN` when the daemon is gone.
pub fn statfs_path(path: &Path) -> SysResult<StatFs> {
    rustix::fs::statfs(path)
}

/// Make `cmd` run chrooted at `root`, with `/` as its working directory.
pub fn chroot_command(cmd: &mut std::process::Command, root: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let root = CString::new(root.as_os_str().as_bytes())?;
    // SAFETY: the closure runs in the child between fork and exec; it makes only the
    // chroot and chdir syscalls (async-signal-safe) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Terminal.

/// Turn a terminal's echo off (`false`) or on; returns whether it was on, so a caller
/// can restore it. Fails with `NOTTY` when `fd` is no terminal.
pub fn set_echo(fd: BorrowedFd<'_>, on: bool) -> SysResult<bool> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let mut t = tcgetattr(fd)?;
    let was = t.local_modes.contains(LocalModes::ECHO);
    t.local_modes.set(LocalModes::ECHO, on);
    tcsetattr(fd, OptionalActions::Now, &t)?;
    Ok(was)
}
