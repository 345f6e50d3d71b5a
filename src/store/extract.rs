//! Safe extraction of a layer tar stream into a directory.
//!
//! Everything is created relative to directory fds with `O_NOFOLLOW`: every parent of an
//! entry is opened one component at a time without following symlinks, so no entry can
//! land outside the layer dir. Entries with `..`, absolute paths, a symlinked parent, or a
//! hard link to something not in the layer are refused with an error naming the entry.
//!
//! OCI whiteouts become the kernel's forms when privileged (`.wh.NAME` → char device 0/0,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory) and stay as they are
//! otherwise. Overlay xattrs found in the tar are dropped: an image must not forge markers
//! (nor recorded owners).
//!
//! Unprivileged, the layer becomes an override layer (see `override_stat`): owners, set-id
//! bits, device nodes and fifos the disk cannot hold are recorded in
//! `user.containers.override_stat`, and the layer root always carries one.
//!
//! As root of an ordinary user's namespace over subordinate ids (`mapped_owners`), the
//! layer is an override layer too, but owners within the namespace's maps, set-id bits
//! and fifos are real on disk; only device nodes (a namespace cannot make them) and ids
//! outside the maps are recorded.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use tar::EntryType;

use crate::error::{Error, Result};
use crate::markers::{OCI_OPAQUE, OCI_WH_PREFIX, is_internal_xattr};
use crate::override_stat::{self, OverrideLayer, Recorded};
use crate::store::digest::{Digest, Hasher};
use crate::store::objects::{self, ObjectSink};
use crate::store::tarsplit::{Recorder, TarSplit};
use crate::sys::{self, Errno, OFlags, TimeSpec};
use std::cell::RefCell;

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Keep owners, create device nodes, write kernel-form whiteouts and `trusted.*` xattrs.
    pub privileged: bool,
    /// Unprivileged as root of a user namespace: set owners the namespace maps, keep
    /// set-id bits, make fifos; record only what is left (see the module doc).
    pub mapped_owners: bool,
    /// Where file contents go: `Some` keeps each regular file's data in the file store
    /// and a metacopy stub in the tree (the store fills in its dirs per import); `None`
    /// writes plain files.
    pub objects: Option<ObjectDirs>,
    /// A lazy pull: the files whose content starts at these stream offsets carry no
    /// content here (zeros stand in); each becomes a stub naming the object given,
    /// fetched later.
    pub lazy: Option<std::sync::Arc<HashMap<u64, Digest>>>,
}

/// The file store's dirs for one extraction (see `objects`).
#[derive(Debug, Clone, Default)]
pub struct ObjectDirs {
    /// `ROOT/objects`: what the store has.
    pub store: std::path::PathBuf,
    /// This import's new objects.
    pub staged: std::path::PathBuf,
}

impl ExtractOptions {
    pub(crate) fn for_this_process() -> Self {
        ExtractOptions {
            mapped_owners: !sys::is_privileged() && sys::is_namespace_root(),
            ..Self::for_store(sys::is_privileged())
        }
    }

    /// As the store extracts: file contents in the file store.
    pub fn for_store(privileged: bool) -> Self {
        ExtractOptions {
            privileged,
            mapped_owners: false,
            objects: Some(ObjectDirs::default()),
            lazy: None,
        }
    }

    /// Plain files, no file store (what tests and the old layout use).
    pub fn plain(privileged: bool) -> Self {
        ExtractOptions {
            privileged,
            mapped_owners: false,
            objects: None,
            lazy: None,
        }
    }
}

/// What one extraction did.
#[derive(Debug, Default)]
pub(crate) struct Extracted {
    /// Entries read from the tar.
    pub entries: u64,
    /// sha256 of each regular file written, by inode number.
    pub file_hashes: HashMap<u64, Digest>,
    /// Device nodes that could not be created (unprivileged, and no xattrs to record
    /// them in).
    pub skipped_devices: u64,
    /// The record of the tar around its stored files, when one was asked for.
    pub split: Option<TarSplit>,
}

/// Files up to this size stay whole in the layer tree instead of becoming a stub and an
/// object. On ext4 with 256-byte inodes a stub's two xattrs need a 4 KiB block of their
/// own, so for a file of one block or less a stub plus an object costs twice the disk
/// of the file itself even when two images share it, and every stub costs a lookup of
/// its data on first `stat` and `open` through a mount.
pub(crate) const INLINE_MAX: usize = 4096;

/// Directories kept open while extracting, by path; bounded so huge layers don't run out
/// of descriptors.
const DIR_CACHE_MAX: usize = 2048;

struct Extractor<'a> {
    root: BorrowedFd<'a>,
    opts: ExtractOptions,
    /// Unprivileged: where owners and modes the disk cannot hold are recorded.
    ovl: Option<OverrideLayer>,
    dirs: HashMap<Vec<u8>, OwnedFd>,
    /// Directory metadata applied at the end (children change a dir's mtime, and a
    /// read-only mode would stop an unprivileged extraction from creating children).
    deferred_dirs: BTreeMap<Vec<u8>, DirMeta>,
    out: Extracted,
    buf: Vec<u8>,
    /// Where file contents go (`None`: into plain files in the tree).
    objects: Option<ObjectSink>,
    /// Told where the stored files' bytes are in the stream (see `tarsplit`).
    split: Option<&'a RefCell<Recorder>>,
}

#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: TimeSpec,
}

/// How `Extractor::record` writes a record.
#[derive(Debug, Clone, Copy)]
enum RecordWrite {
    /// A new object: a record only where one is needed.
    New,
    /// An object that may hold an older record: removed where none is needed now, unless
    /// `always` (the layer root).
    Replace { always: bool },
}

/// Metadata of one tar entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn entry_err(name: &[u8], what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("entry {}: {what}", String::from_utf8_lossy(name)))
}

fn sys_err(name: &[u8], what: &str, e: Errno) -> Error {
    Error::with_errno(
        format!(
            "entry {}: {what}: {}",
            String::from_utf8_lossy(name),
            crate::error::describe(&std::io::Error::from_raw_os_error(e.raw_os_error()))
        ),
        e.raw_os_error(),
    )
}

/// Split an entry path into its components, refusing anything that could leave the root.
/// `./a//b/` gives `[a, b]`; the root itself gives `[]`.
pub(crate) fn safe_components(path: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if path.first() == Some(&b'/') {
        return Err("absolute path refused");
    }
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err("path with \"..\" refused"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Extract a whole tar stream into the directory `root`.
pub(crate) fn extract<R: Read>(
    reader: R,
    root: BorrowedFd<'_>,
    opts: ExtractOptions,
    split: Option<&RefCell<Recorder>>,
) -> Result<Extracted> {
    let mut archive = tar::Archive::new(reader);
    let ovl = if opts.privileged {
        None
    } else {
        Some(
            OverrideLayer::with_name(root, override_stat::CONTAINERS)
                .map_err(|e| sys_err(b".", "stat", e))?,
        )
    };
    let objects = match &opts.objects {
        Some(d) if !d.store.as_os_str().is_empty() => Some(ObjectSink::open(&d.store, &d.staged)?),
        _ => None,
    };
    let mut x = Extractor {
        split,
        objects,
        root,
        opts,
        ovl,
        dirs: HashMap::new(),
        deferred_dirs: BTreeMap::new(),
        out: Extracted::default(),
        buf: vec![0u8; 1 << 20],
    };
    let entries = archive
        .entries()
        .map_err(|e| Error::io("reading the layer tar", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_err(&x, e))?;
        x.out.entries += 1;
        x.one(&mut entry)?;
    }
    x.finish_dirs()?;
    Ok(x.out)
}

fn tar_err(x: &Extractor<'_>, e: std::io::Error) -> Error {
    Error::io(
        format!("reading the layer tar after {} entries", x.out.entries),
        e,
    )
}

impl<'a> Extractor<'a> {
    fn one<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let path = entry.path_bytes().into_owned();
        let comps = safe_components(&path).map_err(|m| entry_err(&path, m))?;
        let meta = self.meta(entry, &path)?;
        let kind = entry.header().entry_type();
        if comps.is_empty() {
            // The layer root itself ("./"): keep its metadata.
            if kind.is_dir() {
                self.set_dir_meta_now(None, &path, &meta)?;
                self.deferred_dirs.insert(Vec::new(), meta.dir());
            }
            return Ok(());
        }
        let (name, parents) = comps.split_last().expect("non-empty");
        let name = OsStr::from_bytes(name);
        let parent_key = parents.join(&b'/');
        let parent = self.open_parent(&parent_key, parents, &path)?;
        let parent = parent.as_fd();

        if kind.is_file() || kind == EntryType::Continuous {
            let file_name = name.as_bytes();
            if file_name == OCI_OPAQUE && self.opts.privileged {
                return sys::set_xattr(parent, None, OsStr::new("trusted.overlay.opaque"), b"y", 0)
                    .map_err(|e| sys_err(&path, "marking the directory opaque", e));
            }
            if self.opts.privileged
                && let Some(target) = file_name.strip_prefix(OCI_WH_PREFIX)
                && file_name != OCI_OPAQUE
            {
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(entry_err(&path, "whiteout for an invalid name"));
                }
                let target = OsStr::from_bytes(target);
                self.clear(parent, target, &path, &parent_key)?;
                return sys::mknod_at(parent, target, libc::S_IFCHR, 0)
                    .map_err(|e| sys_err(&path, "creating the whiteout", e));
            }
            return self.file(entry, parent, name, &path, &parent_key, &meta);
        }
        match kind {
            EntryType::Directory => {
                match sys::stat_at(parent, name) {
                    Ok(st) if sys::is_dir_mode(st.st_mode) => {}
                    Ok(_) => {
                        self.clear(parent, name, &path, &parent_key)?;
                        self.mkdir(parent, name, &path)?;
                    }
                    Err(Errno::NOENT) => self.mkdir(parent, name, &path)?,
                    Err(e) => return Err(sys_err(&path, "stat", e)),
                }
                self.set_dir_meta_now(Some((parent, name)), &path, &meta)?;
                self.deferred_dirs.insert(comps.join(&b'/'), meta.dir());
                Ok(())
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "symlink without a target"))?
                    .into_owned();
                self.clear(parent, name, &path, &parent_key)?;
                sys::symlink_at(OsStr::from_bytes(&target), parent, name)
                    .map_err(|e| sys_err(&path, "creating the symlink", e))?;
                self.set_meta(parent, name, &path, &meta, false)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "hard link without a target"))?
                    .into_owned();
                self.hard_link(parent, name, &path, &parent_key, &target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let (ftype, rdev) = match kind {
                    EntryType::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let node_type = if kind == EntryType::Char {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        };
                        (node_type, libc::makedev(major, minor))
                    }
                };
                self.clear(parent, name, &path, &parent_key)?;
                let real_fifo = ftype == libc::S_IFIFO && self.opts.mapped_owners;
                if self.ovl.is_some() && !real_fifo {
                    return self.stand_in(parent, name, &path, &meta, meta.recorded(ftype, rdev));
                }
                match sys::mknod_at(parent, name, ftype | (meta.mode & 0o7777), rdev) {
                    Ok(()) => {}
                    Err(Errno::PERM) if !self.opts.privileged && ftype != libc::S_IFIFO => {
                        log::warn!(
                            "entry {}: device node skipped (needs root)",
                            String::from_utf8_lossy(&path)
                        );
                        self.out.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(sys_err(&path, "creating the node", e)),
                }
                self.set_meta(parent, name, &path, &meta, true)?;
                let rec = meta.recorded(ftype, rdev);
                self.record(parent, Some(name), &path, &rec, RecordWrite::New)
            }
            // PAX/GNU extension headers are consumed by the reader; anything else
            // (sockets do not exist in tar) carries nothing for a rootfs.
            _ => {
                log::debug!(
                    "entry {}: type {:?} ignored",
                    String::from_utf8_lossy(&path),
                    kind
                );
                Ok(())
            }
        }
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Meta> {
        let h = entry.header();
        let bad = |what: &str| entry_err(path, format!("invalid {what} in the tar header"));
        let mode = h.mode().map_err(|_| bad("mode"))?;
        let mut uid = h.uid().map_err(|_| bad("uid"))?;
        let mut gid = h.gid().map_err(|_| bad("gid"))?;
        let mut mtime = TimeSpec::Set(h.mtime().map_err(|_| bad("mtime"))? as i64, 0);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| entry_err(path, format!("invalid PAX header: {e}")))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| entry_err(path, format!("invalid PAX header: {e}")))?;
                let key = ext.key_bytes();
                if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                    if is_internal_xattr(attr) {
                        log::debug!(
                            "entry {}: overlay xattr {} dropped",
                            String::from_utf8_lossy(path),
                            String::from_utf8_lossy(attr)
                        );
                        continue;
                    }
                    xattrs.push((attr.to_vec(), ext.value_bytes().to_vec()));
                    continue;
                }
                let val = ext.value().unwrap_or("");
                match key {
                    b"uid" => uid = val.parse().map_err(|_| bad("PAX uid"))?,
                    b"gid" => gid = val.parse().map_err(|_| bad("PAX gid"))?,
                    b"mtime" => mtime = parse_pax_time(val).ok_or_else(|| bad("PAX mtime"))?,
                    _ => {}
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| bad("uid"))?;
        let gid = u32::try_from(gid).map_err(|_| bad("gid"))?;
        Ok(Meta {
            mode: mode & 0o7777,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// The directory that holds an entry, created (0755, root) where the tar did not list it.
    fn open_parent(&mut self, key: &[u8], comps: &[&[u8]], path: &[u8]) -> Result<OwnedFd> {
        if let Some(fd) = self.dirs.get(key) {
            return fd.try_clone().map_err(|e| Error::io("dup", e));
        }
        let mut cur = self
            .root
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup", e))?;
        for (i, c) in comps.iter().enumerate() {
            let name = OsStr::from_bytes(c);
            let next = match sys::open_dir_path(cur.as_fd(), name) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    self.mkdir(cur.as_fd(), name, path)?;
                    sys::open_dir_path(cur.as_fd(), name)
                        .map_err(|e| sys_err(path, "opening a parent directory", e))?
                }
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let parent = comps[..=i].join(&b'/');
                    let what = match sys::stat_at(cur.as_fd(), name) {
                        Ok(st) if sys::mode_type(st.st_mode) == libc::S_IFLNK => "is a symlink",
                        _ => "is not a directory",
                    };
                    return Err(entry_err(
                        path,
                        format!(
                            "parent {} {what}; refused (nothing may be written through it)",
                            String::from_utf8_lossy(&parent)
                        ),
                    ));
                }
                Err(e) => return Err(sys_err(path, "opening a parent directory", e)),
            };
            cur = next;
        }
        if self.dirs.len() >= DIR_CACHE_MAX {
            self.dirs.clear();
        }
        let keep = cur.try_clone().map_err(|e| Error::io("dup", e))?;
        self.dirs.insert(key.to_vec(), keep);
        Ok(cur)
    }

    fn mkdir(&mut self, parent: BorrowedFd<'_>, name: &OsStr, path: &[u8]) -> Result<()> {
        match sys::mkdir_at(parent, name, 0o755) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(sys_err(path, "creating a directory", e)),
        }
    }

    /// Remove whatever is at `name` before a new entry takes its place (a later entry
    /// replaces an earlier one, as in tar).
    fn clear(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
        parent_key: &[u8],
    ) -> Result<()> {
        match sys::stat_at(parent, name) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(sys_err(path, "stat", e)),
            Ok(st) if sys::is_dir_mode(st.st_mode) => {
                // Cached fds may point into the tree about to go.
                self.dirs.clear();
                let mut key = parent_key.to_vec();
                if !key.is_empty() {
                    key.push(b'/');
                }
                key.extend_from_slice(name.as_bytes());
                let prefix = [key.as_slice(), b"/"].concat();
                self.deferred_dirs
                    .retain(|k, _| k != &key && !k.starts_with(&prefix));
                sys::remove_tree(parent, name)
                    .map_err(|e| sys_err(path, "replacing a directory", e))
            }
            Ok(_) => sys::unlink_at(parent, name).map_err(|e| sys_err(path, "replacing a file", e)),
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
        parent_key: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        self.clear(parent, name, path, parent_key)?;
        let read_err = |e: std::io::Error| {
            Error::io(
                format!(
                    "reading the layer tar at entry {}",
                    String::from_utf8_lossy(path)
                ),
                e,
            )
        };
        let fd = sys::open_at(
            parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
            0o600,
        )
        .map_err(|e| sys_err(path, "creating the file", e))?;
        let stored_whole = self.objects.is_some() && entry.size() as usize > INLINE_MAX;
        if let Some(r) = self.split {
            if stored_whole {
                r.borrow_mut().skip(entry.raw_file_position(), entry.size());
            } else if self.objects.is_none() {
                r.borrow_mut().give_up();
            }
        }
        let lazy = self
            .opts
            .lazy
            .as_ref()
            .filter(|_| stored_whole)
            .and_then(|m| m.get(&entry.raw_file_position()).copied());
        let digest = if let Some(d) = lazy {
            // Content fetched later: the stub names it now.
            std::io::copy(entry, &mut std::io::sink()).map_err(read_err)?;
            crate::metacopy::make_stub(
                fd.as_fd(),
                entry.size(),
                &objects::redirect(&d),
                self.opts.privileged,
            )
            .map_err(|e| sys_err(path, "writing the file's stub", e))?;
            d
        } else if let Some(sink) = &self.objects {
            // The head of the file in memory: most files end within it, and one the
            // store has already is then never written.
            let mut filled = 0;
            let mut eof = false;
            while filled < self.buf.len() {
                match entry.read(&mut self.buf[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_err(e)),
                }
            }
            let (d, len) = if eof && filled <= INLINE_MAX {
                // Small: the file itself, in the tree.
                let mut f = File::from(fd.try_clone().map_err(|e| Error::io("dup", e))?);
                f.write_all(&self.buf[..filled]).map_err(|e| {
                    Error::io(
                        format!("entry {}: writing", String::from_utf8_lossy(path)),
                        e,
                    )
                })?;
                (Digest::of(&self.buf[..filled]), 0)
            } else if eof {
                let d = Digest::of(&self.buf[..filled]);
                sink.put_bytes(&d, &self.buf[..filled])
                    .map_err(|e| e.context(format!("entry {}", String::from_utf8_lossy(path))))?;
                (d, filled as u64)
            } else {
                let mut rest = vec![0u8; 1 << 20];
                let (head, _) = self.buf.split_at(filled);
                sink.put_stream(head, entry, &mut rest).map_err(read_err)?
            };
            if len > 0 {
                crate::metacopy::make_stub(
                    fd.as_fd(),
                    len,
                    &objects::redirect(&d),
                    self.opts.privileged,
                )
                .map_err(|e| sys_err(path, "writing the file's stub", e))?;
            }
            d
        } else {
            let mut f = File::from(fd.try_clone().map_err(|e| Error::io("dup", e))?);
            let mut h = Hasher::new();
            loop {
                let n = match entry.read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_err(e)),
                };
                h.update(&self.buf[..n]);
                f.write_all(&self.buf[..n]).map_err(|e| {
                    Error::io(
                        format!("entry {}: writing", String::from_utf8_lossy(path)),
                        e,
                    )
                })?;
            }
            h.finish()
        };
        if let Some(r) = self.split
            && stored_whole
        {
            r.borrow_mut().stored(digest);
        }
        let fd = fd.as_fd();
        self.chown(fd, None, path, meta)?;
        let rec = meta.recorded(libc::S_IFREG, 0);
        sys::fchmod(fd, self.disk_perm(&rec)).map_err(|e| sys_err(path, "chmod", e))?;
        self.record(fd, None, path, &rec, RecordWrite::New)?;
        for (k, v) in &meta.xattrs {
            self.set_xattr(parent, Some(name), path, k, v, true)?;
        }
        sys::futimens(fd, TimeSpec::Omit, meta.mtime)
            .map_err(|e| sys_err(path, "setting times", e))?;
        let st = sys::stat_fd(fd).map_err(|e| sys_err(path, "stat", e))?;
        self.out.file_hashes.insert(st.st_ino, digest);
        Ok(())
    }

    fn hard_link(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
        parent_key: &[u8],
        target: &[u8],
    ) -> Result<()> {
        let tcomps = safe_components(target).map_err(|m| {
            entry_err(
                path,
                format!(
                    "hard link to {}: {m} (it must point inside the layer)",
                    String::from_utf8_lossy(target)
                ),
            )
        })?;
        let Some((tname, tparents)) = tcomps.split_last() else {
            return Err(entry_err(path, "hard link to the layer root refused"));
        };
        let tkey = tparents.join(&b'/');
        let tparent = match self.lookup_parent(&tkey, tparents) {
            Some(fd) => fd,
            None => {
                return Err(entry_err(
                    path,
                    format!(
                        "hard link to {}, which is not in the layer",
                        String::from_utf8_lossy(target)
                    ),
                ));
            }
        };
        let tname = OsStr::from_bytes(tname);
        let st = match sys::stat_at(tparent.as_fd(), tname) {
            Ok(st) => st,
            Err(_) => {
                return Err(entry_err(
                    path,
                    format!(
                        "hard link to {}, which is not in the layer",
                        String::from_utf8_lossy(target)
                    ),
                ));
            }
        };
        if sys::is_dir_mode(st.st_mode) {
            return Err(entry_err(path, "hard link to a directory refused"));
        }
        if let Ok(cur) = sys::stat_at(parent, name)
            && cur.st_ino == st.st_ino
            && cur.st_dev == st.st_dev
        {
            return Ok(());
        }
        self.clear(parent, name, path, parent_key)?;
        sys::link_at(tparent.as_fd(), tname, parent, name)
            .map_err(|e| sys_err(path, "creating the hard link", e))
    }

    /// Open an existing directory (no creation) for a hard-link target.
    fn lookup_parent(&mut self, key: &[u8], comps: &[&[u8]]) -> Option<OwnedFd> {
        if let Some(fd) = self.dirs.get(key) {
            return fd.try_clone().ok();
        }
        let mut cur = self.root.try_clone_to_owned().ok()?;
        for c in comps {
            cur = sys::open_dir_path(cur.as_fd(), OsStr::from_bytes(c)).ok()?;
        }
        Some(cur)
    }

    /// Owner and xattrs of a directory now; mode and mtime at the end.
    fn set_dir_meta_now(
        &mut self,
        at: Option<(BorrowedFd<'_>, &OsStr)>,
        path: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        let (dirfd, name) = match at {
            Some((p, n)) => (p, Some(n)),
            None => (self.root, None),
        };
        // In a namespace the layer root stays the layer owner's (0 inside): objects
        // without a record that it owns show as 0 (see `OverrideLayer::default_for`).
        if at.is_some() || !self.opts.mapped_owners {
            self.chown(dirfd, name, path, meta)?;
        }
        // A directory listed twice keeps the last entry's owner: an older record goes.
        // The root always carries one: it marks the layer as recording owners.
        let rec = meta.recorded(libc::S_IFDIR, 0);
        self.record(
            dirfd,
            name,
            path,
            &rec,
            RecordWrite::Replace {
                always: at.is_none(),
            },
        )?;
        for (k, v) in &meta.xattrs {
            self.set_xattr(dirfd, name, path, k, v, true)?;
        }
        Ok(())
    }

    /// Set an object's owner where this process can: as root, any; as root of a user
    /// namespace, ids its maps hold (others stay the layer owner's and are recorded).
    fn chown(
        &self,
        dirfd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        path: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        if !self.opts.privileged && !self.opts.mapped_owners {
            return Ok(());
        }
        match sys::chown_at(dirfd, name, Some(meta.uid), Some(meta.gid)) {
            Err(Errno::INVAL) if self.opts.mapped_owners => Ok(()),
            r => r.map_err(|e| sys_err(path, "chown", e)),
        }
    }

    /// The permission bits an object gets on disk.
    fn disk_perm(&self, rec: &Recorded) -> u32 {
        match self.ovl {
            Some(_) if !self.opts.mapped_owners => override_stat::disk_mode(rec.mode) & 0o7777,
            _ => rec.mode & 0o7777,
        }
    }

    /// Record what an object is, where the disk does not show it (override layers only).
    fn record(
        &mut self,
        dirfd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        path: &[u8],
        rec: &Recorded,
        how: RecordWrite,
    ) -> Result<()> {
        let Some(ovl) = self.ovl else {
            return Ok(());
        };
        let always = matches!(how, RecordWrite::Replace { always: true });
        let needed = if self.opts.mapped_owners {
            // The disk holds what the namespace could make: see what it shows. A
            // directory gets its mode at the end.
            let st = match name {
                Some(n) => sys::stat_at(dirfd, n),
                None => sys::stat_fd(dirfd),
            }
            .map_err(|e| sys_err(path, "stat", e))?;
            let shown = ovl.default_for(&st);
            always
                || (shown.uid, shown.gid) != (rec.uid, rec.gid)
                || (!sys::is_dir_mode(rec.mode) && shown.mode != rec.mode)
        } else {
            // On disk the object has the layer owner's ids and the disk mode.
            rec.uid != 0 || rec.gid != 0 || override_stat::disk_mode(rec.mode) != rec.mode || always
        };
        let res = if needed {
            ovl.write(dirfd, name, rec)
        } else if matches!(how, RecordWrite::Replace { .. }) {
            match sys::remove_xattr(dirfd, name, OsStr::new(ovl.name)) {
                Err(Errno::NODATA) => Ok(()),
                r => r,
            }
        } else {
            Ok(())
        };
        match res {
            Ok(()) => Ok(()),
            Err(e @ (Errno::NOTSUP | Errno::PERM)) => {
                log::warn!(
                    "entry {}: the store's filesystem keeps no user xattrs ({}): owners, \
                     set-id bits and device nodes of this layer are not kept",
                    String::from_utf8_lossy(path),
                    crate::error::describe(&std::io::Error::from_raw_os_error(e.raw_os_error()))
                );
                self.ovl = None;
                Ok(())
            }
            Err(e) => Err(sys_err(path, "recording the owner", e)),
        }
    }

    /// A device node, fifo or socket in an override layer: an empty file and a record.
    fn stand_in(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
        meta: &Meta,
        rec: Recorded,
    ) -> Result<()> {
        let perm = self.disk_perm(&rec);
        let fd = sys::open_at(
            parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
            perm,
        )
        .map_err(|e| sys_err(path, "creating the file for a device node", e))?;
        sys::fchmod(fd.as_fd(), perm).map_err(|e| sys_err(path, "chmod", e))?;
        self.record(fd.as_fd(), None, path, &rec, RecordWrite::New)?;
        for (k, v) in &meta.xattrs {
            self.set_xattr(parent, Some(name), path, k, v, true)?;
        }
        sys::futimens(fd.as_fd(), TimeSpec::Omit, meta.mtime)
            .map_err(|e| sys_err(path, "setting times", e))
    }

    /// Owner, mode, xattrs and times of a non-directory that is not a regular file.
    fn set_meta(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        self.chown(parent, Some(name), path, meta)?;
        if chmod {
            sys::chmod_at(parent, Some(name), meta.mode).map_err(|e| sys_err(path, "chmod", e))?;
        }
        for (k, v) in &meta.xattrs {
            self.set_xattr(parent, Some(name), path, k, v, chmod)?;
        }
        sys::utimens_at(parent, Some(name), TimeSpec::Omit, meta.mtime)
            .map_err(|e| sys_err(path, "setting times", e))
    }

    fn set_xattr(
        &mut self,
        dirfd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        path: &[u8],
        attr: &[u8],
        value: &[u8],
        user_ok: bool,
    ) -> Result<()> {
        if !user_ok && attr.starts_with(b"user.") {
            // The kernel allows user.* xattrs only on files and directories.
            return Ok(());
        }
        match sys::set_xattr(dirfd, name, OsStr::from_bytes(attr), value, 0) {
            Ok(()) => Ok(()),
            Err(e @ (Errno::PERM | Errno::NOTSUP | Errno::ACCESS)) => {
                log::warn!(
                    "entry {}: xattr {} not kept: {}",
                    String::from_utf8_lossy(path),
                    String::from_utf8_lossy(attr),
                    crate::error::describe(&std::io::Error::from_raw_os_error(e.raw_os_error()))
                );
                Ok(())
            }
            Err(e) => Err(sys_err(path, "setting an xattr", e)),
        }
    }

    /// Apply directory modes and times, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        self.dirs.clear();
        if self.ovl.is_some() && !self.deferred_dirs.contains_key(&Vec::new()) {
            // No entry for the root: it is 0:0 0755, and says the layer records owners.
            let st = sys::stat_fd(self.root).map_err(|e| sys_err(b".", "stat", e))?;
            let rec = Recorded {
                uid: 0,
                gid: 0,
                mode: libc::S_IFDIR | (st.st_mode & 0o7777),
                rdev: 0,
            };
            self.record(
                self.root,
                None,
                b".",
                &rec,
                RecordWrite::Replace { always: true },
            )?;
        }
        let dirs = std::mem::take(&mut self.deferred_dirs);
        for (key, m) in dirs.iter().rev() {
            let comps: Vec<&[u8]> = key
                .split(|b| *b == b'/')
                .filter(|c| !c.is_empty())
                .collect();
            let fd = match self.lookup_parent(key, &comps) {
                Some(fd) => fd,
                // Replaced by a later non-directory entry.
                None => continue,
            };
            let mode = match self.ovl {
                Some(_) if !self.opts.mapped_owners => {
                    override_stat::disk_mode(libc::S_IFDIR | m.mode) & 0o7777
                }
                _ => m.mode,
            };
            sys::chmod_at(fd.as_fd(), None, mode).map_err(|e| sys_err(key, "chmod", e))?;
            sys::utimens_at(fd.as_fd(), None, TimeSpec::Omit, m.mtime)
                .map_err(|e| sys_err(key, "setting times", e))?;
        }
        Ok(())
    }
}

impl Meta {
    fn recorded(&self, ftype: u32, rdev: u64) -> Recorded {
        Recorded {
            uid: self.uid,
            gid: self.gid,
            mode: ftype | self.mode,
            rdev,
        }
    }

    fn dir(&self) -> DirMeta {
        DirMeta {
            mode: self.mode,
            mtime: self.mtime,
        }
    }
}

/// `"1700000000.5"` → seconds and nanoseconds.
fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let sec: i64 = sec.parse().ok()?;
    let mut ns: i64 = 0;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ns = format!("{digits:0<9}").parse().ok()?;
    }
    if sec < 0 && ns > 0 {
        return Some(TimeSpec::Set(sec - 1, 1_000_000_000 - ns));
    }
    Some(TimeSpec::Set(sec, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        assert_eq!(safe_components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert!(safe_components(b"./").unwrap().is_empty());
        assert!(safe_components(b"/etc/passwd").is_err());
        assert!(safe_components(b"a/../../x").is_err());
        assert!(safe_components(b"..").is_err());
        assert_eq!(safe_components(b"a/..b").unwrap(), vec![&b"a"[..], b"..b"]);
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("12"), Some(TimeSpec::Set(12, 0)));
        assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::Set(12, 500_000_000)));
        assert_eq!(parse_pax_time("12.0000000019"), Some(TimeSpec::Set(12, 1)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.x"), None);
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    fn extract_bytes(data: &[u8]) -> (tempfile::TempDir, Result<Extracted>) {
        let t = tempfile::tempdir().unwrap();
        let root = sys::open_root_dir(t.path()).unwrap();
        let r = extract(data, root.as_fd(), ExtractOptions::for_this_process(), None);
        (t, r)
    }

    #[test]
    fn hashes_what_it_writes_by_inode() {
        let data = tar_of(|b| {
            let mut h = header(EntryType::Regular, 3);
            b.append_data(&mut h, "d/f", &b"abc"[..]).unwrap();
            let mut h = header(EntryType::Link, 0);
            b.append_link(&mut h, "d/g", "d/f").unwrap();
        });
        let (t, r) = extract_bytes(&data);
        let x = r.unwrap();
        assert_eq!(x.entries, 2);
        let ino =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(t.path().join("d/g")).unwrap());
        assert_eq!(x.file_hashes.get(&ino), Some(&Digest::of(b"abc")));
        assert_eq!(std::fs::read(t.path().join("d/g")).unwrap(), b"abc");
    }

    #[test]
    fn refuses_escapes_naming_the_entry() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                tar_of(|b| {
                    let mut h = header(EntryType::Regular, 1);
                    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
                    h.set_cksum();
                    b.append(&h, &b"x"[..]).unwrap();
                }),
                "../escape",
            ),
            (
                tar_of(|b| {
                    let mut h = header(EntryType::Symlink, 0);
                    b.append_link(&mut h, "lnk", "/tmp").unwrap();
                    let mut h = header(EntryType::Regular, 1);
                    b.append_data(&mut h, "lnk/owned", &b"x"[..]).unwrap();
                }),
                "lnk/owned",
            ),
            (
                tar_of(|b| {
                    let mut h = header(EntryType::Link, 0);
                    h.as_gnu_mut().unwrap().linkname[..11].copy_from_slice(b"/etc/passwd");
                    b.append_data(&mut h, "pw", &b""[..]).unwrap();
                }),
                "pw",
            ),
        ];
        for (data, name) in cases {
            let (t, r) = extract_bytes(&data);
            let msg = r.expect_err("must be refused").to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(!t.path().join("owned").exists());
        }
    }
}
