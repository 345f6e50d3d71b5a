//! The union filesystem core: every operation on plain types, drivable without a mount.
//!
//! Read-side operations live here; copy-up is in `copy_up.rs` and the mutating
//! operations in `mutate.rs`. All methods take `&self`: the object is shared by every
//! request thread, with per-node locks only.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::handles::{FileHandle, HandleTable};
use super::inode_table::{Alias, DirState, FileState, InodeTable, Kind, Node, NodeState};
use super::kernel_cache::KernelCache;
use super::layers::{LayerId, Layers, RealDir, UPPER};
use super::lookup::{Detail, DirView, Resolved, Resolver};
use super::readdir::ListingCache;
use super::types::{Attr, Ctx, Entry, StatFs, XattrList};
use super::upper_writer::UpperWriter;
use crate::markers;
use crate::sys::{self, Errno, Stat, SysResult};

/// Inode number of the root directory (fixed by FUSE).
pub const ROOT_INO: u64 = 1;

/// How the union is put together.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers (`lowerdir=…::DATA`): where metacopy stubs in the lower
    /// layers find their data (the store's file objects).
    pub data: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// `fsync` calls and copy-ups reach the disk (off with `volatile` / `fsync=0`).
    pub fsync: bool,
    /// Directory-index entries kept in memory over all directories.
    pub index_budget: usize,
    /// Owner mapping between the layers and the mount.
    pub idmap: super::idmap::IdMap,
    /// Read the subdirectories of a listed directory in the background
    /// ([`super::prefetch`]).
    pub prefetch: bool,
    /// Record owners and modes of the upper layer in this xattr (`xattr_permissions=`).
    pub upper_override: Option<&'static str>,
    /// Fetches stubs' data that no data layer has yet (lazily pulled images).
    pub fetch: Option<Arc<dyn super::layers::FetchData>>,
    /// Served as root of a user namespace over the user's subordinate ids: objects of a
    /// recording upper layer also get their owners on disk where the namespace maps
    /// them (their records stay what the mount shows).
    pub real_owners: bool,
}

impl Options {
    pub fn new(lowers: Vec<PathBuf>, upper: Option<PathBuf>, work: Option<PathBuf>) -> Self {
        Options {
            lowers,
            data: Vec::new(),
            upper,
            work,
            fsync: true,
            index_budget: 400_000,
            idmap: Default::default(),
            prefetch: true,
            upper_override: None,
            fetch: None,
            real_owners: false,
        }
    }
}

/// The union filesystem.
pub struct OverlayFs {
    /// An unprivileged daemon over rootless layers: every object is the daemon user's
    /// on disk, so that user acts as root in the mount (as root of a user namespace
    /// would), and the mount goes without `default_permissions` (only that user can
    /// reach an unprivileged FUSE mount).
    pub(crate) owner_is_root: bool,
    pub(crate) res: Resolver,
    pub(crate) table: InodeTable,
    pub(crate) files: HandleTable<FileHandle>,
    pub(crate) listings: ListingCache,
    pub(crate) streams: super::readdir_stream::StreamCache,
    pub(crate) links: super::hardlinks::LinkMaps,
    pub(crate) prefetch: super::prefetch::Prefetcher,
    pub(crate) root: Arc<Node>,
    /// Present when there is an upper layer.
    pub(crate) writer: Option<UpperWriter>,
    /// Copies shown before their data is on disk (`copy_sync`).
    pub(crate) syncs: super::copy_sync::CopySyncs,
    pub(crate) opts: Options,
    /// Where to report changes the kernel did not ask for (set once mounted).
    kernel: std::sync::OnceLock<Box<dyn KernelCache>>,
}

/// Settle the copy-ups a daemon over upper layer `upper` and work dir `workdir` left
/// unsynced (`copy_sync`), for a command that reads the upper layer without mounting it.
pub fn settle_copy_ups(
    upper: &std::path::Path,
    workdir: &std::path::Path,
) -> crate::error::Result<()> {
    let work = workdir.join("work");
    let dirs = sys::open_root_dir(upper).and_then(|u| Ok((u, sys::open_root_dir(&work)?)));
    let (u, w) = match dirs {
        Ok(d) => d,
        // Never mounted (no work dir yet), or gone: nothing to settle.
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(at(&work, e)),
    };
    super::copy_sync::settle(u.as_fd(), w.as_fd())
        .map(|_| ())
        .map_err(|e| at(&work, e))
}

/// An error about `path`: "PATH: reason".
fn at(path: &std::path::Path, errno: Errno) -> crate::error::Error {
    let e = std::io::Error::from_raw_os_error(errno.raw_os_error());
    crate::error::Error::with_errno(format!("{}: {e}", path.display()), errno.raw_os_error())
}

impl OverlayFs {
    /// Open the layers; an error names the path at fault ("PATH: reason"). What an
    /// earlier daemon left in the work dir is finished (copy-ups of hard links) or
    /// removed first.
    pub fn new(opts: Options) -> crate::error::Result<Self> {
        let mut fs = Self::open_layers(opts.clone())?;
        if let (Some(w), Some(u)) = (&fs.writer, &fs.layers().upper) {
            super::copy_sync::settle(u.root.fd(), w.work()).map_err(|errno| {
                at(
                    &fs.opts.work.clone().unwrap_or_default().join("work"),
                    errno,
                )
            })?;
        }
        if fs.finish_linked_copy_ups() {
            // Its nodes saw the names before the links were placed: start afresh.
            drop(fs);
            fs = Self::open_layers(opts)?;
        }
        if let Some(w) = &fs.writer {
            w.clean().map_err(|errno| {
                at(
                    &fs.opts.work.clone().unwrap_or_default().join("work"),
                    errno,
                )
            })?;
        }
        Ok(fs)
    }

    fn open_layers(opts: Options) -> crate::error::Result<Self> {
        let mut layers = Layers::open(
            &opts.lowers,
            &opts.data,
            opts.upper.as_deref(),
            opts.work.as_deref(),
        )
        .map_err(|(path, errno)| at(&path, errno))?;
        layers.setup_upper_override(opts.upper_override, sys::is_privileged());
        layers.fetch = match &opts.fetch {
            Some(f) => Some(f.clone()),
            None => super::layers::fetcher_for(&opts.lowers, &opts.data)?,
        };
        let writer = layers.work.take().map(UpperWriter::new);
        let upper_oci_whiteouts = writer.as_ref().is_some_and(|w| !w.device_whiteouts());
        let data = layers
            .data
            .iter()
            .filter_map(|d| d.try_clone().ok())
            .collect();
        let layers = Arc::new(layers);
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
            NodeState::dir(DirState {
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
        // Served from the user's namespace (`real_owners`) the user is its root too, and
        // the mount was made without `default_permissions`, whatever the layers are.
        let owner_is_root = !sys::is_privileged() && (layers.any_override() || opts.real_owners);
        Ok(OverlayFs {
            owner_is_root,
            res: Resolver {
                upper_oci_whiteouts,
                ..Resolver::new(layers, opts.index_budget)
            },
            table,
            files: HandleTable::default(),
            listings: ListingCache::new(opts.index_budget / 2),
            streams: super::readdir_stream::StreamCache::new(opts.index_budget / 4),
            links: super::hardlinks::LinkMaps::new(opts.lowers.len()),
            prefetch: super::prefetch::Prefetcher::with_data(data),
            root,
            syncs: super::copy_sync::CopySyncs::new(
                writer
                    .as_ref()
                    .filter(|_| opts.fsync)
                    .and_then(|w| w.work().try_clone_to_owned().ok()),
            ),
            writer,
            opts,
            kernel: std::sync::OnceLock::new(),
        })
    }

    /// See the field: the mount must leave permission checks to the daemon.
    pub fn owner_is_root(&self) -> bool {
        self.owner_is_root
    }

    /// Start the threads that work beside the requests (reading ahead, warming caches):
    /// before serving, so that the first requests do not wait for their start.
    pub fn start_background(&self) {
        self.prefetch.start_threads();
    }

    pub fn layers(&self) -> &Layers {
        &self.res.layers
    }

    /// A name of directory `node` was created, removed or renamed: listings built before
    /// are stale, ours and the kernel's.
    pub(crate) fn name_changed(&self, node: &Node, name: &OsStr) {
        node.name_changed(name);
        if node.take_listed()
            && let Some(k) = self.kernel.get()
        {
            k.listing_changed(node.ino);
        }
    }

    /// Install the channel to the kernel's caches (once, after mounting).
    pub fn set_kernel_cache(&self, k: Box<dyn KernelCache>) {
        let _ = self.kernel.set(k);
    }

    /// The channel to the kernel's caches, once a mount installed it.
    pub(crate) fn kernel_cache(&self) -> Option<&dyn KernelCache> {
        self.kernel.get().map(|k| k.as_ref())
    }

    /// The attributes of `ino` changed without a request about it.
    pub(crate) fn attr_changed(&self, ino: u64) {
        if let Some(k) = self.kernel.get() {
            k.attr_changed(ino);
        }
    }

    /// A name leads to another node now (see `KernelCache::name_moved`).
    pub(crate) fn name_moved(&self, parent: u64, name: &OsStr) {
        if let Some(k) = self.kernel.get() {
            k.name_moved(parent, name);
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

    /// The upper layer's writer; only on writable mounts.
    pub(crate) fn writer(&self) -> SysResult<&UpperWriter> {
        self.writer.as_ref().ok_or(Errno::ROFS)
    }

    /// A fresh unique name for a scratch object in the work dir.
    pub(crate) fn tmp_name(&self) -> OsString {
        self.writer
            .as_ref()
            .map(|w| w.tmp_name())
            .unwrap_or_default()
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
            generation: node.generation.into(),
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
        let st = self.as_stored(r.layer(), r.stat);
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
                        NodeState::dir(DirState {
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
                // An object whose names moved to a successor node (see `supersede`).
                let successor = self.table.successor_of(ino).filter(|s| s.kind == kind);
                let node = successor.unwrap_or_else(|| {
                    self.table.get_or_insert(
                        ino,
                        kind,
                        |_| true,
                        || {
                            NodeState::File(FileState {
                                aliases: smallvec::smallvec![Alias {
                                    parent: parent.clone(),
                                    name: name.into(),
                                    real: real.clone(),
                                }],
                                layer,
                                orphan: None,
                                orphan_emptied: false,
                            })
                        },
                    )
                });
                let (known, node_layer) = match &*node.state.read() {
                    NodeState::File(f) => (
                        f.aliases
                            .iter()
                            .any(|a| a.parent.ino == parent.ino && *a.name == *name),
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
                            name: name.into(),
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
        let shown;
        let st = match self.override_of(node, st) {
            Some(s) => {
                shown = s;
                &shown
            }
            None => st,
        };
        let mut a = Attr::from_stat(node.ino, st);
        if crate::metacopy::may_be_stub(st) && !self.layers().data.is_empty() {
            // A stub shows the blocks of its data, as the kernel's overlayfs does.
            if let Some(b) = self.stub_blocks(node, st) {
                a.blocks = b;
            }
        }
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

    /// The blocks of a lower-layer stub's data (`None` for anything else), asked once
    /// per node.
    fn stub_blocks(&self, node: &Node, st: &Stat) -> Option<u64> {
        use super::inode_table::{NO_BLOCKS, NOT_STUB};
        use std::sync::atomic::Ordering;
        let (dir, name) = {
            let st = node.state.read();
            let NodeState::File(f) = &*st else {
                return None;
            };
            // A copy-up makes the node the upper file's, whatever it was before.
            if f.layer == super::layers::UPPER {
                return None;
            }
            match node.data_blocks.load(Ordering::Relaxed) {
                NO_BLOCKS => {}
                NOT_STUB => return None,
                b => return Some(b),
            }
            let a = f.aliases.first()?;
            (a.real.clone(), a.name.clone())
        };
        let data =
            match self
                .layers()
                .stub_data(dir.fd(), Some(&name), st, sys::OFlags::RDONLY, false)
            {
                Ok(Some(d)) => d,
                Ok(None) => {
                    node.data_blocks.store(NOT_STUB, Ordering::Relaxed);
                    return None;
                }
                Err(_) => return None,
            };
        let blocks = sys::stat_fd(data.as_fd()).ok()?.st_blocks as u64;
        node.data_blocks.store(blocks, Ordering::Relaxed);
        Some(blocks)
    }

    /// In a layer that records owners (rootless layers): the stat a node shows, from its
    /// disk stat `st`.
    fn override_of(&self, node: &Node, st: &Stat) -> Option<Stat> {
        if !self.layers().any_override() {
            return None;
        }
        if let Some(s) = node.successor() {
            return self.override_of(&s, st);
        }
        let layers = self.layers();
        match &*node.state.read() {
            NodeState::Dir(d) => {
                let top = d.top();
                let ovl = layers.ovl(top.layer)?;
                Some(ovl.shown(top.fd(), None, st))
            }
            NodeState::File(f) => {
                let ovl = layers.ovl(f.layer)?;
                match (f.aliases.first(), &f.orphan) {
                    (Some(a), _) => Some(ovl.shown(a.real.fd(), Some(&a.name), st)),
                    (None, Some(fd)) => Some(ovl.shown(fd.as_fd(), None, st)),
                    (None, None) => None,
                }
            }
        }
    }

    /// Stat the real object behind a node.
    pub(crate) fn stat_node(&self, node: &Node) -> SysResult<Stat> {
        if let Some(s) = node.successor() {
            return self.stat_node(&s);
        }
        match &*node.state.read() {
            NodeState::Dir(d) => {
                sys::stat_fd(d.top().fd()).map(|st| self.as_stored(d.top().layer, st))
            }
            NodeState::File(f) => {
                for a in &f.aliases {
                    match sys::stat_at(a.real.fd(), &a.name) {
                        // A name being removed may briefly hold a whiteout (or another
                        // object): that is not this node.
                        Ok(st) if Kind::from_mode(st.st_mode) == node.kind => {
                            return Ok(self.as_stored(a.real.layer, st));
                        }
                        Ok(_) | Err(Errno::NOENT) => continue,
                        Err(e) => return Err(e),
                    }
                }
                match &f.orphan {
                    Some(fd) => sys::stat_fd(fd.as_fd()).map(|st| self.as_stored(f.layer, st)),
                    None => Err(Errno::STALE),
                }
            }
        }
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> SysResult<Attr> {
        let node = self.node(ino)?;
        if let Some(h) = fh.and_then(|fh| self.files.get(fh))
            && h.node.ino == ino
        {
            let (file, layer) = h.file_and_layer();
            let st = self.as_stored(layer, sys::stat_fd(file.as_fd())?);
            return Ok(self.attr_of(&node, &st));
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
        if let Some(s) = node.successor() {
            return self.first_alias(&s);
        }
        match &*node.state.read() {
            NodeState::File(f) => f
                .aliases
                .first()
                .map(|a| (a.real.clone(), a.name.to_os_string()))
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

    // ---------------------------------------------------------------- directories

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
        if let Some(s) = node.successor() {
            return self.xattr_target(&s);
        }
        match &*node.state.read() {
            NodeState::Dir(d) => Ok((d.top().clone(), None)),
            NodeState::File(f) => f
                .aliases
                .first()
                .map(|a| (a.real.clone(), Some(a.name.to_os_string())))
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
    /// this answers for existence and write access to a read-only mount, and for the
    /// mount owner who acts as root (see [`OverlayFs::owner_is_root`]).
    pub fn access(&self, ctx: Ctx, ino: u64, mask: i32) -> SysResult<()> {
        let attr = self.getattr(ino, None)?;
        if mask & libc::W_OK != 0 && !self.is_writable() {
            return Err(Errno::ROFS);
        }
        if mask == libc::F_OK
            || ctx.uid == 0
            || (self.owner_is_root && ctx.uid == sys::owner_ids().0)
        {
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

impl Drop for OverlayFs {
    fn drop(&mut self) {
        self.table.unpin_all();
    }
}

impl std::fmt::Debug for OverlayFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayFs")
            .field("lowers", &self.opts.lowers)
            .field("upper", &self.opts.upper)
            .finish()
    }
}
