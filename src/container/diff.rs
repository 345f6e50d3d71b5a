//! `diff`: a container's changes against its image, as `docker diff` prints them.
//!
//! Read from the upper dir, as the overlay's on-disk forms say:
//! - a whiteout (char device 0/0, an xattr whiteout, or an OCI `.wh.NAME` file) → `D`;
//! - any other upper entry: `C` if the image has that path, else `A` (so parents of
//!   changes show as `C`, as docker prints them);
//! - an opaque directory (or any directory below one) hides the image's entries: each
//!   entry of the image there that the upper dir does not have again is `D`;
//! - a directory renamed through the mount (`*.overlay.redirect`) keeps its contents in
//!   the image's layers: its whole merged subtree is listed at its new place (`A`, or
//!   `C` where the image has that path too), and its old path is `D` (the rename leaves
//!   a whiteout there).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use crate::container::view::{View, join};
use crate::container::{Container, Containers};
use crate::error::{Error, IoContext, Result};
use crate::markers::{self, OCI_OPAQUE};
use crate::overlay::Attr;
use crate::sys;

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    Added,
    Changed,
    Deleted,
}

impl Change {
    pub(crate) fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

/// The changes of a container, sorted by path (relative, without a leading `/`).
pub(crate) fn changes(cs: &Containers<'_>, c: &Container) -> Result<Vec<(Vec<u8>, Change)>> {
    let image = View::image_of(cs, c)?;
    let merged = View::container(cs, c)?;
    let upper = cs.upper(c);
    let fd = sys::open_root_dir(&upper).ctx(format!("opening {}", upper.display()))?;
    let mut d = Differ {
        image: &image,
        merged: &merged,
        out: BTreeMap::new(),
    };
    let root = image.root_attr()?;
    d.dir(fd.as_fd(), b"", Some(root), false)?;
    Ok(d.out.into_iter().collect())
}

struct Differ<'v> {
    image: &'v View,
    merged: &'v View,
    out: BTreeMap<Vec<u8>, Change>,
}

/// Whether an upper entry is a whiteout in the kernel's forms.
pub(crate) fn is_kernel_whiteout(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &sys::Stat,
    xwh: bool,
) -> bool {
    markers::is_whiteout_stat(st)
        || (xwh
            && sys::mode_type(st.st_mode) == libc::S_IFREG
            && st.st_size == 0
            && markers::is_xattr_whiteout(dir, name))
}

impl Differ<'_> {
    fn put(&mut self, path: Vec<u8>, c: Change) {
        self.out.entry(path).or_insert(c);
    }

    fn image_child(&self, dir: Option<Attr>, name: &[u8]) -> Result<Option<Attr>> {
        match dir {
            Some(d) if d.is_dir() => self.image.lookup(d.ino, OsStr::from_bytes(name)),
            _ => Ok(None),
        }
    }

    /// One upper directory at `prefix`; `img` is the image's object at that path;
    /// `hidden` says an opaque directory at or above hides the image below.
    fn dir(
        &mut self,
        fd: BorrowedFd<'_>,
        prefix: &[u8],
        img: Option<Attr>,
        hidden: bool,
    ) -> Result<()> {
        let at =
            |e: sys::Errno| Error::from(e).context(format!("/{}", String::from_utf8_lossy(prefix)));
        let markers = markers::read_markers(fd, None).map_err(at)?;
        let mut entries = sys::read_dir_all(fd).map_err(at)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let oci_opaque = entries.iter().any(|e| e.name.as_bytes() == OCI_OPAQUE);
        let hidden = hidden || markers.opaque || oci_opaque;
        let mut present: Vec<&[u8]> = Vec::new();
        for e in &entries {
            let name = e.name.as_bytes();
            if name == OCI_OPAQUE {
                continue;
            }
            if let Some(target) = markers::oci_whiteout_target(name) {
                self.put(join(prefix, target), Change::Deleted);
                present.push(target);
                continue;
            }
            let st = match sys::stat_at(fd, &e.name) {
                Ok(st) => st,
                Err(sys::Errno::NOENT) => continue,
                Err(err) => return Err(at(err)),
            };
            let path = join(prefix, name);
            present.push(name);
            if is_kernel_whiteout(fd, &e.name, &st, markers.xattr_whiteouts) {
                self.put(path, Change::Deleted);
                continue;
            }
            let img_child = self.image_child(img, name)?;
            let change = if img_child.is_some() {
                Change::Changed
            } else {
                Change::Added
            };
            self.put(path.clone(), change);
            if !sys::is_dir_mode(st.st_mode) {
                continue;
            }
            let m = markers::read_markers(fd, Some(&e.name)).map_err(at)?;
            if m.redirect.is_some() {
                // Contents live in the image's layers under another name: list what the
                // merged view has here.
                if let Some(a) = self.merged.lookup_path(&path)? {
                    self.merged_tree(a, &path, img_child)?;
                }
                continue;
            }
            let sub = sys::open_dir_path(fd, &e.name).map_err(at)?;
            self.dir(sub.as_fd(), &path, img_child, hidden)?;
        }
        // Under an opaque directory, what the image has and the upper does not is gone.
        if hidden && let Some(d) = img.filter(|a| a.is_dir()) {
            for n in self.image.list(d.ino)? {
                if !present.contains(&n.as_bytes()) {
                    self.put(join(prefix, n.as_bytes()), Change::Deleted);
                }
            }
        }
        Ok(())
    }

    /// Everything below a directory of the merged view, as additions (or changes where
    /// the image has the same path).
    fn merged_tree(&mut self, dir: Attr, prefix: &[u8], img: Option<Attr>) -> Result<()> {
        for n in self.merged.list(dir.ino)? {
            let Some(a) = self.merged.lookup(dir.ino, &n)? else {
                continue;
            };
            let path = join(prefix, n.as_bytes());
            let img_child = self.image_child(img, n.as_bytes())?;
            self.put(
                path.clone(),
                if img_child.is_some() {
                    Change::Changed
                } else {
                    Change::Added
                },
            );
            if a.is_dir() {
                self.merged_tree(a, &path, img_child)?;
            }
        }
        // The renamed dir replaces whatever the image had here.
        if let Some(d) = img.filter(|a| a.is_dir()) {
            let have = self.merged.list(dir.ino)?;
            for n in self.image.list(d.ino)? {
                if !have.contains(&n) {
                    self.put(join(prefix, n.as_bytes()), Change::Deleted);
                }
            }
        }
        Ok(())
    }
}
