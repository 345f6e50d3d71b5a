//! Mount life cycle: a daemon exits after an unmount and never touches a newer mount at
//! the same path; SIGTERM unmounts; the daemon's descriptor table is grown before it
//! serves; the daemon keeps none of its caller's descriptors.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use support::files::*;
use support::mounts::*;
use support::procs::*;
use support::stack::*;

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A writable stack over one lower layer holding `f` ("x"), and a mountpoint, in `dir`.
fn one_file_stack(dir: &Path) -> (Stack, PathBuf) {
    let l = dir.join("l");
    write(&l.join("f"), b"x");
    (rw_stack(dir, std::slice::from_ref(&l), "u"), dir.join("m"))
}

/// Unmount and mount again at once, many times: the daemon of an earlier mount, still
/// exiting, must not unmount the new one.
#[test]
fn remount_at_the_same_path_right_away() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (s, m) = one_file_stack(t.path());
    let mut g = mount_layerfs(&s, &m, &[]);
    for i in 0..40 {
        fs::write(m.join(format!("n{i}")), b"n").unwrap();
        g.unmount();
        g = mount_layerfs(&s, &m, &[]);
        wait_until("the old daemon exited", || daemons_for(&m).len() == 1);
        assert!(
            is_mounted(&m),
            "round {i}: the new mount was unmounted by the old daemon"
        );
    }
    assert_eq!(fs::read(m.join("n39")).unwrap(), b"n");
    assert_eq!(fs::read_dir(s.upper.as_ref().unwrap()).unwrap().count(), 40);
    g.unmount();
    wait_until("the daemon exited", || daemons_for(&m).is_empty());
}

/// The daemon holds a descriptor per directory and layer it has looked up. Growing a
/// descriptor table shared by threads waits for an RCU grace period (milliseconds, with
/// every opener waiting); a first walk of a fresh mount hit that at 128, 256, 512, 1024
/// descriptors. The daemon grows its table before it serves, whichever transport.
#[test]
fn the_daemon_grows_its_descriptor_table_before_serving() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (s, m) = one_file_stack(t.path());
    for transport in ["uring=on", "uring=off"] {
        let mut g = mount_layerfs(&s, &m, &[transport]);
        let pid = daemon_pid(&m).expect("the daemon of the mount");
        let size = status_number(format!("/proc/{pid}/status"), "FDSize").unwrap();
        assert!(
            size >= 8192,
            "{transport}: descriptor table of {size} slots"
        );
        assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
        g.unmount();
        wait_until("the daemon exited", || daemons_for(&m).is_empty());
    }
}

#[test]
fn sigterm_unmounts_and_exits() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    write(&l.join("f"), b"x");
    let m = t.path().join("m");
    let _g = mount_layerfs(&Stack::ro(vec![l]), &m, &[]);
    let pid = daemon_pid(&m).expect("daemon");
    signal(pid, Signal::TERM);
    wait_until("unmounted", || !is_mounted(&m));
    wait_until("the daemon exited", || daemons_for(&m).is_empty());
}

/// An ordinary user's mount that cannot happen says what is missing and how to fix it,
/// in one line: `/dev/fuse` closed to the user, then no `fusermount3`. Each case is
/// made in a private mount namespace (a 0600 `/dev/fuse` node bound over the real one;
/// `/dev/null` bound over `fusermount3`), so the host keeps its own; a mount that
/// happens all the same is taken down in there before the test fails.
#[test]
fn an_unprivileged_mount_says_what_is_missing() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    for d in ["l", "m"] {
        fs::create_dir(dir.join(d)).unwrap();
    }
    fs::write(dir.join("l/f"), b"x").unwrap();
    // The user may reach both dirs and owns the mountpoint: only the missing piece
    // stands in the way.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.join("m"), Some(65534), Some(65534)).unwrap();
    let bin = support::cli::layerfs_bin();
    let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("fusermount3 (fuse3) is installed");
    let cases = [
        ("0600", false, "/dev/fuse is closed to uid 65534"),
        ("0666", true, "fusermount3 is not installed"),
    ];
    for (mode, hide_fusermount, want) in cases {
        let node = dir.join(format!("fuse-{mode}"));
        let hide = if hide_fusermount {
            format!("mount --bind /dev/null {fusermount} &&")
        } else {
            String::new()
        };
        let script = format!(
            "mknod -m {mode} {node} c 10 229 && mount --bind {node} /dev/fuse && {hide} \
             setpriv --reuid=65534 --regid=65534 --clear-groups \
             env PATH=/usr/bin:/bin {bin} -o lowerdir={l} {m}; rc=$?; \
             [ $rc != 0 ] || umount -l {m}; exit $rc",
            node = node.display(),
            bin = bin.display(),
            l = dir.join("l").display(),
            m = dir.join("m").display(),
        );
        let out = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}: mounted: {err}");
        assert_eq!(err.lines().count(), 1, "{mode}: one line: {err}");
        assert!(
            err.starts_with("layerfs: cannot mount") && err.contains(want),
            "{mode}: {err}"
        );
        assert!(
            !fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&*dir.join("m").to_string_lossy()),
            "nothing mounted"
        );
    }
}

/// The daemon keeps none of its caller's descriptors: a pipe (or lock, or socket) the
/// caller handed down without close-on-exec is closed once the mount command returns,
/// so whoever waits for the pipe's end sees it.
#[test]
fn the_daemon_keeps_no_descriptor_of_its_caller() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (s, m) = one_file_stack(t.path());
    fs::create_dir_all(&m).unwrap();
    // A FIFO whose writing end only the mount command's shell opens (as fd 3, without
    // close-on-exec): no other test's process can inherit it.
    let fifo = t.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let rd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let st = std::process::Command::new("sh")
        .args(["-c", "exec 3>\"$1\"; exec \"$2\" -o \"$3\" \"$4\"", "sh"])
        .arg(&fifo)
        .arg(support::cli::layerfs_bin())
        .arg(s.layerfs_options(&[]))
        .arg(&m)
        .status()
        .unwrap();
    assert!(st.success());
    let g = MountGuard::new(&m);
    let mut b = [0u8; 1];
    let r = std::io::Read::read(&mut &rd, &mut b).map_err(|e| e.raw_os_error());
    assert_eq!(
        r,
        Ok(0),
        "the daemon still holds the caller's pipe (EAGAIN: a writer is left)"
    );
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
    drop(g);
}
