//! The upper layer's writer: everything the mount writes into the upper dir besides
//! file data and copies. It owns the work dir (scratch space on the upper filesystem,
//! where objects are built before they are renamed into place) and the marker writer,
//! and knows how to put a whiteout in place of a name and how to remove a name.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use super::layers::RealDir;
use super::marker_writer::MarkerWriter;
use crate::sys::{self, Errno, RenameFlags, SysResult};

/// The work-dir name of the whiteout that device whiteouts are links to.
const SHARED_WHITEOUT: &str = "#whiteout";

pub struct UpperWriter {
    markers: MarkerWriter,
    /// `WORKDIR/work`.
    work: OwnedFd,
    tmp_counter: AtomicU64,
}

impl UpperWriter {
    /// Probe what the upper filesystem and our privileges allow, using the work dir.
    pub fn new(work: OwnedFd) -> Self {
        UpperWriter {
            markers: MarkerWriter::probe(work.as_fd()),
            work,
            tmp_counter: AtomicU64::new(0),
        }
    }

    pub fn work(&self) -> BorrowedFd<'_> {
        self.work.as_fd()
    }

    /// Whiteouts are character devices 0/0 (else OCI `.wh.` files).
    pub fn device_whiteouts(&self) -> bool {
        self.markers.device_whiteouts
    }

    /// A fresh unique name for a scratch object in the work dir.
    pub fn tmp_name(&self) -> OsString {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#lfs.{}.{}", std::process::id(), n))
    }

    /// Remove everything left in the work dir by an earlier, interrupted daemon.
    pub fn clean(&self) -> SysResult<()> {
        for e in sys::read_dir_all(self.work())? {
            sys::remove_tree(self.work(), &e.name)?;
        }
        Ok(())
    }

    /// At the end of the session: drop the shared whiteout, so that a cleanly
    /// unmounted work dir is empty.
    pub fn finish(&self) {
        let _ = sys::unlink_at(self.work(), OsStr::new(SHARED_WHITEOUT));
    }

    pub fn set_opaque(&self, dirfd: BorrowedFd<'_>, name: Option<&OsStr>) -> SysResult<()> {
        self.markers.set_opaque(dirfd, name)
    }

    /// Set the overlay xattr `*.overlay.SUFFIX` in this mount's namespace.
    pub fn set_xattr(
        &self,
        dirfd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        suffix: &str,
        value: &[u8],
    ) -> SysResult<()> {
        self.markers.set_xattr(dirfd, name, suffix, value)
    }

    pub fn remove_xattr(
        &self,
        dirfd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        suffix: &str,
    ) -> SysResult<()> {
        self.markers.remove_xattr(dirfd, name, suffix)
    }

    /// Create a whiteout at `name` in `dirfd`. Device whiteouts are hard links to one
    /// shared whiteout in the work dir (as the kernel's overlayfs does since 5.8): no
    /// new inode per deleted name.
    pub fn whiteout(&self, dirfd: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
        let w = &self.markers;
        if !w.device_whiteouts {
            return w.make_whiteout(dirfd, name);
        }
        let work = self.work();
        let shared = OsStr::new(SHARED_WHITEOUT);
        for _ in 0..3 {
            match sys::link_at(work, shared, dirfd, name) {
                Ok(()) => return Ok(()),
                Err(Errno::NOENT) => match w.make_whiteout(work, shared) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                },
                // Link count exhausted: start a new shared whiteout.
                Err(Errno::MLINK) => {
                    let _ = sys::unlink_at(work, shared);
                }
                Err(e) => return Err(e),
            }
        }
        w.make_whiteout(dirfd, name)
    }

    /// Put a whiteout at `name` in `dir`, replacing whatever real entry is there.
    pub fn whiteout_over(&self, dir: &RealDir, name: &OsStr, existing_dir: bool) -> SysResult<()> {
        let work = self.work();
        if !self.markers.device_whiteouts {
            if existing_dir {
                sys::remove_tree(dir.fd(), name)?;
            } else {
                match sys::unlink_at(dir.fd(), name) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            return self.markers.make_whiteout(dir.fd(), name);
        }
        let tmp = self.tmp_name();
        self.whiteout(work, &tmp)?;
        let flags = if existing_dir {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::empty()
        };
        if let Err(e) = sys::rename_at(work, &tmp, dir.fd(), name, flags) {
            let _ = sys::unlink_at(work, &tmp);
            return Err(e);
        }
        if existing_dir {
            sys::remove_tree(work, &tmp)?;
        }
        Ok(())
    }

    /// Remove `name` from the upper dir `dir`. `in_upper`: it has a real entry there
    /// (a directory if `is_dir`); `hide_lower`: a lower layer has the name, so a
    /// whiteout must take its place.
    pub fn remove(
        &self,
        dir: &RealDir,
        name: &OsStr,
        in_upper: bool,
        is_dir: bool,
        hide_lower: bool,
    ) -> SysResult<()> {
        match (in_upper, hide_lower) {
            (true, true) => self.whiteout_over(dir, name, is_dir),
            (false, true) => self.whiteout(dir.fd(), name),
            (true, false) if is_dir => {
                // Its upper dir may still hold whiteouts: move it away, then delete.
                let work = self.work();
                let tmp = self.tmp_name();
                sys::rename_at(dir.fd(), name, work, &tmp, RenameFlags::empty())?;
                sys::remove_tree(work, &tmp)
            }
            (true, false) => sys::unlink_at(dir.fd(), name),
            (false, false) => Ok(()),
        }
    }
}
