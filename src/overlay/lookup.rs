//! Resolution of a name across layers.
//!
//! Top to bottom, the first layer that has the name wins; a whiteout hides the name in
//! every layer below it; an opaque directory hides everything below it; a directory
//! merges with same-named directories below it until a non-directory, a whiteout or an
//! opaque directory ends the merge. Redirects (`redirect_dir`) send the lower part of a
//! directory lookup to another path.
//!
//! Lower layers never change while mounted, so the merged lower listing of a directory
//! with several lower layers is built once into a [`DirIndex`] and kept in a bounded
//! cache: after that, a lookup costs a hash probe plus one `fstatat`, however deep the
//! stack.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use super::cache::{ShardedLru, Weighted};
use super::inode_table::Kind;
use super::layers::{LayerId, Layers, RealDir, UPPER};
use crate::markers::{self, OCI_OPAQUE};
use crate::sys::{self, Errno, Stat, SysResult};

/// What a resolution needs to know about a merged directory.
#[derive(Clone, Debug)]
pub struct DirView {
    pub serial: u64,
    pub upper: Option<Arc<RealDir>>,
    pub lowers: Arc<[Arc<RealDir>]>,
    pub impure: bool,
}

/// A name found in the merged view.
#[derive(Debug)]
pub struct Resolved {
    /// Stat of the topmost real object.
    pub stat: Stat,
    pub kind: Kind,
    /// Inode number reported for it.
    pub ino: u64,
    pub detail: Detail,
}

impl Resolved {
    /// The layer whose object `stat` describes.
    pub fn layer(&self) -> LayerId {
        match &self.detail {
            Detail::Dir { upper: Some(_), .. } => UPPER,
            Detail::Dir { lowers, .. } => lowers.first().map_or(UPPER, |l| l.layer),
            Detail::File { layer, .. } => *layer,
        }
    }
}

#[derive(Debug)]
pub enum Detail {
    Dir {
        upper: Option<Arc<RealDir>>,
        lowers: Vec<Arc<RealDir>>,
        redirect: Option<Vec<u8>>,
        impure: bool,
    },
    File {
        /// Real directory holding the object (in layer `layer`).
        real: Arc<RealDir>,
        layer: LayerId,
    },
}

/// One name in the merged lower listing of a directory.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// Reported inode number of the topmost real entry.
    pub ino: u64,
    pub dtype: u8,
    /// Position (in `DirView::lowers`) of the topmost real entry.
    pub pos: u16,
    pub whiteout: bool,
    /// For directories: positions of every lower directory that merges into it.
    pub dirs: Box<[u16]>,
    closed: bool,
}

/// Merged listing of the lower layers of one directory.
#[derive(Debug, Default)]
pub struct DirIndex {
    pub entries: HashMap<Box<[u8]>, IndexEntry>,
    /// Names in discovery order (layer by layer), for readdir.
    pub order: Vec<Box<[u8]>>,
    /// Too many entries to index: kept (empty) so that the directory is not read
    /// again on every lookup only to find that out once more.
    pub too_large: bool,
}

impl DirIndex {
    pub fn get(&self, name: &[u8]) -> Option<&IndexEntry> {
        self.entries.get(name)
    }
}

/// Directories with more lower entries than this are not indexed (probed per layer).
pub const INDEX_MAX_ENTRIES: usize = 200_000;

/// Bounded cache of directory indexes, keyed by node serial.
pub type IndexCache = ShardedLru<DirIndex>;

impl Weighted for DirIndex {
    fn weight(&self) -> usize {
        self.entries.len() + 1
    }
}

/// Resolves names; shared by every request thread.
pub struct Resolver {
    pub layers: Arc<Layers>,
    pub index: IndexCache,
    /// This mount writes OCI `.wh.` whiteouts into the upper layer (no device
    /// whiteouts allowed): probe for them on every lookup.
    pub upper_oci_whiteouts: bool,
}

/// A lower-layer hit for a name.
struct LowerHit {
    pos: u16,
    dtype: u8,
    /// Candidate positions of merging lower dirs (from the index), if known.
    dirs: Option<Box<[u16]>>,
    /// The stat of the entry, when finding it took one.
    stat: Option<Stat>,
}

/// Where the lower part of a directory lookup is looked for.
#[derive(Clone)]
enum Key {
    /// A name inside the parent's lower directories.
    Rel(OsString),
    /// A path from each layer's root.
    Abs(Vec<u8>),
}

impl Resolver {
    pub fn new(layers: Arc<Layers>, index_budget: usize) -> Self {
        Resolver {
            layers,
            index: IndexCache::new(index_budget, 16),
            upper_oci_whiteouts: false,
        }
    }

    /// Resolve `name` in the merged directory `dir`. `Ok(None)`: not there (or whited out).
    pub fn resolve(&self, dir: &DirView, name: &OsStr) -> SysResult<Option<Resolved>> {
        if markers::is_marker_name(name.as_bytes()) {
            return Ok(None);
        }
        if let Some(up) = &dir.upper {
            match sys::stat_at(up.fd(), name) {
                Ok(st) => return self.resolve_upper(dir, up, name, st),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let Some(hit) = self.lower_hit(dir, name)? else {
            return Ok(None);
        };
        if let Some(up) = &dir.upper {
            // An upper written in the OCI form (by an unprivileged mount, or another
            // tool) hides names with `.wh.NAME` files.
            if (self.upper_oci_whiteouts || up.had_oci_whiteouts())
                && sys::stat_at(up.fd(), &markers::oci_whiteout_name(name)).is_ok()
            {
                return Ok(None);
            }
        }
        let real = &dir.lowers[hit.pos as usize];
        if hit.dtype == libc::DT_DIR {
            let lowers = self.lower_dirs(dir, Key::Rel(name.to_os_string()), 0, hit.dirs)?;
            let Some(first) = lowers.first() else {
                return Ok(None);
            };
            let st = sys::stat_fd(first.fd())?;
            let ino = self.layers.map_ino(st.st_dev, st.st_ino);
            return Ok(Some(Resolved {
                stat: st,
                kind: Kind::Dir,
                ino,
                detail: Detail::Dir {
                    upper: None,
                    lowers,
                    redirect: None,
                    impure: false,
                },
            }));
        }
        let st = match hit.stat {
            Some(st) => st,
            None => sys::stat_at(real.fd(), name)?,
        };
        if sys::is_dir_mode(st.st_mode) {
            // Raced with nothing (lower layers are immutable): the index was wrong.
            return Err(Errno::IO);
        }
        Ok(Some(Resolved {
            ino: self.layers.map_ino(st.st_dev, st.st_ino),
            kind: Kind::from_mode(st.st_mode),
            stat: st,
            detail: Detail::File {
                real: real.clone(),
                layer: real.layer,
            },
        }))
    }

    fn resolve_upper(
        &self,
        dir: &DirView,
        up: &Arc<RealDir>,
        name: &OsStr,
        st: Stat,
    ) -> SysResult<Option<Resolved>> {
        if markers::is_whiteout_stat(&st) {
            return Ok(None);
        }
        if !sys::is_dir_mode(st.st_mode) {
            if up.xattr_whiteouts
                && st.st_size == 0
                && sys::mode_type(st.st_mode) == libc::S_IFREG
                && markers::is_xattr_whiteout(up.fd(), name)
            {
                return Ok(None);
            }
            let mut ino = self.layers.map_ino(st.st_dev, st.st_ino);
            if dir.impure
                && let Some(o) = markers::read_markers(up.fd(), Some(name))?.origin_ino
            {
                ino = o;
            }
            return Ok(Some(Resolved {
                stat: st,
                kind: Kind::from_mode(st.st_mode),
                ino,
                detail: Detail::File {
                    real: up.clone(),
                    layer: UPPER,
                },
            }));
        }
        let fd = sys::open_dir_path(up.fd(), name)?;
        let m = markers::read_markers(fd.as_fd(), None)?;
        let oci_opaque = sys::stat_at(fd.as_fd(), OsStr::from_bytes(OCI_OPAQUE)).is_ok();
        let upper_rd = RealDir::with_markers(UPPER, fd, m.xattr_whiteouts);
        let lowers = if m.opaque || oci_opaque || dir.lowers.is_empty() && m.redirect.is_none() {
            Vec::new()
        } else if let Some(r) = &m.redirect {
            let key = if r.first() == Some(&b'/') {
                Key::Abs(r.clone())
            } else {
                Key::Rel(OsString::from_vec(r.clone()))
            };
            self.lower_dirs(dir, key, 0, None)?
        } else {
            match self.lower_hit(dir, name)? {
                Some(h) if h.dtype == libc::DT_DIR => {
                    self.lower_dirs(dir, Key::Rel(name.to_os_string()), 0, h.dirs)?
                }
                _ => Vec::new(),
            }
        };
        let ino = match lowers.first() {
            Some(l) => {
                let lst = sys::stat_fd(l.fd())?;
                self.layers.map_ino(lst.st_dev, lst.st_ino)
            }
            None => match m.origin_ino {
                Some(o) => o,
                None => self.layers.map_ino(st.st_dev, st.st_ino),
            },
        };
        Ok(Some(Resolved {
            stat: st,
            kind: Kind::Dir,
            ino,
            detail: Detail::Dir {
                upper: Some(upper_rd),
                lowers,
                redirect: m.redirect,
                impure: m.impure,
            },
        }))
    }

    /// Whether any lower layer of `dir` shows `name` (so removing it needs a whiteout).
    pub fn lower_has(&self, dir: &DirView, name: &OsStr) -> SysResult<bool> {
        Ok(self.lower_hit(dir, name)?.is_some())
    }

    /// Find the topmost visible lower entry for `name`.
    fn lower_hit(&self, dir: &DirView, name: &OsStr) -> SysResult<Option<LowerHit>> {
        match dir.lowers.len() {
            0 => Ok(None),
            1 => {
                let l = &dir.lowers[0];
                match sys::stat_at(l.fd(), name) {
                    Ok(st) => {
                        if self.is_whiteout(l, name, &st) {
                            return Ok(None);
                        }
                        Ok(Some(LowerHit {
                            pos: 0,
                            dtype: sys::dtype_of_mode(st.st_mode),
                            dirs: None,
                            stat: Some(st),
                        }))
                    }
                    Err(Errno::NOENT) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            _ => match self.index_of(dir)? {
                Some(idx) => Ok(idx.get(name.as_bytes()).and_then(|e| {
                    (!e.whiteout).then(|| LowerHit {
                        pos: e.pos,
                        dtype: e.dtype,
                        dirs: Some(e.dirs.clone()),
                        stat: None,
                    })
                })),
                None => self.probe_layers(dir, name),
            },
        }
    }

    fn is_whiteout(&self, real: &RealDir, name: &OsStr, st: &Stat) -> bool {
        markers::is_whiteout_stat(st)
            || (real.xattr_whiteouts
                && st.st_size == 0
                && sys::mode_type(st.st_mode) == libc::S_IFREG
                && markers::is_xattr_whiteout(real.fd(), name))
    }

    /// Slow path for directories too large to index: probe each layer.
    fn probe_layers(&self, dir: &DirView, name: &OsStr) -> SysResult<Option<LowerHit>> {
        let wh = markers::oci_whiteout_name(name);
        for (pos, l) in dir.lowers.iter().enumerate() {
            match sys::stat_at(l.fd(), name) {
                Ok(st) => {
                    if self.is_whiteout(l, name, &st) {
                        return Ok(None);
                    }
                    return Ok(Some(LowerHit {
                        pos: pos as u16,
                        dtype: sys::dtype_of_mode(st.st_mode),
                        dirs: None,
                        stat: Some(st),
                    }));
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
            if sys::stat_at(l.fd(), &wh).is_ok() {
                return Ok(None);
            }
            if sys::stat_at(l.fd(), OsStr::from_bytes(OCI_OPAQUE)).is_ok() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The lower directories that merge into a directory found under `key`, top first.
    /// `start` is the first position in `dir.lowers` to consider for relative keys;
    /// `hint` lists candidate positions from the index.
    fn lower_dirs(
        &self,
        dir: &DirView,
        mut key: Key,
        start: usize,
        hint: Option<Box<[u16]>>,
    ) -> SysResult<Vec<Arc<RealDir>>> {
        let mut out: Vec<Arc<RealDir>> = Vec::new();
        // Layer ids to visit, in order.
        let mut ids: Vec<LayerId> = match &key {
            Key::Rel(_) => match &hint {
                Some(h) => h.iter().map(|p| dir.lowers[*p as usize].layer).collect(),
                None => dir.lowers[start..].iter().map(|l| l.layer).collect(),
            },
            Key::Abs(_) => self.layers.lowers.iter().map(|l| l.id).collect(),
        };
        let mut i = 0;
        while i < ids.len() {
            let layer = ids[i];
            i += 1;
            let mut parent_fd = None;
            let found = match &key {
                Key::Rel(n) => {
                    let Some(pd) = dir.lowers.iter().find(|l| l.layer == layer) else {
                        continue;
                    };
                    parent_fd = Some(pd.fd());
                    self.find_dir_in(pd.fd(), n)?
                }
                Key::Abs(p) => self.walk_abs(layer, p)?,
            };
            let (fd, stop_below) = match found {
                Found::Missing => continue,
                Found::Blocked => break,
                Found::Dir(fd) => (fd, false),
                Found::DirThenStop(fd) => (fd, true),
            };
            // A lower layer does not change: its directory's xattrs can be read by name
            // from the parent (one `listxattrat`), not through `/proc/self/fd` (an
            // `O_PATH` handle has no xattr calls of its own): 12 → 10 µs a first lookup.
            let m = match (&key, &parent_fd) {
                (Key::Rel(n), Some(pfd)) => markers::read_markers(pfd.as_fd(), Some(n))?,
                _ => markers::read_markers(fd.as_fd(), None)?,
            };
            let last = layer as usize == self.layers.num_lowers();
            let oci_opaque =
                !last && sys::stat_at(fd.as_fd(), OsStr::from_bytes(OCI_OPAQUE)).is_ok();
            out.push(RealDir::with_markers(layer, fd, m.xattr_whiteouts));
            if m.opaque || oci_opaque || stop_below {
                break;
            }
            if let Some(r) = m.redirect {
                key = match (&key, r.first() == Some(&b'/')) {
                    (_, true) => Key::Abs(r),
                    (Key::Rel(_), false) => Key::Rel(OsString::from_vec(r)),
                    (Key::Abs(p), false) => {
                        let mut base = p.clone();
                        while base.last().is_some_and(|c| *c != b'/') {
                            base.pop();
                        }
                        base.extend_from_slice(&r);
                        Key::Abs(base)
                    }
                };
                // From here on probe every remaining layer, not only index hints.
                ids = self
                    .layers
                    .lowers
                    .iter()
                    .map(|l| l.id)
                    .filter(|id| *id > layer)
                    .collect();
                i = 0;
            }
        }
        Ok(out)
    }

    /// Look for a directory `name` in one real directory.
    fn find_dir_in(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Found> {
        match sys::open_dir_path(dir, name) {
            Ok(fd) => Ok(Found::Dir(fd)),
            Err(Errno::NOENT) => {
                if sys::stat_at(dir, &markers::oci_whiteout_name(name)).is_ok() {
                    Ok(Found::Blocked)
                } else {
                    Ok(Found::Missing)
                }
            }
            // A non-directory (whiteout, file, symlink) ends the merge.
            Err(Errno::NOTDIR) | Err(Errno::LOOP) => Ok(Found::Blocked),
            Err(e) => Err(e),
        }
    }

    /// Walk an absolute redirect path from a layer's root, with the rules of a merged
    /// lookup: a whiteout or a non-directory on the way ends the search in this layer and
    /// every layer below; an opaque directory on the way lets this layer answer but ends
    /// the search below it.
    fn walk_abs(&self, layer: LayerId, path: &[u8]) -> SysResult<Found> {
        let root = &self.layers.get(layer).root;
        let comps: Vec<&[u8]> = path
            .split(|c| *c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let Some((last, inner)) = comps.split_last() else {
            return Ok(Found::Missing);
        };
        let mut cur: Option<OwnedFd> = None;
        let mut opaque_above = false;
        for c in inner {
            let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(root.fd());
            let fd = match self.find_dir_in(base, OsStr::from_bytes(c))? {
                Found::Dir(fd) | Found::DirThenStop(fd) => fd,
                Found::Missing if opaque_above => return Ok(Found::Blocked),
                other => return Ok(other),
            };
            if markers::read_markers(fd.as_fd(), None)?.opaque
                || sys::stat_at(fd.as_fd(), OsStr::from_bytes(OCI_OPAQUE)).is_ok()
            {
                opaque_above = true;
            }
            cur = Some(fd);
        }
        let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(root.fd());
        Ok(match self.find_dir_in(base, OsStr::from_bytes(last))? {
            Found::Dir(fd) if opaque_above => Found::DirThenStop(fd),
            Found::Missing if opaque_above => Found::Blocked,
            other => other,
        })
    }

    /// The index of a directory with two or more lower layers (`None`: too large).
    pub fn index_of(&self, dir: &DirView) -> SysResult<Option<Arc<DirIndex>>> {
        if let Some(i) = self.index.get(dir.serial) {
            return Ok((!i.too_large).then_some(i));
        }
        let Some(idx) = self.build_index(&dir.lowers)? else {
            let none = DirIndex {
                too_large: true,
                ..DirIndex::default()
            };
            self.index.put(dir.serial, Arc::new(none));
            return Ok(None);
        };
        let idx = Arc::new(idx);
        self.index.put(dir.serial, idx.clone());
        Ok(Some(idx))
    }

    fn build_index(&self, lowers: &[Arc<RealDir>]) -> SysResult<Option<DirIndex>> {
        let mut idx = DirIndex::default();
        for (pos, rd) in lowers.iter().enumerate() {
            let dev = self.layers.get(rd.layer).dev;
            let mut opaque_here = false;
            let mut whiteouts_here: Vec<Vec<u8>> = Vec::new();
            let entries = sys::read_dir_all(rd.fd())?;
            for e in entries {
                let name = e.name.into_vec();
                if name == OCI_OPAQUE {
                    opaque_here = true;
                    continue;
                }
                if let Some(t) = markers::oci_whiteout_target(&name) {
                    whiteouts_here.push(t.to_vec());
                    continue;
                }
                let mut dtype = e.dtype;
                let mut is_wh = false;
                if dtype == libc::DT_CHR
                    || dtype == libc::DT_UNKNOWN
                    || (dtype == libc::DT_REG && rd.xattr_whiteouts)
                {
                    let os = OsStr::from_bytes(&name);
                    match sys::stat_at(rd.fd(), os) {
                        Ok(st) => {
                            dtype = sys::dtype_of_mode(st.st_mode);
                            is_wh = self.is_whiteout(rd, os, &st);
                        }
                        Err(Errno::NOENT) => continue,
                        Err(err) => return Err(err),
                    }
                }
                let is_dir = dtype == libc::DT_DIR && !is_wh;
                match idx.entries.entry(name.into_boxed_slice()) {
                    MapEntry::Vacant(v) => {
                        idx.order.push(v.key().clone());
                        v.insert(IndexEntry {
                            ino: self.layers.map_ino(dev, e.ino),
                            dtype,
                            pos: pos as u16,
                            whiteout: is_wh,
                            dirs: if is_dir {
                                Box::new([pos as u16])
                            } else {
                                Box::new([])
                            },
                            closed: !is_dir,
                        });
                    }
                    MapEntry::Occupied(mut o) => {
                        let ent = o.get_mut();
                        if !ent.closed {
                            if is_dir {
                                let mut d = ent.dirs.to_vec();
                                d.push(pos as u16);
                                ent.dirs = d.into_boxed_slice();
                            } else {
                                ent.closed = true;
                            }
                        }
                    }
                }
            }
            for t in whiteouts_here {
                match idx.entries.entry(t.into_boxed_slice()) {
                    MapEntry::Vacant(v) => {
                        v.insert(IndexEntry {
                            ino: 0,
                            dtype: libc::DT_UNKNOWN,
                            pos: pos as u16,
                            whiteout: true,
                            dirs: Box::new([]),
                            closed: true,
                        });
                    }
                    MapEntry::Occupied(mut o) => o.get_mut().closed = true,
                }
            }
            if idx.entries.len() > INDEX_MAX_ENTRIES {
                return Ok(None);
            }
            if opaque_here {
                break;
            }
        }
        Ok(Some(idx))
    }
}

enum Found {
    /// Not in this layer: look further down.
    Missing,
    /// A non-directory or whiteout: the merge ends.
    Blocked,
    Dir(OwnedFd),
    /// A directory under an opaque one: the merge ends after it.
    DirThenStop(OwnedFd),
}
