//! The file store: the content of every regular file of every layer, once, by sha256.
//!
//! ```text
//! ROOT/objects/ab/cdef…    the bytes of one file (62 more hex digits), mode 0444
//! ```
//!
//! Layer trees keep a metacopy stub for each non-empty regular file (see
//! [`crate::metacopy`]) whose redirect is `/ab/cdef…`, so `ROOT/objects` is the data-only
//! lower layer of every mount (`lowerdir=L1:L2::ROOT/objects`), for layerfs and for the
//! kernel's overlayfs alike. Empty files stay plain files in the tree (no data to share).
//!
//! An import writes the objects it lacks into its staging dir (`tmp/import-…/objects/`,
//! flat), and moves them here, after syncing, before any layer that names them: an
//! object under its final name is always complete, and a layer under its final name
//! never names a missing object. Objects no layer names are removed by `prune`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::store::digest::{Digest, Hasher};
use crate::store::layout::unique_name;
use crate::sys::{self, Errno, OFlags, RenameFlags};

/// Mode of an object file: data only, never written after it is placed.
const OBJECT_MODE: u32 = 0o444;

/// `ab/cdef…`: an object's path below `ROOT/objects`.
pub(crate) fn rel_path(d: &Digest) -> String {
    let h = d.hex();
    format!("{}/{}", &h[..2], &h[2..])
}

/// `/ab/cdef…`: the redirect a stub carries for this object.
pub(crate) fn redirect(d: &Digest) -> Vec<u8> {
    format!("/{}", rel_path(d)).into_bytes()
}

/// The object a stub's redirect names, when it is one of ours.
pub(crate) fn digest_of_redirect(r: &[u8]) -> Option<Digest> {
    let s = std::str::from_utf8(r).ok()?.strip_prefix('/')?;
    let (a, b) = s.split_once('/')?;
    if a.len() != 2 || b.contains('/') {
        return None;
    }
    Digest::from_hex(&format!("{a}{b}"))
}

/// Where an extraction puts file contents: objects the store has are not written again;
/// new ones go to the staging dir under their digest.
pub(crate) struct ObjectSink {
    store: OwnedFd,
    staged: OwnedFd,
}

impl ObjectSink {
    pub(crate) fn open(store_objects: &Path, staged: &Path) -> Result<ObjectSink> {
        let store = sys::open_root_dir(store_objects)
            .map_err(|e| Error::from(e).context(format!("opening {}", store_objects.display())))?;
        let staged = sys::open_root_dir(staged)
            .map_err(|e| Error::from(e).context(format!("opening {}", staged.display())))?;
        Ok(ObjectSink { store, staged })
    }

    /// Whether the store or this import has the object already.
    pub(crate) fn has(&self, d: &Digest) -> bool {
        sys::stat_at(self.store.as_fd(), OsStr::new(&rel_path(d))).is_ok()
            || sys::stat_at(self.staged.as_fd(), OsStr::new(&d.hex())).is_ok()
    }

    /// Store bytes held in memory under their digest `d` (unless present).
    pub(crate) fn put_bytes(&self, d: &Digest, data: &[u8]) -> Result<()> {
        if self.has(d) {
            return Ok(());
        }
        let (mut f, tmp) = self.temp()?;
        f.write_all(data).ctx("writing a file object")?;
        drop(f);
        self.adopt(&tmp, d)
    }

    /// Copy a stream into the object store; returns its digest and length.
    pub(crate) fn put_stream(
        &self,
        head: &[u8],
        rest: &mut dyn Read,
        buf: &mut [u8],
    ) -> std::io::Result<(Digest, u64)> {
        let (mut f, tmp) = self.temp().map_err(std::io::Error::other)?;
        let res = (|| {
            let mut h = Hasher::new();
            h.update(head);
            f.write_all(head)?;
            let mut len = head.len() as u64;
            loop {
                let n = match rest.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                h.update(&buf[..n]);
                f.write_all(&buf[..n])?;
                len += n as u64;
            }
            Ok((h.finish(), len))
        })();
        drop(f);
        match res {
            Ok((d, len)) => {
                self.adopt(&tmp, &d).map_err(std::io::Error::other)?;
                Ok((d, len))
            }
            Err(e) => {
                let _ = sys::unlink_at(self.staged.as_fd(), &tmp);
                Err(e)
            }
        }
    }

    fn temp(&self) -> Result<(File, OsString)> {
        let name = OsString::from(unique_name("object"));
        let fd = sys::open_at(
            self.staged.as_fd(),
            &name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
            OBJECT_MODE,
        )
        .map_err(|e| Error::from(e).context("creating a file object"))?;
        Ok((File::from(fd), name))
    }

    /// Keep the finished temp file `tmp` as object `d`, or drop it when the object is
    /// there already (another layer of this import, or the store, has it).
    fn adopt(&self, tmp: &OsStr, d: &Digest) -> Result<()> {
        let dir = self.staged.as_fd();
        let here = sys::stat_at(self.store.as_fd(), OsStr::new(&rel_path(d))).is_ok();
        let res = if here {
            Err(Errno::EXIST)
        } else {
            sys::rename_at(dir, tmp, dir, OsStr::new(&d.hex()), RenameFlags::NOREPLACE)
        };
        match res {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => sys::unlink_at(dir, tmp)
                .map_err(|e| Error::from(e).context("removing a duplicate file object")),
            Err(e) => Err(Error::from(e).context(format!("storing object {d}"))),
        }
    }
}

/// Move the objects staged in `staged` (flat, by hex digest) to the store's objects
/// dir; their data must be synced already. Returns how many were new. The fan-out dirs
/// are synced, so the objects are in place for good before any layer names them.
pub(crate) fn place_staged(staged: &Path, objects: &Path) -> Result<usize> {
    let src = match sys::open_root_dir(staged) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(Error::from(e).context(format!("opening {}", staged.display()))),
    };
    let dst = sys::open_root_dir(objects)
        .map_err(|e| Error::from(e).context(format!("opening {}", objects.display())))?;
    let mut touched = std::collections::BTreeSet::new();
    let mut placed = 0;
    for e in sys::read_dir_all(src.as_fd()).ctx(format!("reading {}", staged.display()))? {
        let Some(d) = e.name.to_str().and_then(Digest::from_hex) else {
            continue;
        };
        let rel = rel_path(&d);
        let fan = &rel[..2];
        match sys::mkdir_at(dst.as_fd(), OsStr::new(fan), 0o755) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(Error::from(e).context(format!("creating objects/{fan}"))),
        }
        match sys::rename_at(
            src.as_fd(),
            &e.name,
            dst.as_fd(),
            OsStr::new(&rel),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => placed += 1,
            Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(Error::from(e).context(format!("moving object {d} into the store")));
            }
        }
        touched.insert(fan.to_string());
    }
    for fan in touched {
        crate::store::layout::sync_dir(&objects.join(fan))?;
    }
    crate::store::layout::sync_dir(objects)?;
    Ok(placed)
}

/// Place one object, its bytes checked by the caller, straight into the store's objects
/// dir: written aside under a dot name, synced, renamed into place (a concurrent writer
/// of the same object loses the race harmlessly).
pub(crate) fn place_bytes(objects: &Path, d: &Digest, data: &[u8]) -> Result<()> {
    let root = sys::open_root_dir(objects)
        .map_err(|e| Error::from(e).context(format!("opening {}", objects.display())))?;
    let rel = rel_path(d);
    if sys::stat_at(root.as_fd(), OsStr::new(&rel)).is_ok() {
        return Ok(());
    }
    let tmp = OsString::from(format!(".{}", unique_name("fetched")));
    let fd = sys::open_at(
        root.as_fd(),
        &tmp,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
        OBJECT_MODE,
    )
    .map_err(|e| Error::from(e).context("creating a file object"))?;
    let mut f = File::from(fd);
    let written = f.write_all(data).and_then(|()| f.sync_all());
    drop(f);
    let fan = &rel[..2];
    let res = written
        .map_err(|e| Error::io(format!("writing object {d}"), e))
        .and_then(|()| {
            match sys::mkdir_at(root.as_fd(), OsStr::new(fan), 0o755) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::from(e).context(format!("creating objects/{fan}"))),
            }
            match sys::rename_at(
                root.as_fd(),
                &tmp,
                root.as_fd(),
                OsStr::new(&rel),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) | Err(Errno::EXIST) => Ok(()),
                Err(e) => Err(Error::from(e).context(format!("placing object {d}"))),
            }
        });
    let _ = sys::unlink_at(root.as_fd(), &tmp);
    res?;
    crate::store::layout::sync_dir(&objects.join(fan))
}

/// Every object in the store with its size on disk (allocated bytes).
pub(crate) fn list(objects: &Path) -> Result<Vec<(Digest, u64)>> {
    let root = match sys::open_root_dir(objects) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(Error::from(e).context(format!("opening {}", objects.display()))),
    };
    let mut out = Vec::new();
    for fan in sys::read_dir_all(root.as_fd()).ctx(format!("reading {}", objects.display()))? {
        let Some(f) = fan.name.to_str().filter(|f| f.len() == 2) else {
            continue;
        };
        let Ok(dir) = sys::open_dir_path(root.as_fd(), &fan.name) else {
            continue;
        };
        let dir_r = sys::open_dir_read(dir.as_fd()).ctx(format!("reading objects/{f}"))?;
        for e in sys::read_dir_all(dir_r.as_fd()).ctx(format!("reading objects/{f}"))? {
            let Some(d) = e
                .name
                .to_str()
                .and_then(|n| Digest::from_hex(&format!("{f}{n}")))
            else {
                continue;
            };
            let blocks = sys::stat_at(dir.as_fd(), &e.name)
                .map(|st| st.st_blocks as u64 * 512)
                .unwrap_or(0);
            out.push((d, blocks));
        }
    }
    out.sort();
    Ok(out)
}

/// Hash an object's bytes; `Ok(false)` when they no longer match its name.
pub(crate) fn verify(objects: &Path, d: &Digest) -> Result<bool> {
    let p = objects.join(rel_path(d));
    let mut f = File::open(&p).ctx(format!("object {d}"))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ctx(format!("reading object {d}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish() == *d)
}

/// Remove one object; returns the bytes it held on disk.
pub(crate) fn remove(objects: &Path, d: &Digest) -> Result<u64> {
    let p = objects.join(rel_path(d));
    let bytes = std::fs::symlink_metadata(&p)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(format!("removing object {d}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_redirects() {
        let d = Digest::of(b"x");
        let r = redirect(&d);
        assert_eq!(digest_of_redirect(&r), Some(d));
        assert_eq!(r.len(), 1 + 2 + 1 + 62);
        assert_eq!(digest_of_redirect(b"/ab/cd"), None);
        assert_eq!(digest_of_redirect(b"ab/cdef"), None);
    }

    #[test]
    fn objects_are_stored_once_and_placed() {
        let t = tempfile::tempdir().unwrap();
        let (store, staged) = (t.path().join("objects"), t.path().join("staged"));
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&staged).unwrap();
        let sink = ObjectSink::open(&store, &staged).unwrap();
        let d = Digest::of(b"hello");
        sink.put_bytes(&d, b"hello").unwrap();
        assert!(sink.has(&d));
        let mut buf = vec![0u8; 4];
        let (d2, n) = sink.put_stream(b"hel", &mut &b"lo"[..], &mut buf).unwrap();
        assert_eq!((d2, n), (d, 5));
        assert_eq!(std::fs::read_dir(&staged).unwrap().count(), 1);
        assert_eq!(place_staged(&staged, &store).unwrap(), 1);
        assert_eq!(std::fs::read(store.join(rel_path(&d))).unwrap(), b"hello");
        assert_eq!(list(&store).unwrap().len(), 1);
        assert!(verify(&store, &d).unwrap());
        // Present in the store now: a new import does not write it again.
        let sink = ObjectSink::open(&store, &staged).unwrap();
        sink.put_bytes(&d, b"hello").unwrap();
        assert_eq!(std::fs::read_dir(&staged).unwrap().count(), 0);
        remove(&store, &d).unwrap();
        assert!(list(&store).unwrap().is_empty());
    }
}
