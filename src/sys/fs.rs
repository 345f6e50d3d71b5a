//! Files and directories, relative to directory fds, never following a symlink in the
//! last component: open, stat, list, create, link, rename, remove, owners, modes, times,
//! data I/O and copies.

use super::*;

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

/// Open a regular file by name with `O_NOFOLLOW | O_CLOEXEC` added, never opening (or
/// blocking on) anything else: a symlink, FIFO, socket or device that took the name in a
/// race (a whiteout is a device) answers `ESTALE`, and so does a name that went away.
pub fn open_regular_at(dirfd: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> SysResult<OwnedFd> {
    let probe = flags | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = open_at(dirfd, name, probe, 0).map_err(|e| match e {
        Errno::NOENT | Errno::LOOP | Errno::NXIO | Errno::NODEV | Errno::ISDIR => Errno::STALE,
        e => e,
    })?;
    if mode_type(stat_fd(fd.as_fd())?.st_mode) != libc::S_IFREG {
        return Err(Errno::STALE);
    }
    if !flags.contains(OFlags::NONBLOCK) {
        // F_SETFL takes only the status flags (O_NONBLOCK among them) from `flags`.
        rustix::fs::fcntl_setfl(&fd, flags)?;
    }
    Ok(fd)
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

/// The id of the mount an fd lies on, as the first field of `/proc/self/mountinfo` shows
/// it (`STATX_MNT_ID`); `None` where the kernel does not report it (before 5.8).
pub fn mount_id(fd: BorrowedFd<'_>) -> SysResult<Option<u64>> {
    let mask = rustix::fs::StatxFlags::MNT_ID;
    let sx = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        mask,
    )?;
    Ok((sx.stx_mask & mask.bits() != 0).then_some(sx.stx_mnt_id))
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

/// A directory read a `getdents64` call at a time, from its start, through a
/// descriptor of its own (the position is this reader's alone).
pub struct DirReader {
    fd: OwnedFd,
    buf: Vec<MaybeUninit<u8>>,
}

impl DirReader {
    /// Bytes of entries one call reads (what glibc's `readdir` asks for too).
    const CHUNK: usize = 32 * 1024;

    pub fn open(dirfd: BorrowedFd<'_>) -> SysResult<Self> {
        let fd = open_dir_read(dirfd)?;
        let mut buf = Vec::with_capacity(Self::CHUNK);
        buf.resize(Self::CHUNK, MaybeUninit::uninit());
        Ok(DirReader { fd, buf })
    }

    /// The entries one `getdents64` call of at most `bytes` (up to 32 KiB) returns
    /// (without `.` and `..`), and whether the directory has more. An empty batch with
    /// `true` is possible (only `.` and `..` in it).
    pub fn next_batch(&mut self, bytes: usize) -> SysResult<(Vec<RawEntry>, bool)> {
        // An entry takes at least 24 bytes; a small directory needs no more room.
        let mut out = Vec::with_capacity((bytes.clamp(1024, Self::CHUNK) / 24).min(256));
        let more = self.next_batch_each(bytes, |name, ino, dtype| {
            out.push(RawEntry {
                name: name.to_os_string(),
                ino,
                dtype,
            })
        })?;
        Ok((out, more))
    }

    /// The same, each entry handed to `visit` (name, inode number, `DT_*` value) as it
    /// is read, without a copy of its name; returns whether the directory has more.
    pub fn next_batch_each(
        &mut self,
        bytes: usize,
        mut visit: impl FnMut(&OsStr, u64, u8),
    ) -> SysResult<bool> {
        let n = bytes.clamp(1024, Self::CHUNK);
        let mut iter = rustix::fs::RawDir::new(&self.fd, &mut self.buf[..n]);
        loop {
            let Some(entry) = iter.next() else {
                return Ok(false);
            };
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                visit(
                    OsStr::from_bytes(name),
                    entry.ino(),
                    dtype_of(entry.file_type()),
                );
            }
            if iter.is_buffer_empty() {
                return Ok(true);
            }
        }
    }
}

/// Visit the entries of a directory; the visitor returns `false` to stop early.
pub fn read_dir_each(
    dirfd: BorrowedFd<'_>,
    mut visit: impl FnMut(RawEntry) -> bool,
) -> SysResult<()> {
    let mut reader = DirReader::open(dirfd)?;
    loop {
        let (batch, more) = reader.next_batch(usize::MAX)?;
        for e in batch {
            if !visit(e) {
                return Ok(());
            }
        }
        if !more {
            return Ok(());
        }
    }
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

/// Start writing `[off, off + len)` of a file to disk without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later `fsync` finds less to do.
pub fn start_writeback(fd: BorrowedFd<'_>, off: u64, len: u64) -> SysResult<()> {
    // SAFETY: a plain syscall on a live descriptor; it takes no pointers.
    let r = unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(())
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

/// `statfs` of a command-line path. On a FUSE mount it always reaches the daemon (no
/// cache answers it), so it fails with `ENOTCONN` when the daemon is gone.
pub fn statfs_path(path: &Path) -> SysResult<StatFs> {
    rustix::fs::statfs(path)
}

/// Remove `name` in `dirfd` and everything below it, never following symlinks. A name
/// already gone is no error. An unprivileged caller first gives itself `rwx` on
/// directories it owns but cannot empty (a layer may hold `0555` directories).
pub fn remove_tree(dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    let st = match stat_at(dirfd, name) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !is_dir_mode(st.st_mode) {
        return match unlink_at(dirfd, name) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e),
        };
    }
    if !is_namespace_root() && st.st_mode & 0o700 != 0o700 {
        let _ = chmod_at(dirfd, Some(name), 0o700);
    }
    let sub = open_dir_path(dirfd, name)?;
    for e in read_dir_all(sub.as_fd())? {
        remove_tree(sub.as_fd(), &e.name)?;
    }
    drop(sub);
    match rmdir_at(dirfd, name) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether this process may open `path` for reading and writing, by its real ids (as
/// `access(2)` decides).
pub fn can_read_write(path: &Path) -> bool {
    rustix::fs::access(
        path,
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok()
}
