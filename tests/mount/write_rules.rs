//! Targeted tests for each rule of the writable mount: copy-up keeps everything, read
//! access never copies up, whiteouts and opaque dirs only where needed, renames of lower
//! directories, hard links across copy-up, ownership of new files, errno values, ENOSPC.
//! Every test checks that the lower layers were not written, and most compare the
//! upper dir with what the kernel's overlayfs makes of it.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Access, XattrFlags, access, setxattr};
use rustix::io::Errno;

use support::files::*;
use support::fingerprint::*;
use support::mounts::*;
use support::shell::*;
use support::stack::*;
use support::tree::*;
use support::xattr::*;

/// A writable layerfs mount of freshly built lower layers.
struct Env {
    t: tempfile::TempDir,
    lowers: Vec<PathBuf>,
    s: Stack,
    m: PathBuf,
    g: Option<MountGuard>,
    check: LowersUnchanged,
    opts: Vec<&'static str>,
}

impl Env {
    /// `n` lower layers (top first), filled by `build`, then mounted.
    fn new(n: usize, build: impl FnOnce(&[PathBuf])) -> Env {
        Self::with_opts(n, &[], build)
    }

    /// The same, mounted with extra options.
    fn with_opts(n: usize, opts: &[&'static str], build: impl FnOnce(&[PathBuf])) -> Env {
        let t = tempfile::tempdir().unwrap();
        let lowers: Vec<PathBuf> = (0..n).map(|i| t.path().join(format!("l{i}"))).collect();
        for l in &lowers {
            fs::create_dir_all(l).unwrap();
        }
        build(&lowers);
        let check = LowersUnchanged::record(&lowers);
        let s = rw_stack(t.path(), &lowers, "u");
        let m = t.path().join("m");
        let g = Some(mount_layerfs(&s, &m, opts));
        Env {
            t,
            lowers,
            s,
            m,
            g,
            check,
            opts: opts.to_vec(),
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.m.join(rel)
    }

    fn upper(&self, rel: &str) -> PathBuf {
        self.s.upper.as_ref().unwrap().join(rel)
    }

    fn upper_names(&self, rel: &str) -> Vec<OsString> {
        let mut v: Vec<OsString> = fs::read_dir(self.upper(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    }

    fn remount(&mut self) {
        self.g.take().unwrap().unmount();
        self.g = Some(mount_layerfs(&self.s, &self.m, &self.opts));
    }

    /// The tree now, then the same after a remount, then as the kernel's overlayfs shows
    /// the same lower and upper dirs: all three must agree. Leaves layerfs mounted.
    fn check_persistent(&mut self) -> Tree {
        let o = SnapOpts::with_mtimes();
        let now = snapshot(&self.m, &o);
        self.remount();
        let again = snapshot(&self.m, &o);
        assert_same_tree(&now, &again, "after remount");
        assert_eq!(
            ino_changes(&now, &again),
            Vec::<String>::new(),
            "inode numbers changed by remount"
        );
        self.g.take().unwrap().unmount();
        let km = self.t.path().join("kernel-view");
        let kg = mount_kernel(&self.s, &km);
        let k = snapshot(&km, &SnapOpts::with_mtimes().kernel());
        drop(kg);
        assert_same_tree(
            &k,
            &accept_visible_link_counts(&k, &now, &self.lowers),
            "kernel view of the upper dir",
        );
        self.g = Some(mount_layerfs(&self.s, &self.m, &self.opts));
        now
    }

    fn finish(mut self) {
        if let Some(mut g) = self.g.take() {
            g.unmount();
        }
        self.check.check();
    }
}

fn meta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    list_xattrs(p).get(std::ffi::OsStr::new(name)).cloned()
}

const CAP: [u8; 20] = [
    1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn copy_up_keeps_data_holes_and_metadata() {
    if support::skip_unless_root() {
        return;
    }
    let mut e = Env::new(1, |l| {
        let f = fs::File::create(l[0].join("sparse")).unwrap();
        f.set_len(32 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&vec![7u8; 1 << 20], 8 << 20).unwrap();
        f.write_all_at(b"tail", (32 << 20) - 4).unwrap();
        lchown(&l[0].join("sparse"), 1234, 100);
        chmod(&l[0].join("sparse"), 0o6750);
        set_xattr(&l[0].join("sparse"), "security.capability", &CAP);
        set_xattr(&l[0].join("sparse"), "user.note", b"kept");
        set_xattr(&l[0].join("sparse"), "trusted.custom", b"t");
        set_times(&l[0].join("sparse"), 1_000_000_000, 123_456_789);
        write(&l[0].join("dir/child"), b"c");
        lchown(&l[0].join("dir"), 1000, 1000);
        chmod(&l[0].join("dir"), 0o2751);
        set_xattr(&l[0].join("dir"), "user.dir", b"d");
        set_times(&l[0].join("dir"), 1_100_000_000, 5);
        symlink("nonexistent-target", &l[0].join("link"));
        lchown(&l[0].join("link"), 1000, 100);
        set_times(&l[0].join("link"), 1_200_000_000, 7);
        mknod(&l[0].join("fifo"), libc::S_IFIFO | 0o604, 0);
        set_times(&l[0].join("fifo"), 1_300_000_000, 9);
    });
    let lower = meta(&e.lowers[0].join("sparse"));
    // Directory link counts change legitimately: a copied-up dir is merged (count 1).
    let o = SnapOpts {
        mtimes: true,
        dir_nlink: false,
        ..SnapOpts::default()
    };
    let before = snapshot(&e.m, &o);
    // Copy up with changes that touch none of the compared attributes.
    set_xattr(&e.p("sparse"), "user.added", b"new");
    set_xattr(&e.p("dir/child"), "user.added", b"new");
    set_xattr(&e.p("fifo"), "trusted.added", b"new");
    std::os::unix::fs::lchown(e.p("link"), Some(1000), Some(100)).unwrap();
    for n in ["sparse", "dir", "dir/child", "link", "fifo"] {
        assert!(
            e.upper(n).symlink_metadata().is_ok(),
            "{n} was not copied up"
        );
    }
    let up = meta(&e.upper("sparse"));
    assert_eq!(up.size(), lower.size());
    assert!(
        up.blocks() <= lower.blocks() + 8,
        "holes filled by copy-up: {} blocks in the upper, {} in the lower",
        up.blocks(),
        lower.blocks()
    );
    assert_eq!(meta(&e.p("sparse")).blocks(), up.blocks());
    assert_eq!(up.mode() & 0o7777, 0o6750, "set-id bits lost");
    assert_eq!((up.uid(), up.gid()), (1234, 100));
    assert_eq!(
        get_xattr(&e.upper("sparse"), "security.capability").as_deref(),
        Some(&CAP[..])
    );
    assert_eq!(
        get_xattr(&e.p("sparse"), "security.capability").as_deref(),
        Some(&CAP[..])
    );
    let mut after = snapshot(&e.m, &o);
    for n in ["sparse", "dir/child", "fifo"] {
        let x = after.entries.get_mut(Path::new(n)).unwrap();
        assert!(
            x.xattrs
                .remove(std::ffi::OsStr::new("user.added"))
                .is_some()
                || x.xattrs
                    .remove(std::ffi::OsStr::new("trusted.added"))
                    .is_some()
        );
    }
    assert_same_tree(&before, &after, "before and after copy-up");
    for (n, t) in [
        ("dir", (1_100_000_000, 5)),
        ("link", (1_200_000_000, 7)),
        ("fifo", (1_300_000_000, 9)),
    ] {
        let m = meta(&e.p(n));
        assert_eq!((m.mtime(), m.mtime_nsec()), t, "{n}: mtime not kept");
        // Listing the dir and reading the link update their atimes, as reading does.
        if n == "fifo" {
            assert_eq!((m.atime(), m.atime_nsec()), t, "{n}: atime not kept");
        }
    }
    assert_eq!(meta(&e.p("dir")).mode() & 0o7777, 0o2751);
    // Data of the copy is the data of the original.
    let mut f = fs::File::open(e.p("sparse")).unwrap();
    let mut buf = [0u8; 4];
    f.seek(SeekFrom::Start((32 << 20) - 4)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"tail");
    drop(f);
    assert_eq!(fs::read(e.p("dir/child")).unwrap(), b"c");
    e.check_persistent();
    e.finish();
}

/// Reading in every way leaves the upper dir untouched.
#[test]
fn reading_never_copies_up() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::new(2, |l| {
        write(&l[0].join("d/file"), b"data");
        write(&l[1].join("d/lower"), b"lower");
        set_xattr(&l[1].join("d/lower"), "user.x", b"1");
        symlink("file", &l[0].join("d/link"));
        mknod(&l[1].join("d/fifo"), libc::S_IFIFO | 0o666, 0);
    });
    for n in ["d/file", "d/lower"] {
        let mut f = fs::File::open(e.p(n)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        // A read-write mapping of a read-only file is refused, a private one is not a write.
        let mut v = Vec::new();
        fs::File::open(e.p(n)).unwrap().read_to_end(&mut v).unwrap();
    }
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(e.p("d/fifo"))
        .unwrap();
    let _ = fs::read_link(e.p("d/link")).unwrap();
    let _ = list_xattrs(&e.p("d/lower"));
    let _ = snapshot(&e.m, &SnapOpts::default());
    for n in ["d/file", "d", ""] {
        let r = access(e.p(n), Access::READ_OK | Access::WRITE_OK);
        assert_eq!(r, Ok(()), "access({n}, W_OK) on a writable mount");
    }
    assert!(
        e.upper_names("").is_empty(),
        "reads changed the upper dir: {:?}",
        e.upper_names("")
    );
    e.finish();
}

fn is_whiteout(p: &Path) -> bool {
    lstat(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

#[test]
fn whiteouts_only_where_a_lower_layer_has_the_name() {
    if support::skip_unless_root() {
        return;
    }
    let mut e = Env::new(2, |l| {
        write(&l[1].join("lower-file"), b"x");
        write(&l[0].join("d/top-file"), b"x");
        write(&l[1].join("d/bottom-file"), b"x");
        fs::create_dir_all(l[1].join("empty-lower-dir")).unwrap();
        write(&l[1].join("merged/a"), b"a");
        write(&l[0].join("merged/b"), b"b");
        write(&l[1].join("shadowed"), b"lower");
    });
    // New names: no whiteout after removal.
    fs::write(e.p("new-file"), b"n").unwrap();
    fs::remove_file(e.p("new-file")).unwrap();
    fs::create_dir(e.p("new-dir")).unwrap();
    fs::write(e.p("new-dir/inside"), b"i").unwrap();
    fs::remove_dir_all(e.p("new-dir")).unwrap();
    assert!(e.upper_names("").is_empty(), "{:?}", e.upper_names(""));
    // Lower names: whiteouts.
    fs::remove_file(e.p("lower-file")).unwrap();
    fs::remove_dir(e.p("empty-lower-dir")).unwrap();
    fs::remove_dir_all(e.p("merged")).unwrap();
    fs::remove_file(e.p("d/top-file")).unwrap();
    fs::remove_file(e.p("d/bottom-file")).unwrap();
    // A name copied up then removed: one whiteout, nothing else.
    fs::write(e.p("shadowed"), b"upper").unwrap();
    fs::remove_file(e.p("shadowed")).unwrap();
    for n in [
        "lower-file",
        "empty-lower-dir",
        "merged",
        "shadowed",
        "d/top-file",
        "d/bottom-file",
    ] {
        assert!(is_whiteout(&e.upper(n)), "{n}: no whiteout");
        assert_eq!(errno_of(fs::symlink_metadata(e.p(n))), libc::ENOENT);
    }
    assert_eq!(e.upper_names("d").len(), 2);
    // A directory with nothing visible left is empty, and can be removed.
    assert_eq!(fs::read_dir(e.p("d")).unwrap().count(), 0);
    fs::remove_dir(e.p("d")).unwrap();
    assert!(is_whiteout(&e.upper("d")));
    let tree = e.check_persistent();
    assert_eq!(
        tree.entries.len(),
        1,
        "only the root is left: {:?}",
        tree.entries.keys()
    );
    e.finish();
}

#[test]
fn creating_over_whiteouts() {
    if support::skip_unless_root() {
        return;
    }
    let mut e = Env::new(1, |l| {
        write(&l[0].join("f"), b"lower file");
        write(&l[0].join("dir/old"), b"old");
        write(&l[0].join("dir/sub/deep"), b"deep");
        write(&l[0].join("s"), b"x");
        write(&l[0].join("n"), b"x");
        write(&l[0].join("target"), b"t");
    });
    fs::remove_file(e.p("f")).unwrap();
    fs::write(e.p("f"), b"new").unwrap();
    assert_eq!(fs::read(e.p("f")).unwrap(), b"new");
    assert!(meta(&e.upper("f")).is_file());
    fs::remove_file(e.p("s")).unwrap();
    std::os::unix::fs::symlink("nonexistent-target", e.p("s")).unwrap();
    fs::remove_file(e.p("n")).unwrap();
    mknod(&e.p("n"), libc::S_IFIFO | 0o600, 0);
    fs::remove_file(e.p("target")).unwrap();
    fs::write(e.p("t2"), b"t2").unwrap();
    fs::hard_link(e.p("t2"), e.p("target")).unwrap();
    // mkdir over a whiteout makes an opaque dir: nothing of the old one shows.
    fs::remove_dir_all(e.p("dir")).unwrap();
    fs::create_dir(e.p("dir")).unwrap();
    assert_eq!(fs::read_dir(e.p("dir")).unwrap().count(), 0);
    assert_eq!(
        get_xattr(&e.upper("dir"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    fs::write(e.p("dir/fresh"), b"f").unwrap();
    // An opaque dir stays opaque when renamed, and a new dir where one was renamed away
    // does not show the old contents either.
    fs::rename(e.p("dir"), e.p("dir2")).unwrap();
    fs::create_dir(e.p("dir")).unwrap();
    assert_eq!(fs::read_dir(e.p("dir")).unwrap().count(), 0);
    let tree = e.check_persistent();
    let names: Vec<&Path> = tree.entries.keys().map(|p| p.as_path()).collect();
    assert_eq!(
        names,
        [
            "",
            "dir",
            "dir2",
            "dir2/fresh",
            "f",
            "n",
            "s",
            "t2",
            "target"
        ]
        .map(Path::new)
        .to_vec()
    );
    e.finish();
}

#[test]
fn renaming_lower_directories_keeps_every_file() {
    if support::skip_unless_root() {
        return;
    }
    let mut e = Env::new(3, |l| {
        for (i, layer) in l.iter().enumerate() {
            for d in ["a", "a/b", "a/b/c", "other"] {
                write(
                    &layer.join(d).join(format!("f{i}")),
                    format!("{d} {i}").as_bytes(),
                );
            }
        }
        kernel_whiteout(&l[0].join("a/b/f2"));
        set_xattr(&l[1].join("a/b/c"), "trusted.overlay.opaque", b"y");
    });
    let before = snapshot(&e.m, &SnapOpts::default());
    fs::rename(e.p("a"), e.p("renamed")).unwrap();
    fs::rename(e.p("renamed/b"), e.p("other/b-moved")).unwrap();
    fs::rename(e.p("other"), e.p("renamed/other-inside")).unwrap();
    // Back and forth: a dir renamed to its original name.
    fs::rename(e.p("renamed/other-inside/b-moved/c"), e.p("c")).unwrap();
    fs::rename(e.p("c"), e.p("renamed/other-inside/b-moved/c")).unwrap();
    // Over an empty dir, and a file created in a moved dir.
    fs::create_dir(e.p("empty")).unwrap();
    fs::rename(e.p("renamed/other-inside"), e.p("empty")).unwrap();
    fs::write(e.p("empty/b-moved/c/new"), b"new").unwrap();
    let after = e.check_persistent();
    let map = |p: &Path| -> Option<PathBuf> {
        let s = p.to_str().unwrap();
        let moved = if let Some(r) = s.strip_prefix("a/b") {
            format!("empty/b-moved{r}")
        } else if let Some(r) = s.strip_prefix("other") {
            format!("empty{r}")
        } else if let Some(r) = s.strip_prefix("a") {
            format!("renamed{r}")
        } else {
            s.to_string()
        };
        Some(PathBuf::from(moved))
    };
    for (p, snap) in &before.entries {
        if p.as_os_str().is_empty() || snap.kind == 'd' {
            continue;
        }
        let q = map(p).unwrap();
        let got = after
            .entries
            .get(&q)
            .unwrap_or_else(|| panic!("{} lost (expected at {})", p.display(), q.display()));
        assert_eq!(got.content, snap.content, "{}", q.display());
    }
    let files = |t: &Tree| t.entries.values().filter(|s| s.kind == 'f').count();
    assert_eq!(files(&after), files(&before) + 1);
    e.finish();
}

#[test]
fn hard_links_and_copy_up() {
    if support::skip_unless_root() {
        return;
    }
    let mut e = Env::new(1, |l| {
        write(&l[0].join("plain"), b"plain");
        write(&l[0].join("x/one"), b"linked");
        fs::create_dir_all(l[0].join("y")).unwrap();
        fs::hard_link(l[0].join("x/one"), l[0].join("y/two")).unwrap();
        fs::hard_link(l[0].join("x/one"), l[0].join("three")).unwrap();
    });
    // A link to a lower file copies it up once; both names are one file.
    let n = meta(&e.p("plain")).ino();
    fs::hard_link(e.p("plain"), e.p("plain-link")).unwrap();
    assert_eq!(meta(&e.p("plain")).ino(), n, "copy-up changed the number");
    assert_eq!(meta(&e.p("plain-link")).ino(), n);
    assert_eq!(meta(&e.p("plain")).nlink(), 2);
    assert_eq!(
        meta(&e.upper("plain")).ino(),
        meta(&e.upper("plain-link")).ino()
    );
    fs::write(e.p("plain-link"), b"through the link").unwrap();
    assert_eq!(fs::read(e.p("plain")).unwrap(), b"through the link");
    // Writing one name of a lower file with three names, none looked up before.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(e.p("y/two"))
        .unwrap();
    f.write_all(b"LINKED").unwrap();
    drop(f);
    for n in ["x/one", "y/two", "three"] {
        assert_eq!(fs::read(e.p(n)).unwrap(), b"LINKED", "{n}");
        assert_eq!(meta(&e.p(n)).nlink(), 3, "{n}");
    }
    assert_eq!(meta(&e.upper("x/one")).ino(), meta(&e.upper("three")).ino());
    let tree = e.check_persistent();
    assert!(tree.link_groups.contains(&vec![
        PathBuf::from("three"),
        PathBuf::from("x/one"),
        PathBuf::from("y/two")
    ]));
    e.finish();
}

/// Run the same commands as another user on layerfs and on a kernel overlay (root,
/// allow_other): owners, modes from the umask, the setgid-directory rules must match.
#[test]
fn new_objects_belong_to_the_calling_user() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    fs::create_dir_all(l.join("pub")).unwrap();
    chmod(&l.join("pub"), 0o1777);
    fs::create_dir_all(l.join("sgid")).unwrap();
    lchown(&l.join("sgid"), 0, 100);
    chmod(&l.join("sgid"), 0o2777);
    write(&l.join("pub/theirs"), b"x");
    lchown(&l.join("pub/theirs"), 1000, 1000);
    // The mount point's parent must be reachable for the other user.
    chmod(t.path(), 0o755);
    let check = LowersUnchanged::record(std::slice::from_ref(&l));
    let ks = rw_stack(t.path(), std::slice::from_ref(&l), "k");
    let ls = rw_stack(t.path(), std::slice::from_ref(&l), "l");
    let (km, lm) = (t.path().join("mk"), t.path().join("ml"));
    let kg = mount_kernel(&ks, &km);
    let lg = mount_layerfs(&ls, &lm, &[]);
    let script = "cd pub && touch f && mkdir d && ln -s nonexistent-target s && mkfifo p \
        && echo hi > theirs && chmod g+s f; cd ../sgid && touch g && mkdir h && mkdir h/i \
        && touch h/j && chmod g+s g; touch ../sgid-not-allowed 2>/dev/null; true";
    let mut outs = Vec::new();
    for m in [&km, &lm] {
        let (code, out) = shell_as(
            1000,
            1000,
            &[],
            0o027,
            &format!("cd '{}' && {script}", m.display()),
        );
        assert_eq!(code, 0, "{}: {out}", m.display());
        outs.push(out);
        // Another user in group 100 (the setgid dir's group) may keep the bit.
        let (code, out) = shell_as(
            1001,
            1001,
            &[100],
            0o002,
            &format!("cd '{}/sgid' && touch k && chmod g+s k", m.display()),
        );
        assert_eq!(code, 0, "{}: {out}", m.display());
    }
    let k = snapshot(&km, &SnapOpts::default().kernel());
    let ours = snapshot(&lm, &SnapOpts::default());
    drop(kg);
    drop(lg);
    assert_same_tree(&k, &ours, "kernel vs layerfs, created by uid 1000");
    let e = |p: &str| &ours.entries[Path::new(p)];
    assert_eq!(
        (e("pub/f").uid, e("pub/f").gid, e("pub/f").mode),
        (1000, 1000, 0o2640)
    );
    assert_eq!((e("pub/d").uid, e("pub/d").mode), (1000, 0o750));
    assert_eq!((e("pub/s").uid, e("pub/p").uid), (1000, 1000));
    assert_eq!(
        e("pub/theirs").uid,
        1000,
        "copy-up by another user keeps the owner"
    );
    assert_eq!(
        (e("sgid/g").gid, e("sgid/g").mode),
        (100, 0o640),
        "setgid dropped: not in the group"
    );
    assert_eq!((e("sgid/h").gid, e("sgid/h").mode), (100, 0o2750));
    assert_eq!(
        (e("sgid/h/i").gid, e("sgid/h/i").mode & 0o2000),
        (100, 0o2000)
    );
    assert_eq!(e("sgid/h/j").gid, 100);
    assert_eq!(
        (e("sgid/k").uid, e("sgid/k").gid, e("sgid/k").mode),
        (1001, 100, 0o2664)
    );
    check.check();
}

#[test]
fn errno_values() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::new(2, |l| {
        write(&l[0].join("file"), b"x");
        write(&l[1].join("dir/inner"), b"x");
        write(&l[0].join("merged/top"), b"x");
        write(&l[1].join("merged/bottom"), b"x");
        fs::create_dir_all(l[1].join("emptydir")).unwrap();
    });
    let p = |n: &str| e.p(n);
    assert_eq!(errno_of(fs::read(p("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::remove_file(p("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::remove_dir(p("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::rename(p("missing"), p("x"))), libc::ENOENT);
    assert_eq!(errno_of(fs::write(p("missing/x"), b"")), libc::ENOENT);
    assert_eq!(errno_of(fs::create_dir(p("dir"))), libc::EEXIST);
    assert_eq!(
        errno_of(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p("file"))
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(fs::hard_link(p("file"), p("dir/inner"))),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("x", p("merged/bottom"))),
        libc::EEXIST
    );
    assert_eq!(errno_of(fs::remove_dir(p("dir"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_dir(p("merged"))), libc::ENOTEMPTY);
    assert_eq!(
        errno_of(fs::rename(p("emptydir"), p("merged"))),
        libc::ENOTEMPTY
    );
    assert_eq!(errno_of(fs::remove_dir(p("file"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::read(p("file/x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(p("dir"))), libc::EISDIR);
    assert_eq!(errno_of(fs::rename(p("file"), p("dir"))), libc::EISDIR);
    assert_eq!(errno_of(fs::rename(p("dir"), p("file"))), libc::ENOTDIR);
    assert_eq!(
        errno_of(fs::rename(p("dir"), p("dir/inside"))),
        libc::EINVAL
    );
    // Names that are markers in every layer format cannot be created (the kernel, which
    // reads no OCI markers, allows them: an intended difference).
    assert_eq!(errno_of(fs::write(p(".wh.name"), b"")), libc::EINVAL);
    assert_eq!(errno_of(fs::create_dir(p(".wh..wh..opq"))), libc::EINVAL);
    assert_eq!(
        errno_of(fs::rename(p("file"), p("dir/.wh.x"))),
        libc::EINVAL
    );
    // The overlay's own xattrs are neither shown nor settable.
    for name in ["trusted.overlay.opaque", "user.overlay.redirect"] {
        let r = setxattr(p("dir"), name, b"y", XattrFlags::empty());
        assert_eq!(r, Err(Errno::PERM), "{name}");
    }
    assert!(
        e.upper_names("").is_empty(),
        "failed calls changed the upper dir: {:?}",
        e.upper_names("")
    );
    e.finish();
}

#[test]
fn erofs_without_an_upper_layer() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    write(&l.join("file"), b"x");
    write(&l.join("dir/inner"), b"x");
    let check = LowersUnchanged::record(std::slice::from_ref(&l));
    let m = t.path().join("m");
    let g = mount_layerfs(&Stack::ro(vec![l]), &m, &[]);
    let p = |n: &str| m.join(n);
    let rofs = libc::EROFS;
    assert_eq!(errno_of(fs::write(p("new"), b"")), rofs);
    assert_eq!(
        errno_of(fs::OpenOptions::new().write(true).open(p("file"))),
        rofs
    );
    assert_eq!(
        errno_of(
            fs::OpenOptions::new()
                .read(true)
                .truncate(true)
                .write(true)
                .open(p("file"))
        ),
        rofs
    );
    assert_eq!(errno_of(fs::remove_file(p("file"))), rofs);
    assert_eq!(errno_of(fs::remove_dir(p("dir"))), rofs);
    assert_eq!(errno_of(fs::create_dir(p("d2"))), rofs);
    assert_eq!(errno_of(fs::rename(p("file"), p("f2"))), rofs);
    assert_eq!(errno_of(fs::hard_link(p("file"), p("f2"))), rofs);
    assert_eq!(errno_of(std::os::unix::fs::symlink("x", p("s"))), rofs);
    assert_eq!(
        errno_of(fs::set_permissions(
            p("file"),
            fs::Permissions::from_mode(0o600)
        )),
        rofs
    );
    assert_eq!(
        errno_of(std::os::unix::fs::chown(p("file"), Some(1), None)),
        rofs
    );
    assert_eq!(
        errno_of(
            fs::File::open(p("file")).and_then(|f| f.set_modified(std::time::SystemTime::now()))
        ),
        rofs
    );
    let r = setxattr(p("file"), "user.x", b"y", XattrFlags::empty());
    assert_eq!(r.map_err(|e| e.raw_os_error()), Err(rofs));
    let r = truncate(&p("file"), 0);
    assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(rofs)));
    assert_eq!(fs::read(p("file")).unwrap(), b"x");
    drop(g);
    check.check();
}

/// An open file stays usable after its last name is gone, and its data is not lost
/// before that.
#[test]
fn unlinked_open_files_keep_working() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::new(1, |l| write(&l[0].join("lower"), b"lower data"));
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(e.p("lower"))
        .unwrap();
    fs::remove_file(e.p("lower")).unwrap();
    f.write_all_at(b"LOWER", 0).unwrap();
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "LOWER data");
    assert_eq!(f.metadata().unwrap().len(), 10);
    let mut g = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(e.p("new"))
        .unwrap();
    g.write_all(b"new").unwrap();
    fs::rename(e.p("new"), e.p("renamed")).unwrap();
    fs::remove_file(e.p("renamed")).unwrap();
    g.write_all(b" more").unwrap();
    assert_eq!(g.metadata().unwrap().len(), 8);
    assert_eq!(errno_of(fs::symlink_metadata(e.p("lower"))), libc::ENOENT);
    drop((f, g));
    assert!(is_whiteout(&e.upper("lower")));
    e.finish();
}

/// With lower files read through the daemon (`passthrough=upper`), a read-only descriptor
/// opened before a copy-up reads the copied-up data afterwards, as with the kernel's
/// overlayfs (it is the same file). With the default (lower files pass through), it keeps
/// reading the lower file: `tests/mount/passthrough.rs`.
#[test]
fn descriptors_opened_before_copy_up_see_the_copy() {
    if support::skip_unless_root() {
        return;
    }
    let e = Env::with_opts(1, &["passthrough=upper"], |l| {
        write(&l[0].join("f"), b"old content\n")
    });
    let r = fs::File::open(e.p("f")).unwrap();
    let mut buf = [0u8; 3];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"old");
    fs::OpenOptions::new()
        .write(true)
        .open(e.p("f"))
        .unwrap()
        .write_all_at(b"NEW", 0)
        .unwrap();
    let mut all = String::new();
    (&r).read_to_string(&mut all).unwrap();
    assert_eq!(all, "NEW content\n");
    drop(r);
    e.finish();
}

/// A small upper filesystem fills up: the failing write reports ENOSPC and loses
/// nothing written before; a copy-up that does not fit fails cleanly.
#[test]
fn enospc_on_a_small_upper() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    let big: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    write(&l.join("big"), &big);
    write(&l.join("small"), b"small");
    let check = LowersUnchanged::record(std::slice::from_ref(&l));
    let fsdir = t.path().join("upperfs");
    let _tmpfs = mount_tmpfs(&fsdir, "8m");
    let s = rw_stack(&fsdir, std::slice::from_ref(&l), "x");
    let m = t.path().join("m");
    let mut g = mount_layerfs(&s, &m, &[]);
    // Copy-up of a file larger than the upper fs.
    let r = fs::OpenOptions::new().append(true).open(m.join("big"));
    assert_eq!(errno_of(r), libc::ENOSPC);
    assert_eq!(
        fs::read(m.join("big")).unwrap(),
        big,
        "the lower file must stay visible"
    );
    assert_eq!(
        fs::read_dir(s.work.as_ref().unwrap().join("work"))
            .unwrap()
            .count(),
        0,
        "leftovers in the work dir"
    );
    // Fill the upper with a new file, chunk by chunk.
    let mut f = fs::File::create(m.join("fill")).unwrap();
    let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut written = 0usize;
    let err = loop {
        match f.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "no ENOSPC");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let _ = f.sync_all();
    drop(f);
    let data = fs::read(m.join("fill")).unwrap();
    assert!(
        data.len() >= written,
        "{} bytes read back, {written} written",
        data.len()
    );
    for (i, c) in data[..written].chunks(65536).enumerate() {
        assert_eq!(c, &chunk[..c.len()], "chunk {i} damaged");
    }
    // Small changes work again once space is freed; nothing written before is lost.
    // FUSE sends the release of a closed file asynchronously, so the space of the
    // removed file may come back a moment later.
    fs::remove_file(m.join("fill")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match fs::write(m.join("small"), b"changed") {
            Err(e)
                if e.raw_os_error() == Some(libc::ENOSPC)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => break r.unwrap(),
        }
    }
    g.unmount();
    let _g = mount_layerfs(&s, &m, &[]);
    assert_eq!(fs::read(m.join("small")).unwrap(), b"changed");
    assert_eq!(fs::read(m.join("big")).unwrap(), big);
    drop(_g);
    check.check();
}

/// While a program runs from a file, `open(O_TRUNC)` of it fails with ETXTBSY and the
/// file keeps its bytes, as on the kernel's overlayfs. The FUSE kernel client sends the
/// O_TRUNC with the OPEN and checks for a running program only after the OPEN returned,
/// so the daemon must refuse it: a truncated text makes the program die of SIGBUS (and
/// then the open succeeds). A program that has exited does not hold the file back.
///
/// Accepted difference: the kernel's overlayfs (6.18) answers ETXTBSY too, but for a
/// program in a lower layer it has already copied the file up without its data (an
/// O_TRUNC copy-up skips the data), so the refused open leaves the merged file empty;
/// layerfs refuses before copying up and the file keeps its bytes.
#[test]
fn a_running_program_is_not_truncated() {
    if support::skip_unless_root() {
        return;
    }
    let sleep = fs::read("/bin/sleep").expect("/bin/sleep");
    let check = |m: &Path, what: &str, kernel: bool| {
        for (name, on_lower) in [("lower-exe", true), ("upper-exe", false)] {
            let p = m.join(name);
            if !on_lower {
                fs::write(&p, &sleep).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
            // A child another test thread is starting may still hold the written file
            // open for a moment (descriptors are copied at fork, closed at exec): the
            // exec then fails with ETXTBSY. Retry that, nothing else.
            let mut tries = 0;
            let mut child = loop {
                match std::process::Command::new(&p).arg("30").spawn() {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    r => break r.unwrap(),
                }
            };
            for flags in [
                libc::O_RDONLY | libc::O_TRUNC,
                libc::O_WRONLY | libc::O_TRUNC,
            ] {
                let r = fs::OpenOptions::new()
                    .read(flags & libc::O_ACCMODE == libc::O_RDONLY)
                    .write(flags & libc::O_ACCMODE == libc::O_WRONLY)
                    .custom_flags(libc::O_TRUNC | libc::O_NOFOLLOW)
                    .open(&p);
                assert_eq!(
                    r.err().and_then(|e| e.raw_os_error()),
                    Some(libc::ETXTBSY),
                    "{what}: open({name}, {flags:#o}) of a running program"
                );
            }
            if !(kernel && on_lower) {
                assert_eq!(
                    fs::metadata(&p).unwrap().len(),
                    sleep.len() as u64,
                    "{what}: {name}"
                );
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{what}: the program died"
            );
            child.kill().unwrap();
            child.wait().unwrap();
            // Exited: truncating is allowed again.
            fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_TRUNC | libc::O_NOFOLLOW)
                .open(&p)
                .unwrap_or_else(|e| panic!("{what}: O_TRUNC after the program exited: {e}"));
            assert_eq!(fs::metadata(&p).unwrap().len(), 0, "{what}: {name}");
        }
    };
    let build = |l: &[PathBuf]| {
        fs::write(l[0].join("lower-exe"), &sleep).unwrap();
        fs::set_permissions(l[0].join("lower-exe"), fs::Permissions::from_mode(0o755)).unwrap();
    };
    for opts in [
        &["passthrough=all"][..],
        &["passthrough=off"],
        &["passthrough=upper"],
    ] {
        let e = Env::with_opts(1, opts, build);
        check(&e.m, opts[0], false);
        e.finish();
    }
    // The kernel's overlayfs, on the same kind of stack.
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l0");
    fs::create_dir_all(&l).unwrap();
    build(std::slice::from_ref(&l));
    let s = rw_stack(t.path(), &[l], "k");
    let km = t.path().join("k");
    let _kg = mount_kernel(&s, &km);
    check(&km, "kernel overlayfs", true);
}

/// The kernel's overlayfs over one empty lower layer, mounted at `k` in the returned dir.
fn empty_kernel_overlay() -> (tempfile::TempDir, MountGuard) {
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l0");
    fs::create_dir_all(&l).unwrap();
    let s = rw_stack(t.path(), std::slice::from_ref(&l), "k");
    let g = mount_kernel(&s, &t.path().join("k"));
    (t, g)
}

/// A writer for the set-id rows: who it is and the `setpriv` arguments that make it.
const WRITERS: [(&str, &[&str]); 3] = [
    (
        "nobody",
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
    ),
    ("root", &[]),
    // Root without CAP_FSETID, as in a container that drops it.
    (
        "root without CAP_FSETID",
        &["--bounding-set=-fsetid", "--inh-caps=-fsetid"],
    ),
];
const SET_ID_MODES: [u32; 4] = [0o4755, 0o2755, 0o2745, 0o6755];

/// For each mode and writer: the mode `stat` shows right after one appending write
/// through a write-only descriptor (`printf >>`), of a file owned by nobody:nogroup.
fn set_id_after_write(m: &Path) -> Vec<(u32, &'static str, u32)> {
    let mut out = Vec::new();
    for mode in SET_ID_MODES {
        for (i, (who, args)) in WRITERS.iter().enumerate() {
            let p = m.join(format!("s{mode:o}-{i}"));
            fs::write(&p, b"data\n").unwrap();
            std::os::unix::fs::lchown(&p, Some(65534), Some(65534)).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(meta(&p).mode() & 0o7777, mode, "{}", p.display());
            let o = std::process::Command::new("setpriv")
                .args(*args)
                .args(["--", "sh", "-c", "printf x >> \"$0\""])
                .arg(&p)
                .output()
                .unwrap();
            assert!(o.status.success(), "{who}: {}", out_str(&o));
            // `stat -c %a` asks for the mode alone (statx STATX_MODE), which the kernel
            // answers from its cache unless told the mode changed; exec and permission
            // checks read that same cached mode.
            let shown = shell(&format!("stat -c %a {}", q(&p)));
            let shown = u32::from_str_radix(shown.trim(), 8).unwrap();
            assert_eq!(shown, meta(&p).mode() & 0o7777, "{who}: {}", p.display());
            out.push((mode, *who, shown));
        }
    }
    // A file created set-id by nobody and written through the creating descriptor (a
    // create, where an open of an existing file is not).
    let d = m.join("nobody-dir");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::lchown(&d, Some(65534), Some(65534)).unwrap();
    let p = d.join("created");
    let o = std::process::Command::new("setpriv")
        .args(WRITERS[0].1)
        .args(["--", "perl", "-e"])
        .arg(
            "use Fcntl; sysopen(F, $ARGV[0], O_WRONLY|O_CREAT|O_EXCL, 06755) or die $!; \
             syswrite(F, 'x') or die $!; close(F);",
        )
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "create as nobody: {}", out_str(&o));
    let shown = shell(&format!("stat -c %a {}", q(&p)));
    out.push((
        0o6755,
        "nobody, creating",
        u32::from_str_radix(shown.trim(), 8).unwrap(),
    ));
    out
}

#[test]
fn set_id_bits_go_on_write_as_the_kernel_clears_them() {
    if support::skip_unless_root() {
        return;
    }
    let (kt, kg) = empty_kernel_overlay();
    let kernel = set_id_after_write(&kt.path().join("k"));
    drop(kg);
    // What the kernel does, spelled out, so that a change in it shows here first.
    let expect = |mode: u32, who: &str| match (mode, who) {
        (_, "root") => mode,
        (0o2745, "nobody") => mode,
        // The creating descriptor: the kernel drops both bits on the first write.
        _ => mode & !0o6000,
    };
    for (mode, who, got) in &kernel {
        assert_eq!(
            *got,
            expect(*mode, who),
            "kernel: {mode:o} written by {who}"
        );
    }
    for opts in [
        // Write-only descriptors bypass the FUSE page cache: the daemon clears the bits.
        &["passthrough=off"][..],
        &["passthrough=upper"],
        &["passthrough=all"],
        // Through the FUSE page cache the kernel clears them itself.
        &["passthrough=off", "direct_writes=off"],
    ] {
        let e = Env::with_opts(1, opts, |_| {});
        let got = set_id_after_write(&e.m);
        for ((mode, who, k), (_, _, g)) in kernel.iter().zip(&got) {
            // Accepted difference 8 (docs/SEMANTICS.md): where the kernel's FUSE client
            // clears the bits itself (cached and passthrough writes) it turns "drop
            // set-gid" into a mode change only when group execute is set, so a set-gid
            // file without it, written by a process outside its group, keeps the bit
            // (fs/fuse/dir.c, fuse_setattr). Direct writes follow the kernel's rule.
            let direct = opts == ["passthrough=off"];
            let fuse_rule = !direct && *mode == 0o2745 && *who == "root without CAP_FSETID";
            let want = if fuse_rule { *mode } else { *k };
            assert_eq!(g, &want, "{opts:?}: {mode:o} written by {who}");
        }
        e.finish();
    }
}

#[test]
fn a_write_through_a_write_only_descriptor_drops_file_capabilities() {
    if support::skip_unless_root() {
        return;
    }
    let check = |m: &Path, what: &str| {
        let p = m.join("capable");
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        setxattr(&p, "security.capability", &CAP, XattrFlags::empty()).unwrap();
        assert!(get_xattr(&p, "security.capability").is_some(), "{what}");
        shell(&format!("printf x >> {}", q(&p)));
        assert_eq!(get_xattr(&p, "security.capability"), None, "{what}");
    };
    for opts in [&["passthrough=off"][..], &["passthrough=all"]] {
        let e = Env::with_opts(1, opts, |_| {});
        check(&e.m, opts[0]);
        e.finish();
    }
    let (kt, _kg) = empty_kernel_overlay();
    check(&kt.path().join("k"), "kernel overlayfs");
}

/// Resident pages of a file's page cache, in the mount (util-linux `fincore`).
fn resident_bytes(p: &Path) -> u64 {
    let out = shell(&format!(
        "fincore --bytes --noheadings --output RES {}",
        q(p)
    ));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {out:?}"))
}

#[test]
fn write_only_descriptors_leave_no_second_copy_in_memory() {
    if support::skip_unless_root() {
        return;
    }
    const SIZE: usize = 8 << 20;
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    for (opts, cached) in [
        (&["passthrough=off"][..], false),
        (&["passthrough=off", "direct_writes=off"], true),
    ] {
        let e = Env::with_opts(1, opts, |_| {});
        let p = e.p("big");
        // fs::write opens write-only (O_WRONLY | O_CREAT | O_TRUNC).
        fs::write(&p, &data).unwrap();
        let res = resident_bytes(&p);
        if cached {
            assert!(res >= SIZE as u64 / 2, "{opts:?}: {res} bytes cached");
        } else {
            assert_eq!(
                res, 0,
                "{opts:?}: the written pages stayed in the FUSE cache"
            );
        }
        // A descriptor that caches what it reads sees later direct writes at once.
        let r = fs::File::open(&p).unwrap();
        let mut head = [0u8; 4];
        r.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head, data[..4]);
        let w = fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all_at(b"BBBB", 0).unwrap();
        w.write_all_at(b"tail", SIZE as u64).unwrap();
        r.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"BBBB", "{opts:?}: a cached reader after a write");
        assert_eq!(r.metadata().unwrap().len(), SIZE as u64 + 4, "{opts:?}");
        r.read_exact_at(&mut head, SIZE as u64).unwrap();
        assert_eq!(&head, b"tail", "{opts:?}");
        drop((r, w));
        let mut want = data.clone();
        want[..4].copy_from_slice(b"BBBB");
        want.extend_from_slice(b"tail");
        assert!(
            fs::read(e.upper("big")).unwrap() == want,
            "{opts:?}: upper file"
        );
        e.finish();
    }
}
