//! Mount life cycle: a daemon exits after an unmount and never touches a newer mount at
//! the same path; SIGTERM unmounts.

use std::fs;
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

/// Unmount and mount again at once, many times: the daemon of an earlier mount, still
/// exiting, must not unmount the new one.
#[test]
fn remount_at_the_same_path_right_away() {
    if support::skip_unless_root() {
        return;
    }
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
