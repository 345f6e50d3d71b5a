//! Which open files pass through to their backing file, and the kernel's rules for it:
//! one backing file per FUSE inode while any passthrough open of it lives, and no mixing
//! of cached and passthrough opens of one inode (see FIELD-NOTES, "Passthrough").

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::overlay::fs::OverlayFs;
use crate::overlay::layers::UPPER;
use crate::sys::Errno;

pub use super::request::PassthroughMode;

/// How the open handles of one inode do I/O. The kernel allows either cached opens or
/// passthrough opens of an inode at a time, and one backing file for all of the latter.
struct InodeIo<B> {
    cached: u32,
    passthrough: u32,
    backing: Option<Arc<B>>,
    backing_layer: u16,
}

impl<B> Default for InodeIo<B> {
    fn default() -> Self {
        InodeIo {
            cached: 0,
            passthrough: 0,
            backing: None,
            backing_layer: 0,
        }
    }
}

const IO_SHARDS: usize = 16;

/// How long an open that finds its inode pinned to another backing file waits for
/// releases in flight.
const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// How a new handle does its I/O; `B` is the transport's backing-file registration
/// (fuser's `BackingId`, or the io_uring transport's own), released when dropped.
pub enum Attach<B> {
    /// Through the daemon and the kernel's page cache of the FUSE inode.
    Cached,
    /// Straight to this backing file.
    Passthrough(Arc<B>),
    /// Not on this kernel inode: hand the names to a successor node and answer
    /// `ESTALE`, so the kernel looks the path up again (see `OverlayFs::supersede`).
    Supersede,
}

/// The I/O mode of every open handle, by inode.
pub struct PassthroughTable<B> {
    mode: PassthroughMode,
    /// Whether the kernel agreed to passthrough at INIT.
    on: AtomicBool,
    io: Vec<Mutex<HashMap<u64, InodeIo<B>>>>,
    /// Signalled (per shard) when a handle is released.
    released: Vec<Condvar>,
    /// Per handle: (inode, used passthrough).
    handle_io: Mutex<HashMap<u64, (u64, bool)>>,
}

impl<B> PassthroughTable<B> {
    pub fn new(mode: PassthroughMode) -> Self {
        PassthroughTable {
            mode,
            on: AtomicBool::new(false),
            io: (0..IO_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            released: (0..IO_SHARDS).map(|_| Condvar::new()).collect(),
            handle_io: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> PassthroughMode {
        self.mode
    }

    /// The kernel accepted passthrough at INIT.
    pub fn enable(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    /// Whether a new file (created in the upper layer) passes through.
    pub fn passes_new_files(&self) -> bool {
        self.on.load(Ordering::Relaxed) && self.mode != PassthroughMode::Off
    }

    /// Decide the I/O mode of a new handle and register it. `writes`: the open may
    /// change the file's data (write access or `O_TRUNC`).
    ///
    /// The kernel gives an inode one backing file while passthrough opens of it live.
    /// When those opens are pinned to a lower file and the file now lives in the upper
    /// layer (copied up since), a read-only open shares the lower backing as long as
    /// nothing has written the copy (the bytes are the same); any other open must get a
    /// new kernel inode: `Attach::Supersede`.
    pub fn attach(
        &self,
        fs: &OverlayFs,
        ino: u64,
        fh: u64,
        writes: bool,
        open_backing: impl FnOnce(BorrowedFd<'_>) -> io::Result<B>,
    ) -> Result<Attach<B>, Errno> {
        let Some(h) = fs.handle_file(fh) else {
            return Err(Errno::BADF);
        };
        // The file and its layer from one moment: a copy-up may move the handle to the
        // upper copy meanwhile (`retarget_handles`), and a backing registered from the
        // lower file but labelled upper would be shared with writers (a write into the
        // lower layer; seen once in readers_and_writers_at_once_never_see_an_error).
        let (file, layer) = h.file_and_layer();
        let want_pt = self.on.load(Ordering::Relaxed)
            && match self.mode {
                PassthroughMode::Off => false,
                PassthroughMode::Upper => layer == UPPER,
                PassthroughMode::All => true,
            };
        let idx = (ino as usize) % IO_SHARDS;
        let mut shard = self.io[idx].lock();
        // The kernel sends RELEASE in the background after a close: one that came
        // before this open may still be on its way through another request thread.
        // Give it a moment before taking a stale pin for a live one.
        let deadline = std::time::Instant::now() + RELEASE_GRACE;
        while shard
            .get(&ino)
            .is_some_and(|st| st.passthrough > 0 && st.backing_layer != layer)
            && !self.released[idx]
                .wait_until(&mut shard, deadline)
                .timed_out()
        {}
        let st = shard.entry(ino).or_default();
        if st.passthrough > 0 && st.backing_layer != layer {
            if st.backing_layer == UPPER {
                // Opened on the lower file just before a copy-up finished: opened
                // again, it gets the upper file.
                return Err(Errno::STALE);
            }
            if writes || h.node.successor().is_some() {
                return Ok(Attach::Supersede);
            }
            // Copied up for its metadata only: the same bytes as the pinned lower file.
        }
        let use_pt = st.passthrough > 0 || (want_pt && st.cached == 0);
        if !use_pt {
            st.cached += 1;
            self.handle_io.lock().insert(fh, (ino, false));
            return Ok(Attach::Cached);
        }
        if st.backing.is_none() {
            match open_backing(file.as_fd()) {
                Ok(id) => {
                    st.backing = Some(Arc::new(id));
                    st.backing_layer = layer;
                }
                Err(e) => {
                    log::debug!("passthrough unavailable for inode {ino}: {e}");
                    st.cached += 1;
                    self.handle_io.lock().insert(fh, (ino, false));
                    return Ok(Attach::Cached);
                }
            }
        }
        st.passthrough += 1;
        self.handle_io.lock().insert(fh, (ino, true));
        Ok(Attach::Passthrough(st.backing.clone().ok_or(Errno::IO)?))
    }

    /// Whether the open files of `ino` are pinned to a lower file.
    pub fn pinned_to_lower(&self, ino: u64) -> bool {
        let shard = self.io[(ino as usize) % IO_SHARDS].lock();
        shard
            .get(&ino)
            .is_some_and(|st| st.passthrough > 0 && st.backing_layer != UPPER)
    }

    /// A handle was released.
    pub fn detach(&self, fh: u64) {
        let Some((ino, pt)) = self.handle_io.lock().remove(&fh) else {
            return;
        };
        let mut shard = self.io[(ino as usize) % IO_SHARDS].lock();
        if let Some(st) = shard.get_mut(&ino) {
            if pt {
                st.passthrough = st.passthrough.saturating_sub(1);
                if st.passthrough == 0 {
                    st.backing = None;
                }
            } else {
                st.cached = st.cached.saturating_sub(1);
            }
            if st.passthrough == 0 && st.cached == 0 {
                shard.remove(&ino);
            }
            self.released[(ino as usize) % IO_SHARDS].notify_all();
        }
    }
}
