//! Writing markers (whiteouts, opaque dirs, overlay xattrs) into the upper layer, in the
//! forms `crate::markers` describes.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use crate::markers::{OCI_OPAQUE, XattrNs, oci_whiteout_name};
use crate::sys::{self, Errno, SysResult};

/// How this mount writes markers into the upper layer.
#[derive(Debug, Clone, Copy)]
pub struct MarkerWriter {
    pub ns: XattrNs,
    /// Whether char-device 0/0 whiteouts can be created (else OCI `.wh.` files).
    pub device_whiteouts: bool,
}

impl MarkerWriter {
    /// Probe what the upper filesystem and our privileges allow, using the work dir.
    pub fn probe(work: BorrowedFd<'_>) -> Self {
        let ns = if sys::is_privileged() {
            XattrNs::Trusted
        } else {
            XattrNs::User
        };
        let probe = OsStr::new("#whiteout-probe");
        let _ = sys::unlink_at(work, probe);
        let device_whiteouts = sys::mknod_at(work, probe, libc::S_IFCHR, 0).is_ok();
        let _ = sys::unlink_at(work, probe);
        MarkerWriter {
            ns,
            device_whiteouts,
        }
    }

    /// Create a whiteout for `name` in `dirfd`.
    pub fn make_whiteout(&self, dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
        if self.device_whiteouts {
            sys::mknod_at(dirfd, name, libc::S_IFCHR, 0)
        } else {
            let fd = sys::open_at(
                dirfd,
                &oci_whiteout_name(name),
                sys::OFlags::CREATE | sys::OFlags::WRONLY | sys::OFlags::TRUNC,
                0o000,
            )?;
            drop(fd);
            Ok(())
        }
    }

    /// Mark the directory (`name` in `dirfd`, or `dirfd` itself) opaque.
    pub fn set_opaque(&self, dirfd: BorrowedFd<'_>, name: Option<&OsStr>) -> SysResult<()> {
        match sys::set_xattr(dirfd, name, &self.ns.name("opaque"), b"y", 0) {
            Ok(()) => Ok(()),
            Err(Errno::NOTSUP) | Err(Errno::PERM) => {
                // Fall back to the OCI marker file inside the directory.
                let dir = match name {
                    Some(n) => sys::open_dir_path(dirfd, n)?,
                    None => sys::open_dir_path(dirfd, OsStr::new("."))?,
                };
                let fd = sys::open_at(
                    std::os::fd::AsFd::as_fd(&dir),
                    OsStr::from_bytes(OCI_OPAQUE),
                    sys::OFlags::CREATE | sys::OFlags::WRONLY,
                    0o000,
                )?;
                drop(fd);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn set_xattr(
        &self,
        dirfd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        suffix: &str,
        value: &[u8],
    ) -> SysResult<()> {
        sys::set_xattr(dirfd, name, &self.ns.name(suffix), value, 0)
    }

    pub fn remove_xattr(
        &self,
        dirfd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        suffix: &str,
    ) -> SysResult<()> {
        match sys::remove_xattr(dirfd, name, &self.ns.name(suffix)) {
            Ok(()) | Err(Errno::NODATA) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
