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
    if req.subids {
        return run_in_userns(plan, req, foreground);
    }
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

/// `subids`: mount here through `fusermount3` (set-uid root works only outside a user
/// namespace), then serve the connection from a child in a user namespace over the
/// user's subordinate ids, whose maps this process writes: as root of that namespace
/// the daemon reads and writes files owned by the subordinate ids, which the user
/// outside cannot.
fn run_in_userns(plan: session::MountPlan, req: &MountRequest, foreground: bool) -> Result<()> {
    let maps = super::subid_maps()?.ok_or_else(|| {
        Error::invalid_input(format!(
            "subids: uid {} has no subordinate ids in /etc/subuid and /etc/subgid (or {}=off)",
            sys::geteuid(),
            super::USERNS_ENV
        ))
    })?;
    let mnt = plan.mountpoint.clone();
    let opts = session::fusermount_options(req, plan.upper.is_some());
    let dev = sys::fusermount_mount(&mnt, &opts)
        .map_err(|e| Error::new(format!("cannot mount {}: {e}", mnt.display())))?;
    let pipes = || sys::pipe().map_err(|e| Error::new(format!("pipe: {e}")));
    let ((rd, wr), (told_rd, told_wr), (go_rd, go_wr)) = (pipes()?, pipes()?, pipes()?);
    let child = match sys::fork() {
        Ok(c) => c,
        Err(e) => {
            let _ = sys::umount_detach(&mnt);
            return Err(Error::new(format!("fork: {e}")));
        }
    };
    let Some(child) = child else {
        drop((rd, told_rd, go_wr));
        if !foreground {
            sys::setsid();
        }
        let _ = std::env::set_current_dir("/");
        // The first word closes the pipe: the parent reads to its end.
        let wr = std::cell::Cell::new(Some(wr));
        let tell = |msg: &str| {
            if let Some(wr) = wr.take() {
                let _ = sys::write_all_fd(wr.as_fd(), format!("{msg}\n").as_bytes());
            }
        };
        match sys::unshare_user_and_wait(told_wr.as_fd(), go_rd.as_fd()) {
            Ok(true) => {}
            // The parent could not write the maps and says why.
            Ok(false) => std::process::exit(1),
            Err(e) => {
                tell(&format!("cannot enter a user namespace: {e}"));
                std::process::exit(1);
            }
        }
        drop((told_wr, go_rd));
        let res = session::serve_on(plan, req, Some(dev), |r| {
            match r {
                Ok(()) => tell("ok"),
                Err(e) => tell(&e.to_string()),
            }
            if r.is_ok() && !foreground {
                sys::redirect_stdio_to_null();
            }
        });
        std::process::exit(if res.is_ok() { 0 } else { 1 });
    };
    drop((wr, told_wr, go_rd, dev));
    let res = match sys::map_child(child, &maps, told_rd, go_wr) {
        Ok(_) => parent_wait(rd),
        Err(e) => Err(Error::new(format!(
            "cannot serve {} from a user namespace over the subordinate ids of uid {}: {e}",
            mnt.display(),
            sys::geteuid()
        ))),
    };
    if res.is_err() {
        // Nothing serves the mount: take it down (the daemon cannot, from inside).
        let _ = sys::umount_detach(&mnt);
        let _ = sys::wait_child(child);
    } else if foreground {
        let code = sys::wait_child(child).map_err(|e| Error::new(format!("wait: {e}")))?;
        if code != 0 {
            return Err(Error::new(format!("the mount daemon exited with {code}")));
        }
    }
    res
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
