//! layerfs: container image layers stored once by digest, mounted as a live root
//! filesystem through FUSE with a private writable layer per container.

pub mod cli;
pub mod container;
pub mod error;
pub mod markers;
pub mod metacopy;
pub mod overlay;
pub mod override_stat;
pub mod registry;
pub mod snapshotter;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;
