//! What the core tells the kernel about changes it made on its own: the kernel caches
//! attributes and names for as long as we allow, and a change that no request asked
//! for (a directory turning merged when something inside it is copied up, a file's names
//! handed to a successor node) must reach it.
//!
//! The FUSE adapter implements this with notifications; without a mount (tests driving
//! the core) nothing is installed and nothing is sent.

/// The kernel's caches of this mount.
pub trait KernelCache: Send + Sync {
    /// The attributes of `ino` changed without a request about it: drop the cached ones.
    /// Must not block on the kernel's inode locks (it is called from request threads).
    fn attr_changed(&self, ino: u64);

    /// `name` in directory `parent` leads to another node now: drop the cached entry, so
    /// that the next path walk looks it up again. Sent in the background.
    fn name_moved(&self, parent: u64, name: &std::ffi::OsStr);

    /// The entries of directory `ino` changed: drop the kernel's cached listing of it.
    /// Called before the reply to the request that made the change, while the kernel
    /// holds the directory's lock, so no listing is in progress and none can start
    /// before the cache is gone. Must not block on the kernel's inode locks.
    fn listing_changed(&self, ino: u64);

    /// Put `data` in the kernel's page cache of file `ino` from offset 0, as answers to
    /// READs would have (a failure only costs those READs). Called from request threads, before the
    /// answer to an OPEN of the file, and only where no READ of it can be in flight (the
    /// kernel locks a page while a READ fills it, and the store waits for that lock).
    fn store_pages(&self, ino: u64, data: &[u8]) {
        let _ = (ino, data);
    }
}
