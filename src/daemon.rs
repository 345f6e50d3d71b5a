//! Mount lifecycle: check the request, mount, return to the caller once the mount is
//! ready (or failed), serve in the background, unmount cleanly on signals, and exit
//! when the filesystem is unmounted from outside.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::cli::overlay_opts::OverlayArgs;
use crate::error::describe;
use crate::overlay::fs::{Options, OverlayFs};
use crate::overlay::fuse_adapter::{FuseAdapter, FuseNotifier, FuseOptions, PassthroughMode};
use crate::sys;

/// A mount failure with a one-line message.
#[derive(Debug)]
pub struct MountError(pub String);

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn abs(p: &Path) -> Result<PathBuf, MountError> {
    std::fs::canonicalize(p).map_err(|e| MountError(format!("{}: {}", p.display(), describe(&e))))
}

fn check_dir(p: &Path, what: &str) -> Result<PathBuf, MountError> {
    let c = abs(p).map_err(|e| MountError(format!("{what} {e}")))?;
    let md = std::fs::metadata(&c)
        .map_err(|e| MountError(format!("{what} {}: {}", p.display(), describe(&e))))?;
    if !md.is_dir() {
        return Err(MountError(format!(
            "{what} {} is not a directory",
            p.display()
        )));
    }
    Ok(c)
}

/// Validated, absolute paths of a mount request.
#[derive(Debug, Clone)]
pub struct MountPlan {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
}

/// Check every path: existence, type, readability, overlaps, same filesystem.
pub fn plan(a: &OverlayArgs) -> Result<MountPlan, MountError> {
    let mut lowers = Vec::new();
    for l in &a.lowers {
        let c = check_dir(l, "lowerdir")?;
        if let Err(e) = std::fs::read_dir(&c) {
            return Err(MountError(format!(
                "lowerdir {}: {}",
                l.display(),
                describe(&e)
            )));
        }
        lowers.push(c);
    }
    let upper = a
        .upper
        .as_deref()
        .map(|u| check_dir(u, "upperdir"))
        .transpose()?;
    let work = a
        .work
        .as_deref()
        .map(|w| check_dir(w, "workdir"))
        .transpose()?;
    let mountpoint = check_dir(&a.mountpoint, "mountpoint")?;
    for l in lowers.iter().chain(upper.iter()).chain(work.iter()) {
        if mountpoint.starts_with(l) {
            return Err(MountError(format!(
                "mountpoint {} is inside layer {}",
                mountpoint.display(),
                l.display()
            )));
        }
        if l.starts_with(&mountpoint) {
            return Err(MountError(format!(
                "layer {} is inside the mountpoint {}",
                l.display(),
                mountpoint.display()
            )));
        }
    }
    if let (Some(u), Some(w)) = (&upper, &work) {
        if u == w || u.starts_with(w) || w.starts_with(u) {
            return Err(MountError(format!(
                "upperdir {} and workdir {} must not contain each other",
                u.display(),
                w.display()
            )));
        }
        for l in &lowers {
            if u.starts_with(l) || l.starts_with(u) {
                return Err(MountError(format!(
                    "upperdir {} overlaps lowerdir {}",
                    u.display(),
                    l.display()
                )));
            }
        }
        use std::os::unix::fs::MetadataExt;
        let du = std::fs::metadata(u).map(|m| m.dev()).unwrap_or(0);
        let dw = std::fs::metadata(w).map(|m| m.dev()).unwrap_or(1);
        if du != dw {
            return Err(MountError(format!(
                "workdir {} must be on the same filesystem as upperdir {}",
                w.display(),
                u.display()
            )));
        }
        if std::fs::metadata(u)
            .map(|m| m.permissions().readonly())
            .unwrap_or(false)
            && !sys::is_privileged()
        {
            return Err(MountError(format!(
                "upperdir {} is not writable",
                u.display()
            )));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError(
            "/dev/fuse is missing (load the fuse module, or run with --device /dev/fuse)".into(),
        ));
    }
    Ok(MountPlan {
        lowers,
        upper,
        work,
        mountpoint,
    })
}

/// Everything a running daemon needs.
pub struct DaemonConfig {
    pub plan: MountPlan,
    pub args: OverlayArgs,
}

fn fuse_options(a: &OverlayArgs) -> FuseOptions {
    let mut o = FuseOptions::default();
    if let Some(t) = a.timeout {
        o.ttl = std::time::Duration::from_secs_f64(t);
    }
    o.passthrough = if !sys::is_privileged() {
        PassthroughMode::Off
    } else {
        a.passthrough.unwrap_or(PassthroughMode::Upper)
    };
    o.writeback = a.writeback;
    o.readdirplus = a.readdirplus;
    o
}

fn mount_config(a: &OverlayArgs, writable: bool) -> Config {
    let mut c = Config::default();
    let mut opts = vec![
        MountOption::FSName(a.fsname.clone().unwrap_or_else(|| "layerfs".into())),
        MountOption::Subtype("layerfs".into()),
        MountOption::DefaultPermissions,
    ];
    if writable {
        opts.push(MountOption::RW);
    } else {
        opts.push(MountOption::RO);
    }
    if sys::is_privileged() {
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
    c.clone_fd = threads > 1;
    c
}

/// Mount and serve. Returns once the filesystem is unmounted. `ready` is called once
/// the mount is usable (or with the error that prevented it).
pub fn serve(
    cfg: DaemonConfig,
    ready: impl FnOnce(Result<(), &MountError>),
) -> Result<(), MountError> {
    let a = &cfg.args;
    // The kernel applies the caller's umask before asking us to create anything: ours
    // must not mask the mode again.
    sys::set_umask(0);
    // Directory nodes hold O_PATH handles to their layers: allow plenty.
    let nofile = sys::raise_nofile_limit();
    log::debug!("open file limit: {nofile}");
    let mut opts = Options::new(
        cfg.plan.lowers.clone(),
        cfg.plan.upper.clone(),
        cfg.plan.work.clone(),
    );
    opts.fsync = !a.volatile;
    opts.idmap = crate::overlay::idmap::IdMap {
        uids: a.uid_map.clone(),
        gids: a.gid_map.clone(),
        squash_uid: a.squash_uid,
        squash_gid: a.squash_gid,
    };
    let fs = match OverlayFs::new(opts) {
        Ok(fs) => Arc::new(fs),
        Err(e) => {
            let err = MountError(e.to_string());
            ready(Err(&err));
            return Err(err);
        }
    };
    let writable = fs.is_writable();
    let adapter = FuseAdapter::new(fs.clone(), fuse_options(a));
    let config = mount_config(a, writable);
    // Signals go to one thread that unmounts; request threads never see them.
    sys::block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let session = match fuser::Session::new(adapter, &cfg.plan.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            let err = MountError(format!(
                "cannot mount {}: {}",
                cfg.plan.mountpoint.display(),
                describe(&e)
            ));
            ready(Err(&err));
            return Err(err);
        }
    };
    fs.set_kernel_cache(Box::new(FuseNotifier(session.notifier())));
    ready(Ok(()));
    let mnt = cfg.plan.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_signal(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
            log::info!("signal {sig}: unmounting {}", mnt.display());
            // Lazy: open files keep working; the daemon exits when the last one closes.
            if let Err(e) = sys::umount_detach(&mnt) {
                log::warn!("unmount of {} failed: {e}", mnt.display());
            }
        })
        .map_err(|e| MountError(format!("cannot start signal thread: {e}")))?;
    // Serve in fuser's background thread and wait for it here, so that the end of the
    // session does not drop fuser's mount handle: that drop unmounts the mount point by
    // path, and fuser 0.18 does so even after the filesystem was unmounted from outside
    // (its "still mounted" check is inverted). By then a new mount may sit at the same
    // path (unmount, then mount again at once), and it would be the one unmounted.
    let mut bg = session
        .spawn()
        .map_err(|e| MountError(format!("cannot start the session: {e}")))?;
    let worker = std::mem::replace(&mut bg.guard, std::thread::spawn(|| Ok(())));
    match worker.join() {
        // Ended by an unmount: nothing is left to unmount.
        Ok(Ok(())) => {
            std::mem::forget(bg);
            Ok(())
        }
        // Ended by an error while perhaps still mounted: let fuser unmount.
        Ok(Err(e)) => Err(MountError(format!("session ended with error: {e}"))),
        Err(_) => Err(MountError("session thread panicked".into())),
    }
}

/// Run the overlay command: foreground, or daemonize once the mount is ready.
pub fn run_overlay(args: OverlayArgs) -> Result<(), MountError> {
    let plan = plan(&args)?;
    let cfg = DaemonConfig { plan, args };
    if cfg.args.foreground {
        return serve(cfg, |_| {});
    }
    let (rd, wr) = sys::pipe().map_err(|e| MountError(format!("pipe: {e}")))?;
    match sys::fork().map_err(|e| MountError(format!("fork: {e}")))? {
        Some(_child) => {
            drop(wr);
            parent_wait(rd)
        }
        None => {
            drop(rd);
            sys::setsid();
            let _ = std::env::set_current_dir("/");
            let wr: OwnedFd = wr;
            let res = serve(cfg, move |r| {
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
fn parent_wait(rd: OwnedFd) -> Result<(), MountError> {
    let msg = sys::read_to_end_fd(rd.as_fd()).map_err(|e| MountError(format!("read: {e}")))?;
    let msg = String::from_utf8_lossy(&msg);
    let line = msg.lines().next().unwrap_or("");
    match line {
        "ok" => Ok(()),
        "" => Err(MountError(
            "the mount daemon exited before the mount was ready".into(),
        )),
        l => Err(MountError(l.to_string())),
    }
}
