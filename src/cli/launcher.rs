//! Starting a mount daemon: check the request, fork, and return to the caller once the
//! child says the mount is ready (or why it is not). Only fork and the readiness pipe
//! live here; the checks and the serving belong to the session (`overlay::fuse`).

use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, Result};
use crate::overlay::fuse::{self as session, MountRequest};
use crate::sys;

/// Run the overlay command: foreground, or daemonize once the mount is ready.
pub fn run_overlay(req: &MountRequest, foreground: bool) -> Result<()> {
    let plan = session::plan(req)?;
    if foreground {
        return session::serve(plan, req, |_| {});
    }
    let (rd, wr) = sys::pipe().map_err(|e| Error::new(format!("pipe: {e}")))?;
    match sys::fork().map_err(|e| Error::new(format!("fork: {e}")))? {
        Some(_child) => {
            drop(wr);
            parent_wait(rd)
        }
        None => {
            drop(rd);
            sys::setsid();
            let _ = std::env::set_current_dir("/");
            let wr: OwnedFd = wr;
            let res = session::serve(plan, req, move |r| {
                let msg = match r {
                    Ok(()) => "ok\n".to_string(),
                    Err(e) => format!("{e}\n"),
                };
                let _ = sys::write_all_fd(wr.as_fd(), msg.as_bytes());
                drop(wr);
                if r.is_ok() {
                    // The caller (podman, a shell) must not wait on our stdio.
                    sys::redirect_stdio_to_null();
                }
            });
            std::process::exit(if res.is_ok() { 0 } else { 1 });
        }
    }
}

/// In the parent: wait for the child's verdict.
fn parent_wait(rd: OwnedFd) -> Result<()> {
    let msg = sys::read_to_end_fd(rd.as_fd()).map_err(|e| Error::new(format!("read: {e}")))?;
    let msg = String::from_utf8_lossy(&msg);
    let line = msg.lines().next().unwrap_or("");
    match line {
        "ok" => Ok(()),
        "" => Err(Error::new(
            "the mount daemon exited before the mount was ready",
        )),
        l => Err(Error::new(l)),
    }
}
