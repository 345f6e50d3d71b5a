//! Read-only union views, served in-process by the overlay core (no mount needed):
//! an image's layers, or a container's merged tree (its upper dir read as the top
//! layer, as podman does for diff and commit). Used by `diff` (what the image has at a
//! path), `commit` (the merged contents of a renamed directory) and `export`.
//!
//! Reading the upper dir as a lower layer never writes to it, so a view can be taken
//! while the container is mounted. Before a container's view is opened, copy-ups left
//! unsynced by a daemon that died are settled (`overlay::settle_copy_ups`: a copy from
//! before a restart is removed, one from this boot synced), which is safe beside a live
//! daemon too.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::container::tarball::{Entry, Kind, TarWriter};
use crate::container::{Container, Containers};
use crate::error::{Error, Result};
use crate::markers::is_internal_xattr;
use crate::overlay::{Attr, Ctx, Options, OverlayFs, ROOT_INO};
use crate::sys::{self, Errno};

/// A read-only union of directories, top first.
pub(crate) struct View {
    fs: OverlayFs,
}

fn path_str(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

fn err_at(p: &[u8], e: Errno) -> Error {
    Error::from(e).context(path_str(p))
}

impl View {
    /// Lower layers (top first) with the data-only layers their stubs name.
    pub(crate) fn open(lowers: Vec<PathBuf>, data: Vec<PathBuf>) -> Result<View> {
        let mut opts = Options::new(lowers, None, None);
        opts.data = data;
        let fs = OverlayFs::new(opts)?;
        Ok(View { fs })
    }

    /// The image a container was made from (its layers only).
    pub(crate) fn image_of(cs: &Containers<'_>, c: &Container) -> Result<View> {
        View::open(cs.layer_dirs(c)?, vec![cs.store().objects_dir()])
    }

    /// A container's merged tree. Copies a daemon left unsynced are settled first.
    pub(crate) fn container(cs: &Containers<'_>, c: &Container) -> Result<View> {
        crate::overlay::settle_copy_ups(&cs.upper(c), &cs.work(c))?;
        let mut lowers = vec![cs.upper(c)];
        lowers.extend(cs.layer_dirs(c)?);
        View::open(lowers, vec![cs.store().objects_dir()])
    }

    pub(crate) fn root_attr(&self) -> Result<Attr> {
        self.fs.getattr(ROOT_INO, None).map_err(|e| err_at(b"", e))
    }

    /// `name` in the directory `dir` (an inode of this view), if present.
    pub(crate) fn lookup(&self, dir: u64, name: &OsStr) -> Result<Option<Attr>> {
        match self.fs.lookup(dir, name) {
            Ok(e) => Ok(Some(e.attr)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
            Err(e) => Err(err_at(name.as_bytes(), e)),
        }
    }

    /// A relative path (`a/b/c`) from the root, if present.
    pub(crate) fn lookup_path(&self, rel: &[u8]) -> Result<Option<Attr>> {
        let mut cur = self.root_attr()?;
        for c in rel.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if !cur.is_dir() {
                return Ok(None);
            }
            match self.lookup(cur.ino, OsStr::from_bytes(c))? {
                Some(a) => cur = a,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Names in a directory, sorted bytewise.
    pub(crate) fn list(&self, dir: u64) -> Result<Vec<OsString>> {
        let (list, _) = self.fs.readdir(dir, 0).map_err(|e| err_at(b"", e))?;
        let mut names: Vec<OsString> = list
            .entries
            .iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| e.name.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        self.fs.readlink(ino).map_err(|e| err_at(b"", e))
    }

    /// Every xattr (the overlay's own are never shown), sorted by name.
    pub(crate) fn xattrs(&self, ino: u64) -> Result<Xattrs> {
        let list = match self.fs.xattr_names(ino) {
            Ok(l) => l,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err_at(b"", e)),
        };
        let mut out = Vec::new();
        for name in sys::split_xattr_names(&list) {
            let mut buf = vec![0u8; 256];
            loop {
                match self.fs.getxattr(ino, name, &mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        out.push((name.as_bytes().to_vec(), buf));
                        break;
                    }
                    Err(Errno::RANGE) => {
                        let n = self.fs.getxattr(ino, name, &mut []).unwrap_or(0);
                        buf = vec![0u8; n.max(buf.len() * 2)];
                    }
                    Err(Errno::NODATA) => break,
                    Err(e) => return Err(err_at(name.as_bytes(), e)),
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The real file behind a regular file, opened read-only.
    pub(crate) fn open_file(&self, ino: u64) -> Result<File> {
        let o = self
            .fs
            .open(Ctx::ROOT, ino, libc::O_RDONLY)
            .map_err(|e| err_at(b"", e))?;
        let res = self
            .fs
            .handle_file(o.fh)
            .ok_or_else(|| Error::new("file handle vanished"))
            .and_then(|h| {
                h.file()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| Error::io("duplicating a file descriptor", e))
            });
        self.fs.release(o.fh);
        Ok(File::from(res?))
    }
}

/// Identity of a multi-link object, to write later names as tar hard links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LinkKey {
    /// A real file: device and inode.
    Real(u64, u64),
    /// An object of a view, by the view's inode number.
    View(u64),
}

/// Paths already written for multi-link objects.
#[derive(Default)]
pub(crate) struct Links {
    seen: HashMap<LinkKey, Vec<u8>>,
}

impl Links {
    /// The earlier path of this object, or `None` (and remember `path`) if it is new.
    pub(crate) fn earlier(&mut self, key: LinkKey, path: &[u8]) -> Option<Vec<u8>> {
        match self.seen.get(&key) {
            Some(p) => Some(p.clone()),
            None => {
                self.seen.insert(key, path.to_vec());
                None
            }
        }
    }
}

/// `path/name`, or `name` at the top.
pub(crate) fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut p = prefix.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// A tar entry for an object of a view (data not included).
fn view_entry(view: &View, path: &[u8], a: &Attr) -> Result<Option<(Entry, Option<File>)>> {
    let xattrs = view.xattrs(a.ino).map_err(|e| e.context(path_str(path)))?;
    let mut e = Entry {
        path: path.to_vec(),
        kind: Kind::Dir,
        mode: a.mode & 0o7777,
        uid: u64::from(a.uid),
        gid: u64::from(a.gid),
        mtime: a.mtime.sec,
        size: 0,
        xattrs,
    };
    let mut file = None;
    match sys::mode_type(a.mode) {
        libc::S_IFDIR => {}
        libc::S_IFREG => {
            let f = view
                .open_file(a.ino)
                .map_err(|e| e.context(path_str(path)))?;
            e.kind = Kind::File;
            e.size = a.size;
            file = Some(f);
        }
        libc::S_IFLNK => {
            e.kind = Kind::Symlink(
                view.readlink(a.ino)
                    .map_err(|e| e.context(path_str(path)))?,
            )
        }
        libc::S_IFCHR => e.kind = Kind::Char(sys::dev_major(a.rdev), sys::dev_minor(a.rdev)),
        libc::S_IFBLK => e.kind = Kind::Block(sys::dev_major(a.rdev), sys::dev_minor(a.rdev)),
        libc::S_IFIFO => e.kind = Kind::Fifo,
        _ => {
            log::info!(
                "{}: sockets cannot be stored in a tar; skipped",
                path_str(path)
            );
            return Ok(None);
        }
    }
    Ok(Some((e, file)))
}

/// Write one object of a view (and, for a directory, nothing below it).
pub(crate) fn write_view_object<W: Write>(
    view: &View,
    path: &[u8],
    a: &Attr,
    tw: &mut TarWriter<W>,
    links: &mut Links,
) -> Result<()> {
    let Some((mut e, file)) = view_entry(view, path, a)? else {
        return Ok(());
    };
    if e.kind != Kind::Dir && a.nlink > 1 {
        let key = match &file {
            Some(f) => {
                let st = sys::stat_fd(f.as_fd()).map_err(|er| err_at(path, er))?;
                LinkKey::Real(st.st_dev, st.st_ino)
            }
            None => LinkKey::View(a.ino),
        };
        if let Some(first) = links.earlier(key, path) {
            e.kind = Kind::HardLink(first);
            e.size = 0;
            e.xattrs.clear();
            return tw
                .append(&e, None)
                .map_err(|er| Error::io(format!("writing {}", path_str(path)), er));
        }
    }
    let mut file = file;
    tw.append(&e, file.as_mut().map(|f| f as &mut dyn std::io::Read))
        .map_err(|er| Error::io(format!("writing {}", path_str(path)), er))
}

/// Write everything below the directory `dir` of a view, depth first in name order.
pub(crate) fn write_view_tree<W: Write>(
    view: &View,
    dir: u64,
    prefix: &[u8],
    tw: &mut TarWriter<W>,
    links: &mut Links,
) -> Result<()> {
    for name in view.list(dir).map_err(|e| e.context(path_str(prefix)))? {
        let path = join(prefix, name.as_bytes());
        let Some(a) = view.lookup(dir, &name)? else {
            continue;
        };
        write_view_object(view, &path, &a, tw, links)?;
        if a.is_dir() {
            write_view_tree(view, a.ino, &path, tw, links)?;
        }
    }
    Ok(())
}

/// Extended attributes: (name, value) sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Xattrs of a real object, without the overlay's own, sorted.
pub(crate) fn real_xattrs(
    dir: std::os::fd::BorrowedFd<'_>,
    name: Option<&OsStr>,
) -> std::result::Result<Xattrs, Errno> {
    let list = match sys::list_xattr(dir, name) {
        Ok(l) => l,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for attr in sys::split_xattr_names(&list) {
        if is_internal_xattr(attr.as_bytes()) {
            continue;
        }
        if let Some(v) = sys::get_xattr(dir, name, attr)? {
            out.push((attr.as_bytes().to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}
