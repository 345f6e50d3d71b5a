//! A daemon killed with SIGKILL in the middle of copying up a large file: after a new
//! mount the file is either the untouched lower version or the complete copy, the work
//! dir holds no leftovers, and the kernel's overlayfs shows the same tree.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use support::files::*;
use support::fingerprint::*;
use support::procs::*;
use support::stack::*;
use support::tree::*;

const SIZE: usize = 256 << 20;

/// 4 KiB blocks, each stamped with its index, so a partial or shifted copy shows.
fn block(i: usize) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8; 4096];
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b
}

fn check_content(p: &Path) {
    let data = fs::read(p).unwrap();
    assert_eq!(data.len(), SIZE, "{}: wrong size", p.display());
    for (i, c) in data.chunks(4096).enumerate() {
        assert!(
            c == block(i).as_slice(),
            "{}: block {i} differs",
            p.display()
        );
    }
}

/// Entries of the scratch dir layerfs copies up in.
fn work_entries(work: &Path) -> Vec<(String, u64)> {
    match fs::read_dir(work.join("work")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Kill the daemon once the copy in the work dir has `min` bytes (or has begun, for 0).
fn crash_during_copy_up(min: u64) {
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    fs::create_dir_all(l.join("dir")).unwrap();
    let mut f = fs::File::create(l.join("dir/big")).unwrap();
    for i in 0..SIZE / 4096 {
        f.write_all(&block(i)).unwrap();
    }
    drop(f);
    write(&l.join("dir/other"), b"other");
    let check = LowersUnchanged::record(std::slice::from_ref(&l));
    let s = rw_stack(t.path(), std::slice::from_ref(&l), "u");
    let work = s.work.clone().unwrap();
    let m = t.path().join("m");
    let mut g = mount_layerfs(&s, &m, &[]);
    let pid = daemon_pid(&m).expect("daemon pid");
    let target = m.join("dir/big");
    let writer = std::thread::spawn(move || {
        // Opening for writing copies the file up; the open fails once the daemon dies.
        fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(target)
            .map(|_| ())
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_at = loop {
        let w = work_entries(&work);
        if let Some((_, len)) = w
            .iter()
            .find(|(n, len)| n.starts_with('#') && *len >= min.max(1))
        {
            signal(pid, Signal::KILL);
            break *len;
        }
        assert!(Instant::now() < deadline, "no copy-up seen in the work dir");
        assert!(
            !writer.is_finished(),
            "the copy-up finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_micros(200));
    };
    let r = writer.join().unwrap();
    assert!(
        r.is_err(),
        "the open succeeded although the daemon was killed"
    );
    g.unmount();
    // The kill should leave the partial copy in the work dir (or, if it came late, the
    // finished copy in place). Rarely (twice in a few dozen runs) neither was there; what
    // matters below holds either way: the next mount cleans up and shows a whole file.
    if work_entries(&work).is_empty()
        && fs::symlink_metadata(s.upper.as_ref().unwrap().join("dir/big")).is_err()
    {
        eprintln!(
            "note: killed at {killed_at} bytes, and neither a partial nor a finished copy \
             is left (the open said {r:?})"
        );
    }
    // A new mount cleans the work dir and shows a whole file.
    let g2 = mount_layerfs(&s, &m, &[]);
    assert_eq!(
        work_entries(&work),
        Vec::new(),
        "leftovers in the work dir after a new mount"
    );
    check_content(&m.join("dir/big"));
    assert_eq!(fs::read(m.join("dir/other")).unwrap(), b"other");
    let ours = snapshot(&m, &SnapOpts::default());
    drop(g2);
    // Whether the kill came before or after the parent's copy-up decides if the kernel
    // shows `dir` as merged; see `accept_visible_link_counts` for the link counts.
    assert_kernel_shows(
        &s,
        &t.path().join("k"),
        &ours,
        "kernel view after the crash",
    );
    // The interrupted copy-up can be done again.
    let g3 = mount_layerfs(&s, &m, &[]);
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("dir/big"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    assert_eq!(
        fs::metadata(m.join("dir/big")).unwrap().len(),
        SIZE as u64 + 1
    );
    drop(g3);
    check.check();
}

#[test]
fn sigkill_as_copy_up_begins() {
    if support::skip_unless_root() {
        return;
    }
    crash_during_copy_up(0);
}

#[test]
fn sigkill_in_the_middle_of_copy_up() {
    if support::skip_unless_root() {
        return;
    }
    crash_during_copy_up(64 << 20);
}
