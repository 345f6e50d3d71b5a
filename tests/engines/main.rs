//! Container engines on real images: a private containerd (its own config, root, state
//! and sockets) pulling two Debian-based images that share their base layer from a
//! registry on 127.0.0.1, unpacking them with the snapshotter under test, running
//! containers with runc, and driving the snapshots API through `ctr snapshots`.
//!
//! The snapshotter under test is [`fixture::SNAPSHOTTER`], `layerfs snapshotter` (a
//! proxy snapshotter), compared with containerd's own `overlayfs`; what only layerfs
//! promises (restarts under running containers, `layerfs system df`, layers the store
//! has kept once) is in `snapshotter.rs`; `grpc.rs` speaks the snapshots API straight
//! to the snapshotter's socket (error codes, the "already exists" answer for a chain the
//! store has), which needs no root.

mod containerd;
mod fixture;
#[cfg(feature = "snapshotter")]
mod grpc;
mod harness;
mod snapshotter;
