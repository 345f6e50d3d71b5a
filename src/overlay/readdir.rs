//! Merged directory listings.
//!
//! Directory offsets are keyed hashes of the names (63 bits, per-mount random key), and
//! a listing is served in offset order: "continue after offset X" means "names whose
//! hash is above X". A reader that stops and resumes (`telldir`/`seekdir`, a large
//! directory read over several calls, even while other names come and go) sees every
//! name that stayed in the directory exactly once, with no per-stream state in the daemon.
//! That lets the kernel open directories without asking us and cache their listings.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::cache::{ShardedLru, Weighted};
use super::fs::{OverlayFs, ROOT_INO};
use super::inode_table::{Node, NodeState};
use super::layers::{Layers, RealDir, UPPER};
use super::lookup::{DirView, Resolver};
use super::readdir_stream::HASHED_OFFSETS;
use super::types::Entry;
use crate::markers::{self, OCI_OPAQUE};
use crate::sys::{self, Errno, SysResult};

/// One name in a merged listing.
#[derive(Debug, Clone)]
pub struct ListEntry {
    pub name: OsString,
    pub ino: u64,
    /// `DT_*` type.
    pub dtype: u8,
    /// The inode number cannot be known without a full resolution (merged or
    /// redirected directories, copied-up files): the caller must resolve the name.
    pub needs_resolve: bool,
}

impl Resolver {
    /// List the merged contents of `dir` (without `.` and `..`).
    pub fn list(&self, dir: &DirView) -> SysResult<Vec<ListEntry>> {
        let mut out = Vec::new();
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        let has_lower = !dir.lowers.is_empty();

        if let Some(up) = &dir.upper {
            let dev = self.layers.get(UPPER).dev;
            for e in sys::read_dir_all(up.fd())? {
                let name = e.name.as_bytes();
                if name == OCI_OPAQUE {
                    continue;
                }
                if let Some(t) = markers::oci_whiteout_target(name) {
                    hidden.insert(t.to_vec());
                    continue;
                }
                let dtype = match real_type(up, &e.name, e.dtype) {
                    RealType::Is(t) => t,
                    RealType::Whiteout => {
                        hidden.insert(name.to_vec());
                        continue;
                    }
                    RealType::Gone => continue,
                };
                hidden.insert(name.to_vec());
                let needs_resolve = dir.impure || (dtype == libc::DT_DIR && has_lower);
                out.push(ListEntry {
                    ino: self.layers.map_ino(dev, e.ino),
                    name: e.name,
                    dtype,
                    needs_resolve,
                });
            }
        }

        match dir.lowers.len() {
            0 => {}
            1 => {
                let l = &dir.lowers[0];
                let dev = self.layers.get(l.layer).dev;
                for e in sys::read_dir_all(l.fd())? {
                    if hidden.contains(e.name.as_bytes()) {
                        continue;
                    }
                    if let Some(e) = lower_entry(&self.layers, l, dev, e) {
                        out.push(e);
                    }
                }
            }
            _ => match self.index_of(dir)? {
                Some(idx) => {
                    for name in &idx.order {
                        if hidden.contains(&name[..]) {
                            continue;
                        }
                        let Some(e) = idx.get(name) else { continue };
                        if e.whiteout {
                            continue;
                        }
                        out.push(ListEntry {
                            name: OsStr::from_bytes(name).to_os_string(),
                            ino: e.ino,
                            dtype: e.dtype,
                            needs_resolve: false,
                        });
                    }
                }
                None => {
                    // Too large to index: merge layer by layer, resolving each name.
                    let mut seen: HashSet<Vec<u8>> = hidden;
                    for l in dir.lowers.iter() {
                        for e in sys::read_dir_all(l.fd())? {
                            let name = e.name.as_bytes();
                            if markers::is_marker_name(name) || !seen.insert(name.to_vec()) {
                                continue;
                            }
                            out.push(ListEntry {
                                name: e.name,
                                ino: 0,
                                dtype: e.dtype,
                                needs_resolve: true,
                            });
                        }
                    }
                    // Drop names that resolve to nothing (whited out further up).
                    let view = dir.clone();
                    out.retain_mut(|e| {
                        if !e.needs_resolve {
                            return true;
                        }
                        match self.resolve(&view, &e.name) {
                            Ok(Some(r)) => {
                                e.ino = r.ino;
                                e.dtype = sys::dtype_of_mode(r.stat.st_mode);
                                e.needs_resolve = false;
                                true
                            }
                            _ => false,
                        }
                    });
                }
            },
        }
        Ok(out)
    }
}

/// What an entry of a real directory is, where its `d_type` may not say.
enum RealType {
    Is(u8),
    /// A whiteout (a 0/0 device, or an empty file with the whiteout xattr where the
    /// directory may hold those).
    Whiteout,
    /// Gone since the directory was read.
    Gone,
}

fn real_type(dir: &RealDir, name: &OsStr, dtype: u8) -> RealType {
    if dtype != libc::DT_CHR
        && dtype != libc::DT_UNKNOWN
        && !(dtype == libc::DT_REG && dir.xattr_whiteouts)
    {
        return RealType::Is(dtype);
    }
    let Ok(st) = sys::stat_at(dir.fd(), name) else {
        return RealType::Gone;
    };
    let dtype = sys::dtype_of_mode(st.st_mode);
    if markers::is_whiteout_stat(&st)
        || (dir.xattr_whiteouts
            && dtype == libc::DT_REG
            && st.st_size == 0
            && markers::is_xattr_whiteout(dir.fd(), name))
    {
        RealType::Whiteout
    } else {
        RealType::Is(dtype)
    }
}

/// An entry of the only lower directory of a listing as listed: `None` for the layer's
/// own markers (whiteouts, opaque markers), which hide nothing there.
pub fn lower_entry(layers: &Layers, l: &RealDir, dev: u64, e: sys::RawEntry) -> Option<ListEntry> {
    let (ino, dtype) = lower_listed(layers, l, dev, &e.name, e.ino, e.dtype)?;
    Some(ListEntry {
        ino,
        name: e.name,
        dtype,
        needs_resolve: false,
    })
}

/// The inode number and type an entry of the only lower directory of a listing is
/// listed with (its name, inode number and `d_type` as read); `None` for a marker.
pub fn lower_listed(
    layers: &Layers,
    l: &RealDir,
    dev: u64,
    name: &OsStr,
    ino: u64,
    dtype: u8,
) -> Option<(u64, u8)> {
    if markers::is_marker_name(name.as_bytes()) {
        return None;
    }
    let RealType::Is(dtype) = real_type(l, name, dtype) else {
        return None;
    };
    Some((layers.map_ino(dev, ino), dtype))
}

/// Entries the first READDIRPLUS reply of a large listing carries at most (`.` and `..`
/// included). The kernel asks with READDIRPLUS at the start of every listing, and a
/// reader that only wants names (`ls`, a shell glob, a `readdir` loop) pays there for
/// each entry's lookup and for the kernel's inode for it: about 6 µs an entry, 1.2 ms for
/// a full 32 KiB reply. A reader that goes on to look the names up (`ls -l`, `find`)
/// gets the rest by LOOKUP, or, where it looks names up while it lists, in the
/// READDIRPLUS replies the kernel sends from then on, which are not capped. Small and
/// middling directories (most of a walk, which looks up most names) are not capped:
/// there each entry in a reply saves a round trip.
pub const FIRST_PLUS_ENTRIES: usize = 64;

/// A listing is large above this many entries (a positional one: above
/// `readdir_stream::BIG_DIR_BYTES` of directory).
pub const BIG_LISTING: usize = 1024;

/// A reply buffer for a listing (READDIR).
pub trait DirReply {
    /// Add one entry; `true` when the buffer is full and the entry was not added.
    fn add(&mut self, e: DirEntryRef<'_>) -> bool;
}

/// A reply buffer for a listing with attributes (READDIRPLUS): `entry` is `None` for
/// `.` and `..`.
pub trait DirPlusReply {
    /// Add one entry; `true` when the buffer is full and the entry was not added.
    fn add(&mut self, e: DirEntryRef<'_>, entry: Option<&Entry>) -> bool;
}

/// One entry of a directory listing, as served: `off` continues after it.
#[derive(Debug, Clone)]
pub struct DirEntryOut {
    pub name: OsString,
    pub ino: u64,
    pub dtype: u8,
    pub off: u64,
}

impl DirEntryOut {
    pub fn as_ref(&self) -> DirEntryRef<'_> {
        DirEntryRef {
            name: &self.name,
            ino: self.ino,
            dtype: self.dtype,
            off: self.off,
        }
    }
}

/// An entry of a listing as it goes into a reply, its name borrowed from wherever the
/// listing keeps it.
#[derive(Debug, Clone, Copy)]
pub struct DirEntryRef<'a> {
    pub name: &'a OsStr,
    pub ino: u64,
    pub dtype: u8,
    pub off: u64,
}

/// A directory listing in offset order, with the directory version it was built at.
#[derive(Debug, Default)]
pub struct Listing {
    pub version: u64,
    pub entries: Vec<DirEntryOut>,
}

impl Weighted for Listing {
    fn weight(&self) -> usize {
        self.entries.len()
    }
}

/// Hash-ordered listings cached per directory (bounded, least recently used out).
///
/// A listing is only used to continue a read if it is as new as the directory: a reader
/// resuming at an offset never gets a listing older than its own start, and a slow
/// builder never replaces a newer listing with its older one.
pub struct ListingCache {
    lists: ShardedLru<Listing>,
    hasher: std::collections::hash_map::RandomState,
}

impl ListingCache {
    pub fn new(budget_entries: usize) -> Self {
        ListingCache {
            lists: ShardedLru::new(budget_entries, 16),
            hasher: Default::default(),
        }
    }

    /// The offset of a name: a keyed 62-bit hash, at or above [`HASHED_OFFSETS`] (below
    /// it are the positions of [`super::readdir_stream`]).
    pub fn offset_of(&self, name: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(name);
        (h.finish() >> 2) | HASHED_OFFSETS
    }

    /// The cached listing of a directory if it is current (built at `version`).
    pub fn get(&self, key: u64, version: u64) -> Option<Arc<Listing>> {
        self.lists.get(key).filter(|l| l.version == version)
    }

    pub fn put(&self, key: u64, list: Arc<Listing>) {
        let v = list.version;
        self.lists.put_unless(key, list, |old| old.version > v)
    }

    /// A reader read past the end of `list`: drop it, unless a newer one replaced it.
    /// The kernel caches what it read; a later read from the middle builds it again.
    pub fn done(&self, key: u64, list: &Arc<Listing>) {
        self.lists.remove_if(key, |l| Arc::ptr_eq(l, list))
    }

    /// Sort a listing by offset, making colliding offsets distinct.
    pub fn order(entries: &mut [DirEntryOut]) {
        // (offset, name) orders every listing totally: an unstable sort is as good.
        entries.sort_unstable_by(|a, b| a.off.cmp(&b.off).then_with(|| a.name.cmp(&b.name)));
        for i in 1..entries.len() {
            if entries[i].off <= entries[i - 1].off {
                entries[i].off = entries[i - 1].off + 1;
            }
        }
    }
}

/// Index of the first entry after `offset` in an ordered listing.
pub fn start_after(list: &[DirEntryOut], offset: u64) -> usize {
    list.partition_point(|e| e.off <= offset)
}

impl OverlayFs {
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
        self.listing_of(&self.node(ino)?, offset)
    }

    fn listing_of(&self, node: &Arc<Node>, offset: u64) -> SysResult<(Arc<Listing>, usize)> {
        node.mark_listed();
        let version = node.version();
        let cached = if offset == 0 {
            None
        } else {
            self.listings.get(node.serial, version)
        };
        let list = match cached {
            Some(l) => l,
            None => {
                let view = self.dir_view(node)?;
                let l = Arc::new(Listing {
                    version,
                    entries: self.list_dir(node, &view)?,
                });
                self.listings.put(node.serial, l.clone());
                self.warm_subdirs(node, &view, &l);
                l
            }
        };
        let start = start_after(&list.entries, offset);
        Ok((list, start))
    }

    /// A walk goes on into the subdirectories of what it listed: read them in the
    /// background, once per directory node ([`super::prefetch`]).
    fn warm_subdirs(&self, node: &Node, view: &DirView, list: &Listing) {
        if !self.opts.prefetch || !node.first_listing() {
            return;
        }
        let names: Vec<OsString> = list
            .entries
            .iter()
            .filter(|e| e.dtype == libc::DT_DIR && e.name != "." && e.name != "..")
            .map(|e| e.name.clone())
            .collect();
        let dirs = view
            .upper
            .iter()
            .chain(view.lowers.iter())
            .cloned()
            .collect();
        self.prefetch.warm(dirs, names);
    }

    /// The inode number `..` of directory `node` lists.
    pub(super) fn parent_ino(&self, node: &Node) -> SysResult<u64> {
        match &*node.state.read() {
            NodeState::Dir(d) => Ok(d.parent.as_ref().map_or(ROOT_INO, |p| p.ino)),
            NodeState::File(_) => Err(Errno::NOTDIR),
        }
    }

    fn list_dir(&self, node: &Arc<Node>, view: &DirView) -> SysResult<Vec<DirEntryOut>> {
        let parent_ino = self.parent_ino(node)?;
        let entries = self.res.list(view)?;
        // In rootless layers a regular file on disk may stand for a device node or fifo
        // (its record says): its type is left to stat.
        let stand_ins = self.layers().any_override();
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
                let real_ino = e.ino;
                // Resolved by an earlier listing, and the name has not changed since
                // (every change goes through this node): the same answer.
                if let Some((ino, dtype)) = node.resolved_name(&e.name, real_ino) {
                    (e.ino, e.dtype) = (ino, dtype);
                } else {
                    match self.res.resolve(view, &e.name) {
                        Ok(Some(r)) => {
                            e.ino = r.ino;
                            e.dtype = sys::dtype_of_mode(r.stat.st_mode);
                            node.remember_resolved(&e.name, real_ino, e.ino, e.dtype);
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
            }
            out.push(DirEntryOut {
                off: self.listings.offset_of(e.name.as_bytes()),
                name: e.name,
                ino: e.ino,
                dtype: if stand_ins && e.dtype == libc::DT_REG {
                    libc::DT_UNKNOWN
                } else {
                    e.dtype
                },
            });
        }
        ListingCache::order(&mut out);
        Ok(out)
    }

    /// Serve a listing from `offset` into a reply buffer: entries go in offset order
    /// until the buffer is full; a reader that got to the end lets the daemon drop its
    /// copy (the kernel caches what it read).
    pub fn readdir_into(&self, ino: u64, offset: u64, out: &mut impl DirReply) -> SysResult<()> {
        self.serve_listing(ino, offset, |e, _| out.add(e))
    }

    /// The same with each entry's attributes (READDIRPLUS). Every entry sent counts as a
    /// lookup, as the kernel counts it; one that did not fit is not counted. `.` and
    /// `..` carry no attributes (the kernel makes no dentry for them); a name gone since
    /// the listing was built is left out. The first reply of a large listing carries
    /// few attributes ([`FIRST_PLUS_ENTRIES`]).
    pub fn readdirplus_into(
        &self,
        ino: u64,
        offset: u64,
        out: &mut impl DirPlusReply,
    ) -> SysResult<()> {
        let mut sent = 0;
        self.serve_listing(ino, offset, |e, big| {
            sent += 1;
            (offset == 0 && big && sent > FIRST_PLUS_ENTRIES) || self.add_plus(ino, e, out)
        })
    }

    /// Serve directory `ino`'s listing from `offset`, positional or merged: entries go to
    /// `add` (with whether the listing is large) until it says the reply is full.
    fn serve_listing(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirEntryRef<'_>, bool) -> bool,
    ) -> SysResult<()> {
        let node = self.node(ino)?;
        if let Some(s) = self.stream_at(&node, offset)? {
            let big = s.is_big();
            let r = self.serve_stream(&node, &s, offset, |e| add(e, big));
            self.drop_later(s);
            return r;
        }
        let (list, start) = self.listing_of(&node, offset)?;
        let big = list.entries.len() > BIG_LISTING;
        if start == list.entries.len() {
            // Asked past the end (the read that tells the kernel there is no more): the
            // kernel holds what it read. Dropped only now: dropping it when the last
            // entry went out made this read build the whole listing again.
            self.listings.done(node.serial, &list);
        }
        for e in &list.entries[start..] {
            if add(e.as_ref(), big) {
                break;
            }
        }
        self.drop_later(list);
        Ok(())
    }

    /// Let go of a listing; a large one that nothing else holds (read to its end) is
    /// freed in the background: freeing 10,000 names took 0.14 ms, which the reader's
    /// last request waited for.
    pub(super) fn drop_later<T: Weighted + Send + Sync + 'static>(&self, list: Arc<T>) {
        if Arc::strong_count(&list) == 1 && list.weight() > BIG_LISTING {
            self.prefetch.run_soon(Box::new(move || {
                drop(list);
                None
            }));
        }
    }

    /// Add one entry of directory `ino` with its attributes; `true` when the reply is
    /// full (and the entry not in it).
    fn add_plus(&self, ino: u64, e: DirEntryRef<'_>, out: &mut impl DirPlusReply) -> bool {
        if e.name == "." || e.name == ".." {
            return out.add(e, None);
        }
        match self.lookup(ino, e.name) {
            Ok(ent) => {
                let full = out.add(e, Some(&ent));
                if full {
                    self.forget(ent.attr.ino, 1);
                }
                full
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::types::Entry;

    fn ent(name: &str, off: u64) -> DirEntryOut {
        DirEntryOut {
            name: name.into(),
            ino: 1,
            dtype: libc::DT_REG,
            off,
        }
    }

    #[test]
    fn offsets_are_stable_and_resumable() {
        let c = ListingCache::new(1000);
        let a = c.offset_of(b"a");
        assert_eq!(a, c.offset_of(b"a"));
        assert!((HASHED_OFFSETS..(1 << 63)).contains(&a));
        let mut l = vec![ent("x", 10), ent("y", 10), ent(".", 1), ent("z", 5)];
        ListingCache::order(&mut l);
        let offs: Vec<u64> = l.iter().map(|e| e.off).collect();
        assert_eq!(offs, vec![1, 5, 10, 11]);
        assert_eq!(start_after(&l, 0), 0);
        assert_eq!(start_after(&l, 5), 2);
        assert_eq!(start_after(&l, 11), 4);
        // A name added after a reader passed offset 5 does not shift what it sees next.
        let mut l2 = l.clone();
        l2.push(ent("new", 2));
        ListingCache::order(&mut l2);
        assert_eq!(l2[start_after(&l2, 5)].name, "x");
    }

    /// A reply buffer that holds `cap` entries, as the kernel's page-sized buffer does.
    struct Buf {
        cap: usize,
        got: Vec<(OsString, u64, Option<u64>)>,
    }

    impl DirPlusReply for Buf {
        fn add(&mut self, e: DirEntryRef<'_>, entry: Option<&Entry>) -> bool {
            if self.got.len() == self.cap {
                return true;
            }
            self.got
                .push((e.name.to_os_string(), e.off, entry.map(|x| x.attr.ino)));
            false
        }
    }

    #[test]
    fn readdirplus_in_small_buffers_counts_only_what_was_sent() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("l");
        std::fs::create_dir_all(lower.join("d")).unwrap();
        for i in 0..10 {
            std::fs::write(lower.join(format!("d/f{i}")), b"x").unwrap();
        }
        let fs = OverlayFs::new(crate::overlay::Options::new(vec![lower], None, None)).unwrap();
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let mut b = Buf {
                cap: 4,
                got: Vec::new(),
            };
            fs.readdirplus_into(d, offset, &mut b).unwrap();
            if b.got.is_empty() {
                break;
            }
            offset = b.got.last().unwrap().1;
            names.extend(b.got);
        }
        let mut files: Vec<_> = names.iter().filter(|n| n.0 != "." && n.0 != "..").collect();
        assert_eq!(names.len(), 12, "every name once, with . and ..");
        files.sort();
        files.dedup();
        assert_eq!(files.len(), 10);
        // Each name sent was looked up once; the ones that did not fit were not.
        for (_, _, ino) in files {
            let node = fs.node(ino.unwrap()).unwrap();
            assert_eq!(node.nlookup(), 1);
        }
    }
}
