//! Basic mount life cycle and a first differential check against the kernel overlay.

use std::fs;

use support::files::*;
use support::layerfs_bin;
use support::mounts::*;
use support::stack::*;
use support::tree::*;
use support::xattr::*;

#[test]
fn readonly_merge_matches_kernel() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l1 = t.path().join("l1");
    let l2 = t.path().join("l2");
    write(&l2.join("d/sub/f"), b"a");
    write(&l2.join("d/t"), b"bottom");
    write(&l1.join("d/t"), b"top");
    write(&l2.join("gone"), b"x");
    fs::create_dir_all(&l1).unwrap();
    kernel_whiteout(&l1.join("gone"));
    write(&l2.join("opq/hidden"), b"h");
    write(&l1.join("opq/visible"), b"v");
    set_xattr(&l1.join("opq"), "trusted.overlay.opaque", b"y");
    let stack = Stack {
        data: Vec::new(),
        lowers: vec![l1, l2],
        upper: None,
        work: None,
    };
    let km = t.path().join("k");
    let lm = t.path().join("m");
    let kg = mount_kernel(&stack, &km);
    let lg = mount_layerfs(&stack, &lm, &[]);
    let a = snapshot(&km, &SnapOpts::default().kernel());
    let b = snapshot(&lm, &SnapOpts::default());
    assert_same_tree(&a, &b, "kernel vs layerfs");
    assert!(b.entries.contains_key(std::path::Path::new("opq/visible")));
    assert!(!b.entries.contains_key(std::path::Path::new("opq/hidden")));
    assert_eq!(fs::read(lm.join("d/t")).unwrap(), b"top");
    drop(kg);
    drop(lg);
    assert!(!is_mounted(&lm));
}

/// The mount table shows the type `fuse.layerfs` (as fuse-overlayfs shows
/// `fuse.fuse-overlayfs`), so `findmnt -t fuse.layerfs` finds layerfs mounts, read-only
/// and writable, with the source given by `fsname`.
#[test]
fn mount_table_type_is_fuse_layerfs() {
    if support::skip_unless_root() || support::skip_without_tool("findmnt") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("l");
    write(&lower.join("f"), b"x");
    let ro = t.path().join("ro");
    let rw = t.path().join("rw");
    let _g1 = mount_layerfs(
        &Stack {
            data: Vec::new(),
            lowers: vec![lower.clone()],
            upper: None,
            work: None,
        },
        &ro,
        &[],
    );
    let _g2 = mount_layerfs(
        &rw_stack(t.path(), &[lower], "rw"),
        &rw,
        &["fsname=layerfs:typed"],
    );
    let m = mount_at(&ro).expect("the read-only mount is listed");
    assert_eq!(
        (m.fstype.as_str(), m.source.as_str()),
        ("fuse.layerfs", "layerfs")
    );
    let m = mount_at(&rw).expect("the writable mount is listed");
    assert_eq!(
        (m.fstype.as_str(), m.source.as_str()),
        ("fuse.layerfs", "layerfs:typed")
    );
    let out = std::process::Command::new("findmnt")
        .args(["-n", "-l", "-o", "TARGET", "-t", "fuse.layerfs"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    for p in [&ro, &rw] {
        assert!(
            listed.lines().any(|l| std::path::Path::new(l.trim()) == p),
            "findmnt -t fuse.layerfs does not list {}: {listed}",
            p.display()
        );
    }
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("m");
    fs::create_dir_all(&m).unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "-o".into(),
            "lowerdir=/nonexistent/layer".into(),
            m.display().to_string(),
        ],
        vec!["-o".into(), "lowerdir=".into(), m.display().to_string()],
        vec![
            "-o".into(),
            "lowerdir=/etc/passwd".into(),
            m.display().to_string(),
        ],
        vec![
            "-o".into(),
            format!("lowerdir={},bogus", t.path().display()),
            m.display().to_string(),
        ],
        vec![
            "-o".into(),
            format!("lowerdir={}", t.path().display()),
            m.display().to_string(),
        ],
    ];
    for args in cases {
        let out = std::process::Command::new(layerfs_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("layerfs: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!is_mounted(&m));
    }
}
