//! Process-level helpers: limits, ids, daemonizing, stdio, signals, chroot.

use super::*;

/// Raise `RLIMIT_NOFILE` as far as allowed; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let want = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = lim.maximum.map_or(want, |m| m.max(want));
    let try_lim = rustix::process::Rlimit {
        current: Some(target),
        maximum: Some(target),
    };
    if setrlimit(Resource::Nofile, try_lim).is_ok() {
        return target;
    }
    // Unprivileged: the soft limit can go up to the hard one.
    if let Some(max) = lim.maximum {
        lim.current = Some(max);
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Grow this process's descriptor table to hold `slots` descriptors now, while few or no
/// other threads share it. The kernel grows the table by doubling when a new descriptor
/// does not fit, and in a multi-threaded process each growth waits for an RCU grace
/// period (`expand_fdtable` calls `synchronize_rcu`): 3–13 ms here, during which every
/// thread opening a file waits too. Returns the table size reached (at most the soft
/// `RLIMIT_NOFILE`).
pub fn reserve_fd_table(slots: u32) -> u32 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let slots = u64::from(slots).min(limit) as u32;
    if slots == 0 {
        return 0;
    }
    let Ok(probe) = rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) else {
        return 0;
    };
    // The lowest free descriptor at or above `slots - 1`: the table grows to hold it,
    // and keeps its size when the descriptor is closed.
    match rustix::io::fcntl_dupfd_cloexec(&probe, (slots - 1) as _) {
        Ok(_high) => slots,
        Err(_) => 0,
    }
}

pub fn set_umask(mask: u32) -> u32 {
    rustix::process::umask(Mode::from_raw_mode(mask)).as_raw_mode()
}

pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

pub fn getegid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// Supplementary groups of a process, from `/proc/PID/status`.
pub fn process_groups(pid: u32) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Detach-unmount a path (`umount2(path, MNT_DETACH)`); an ordinary user's own FUSE
/// mount through `fusermount3 -u -z`.
pub fn umount_detach(path: &Path) -> SysResult<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Err(Errno::PERM) if !is_privileged() => fusermount_unmount(path, true),
        r => r,
    }
}

/// Unmount a path; an ordinary user's own FUSE mount through `fusermount3 -u`.
pub fn umount(path: &Path) -> SysResult<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty()) {
        Err(Errno::PERM) if !is_privileged() => fusermount_unmount(path, false),
        r => r,
    }
}

/// `fusermount3 -u [-z] PATH`, its message turned back into the errno `umount2` gives.
fn fusermount_unmount(path: &Path, lazy: bool) -> SysResult<()> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|_| Errno::PERM)?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    log::debug!("fusermount3 -u {}: {}", path.display(), msg.trim());
    Err(if msg.contains("busy") {
        Errno::BUSY
    } else if msg.contains("not found") || msg.contains("not mounted") {
        Errno::INVAL
    } else if msg.contains("No such file") {
        Errno::NOENT
    } else {
        Errno::PERM
    })
}

/// Whether this process may create device nodes and set `trusted.*` xattrs: root in the
/// initial user namespace. Root of another namespace (an ordinary user's, see `userns`)
/// may chown within its maps but keeps the ordinary user's store and markers.
pub fn is_privileged() -> bool {
    geteuid() == 0 && in_initial_userns()
}

/// Whether this process is root of its user namespace (the initial one or another).
pub fn is_namespace_root() -> bool {
    geteuid() == 0
}

/// The real user id (the one `access(2)` checks).
pub fn real_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A pipe for parent/child readiness signalling.
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
}

/// `fork()`. Must be called before any thread is started.
///
/// Returns `Ok(None)` in the child and `Ok(Some(pid))` in the parent.
pub fn fork() -> SysResult<Option<u32>> {
    // SAFETY: called only while the process is single-threaded (before the FUSE session
    // starts any thread), so the child can safely continue running Rust code.
    let r = unsafe { libc::fork() };
    match r {
        -1 => Err(last_errno()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Wait for a child process to end; its exit code (128 + signal when killed).
pub fn wait_child(pid: u32) -> SysResult<i32> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or(Errno::INVAL)?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, st))) => {
                return Ok(st
                    .exit_status()
                    .or_else(|| st.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(1));
            }
            Ok(None) => continue,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The descriptors above stderr this process was started with (`note_inherited_fds`).
static INHERITED: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();

/// Note which descriptors above stderr the process was started with, before it opens
/// any of its own: a daemon closes them (`close_inherited_fds`).
pub fn note_inherited_fds() {
    let listed: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(_) => Vec::new(),
    };
    // The listing's own descriptor is in the list, and closed by now.
    let open = listed
        .into_iter()
        .filter(|&fd| {
            // SAFETY: F_GETFD only reads the flags of a descriptor number, open or not.
            unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
        })
        .collect();
    let _ = INHERITED.set(open);
}

/// Close what `note_inherited_fds` found: a daemon must not keep its caller's pipes,
/// locks or sockets open for as long as the mount lives.
pub fn close_inherited_fds() {
    for &fd in INHERITED.get().map(Vec::as_slice).unwrap_or_default() {
        // SAFETY: these numbers were open at start and nothing in the process owns them
        // (no `OwnedFd` was made from them), so closing cannot pull one from under us.
        unsafe {
            libc::close(fd);
        }
    }
}

pub fn setsid() {
    let _ = rustix::process::setsid();
}

/// Point stdin/stdout/stderr at /dev/null (a daemon must not hold its caller's pipes).
pub fn redirect_stdio_to_null() {
    let Ok(null) = rustix::fs::open(c"/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
    else {
        return;
    };
    for target in 0..3 {
        // SAFETY: fds 0..2 are the standard streams; dup2 over them is always sound,
        // and the OwnedFd we create is forgotten so it is not closed twice.
        unsafe {
            let mut t = OwnedFd::from_raw_fd(target);
            let _ = rustix::io::dup2(&null, &mut t);
            std::mem::forget(t);
        }
    }
}

pub fn write_all_fd(fd: BorrowedFd<'_>, mut data: &[u8]) -> SysResult<()> {
    while !data.is_empty() {
        let n = rustix::io::write(fd, data)?;
        data = &data[n..];
    }
    Ok(())
}

pub fn read_to_end_fd(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Restore the default `SIGPIPE` action (Rust ignores it, which turns `| head` into
/// write errors).
pub fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL has no memory-safety effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Block the given signals in this thread (and threads it starts later).
pub fn block_signals(signals: &[i32]) {
    // SAFETY: sigset manipulation on a local, zero-initialised set; pthread_sigmask
    // only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Send SIGTERM to `pid` if it is still this process's parent (once the parent has
/// exited, the number may be another process's); `SRCH` when it is not.
pub fn terminate_parent(pid: u32) -> SysResult<()> {
    if rustix::process::Pid::as_raw(rustix::process::getppid()) as u32 != pid {
        return Err(Errno::SRCH);
    }
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or(Errno::SRCH)?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
}

/// Wait for one of the given (blocked) signals.
pub fn wait_signal(signals: &[i32]) -> i32 {
    // SAFETY: as above; sigwait writes the received signal number into `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        let mut sig: libc::c_int = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// Make `cmd` run chrooted at `root`, with `/` as its working directory.
pub fn chroot_command(cmd: &mut std::process::Command, root: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let root = CString::new(root.as_os_str().as_bytes())?;
    // An ordinary user may not chroot: the command goes into a user namespace of its own
    // where the user is root (uid and gid maps of one id each, written by the child).
    let userns = (!is_namespace_root()).then(|| {
        (
            format!("0 {} 1\n", geteuid()),
            format!("0 {} 1\n", getegid()),
        )
    });
    // SAFETY: the closure runs in the child between fork and exec; it makes only the
    // unshare, open, write, close, chroot and chdir syscalls (async-signal-safe) on
    // memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid_map, gid_map)) = &userns {
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (path, data) in [
                    (c"/proc/self/uid_map", uid_map.as_bytes()),
                    (c"/proc/self/setgroups", b"deny".as_slice()),
                    (c"/proc/self/gid_map", gid_map.as_bytes()),
                ] {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, data.as_ptr().cast(), data.len());
                    libc::close(fd);
                    if n != data.len() as isize {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Whether process `pid`, whose file-system gid is `fsgid`, is in group `gid`: its own
/// group or one of its supplementary groups (`/proc/PID/status`). A process that cannot
/// be read (gone, or `pid` 0: not visible from here) counts as not in the group.
pub fn in_group(pid: u32, fsgid: u32, gid: u32) -> bool {
    if fsgid == gid {
        return true;
    }
    if pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_table_size() -> u32 {
        crate::sys::self_status("FDSize") as u32
    }

    #[test]
    fn the_descriptor_table_is_grown_ahead() {
        raise_nofile_limit();
        let before = fd_table_size();
        let want = (before * 4).max(4096);
        assert_eq!(reserve_fd_table(want), want);
        assert!(fd_table_size() >= want, "{} < {want}", fd_table_size());
        // The probe descriptors are closed again.
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u32;
        assert!(open < want / 2, "{open} descriptors left open");
        assert_eq!(reserve_fd_table(0), 0);
    }
}
