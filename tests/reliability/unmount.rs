//! Unmount under load: `umount` while files are open gives EBUSY and the mount keeps
//! serving; `umount -l` lets the daemon finish and exit cleanly once the last file
//! closes; the daemon exits, leaving no mount, when its mountpoint is removed from
//! under it (from another mount namespace, or with the filesystem that holds it).

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use rustix::process::Signal;

use support::daemon::*;
use support::files::*;
use support::mounts::*;
use support::procs::*;
use support::report::*;
use support::shell::*;
use support::stack::*;
use support::watchdog::*;

fn lower_stack(t: &Path) -> Stack {
    let stack = new_stack(t, 1);
    write(&stack.lowers[0].join("dir/file"), b"lower bytes\n");
    stack
}

fn exits_cleanly(d: &mut Daemon, r: &mut Report, what: &str) {
    let st = d.wait_exit(Duration::from_secs(15));
    r.ok(&format!("{what}: daemon exits"), st.is_some(), || {
        "still running after 15 s".into()
    });
    if let Some(st) = st {
        r.ok(&format!("{what}: exit status 0"), st.success(), || {
            format!("{st}")
        });
    }
    r.ok(
        &format!("{what}: no mount left"),
        !is_mounted(&d.mnt),
        || "still mounted".into(),
    );
}

#[test]
fn umount_busy_then_lazy() {
    if support::skip_unless_root() {
        return;
    }
    let mut r = Report::new("unmount", "busy-and-lazy");
    let t = tempfile::tempdir().unwrap();
    let stack = lower_stack(t.path());
    let mnt = t.path().join("m");
    let mut d = Daemon::start(&stack, &mnt, &[]).unwrap();
    let wd = Watchdog::new("umount", 120, vec![mnt.clone()]);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("dir/file"))
        .unwrap();
    // Load: a reader thread keeps the mount busy.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let loader = {
        let (m, s, n) = (mnt.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                fs::read(m.join("dir/file"))?;
                n.fetch_add(1, Ordering::AcqRel);
            }
            Ok::<(), std::io::Error>(())
        })
    };
    for _ in 0..1000 {
        if reads.load(Ordering::Acquire) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let res = umount(&mnt, false);
    r.ok(
        "umount with open files gives EBUSY",
        res == Err(libc::EBUSY),
        || format!("{res:?}"),
    );
    r.ok("still mounted after EBUSY", is_mounted(&mnt), || {
        "gone".into()
    });
    let mut s = String::new();
    let read = f.read_to_string(&mut s).map(|_| s.clone());
    r.ok(
        "open file still reads",
        read.as_deref().ok() == Some("lower bytes\n"),
        || format!("{read:?}"),
    );
    let new = fs::write(mnt.join("dir/after-ebusy"), b"still serving");
    r.ok("new files can be created", new.is_ok(), || {
        format!("{new:?}")
    });
    let before = reads.load(Ordering::Acquire);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Release);
    let res = loader.join().unwrap();
    r.ok(
        "a reader keeps reading through the refused umount",
        res.is_ok() && reads.load(Ordering::Acquire) > before,
        || format!("{res:?}, {before} reads before"),
    );
    // Lazy: gone from the namespace at once, the open file keeps working.
    let res = umount(&mnt, true);
    r.ok("umount -l succeeds", res.is_ok(), || format!("{res:?}"));
    r.ok("detached from the namespace", !is_mounted(&mnt), || {
        "still listed".into()
    });
    let w = f.write_all_at(b"written after umount -l\n", 100);
    let sync = f.sync_all();
    r.ok(
        "the open file still writes after umount -l",
        w.is_ok() && sync.is_ok(),
        || format!("{w:?} {sync:?}"),
    );
    std::thread::sleep(Duration::from_millis(300));
    r.ok(
        "daemon keeps serving while a file is open",
        d.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none()),
        || "daemon exited early".into(),
    );
    drop(f);
    exits_cleanly(&mut d, &mut r, "after the last close");
    let up = fs::read(stack.upper.as_ref().unwrap().join("dir/file")).unwrap_or_default();
    r.ok(
        "the write after umount -l reached the upper layer",
        up.len() > 100 && up[100..].starts_with(b"written after umount -l"),
        || format!("{} bytes", up.len()),
    );
    r.ok(
        "after-ebusy file kept",
        stack
            .upper
            .as_ref()
            .unwrap()
            .join("dir/after-ebusy")
            .is_file(),
        || "missing".into(),
    );
    r.check("no hang", wd.disarm());
    r.finish();
}

#[test]
fn mountpoint_removed_from_another_namespace() {
    if support::skip_unless_root() {
        return;
    }
    let mut r = Report::new("unmount", "mountpoint-removed");
    let t = tempfile::tempdir().unwrap();
    let stack = lower_stack(t.path());
    let mnt = t.path().join("m");
    let mut d = Daemon::start(&stack, &mnt, &[]).unwrap();
    let wd = Watchdog::new("rmdir mountpoint", 120, vec![mnt.clone()]);
    // In a private mount namespace the copy of the mount is detached, then the
    // directory removed: the kernel detaches the mount in every other namespace.
    let o = sh(&format!(
        "unshare -m --propagation private sh -c 'umount -l {0} && rmdir {0}'",
        q(&mnt)
    ));
    r.ok(
        "mountpoint removed from another namespace",
        o.status.success(),
        || out_str(&o),
    );
    r.ok("mountpoint gone", !mnt.exists(), || "still there".into());
    exits_cleanly(&mut d, &mut r, "mountpoint removed");
    r.check("no hang", wd.disarm());
    r.finish();
}

#[test]
fn filesystem_holding_the_mountpoint_goes_away() {
    if support::skip_unless_root() {
        return;
    }
    let mut r = Report::new("unmount", "parent-detached");
    let t = tempfile::tempdir().unwrap();
    let stack = lower_stack(t.path());
    let holder = t.path().join("holder");
    fs::create_dir_all(&holder).unwrap();
    let o = sh(&format!("mount -t tmpfs -o size=1m tmpfs {}", q(&holder)));
    assert!(o.status.success(), "{}", out_str(&o));
    let mnt = holder.join("m");
    let mut d = Daemon::start(&stack, &mnt, &[]).unwrap();
    let wd = Watchdog::new("parent detached", 120, vec![mnt.clone()]);
    let f = fs::File::open(mnt.join("dir/file")).unwrap();
    let res = umount(&holder, true);
    r.ok("umount -l of the holding filesystem", res.is_ok(), || {
        format!("{res:?}")
    });
    r.ok("mount gone from the namespace", !is_mounted(&mnt), || {
        "still listed".into()
    });
    let mut buf = [0u8; 5];
    r.ok(
        "an open file still reads",
        f.read_at(&mut buf, 0).is_ok() && &buf == b"lower",
        || "read failed".into(),
    );
    drop(f);
    exits_cleanly(&mut d, &mut r, "holder detached");
    r.check("no hang", wd.disarm());
    r.finish();
}

#[test]
fn signals_and_daemonized_mounts_end_cleanly() {
    if support::skip_unless_root() {
        return;
    }
    let mut r = Report::new("unmount", "signals");
    let t = tempfile::tempdir().unwrap();
    let stack = lower_stack(t.path());
    let mnt = t.path().join("m");
    let wd = Watchdog::new("signals", 120, vec![mnt.clone()]);
    for (sig, name) in [(Signal::TERM, "SIGTERM"), (Signal::INT, "SIGINT")] {
        let mut d = Daemon::start(&stack, &mnt, &[]).unwrap();
        signal(d.pid(), sig);
        exits_cleanly(&mut d, &mut r, name);
    }
    // A daemonized mount (the default form) ends with a plain umount.
    let mut g = mount_layerfs(&stack, &mnt, &[]);
    let pids = daemons_for(&mnt);
    r.ok("one background daemon", pids.len() == 1, || {
        format!("{pids:?}")
    });
    let mut f = fs::File::create(mnt.join("bg")).unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    g.unmount();
    let mut gone = false;
    for _ in 0..150 {
        if pids.iter().all(|p| !pid_alive(*p)) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    r.ok("background daemon exits after umount", gone, || {
        format!("{pids:?} still running")
    });
    r.check("no hang", wd.disarm());
    r.finish();
}
