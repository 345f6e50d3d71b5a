//! The union filesystem: a core on plain types that tests drive without a mount, with a
//! thin FUSE adapter on top (`fuse`).
//!
//! The core: `fs` (the `OverlayFs` object, lookup, attributes, listings), `lookup`
//! (resolving a name through the layers), `readdir` (merged listings), `file_io` (open
//! files), `mutate` (names and metadata), `rename`, `copy_up`, `copy_sync` (copies
//! synced in the background under a record), `upper_writer` (whiteouts, the work dir)
//! over `marker_writer`, `inode_table` (nodes and kernel lookup counts), `hardlinks`,
//! `handles`, `layers`, `cache`, `idmap`, `kernel_cache` (what the core tells the
//! kernel), `types`.

pub mod cache;
pub mod copy_sync;
pub mod copy_up;
pub mod file_io;
pub mod fs;
pub mod fuse;
pub mod handles;
pub mod hardlinks;
pub mod idmap;
pub mod inode_table;
pub mod kernel_cache;
pub mod layers;
pub mod lookup;
pub mod marker_writer;
pub mod mutate;
pub mod page_offer;
pub mod prefetch;
pub mod readdir;
mod readdir_stream;
pub mod rename;
pub mod types;
pub mod upper_writer;

pub use fs::{Options, OverlayFs, ROOT_INO, settle_copy_ups};
pub use types::{Attr, Ctx, Entry, SetAttr};
