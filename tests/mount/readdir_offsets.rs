//! Directory listings with stable offsets: a large directory read in many small
//! `getdents64` calls, `telldir`/`seekdir` back and forth, and changes made while a
//! listing is open never make a name appear twice or go missing. Each runs on a merged
//! directory (hash-ordered listing) and on a directory that one layer has (listed by
//! position, as it is read).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsString};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, RawDir, SeekFrom, open, seek};

use support::files::*;
use support::fingerprint::*;
use support::stack::*;

/// One `linux_dirent64` record.
#[derive(Debug, Clone)]
struct Dent {
    ino: u64,
    off: i64,
    name: OsString,
}

/// An open directory fd.
struct DirFd(OwnedFd);

impl DirFd {
    fn open(p: &Path) -> DirFd {
        let fd = open(
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        DirFd(fd)
    }

    /// One `getdents64` call with a buffer of `size` bytes.
    fn getdents(&self, size: usize) -> Vec<Dent> {
        let mut buf = Vec::<u8>::with_capacity(size);
        let spare = buf.spare_capacity_mut();
        // `RawDir` would skip bytes to align the records: the call must get all `size`.
        assert_eq!(spare.as_ptr().align_offset(8), 0, "unaligned buffer");
        let mut dir = RawDir::new(&self.0, &mut spare[..size]);
        let mut out = Vec::new();
        // The first `next` makes the call; stop when what it returned is used up.
        while let Some(e) = dir.next() {
            let e = e.unwrap_or_else(|e| panic!("getdents64: {e}"));
            out.push(Dent {
                ino: e.ino(),
                off: e.next_entry_cookie() as i64,
                name: OsString::from_vec(e.file_name().to_bytes().to_vec()),
            });
            if dir.is_buffer_empty() {
                break;
            }
        }
        out
    }

    fn seek(&self, off: i64) {
        let r = seek(&self.0, SeekFrom::Start(off as u64));
        assert_eq!(r, Ok(off as u64), "lseek");
    }

    /// Read to the end with `size`-byte calls.
    fn read_all(&self, size: usize) -> Vec<Dent> {
        let mut all = Vec::new();
        loop {
            let batch = self.getdents(size);
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }
}

fn names(d: &[Dent]) -> Vec<OsString> {
    d.iter().map(|e| e.name.clone()).collect()
}

fn assert_no_repeats(d: &[Dent], what: &str) {
    let mut seen = BTreeSet::new();
    for e in d {
        assert!(
            seen.insert(e.name.clone()),
            "{what}: {:?} listed twice",
            e.name
        );
    }
}

/// A merged dir of `n` names over three layers, with duplicates and whiteouts.
fn big_stack(base: &Path, n: usize) -> Vec<PathBuf> {
    let l: Vec<PathBuf> = (0..3).map(|i| base.join(format!("l{i}"))).collect();
    for d in &l {
        fs::create_dir_all(d.join("big")).unwrap();
    }
    for i in 0..n {
        fs::write(
            l[i % 3]
                .join("big")
                .join(format!("name-{i:05}-{}", "x".repeat(i % 40))),
            b"",
        )
        .unwrap();
    }
    for i in (0..n).step_by(5) {
        let name = format!("name-{i:05}-{}", "x".repeat(i % 40));
        fs::write(l[0].join("big").join(&name), b"dup").unwrap();
    }
    for i in (1..n).step_by(11) {
        let name = format!("name-{i:05}-{}", "x".repeat(i % 40));
        if i % 3 == 2 && i % 5 != 0 {
            kernel_whiteout(&l[1].join("big").join(name));
        }
    }
    l
}

/// A directory `big` of `n` names that only one layer has (a second layer beside it).
fn one_layer_stack(base: &Path, n: usize) -> Vec<PathBuf> {
    let l: Vec<PathBuf> = (0..2).map(|i| base.join(format!("l{i}"))).collect();
    fs::create_dir_all(l[0].join("big")).unwrap();
    fs::create_dir_all(l[1].join("other")).unwrap();
    for i in 0..n {
        let name = format!("name-{i:05}-{}", "x".repeat(i % 40));
        fs::write(l[0].join("big").join(name), b"").unwrap();
    }
    l
}

/// How a listing's offsets look: positions below 2^62 for a one-layer directory,
/// keyed hashes at or above it for a merged one (`.` and `..` are 1 and 2 in both).
fn assert_offsets_of(all: &[Dent], positional: bool) {
    let names = all.iter().filter(|e| e.name != "." && e.name != "..");
    for e in names {
        assert_eq!(
            (e.off as u64) < 1 << 62,
            positional,
            "{:?} at offset {:#x}",
            e.name,
            e.off
        );
    }
}

type Layout = fn(&Path, usize) -> Vec<PathBuf>;

/// The names a kernel overlay of the same stack lists (without `.` and `..`).
fn kernel_names(base: &Path, lowers: &[PathBuf], dir: &str) -> BTreeSet<OsString> {
    let km = base.join("kernel-view");
    let _g = mount_kernel(&Stack::ro(lowers.to_vec()), &km);
    fs::read_dir(km.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}

#[test]
fn large_dir_read_in_many_small_calls() {
    large_dir_read_in_many_small_calls_in(big_stack, false);
}

#[test]
fn large_one_layer_dir_read_in_many_small_calls() {
    large_dir_read_in_many_small_calls_in(one_layer_stack, true);
}

fn large_dir_read_in_many_small_calls_in(layout: Layout, positional: bool) {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path(), 6000);
    let want = kernel_names(t.path(), &l, "big");
    let lm = t.path().join("m");
    let _g = mount_layerfs(&Stack::ro(l.clone()), &lm, &[]);
    for size in [300usize, 1024, 4096, 32768] {
        let d = DirFd::open(&lm.join("big"));
        let all = d.read_all(size);
        assert_no_repeats(&all, &format!("buffer {size}"));
        let got: BTreeSet<OsString> = names(&all)
            .into_iter()
            .filter(|n| n != "." && n != "..")
            .collect();
        assert_eq!(got.len(), want.len(), "buffer {size}: count");
        assert!(got == want, "buffer {size}: names differ from the kernel's");
        // Offsets increase, so a reader may resume at any of them.
        assert!(
            all.windows(2).all(|w| w[0].off < w[1].off),
            "buffer {size}: offsets not increasing"
        );
        assert_offsets_of(&all, positional);
    }
}

#[test]
fn seeking_back_and_forth_gives_the_same_entries() {
    seeking_back_and_forth_in(big_stack);
}

#[test]
fn seeking_back_and_forth_in_a_one_layer_dir() {
    seeking_back_and_forth_in(one_layer_stack);
}

fn seeking_back_and_forth_in(layout: Layout) {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path(), 3000);
    let lm = t.path().join("m");
    let _g = mount_layerfs(&Stack::ro(l), &lm, &[]);
    let d = DirFd::open(&lm.join("big"));
    let all = d.read_all(2048);
    // Each entry's d_off is where the next one starts (telldir after reading it).
    let next_of: BTreeMap<i64, OsString> = all
        .windows(2)
        .map(|w| (w[0].off, w[1].name.clone()))
        .collect();
    let mut positions: Vec<i64> = next_of.keys().copied().collect();
    // A fixed shuffle: every seventh position, backwards, then the rest.
    positions.sort_by_key(|p| (p % 7 != 0, -p));
    for p in positions.iter().take(600) {
        d.seek(*p);
        let first = d.getdents(512);
        assert_eq!(
            first.first().map(|e| &e.name),
            next_of.get(p),
            "after seeking to {p}"
        );
    }
    // Resuming from the middle reads exactly the rest.
    let mid = all[all.len() / 2].off;
    d.seek(mid);
    let rest = d.read_all(700);
    assert_eq!(names(&rest), names(&all[all.len() / 2 + 1..]));
    // And back to the start: everything again.
    d.seek(0);
    assert_eq!(names(&d.read_all(4096)), names(&all));
}

/// The libc interface (`telldir`/`seekdir` with a `DIR*` stream), as programs use it:
/// the C library's stream buffering is the point, so this calls libc, not rustix.
#[test]
fn telldir_and_seekdir() {
    telldir_and_seekdir_in(big_stack);
}

#[test]
fn telldir_and_seekdir_in_a_one_layer_dir() {
    telldir_and_seekdir_in(one_layer_stack);
}

#[allow(unsafe_code)]
fn telldir_and_seekdir_in(layout: Layout) {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path(), 1500);
    let lm = t.path().join("m");
    let _g = mount_layerfs(&Stack::ro(l), &lm, &[]);
    let c = CString::new(lm.join("big").as_os_str().as_bytes()).unwrap();
    // SAFETY: opendir/readdir/telldir/seekdir/closedir on one stream owned here; each
    // dirent pointer is read before the next call on the stream.
    unsafe {
        let dir = libc::opendir(c.as_ptr());
        assert!(!dir.is_null());
        let mut seen = Vec::new();
        loop {
            let pos = libc::telldir(dir);
            let e = libc::readdir(dir);
            if e.is_null() {
                break;
            }
            let name = CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec();
            seen.push((pos, name));
        }
        let uniq: BTreeSet<&Vec<u8>> = seen.iter().map(|(_, n)| n).collect();
        assert_eq!(uniq.len(), seen.len(), "a name listed twice");
        for (pos, name) in seen.iter().rev().step_by(13) {
            libc::seekdir(dir, *pos);
            let e = libc::readdir(dir);
            assert!(!e.is_null());
            assert_eq!(
                &CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec(),
                name
            );
        }
        libc::closedir(dir);
    }
}

/// Names created or removed while a listing is being read: every name that exists the
/// whole time is listed exactly once; after a rewind the listing is current.
#[test]
fn changes_during_a_listing() {
    changes_during_a_listing_in(big_stack);
}

/// The same in a directory that one layer has: its first change makes it merged while
/// the reader is in the middle of its positional listing (the reader goes on through
/// the lower directory; a rewind gets the merged listing).
#[test]
fn changes_during_a_listing_of_a_one_layer_dir() {
    changes_during_a_listing_in(one_layer_stack);
}

fn changes_during_a_listing_in(layout: Layout) {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path(), 2000);
    let lowers_check = LowersUnchanged::record(&l);
    let s = rw_stack(t.path(), &l, "x");
    let lm = t.path().join("m");
    let g = mount_layerfs(&s, &lm, &[]);
    let big = lm.join("big");
    let before: BTreeSet<OsString> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let d = DirFd::open(&big);
    let mut got = d.getdents(4096);
    // Remove some names (lower and upper), add new ones, copy one up, mid-listing.
    let removed: Vec<OsString> = before.iter().step_by(9).cloned().collect();
    for n in &removed {
        fs::remove_file(big.join(n)).unwrap();
    }
    for i in 0..300 {
        fs::write(big.join(format!("new-{i}")), b"n").unwrap();
    }
    fs::write(big.join(before.iter().nth(5).unwrap()), b"rewritten").unwrap();
    got.extend(d.read_all(1024));
    assert_no_repeats(&got, "during changes");
    let got: BTreeSet<OsString> = names(&got).into_iter().collect();
    for n in before.iter().filter(|n| !removed.contains(n)) {
        assert!(got.contains(n), "{n:?} skipped");
    }
    d.seek(0);
    let now: BTreeSet<OsString> = names(&d.read_all(8192))
        .into_iter()
        .filter(|n| n != "." && n != "..")
        .collect();
    let want: BTreeSet<OsString> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(now, want, "after rewinding");
    assert_eq!(now.len(), before.len() - removed.len() + 300);
    drop(d);
    drop(g);
    lowers_check.check();
}

/// `d_ino` from readdir is the `st_ino` of the name, in merged dirs, after copy-ups,
/// renames and new files (programs like `find` and `du` rely on it).
#[test]
fn readdir_inode_numbers_match_stat() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = big_stack(t.path(), 300);
    write(&l[2].join("big/sub/deep"), b"d");
    write(&l[1].join("big/sub/deep2"), b"d");
    let s = rw_stack(t.path(), &l, "x");
    let lm = t.path().join("m");
    let _g = mount_layerfs(&s, &lm, &[]);
    let big = lm.join("big");
    let check = |what: &str| {
        let d = DirFd::open(&big);
        for e in d.read_all(4096) {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let st = lstat(&big.join(&e.name)).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(e.ino, st.ino(), "{what}: {:?}", e.name);
        }
    };
    check("lower only");
    let names: Vec<OsString> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for n in names.iter().step_by(4) {
        if n != "sub" {
            fs::OpenOptions::new()
                .append(true)
                .open(big.join(n))
                .unwrap();
        }
    }
    fs::rename(big.join(&names[1]), big.join("renamed")).unwrap();
    fs::rename(big.join("sub"), big.join("sub-renamed")).unwrap();
    fs::write(big.join("brand-new"), b"n").unwrap();
    check("after changes");
}

/// The kernel keeps one listing cache per directory, filled by whichever reader is at its
/// end, and checks it against the directory's change counter only when a reader is at
/// offset 0. A reader that started after a change, read its first entries from us
/// because the cache was still being filled, and continues once a slower reader that
/// started before the change has completed the cache, was served the old entries after
/// its first batch: a name created before that reader opened the directory was missing.
/// The daemon drops a directory's kernel listing cache whenever its entries change.
fn listing_started_after_a_create_sees_it(opts: &[&str]) {
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("l0");
    let lower1 = t.path().join("l1");
    let n = 600;
    // `d` is merged (both layers have it), so its listing is hash-ordered.
    for i in 0..n - 1 {
        write(&lower.join(format!("d/name-{i:04}")), b"");
    }
    write(&lower1.join(format!("d/name-{:04}", n - 1)), b"");
    fs::create_dir_all(lower.join("scratch")).unwrap();
    let s = rw_stack(t.path(), &[lower, lower1], "x");
    let lm = t.path().join("m");
    let _g = mount_layerfs(&s, &lm, opts);
    let d = lm.join("d");
    // Offsets of merged listings are a keyed hash of the name, the same in every
    // directory of a mount: learn some candidates' offsets in another directory (merged
    // once a name is created in it).
    let scratch = lm.join("scratch");
    for i in 0..64 {
        write(&scratch.join(format!("new-{i}")), b"");
    }
    let cand: BTreeMap<OsString, i64> = DirFd::open(&scratch)
        .read_all(4096)
        .into_iter()
        .map(|e| (e.name, e.off))
        .collect();

    // A (slow) reads every entry in small calls, filling the kernel's cache, but has not
    // yet made the call that finds the end.
    let a = DirFd::open(&d);
    let mut seen_a = Vec::new();
    while seen_a.len() < n + 2 {
        let batch = a.getdents(2048);
        assert!(!batch.is_empty(), "A: listing ended early");
        seen_a.extend(batch);
    }
    let mut offs: Vec<i64> = seen_a.iter().map(|e| e.off).collect();
    offs.sort();
    // A name whose offset lies in the middle of the listing.
    let (lo, hi) = (offs[offs.len() * 2 / 5], offs[offs.len() * 3 / 5]);
    let new = cand
        .iter()
        .find(|(_, o)| (lo..hi).contains(*o))
        .map(|(n, _)| n.clone())
        .expect("a candidate name in the middle of the listing");
    write(&d.join(&new), b"created before B opens the directory");

    // B opens the directory after the create returned and reads a first small batch
    // (from the daemon: the cache is not complete yet).
    let b = DirFd::open(&d);
    let mut seen_b = b.getdents(512);
    assert!(
        seen_b.last().is_some_and(|e| e.off < lo),
        "B's first batch should end before the new name"
    );
    // A reaches the end: the kernel marks its cache complete.
    assert!(a.getdents(2048).is_empty(), "A: expected the end");
    // B reads the rest.
    seen_b.extend(b.read_all(4096));
    assert_no_repeats(&seen_b, "B");
    let got: BTreeSet<OsString> = names(&seen_b).into_iter().collect();
    assert!(
        got.contains(&new),
        "B's listing misses {new:?}, created before B opened the directory"
    );
    assert_eq!(got.len(), n + 3, "B: {} entries", got.len());
}

#[test]
fn listing_started_after_a_create_sees_it_default() {
    if support::skip_unless_root() {
        return;
    }
    listing_started_after_a_create_sees_it(&[]);
}

#[test]
fn listing_started_after_a_create_sees_it_without_readdirplus() {
    if support::skip_unless_root() {
        return;
    }
    listing_started_after_a_create_sees_it(&["readdirplus=off"]);
}
