//! The union mount, compared with the kernel's overlayfs on identical layers: read-only
//! views, every write rule, inode numbers, readdir offsets and READDIRPLUS, xattrs and
//! link counts, the daemon's life cycle, `kill -9` during a copy-up, and the script that
//! counts a mount's requests (`scripts/fuse-requests`). Every test mounts, so each needs
//! root (a normal user's `cargo test` skips them, saying so).

mod basic;
mod copy_sync;
mod crash;
mod inodes;
mod lifecycle;
mod passthrough;
mod readdir_offsets;
mod readdirplus;
mod readonly_diff;
mod requests;
mod uring;
mod write_rules;
mod xattr_nlink;
