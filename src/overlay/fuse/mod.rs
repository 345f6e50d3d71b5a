//! The FUSE side of the union mount: a thin `fuser` adapter over the core, the
//! passthrough bookkeeping the kernel's rules need, notifications, and the session that
//! mounts and serves a validated request.

pub mod adapter;
pub mod convert;
pub mod notify;
pub mod passthrough;
pub mod request;
pub mod session;

pub use request::{MountPlan, MountRequest, PassthroughMode, plan};
pub use session::{FromOutside, STOP_SIGNALS, fusermount_options, serve, serve_on};
