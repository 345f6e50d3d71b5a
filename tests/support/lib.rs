//! What the layerfs integration tests share, one implementation of each: the binary and
//! how to run it, mounts (layerfs, the kernel's overlayfs, tmpfs) behind guards that
//! always unmount, whole-tree snapshots and fingerprints, sample layers and images in
//! every source form, a real registry behind a fault-injecting proxy, a private containerd and the
//! layerfs snapshotter serving it, a private podman calling a mount program, the Debian
//! test rootfs, foreground daemons, watchdogs and reports for the reliability suites, and
//! the privilege check that lets a normal user's `cargo test` skip what needs root.
//!
//! A library rather than a module each test binary compiles: it is built once, and its
//! items are `pub`, so no binary warns about the helpers it does not use.

pub mod cli;
pub mod containerd;
pub mod daemon;
pub mod debian;
pub mod files;
pub mod fingerprint;
pub mod images;
pub mod mounts;
pub mod podman;
pub mod privilege;
pub mod procs;
pub mod proxy;
pub mod registry;
pub mod report;
pub mod rng;
pub mod samples;
pub mod shell;
pub mod stack;
pub mod store_env;
pub mod tree;
pub mod watchdog;
pub mod xattr;

pub use cli::layerfs_bin;
pub use privilege::{is_root, skip_unless_root, skip_without_tool};
