//! Every on-disk marker form: names, xattrs and how to recognise them. A leaf module:
//! the store (extraction), containers (diff, commit) and the overlay all read markers
//! through it; writing them into an upper layer is the overlay's business.
//!
//! Read in every layer:
//! - kernel whiteout: a character device 0/0;
//! - kernel xattr whiteout: a zero-size file with `*.overlay.whiteout`, in a directory
//!   whose `*.overlay.opaque` is `x`;
//! - kernel opaque directory: `trusted.overlay.opaque=y` or `user.overlay.opaque=y`;
//! - OCI whiteout `.wh.NAME` and OCI opaque marker `.wh..wh..opq`.
//!
//! Written to an upper layer (by `overlay::marker_writer::MarkerWriter`): the kernel forms in
//! the `trusted.` namespace when privileged (so the kernel's overlayfs reads the same
//! upper dir); otherwise a 0/0 device if the kernel allows it, else OCI `.wh.` files,
//! with `user.overlay.*` xattrs.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::sys::{self, Errno, Stat, SysResult};

pub const OCI_WH_PREFIX: &[u8] = b".wh.";
pub const OCI_OPAQUE: &[u8] = b".wh..wh..opq";

/// Whether a stat result is a kernel whiteout (char device 0/0).
#[inline]
pub fn is_whiteout_stat(st: &Stat) -> bool {
    sys::mode_type(st.st_mode) == libc::S_IFCHR && st.st_rdev == 0
}

/// If `name` is an OCI whiteout `.wh.X`, return `X` (not for the opaque marker).
#[inline]
pub fn oci_whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OCI_OPAQUE {
        return None;
    }
    name.strip_prefix(OCI_WH_PREFIX)
}

/// Any name that is a marker and never shows in the merged view.
#[inline]
pub fn is_marker_name(name: &[u8]) -> bool {
    name.starts_with(OCI_WH_PREFIX)
}

pub fn oci_whiteout_name(name: &OsStr) -> OsString {
    let mut v = OCI_WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

/// Namespace of the overlay xattrs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    Trusted,
    User,
}

impl XattrNs {
    pub fn prefix(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.",
            XattrNs::User => "user.overlay.",
        }
    }
    pub fn name(self, suffix: &str) -> OsString {
        OsString::from(format!("{}{}", self.prefix(), suffix))
    }
}

/// xattr names hidden from, and refused through, the mount, and dropped from image
/// layers: the overlay's markers and the recorded owners of rootless layers.
#[inline]
pub fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || crate::override_stat::is_override_xattr(name)
}

/// Overlay markers found on one real directory.
#[derive(Debug, Default, Clone)]
pub struct DirMarkers {
    /// Hides every lower layer below this one.
    pub opaque: bool,
    /// Entries may be xattr whiteouts (`opaque=x`).
    pub xattr_whiteouts: bool,
    /// Redirect path (kernel `redirect_dir`).
    pub redirect: Option<Vec<u8>>,
    /// Contains copied-up or redirected children.
    pub impure: bool,
    /// Stable inode number recorded at copy-up.
    pub origin_ino: Option<u64>,
}

/// Suffixes of the overlay xattrs we read.
const OPAQUE: &[u8] = b"opaque";
const REDIRECT: &[u8] = b"redirect";
const IMPURE: &[u8] = b"impure";
const WHITEOUT: &[u8] = b"whiteout";
/// Our own record of the inode number a copied-up object keeps. It lives under the
/// overlay prefix so the kernel's overlayfs hides it too.
pub const ORIGIN_INO: &str = "layerfs.ino";

/// Read the overlay markers of a real object (`name` in `dirfd`, or the fd itself).
/// One `listxattr`, and a `getxattr` only for markers that are present.
pub fn read_markers(dirfd: BorrowedFd<'_>, name: Option<&OsStr>) -> SysResult<DirMarkers> {
    let mut m = DirMarkers::default();
    let list = match sys::list_xattr(dirfd, name) {
        Ok(l) => l,
        Err(Errno::NOTSUP) | Err(Errno::PERM) | Err(Errno::ACCESS) => return Ok(m),
        Err(e) => return Err(e),
    };
    if list.is_empty() {
        return Ok(m);
    }
    for attr in sys::split_xattr_names(&list) {
        let b = attr.as_bytes();
        let suffix = if let Some(s) = b.strip_prefix(b"trusted.overlay.") {
            s
        } else if let Some(s) = b.strip_prefix(b"user.overlay.") {
            s
        } else {
            continue;
        };
        let get = || sys::get_xattr(dirfd, name, attr).ok().flatten();
        match suffix {
            OPAQUE => match get().as_deref() {
                Some(b"y") => m.opaque = true,
                Some(b"x") => m.xattr_whiteouts = true,
                _ => {}
            },
            REDIRECT => m.redirect = get().filter(|r| valid_redirect(r)),
            IMPURE => m.impure = matches!(get().as_deref(), Some(b"y")),
            s if s == ORIGIN_INO.as_bytes() => {
                m.origin_ino = get().and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
            }
            _ => {}
        }
    }
    Ok(m)
}

/// Whether a redirect stays inside the layers: a relative one is a single name, an
/// absolute one a path from the layer roots; neither may use `.` or `..` (which would
/// let a planted xattr lead lookups out of the layer, e.g. to the host's `/etc`).
pub fn valid_redirect(r: &[u8]) -> bool {
    if r.is_empty() || r.contains(&0) {
        return false;
    }
    let bad = |c: &[u8]| c == b"." || c == b"..";
    match r.strip_prefix(b"/") {
        Some(abs) => !abs.split(|b| *b == b'/').any(bad),
        None => !r.contains(&b'/') && !bad(r),
    }
}

/// Whether a zero-size regular file is an xattr whiteout.
pub fn is_xattr_whiteout(dirfd: BorrowedFd<'_>, name: &OsStr) -> bool {
    for ns in [XattrNs::Trusted, XattrNs::User] {
        let attr = ns.name(std::str::from_utf8(WHITEOUT).unwrap_or("whiteout"));
        if let Ok(Some(_)) = sys::get_xattr(dirfd, Some(name), &attr) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(oci_whiteout_target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(oci_whiteout_target(b".wh..wh..opq"), None);
        assert_eq!(oci_whiteout_target(b"foo"), None);
        assert!(is_marker_name(b".wh..wh..opq"));
        assert!(is_marker_name(b".wh.x"));
        assert!(!is_marker_name(b"wh.x"));
        assert_eq!(
            oci_whiteout_name(OsStr::new("a b")),
            OsString::from(".wh.a b")
        );
    }

    #[test]
    fn redirects_stay_in_the_layers() {
        assert!(valid_redirect(b"name"));
        assert!(valid_redirect(b"/a/b"));
        assert!(!valid_redirect(b"../host"));
        assert!(!valid_redirect(b"a/b"));
        assert!(!valid_redirect(b".."));
        assert!(!valid_redirect(b"/a/../../etc"));
        assert!(!valid_redirect(b"/./a"));
        assert!(!valid_redirect(b""));
    }

    #[test]
    fn internal_xattrs() {
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.overlay.redirect"));
        assert!(!is_internal_xattr(b"user.mime_type"));
        assert!(is_internal_xattr(b"user.containers.override_stat"));
        assert!(!is_internal_xattr(b"security.capability"));
    }
}
