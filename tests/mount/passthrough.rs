//! Lower files pass through by default: their reads go straight to the lower file (one
//! page cache for every mount of a layer), and the kernel pins an inode's open files to
//! one backing file. These tests pin what happens when an open needs the upper copy
//! while descriptors are pinned to the lower file:
//!
//! - the open succeeds (never `EBUSY`, `EIO` or `ESTALE` for the application) and nothing
//!   is written into the lower layer;
//! - the old descriptors keep reading the lower file (the accepted difference: the
//!   kernel's overlayfs reads the copy through them, except through `MAP_SHARED`
//!   mappings, which keep the lower file there too);
//! - the file's names move to a new kernel inode, whose number comes from the successor
//!   range until the next mount; metadata-only copy-ups and opens one after another
//!   never move anything.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::files::*;
use support::fingerprint::*;
use support::mounts::*;
use support::stack::*;
use support::tree::SUCCESSOR_INOS;

/// A writable mount (default options) of one lower layer with `f` and two hard links.
struct Env {
    t: tempfile::TempDir,
    s: Stack,
    m: PathBuf,
    g: Option<MountGuard>,
    check: LowersUnchanged,
}

impl Env {
    fn new(extra: &[&str]) -> Env {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("l");
        fs::create_dir_all(l.join("d")).unwrap();
        write(&l.join("f"), b"old content\n");
        write(&l.join("d/h1"), b"linked\n");
        fs::hard_link(l.join("d/h1"), l.join("h2")).unwrap();
        write(&l.join("big"), &vec![7u8; 1 << 20]);
        let check = LowersUnchanged::record(std::slice::from_ref(&l));
        let s = rw_stack(t.path(), &[l], "u");
        let m = t.path().join("m");
        let g = Some(mount_layerfs(&s, &m, extra));
        Env { t, s, m, g, check }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.m.join(rel)
    }

    fn remount(&mut self) {
        self.g.take().unwrap().unmount();
        self.g = Some(mount_layerfs(&self.s, &self.m, &[]));
    }

    fn finish(mut self) {
        if let Some(mut g) = self.g.take() {
            g.unmount();
        }
        self.check.check();
    }
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

fn read_all(mut f: &fs::File) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

/// Wait until `cond` holds (the kernel drops other names of a moved file in the
/// background).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn writing_while_a_reader_is_pinned_moves_the_file_to_a_new_inode() {
    if support::skip_unless_root() {
        return;
    }
    let mut e = Env::new(&[]);
    let before = ino(&e.p("f"));
    let r = fs::File::open(e.p("f")).unwrap();
    assert_eq!(read_all(&r), "old content\n");

    // The write open succeeds and writes the copy, never the lower file.
    let w = fs::OpenOptions::new().write(true).open(e.p("f")).unwrap();
    w.write_all_at(b"NEW", 0).unwrap();
    drop(w);

    // The old descriptor still reads the lower file; new opens read the copy.
    let mut buf = [0u8; 12];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(
        &buf, b"old content\n",
        "the pinned descriptor reads the lower file"
    );
    assert_eq!(fs::read(e.p("f")).unwrap(), b"NEW content\n");
    assert_eq!(
        r.metadata().unwrap().ino(),
        before,
        "the old descriptor keeps its number"
    );
    let now = ino(&e.p("f"));
    assert!(now >= SUCCESSOR_INOS, "a new kernel inode: {now:#x}");

    // The old descriptor's attributes follow the file (its size, its mode).
    fs::set_permissions(e.p("f"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(r.metadata().unwrap().mode() & 0o777, 0o600);
    r.set_permissions(fs::Permissions::from_mode(0o640))
        .unwrap();
    assert_eq!(fs::metadata(e.p("f")).unwrap().mode() & 0o777, 0o640);
    drop(r);

    // After a remount the file has its own number again, with the new content.
    e.remount();
    assert_eq!(ino(&e.p("f")), before);
    assert_eq!(fs::read(e.p("f")).unwrap(), b"NEW content\n");
    e.finish();
}

#[test]
fn opens_one_after_another_never_move_the_file() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::new(&[]);
    let before = ino(&e.p("f"));
    // The kernel sends RELEASE in the background after a close: a write open right after
    // must not take the closed reader for a live one.
    for i in 0..200 {
        drop(fs::read(e.p("f")).unwrap());
        let w = fs::OpenOptions::new().write(true).open(e.p("f")).unwrap();
        w.write_all_at(format!("{i:03}").as_bytes(), 0).unwrap();
        drop(w);
        assert_eq!(ino(&e.p("f")), before, "round {i}");
    }
    // Metadata-only copy-ups with a reader open move nothing either, and a new
    // read-only open shares the reader's lower file (the bytes are the same).
    let r = fs::File::open(e.p("big")).unwrap();
    let big = ino(&e.p("big"));
    fs::set_permissions(e.p("big"), fs::Permissions::from_mode(0o640)).unwrap();
    lchown(&e.p("big"), 1000, 1000);
    set_times(&e.p("big"), 1_000_000, 0);
    let again = fs::File::open(e.p("big")).unwrap();
    assert_eq!(again.metadata().unwrap().ino(), big);
    assert_eq!(fs::read(e.p("big")).unwrap(), vec![7u8; 1 << 20]);
    assert_eq!(ino(&e.p("big")), big);
    drop((r, again));
    e.finish();
}

#[test]
fn a_truncate_while_a_reader_is_pinned_reaches_later_opens() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::new(&[]);
    let r = fs::File::open(e.p("big")).unwrap();
    truncate(&e.p("big"), 10).unwrap();
    assert_eq!(fs::metadata(e.p("big")).unwrap().len(), 10);
    assert_eq!(fs::read(e.p("big")).unwrap(), vec![7u8; 10]);
    // A read-only open with O_TRUNC truncates too (the copy it opens).
    let fd = rustix::fs::open(
        e.p("f"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::TRUNC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(rustix::io::read(&fd, &mut buf).unwrap(), 0);
    drop(fd);
    drop(r);
    e.finish();
}

#[test]
fn other_names_of_a_moved_hard_link_follow_it() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::new(&[]);
    let r = fs::File::open(e.p("d/h1")).unwrap();
    let w = fs::OpenOptions::new().write(true).open(e.p("h2")).unwrap();
    w.write_all_at(b"LINKED", 0).unwrap();
    drop(w);
    eventually("both names show one inode", || {
        ino(&e.p("d/h1")) == ino(&e.p("h2"))
    });
    assert_eq!(fs::metadata(e.p("h2")).unwrap().nlink(), 2);
    assert_eq!(fs::read(e.p("d/h1")).unwrap(), b"LINKED\n");
    drop(r);
    e.finish();
}

#[test]
fn readers_and_writers_at_once_never_see_an_error() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::new(&[]);
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Both sides run until each has done `rounds` opens, interleaved by the scheduler.
    let rounds = 300;
    let reads = AtomicUsize::new(0);
    let writes = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while reads.load(Ordering::Relaxed) < rounds || writes.load(Ordering::Relaxed) < rounds
            {
                let f = fs::File::open(e.p("big")).expect("open for reading");
                let mut b = [0u8; 4096];
                f.read_at(&mut b, 0).expect("read");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut i = 0usize;
        while reads.load(Ordering::Relaxed) < rounds || i < rounds {
            let w = fs::OpenOptions::new()
                .write(true)
                .open(e.p("big"))
                .unwrap_or_else(|err| panic!("write open {i}: {err}"));
            w.write_all_at(&[i as u8], 0).unwrap();
            i += 1;
            writes.store(i, Ordering::Relaxed);
        }
    });
    let last = writes.load(Ordering::Relaxed) - 1;
    assert_eq!(fs::read(e.p("big")).unwrap()[0], last as u8);
    e.finish();
}

#[test]
fn with_passthrough_upper_old_descriptors_read_the_copy() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::new(&["passthrough=upper"]);
    let before = ino(&e.p("f"));
    let r = fs::File::open(e.p("f")).unwrap();
    let w = fs::OpenOptions::new().write(true).open(e.p("f")).unwrap();
    w.write_all_at(b"NEW", 0).unwrap();
    drop(w);
    assert_eq!(read_all(&r), "NEW content\n");
    assert_eq!(
        ino(&e.p("f")),
        before,
        "nothing moves without lower passthrough"
    );
    drop(r);
    let _ = &e.t;
    e.finish();
}
