//! Inode numbers to nodes, with kernel lookup counts.
//!
//! The table holds weak references; a node stays alive while the kernel has looked it up
//! (a self-reference "pin" while `nlookup > 0`), while a child or hard-link alias names
//! it as parent, or while a file handle uses it. When the last strong reference goes,
//! the node removes its own table entry. The table is sharded so lookups on different
//! inodes never contend.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use super::layers::{LayerId, RealDir};

const SHARDS: usize = 64;

/// Kind of a node; fixed for its life (a name that changes type gets a new node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => Kind::File,
        }
    }
}

/// One name of a non-directory: the merged parent, the name, and the real directory
/// (in the layer holding the data) where that name lives.
#[derive(Debug, Clone)]
pub struct Alias {
    pub parent: Arc<Node>,
    pub name: Box<OsStr>,
    pub real: Arc<RealDir>,
}

/// The names of a non-directory: one inline, more (hard links) on the heap.
pub type Aliases = SmallVec<[Alias; 1]>;

#[derive(Debug)]
pub struct DirState {
    /// `None` only for the root.
    pub parent: Option<Arc<Node>>,
    pub name: OsString,
    pub upper: Option<Arc<RealDir>>,
    /// Lower real directories merged into this one, top first (empty if opaque).
    pub lowers: Arc<[Arc<RealDir>]>,
    /// Absolute path in the lower layers this directory comes from, if it was renamed.
    pub redirect: Option<Vec<u8>>,
    /// The upper dir holds children whose inode number differs from the real one.
    pub impure: bool,
}

impl DirState {
    /// More than one real directory: the kernel reports `st_nlink = 1` for these.
    pub fn is_merged(&self) -> bool {
        self.lowers.len() + usize::from(self.upper.is_some()) > 1
    }

    /// The topmost real directory.
    pub fn top(&self) -> &Arc<RealDir> {
        self.upper.as_ref().unwrap_or_else(|| &self.lowers[0])
    }
}

#[derive(Debug)]
pub struct FileState {
    /// Known names of this inode; all in layer `layer` (almost always one: kept inline).
    pub aliases: Aliases,
    pub layer: LayerId,
    /// An `O_PATH` handle kept when the last known name was removed while the kernel
    /// still knew the node, so an unlinked but still referenced file keeps answering
    /// `getattr` and opens, and its inode number is not reused until the node goes.
    pub orphan: Option<OwnedFd>,
    /// The orphan's data was freed (no handle had it open when its last name went):
    /// it answers `getattr` still, but opens of it fail with `ESTALE`.
    pub orphan_emptied: bool,
}

#[derive(Debug)]
pub enum NodeState {
    /// Boxed: directories are few, and files should not pay for their size.
    Dir(Box<DirState>),
    File(FileState),
}

/// What a directory's listing resolved: name → (real inode number, inode number shown,
/// `DT_*` type).
type ResolvedNames = HashMap<OsString, (u64, u64, u8)>;

#[derive(Default)]
struct Held {
    /// Set while `nlookup` > 0.
    pin: Option<Arc<Node>>,
    /// For directories: what listing found for names it had to resolve (upper entries
    /// of merged or impure directories). Every change to a name here goes through this
    /// node and drops it. Made on first use: most nodes are files.
    resolved: Option<Box<ResolvedNames>>,
}

impl NodeState {
    pub fn dir(d: DirState) -> NodeState {
        NodeState::Dir(Box::new(d))
    }
}

/// `Node::data_blocks` not known yet.
pub const NO_BLOCKS: u64 = u64::MAX;
/// `Node::data_blocks` of a node that is no stub.
pub const NOT_STUB: u64 = u64::MAX - 1;

pub struct Node {
    /// The FUSE node id, and the inode number the mount shows.
    pub ino: u64,
    /// Never reused, unlike inode numbers: a key for caches.
    pub serial: u64,
    /// FUSE generation: goes up when the number is reused while the kernel still holds
    /// the old object (see `insert_new`).
    pub generation: u32,
    pub kind: Kind,
    nlookup: AtomicU64,
    /// The node's reference to itself while the kernel holds lookups, and what its
    /// listings resolved (one lock for both: a node's size is the daemon's memory).
    held: Mutex<Held>,
    pub state: RwLock<NodeState>,
    /// Serialises copy-up of this node.
    pub copy_up_lock: Mutex<()>,
    /// For directories: goes up after every completed change to the entries.
    version: AtomicU64,
    /// Open file handles on this node.
    pub open_files: AtomicU32,
    /// Of those, the ones an `execve` opened (the kernel denies writes to the file
    /// while they live).
    pub exec_opens: AtomicU32,
    /// Whether the file's data went to the kernel's page cache with an open
    /// (`page_offer`).
    pub pages: AtomicU8,
    /// For a metacopy stub in a lower layer: the blocks its data holds, once asked
    /// (`NO_BLOCKS` until then).
    pub data_blocks: AtomicU64,
    /// Set when a newer node took over this one's names: the kernel pins this node's
    /// open files to a lower file it cannot switch, so new opens go to the successor.
    successor: Mutex<Option<Arc<Node>>>,
    /// For directories: a listing was served since the kernel last dropped its cached
    /// one (the kernel can only cache what we served).
    listed: AtomicBool,
    /// For directories: a listing was built for it before (its subdirectories were
    /// handed to the prefetcher then).
    ever_listed: AtomicBool,
    table: Weak<TableInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("ino", &self.ino)
            .field("kind", &self.kind)
            .field("nlookup", &self.nlookup.load(Ordering::Relaxed))
            .finish()
    }
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// Version of a directory's entries (see `entries_changed`).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// A change to this directory's entries has completed.
    pub fn entries_changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn nlookup(&self) -> u64 {
        self.nlookup.load(Ordering::Relaxed)
    }

    /// The kernel took `n` more references.
    pub fn inc_lookup(self: &Arc<Self>, n: u64) {
        if self.nlookup.fetch_add(n, Ordering::AcqRel) == 0 {
            let mut held = self.held.lock();
            if self.nlookup.load(Ordering::Acquire) > 0 && held.pin.is_none() {
                held.pin = Some(self.clone());
            }
        }
    }

    /// The kernel dropped `n` references.
    pub fn forget(&self, n: u64) {
        let mut cur = self.nlookup.load(Ordering::Acquire);
        loop {
            let new = cur.saturating_sub(n);
            match self
                .nlookup
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if new == 0 {
                        let taken = {
                            let mut held = self.held.lock();
                            if self.nlookup.load(Ordering::Acquire) == 0 {
                                held.pin.take()
                            } else {
                                None
                            }
                        };
                        // Dropped outside the lock: this may be the last reference.
                        drop(taken);
                    }
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// A name of this directory changed (created, removed, renamed): forget what a
    /// listing resolved for it, and mark the entries changed.
    pub fn name_changed(&self, name: &OsStr) {
        if let Some(r) = self.held.lock().resolved.as_mut() {
            r.remove(name);
        }
        self.entries_changed();
    }

    /// A listing of this directory is being served: the kernel may cache it.
    pub fn mark_listed(&self) {
        self.listed.store(true, Ordering::Release);
    }

    /// True the first time it is asked: whether no listing was built for this node before.
    pub fn first_listing(&self) -> bool {
        !self.ever_listed.swap(true, Ordering::AcqRel)
    }

    /// Whether a listing was served since the last call (which the kernel's cache of it
    /// is then dropped for).
    pub fn take_listed(&self) -> bool {
        self.listed.swap(false, Ordering::AcqRel)
    }

    /// What a listing resolved for `name` while its real entry was `real_ino`.
    pub fn resolved_name(&self, name: &OsStr, real_ino: u64) -> Option<(u64, u8)> {
        self.held
            .lock()
            .resolved
            .as_ref()?
            .get(name)
            .filter(|r| r.0 == real_ino)
            .map(|r| (r.1, r.2))
    }

    pub fn remember_resolved(&self, name: &OsStr, real_ino: u64, ino: u64, dtype: u8) {
        self.held
            .lock()
            .resolved
            .get_or_insert_default()
            .insert(name.to_os_string(), (real_ino, ino, dtype));
    }

    /// The node that took over this one's names, if any.
    pub fn successor(&self) -> Option<Arc<Node>> {
        self.successor.lock().clone()
    }

    /// Name and parent of a directory (for building upper paths).
    pub fn dir_parent_name(&self) -> Option<(Arc<Node>, OsString)> {
        match &*self.state.read() {
            NodeState::Dir(d) => d.parent.clone().map(|p| (p, d.name.clone())),
            NodeState::File(f) => f
                .aliases
                .first()
                .map(|a| (a.parent.clone(), a.name.to_os_string())),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(table) = self.table.upgrade() {
            if self.ino >= SUCCESSOR_IDS {
                let mut succ = table.successors.lock();
                if let Some(identity) = succ.identity.remove(&self.ino)
                    && succ
                        .by_identity
                        .get(&identity)
                        .is_some_and(|w| std::ptr::eq(w.as_ptr(), self as *const Node))
                {
                    succ.by_identity.remove(&identity);
                }
            }
            let shard = &table.shards[shard_of(self.ino)];
            let mut map = shard.write();
            if let Some(w) = map.get(&self.ino)
                && std::ptr::eq(w.as_ptr(), self as *const Node)
            {
                map.remove(&self.ino);
            }
        }
    }
}

struct TableInner {
    shards: Vec<RwLock<HashMap<u64, Weak<Node>>>>,
    /// Successor nodes, both ways (see `new_successor`).
    successors: Mutex<Successors>,
}

#[derive(Default)]
struct Successors {
    /// Identity → the successor node that resolution must return for it.
    by_identity: HashMap<u64, Weak<Node>>,
    /// Successor node id → the object it stands for: its inode number as resolution
    /// finds it (for every other node, its own number). Kept here, not in every node.
    identity: HashMap<u64, u64>,
}

/// Node ids of successor nodes come from here (no real inode number is this high
/// unless 256 filesystems are stacked).
const SUCCESSOR_IDS: u64 = 0xff00_0000_0000_0000;

#[inline]
fn shard_of(ino: u64) -> usize {
    // Inode numbers of neighbouring files are sequential: spread them.
    (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

/// The inode table.
pub struct InodeTable {
    inner: Arc<TableInner>,
    serial: AtomicU64,
    next_successor: AtomicU64,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> Self {
        InodeTable {
            inner: Arc::new(TableInner {
                shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                successors: Mutex::new(Successors::default()),
            }),
            serial: AtomicU64::new(1),
            next_successor: AtomicU64::new(SUCCESSOR_IDS),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.inner.shards[shard_of(ino)]
            .read()
            .get(&ino)
            .and_then(Weak::upgrade)
    }

    /// Return the live node for `ino`, or insert the one `make` builds. `keep` decides
    /// whether an existing node still describes the same object (else it is replaced).
    pub fn get_or_insert(
        &self,
        ino: u64,
        kind: Kind,
        keep: impl Fn(&Arc<Node>) -> bool,
        make: impl FnOnce() -> NodeState,
    ) -> Arc<Node> {
        let shard = &self.inner.shards[shard_of(ino)];
        if let Some(n) = shard.read().get(&ino).and_then(Weak::upgrade)
            && n.kind == kind
            && keep(&n)
        {
            return n;
        }
        let mut map = shard.write();
        if let Some(n) = map.get(&ino).and_then(Weak::upgrade)
            && n.kind == kind
            && keep(&n)
        {
            return n;
        }
        let node = self.make_node(ino, 0, kind, make());
        map.insert(ino, Arc::downgrade(&node));
        node
    }

    fn make_node(&self, ino: u64, generation: u32, kind: Kind, state: NodeState) -> Arc<Node> {
        Arc::new(Node {
            ino,
            generation,
            serial: self.serial.fetch_add(1, Ordering::Relaxed),
            kind,
            nlookup: AtomicU64::new(0),
            held: Mutex::new(Held::default()),
            state: RwLock::new(state),
            copy_up_lock: Mutex::new(()),
            version: AtomicU64::new(0),
            open_files: AtomicU32::new(0),
            exec_opens: AtomicU32::new(0),
            pages: AtomicU8::new(0),
            data_blocks: AtomicU64::new(NO_BLOCKS),
            successor: Mutex::new(None),
            listed: AtomicBool::new(false),
            ever_listed: AtomicBool::new(false),
            table: Arc::downgrade(&self.inner),
        })
    }

    /// The successor that resolution must return for an object, if it has one.
    pub fn successor_of(&self, identity: u64) -> Option<Arc<Node>> {
        self.inner
            .successors
            .lock()
            .by_identity
            .get(&identity)
            .and_then(Weak::upgrade)
    }

    /// The object a node stands for: its inode number as resolution finds it. The node's
    /// own number, except for a successor node (see `new_successor`).
    fn identity(&self, node: &Node) -> u64 {
        if node.ino < SUCCESSOR_IDS {
            return node.ino;
        }
        let succ = self.inner.successors.lock();
        succ.identity.get(&node.ino).copied().unwrap_or(node.ino)
    }

    /// Give `old` a successor: a new node, under a fresh node id, that lookups of the
    /// same object return from now on. `old` keeps it alive, so as long as the kernel
    /// can still ask about `old`, its names lead to the successor. Returns the existing
    /// successor if there is one.
    pub fn new_successor(&self, old: &Arc<Node>, state: NodeState) -> Arc<Node> {
        let mut slot = old.successor.lock();
        if let Some(s) = &*slot {
            return s.clone();
        }
        let identity = self.identity(old);
        let node = loop {
            let id = self.next_successor.fetch_add(1, Ordering::Relaxed);
            let mut map = self.inner.shards[shard_of(id)].write();
            if map.get(&id).is_some_and(|w| w.strong_count() > 0) {
                continue;
            }
            let node = self.make_node(id, 0, old.kind, state);
            map.insert(id, Arc::downgrade(&node));
            break node;
        };
        let mut succ = self.inner.successors.lock();
        succ.identity.insert(node.ino, identity);
        succ.by_identity.insert(identity, Arc::downgrade(&node));
        *slot = Some(node.clone());
        node
    }

    /// Insert a node for a brand-new object, replacing any stale entry.
    pub fn insert_new(&self, ino: u64, kind: Kind, state: NodeState) -> Arc<Node> {
        let (node, replaced) = {
            let mut map = self.inner.shards[shard_of(ino)].write();
            let old = map.get(&ino).and_then(|w| w.upgrade());
            // The kernel may still hold the old object under this number (an open file,
            // an O_PATH descriptor, a dentry being walked): a new generation makes it take
            // this object for a new inode and fail calls made through the old one,
            // instead of applying them (a link, a setattr) to this object.
            let generation = match &old {
                Some(o) if o.nlookup() > 0 => o.generation.wrapping_add(1),
                _ => 0,
            };
            let node = self.make_node(ino, generation, kind, state);
            map.insert(ino, Arc::downgrade(&node));
            (node, old)
        };
        // The number was reused (the old object is gone) but the kernel may still hold
        // lookups of the old node under it: its FORGETs now reach the new node, so the
        // new node takes over that count instead of being forgotten too early.
        if let Some(old) = replaced {
            let n = old.nlookup.load(Ordering::Acquire);
            if n > 0 {
                node.inc_lookup(n);
                old.forget(n);
            }
        }
        node
    }

    /// Drop every pin (the kernel's lookups): when the filesystem object goes away, its
    /// nodes must not keep each other, and their directory handles, alive.
    pub fn unpin_all(&self) {
        for shard in &self.inner.shards {
            let nodes: Vec<Arc<Node>> = shard.read().values().filter_map(Weak::upgrade).collect();
            for n in nodes {
                n.nlookup.store(0, Ordering::Release);
                let pin = n.held.lock().pin.take();
                drop(pin);
            }
        }
    }

    /// Number of live nodes (for tests and memory reports).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.read().values().filter(|w| w.strong_count() > 0).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Find the alias with this parent and name.
pub fn find_alias<'a>(aliases: &'a [Alias], parent: &Node, name: &OsStr) -> Option<&'a Alias> {
    aliases
        .iter()
        .find(|a| a.parent.ino == parent.ino && *a.name == *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon keeps one node per name the kernel knows: at 100,000 entries every
    /// 8 bytes here are 0.8 MB. Grow it only on purpose.
    #[test]
    fn a_file_node_stays_small() {
        assert!(
            std::mem::size_of::<Node>() <= 184,
            "{}",
            std::mem::size_of::<Node>()
        );
        assert!(std::mem::size_of::<NodeState>() <= 56);
        // The one name of a file lives inside the node, not in a heap block of its own.
        assert_eq!(Aliases::new().inline_size(), 1);
    }

    fn file_state() -> NodeState {
        NodeState::File(FileState {
            aliases: Aliases::new(),
            layer: 1,
            orphan: None,
            orphan_emptied: false,
        })
    }

    #[test]
    fn lookup_counts_pin_and_release() {
        let t = InodeTable::new();
        let n = t.get_or_insert(42, Kind::File, |_| true, file_state);
        n.inc_lookup(2);
        drop(n);
        let n = t.get(42).expect("pinned by lookups");
        n.forget(1);
        drop(n);
        assert!(t.get(42).is_some());
        t.get(42).unwrap().forget(1);
        assert!(t.get(42).is_none(), "forgotten node is gone");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn successors_stand_for_the_first_object_and_go_with_their_node() {
        let t = InodeTable::new();
        let first = t.insert_new(7, Kind::File, file_state());
        let second = t.new_successor(&first, file_state());
        assert!(second.ino >= SUCCESSOR_IDS);
        assert_eq!(t.identity(&first), 7);
        assert_eq!(t.identity(&second), 7);
        assert_eq!(t.successor_of(7).map(|n| n.ino), Some(second.ino));
        // The successor's own successor stands for the same object.
        let third = t.new_successor(&second, file_state());
        assert_eq!(t.identity(&third), 7);
        assert_eq!(t.successor_of(7).map(|n| n.ino), Some(third.ino));
        assert_eq!(t.new_successor(&first, file_state()).ino, second.ino);
        let (second_ino, third_ino) = (second.ino, third.ino);
        drop((first, second, third));
        assert!(t.successor_of(7).is_none());
        assert!(t.get(second_ino).is_none() && t.get(third_ino).is_none());
        assert!(t.inner.successors.lock().identity.is_empty());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn reused_number_takes_over_the_old_lookups() {
        let t = InodeTable::new();
        let old = t.insert_new(9, Kind::File, file_state());
        old.inc_lookup(1);
        drop(old);
        // The old object was deleted and its number reused before its FORGET came.
        let new = t.insert_new(9, Kind::File, file_state());
        new.inc_lookup(1);
        drop(new);
        t.get(9).unwrap().forget(1); // the old object's FORGET
        assert!(t.get(9).is_some(), "the new node is still looked up once");
        t.get(9).unwrap().forget(1);
        assert!(t.get(9).is_none());
    }

    #[test]
    fn reused_number_held_by_the_kernel_gets_a_new_generation() {
        let t = InodeTable::new();
        let old = t.insert_new(9, Kind::File, file_state());
        assert_eq!(old.generation, 0);
        old.inc_lookup(1);
        drop(old);
        let new = t.insert_new(9, Kind::File, file_state());
        assert_eq!(new.generation, 1, "the kernel still holds the old object");
        new.forget(1); // the old object's FORGET
        drop(new);
        // Nothing held any more: a later object under the number starts again.
        let later = t.insert_new(9, Kind::File, file_state());
        assert_eq!(later.generation, 0);
    }

    #[test]
    fn kind_change_replaces_node() {
        let t = InodeTable::new();
        let a = t.get_or_insert(7, Kind::File, |_| true, file_state);
        let b = t.get_or_insert(7, Kind::Symlink, |_| true, file_state);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(t.get(7).unwrap().kind, Kind::Symlink);
        drop(a); // the old node's drop must not remove the new entry
        assert!(t.get(7).is_some());
    }
}
