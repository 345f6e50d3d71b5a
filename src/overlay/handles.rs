//! Open file and directory handles.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use super::inode_table::Node;
use super::layers::LayerId;

/// An open regular file: the real file in the layer that held it at open time.
#[derive(Debug)]
pub struct FileHandle {
    pub node: Arc<Node>,
    pub file: OwnedFd,
    pub layer: LayerId,
    pub writable: bool,
}

impl FileHandle {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

const SHARDS: usize = 32;

/// A sharded map of handles of one kind.
pub struct HandleTable<T> {
    shards: Vec<RwLock<HashMap<u64, Arc<T>>>>,
    next: AtomicU64,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next: AtomicU64::new(1),
        }
    }
}

impl<T> HandleTable<T> {
    pub fn insert(&self, h: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.shards[fh as usize % SHARDS]
            .write()
            .insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.shards[fh as usize % SHARDS].read().get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.shards[fh as usize % SHARDS].write().remove(&fh)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visit every handle (for example to retarget handles after a copy-up).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<T>)) {
        for s in &self.shards {
            for h in s.read().values() {
                f(h);
            }
        }
    }
}
