//! Making and inspecting the files of a test tree: layers in the kernel's marker form and
//! the OCI form, special files, owners and timestamps, never following a symlink.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, mknodat, utimensat};

use crate::xattr::set_xattr;

/// Write a file, creating parents.
pub fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap();
}

/// A symlink, creating parents.
pub fn symlink(target: &str, p: &Path) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// `mknod(2)`: `mode` holds the file type bits (`S_IFIFO`, `S_IFCHR`, …) and the
/// permissions.
pub fn mknod(p: &Path, mode: u32, dev: u64) {
    mknodat(
        CWD,
        p,
        FileType::from_raw_mode(mode),
        Mode::from_raw_mode(mode),
        dev,
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
}

/// A kernel-form whiteout (a character device 0/0).
pub fn kernel_whiteout(p: &Path) {
    mknod(p, FileType::CharacterDevice.as_raw_mode(), 0);
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Set atime and mtime of a path (not following a symlink).
pub fn set_times(p: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

/// Give every entry below `root` (and `root`) the same old timestamp, children first.
pub fn set_all_times(root: &Path, sec: i64) {
    let md = fs::symlink_metadata(root).unwrap();
    if md.is_dir() {
        for e in fs::read_dir(root).unwrap() {
            set_all_times(&e.unwrap().path(), sec);
        }
    }
    set_times(root, sec, 0);
}

/// `truncate(2)` by path: the request a FUSE filesystem gets without an open file, which
/// neither `rustix` nor `std` makes (both truncate through an fd). Follows a symlink.
#[allow(unsafe_code)]
pub fn truncate(p: &Path, len: u64) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let len = i64::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: truncate reads a NUL-terminated path that lives across the call.
    if unsafe { libc::truncate(c.as_ptr(), len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A name from bytes.
pub fn os(s: &[u8]) -> &OsStr {
    OsStr::from_bytes(s)
}

/// `lstat` of a path, or the errno.
pub fn lstat(p: &Path) -> Result<fs::Metadata, i32> {
    fs::symlink_metadata(p).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// The errno of an io::Result, for assertions.
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Copy a directory tree exactly (cp -a), for identical copies of layers.
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// Copy a layer tree, turning OCI markers (`.wh.NAME`, `.wh..wh..opq`) into the kernel's
/// forms (0/0 device, `trusted.overlay.opaque=y`), for the kernel to mount.
pub fn oci_to_kernel(src: &Path, dst: &Path) {
    copy_tree(src, dst);
    convert_dir(dst);
    fn convert_dir(d: &Path) {
        let md = fs::symlink_metadata(d).unwrap();
        let mut names: Vec<OsString> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = d.join(&n);
            let b = n.as_bytes();
            if b == b".wh..wh..opq" {
                fs::remove_file(&p).unwrap();
                set_xattr(d, "trusted.overlay.opaque", b"y");
            } else if let Some(t) = b.strip_prefix(b".wh.") {
                fs::remove_file(&p).unwrap();
                kernel_whiteout(&d.join(os(t)));
            } else if fs::symlink_metadata(&p).unwrap().is_dir() {
                convert_dir(&p);
            }
        }
        set_times(d, md.mtime(), md.mtime_nsec());
    }
}
