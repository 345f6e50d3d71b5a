//! Exhaustion: an upper dir on a small full tmpfs (ENOSPC), a daemon with a low
//! open-file limit (EMFILE), a directory with very many entries, a 100 GiB sparse
//! file. Clear errors where something must fail, no crash, nothing that was there
//! damaged.
//!
//! Size: `LAYERFS_BIGDIR_ENTRIES` (default 20000; the full run uses 1000000).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{SeekFrom, seek};

use support::daemon::*;
use support::files::*;
use support::mounts::*;
use support::procs::*;
use support::report::*;
use support::rng::*;
use support::stack::*;
use support::watchdog::*;

fn errno_of(r: &std::io::Result<impl Sized>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

/// A stack over `lower` whose upper and work dirs are made in `fs_dir` (a small tmpfs).
fn stack_on(fs_dir: &Path, lower: &Path) -> Stack {
    fs::create_dir_all(fs_dir.join("upper")).unwrap();
    fs::create_dir_all(fs_dir.join("work")).unwrap();
    Stack {
        data: Vec::new(),
        lowers: vec![lower.to_path_buf()],
        upper: Some(fs_dir.join("upper")),
        work: Some(fs_dir.join("work")),
    }
}

#[test]
fn upper_on_a_full_filesystem() {
    if support::skip_unless_root() {
        return;
    }
    let mut r = Report::new("exhaustion", "enospc");
    let t = tempfile::tempdir().unwrap();
    let small = t.path().join("small");
    let _u = Tmpfs::mount(&small, "size=8m,nr_inodes=400");
    let lower = t.path().join("lower");
    let big: Vec<u8> = Rng::new(5).bytes(16 << 20);
    write(&lower.join("big"), &big);
    write(&lower.join("small"), b"small lower file");
    let stack = stack_on(&small, &lower);
    let mnt = t.path().join("m");
    let mut d = Daemon::start(&stack, &mnt, &[]).unwrap();
    let wd = Watchdog::new("enospc", 180, vec![mnt.clone()]);
    let keep: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("keep{i}"), Rng::new(i).bytes(100_000)))
        .collect();
    for (n, data) in &keep {
        fs::write(mnt.join(n), data).unwrap();
    }
    // Fill the filesystem through the mount.
    let mut f = File::create(mnt.join("filler")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut err = None;
    for _ in 0..64 {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            err = Some(e);
            break;
        }
    }
    drop(f);
    r.ok(
        "writing into a full upper gives ENOSPC",
        err.as_ref().and_then(|e| e.raw_os_error()) == Some(libc::ENOSPC),
        || format!("{err:?}"),
    );
    let cu = OpenOptions::new().write(true).open(mnt.join("big"));
    r.ok(
        "copy-up of a file larger than the free space gives ENOSPC",
        errno_of(&cu) == Some(libc::ENOSPC),
        || format!("{cu:?}"),
    );
    drop(cu);
    r.ok(
        "no half copy left in the work dir",
        work_leftovers(&stack).is_empty(),
        || format!("{:?}", work_leftovers(&stack)),
    );
    r.ok(
        "the lower file still reads whole",
        fs::read(mnt.join("big")).ok().as_deref() == Some(&big[..]),
        || "big changed".into(),
    );
    let mut created = 0;
    let mut last = None;
    for i in 0..1000 {
        match fs::write(mnt.join(format!("tiny{i}")), b"") {
            Ok(()) => created += 1,
            Err(e) => {
                last = e.raw_os_error();
                break;
            }
        }
    }
    r.ok(
        "running out of inodes gives ENOSPC",
        last == Some(libc::ENOSPC),
        || format!("{created} created, then {last:?}"),
    );
    let mk = fs::create_dir(mnt.join("newdir"));
    r.ok(
        "mkdir on a full fs gives ENOSPC",
        errno_of(&mk) == Some(libc::ENOSPC),
        || format!("{mk:?}"),
    );
    let rm = fs::remove_file(mnt.join("small"));
    r.ok(
        "whiteout on a full fs: removed or ENOSPC",
        rm.is_ok() || errno_of(&rm) == Some(libc::ENOSPC),
        || format!("{rm:?}"),
    );
    for (n, data) in &keep {
        r.ok(
            &format!("{n} intact on a full fs"),
            fs::read(mnt.join(n)).ok().as_ref() == Some(data),
            || "changed".into(),
        );
    }
    // Free space: everything works again.
    fs::remove_file(mnt.join("filler")).unwrap();
    for i in 0..created {
        let _ = fs::remove_file(mnt.join(format!("tiny{i}")));
    }
    // A removed file's data is freed at once, but its inode only when the kernel
    // forgets the node (its number must not be reused before): the FORGETs of the tiny
    // files come a little later, and later still while other tests load the CPUs.
    let t0 = std::time::Instant::now();
    let w = loop {
        let w = fs::write(mnt.join("after"), b"space again");
        if w.is_ok() || t0.elapsed() > Duration::from_secs(10) {
            break w;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    r.ok("writes work once space is free", w.is_ok(), || {
        format!("{w:?} (after {:?})", t0.elapsed())
    });
    r.ok("daemon alive", pid_alive(d.pid()), || "daemon died".into());
    let _ = umount(&mnt, false);
    r.ok(
        "daemon exits",
        d.wait_exit(Duration::from_secs(10)).is_some(),
        || "still running".into(),
    );
    let _d2 = Daemon::start(&stack, &mnt, &[]).unwrap();
    for (n, data) in &keep {
        r.ok(
            &format!("{n} intact after remount"),
            fs::read(mnt.join(n)).ok().as_ref() == Some(data),
            || "changed".into(),
        );
    }
    r.ok(
        "lower untouched",
        fs::read(lower.join("big")).unwrap() == big,
        || "lower changed".into(),
    );
    r.check("no hang", wd.disarm());
    drop(_d2);
    r.finish();
}

/// Removing a file frees its data when the removal returns, as on the kernel's
/// overlayfs: not when the kernel later forgets the node (the daemon keeps the removed
/// inode until then, so that its number is not reused while the kernel may still use it).
#[test]
fn removing_a_file_frees_its_data_at_once() {
    if support::skip_unless_root() {
        return;
    }
    let mut r = Report::new("exhaustion", "free-on-unlink");
    let t = tempfile::tempdir().unwrap();
    let upper_fs = t.path().join("fs");
    let _u = Tmpfs::mount(&upper_fs, "size=64m");
    let lower = t.path().join("lower");
    write(&lower.join("lower-file"), b"lower");
    let stack = stack_on(&upper_fs, &lower);
    fs::create_dir_all(upper_fs.join("upper/d")).unwrap();
    // Upper files no handle of this mount ever opens: nothing can delay their freeing
    // but the daemon (a close's RELEASE reaches it after the close returns).
    let big: Vec<u8> = Rng::new(9).bytes(16 << 20);
    for n in ["a", "d/b", "c"] {
        write(&upper_fs.join("upper").join(n), &big);
    }
    let mnt = t.path().join("m");
    let _d = Daemon::start(&stack, &mnt, &[]).unwrap();
    let wd = Watchdog::new("free-on-unlink", 120, vec![mnt.clone()]);
    let free = || rustix::fs::statvfs(&upper_fs).unwrap().f_bfree;
    let freed_by = |before: u64| (free().saturating_sub(before)) * 4096;
    let before = free();
    fs::remove_file(mnt.join("a")).unwrap();
    let got = freed_by(before);
    r.ok(
        "unlink frees the data before it returns",
        got >= 16 << 20,
        || format!("{got} bytes freed"),
    );
    // Kept open through the mount: the data stays while the descriptor reads it.
    let f = File::open(mnt.join("d/b")).unwrap();
    fs::remove_file(mnt.join("d/b")).unwrap();
    let mut back = vec![0u8; 1 << 20];
    f.read_exact_at(&mut back, 5 << 20).unwrap();
    r.ok(
        "an open descriptor still reads the removed file",
        back[..] == big[5 << 20..6 << 20],
        || "data changed".into(),
    );
    // Its freeing waits for the close, which reaches the daemon after `close` returns.
    let before = free();
    drop(f);
    let t0 = std::time::Instant::now();
    while freed_by(before) < 16 << 20 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = freed_by(before);
    r.ok(
        "the last close of a removed file frees it",
        got >= 16 << 20,
        || format!("{got} bytes freed after {:?}", t0.elapsed()),
    );
    // A rename over a file removes it too.
    write(&mnt.join("new"), b"replaces c");
    let before = free();
    fs::rename(mnt.join("new"), mnt.join("c")).unwrap();
    let got = freed_by(before);
    r.ok(
        "a rename over a file frees its data",
        got >= 16 << 20,
        || format!("{got} bytes freed"),
    );
    r.ok(
        "the renamed file reads back",
        fs::read(mnt.join("c")).ok().as_deref() == Some(&b"replaces c"[..]),
        || "wrong content".into(),
    );
    r.check("no hang", wd.disarm());
    r.finish();
}

#[test]
fn daemon_with_a_low_open_file_limit() {
    if support::skip_unless_root() {
        return;
    }
    let mut r = Report::new("exhaustion", "emfile");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 1);
    let n = 200;
    for i in 0..n {
        write(
            &stack.lowers[0].join(format!("d/f{i}")),
            format!("file {i}\n").as_bytes(),
        );
    }
    let mnt = t.path().join("m");
    let mut d = Daemon::start_with(&stack, &mnt, &[], &["prlimit", "--nofile=64:64"]).unwrap();
    let wd = Watchdog::new("emfile", 180, vec![mnt.clone()]);
    let mut open = Vec::new();
    let mut errors = BTreeSet::new();
    for i in 0..n {
        // Half read-only, half for writing (a copy-up each).
        let p = mnt.join(format!("d/f{i}"));
        let res = if i % 2 == 0 {
            File::open(&p)
        } else {
            OpenOptions::new().read(true).write(true).open(&p)
        };
        match res {
            Ok(f) => open.push((i, f)),
            Err(e) => {
                errors.insert(e.raw_os_error().unwrap_or(0));
            }
        }
    }
    r.ok(
        "the daemon's limit shows as EMFILE",
        errors
            .iter()
            .all(|e| *e == libc::EMFILE || *e == libc::ENFILE)
            && !errors.is_empty(),
        || format!("errors {errors:?}, {} opened", open.len()),
    );
    let mut wrong = Vec::new();
    for (i, f) in &open {
        let mut buf = vec![0u8; 64];
        let k = f.read_at(&mut buf, 0).unwrap_or(0);
        if buf[..k] != *format!("file {i}\n").as_bytes() {
            wrong.push(*i);
        }
    }
    r.ok(
        "files opened under the limit read right",
        wrong.is_empty(),
        || format!("{wrong:?}"),
    );
    drop(open);
    std::thread::sleep(Duration::from_millis(200));
    let mut bad = Vec::new();
    for i in 0..n {
        let p = mnt.join(format!("d/f{i}"));
        match OpenOptions::new().read(true).write(true).open(&p) {
            Ok(f) => {
                let mut buf = vec![0u8; 64];
                let k = f.read_at(&mut buf, 0).unwrap_or(0);
                if buf[..k] != *format!("file {i}\n").as_bytes() {
                    bad.push(format!("f{i}: wrong bytes"));
                }
            }
            Err(e) => bad.push(format!("f{i}: {e}")),
        }
    }
    r.ok(
        "after closing, every file opens and reads",
        bad.is_empty(),
        || bad.join(", "),
    );
    r.ok("daemon alive", pid_alive(d.pid()), || "daemon died".into());
    let _ = umount(&mnt, false);
    let _ = d.wait_exit(Duration::from_secs(10));
    r.ok(
        "no half copy in the work dir",
        work_leftovers(&stack).is_empty(),
        || format!("{:?}", work_leftovers(&stack)),
    );
    r.check("no hang", wd.disarm());
    r.finish();
}

#[test]
fn directory_with_very_many_entries() {
    if support::skip_unless_root() {
        return;
    }
    let entries = env_u64("LAYERFS_BIGDIR_ENTRIES", 20_000);
    let mut r = Report::new("exhaustion", "big-dir");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 2);
    for l in &stack.lowers {
        fs::create_dir_all(l.join("big")).unwrap();
    }
    for i in 0..entries {
        let l = &stack.lowers[(i % 2) as usize];
        File::create(l.join(format!("big/e{i:07}"))).unwrap();
    }
    let mnt = t.path().join("m");
    let mut d = Daemon::start(&stack, &mnt, &[]).unwrap();
    let wd = Watchdog::new("big dir", 600 + entries / 500, vec![mnt.clone()]);
    let count = |r: &mut Report, what: &str, want: u64| {
        let mut names = BTreeSet::new();
        let mut dups = 0;
        for e in fs::read_dir(mnt.join("big")).unwrap() {
            if !names.insert(e.unwrap().file_name()) {
                dups += 1;
            }
        }
        r.ok(what, names.len() as u64 == want && dups == 0, || {
            format!("{} names ({dups} duplicates), want {want}", names.len())
        });
    };
    count(&mut r, "every lower entry listed once", entries);
    let added = (entries / 20).max(100);
    for i in 0..added {
        File::create(mnt.join(format!("big/new{i}"))).unwrap();
    }
    let removed = (entries / 40).max(50);
    for i in 0..removed {
        fs::remove_file(mnt.join(format!("big/e{:07}", i * 3))).unwrap();
    }
    count(
        &mut r,
        "after creates and deletes",
        entries + added - removed,
    );
    let st = fs::symlink_metadata(mnt.join(format!("big/e{:07}", entries - 1)));
    r.ok("lookup of the last entry", st.is_ok(), || format!("{st:?}"));
    r.ok("daemon alive", pid_alive(d.pid()), || "daemon died".into());
    let _ = umount(&mnt, false);
    let _ = d.wait_exit(Duration::from_secs(30));
    let _d2 = Daemon::start(&stack, &mnt, &[]).unwrap();
    count(&mut r, "after remount", entries + added - removed);
    r.check("no hang", wd.disarm());
    drop(_d2);
    r.finish();
}

#[test]
fn sparse_file_of_100_gib() {
    if support::skip_unless_root() {
        return;
    }
    let mut r = Report::new("exhaustion", "sparse-100g");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 1);
    let size: u64 = 100 << 30;
    let marks = [0u64, 50 << 30, size - 4096];
    {
        let f = File::create(stack.lowers[0].join("sparse")).unwrap();
        f.set_len(size).unwrap();
        for m in marks {
            f.write_all_at(format!("mark at {m}").as_bytes(), m)
                .unwrap();
        }
    }
    let mnt = t.path().join("m");
    let _d = Daemon::start(&stack, &mnt, &[]).unwrap();
    let wd = Watchdog::new("sparse", 300, vec![mnt.clone()]);
    let p = mnt.join("sparse");
    let check_marks = |r: &mut Report, what: &str| {
        let f = File::open(&p).unwrap();
        for m in marks {
            let want = format!("mark at {m}");
            let mut buf = vec![0u8; want.len()];
            let ok = f.read_at(&mut buf, m).is_ok() && buf == want.as_bytes();
            r.ok(&format!("{what}: data at {m}"), ok, || {
                String::from_utf8_lossy(&buf).into_owned()
            });
        }
        let mut buf = vec![1u8; 4096];
        let ok = f.read_at(&mut buf, 20 << 30).is_ok() && buf.iter().all(|b| *b == 0);
        r.ok(&format!("{what}: a hole reads zeros"), ok, || {
            "not zeros".into()
        });
        let data = seek(&f, SeekFrom::Data(4096));
        r.ok(
            &format!("{what}: SEEK_DATA skips the hole"),
            data == Ok(50 << 30),
            || format!("SEEK_DATA from 4096 = {data:?}"),
        );
    };
    check_marks(&mut r, "lower");
    // Copy-up keeps the holes.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(b"written", size - 7).unwrap();
    f.sync_all().unwrap();
    let up = fs::metadata(stack.upper.as_ref().unwrap().join("sparse")).unwrap();
    r.ok("the copy is sparse", up.blocks() * 512 < 64 << 20, || {
        format!("{} bytes allocated", up.blocks() * 512)
    });
    r.ok("size kept", f.metadata().unwrap().len() == size, || {
        "size".into()
    });
    check_marks(&mut r, "after copy-up");
    f.set_len(2 * size).unwrap();
    let mut buf = [0u8; 7];
    f.read_at(&mut buf, size - 7).unwrap();
    r.ok(
        "grown to 200 GiB, data kept",
        &buf == b"written" && f.metadata().unwrap().len() == 2 * size,
        || format!("{buf:?}"),
    );
    f.set_len(size / 2).unwrap();
    let mut buf = [0u8; 16];
    let n = f.read_at(&mut buf, size / 2 - 8).unwrap();
    r.ok(
        "shrunk to 50 GiB",
        n == 8 && f.metadata().unwrap().len() == size / 2,
        || format!("read {n}"),
    );
    // A new 100 GiB sparse file made through the mount.
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(mnt.join("new-sparse"))
        .unwrap();
    g.set_len(size).unwrap();
    g.write_all_at(b"end", size - 3).unwrap();
    g.sync_all().unwrap();
    let mut e = [0u8; 3];
    g.read_at(&mut e, size - 3).unwrap();
    r.ok("new 100 GiB sparse file", &e == b"end", || format!("{e:?}"));
    drop((f, g));
    r.check("no hang", wd.disarm());
    r.finish();
}
