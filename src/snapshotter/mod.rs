//! `layerfs snapshotter`: a containerd remote snapshotter (proxy plugin) over the
//! layerfs store.
//!
//! - `records`: the snapshot records, one JSON file written atomically;
//! - `snapshots`: the operations of containerd's snapshots API on plain types;
//! - `mounts`: what a snapshot hands containerd, and the union mounts behind it;
//! - `service` (feature `snapshotter`): the gRPC service on a unix socket.
//!
//! Snapshots live in the store: `ROOT/snapshots/`. A committed snapshot stands on a
//! layer of the store when a layerfs image has its chain id (nothing is unpacked), or on
//! the tree containerd unpacked into an active snapshot (committing moves nothing);
//! active snapshots are upper dirs. The store's `rmi`, `prune` and `df` count what the
//! snapshots use (`uses`).

pub(crate) mod mounts;
pub mod records;
#[cfg(feature = "snapshotter")]
pub mod service;
pub mod snapshots;

use std::os::fd::AsFd;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::sys::{self, Errno};
pub use records::Kind;
pub use snapshots::{Config, Core, MountType};

/// Hold the snapshotter's lock on a store (`ROOT/snapshots/lock`) for as long as the
/// returned file lives: one snapshotter per store.
pub fn lock(store_root: &Path) -> Result<std::fs::File> {
    let dir = store_root.join("snapshots");
    std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
    let p = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .ctx(format!("opening {}", p.display()))?;
    match sys::flock_exclusive(f.as_fd(), false) {
        Ok(()) => Ok(f),
        Err(Errno::WOULDBLOCK) => Err(Error::in_use(format!(
            "another snapshotter serves the store at {}",
            store_root.display()
        ))),
        Err(e) => Err(Error::from(e).context(format!("locking {}", p.display()))),
    }
}
