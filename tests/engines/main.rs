//! Container engines on real images: a private containerd (its own config, root, state
//! and sockets) pulling two Debian-based images that share their base layer from a
//! registry on 127.0.0.1, unpacking them with the snapshotter under test, running
//! containers with runc, and driving the snapshots API through `ctr snapshots`.
//!
//! The snapshotter under test is [`fixture::SNAPSHOTTER`]: containerd's own `overlayfs`
//! until `layerfs snapshotter` (a proxy snapshotter) is there; the layerfs-only tests
//! (a snapshotter killed and restarted under running containers, `layerfs system df`)
//! are in `snapshotter.rs`, ignored until then.

mod containerd;
mod fixture;
#[cfg(feature = "snapshotter")]
mod grpc;
mod harness;
mod snapshotter;
