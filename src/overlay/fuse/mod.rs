//! The FUSE side of the union mount: a thin `fuser` adapter over the core, the
//! passthrough bookkeeping the kernel's rules need, notifications, and the session that
//! mounts and serves a validated request; and, for FUSE over io_uring (which fuser does
//! not speak), the protocol's bytes (`wire`), a dispatcher over the same core, and the
//! ring session (`ring`).

pub mod adapter;
pub mod convert;
pub mod dispatch;
mod idle;
pub mod notify;
pub mod passthrough;
pub mod request;
pub mod ring;
pub mod session;
pub mod wire;

pub use request::{MountPlan, MountRequest, PassthroughMode, plan};
pub use session::{FromOutside, STOP_SIGNALS, fusermount_options, refuse, serve, serve_on};
