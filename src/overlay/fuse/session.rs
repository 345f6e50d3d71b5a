//! The FUSE session of one mount: mount options, fuser's configuration, serving until the
//! filesystem is unmounted, and unmounting cleanly on signals. Daemonizing is the
//! launcher's business (`cli::launcher`); this runs in whatever process calls it.

use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use super::adapter::FuseAdapter;
use super::notify::FuseNotifier;
use super::request::{MountPlan, MountRequest};
use super::ring;
use crate::error::describe;
use crate::error::{Error, Result};
use crate::overlay::fs::{Options, OverlayFs};
use crate::sys;

/// The signals that unmount a mount and end its daemon.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A `/dev/fuse` connection that `fusermount3` mounted outside the user namespace this
/// process serves it from, and the process out there (this one's parent) that unmounts
/// it: nothing inside the namespace can.
pub struct FromOutside {
    pub dev: std::os::fd::OwnedFd,
    pub unmounter: u32,
}

/// The mount table shows the type `fuse.layerfs`, as fuse-overlayfs's `fuse.fuse-overlayfs`.
const SUBTYPE_OPTION: &str = "subtype=layerfs";

fn mount_config(a: &MountRequest, writable: bool, kernel_checks: bool) -> Config {
    let mut c = Config::default();
    let mut opts = vec![
        MountOption::FSName(a.fsname.clone().unwrap_or_else(|| "layerfs".into())),
        // The subtype as a kernel option: fuser hands `Subtype` to fusermount3 only, and
        // mounts with type `fuse` when it calls mount(2) itself (as root), so the mount
        // table showed `fuse`. The kernel's `subtype=` option makes it `fuse.layerfs`
        // either way; fusermount3 gets the same `subtype=layerfs` it got before.
        MountOption::CUSTOM(SUBTYPE_OPTION.into()),
    ];
    if kernel_checks {
        opts.push(MountOption::DefaultPermissions);
    }
    if writable {
        opts.push(MountOption::RW);
    } else {
        opts.push(MountOption::RO);
    }
    if sys::is_namespace_root() {
        c.acl = SessionACL::All;
        if !a.nodev {
            opts.push(MountOption::Dev);
        }
        if !a.nosuid {
            opts.push(MountOption::Suid);
        }
    }
    if a.noexec {
        opts.push(MountOption::NoExec);
    }
    c.mount_options = opts;
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 16)
    });
    c.n_threads = Some(threads);
    // A descriptor of its own per thread means opening /dev/fuse again once the
    // session runs, after the mount was reported ready. Root always can; an ordinary
    // user whose /dev/fuse was opened to users only for the mount (a test, a CI job
    // that restores its mode) could not, and the session would end and take the mount
    // with it. Users' threads share the descriptor fusermount3 handed over.
    c.clone_fd = clone_fds(threads, sys::geteuid());
    c
}

/// Whether each of a session's `threads` opens its own descriptor of the connection.
fn clone_fds(threads: usize, euid: u32) -> bool {
    threads > 1 && euid == 0
}

/// The `-o` of `fusermount3` for a mount whose connection is served from elsewhere (a
/// user namespace, see `serve_on`): what `mount_config` asks for an ordinary user.
pub fn fusermount_options(a: &MountRequest, writable: bool) -> String {
    let mut o = vec![
        format!("fsname={}", a.fsname.as_deref().unwrap_or("layerfs")),
        SUBTYPE_OPTION.to_string(),
        if writable { "rw" } else { "ro" }.to_string(),
    ];
    if a.noexec {
        o.push("noexec".into());
    }
    o.join(",")
}

/// Mount and serve. Returns once the filesystem is unmounted. `ready` is called once
/// the mount is usable (or with the error that prevented it).
pub fn serve(
    plan: MountPlan,
    a: &MountRequest,
    ready: impl FnOnce(std::result::Result<(), &Error>),
) -> Result<()> {
    serve_on(plan, a, None, ready)
}

/// Tell `ready` why the mount is not usable, and return that.
pub fn refuse(ready: impl FnOnce(std::result::Result<(), &Error>), e: Error) -> Result<()> {
    ready(Err(&e));
    Err(e)
}

/// Descriptor slots reserved at start (the kernel's table: 8 bytes a slot).
const FD_TABLE_SLOTS: u32 = 8192;

/// The mount serves: the code that set it up will not run again, so its pages need not
/// stay mapped (`sys::release_clean_file_pages`: 2–3 MiB of a fresh daemon's 5).
pub(super) fn started() {
    let n = sys::release_clean_file_pages();
    log::debug!("released {} KiB of start-up file mappings", n >> 10);
}

/// `serve`, or with `outside` (a connection already mounted at the mountpoint, by
/// `fusermount3` outside the user namespace we serve from) serve that connection, and
/// on a signal ask the process outside to unmount it. Requests come with the ids of the
/// initial namespace; only the mount's owner can make them (no `allow_other`), and it
/// acts as root (see `OverlayFs::owner_is_root`).
pub fn serve_on(
    plan: MountPlan,
    a: &MountRequest,
    outside: Option<FromOutside>,
    ready: impl FnOnce(std::result::Result<(), &Error>),
) -> Result<()> {
    // The kernel applies the caller's umask before asking us to create anything: ours
    // must not mask the mode again.
    sys::set_umask(0);
    // Directory nodes hold O_PATH handles to their layers: allow plenty.
    let nofile = sys::raise_nofile_limit();
    // Grown now rather than in the middle of a walk (each growth of a shared table
    // waits for an RCU grace period, milliseconds here); a rootfs walk holds about 800.
    let table = sys::reserve_fd_table(FD_TABLE_SLOTS);
    log::debug!("open file limit: {nofile}; descriptor table: {table}");
    let mut opts = Options::new(plan.lowers.clone(), plan.upper.clone(), plan.work.clone());
    opts.data = plan.data.clone();
    opts.fsync = a.fsync;
    opts.prefetch = a.prefetch;
    opts.idmap = a.idmap.clone();
    opts.upper_override = a.upper_override;
    opts.real_owners = a.subids;
    let fs = match OverlayFs::new(opts) {
        Ok(fs) => Arc::new(fs),
        Err(e) => return refuse(ready, e),
    };
    let writable = fs.is_writable();
    let checks = !fs.owner_is_root();
    let mut outside = outside;
    if a.uring != Some(false) {
        // The kernel offers the ring in INIT, and grants it in the answer, only while the
        // module parameter is on. Root turns it on for INIT and puts it back; an ordinary
        // user's mount (through fusermount3, here or outside our user namespace) gets the
        // ring where root has left it on, and so does root of a user namespace (rootless
        // podman's mount program) where it may mount FUSE itself.
        let privileged = sys::is_privileged() && outside.is_none();
        // Others take a turn at root's switch first (see `SwitchHold`).
        let turn = if privileged {
            sys::fuse_dev::SwitchHold::default()
        } else {
            sys::fuse_dev::SwitchHold::take()
        };
        let conn = if privileged {
            ring::switch_on().map(ring::Connection::Own)
        } else if !ring::left_on() {
            None
        } else if let Some(o) = outside.take() {
            Some(ring::Connection::Mounted {
                dev: o.dev,
                unmounter: Some(o.unmounter),
                turn,
            })
        } else if sys::is_namespace_root() {
            match ring::own_mount(&plan, a, writable, checks) {
                Ok(dev) => Some(ring::Connection::Mounted {
                    dev,
                    unmounter: None,
                    turn,
                }),
                Err((what, e)) => {
                    log::info!("no ring: {what}: {e}; mounting as fuser does");
                    None
                }
            }
        } else {
            match mount_through_fusermount(&plan, a, writable, checks, turn) {
                Ok(c) => Some(c),
                Err(e) => return refuse(ready, e),
            }
        };
        if let Some(conn) = conn {
            sys::block_signals(&STOP_SIGNALS);
            // Threads inherit the blocked signals: only the watcher sees them.
            fs.start_background();
            watch_signals(plan.mountpoint.clone(), conn.unmounter())?;
            return ring::serve(&plan, a, fs.clone(), checks, conn, ready);
        }
        if a.uring == Some(true) {
            log::warn!(
                "uring: FUSE over io_uring needs a kernel with it (fuse module parameter enable_uring: root turns it on for its own mounts, an ordinary user's need it left on) and io_uring allowed (kernel.io_uring_disabled): serving /dev/fuse"
            );
        }
    }
    let adapter = FuseAdapter::new(fs.clone(), a.fuse_options());
    let config = mount_config(a, writable, checks);
    // Signals go to one thread that unmounts; request threads never see them.
    sys::block_signals(&STOP_SIGNALS);
    fs.start_background();
    let unmounter = outside.as_ref().map(|o| o.unmounter);
    let session = match outside {
        // The kernel lets only the owner in; fuser's own check would compare the
        // request's uid with ours inside the namespace (0), so it is left to the kernel.
        Some(o) => fuser::Session::from_fd(adapter, o.dev, SessionACL::All, config),
        None => fuser::Session::new(adapter, &plan.mountpoint, &config),
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let why = why_not_mounted(describe(&e));
            let e = Error::new(format!("cannot mount {}: {why}", plan.mountpoint.display()));
            return refuse(ready, e);
        }
    };
    match FuseNotifier::new(session.notifier()) {
        Ok(n) => fs.set_kernel_cache(Box::new(n)),
        Err(e) => {
            let e = Error::new(format!("cannot start the notification thread: {e}"));
            return refuse(ready, e);
        }
    }
    if let Err(e) = watch_signals(plan.mountpoint.clone(), unmounter) {
        return refuse(ready, e);
    }
    // Serve in fuser's background thread and wait for it here, so that the end of the
    // session does not drop fuser's mount handle: that drop unmounts the mount point by
    // path, and fuser 0.18 does so even after the filesystem was unmounted from outside
    // (its "still mounted" check is inverted). By then a new mount may sit at the same
    // path (unmount, then mount again at once), and it would be the one unmounted.
    let mut bg = match session.spawn() {
        Ok(bg) => bg,
        Err(e) => return refuse(ready, Error::new(format!("cannot start the session: {e}"))),
    };
    ready(Ok(()));
    started();
    let worker = std::mem::replace(&mut bg.guard, std::thread::spawn(|| Ok(())));
    match worker.join() {
        // Ended by an unmount: nothing is left to unmount.
        Ok(Ok(())) => {
            std::mem::forget(bg);
            Ok(())
        }
        // Ended by an error while perhaps still mounted: let fuser unmount.
        Ok(Err(e)) => Err(Error::new(format!("session ended with error: {e}"))),
        Err(_) => Err(Error::new("session thread panicked")),
    }
}

/// An ordinary user's mount for the ring: `fusermount3` mounts and hands over the
/// connection, with the options fuser would have given it.
fn mount_through_fusermount(
    plan: &MountPlan,
    a: &MountRequest,
    writable: bool,
    kernel_checks: bool,
    turn: sys::fuse_dev::SwitchHold,
) -> Result<ring::Connection> {
    let mut opts = fusermount_options(a, writable);
    if kernel_checks {
        opts.push_str(",default_permissions");
    }
    match sys::fusermount_mount(&plan.mountpoint, &opts) {
        Ok(dev) => Ok(ring::Connection::Mounted {
            dev,
            unmounter: None,
            turn,
        }),
        Err(e) => Err(Error::new(format!(
            "cannot mount {}: {}",
            plan.mountpoint.display(),
            why_not_mounted(e)
        ))),
    }
}

/// A thread that unmounts on a stop signal (or asks `unmounter`, the process outside a
/// user namespace that mounted us, to do it).
fn watch_signals(mnt: std::path::PathBuf, unmounter: Option<u32>) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_signal(&STOP_SIGNALS);
            if let Some(pid) = unmounter {
                log::info!("signal {sig}: process {pid} unmounts {}", mnt.display());
                if let Err(e) = sys::terminate_parent(pid) {
                    log::warn!("cannot signal process {pid} to unmount: {e}");
                }
                return;
            }
            log::info!("signal {sig}: unmounting {}", mnt.display());
            // Lazy: open files keep working; the daemon exits when the last one closes.
            if let Err(e) = sys::umount_detach(&mnt) {
                log::warn!("unmount of {} failed: {e}", mnt.display());
            }
        })
        .map(|_| ())
        .map_err(|e| Error::new(format!("cannot start signal thread: {e}")))
}

/// What stood in the way of a mount, in words a user can act on: `/dev/fuse` missing or
/// closed to this user, or (unprivileged) no `fusermount3` to mount through.
fn why_not_mounted(otherwise: String) -> String {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        return "/dev/fuse does not exist: load the fuse module (modprobe fuse)".into();
    }
    if !sys::is_privileged() {
        if !sys::can_read_write(dev) {
            return format!(
                "/dev/fuse is closed to uid {}: let users open it (chmod 0666 /dev/fuse, the mode the fuse3 package sets), or mount as root",
                sys::real_uid()
            );
        }
        // Where fuser looks: $FUSERMOUNT_PATH, then PATH, /sbin and /bin.
        let dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let found = std::env::var_os("FUSERMOUNT_PATH").is_some()
            || dirs
                .iter()
                .map(|d| d.as_path())
                .chain([Path::new("/sbin"), Path::new("/bin")])
                .any(|d| d.join("fusermount3").is_file() || d.join("fusermount").is_file());
        if !found {
            return "fusermount3 is not installed (Debian: apt-get install fuse3): an unprivileged mount goes through it".into();
        }
    }
    otherwise
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_roots_session_threads_open_dev_fuse_again() {
        assert!(clone_fds(4, 0));
        assert!(!clone_fds(1, 0));
        // An ordinary user's threads share fusermount3's descriptor: reopening
        // /dev/fuse after the mount was reported ready can fail for them.
        assert!(!clone_fds(4, 65534));
    }
}
