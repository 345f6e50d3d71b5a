//! The union filesystem core: every operation on plain types, drivable without a mount.
//!
//! Read-side operations live here; copy-up is in `copy_up.rs` and the mutating
//! operations in `mutate.rs`. All methods take `&self`: the object is shared by every
//! request thread, with per-node locks only.

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::handles::{FileHandle, HandleTable};
use super::inode_table::{Alias, DirState, FileState, InodeTable, Kind, Node, NodeState};
use super::kernel_cache::KernelCache;
use super::layers::{LayerId, Layers, RealDir, UPPER};
use super::lookup::{Detail, DirView, Resolved, Resolver};
use super::readdir::{DirEntryOut, Listing, ListingCache, start_after};
use super::types::{Attr, Ctx, Entry, Opened, StatFs, XattrList};
use super::whiteout::MarkerWriter;
use crate::markers;
use crate::sys::{self, Errno, OFlags, Stat, SysResult};

/// Inode number of the root directory (fixed by FUSE).
pub const ROOT_INO: u64 = 1;

/// How the union is put together.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// `fsync` calls and copy-ups reach the disk (off with `volatile` / `fsync=0`).
    pub fsync: bool,
    /// Directory-index entries kept in memory over all directories.
    pub index_budget: usize,
    /// Owner mapping between the layers and the mount.
    pub idmap: super::idmap::IdMap,
}

impl Options {
    pub fn new(lowers: Vec<PathBuf>, upper: Option<PathBuf>, work: Option<PathBuf>) -> Self {
        Options {
            lowers,
            upper,
            work,
            fsync: true,
            index_budget: 400_000,
            idmap: Default::default(),
        }
    }
}

/// The union filesystem.
pub struct OverlayFs {
    pub(crate) res: Resolver,
    pub(crate) table: InodeTable,
    pub(crate) files: HandleTable<FileHandle>,
    pub(crate) listings: ListingCache,
    pub(crate) links: super::hardlinks::LinkMaps,
    pub(crate) root: Arc<Node>,
    /// Present when there is an upper layer.
    pub(crate) writer: Option<MarkerWriter>,
    pub(crate) opts: Options,
    tmp_counter: AtomicU64,
    /// Where to report changes the kernel did not ask for (set once mounted).
    kernel: std::sync::OnceLock<Box<dyn KernelCache>>,
}

/// Error opening the layers, naming the path at fault.
#[derive(Debug)]
pub struct OpenError {
    pub path: PathBuf,
    pub errno: Errno,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.path.display(),
            std::io::Error::from_raw_os_error(self.errno.raw_os_error())
        )
    }
}

impl OverlayFs {
    pub fn new(opts: Options) -> Result<Self, OpenError> {
        let layers = Layers::open(&opts.lowers, opts.upper.as_deref(), opts.work.as_deref())
            .map_err(|(path, errno)| OpenError { path, errno })?;
        let layers = Arc::new(layers);
        let writer = layers.work_fd().map(MarkerWriter::probe);
        let upper_oci_whiteouts = writer.is_some_and(|w| !w.device_whiteouts);
        if let Some(work) = layers.work_fd() {
            clean_work_dir(work).map_err(|errno| OpenError {
                path: opts.work.clone().unwrap_or_default().join("work"),
                errno,
            })?;
        }
        let upper = layers.upper.as_ref().map(|u| u.root.clone());
        let impure = match &upper {
            Some(u) => markers::read_markers(u.fd(), None)
                .map(|m| m.impure)
                .unwrap_or(false),
            None => false,
        };
        let lowers: Arc<[Arc<RealDir>]> = layers.lowers.iter().map(|l| l.root.clone()).collect();
        let table = InodeTable::new();
        let root = table.insert_new(
            ROOT_INO,
            Kind::Dir,
            NodeState::Dir(DirState {
                parent: None,
                name: OsString::new(),
                upper,
                lowers,
                redirect: None,
                impure,
            }),
        );
        // The kernel never forgets the root: keep it pinned.
        root.inc_lookup(1);
        Ok(OverlayFs {
            res: Resolver {
                upper_oci_whiteouts,
                ..Resolver::new(layers, opts.index_budget)
            },
            table,
            files: HandleTable::default(),
            listings: ListingCache::new(opts.index_budget / 2),
            links: super::hardlinks::LinkMaps::new(opts.lowers.len()),
            root,
            writer,
            opts,
            tmp_counter: AtomicU64::new(0),
            kernel: std::sync::OnceLock::new(),
        })
    }

    pub fn layers(&self) -> &Layers {
        &self.res.layers
    }

    /// Install the channel to the kernel's caches (once, after mounting).
    pub fn set_kernel_cache(&self, k: Box<dyn KernelCache>) {
        let _ = self.kernel.set(k);
    }

    /// The attributes of `ino` changed without a request about it.
    pub(crate) fn attr_changed(&self, ino: u64) {
        if let Some(k) = self.kernel.get() {
            k.attr_changed(ino);
        }
    }

    pub fn is_writable(&self) -> bool {
        self.writer.is_some()
    }

    /// Live nodes (for memory reports and tests).
    pub fn node_count(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn node(&self, ino: u64) -> SysResult<Arc<Node>> {
        if ino == ROOT_INO {
            return Ok(self.root.clone());
        }
        self.table.get(ino).ok_or(Errno::STALE)
    }

    pub(crate) fn dir_view(&self, node: &Node) -> SysResult<DirView> {
        match &*node.state.read() {
            NodeState::Dir(d) => Ok(DirView {
                serial: node.serial,
                upper: d.upper.clone(),
                lowers: d.lowers.clone(),
                impure: d.impure,
            }),
            NodeState::File(_) => Err(Errno::NOTDIR),
        }
    }

    /// A fresh unique name for a scratch object in the work dir.
    pub(crate) fn tmp_name(&self) -> OsString {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#lfs.{}.{}", std::process::id(), n))
    }

    // ---------------------------------------------------------------- lookup

    /// Look up `name` in directory `parent`; on success the node's lookup count rises.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<Entry> {
        let p = self.node(parent)?;
        let (node, st) = self.lookup_node(&p, name)?.ok_or(Errno::NOENT)?;
        let attr = self.attr_of(&node, &st);
        node.inc_lookup(1);
        Ok(Entry {
            immutable: self.is_lower_only(&node),
            attr,
            generation: 0,
        })
    }

    /// Resolve and register a node, without touching lookup counts.
    pub(crate) fn lookup_node(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
    ) -> SysResult<Option<(Arc<Node>, Stat)>> {
        if name.len() > 255 {
            return Err(Errno::NAMETOOLONG);
        }
        if name == "." || name == ".." {
            return Err(Errno::INVAL);
        }
        let view = self.dir_view(parent)?;
        let Some(r) = self.res.resolve(&view, name)? else {
            return Ok(None);
        };
        let st = r.stat;
        Ok(Some((self.node_for(parent, name, r), st)))
    }

    /// The node for a resolved name: the live one for its inode number, updated with
    /// what the resolution found, or a new one.
    pub(crate) fn node_for(&self, parent: &Arc<Node>, name: &OsStr, r: Resolved) -> Arc<Node> {
        let Resolved {
            kind, ino, detail, ..
        } = r;
        match detail {
            Detail::Dir {
                upper,
                lowers,
                redirect,
                impure,
            } => {
                let lowers: Arc<[Arc<RealDir>]> = lowers.into();
                let node = self.table.get_or_insert(
                    ino,
                    Kind::Dir,
                    |_| true,
                    || {
                        NodeState::Dir(DirState {
                            parent: Some(parent.clone()),
                            name: name.to_os_string(),
                            upper: upper.clone(),
                            lowers: lowers.clone(),
                            redirect: redirect.clone(),
                            impure,
                        })
                    },
                );
                let now_merged = {
                    let mut st = node.state.write();
                    // Where a directory is comes from our own records (every rename
                    // goes through us), never from a resolution that may predate one.
                    match &mut *st {
                        NodeState::Dir(d) if d.upper.is_none() && upper.is_some() => {
                            d.upper = upper;
                            d.redirect = redirect;
                            d.impure = impure;
                            d.is_merged()
                        }
                        _ => false,
                    }
                };
                if now_merged {
                    self.attr_changed(node.ino);
                }
                node
            }
            Detail::File { real, layer } => {
                let node = self.table.get_or_insert(
                    ino,
                    kind,
                    |_| true,
                    || {
                        NodeState::File(FileState {
                            aliases: vec![Alias {
                                parent: parent.clone(),
                                name: name.to_os_string(),
                                real: real.clone(),
                            }],
                            layer,
                            orphan: None,
                        })
                    },
                );
                let (known, node_layer) = match &*node.state.read() {
                    NodeState::File(f) => (
                        f.aliases
                            .iter()
                            .any(|a| a.parent.ino == parent.ino && a.name == name),
                        f.layer,
                    ),
                    NodeState::Dir(_) => (true, layer),
                };
                if !known {
                    if node_layer == UPPER && layer != UPPER {
                        // Another name of a lower hard link whose data was copied up:
                        // it must show (and share) the copy.
                        if let Err(e) = self.link_up(&node, parent, name) {
                            log::warn!("could not link {name:?} to its copied-up inode: {e}");
                        }
                    } else if let NodeState::File(f) = &mut *node.state.write() {
                        f.aliases.push(Alias {
                            parent: parent.clone(),
                            name: name.to_os_string(),
                            real,
                        });
                    }
                }
                node
            }
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(node) = self.table.get(ino) {
            node.forget(n);
        }
    }

    /// Whether a node lives only in lower layers (its attributes cannot change).
    pub(crate) fn is_lower_only(&self, node: &Node) -> bool {
        match &*node.state.read() {
            NodeState::Dir(d) => d.upper.is_none(),
            NodeState::File(f) => f.layer != UPPER,
        }
    }

    // ---------------------------------------------------------------- attributes

    pub(crate) fn attr_of(&self, node: &Node, st: &Stat) -> Attr {
        let mut a = Attr::from_stat(node.ino, st);
        let m = &self.opts.idmap;
        a.uid = m.uid_shown(a.uid);
        a.gid = m.gid_shown(a.gid);
        if let NodeState::Dir(d) = &*node.state.read() {
            // Merged directories report one link, as with the kernel's overlayfs; one
            // real directory reports its own count. A copy-up inside a lower directory
            // makes it merged without any request about it: `upper_dir` then tells the
            // kernel to drop the attributes it cached.
            if d.is_merged() {
                a.nlink = 1;
            }
        }
        a
    }

    /// Stat the real object behind a node.
    pub(crate) fn stat_node(&self, node: &Node) -> SysResult<Stat> {
        match &*node.state.read() {
            NodeState::Dir(d) => sys::stat_fd(d.top().fd()),
            NodeState::File(f) => {
                for a in &f.aliases {
                    match sys::stat_at(a.real.fd(), &a.name) {
                        // A name being removed may briefly hold a whiteout (or another
                        // object): that is not this node.
                        Ok(st) if Kind::from_mode(st.st_mode) == node.kind => return Ok(st),
                        Ok(_) | Err(Errno::NOENT) => continue,
                        Err(e) => return Err(e),
                    }
                }
                match &f.orphan {
                    Some(fd) => sys::stat_fd(fd.as_fd()),
                    None => Err(Errno::STALE),
                }
            }
        }
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> SysResult<Attr> {
        let node = self.node(ino)?;
        if let Some(h) = fh.and_then(|fh| self.files.get(fh)) {
            if h.node.ino == ino {
                let st = sys::stat_fd(h.file().as_fd())?;
                return Ok(self.attr_of(&node, &st));
            }
        }
        let st = self.stat_node(&node)?;
        Ok(self.attr_of(&node, &st))
    }

    pub fn readlink(&self, ino: u64) -> SysResult<Vec<u8>> {
        let node = self.node(ino)?;
        if node.kind != Kind::Symlink {
            return Err(Errno::INVAL);
        }
        let (real, name) = self.first_alias(&node)?;
        sys::readlink_at(real.fd(), &name)
    }

    /// The real directory and name of a non-directory's first reachable alias.
    pub(crate) fn first_alias(&self, node: &Node) -> SysResult<(Arc<RealDir>, OsString)> {
        match &*node.state.read() {
            NodeState::File(f) => f
                .aliases
                .first()
                .map(|a| (a.real.clone(), a.name.clone()))
                .ok_or(Errno::STALE),
            NodeState::Dir(_) => Err(Errno::ISDIR),
        }
    }

    /// Layer holding a non-directory's data.
    pub(crate) fn file_layer(&self, node: &Node) -> LayerId {
        match &*node.state.read() {
            NodeState::File(f) => f.layer,
            NodeState::Dir(d) => d.top().layer,
        }
    }

    // ---------------------------------------------------------------- files

    /// Open a regular file. Writing opens copy the file up first.
    pub fn open(&self, ctx: Ctx, ino: u64, flags: i32) -> SysResult<Opened> {
        let _ = ctx;
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::ISDIR);
        }
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if writable || flags & libc::O_TRUNC != 0 {
            if !self.is_writable() {
                return Err(Errno::ROFS);
            }
            self.copy_up(&node)?;
        }
        let file = self.open_real(&node, real_open_flags(flags))?;
        if flags & libc::O_TRUNC != 0 {
            sys::ftruncate(file.as_fd(), 0)?;
        }
        let layer = self.file_layer(&node);
        let keep_cache = layer != UPPER;
        let fh = self
            .files
            .insert(FileHandle::new(node, file, layer, writable));
        Ok(Opened { fh, keep_cache })
    }

    /// Open the real file behind a node with the given flags.
    pub(crate) fn open_real(&self, node: &Node, flags: OFlags) -> SysResult<OwnedFd> {
        let st = node.state.read();
        let NodeState::File(f) = &*st else {
            return Err(Errno::ISDIR);
        };
        let mut last = Errno::STALE;
        for a in &f.aliases {
            match sys::open_at(a.real.fd(), &a.name, flags, 0) {
                Ok(fd) => return Ok(fd),
                Err(e) => last = e,
            }
        }
        if let Some(o) = &f.orphan {
            return sys::reopen(o.as_fd(), flags);
        }
        Err(last)
    }

    /// Read from an open file into `buf`; returns the bytes read.
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> SysResult<usize> {
        let h = self.files.get(fh).ok_or(Errno::BADF)?;
        let file = h.file();
        let mut done = 0;
        while done < buf.len() {
            match sys::pread(file.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// Read with a per-thread buffer and hand the bytes to `f` (no allocation per read).
    pub fn read_with<R>(
        &self,
        fh: u64,
        offset: u64,
        size: usize,
        f: impl FnOnce(SysResult<&[u8]>) -> R,
    ) -> R {
        thread_local! {
            static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < size {
                b.resize(size, 0);
            }
            match self.read(fh, offset, &mut b[..size]) {
                Ok(n) => f(Ok(&b[..n])),
                Err(e) => f(Err(e)),
            }
        })
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(fh);
    }

    pub fn flush(&self, fh: u64) -> SysResult<()> {
        self.files.get(fh).map(|_| ()).ok_or(Errno::BADF)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let h = self.files.get(fh).ok_or(Errno::BADF)?;
        if !self.opts.fsync {
            return Ok(());
        }
        let file = h.file();
        if datasync {
            sys::fdatasync(file.as_fd())
        } else {
            sys::fsync(file.as_fd())
        }
    }

    /// The open real file of a handle (for passthrough).
    pub fn handle_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.get(fh)
    }

    // ---------------------------------------------------------------- directories

    /// Check that a directory can be listed. Listing needs no per-stream state.
    pub fn opendir(&self, ino: u64) -> SysResult<()> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return Err(Errno::NOTDIR);
        }
        Ok(())
    }

    /// The merged listing of a directory in offset order (`.` and `..` first), and the
    /// index of the first entry after `offset`. Reading from offset 0 rebuilds it.
    pub fn readdir(&self, ino: u64, offset: u64) -> SysResult<(Arc<Listing>, usize)> {
        let node = self.node(ino)?;
        let version = node.version();
        let cached = if offset == 0 {
            None
        } else {
            self.listings.get(node.serial, version)
        };
        let list = match cached {
            Some(l) => l,
            None => {
                let l = Arc::new(Listing {
                    version,
                    entries: self.list_dir(&node)?,
                });
                self.listings.put(node.serial, l.clone());
                l
            }
        };
        let start = start_after(&list.entries, offset);
        Ok((list, start))
    }

    /// The reader of a listing from `readdir` reached its end: the daemon keeps no copy.
    pub fn readdir_done(&self, ino: u64, list: &Arc<Listing>) {
        if let Ok(node) = self.node(ino) {
            self.listings.done(node.serial, list);
        }
    }

    fn list_dir(&self, node: &Arc<Node>) -> SysResult<Vec<DirEntryOut>> {
        let view = self.dir_view(node)?;
        let parent_ino = match &*node.state.read() {
            NodeState::Dir(d) => d.parent.as_ref().map_or(ROOT_INO, |p| p.ino),
            NodeState::File(_) => return Err(Errno::NOTDIR),
        };
        let entries = self.res.list(&view)?;
        let mut out = Vec::with_capacity(entries.len() + 2);
        out.push(DirEntryOut {
            name: ".".into(),
            ino: node.ino,
            dtype: libc::DT_DIR,
            off: 1,
        });
        out.push(DirEntryOut {
            name: "..".into(),
            ino: parent_ino,
            dtype: libc::DT_DIR,
            off: 2,
        });
        for mut e in entries {
            if e.needs_resolve {
                match self.res.resolve(&view, &e.name) {
                    Ok(Some(r)) => {
                        e.ino = r.ino;
                        e.dtype = sys::dtype_of_mode(r.stat.st_mode);
                    }
                    // Gone or changed since the directory was read (a concurrent
                    // rename or unlink): leave that one name out, not the listing.
                    Ok(None) => continue,
                    Err(err) => {
                        log::debug!("readdir: {:?} vanished while listing: {err}", e.name);
                        continue;
                    }
                }
            }
            out.push(DirEntryOut {
                off: self.listings.offset_of(e.name.as_bytes()),
                name: e.name,
                ino: e.ino,
                dtype: e.dtype,
            });
        }
        ListingCache::order(&mut out);
        Ok(out)
    }

    // ---------------------------------------------------------------- misc

    pub fn statfs(&self) -> SysResult<StatFs> {
        let l = self.layers();
        let fd = match &l.upper {
            Some(u) => u.root.fd(),
            None => l.lowers[0].root.fd(),
        };
        let s = sys::statfs_fd(fd)?;
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: 255,
            frsize: s.f_frsize as u32,
        })
    }

    /// Where a node's xattrs live: a real directory and optional name in it.
    pub(crate) fn xattr_target(&self, node: &Node) -> SysResult<(Arc<RealDir>, Option<OsString>)> {
        match &*node.state.read() {
            NodeState::Dir(d) => Ok((d.top().clone(), None)),
            NodeState::File(f) => f
                .aliases
                .first()
                .map(|a| (a.real.clone(), Some(a.name.clone())))
                .ok_or(Errno::STALE),
        }
    }

    /// `getxattr`: with an empty `buf`, returns the size only.
    pub fn getxattr(&self, ino: u64, name: &OsStr, buf: &mut [u8]) -> SysResult<usize> {
        if markers::is_internal_xattr(name.as_bytes()) {
            return Err(Errno::NODATA);
        }
        let node = self.node(ino)?;
        let (real, n) = self.xattr_target(&node)?;
        sys::get_xattr_into(real.fd(), n.as_deref(), name, buf)
    }

    /// `listxattr` into a buffer of `size` bytes (0: the size only), as the kernel's
    /// overlayfs answers: the size and the `ERANGE` check are those of the real
    /// object's whole list, the names returned leave out the internal ones. So a size
    /// query gives an upper bound, and the kernel mounting the same layers agrees.
    pub fn listxattr(&self, ino: u64, size: usize) -> SysResult<XattrList> {
        let list = self.real_xattr_list(ino)?;
        if size == 0 {
            return Ok(XattrList::Size(list.len()));
        }
        if list.len() > size {
            return Err(Errno::RANGE);
        }
        Ok(XattrList::Names(without_internal(&list)))
    }

    /// The names of a node's xattrs, NUL-separated, internal ones removed.
    pub fn xattr_names(&self, ino: u64) -> SysResult<Vec<u8>> {
        Ok(without_internal(&self.real_xattr_list(ino)?))
    }

    fn real_xattr_list(&self, ino: u64) -> SysResult<Vec<u8>> {
        let node = self.node(ino)?;
        let (real, n) = self.xattr_target(&node)?;
        match sys::list_xattr(real.fd(), n.as_deref()) {
            Ok(l) => Ok(l),
            Err(Errno::NOTSUP) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `access(2)`: the kernel checks permissions itself under `default_permissions`;
    /// this answers for existence and write access to a read-only mount.
    pub fn access(&self, ctx: Ctx, ino: u64, mask: i32) -> SysResult<()> {
        let attr = self.getattr(ino, None)?;
        if mask & libc::W_OK != 0 && !self.is_writable() {
            return Err(Errno::ROFS);
        }
        if mask == libc::F_OK || ctx.uid == 0 {
            return Ok(());
        }
        let bits = if attr.uid == ctx.uid {
            (attr.mode >> 6) & 7
        } else if attr.gid == ctx.gid {
            (attr.mode >> 3) & 7
        } else {
            attr.mode & 7
        };
        if (mask as u32) & !bits != 0 {
            return Err(Errno::ACCESS);
        }
        Ok(())
    }
}

/// A NUL-separated xattr name list without the overlay's own names.
fn without_internal(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in sys::split_xattr_names(list) {
        if !markers::is_internal_xattr(name.as_bytes()) {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
    }
    out
}

/// Flags for opening the real file: access mode and sync flags only. `O_APPEND` is
/// dropped because the kernel already sends the right offset, and Linux `pwrite` on an
/// `O_APPEND` fd would ignore it.
fn real_open_flags(flags: i32) -> OFlags {
    let keep = libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC | libc::O_NONBLOCK;
    OFlags::from_bits_retain((flags & keep) as u32)
}

/// Remove everything left in the work dir by an earlier, interrupted daemon.
fn clean_work_dir(work: std::os::fd::BorrowedFd<'_>) -> SysResult<()> {
    for e in sys::read_dir_all(work)? {
        sys::remove_tree(work, &e.name)?;
    }
    Ok(())
}

impl std::fmt::Debug for OverlayFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayFs")
            .field("lowers", &self.opts.lowers)
            .field("upper", &self.opts.upper)
            .finish()
    }
}
