//! A copy-up shows before its data is on disk, under a record in the work dir
//! (`#sync.N`: the boot, the copy's inode on disk, its path in the upper dir) that a
//! background thread drops once the copy is synced. What a crash leaves must settle to
//! the lower file or the whole copy: a record from this boot keeps the copy, one from
//! an earlier boot (a power cut) removes it. A reboot cannot be made here, so these
//! tests forge the record a power cut would leave, in the format the overlay writes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use support::files::*;
use support::fingerprint::*;
use support::procs::*;
use support::stack::*;
use support::store_env::*;
use support::tree::*;

const SIZE: usize = 64 << 20;

fn records(work: &Path) -> Vec<String> {
    fs::read_dir(work.join("work"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("#sync."))
                .collect()
        })
        .unwrap_or_default()
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

/// The record a daemon leaves for a copy at `path` (relative to the upper dir) that the
/// mount shows as inode `ino`, made in boot `boot`.
fn forge_record(work: &Path, upper: &Path, path: &str, ino: u64, boot: &str) {
    let disk_ino = fs::metadata(upper.join(path)).unwrap().ino();
    fs::write(
        work.join("work").join(format!("#sync.{ino}")),
        format!("{boot}\n{disk_ino}\n{path}"),
    )
    .unwrap();
}

fn big_lower(t: &Path) -> PathBuf {
    let l = t.join("l");
    fs::create_dir_all(l.join("dir")).unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    write(&l.join("dir/big"), &data);
    write(&l.join("dir/small"), b"small");
    l
}

/// A scratch dir with the big lower layer, a writable stack over it (`tag`) and the
/// mountpoint's path.
fn big_stack(tag: &str) -> (tempfile::TempDir, PathBuf, Stack, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let l = big_lower(t.path());
    let s = rw_stack(t.path(), std::slice::from_ref(&l), tag);
    let m = t.path().join("m");
    (t, l, s, m)
}

/// Append one byte through the mount; the inode number the mount shows.
fn append(m: &Path, sync: bool) -> u64 {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(m.join("dir/big"))
        .unwrap();
    f.write_all(b"+").unwrap();
    if sync {
        f.sync_all().unwrap();
    }
    f.metadata().unwrap().ino()
}

#[test]
fn a_copy_is_recorded_until_it_is_synced() {
    if support::skip_unless_root() {
        return;
    }
    let (_t, _, s, m) = big_stack("u");
    let work = s.work.clone().unwrap();
    let g = mount_layerfs(&s, &m, &[]);
    // Without an fsync the record is there as the append returns (the sync starts
    // 10 ms after the copy shows, and writing 64 MiB takes longer still), and goes
    // once the copy is on disk.
    append(&m, false);
    assert_eq!(
        records(&work).len(),
        1,
        "no record while the copy is synced"
    );
    let t0 = Instant::now();
    while !records(&work).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the record stays");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(g);
}

/// Every operation that must not race a copy's sync waits for it: an `fsync` of the
/// copy, an `O_SYNC` open that copies up, and a rename, link or unlink of a copy still
/// being synced.
#[test]
fn fsync_sync_opens_renames_links_and_unlinks_wait_for_the_copy() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = big_lower(t.path());
    type Op = (&'static str, fn(&Path));
    let ops: [Op; 5] = [
        ("fsync", |m| {
            append(m, true);
        }),
        ("O_SYNC open", |m| {
            fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_SYNC | libc::O_NOFOLLOW)
                .open(m.join("dir/big"))
                .map(drop)
                .unwrap()
        }),
        ("rename", |m| {
            append(m, false);
            fs::rename(m.join("dir/big"), m.join("dir/moved")).unwrap()
        }),
        ("link", |m| {
            append(m, false);
            fs::hard_link(m.join("dir/big"), m.join("dir/second")).unwrap()
        }),
        ("unlink", |m| {
            append(m, false);
            fs::remove_file(m.join("dir/big")).unwrap()
        }),
    ];
    let m = t.path().join("m");
    for (i, (what, op)) in ops.iter().enumerate() {
        let s = rw_stack(t.path(), std::slice::from_ref(&l), &format!("u{i}"));
        let g = mount_layerfs(&s, &m, &[]);
        op(&m);
        assert_eq!(
            records(s.work.as_ref().unwrap()),
            Vec::<String>::new(),
            "{what} returned before the copy's sync"
        );
        drop(g);
    }
}

/// The daemon dies right after a copy-up (its sync not done): the next mount, in the
/// same boot, keeps the copy, syncs it and drops the record.
#[test]
fn a_daemon_killed_before_the_sync_keeps_the_copy() {
    if support::skip_unless_root() {
        return;
    }
    let (_t, l, s, m) = big_stack("u");
    let check = LowersUnchanged::record(std::slice::from_ref(&l));
    let work = s.work.clone().unwrap();
    let mut g = mount_layerfs(&s, &m, &[]);
    let pid = daemon_pid(&m).expect("daemon pid");
    append(&m, false);
    signal(pid, Signal::KILL);
    g.unmount();
    if records(&work).is_empty() {
        eprintln!("note: the sync finished before the kill: only the copy is checked");
    }
    let g2 = mount_layerfs(&s, &m, &[]);
    assert_eq!(
        records(&work),
        Vec::<String>::new(),
        "a record outlived the mount"
    );
    let data = fs::read(m.join("dir/big")).unwrap();
    assert_eq!(data.len(), SIZE + 1);
    assert_eq!(data[SIZE], b'+');
    drop(g2);
    check.check();
}

/// What a power cut in the middle of a sync leaves: the copy in place and its record
/// from an earlier boot. The next mount removes the copy: the lower file shows again,
/// whole, as the kernel's overlayfs then shows it too.
#[test]
fn a_copy_recorded_in_an_earlier_boot_gives_way_to_the_lower_file() {
    if support::skip_unless_root() {
        return;
    }
    let (t, l, s, m) = big_stack("u");
    let check = LowersUnchanged::record(std::slice::from_ref(&l));
    let (upper, work) = (s.upper.clone().unwrap(), s.work.clone().unwrap());
    let g = mount_layerfs(&s, &m, &[]);
    let ino = append(&m, true);
    fs::write(m.join("dir/new"), b"new").unwrap();
    drop(g);
    assert!(upper.join("dir/big").exists());
    forge_record(&work, &upper, "dir/big", ino, "an-earlier-boot");
    let g2 = mount_layerfs(&s, &m, &[]);
    assert_eq!(records(&work), Vec::<String>::new());
    assert!(!upper.join("dir/big").exists(), "the unsynced copy stays");
    assert_eq!(
        fs::read(m.join("dir/big")).unwrap(),
        fs::read(l.join("dir/big")).unwrap()
    );
    assert_eq!(
        fs::metadata(m.join("dir/big")).unwrap().ino(),
        ino,
        "its number changed"
    );
    assert_eq!(fs::read(m.join("dir/new")).unwrap(), b"new");
    let ours = snapshot(&m, &SnapOpts::default());
    drop(g2);
    assert_kernel_shows(&s, &t.path().join("k"), &ours, "kernel view after settling");
    // A record of this boot for the same kind of copy keeps it.
    let g3 = mount_layerfs(&s, &m, &[]);
    let ino = append(&m, true);
    drop(g3);
    forge_record(&work, &upper, "dir/big", ino, &boot_id());
    let g4 = mount_layerfs(&s, &m, &[]);
    assert_eq!(records(&work), Vec::<String>::new());
    assert_eq!(
        fs::metadata(m.join("dir/big")).unwrap().len(),
        SIZE as u64 + 1
    );
    drop(g4);
    check.check();
}

/// `diff` and `commit` read a container's upper dir without mounting it: they settle
/// first, so a copy from before a restart is not reported (or committed) as a change.
#[test]
fn diff_of_a_container_settles_its_copies_first() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let id = env.create("sample:1", "c1");
    let m = env.mount("c1");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("etc/os-release"))
        .unwrap();
    f.write_all(b"X=1\n").unwrap();
    f.sync_all().unwrap();
    let ino = f.metadata().unwrap().ino();
    drop(f);
    env.ok(&["umount", "c1"]);
    assert_eq!(env.ok(&["diff", "c1"]), "C /etc\nC /etc/os-release\n");
    let dir = env.root.join("containers").join(&id);
    forge_record(
        &dir.join("work"),
        &dir.join("upper"),
        "etc/os-release",
        ino,
        "an-earlier-boot",
    );
    assert_eq!(env.ok(&["diff", "c1"]), "C /etc\n");
    assert_eq!(records(&dir.join("work")), Vec::<String>::new());
}
