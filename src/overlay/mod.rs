//! The union filesystem: a core on plain types (`fs`, `copy_up`, `mutate`) with a thin
//! FUSE adapter on top.

pub mod cache;
pub mod copy_up;
pub mod fs;
pub mod fuse;
pub mod handles;
pub mod hardlinks;
pub mod idmap;
pub mod inode_table;
pub mod kernel_cache;
pub mod layers;
pub mod lookup;
pub mod mutate;
pub mod readdir;
pub mod types;
pub mod whiteout;

pub use fs::{Options, OverlayFs, ROOT_INO};
pub use types::{Attr, Ctx, Entry, SetAttr};
