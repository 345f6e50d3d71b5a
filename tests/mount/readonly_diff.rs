//! Read-only differential tests: the same layer dirs mounted with the kernel's overlayfs
//! and with layerfs must show identical trees (names, types, modes, owners, sizes,
//! contents, symlink targets, xattrs, link counts, hard-link structure). OCI-form layers
//! (`.wh.` markers, which the kernel does not read) are compared with the kernel mounting
//! the same stack converted to the kernel's form.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::files::*;
use support::stack::*;
use support::tree::*;
use support::xattr::*;

/// Mount `ours` with layerfs and `kernels` with the kernel, compare, and return both
/// trees (kernel first). Both mounts are gone when this returns.
fn compare_ro(base: &Path, ours: &[PathBuf], kernels: &[PathBuf]) -> (Tree, Tree) {
    let mut klowers = kernels.to_vec();
    if klowers.len() == 1 {
        // The kernel wants two lower dirs when there is no upper one.
        let empty = base.join("empty-bottom");
        fs::create_dir_all(&empty).unwrap();
        klowers.push(empty);
    }
    let (km, lm) = (base.join("mk"), base.join("ml"));
    let kg = mount_kernel(&Stack::ro(klowers), &km);
    let lg = mount_layerfs(&Stack::ro(ours.to_vec()), &lm, &[]);
    let k = snapshot(&km, &SnapOpts::default().kernel());
    let l = snapshot(&lm, &SnapOpts::default());
    drop(kg);
    drop(lg);
    assert_same_tree(&k, &l, "kernel vs layerfs");
    assert_unique_inos(&l, "layerfs");
    (k, l)
}

/// Compare an OCI-form stack (layerfs) with its kernel-form conversion (kernel).
fn compare_oci(base: &Path, oci: &[PathBuf]) -> (Tree, Tree) {
    let kernel: Vec<PathBuf> = oci
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let k = base.join(format!("kernel-form-{i}"));
            oci_to_kernel(l, &k);
            k
        })
        .collect();
    compare_ro(base, oci, &kernel)
}

fn dirs(base: &Path, prefix: &str, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let d = base.join(format!("{prefix}{i:03}"));
            fs::create_dir_all(&d).unwrap();
            d
        })
        .collect()
}

fn has(t: &Tree, p: &str) -> bool {
    t.entries.contains_key(Path::new(p))
}

/// The whiteout forms: a whiteout hides files, dirs, symlinks and devices below it, in
/// any layer; a name can come back in a layer above its whiteout.
#[derive(Clone, Copy, Debug)]
enum Wh {
    /// 0/0 character device.
    Device,
    /// `.wh.NAME` (converted for the kernel).
    Oci,
    /// Zero-size file with `trusted.overlay.whiteout`, in a dir with `opaque=x`.
    Xattr,
}

fn whiteout(dir: &Path, name: &str, form: Wh) {
    fs::create_dir_all(dir).unwrap();
    match form {
        Wh::Device => kernel_whiteout(&dir.join(name)),
        Wh::Oci => fs::write(dir.join(format!(".wh.{name}")), b"").unwrap(),
        Wh::Xattr => {
            fs::write(dir.join(name), b"").unwrap();
            set_xattr(&dir.join(name), "trusted.overlay.whiteout", b"");
            set_xattr(dir, "trusted.overlay.opaque", b"x");
        }
    }
}

#[test]
fn whiteouts_in_every_form_match_kernel() {
    if support::skip_unless_root() {
        return;
    }
    for form in [Wh::Device, Wh::Oci, Wh::Xattr] {
        let t = tempfile::tempdir().unwrap();
        let l = dirs(t.path(), "l", 4);
        // Bottom: things to hide.
        write(&l[3].join("f"), b"file");
        write(&l[3].join("dir/sub/x"), b"x");
        write(&l[3].join("dir/keep"), b"keep");
        symlink("f", &l[3].join("link"));
        mknod(&l[3].join("fifo"), libc::S_IFIFO | 0o600, 0);
        write(&l[3].join("back"), b"old");
        write(&l[3].join("deep/a/b/c"), b"deep");
        write(&l[3].join("deep/a/keep"), b"keep");
        // Layer 2: hide some of it, at the root and deeper.
        for n in ["f", "dir", "link", "fifo", "back", "never-existed"] {
            whiteout(&l[2], n, form);
        }
        whiteout(&l[2].join("deep/a/b"), "c", form);
        // Layer 1: bring a name back, add a dir where a dir was whited out (no merge).
        write(&l[1].join("back"), b"new");
        write(&l[1].join("dir/fresh"), b"fresh");
        whiteout(&l[1].join("deep/a"), "keep", form);
        // Layer 0: whiteout of something only in layer 1.
        whiteout(&l[0].join("dir"), "fresh-not", form);
        fs::create_dir_all(&l[0]).unwrap();

        let (_, ours) = match form {
            Wh::Oci => compare_oci(t.path(), &l),
            _ => compare_ro(t.path(), &l, &l),
        };
        for gone in [
            "f",
            "link",
            "fifo",
            "dir/sub",
            "dir/keep",
            "deep/a/b/c",
            "deep/a/keep",
            "never-existed",
        ] {
            assert!(!has(&ours, gone), "{form:?}: {gone} visible");
        }
        for here in ["back", "dir/fresh", "deep/a/b"] {
            assert!(has(&ours, here), "{form:?}: {here} missing");
        }
        assert!(
            !ours
                .entries
                .keys()
                .any(|p| p.as_os_str().as_bytes().windows(4).any(|w| w == b".wh.")),
            "{form:?}: a marker is visible"
        );
    }
}

#[test]
fn opaque_dirs_at_several_depths() {
    if support::skip_unless_root() {
        return;
    }
    for oci in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let l = dirs(t.path(), "l", 4);
        for (i, layer) in l.iter().enumerate() {
            // Every layer has files at every depth.
            for d in ["o1", "o1/o2", "o1/o2/o3", "m", "m/m2"] {
                write(
                    &layer.join(d).join(format!("from{i}")),
                    format!("{i}{d}").as_bytes(),
                );
            }
        }
        let opaque = |dir: &Path| {
            if oci {
                fs::write(dir.join(".wh..wh..opq"), b"").unwrap();
            } else {
                set_xattr(dir, "trusted.overlay.opaque", b"y");
            }
        };
        opaque(&l[1].join("o1")); // depth 1, middle layer
        opaque(&l[0].join("o1/o2")); // depth 2, top layer
        opaque(&l[2].join("o1/o2/o3")); // depth 3, under an opaque dir (no effect)
        opaque(&l[2].join("m/m2")); // depth 2 in a merged dir
        opaque(&l[3].join("m")); // bottom layer: nothing below
        let (_, ours) = if oci {
            compare_oci(t.path(), &l)
        } else {
            compare_ro(t.path(), &l, &l)
        };
        assert!(has(&ours, "o1/from0") && has(&ours, "o1/from1") && !has(&ours, "o1/from2"));
        assert!(has(&ours, "o1/o2/from0") && !has(&ours, "o1/o2/from1"));
        assert!(has(&ours, "o1/o2/o3/from0") && !has(&ours, "o1/o2/o3/from1"));
        assert!(has(&ours, "m/m2/from2") && !has(&ours, "m/m2/from3") && has(&ours, "m/from3"));
    }
}

#[test]
fn names_of_different_types_in_different_layers() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = dirs(t.path(), "l", 4);
    // A file over a dir, a dir over a file.
    write(&l[0].join("file-over-dir"), b"top");
    write(&l[1].join("file-over-dir/inner"), b"hidden");
    write(&l[0].join("dir-over-file/inner"), b"top");
    write(&l[1].join("dir-over-file"), b"hidden");
    // A dir merged across layers, interrupted by a file in the middle.
    write(&l[0].join("broken/top"), b"t");
    write(&l[1].join("broken"), b"middle file");
    write(&l[2].join("broken/bottom"), b"b");
    // A symlink to a dir over a dir: not merged, not followed.
    symlink("target-dir", &l[0].join("link-over-dir"));
    write(&l[1].join("link-over-dir/inner"), b"hidden");
    write(&l[0].join("target-dir/x"), b"x");
    // A dir over a symlink, a fifo over a dir, a device over a file.
    write(&l[0].join("dir-over-link/x"), b"x");
    symlink("nonexistent-target", &l[2].join("dir-over-link"));
    mknod(&l[0].join("fifo-over-dir"), libc::S_IFIFO | 0o644, 0);
    write(&l[3].join("fifo-over-dir/x"), b"x");
    mknod(
        &l[1].join("dev-over-file"),
        libc::S_IFCHR | 0o600,
        libc::makedev(60, 2),
    );
    write(&l[3].join("dev-over-file"), b"file");
    // A merged dir made of all four layers, with different modes per layer.
    for (i, layer) in l.iter().enumerate() {
        write(&layer.join(format!("all/f{i}")), b"x");
        chmod(&layer.join("all"), 0o700 + i as u32);
    }
    let (_, ours) = compare_ro(t.path(), &l, &l);
    assert_eq!(ours.entries[Path::new("file-over-dir")].kind, 'f');
    assert!(!has(&ours, "file-over-dir/inner") && has(&ours, "dir-over-file/inner"));
    assert!(has(&ours, "broken/top") && !has(&ours, "broken/bottom"));
    assert_eq!(ours.entries[Path::new("link-over-dir")].kind, 'l');
    assert_eq!(ours.entries[Path::new("all")].mode, 0o700);
    assert_eq!(
        ours.entries[Path::new("all")].nlink,
        1,
        "merged dirs report one link"
    );
}

#[test]
fn symlinks_hard_links_special_files_and_xattrs() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = dirs(t.path(), "l", 2);
    symlink("file", &l[0].join("rel"));
    symlink("sub/../file", &l[0].join("rel-dots"));
    symlink("/nonexistent-target/abs", &l[0].join("abs"));
    symlink("nonexistent-target", &l[0].join("dangling"));
    symlink("loop-b", &l[0].join("loop-a"));
    symlink("loop-a", &l[0].join("loop-b"));
    symlink("/", &l[1].join("to-root"));
    lchown(&l[1].join("to-root"), 1000, 1000);
    write(&l[0].join("file"), b"content");
    // Hard links: three names in one layer across dirs, and a pair in the lower layer.
    write(&l[0].join("h/one"), b"linked");
    fs::create_dir_all(l[0].join("h2")).unwrap();
    fs::hard_link(l[0].join("h/one"), l[0].join("h/two")).unwrap();
    fs::hard_link(l[0].join("h/one"), l[0].join("h2/three")).unwrap();
    write(&l[1].join("pair/a"), b"pair");
    fs::hard_link(l[1].join("pair/a"), l[1].join("pair/b")).unwrap();
    // Special files.
    mknod(&l[0].join("fifo"), libc::S_IFIFO | 0o640, 0);
    mknod(
        &l[1].join("chr"),
        libc::S_IFCHR | 0o600,
        libc::makedev(60, 2),
    );
    mknod(
        &l[1].join("blk"),
        libc::S_IFBLK | 0o660,
        libc::makedev(60, 1),
    );
    mknod(&l[1].join("sock"), libc::S_IFSOCK | 0o755, 0);
    // Owners, set-id bits, xattrs in several namespaces.
    write(&l[1].join("suid"), b"#!/bin/sh\n");
    lchown(&l[1].join("suid"), 1234, 100);
    chmod(&l[1].join("suid"), 0o4755);
    write(&l[1].join("caps"), b"bin");
    set_xattr(
        &l[1].join("caps"),
        "security.capability",
        &[
            1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    set_xattr(&l[1].join("caps"), "user.mime", b"application/x-test");
    set_xattr(&l[1].join("caps"), "trusted.custom", b"t");
    set_xattr(&l[0].join("h"), "user.dir", b"on a dir");
    // An internal marker xattr that must never show.
    set_xattr(&l[1].join("pair"), "trusted.overlay.impure", b"y");
    let (_, ours) = compare_ro(t.path(), &l, &l);
    assert_eq!(
        ours.entries[Path::new("abs")].link.as_deref(),
        Some(std::ffi::OsStr::new("/nonexistent-target/abs"))
    );
    assert_eq!(ours.entries[Path::new("to-root")].kind, 'l');
    assert_eq!(ours.entries[Path::new("to-root")].uid, 1000);
    assert!(ours.link_groups.contains(&vec![
        PathBuf::from("h/one"),
        PathBuf::from("h/two"),
        PathBuf::from("h2/three")
    ]));
    assert_eq!(ours.entries[Path::new("h/one")].nlink, 3);
    assert_eq!(ours.entries[Path::new("blk")].rdev, libc::makedev(60, 1));
    assert!(
        ours.entries[Path::new("caps")]
            .xattrs
            .contains_key(std::ffi::OsStr::new("security.capability"))
    );
    assert!(ours.entries[Path::new("pair")].xattrs.is_empty());
}

#[test]
fn directory_with_ten_thousand_entries() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = dirs(t.path(), "l", 3);
    for i in 0..10_000 {
        let layer = &l[i % 3];
        fs::write(layer.join("big").join(format!("entry-{i:05}")), b"").unwrap_or_else(|_| {
            fs::create_dir_all(layer.join("big")).unwrap();
            fs::write(layer.join("big").join(format!("entry-{i:05}")), b"").unwrap();
        });
    }
    // Duplicates across layers and whiteouts of some lower names.
    for i in (0..10_000).step_by(7) {
        fs::write(l[0].join("big").join(format!("entry-{i:05}")), b"dup").unwrap();
    }
    for i in (2..10_000).step_by(30) {
        let p = l[1].join("big").join(format!("entry-{i:05}"));
        let _ = fs::remove_file(&p);
        kernel_whiteout(&p);
    }
    let (_, ours) = compare_ro(t.path(), &l, &l);
    let n = ours
        .entries
        .keys()
        .filter(|p| p.parent() == Some(Path::new("big")))
        .count();
    // Whited out in the middle layer: names of the two lower layers not also in the top.
    let hidden = (2..10_000)
        .step_by(30)
        .filter(|i| i % 7 != 0 && i % 3 != 0)
        .count();
    assert_eq!(n, 10_000 - hidden);
}

#[test]
fn stack_of_a_hundred_layers() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = dirs(t.path(), "", 100);
    for (i, layer) in l.iter().enumerate() {
        // Every layer adds to a dir merged through all 100, overrides a shared name,
        // and some hide or reset what is below.
        write(
            &layer.join(format!("shared/f{i:03}")),
            format!("{i}").as_bytes(),
        );
        write(&layer.join("shared/top"), format!("layer {i}").as_bytes());
        write(&layer.join(format!("d{}/x{i}", i % 10)), b"x");
        if i % 17 == 5 {
            kernel_whiteout(&layer.join(format!("shared/f{:03}", i + 1)));
        }
        if i == 53 {
            set_xattr(&layer.join("d3"), "trusted.overlay.opaque", b"y");
        }
    }
    let (_, ours) = compare_ro(t.path(), &l, &l);
    assert_eq!(
        ours.entries[Path::new("shared/top")].size,
        "layer 0".len() as u64
    );
    assert!(has(&ours, "d3/x43") && has(&ours, "d3/x53") && !has(&ours, "d3/x63"));
    assert!(!has(&ours, "shared/f006") && has(&ours, "shared/f099"));
}

#[test]
fn names_with_odd_bytes() {
    if support::skip_unless_root() {
        return;
    }
    let names: Vec<Vec<u8>> = vec![
        b"with space".to_vec(),
        b" leading and trailing ".to_vec(),
        b"new\nline".to_vec(),
        b"tab\there".to_vec(),
        b"back\\slash".to_vec(),
        b"colon:comma,eq=".to_vec(),
        b"-dash".to_vec(),
        b"...".to_vec(),
        b".wh".to_vec(),
        b"wh.x".to_vec(),
        vec![0xff, 0xfe, b'x'],
        vec![b'a', 0x80, b'b'],
        "unicode-\u{e9}\u{4e2d}".as_bytes().to_vec(),
        vec![b'n'; 255],
    ];
    for oci in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let l = dirs(t.path(), "l", 3);
        for (i, n) in names.iter().enumerate() {
            let n = os(n);
            fs::write(l[2].join(n), b"bottom").unwrap();
            fs::create_dir_all(l[2].join("d").join(n)).unwrap();
            fs::write(l[2].join("d").join(n).join(n), b"inner").unwrap();
            // Every other name is whited out, the rest overridden or kept.
            if i % 2 == 0 && n.len() <= 251 {
                if oci {
                    let mut w = b".wh.".to_vec();
                    w.extend_from_slice(n.as_bytes());
                    fs::write(l[1].join(os(&w)), b"").unwrap();
                } else {
                    kernel_whiteout(&l[1].join(n));
                }
            } else {
                fs::write(l[0].join(n), b"top").unwrap();
            }
            symlink(
                std::str::from_utf8(b"d").unwrap(),
                &l[0].join(format!("link{i}")),
            );
        }
        let (_, ours) = if oci {
            compare_oci(t.path(), &l)
        } else {
            compare_ro(t.path(), &l, &l)
        };
        for n in &names {
            assert!(
                ours.entries
                    .contains_key(&Path::new("d").join(os(n)).join(os(n)))
            );
        }
    }
}

/// Layer dirs themselves with odd names (the lowerdir list escapes `:` and `,`).
#[test]
fn layer_paths_with_odd_characters() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("layer with space");
    let b = t.path().join("layer:colon");
    write(&a.join("f"), b"a");
    write(&b.join("f"), b"b");
    write(&b.join("g"), b"g");
    let lm = t.path().join("m");
    let g = mount_layerfs(
        &Stack {
            data: Vec::new(),
            lowers: vec![a, b],
            upper: None,
            work: None,
        },
        &lm,
        &[],
    );
    assert_eq!(fs::read(lm.join("f")).unwrap(), b"a");
    assert_eq!(fs::read(lm.join("g")).unwrap(), b"g");
    drop(g);
}

/// Inode numbers of a read-only stack on one filesystem are the real ones, as the kernel
/// reports them, so `find -inum` and hard-link detection work the same.
#[test]
fn inode_numbers_equal_the_kernels() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = dirs(t.path(), "l", 3);
    for (i, layer) in l.iter().enumerate() {
        write(&layer.join(format!("d/f{i}")), b"x");
        write(&layer.join("d/same"), b"x");
        write(&layer.join(format!("only{i}/f")), b"x");
    }
    fs::hard_link(l[1].join("d/f1"), l[1].join("d/f1-link")).unwrap();
    let (k, ours) = compare_ro(t.path(), &l, &l);
    for (p, ino) in &ours.inos {
        if ours.entries[p].kind != 'd' || !p.as_os_str().is_empty() {
            assert_eq!(Some(ino), k.inos.get(p), "inode number of {}", p.display());
        }
    }
    let real = fs::metadata(l[1].join("d/f1")).unwrap().ino();
    assert_eq!(ours.inos[Path::new("d/f1")], real);
}
