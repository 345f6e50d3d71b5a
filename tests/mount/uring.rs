//! FUSE over io_uring, the default as root (`uring=off`: /dev/fuse). The mount and
//! differential suites run over both (scripts/test runs them again with
//! `LAYERFS_TEST_OPTIONS=uring=off`); this pins what only the ring has: two ring threads
//! per online CPU, each pinned to its CPU (a request is answered on the caller's CPU),
//! the `enable_uring` switch put back as it was, the operations whose requests carry the
//! most (large writes, names, xattrs) answered correctly, no ring with `uring=off`, and
//! FORGETs (which stay on /dev/fuse) read in batches.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use support::daemon::Daemon;
use support::files::*;
use support::fingerprint::*;
use support::privilege::*;
use support::procs::*;
use support::stack::*;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// (thread name, CPUs it may run on) of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = fs::read_to_string(t.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        v.push((name.trim().to_string(), cpus));
    }
    v
}

#[test]
fn uring_serves_from_ring_threads_on_every_cpu_and_answers_every_kind_of_request() {
    if skip_unless_root() {
        return;
    }
    let switch_before = fs::read_to_string(ENABLE_URING)
        .expect("this kernel has FUSE over io_uring (fuse module parameter enable_uring)");
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    fs::create_dir_all(l.join("d")).unwrap();
    write(&l.join("d/f"), b"lower bytes\n");
    symlink("f", &l.join("d/ln"));
    let s = rw_stack(t.path(), std::slice::from_ref(&l), "u");
    let check = LowersUnchanged::record(std::slice::from_ref(&l));
    let m = t.path().join("m");
    let g = mount_layerfs(&s, &m, &["uring=on"]);

    // Ring threads: two per online CPU, pinned to it.
    let pid = daemon_pid(&m).expect("the daemon of the mount");
    let online = online_cpus();
    let ring: Vec<(String, String)> = threads(pid)
        .into_iter()
        .filter(|(n, _)| n.starts_with("fuse-ring-"))
        .collect();
    assert_eq!(ring.len(), 2 * online.len(), "ring threads: {ring:?}");
    for (name, cpus) in &ring {
        let cpu = name
            .trim_start_matches("fuse-ring-")
            .split('-')
            .next()
            .unwrap();
        assert_eq!(cpus, cpu, "{name} runs on CPUs {cpus}");
    }
    assert_eq!(
        fs::read_to_string(ENABLE_URING).unwrap(),
        switch_before,
        "enable_uring put back after the mount's INIT"
    );
    // Mounts take turns with the switch through a lock only root writes; others read it
    // to take the shared turn an ordinary user's mount waits in.
    let lock = fs::symlink_metadata("/run/layerfs-enable-uring.lock").unwrap();
    assert!(lock.is_file());
    assert_eq!((lock.uid(), lock.mode() & 0o777), (0, 0o644));

    // Names, a copy-up, a write larger than one request (3 MiB, in 1 MiB WRITEs).
    assert_eq!(fs::read(m.join("d/f")).unwrap(), b"lower bytes\n");
    assert_eq!(fs::read_link(m.join("d/ln")).unwrap(), Path::new("f"));
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/f"))
        .unwrap();
    f.write_all(b"appended\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(m.join("d/f")).unwrap(), b"lower bytes\nappended\n");
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut w = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(m.join("big"))
        .unwrap();
    w.write_all(&big).unwrap();
    drop(w);
    let mut back = Vec::new();
    fs::File::open(m.join("big"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(
        back == big,
        "3 MiB written over the ring read back different"
    );
    assert_eq!(fs::metadata(m.join("big")).unwrap().mode() & 0o7777, 0o640);

    // Directories, renames, links, xattrs, removal.
    fs::create_dir(m.join("n")).unwrap();
    fs::rename(m.join("big"), m.join("n/moved")).unwrap();
    fs::hard_link(m.join("n/moved"), m.join("n/again")).unwrap();
    assert_eq!(fs::metadata(m.join("n/again")).unwrap().nlink(), 2);
    xattr_set(&m.join("n/moved"), "user.k", b"v");
    assert_eq!(
        xattr_get(&m.join("n/again"), "user.k").as_deref(),
        Some(&b"v"[..])
    );
    let mut names: Vec<String> = fs::read_dir(m.join("n"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["again", "moved"]);
    fs::remove_file(m.join("d/ln")).unwrap();
    assert_eq!(lstat(&m.join("d/ln")).err(), Some(libc::ENOENT));
    fs::remove_dir_all(m.join("n")).unwrap();
    assert!(!m.join("n").exists());
    let st = rustix::fs::statfs(&m).unwrap();
    assert!(st.f_blocks > 0);

    drop(g);
    // The daemon goes once unmounted; the next one is found by the same mountpoint.
    wait_gone(pid);

    // uring=off: fuser's /dev/fuse session, no ring thread.
    let g = mount_layerfs(&s, &m, &["uring=off"]);
    let pid = daemon_pid(&m).expect("the daemon of the mount");
    assert_eq!(fs::read(m.join("d/f")).unwrap(), b"lower bytes\nappended\n");
    let names: Vec<String> = threads(pid).into_iter().map(|(n, _)| n).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("fuse-ring-")),
        "uring=off has ring threads: {names:?}"
    );
    drop(g);
    assert_eq!(check.diffs(), Vec::<String>::new(), "a lower layer changed");
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Context switches (voluntary) of the daemon's thread named `name`.
fn switches(pid: u32, name: &str) -> u64 {
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        if fs::read_to_string(t.join("comm"))
            .unwrap_or_default()
            .trim()
            == name
        {
            return status_number(t.join("status"), "voluntary_ctxt_switches").unwrap();
        }
    }
    panic!("no thread {name} in {pid}");
}

/// Over the ring the kernel still queues FORGETs on /dev/fuse. Each one queued woke the
/// reader thread (an `rm -rf` of 4,263 names: 4,436 wake-ups); it now lets them gather
/// and reads them as batches. They are still served: the names come back as new files.
#[test]
fn uring_forgets_come_in_batches() {
    if skip_unless_root() {
        return;
    }
    const N: usize = 2000;
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    fs::create_dir_all(l.join("d")).unwrap();
    for i in 0..N {
        write(&l.join(format!("d/f{i}")), b"x");
    }
    let s = rw_stack(t.path(), std::slice::from_ref(&l), "u");
    let m = t.path().join("m");
    let g = mount_layerfs(&s, &m, &["uring=on"]);
    let pid = daemon_pid(&m).expect("the daemon of the mount");
    for i in 0..N {
        lstat(&m.join(format!("d/f{i}"))).unwrap();
    }
    let before = switches(pid, "fuse-dev-0");
    for i in 0..N {
        fs::remove_file(m.join(format!("d/f{i}"))).unwrap();
    }
    // The last FORGETs are served within the gathering time.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let woken = switches(pid, "fuse-dev-0") - before;
    assert!(
        woken < N as u64 / 5,
        "the /dev/fuse reader woke {woken} times for {N} FORGETs"
    );
    for i in (0..N).step_by(97) {
        let p = m.join(format!("d/f{i}"));
        assert_eq!(lstat(&p).err(), Some(libc::ENOENT));
        write(&p, b"new");
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }
    drop(g);
}

/// Root's ring threads wait in `SCHED_IDLE` (the caller stays on its CPU), where a thread
/// gets the CPU only when nothing else wants it: beside CPU-bound work, each RELEASE's
/// yield (which lets the next OPEN go first) cost about 27 ms, and a `tar c` of the test
/// rootfs took 143 s instead of 1.7 s. A ring thread that finds it waited for a CPU like
/// that serves in normal scheduling for a while, and yields no more.
#[test]
fn ring_threads_leave_sched_idle_while_other_work_keeps_the_cpus_busy() {
    if skip_unless_root() {
        return;
    }
    const N: usize = 2000;
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    for dir in ["d", "e"] {
        fs::create_dir_all(l.join(dir)).unwrap();
        for i in 0..N {
            write(&l.join(format!("{dir}/f{i}")), b"x");
        }
    }
    let s = rw_stack(t.path(), std::slice::from_ref(&l), "u");
    let m = t.path().join("m");
    // In the foreground, in this test's session: the scheduler's autogroups (one per
    // session) would otherwise shield a daemon that detached into its own session from
    // processes started here, the CPU-bound ones below included.
    let mut daemon = Daemon::start(&s, &m, &["uring=on"]).unwrap();
    let pid = daemon.pid();
    let ring = |policy: i32| -> Vec<String> {
        thread_policies(pid)
            .into_iter()
            .filter(|(n, p)| n.starts_with("fuse-ring-") && *p == policy as u32)
            .map(|(n, _)| n)
            .collect()
    };
    let all = 2 * online_cpus().len();

    // `tar c | cat` of the files: for each a LOOKUP, an OPEN and a RELEASE, with a
    // second process that wants the CPU now and then.
    let tar = |dir: &Path| {
        let (done, took) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            let ok = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "tar cf - -C '{}' . | cat > /dev/null",
                    dir.display()
                ))
                .status()
                .is_ok_and(|s| s.success());
            let _ = done.send((ok, t0.elapsed()));
        });
        took.recv_timeout(std::time::Duration::from_secs(120))
    };

    // Calm: they wait in SCHED_IDLE (other tests may keep a CPU busy meanwhile, and
    // move a thread that served to normal scheduling; not every one).
    assert!(tar(&m.join("d")).is_ok_and(|(ok, _)| ok));
    let idle = ring(libc::SCHED_IDLE);
    assert!(
        !idle.is_empty() && idle.len() + ring(libc::SCHED_OTHER).len() == all,
        "calm: in SCHED_IDLE {idle:?} of {all}"
    );

    // Busy: a spinning process on every CPU. The same over other names goes on at the
    // pace of normal scheduling (0.1–0.2 s; 16 s for the build before), and the
    // threads that waited are in normal scheduling now.
    let hogs = CpuHogs::start(1);
    let took = tar(&m.join("e"));
    let normal = ring(libc::SCHED_OTHER);
    drop(hogs);
    assert!(
        took.as_ref().is_ok_and(|(ok, _)| *ok),
        "tar c | cat of {N} files beside CPU-bound work: {took:?} (failed or over 2 minutes)",
    );
    assert!(
        !normal.is_empty(),
        "no ring thread left SCHED_IDLE beside CPU-bound work ({took:?} for {N} files)"
    );
    daemon.stop();
}
