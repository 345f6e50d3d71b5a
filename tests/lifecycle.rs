//! Mount life cycle: a daemon exits after an unmount and never touches a newer mount at
//! the same path; SIGTERM unmounts.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Every layerfs daemon serving `mnt` (by command line), old ones included.
fn daemons(mnt: &Path) -> usize {
    let want = mnt.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            fs::read_link(e.path().join("exe")).is_ok_and(|x| x == layerfs_bin())
                && fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == want))
        })
        .count()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Unmount and mount again at once, many times: the daemon of an earlier mount, still
/// exiting, must not unmount the new one.
#[test]
fn remount_at_the_same_path_right_away() {
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    write(&l.join("f"), b"x");
    let s = rw_stack(t.path(), std::slice::from_ref(&l), "u");
    let m = t.path().join("m");
    let mut g = mount_layerfs(&s, &m, &[]);
    for i in 0..40 {
        fs::write(m.join(format!("n{i}")), b"n").unwrap();
        g.unmount();
        g = mount_layerfs(&s, &m, &[]);
        wait_until("the old daemon exited", || daemons(&m) == 1);
        assert!(
            is_mounted(&m),
            "round {i}: the new mount was unmounted by the old daemon"
        );
    }
    assert_eq!(fs::read(m.join("n39")).unwrap(), b"n");
    assert_eq!(fs::read_dir(s.upper.as_ref().unwrap()).unwrap().count(), 40);
    g.unmount();
    wait_until("the daemon exited", || daemons(&m) == 0);
}

#[test]
fn sigterm_unmounts_and_exits() {
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    write(&l.join("f"), b"x");
    let m = t.path().join("m");
    let _g = mount_layerfs(&Stack::ro(vec![l]), &m, &[]);
    let pid = daemon_pid(&m).expect("daemon");
    // SAFETY: kill with the pid of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until("unmounted", || !is_mounted(&m));
    wait_until("the daemon exited", || daemons(&m) == 0);
}
