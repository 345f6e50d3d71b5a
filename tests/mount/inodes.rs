//! Inode numbers: unique across layers (also layers on different filesystems whose real
//! numbers collide), stable across remounts and copy-up, shared by hard links, and usable
//! by `find -inum`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::files::*;
use support::fingerprint::*;
use support::mounts::*;
use support::shell::*;
use support::stack::*;
use support::tree::*;

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .ino()
}

/// Two tmpfs layers number their inodes the same way, so real numbers collide; the
/// mount must still give every object its own number, the same after a remount.
#[test]
fn unique_across_layers_on_different_filesystems() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let _ta = mount_tmpfs(&a, "16m");
    let _tb = mount_tmpfs(&b, "16m");
    for layer in [&a, &b] {
        for i in 0..50 {
            write(
                &layer.join(format!("d{}/f{i}", i % 5)),
                layer.to_str().unwrap().as_bytes(),
            );
        }
    }
    let real_a: Vec<u64> = (0..50)
        .map(|i| ino(&a.join(format!("d{}/f{i}", i % 5))))
        .collect();
    let real_b: Vec<u64> = (0..50)
        .map(|i| ino(&b.join(format!("d{}/f{i}", i % 5))))
        .collect();
    assert!(
        real_a.iter().any(|i| real_b.contains(i)),
        "the test needs colliding real numbers"
    );
    // Third layer on the disk, and an upper dir there too.
    let c = t.path().join("c");
    write(&c.join("d0/disk"), b"disk");
    let s = rw_stack(t.path(), &[a.clone(), b.clone(), c.clone()], "u");
    let check = LowersUnchanged::record(&[a.clone(), b.clone(), c.clone()]);
    let lm = t.path().join("m");
    let mut g = mount_layerfs(&s, &lm, &[]);
    fs::write(lm.join("new-upper-file"), b"n").unwrap();
    let first = snapshot(&lm, &SnapOpts::default());
    assert_unique_inos(&first, "layers on two tmpfs and a disk");
    g.unmount();
    let _g = mount_layerfs(&s, &lm, &[]);
    let again = snapshot(&lm, &SnapOpts::default());
    assert_eq!(
        ino_changes(&first, &again),
        Vec::<String>::new(),
        "numbers changed by a remount"
    );
    drop(_g);
    check.check();
}

/// Every kind of change keeps numbers stable: copy-up (file, symlink, fifo, dir),
/// rename of files and lower dirs, new files and links; all the same after a remount.
#[test]
fn stable_across_copy_up_and_remount() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l1 = t.path().join("l1");
    let l2 = t.path().join("l2");
    write(&l2.join("dir/file"), b"f");
    write(&l2.join("dir/sub/inner"), b"i");
    symlink("file", &l2.join("dir/link"));
    mknod(&l2.join("dir/fifo"), libc::S_IFIFO | 0o644, 0);
    write(&l1.join("dir/top"), b"t");
    write(&l2.join("linked/a"), b"a");
    fs::hard_link(l2.join("linked/a"), l2.join("linked/b")).unwrap();
    let lowers = vec![l1, l2];
    let check = LowersUnchanged::record(&lowers);
    let s = rw_stack(t.path(), &lowers, "u");
    let m = t.path().join("m");
    let mut g = mount_layerfs(&s, &m, &[]);
    let before = snapshot(&m, &SnapOpts::default());
    // Copy-ups of every kind.
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("dir/file"))
        .unwrap();
    std::os::unix::fs::lchown(m.join("dir/link"), Some(1000), None).unwrap();
    chmod(&m.join("dir/fifo"), 0o600);
    chmod(&m.join("dir/sub"), 0o700);
    fs::write(m.join("linked/a"), b"changed").unwrap();
    let after_copy_up = snapshot(&m, &SnapOpts::default());
    assert_eq!(
        ino_changes(&before, &after_copy_up),
        Vec::<String>::new(),
        "copy-up changed numbers"
    );
    assert_eq!(ino(&m.join("linked/a")), ino(&m.join("linked/b")));
    // Renames keep the number under the new name.
    let dir_ino = ino(&m.join("dir"));
    let file_ino = ino(&m.join("dir/sub/inner"));
    fs::rename(m.join("dir"), m.join("moved")).unwrap();
    assert_eq!(ino(&m.join("moved")), dir_ino);
    assert_eq!(ino(&m.join("moved/sub/inner")), file_ino);
    fs::write(m.join("new"), b"n").unwrap();
    fs::hard_link(m.join("new"), m.join("moved/new-link")).unwrap();
    fs::hard_link(m.join("moved/top"), m.join("top-link")).unwrap();
    assert_eq!(ino(&m.join("top-link")), ino(&m.join("moved/top")));
    let last = snapshot(&m, &SnapOpts::default());
    assert_unique_inos(&last, "after changes");
    g.unmount();
    let mut g = mount_layerfs(&s, &m, &[]);
    let remounted = snapshot(&m, &SnapOpts::default());
    assert_same_tree(&last, &remounted, "after remount");
    assert_eq!(
        ino_changes(&last, &remounted),
        Vec::<String>::new(),
        "remount changed numbers"
    );
    assert_eq!(remounted.inos[Path::new("moved/sub/inner")], file_ino);
    g.unmount();
    check.check();
}

/// Hard links inside one layer share one number; `find -inum` finds all names.
#[test]
fn hard_links_share_a_number_and_find_inum_works() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
    write(&l1.join("x/one"), b"1");
    fs::create_dir_all(l1.join("y")).unwrap();
    fs::hard_link(l1.join("x/one"), l1.join("y/two")).unwrap();
    write(&l2.join("z/other"), b"o");
    write(&l2.join("x/below"), b"b");
    let m = t.path().join("m");
    let _g = mount_layerfs(
        &Stack {
            data: Vec::new(),
            lowers: vec![l1, l2],
            upper: None,
            work: None,
        },
        &m,
        &[],
    );
    let n = ino(&m.join("x/one"));
    assert_eq!(n, ino(&m.join("y/two")));
    assert_eq!(fs::symlink_metadata(m.join("x/one")).unwrap().nlink(), 2);
    let out = shell(&format!("cd '{}' && find . -inum {n} | sort", m.display()));
    assert_eq!(out, "./x/one\n./y/two\n");
    let all: BTreeMap<PathBuf, u64> = snapshot(&m, &SnapOpts::default()).inos;
    for (p, i) in &all {
        let found = shell(&format!("cd '{}' && find . -inum {i}", m.display()));
        let want = if p.as_os_str().is_empty() {
            ".".to_string()
        } else {
            format!("./{}", p.display())
        };
        assert!(
            found.lines().any(|l| l == want),
            "find -inum {i} gave {found:?}, wanted {want}"
        );
    }
}

/// The kernel still holds a deleted file (here through an `O_PATH` fd, which sends no
/// OPEN) while new files are created. The upper filesystem would give the freed inode
/// number to one of them; the kernel would then take the new file for the old one (a
/// `link` through the stale reference would link it under another name), or, told it
/// is a new inode, mark the old one bad, so that every call still on its way through
/// the old one fails with EIO (the concurrency suite met that: an `open` whose path walk
/// found the name just before another thread unlinked it). So the daemon keeps the
/// deleted file's inode until the kernel forgets it: its number is not reused meanwhile,
/// and the stale reference keeps working as it does on a local filesystem.
#[test]
fn a_deleted_file_keeps_its_number_while_the_kernel_holds_it() {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags, fstat, linkat, open};
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("l0");
    fs::create_dir_all(lower.join("d")).unwrap();
    let s = rw_stack(t.path(), &[lower], "x");
    let lm = t.path().join("m");
    let _g = mount_layerfs(&s, &lm, &[]);
    let d = lm.join("d");
    let mut new_inos = Vec::new();
    for round in 0..20 {
        let old = d.join(format!("old-{round}"));
        write(&old, b"old");
        let old_ino = ino(&old);
        let fd = open(&old, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()).unwrap();
        fs::remove_file(&old).unwrap();
        for i in 0..20 {
            let p = d.join(format!("new-{round}-{i}"));
            write(&p, b"precious");
            assert_ne!(
                ino(&p),
                old_ino,
                "{} took the number of a held file",
                p.display()
            );
            new_inos.push(ino(&p));
        }
        let st = fstat(&fd).unwrap_or_else(|e| panic!("fstat of the held deleted file: {e}"));
        assert_eq!((st.st_ino, st.st_nlink), (old_ino, 0));
        // As on a local filesystem: a file with no names cannot get one back.
        let r = linkat(&fd, "", CWD, d.join("linked"), AtFlags::EMPTY_PATH);
        assert!(r.is_err(), "a link through the deleted file's fd succeeded");
        assert!(fs::symlink_metadata(d.join("linked")).is_err());
    }
    // Without the daemon's hold the upper filesystem reuses numbers at once: the check
    // above could not fail if it did not. (Tests running beside this one may take a
    // freed number first: a few tries.)
    let scratch = t.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let probe = scratch.join("probe");
    let reused = (0..20).any(|_| {
        fs::write(&probe, b"p").unwrap();
        let freed = ino(&probe);
        fs::remove_file(&probe).unwrap();
        fs::write(&probe, b"q").unwrap();
        let again = ino(&probe);
        fs::remove_file(&probe).unwrap();
        again == freed
    });
    assert!(reused, "this filesystem does not reuse inode numbers");
    for p in fs::read_dir(&d).unwrap() {
        assert_eq!(fs::read(p.unwrap().path()).unwrap(), b"precious");
    }
    assert_eq!(new_inos.len(), 400);
}

/// Accepted difference (docs/SEMANTICS.md): a removed file that no descriptor has open
/// has its data freed at once, so a reopen through `/proc/self/fd/N` of an `O_PATH`
/// descriptor of it gets `ESTALE` (the kernel's overlayfs reopens the deleted file).
/// While a descriptor has it open, such a reopen works and reads the data, as there.
#[test]
fn a_removed_file_reopened_through_an_o_path_descriptor() {
    use rustix::fs::{Mode, OFlags, open};
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("l0");
    fs::create_dir_all(&lower).unwrap();
    let s = rw_stack(t.path(), &[lower], "x");
    let upper = s.upper.clone().unwrap();
    // Made before the mount: no handle of the mount ever had them open (a close's
    // RELEASE reaches the daemon after the close returns, and holds the data till then).
    write(&upper.join("closed"), b"closed file");
    write(&upper.join("open"), b"open file");
    let lm = t.path().join("m");
    let _g = mount_layerfs(&s, &lm, &[]);
    let reopen = |fd: &std::os::fd::OwnedFd| {
        use std::os::fd::AsRawFd;
        fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    };
    let hold = |name: &str| {
        open(
            lm.join(name),
            OFlags::PATH | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .unwrap()
    };

    let held = hold("closed");
    fs::remove_file(lm.join("closed")).unwrap();
    let r = reopen(&held);
    assert_eq!(
        r.as_ref().map_err(|e| e.raw_os_error()),
        Err(Some(libc::ESTALE)),
        "reopen of a removed file no one had open: {r:?}"
    );

    let reader = fs::File::open(lm.join("open")).unwrap();
    let held = hold("open");
    fs::remove_file(lm.join("open")).unwrap();
    assert_eq!(
        reopen(&held).unwrap(),
        b"open file",
        "reopen of a removed file a descriptor still has open"
    );
    drop(reader);
    // The last close frees it (once its RELEASE has reached the daemon).
    let t0 = std::time::Instant::now();
    while reopen(&held).is_ok() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "the removed file's data outlived its last close"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(
        reopen(&held).map_err(|e| e.raw_os_error()).unwrap_err(),
        Some(libc::ESTALE)
    );
}
