//! Which open files pass through to their backing file, and the kernel's rules for it:
//! one backing file per FUSE inode while any passthrough open of it lives, and no mixing
//! of cached and passthrough opens of one inode (see FIELD-NOTES, "Passthrough").

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::overlay::fs::OverlayFs;
use crate::overlay::layers::UPPER;
use crate::sys::Errno;

pub use super::request::PassthroughMode;

/// How the open handles of one inode do I/O. The kernel allows either cached opens or
/// passthrough opens of an inode at a time, and one backing file for all of the latter.
#[derive(Default)]
struct InodeIo {
    cached: u32,
    passthrough: u32,
    backing: Option<Arc<fuser::BackingId>>,
    backing_layer: u16,
}

const IO_SHARDS: usize = 16;

/// The I/O mode of every open handle, by inode.
pub struct PassthroughTable {
    mode: PassthroughMode,
    /// Whether the kernel agreed to passthrough at INIT.
    on: AtomicBool,
    io: Vec<Mutex<HashMap<u64, InodeIo>>>,
    /// Per handle: (inode, used passthrough).
    handle_io: Mutex<HashMap<u64, (u64, bool)>>,
}

impl PassthroughTable {
    pub fn new(mode: PassthroughMode) -> Self {
        PassthroughTable {
            mode,
            on: AtomicBool::new(false),
            io: (0..IO_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
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

    /// Decide the I/O mode of a new handle and register it. Returns the backing id to
    /// send for passthrough, `None` for cached I/O, or an errno when neither is allowed.
    pub fn attach(
        &self,
        fs: &OverlayFs,
        ino: u64,
        fh: u64,
        open_backing: impl FnOnce(&std::fs::File) -> io::Result<fuser::BackingId>,
    ) -> Result<Option<Arc<fuser::BackingId>>, Errno> {
        let Some(h) = fs.handle_file(fh) else {
            return Err(Errno::BADF);
        };
        let want_pt = self.on.load(Ordering::Relaxed)
            && match self.mode {
                PassthroughMode::Off => false,
                PassthroughMode::Upper => h.layer() == UPPER,
                PassthroughMode::All => true,
            };
        let mut shard = self.io[(ino as usize) % IO_SHARDS].lock();
        let st = shard.entry(ino).or_default();
        let use_pt = if st.passthrough > 0 {
            // Every open of an inode in passthrough mode must share its backing file.
            if st.backing_layer != h.layer() {
                return Err(Errno::BUSY);
            }
            true
        } else {
            want_pt && st.cached == 0
        };
        let backing = if use_pt {
            if st.backing.is_none() {
                let f = std::fs::File::from(h.file().try_clone().map_err(|_| Errno::MFILE)?);
                match open_backing(&f) {
                    Ok(id) => {
                        st.backing = Some(Arc::new(id));
                        st.backing_layer = h.layer();
                    }
                    Err(e) => {
                        log::debug!("passthrough unavailable for inode {ino}: {e}");
                        st.cached += 1;
                        self.handle_io.lock().insert(fh, (ino, false));
                        return Ok(None);
                    }
                }
            }
            st.passthrough += 1;
            st.backing.clone()
        } else {
            st.cached += 1;
            None
        };
        self.handle_io.lock().insert(fh, (ino, backing.is_some()));
        Ok(backing)
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
        }
    }
}
