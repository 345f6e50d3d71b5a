//! Open file and directory handles.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use parking_lot::RwLock;

use super::inode_table::Node;
use super::layers::LayerId;

/// An open regular file: the real file in the layer that holds it. A read-only handle
/// opened on a lower file moves to the upper copy when the file is copied up, so it
/// sees later writes as the kernel's overlayfs does.
#[derive(Debug)]
pub struct FileHandle {
    pub node: Arc<Node>,
    file: RwLock<Arc<OwnedFd>>,
    layer: AtomicU16,
    pub writable: bool,
    /// Opened by an `execve`.
    exec: bool,
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        self.node.open_files.fetch_sub(1, Ordering::AcqRel);
        if self.exec {
            self.node.exec_opens.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl FileHandle {
    pub fn new(node: Arc<Node>, file: OwnedFd, layer: LayerId, writable: bool) -> Self {
        Self::with_exec(node, file, layer, writable, false)
    }

    /// `exec`: the open comes from an `execve` (the open flags carry `__FMODE_EXEC`).
    pub fn with_exec(
        node: Arc<Node>,
        file: OwnedFd,
        layer: LayerId,
        writable: bool,
        exec: bool,
    ) -> Self {
        node.open_files.fetch_add(1, Ordering::AcqRel);
        if exec {
            node.exec_opens.fetch_add(1, Ordering::AcqRel);
        }
        FileHandle {
            node,
            file: RwLock::new(Arc::new(file)),
            layer: AtomicU16::new(layer),
            writable,
            exec,
        }
    }

    /// The real open file (kept alive by the returned reference during a call).
    pub fn file(&self) -> Arc<OwnedFd> {
        self.file.read().clone()
    }

    pub fn layer(&self) -> LayerId {
        self.layer.load(Ordering::Acquire)
    }

    /// The real open file and its layer, both from one moment.
    pub fn file_and_layer(&self) -> (Arc<OwnedFd>, LayerId) {
        let file = self.file.read();
        (file.clone(), self.layer())
    }

    /// Point the handle at another real file (the upper copy of its file).
    pub fn retarget(&self, file: OwnedFd, layer: LayerId) {
        let mut f = self.file.write();
        *f = Arc::new(file);
        self.layer.store(layer, Ordering::Release);
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
