//! Metacopy stubs: regular files whose data lives elsewhere, in the kernel overlayfs
//! format (composefs uses the same).
//!
//! A stub is an empty sparse file of the right size carrying `overlay.metacopy` (empty)
//! and an absolute `overlay.redirect` (`/ab/cdef…`), both in the `trusted.` namespace
//! (what the kernel reads, privileged) or `user.` (an unprivileged store, which only
//! layerfs follows: the kernel refuses metacopy with `userxattr`). The redirect names the
//! file's data inside a *data-only* layer (`lowerdir=L1:L2::DATA`). A stub holds owner,
//! mode, times and every other xattr; the data file holds only bytes.
//!
//! A stub always has data (empty files stay plain files): `st_size > 0` spares empty
//! files the xattr lookup. (Its blocks are no test: on ext4 with 256-byte inodes the two
//! xattrs do not fit in the inode, so each stub holds one xattr block.)

use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use crate::sys::{self, Errno, OFlags, Stat, SysResult};

pub const TRUSTED_METACOPY: &str = "trusted.overlay.metacopy";
pub const TRUSTED_REDIRECT: &str = "trusted.overlay.redirect";
pub const USER_METACOPY: &str = "user.overlay.metacopy";
pub const USER_REDIRECT: &str = "user.overlay.redirect";

/// Whether a file may be a stub (a regular file with a size); only such files are
/// worth the xattr lookup of [`redirect_of`].
#[inline]
pub fn may_be_stub(st: &Stat) -> bool {
    sys::mode_type(st.st_mode) == libc::S_IFREG && st.st_size > 0
}

/// The data path of a stub (`name` in `dir`, or the fd itself), `None` for an ordinary
/// file. Both namespaces are read (`trusted.` first); an unprivileged process sees only
/// `user.`. A redirect that could leave the data layer (`.`/`..` components, relative,
/// NUL) is no redirect.
pub fn redirect_of(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> SysResult<Option<Vec<u8>>> {
    for (meta, redirect) in [
        (TRUSTED_METACOPY, TRUSTED_REDIRECT),
        (USER_METACOPY, USER_REDIRECT),
    ] {
        let r = match sys::get_xattr(dir, name, OsStr::new(redirect)) {
            Ok(r) => r,
            Err(Errno::NOTSUP) | Err(Errno::PERM) | Err(Errno::ACCESS) => None,
            Err(e) => return Err(e),
        };
        let Some(r) = r else { continue };
        if !valid_data_path(&r) {
            return Ok(None);
        }
        match sys::get_xattr(dir, name, OsStr::new(meta)) {
            Ok(Some(_)) => return Ok(Some(r)),
            Ok(None) => continue,
            Err(Errno::NOTSUP) | Err(Errno::PERM) | Err(Errno::ACCESS) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether a redirect is an absolute path of plain names inside the data layer.
pub fn valid_data_path(r: &[u8]) -> bool {
    let Some(rel) = r.strip_prefix(b"/") else {
        return false;
    };
    !rel.is_empty()
        && !r.contains(&0)
        && rel
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Open the data a redirect names in the data layer `data_root`, one component at a
/// time without following symlinks, with `flags` (read-only ones: data is never
/// written). `ENOENT` when it is not there.
pub fn open_data(data_root: BorrowedFd<'_>, redirect: &[u8], flags: OFlags) -> SysResult<OwnedFd> {
    if !valid_data_path(redirect) {
        return Err(Errno::INVAL);
    }
    let comps: Vec<&[u8]> = redirect[1..].split(|b| *b == b'/').collect();
    let (last, dirs) = comps.split_last().ok_or(Errno::INVAL)?;
    let mut cur: Option<OwnedFd> = None;
    for d in dirs {
        let parent = cur
            .as_ref()
            .map_or(data_root, |f| std::os::fd::AsFd::as_fd(f));
        cur = Some(sys::open_dir_path(parent, OsStr::from_bytes(d))?);
    }
    let parent = cur
        .as_ref()
        .map_or(data_root, |f| std::os::fd::AsFd::as_fd(f));
    let flags =
        flags & !(OFlags::WRONLY | OFlags::RDWR | OFlags::TRUNC | OFlags::APPEND | OFlags::CREATE);
    sys::open_regular_at(parent, OsStr::from_bytes(last), flags).map_err(|e| match e {
        // open_regular_at's "gone in a race" is plainly missing data here.
        Errno::STALE => Errno::NOENT,
        e => e,
    })
}

/// Turn the open, empty regular file `fd` into a stub of `size` bytes whose data is at
/// `redirect` in the data layer; `privileged` picks the `trusted.` namespace.
pub fn make_stub(
    fd: BorrowedFd<'_>,
    size: u64,
    redirect: &[u8],
    privileged: bool,
) -> SysResult<()> {
    let (meta, red) = names(privileged);
    sys::ftruncate(fd, size)?;
    sys::set_xattr(fd, None, OsStr::new(red), redirect, 0)?;
    sys::set_xattr(fd, None, OsStr::new(meta), b"", 0)
}

/// The xattr names a stub carries: `(metacopy, redirect)`.
pub fn names(privileged: bool) -> (&'static str, &'static str) {
    if privileged {
        (TRUSTED_METACOPY, TRUSTED_REDIRECT)
    } else {
        (USER_METACOPY, USER_REDIRECT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn data_paths_stay_in_the_data_layer() {
        assert!(valid_data_path(b"/ab/cdef"));
        assert!(valid_data_path(b"/x"));
        assert!(!valid_data_path(b"ab/cdef"));
        assert!(!valid_data_path(b"/"));
        assert!(!valid_data_path(b"/ab/../etc"));
        assert!(!valid_data_path(b"/ab//c"));
        assert!(!valid_data_path(b"/./c"));
        assert!(!valid_data_path(b"/a\0b"));
    }

    #[test]
    fn a_stub_reads_back_and_opens_its_data() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("data/ab")).unwrap();
        std::fs::write(t.path().join("data/ab/cd"), b"hello").unwrap();
        std::fs::create_dir(t.path().join("layer")).unwrap();
        let stub = std::fs::File::create(t.path().join("layer/f")).unwrap();
        let privileged = sys::is_privileged();
        make_stub(stub.as_fd(), 5, b"/ab/cd", privileged).unwrap();
        let layer = sys::open_root_dir(&t.path().join("layer")).unwrap();
        let st = sys::stat_at(layer.as_fd(), OsStr::new("f")).unwrap();
        assert!(may_be_stub(&st));
        let r = redirect_of(layer.as_fd(), Some(OsStr::new("f"))).unwrap();
        assert_eq!(r.as_deref(), Some(&b"/ab/cd"[..]));
        let data = sys::open_root_dir(&t.path().join("data")).unwrap();
        let fd = open_data(data.as_fd(), b"/ab/cd", OFlags::RDONLY).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(sys::pread(fd.as_fd(), &mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(
            open_data(data.as_fd(), b"/ab/zz", OFlags::RDONLY).unwrap_err(),
            Errno::NOENT
        );
        // A symlink on the way is not followed.
        std::os::unix::fs::symlink("/etc", t.path().join("data/ln")).unwrap();
        assert!(open_data(data.as_fd(), b"/ln/passwd", OFlags::RDONLY).is_err());
        // An ordinary file is no stub.
        std::fs::write(t.path().join("layer/g"), b"x").unwrap();
        assert_eq!(
            redirect_of(layer.as_fd(), Some(OsStr::new("g"))).unwrap(),
            None
        );
    }
}
