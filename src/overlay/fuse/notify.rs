//! The kernel's caches, told about changes no request asked for (see
//! `overlay::kernel_cache`), through FUSE notifications.

use fuser::INodeNo;

use crate::overlay::kernel_cache::KernelCache;

/// The kernel's caches, reached through FUSE notifications.
pub struct FuseNotifier(pub fuser::Notifier);

impl KernelCache for FuseNotifier {
    fn attr_changed(&self, ino: u64) {
        // A negative offset drops the attributes only (no page cache, no inode lock).
        if let Err(e) = self.0.inval_inode(INodeNo(ino), -1, 0) {
            log::debug!("attribute invalidation of inode {ino}: {e}");
        }
    }
}
