//! Starting a mount daemon: check the request, fork, and return to the caller once the
//! child says the mount is ready (or why it is not). Only fork, the readiness pipe and
//! the user namespace of `subids` live here; the checks and the serving belong to the
//! session (`overlay::fuse`).

use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, Result};
use crate::overlay::fuse::{self as session, MountPlan, MountRequest};
use crate::sys::{self, IdMaps};

/// What `ready` is told: the mount is usable, or why not.
type Verdict<'a> = std::result::Result<(), &'a Error>;

/// Run the overlay command: foreground, or daemonize once the mount is ready.
pub fn run_overlay(req: &MountRequest, foreground: bool) -> Result<()> {
    let plan = session::plan(req)?;
    let maps = if req.subids {
        Some(super::subid_maps()?.ok_or_else(|| {
            Error::invalid_input(format!(
                "subids: uid {} has no subordinate ids in /etc/subuid and /etc/subgid (or {}=off)",
                sys::geteuid(),
                super::USERNS_ENV
            ))
        })?)
    } else {
        None
    };
    if foreground {
        return serve(plan, req, maps.as_ref(), true, |_| {});
    }
    let (rd, wr) = sys::pipe().map_err(|e| Error::new(format!("pipe: {e}")))?;
    match sys::fork().map_err(|e| Error::new(format!("fork: {e}")))? {
        Some(_child) => {
            drop(wr);
            parent_wait(rd)
        }
        None => {
            drop(rd);
            // The caller's other pipes, locks and sockets stay with the caller.
            sys::close_inherited_fds();
            sys::setsid();
            let _ = std::env::set_current_dir("/");
            let wr: OwnedFd = wr;
            let res = serve(plan, req, maps.as_ref(), false, move |r| {
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

/// Mount and serve in this process, or with `maps` from a user namespace.
fn serve(
    plan: MountPlan,
    req: &MountRequest,
    maps: Option<&IdMaps>,
    foreground: bool,
    ready: impl FnOnce(Verdict<'_>),
) -> Result<()> {
    match maps {
        Some(maps) => serve_in_userns(plan, req, maps, foreground, ready),
        None => session::serve(plan, req, ready),
    }
}

/// `subids`: mount here through `fusermount3` (set-uid root works only outside a user
/// namespace), then serve the connection from a child in a user namespace over the
/// user's subordinate ids, whose maps this process writes: as root of that namespace
/// the child reads and writes files owned by the subordinate ids, which the user
/// outside cannot. This process stays outside while the child serves: it is the daemon
/// the caller sees, unmounts on SIGTERM, SIGINT and SIGHUP as `session::serve` does
/// (nothing inside the namespace can unmount), and ends as the child does.
fn serve_in_userns(
    plan: MountPlan,
    req: &MountRequest,
    maps: &IdMaps,
    foreground: bool,
    ready: impl FnOnce(Verdict<'_>),
) -> Result<()> {
    let mnt = plan.mountpoint.clone();
    let opts = session::fusermount_options(req, plan.upper.is_some());
    let dev = match sys::fusermount_mount(&mnt, &opts) {
        Ok(dev) => dev,
        Err(e) => {
            let e = Error::new(format!("cannot mount {}: {e}", mnt.display()));
            return session::refuse(ready, e);
        }
    };
    // Signals wait until the mount is served, then take it down (below). The child
    // inherits the mask; its session waits for them itself and passes them on.
    sys::block_signals(&session::STOP_SIGNALS);
    let me = std::process::id();
    let fork = || -> Result<_> {
        let pipe = || sys::pipe().map_err(|e| Error::new(format!("pipe: {e}")));
        let pipes = (pipe()?, pipe()?, pipe()?);
        let child = sys::fork().map_err(|e| Error::new(format!("fork: {e}")))?;
        Ok((child, pipes))
    };
    let (child, ((rd, wr), (told_rd, told_wr), (go_rd, go_wr))) = match fork() {
        Ok(f) => f,
        Err(e) => {
            let _ = sys::umount_detach(&mnt);
            return session::refuse(ready, e);
        }
    };
    let Some(child) = child else {
        // The caller's end of its readiness pipe (held by `ready`) is not the child's.
        drop(ready);
        drop((rd, told_rd, go_wr));
        let outside = session::FromOutside { dev, unmounter: me };
        serve_inside(plan, req, outside, foreground, (wr, told_wr, go_rd));
    };
    drop((wr, told_wr, go_rd, dev));
    let res = match sys::map_child(child, maps, told_rd, go_wr) {
        Ok(_) => parent_wait(rd),
        Err(e) => Err(Error::new(format!(
            "cannot serve {} from a user namespace over the subordinate ids of uid {}: {e}",
            mnt.display(),
            sys::geteuid()
        ))),
    };
    if let Err(e) = res {
        // Nothing serves the mount: take it down (the child cannot, from inside).
        let _ = sys::umount_detach(&mnt);
        let _ = sys::wait_child(child);
        return session::refuse(ready, e);
    }
    ready(Ok(()));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_signal(&session::STOP_SIGNALS);
            log::info!("signal {sig}: unmounting {}", mnt.display());
            // Lazy, as `session::serve`: the child exits when the last open file closes.
            if let Err(e) = sys::umount_detach(&mnt) {
                log::warn!("unmount of {} failed: {e}", mnt.display());
            }
        })
        .map_err(|e| Error::new(format!("cannot start signal thread: {e}")))?;
    match sys::wait_child(child).map_err(|e| Error::new(format!("wait: {e}")))? {
        0 => Ok(()),
        code => Err(Error::new(format!(
            "the mount daemon in the user namespace exited with {code}"
        ))),
    }
}

/// The child of `serve_in_userns`: enter a user namespace once the parent has written
/// its maps, serve the connection, and exit. `pipes`: where to say the mount is ready
/// (or why not), where to say the namespace is made, where the parent says go on.
fn serve_inside(
    plan: MountPlan,
    req: &MountRequest,
    outside: session::FromOutside,
    foreground: bool,
    (wr, told, go): (OwnedFd, OwnedFd, OwnedFd),
) -> ! {
    let _ = std::env::set_current_dir("/");
    // The first word closes the pipe: the parent reads to its end.
    let wr = std::cell::Cell::new(Some(wr));
    let tell = |msg: &str| {
        if let Some(wr) = wr.take() {
            let _ = sys::write_all_fd(wr.as_fd(), format!("{msg}\n").as_bytes());
        }
    };
    match sys::unshare_user_and_wait(told.as_fd(), go.as_fd()) {
        Ok(true) => {}
        // The parent could not write the maps and says why.
        Ok(false) => std::process::exit(1),
        Err(e) => {
            tell(&format!("cannot enter a user namespace: {e}"));
            std::process::exit(1);
        }
    }
    drop((told, go));
    let res = session::serve_on(plan, req, Some(outside), |r| {
        match r {
            Ok(()) => tell("ok"),
            Err(e) => tell(&e.to_string()),
        }
        if r.is_ok() && !foreground {
            sys::redirect_stdio_to_null();
        }
    });
    std::process::exit(if res.is_ok() { 0 } else { 1 });
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
