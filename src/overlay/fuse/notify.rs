//! The kernel's caches, told about changes no request asked for (see
//! `overlay::kernel_cache`), through FUSE notifications.
//!
//! Attribute invalidations take no lock in the kernel and go out at once. Entry
//! invalidations take the parent directory's lock, which a request we have not answered
//! yet may hold: they go out from a thread of their own, never from a request thread.

use std::ffi::OsString;
use std::sync::mpsc;

use std::ffi::OsStr;
use std::io;

use fuser::INodeNo;
use parking_lot::Mutex;

use crate::overlay::kernel_cache::KernelCache;

/// The two notifications a transport can send.
pub trait Notify: Clone + Send + Sync + 'static {
    /// `FUSE_NOTIFY_INVAL_INODE`.
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()>;
    /// `FUSE_NOTIFY_INVAL_ENTRY`.
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()>;
    /// `FUSE_NOTIFY_STORE` at offset 0.
    fn store(&self, ino: u64, data: &[u8]) -> io::Result<()>;
}

impl Notify for fuser::Notifier {
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()> {
        fuser::Notifier::inval_inode(self, INodeNo(ino), offset, len)
    }

    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        fuser::Notifier::inval_entry(self, INodeNo(parent), name)
    }

    fn store(&self, ino: u64, data: &[u8]) -> io::Result<()> {
        fuser::Notifier::store(self, INodeNo(ino), 0, data)
    }
}

/// The kernel's caches, reached through FUSE notifications.
pub struct FuseNotifier<N: Notify> {
    notifier: N,
    entries: Mutex<mpsc::Sender<(u64, OsString)>>,
}

impl<N: Notify> FuseNotifier<N> {
    pub fn new(notifier: N) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(u64, OsString)>();
        let n = notifier.clone();
        std::thread::Builder::new()
            .name("notify".into())
            .spawn(move || {
                // Ends when the sender goes with the filesystem.
                for (parent, name) in rx {
                    if let Err(e) = n.inval_entry(parent, &name) {
                        log::debug!("entry invalidation of {name:?} in {parent}: {e}");
                    }
                }
            })?;
        Ok(FuseNotifier {
            notifier,
            entries: Mutex::new(tx),
        })
    }
}

impl<N: Notify> KernelCache for FuseNotifier<N> {
    fn attr_changed(&self, ino: u64) {
        // A negative offset drops the attributes only (no page cache, no inode lock).
        if let Err(e) = self.notifier.inval_inode(ino, -1, 0) {
            log::debug!("attribute invalidation of inode {ino}: {e}");
        }
    }

    fn listing_changed(&self, ino: u64) {
        // Offset 0: drop the directory's page cache, where the kernel keeps its listing
        // (page locks only, no inode lock). The kernel checks a cached listing against
        // the directory's change counter only at offset 0: without this, a reader that
        // opened the directory after a change could be served, past its first batch,
        // entries another reader cached before the change.
        if let Err(e) = self.notifier.inval_inode(ino, 0, 0) {
            log::debug!("listing invalidation of directory {ino}: {e}");
        }
    }

    fn name_moved(&self, parent: u64, name: &std::ffi::OsStr) {
        let _ = self.entries.lock().send((parent, name.to_os_string()));
    }

    fn store_pages(&self, ino: u64, data: &[u8]) {
        // Page locks only: no READ of the file is in flight (see the trait).
        if let Err(e) = self.notifier.store(ino, data) {
            log::debug!("page store of inode {ino}: {e}");
        }
    }
}
