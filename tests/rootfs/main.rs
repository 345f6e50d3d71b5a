//! Real programs on a Debian minbase rootfs split into several layer dirs: read-only, the
//! outputs of `find`, `tar`, `getfattr` and `diff -r` on layerfs equal those on the
//! kernel's overlayfs and a chroot works; writable, package installation and everyday
//! tools work in a chroot and the kernel's overlayfs shows the same resulting tree.
//!
//! The rootfs comes from `LAYERFS_TEST_ROOTFS` (set by `scripts/test`, which builds it
//! with `scripts/make-test-rootfs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use support::debian::rootfs;
use support::files::*;
use support::fingerprint::*;
use support::shell::*;
use support::stack::*;
use support::tree::*;
use support::xattr::*;

const LAYERS: usize = 3;

/// The rootfs split into layers (top first), built once per test process and shared:
/// tests only read lower layers, and each checks that they are unchanged.
struct Split {
    _dir: tempfile::TempDir,
    lowers: Vec<PathBuf>,
}

fn split() -> &'static Split {
    static SPLIT: OnceLock<Split> = OnceLock::new();
    SPLIT.get_or_init(|| {
        let src = rootfs();
        let dir = tempfile::tempdir().unwrap();
        let lowers: Vec<PathBuf> = (0..=LAYERS)
            .map(|i| dir.path().join(format!("layer{i}")))
            .collect();
        // Every non-directory goes to one of the lower layers (by a hash of its path; all
        // names of a hard-linked file together); directories go to every layer that
        // needs them, so most directories are merged across layers.
        let mut lists: Vec<Vec<PathBuf>> = vec![Vec::new(); LAYERS];
        let mut in_list: Vec<BTreeSet<PathBuf>> = vec![BTreeSet::new(); LAYERS];
        let mut by_ino: HashMap<u64, usize> = HashMap::new();
        let mut stack = vec![PathBuf::from(".")];
        while let Some(rel) = stack.pop() {
            let md = fs::symlink_metadata(src.join(&rel)).unwrap();
            let mut h = DefaultHasher::new();
            rel.hash(&mut h);
            let mut layer = (h.finish() % LAYERS as u64) as usize;
            if md.is_dir() {
                let mut names: Vec<_> = fs::read_dir(src.join(&rel))
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort();
                let empty = names.is_empty();
                for n in names.into_iter().rev() {
                    stack.push(rel.join(n));
                }
                if !empty && rel.as_os_str().len() % 4 != 0 {
                    continue; // Only some directories also stand alone in a layer.
                }
            } else if md.nlink() > 1 {
                layer = *by_ino.entry(md.ino()).or_insert(layer);
            }
            for a in rel.ancestors().collect::<Vec<_>>().into_iter().rev() {
                if !a.as_os_str().is_empty() && in_list[layer].insert(a.to_path_buf()) {
                    lists[layer].push(a.to_path_buf());
                }
            }
        }
        for (i, list) in lists.iter().enumerate() {
            let dst = &lowers[i + 1];
            fs::create_dir_all(dst).unwrap();
            let mut names = Vec::new();
            for p in list {
                names.extend_from_slice(p.as_os_str().as_bytes());
                names.push(0);
            }
            let tar = |args: &[&str], dir: &Path, stdin: Stdio, stdout: Stdio| {
                Command::new("tar")
                    .args(["--xattrs", "--xattrs-include=*", "--numeric-owner"])
                    .arg("-C")
                    .arg(dir)
                    .args(args)
                    .stdin(stdin)
                    .stdout(stdout)
                    .spawn()
                    .unwrap()
            };
            let mut c = tar(
                &["--null", "--no-recursion", "-T", "-", "-cf", "-"],
                &src,
                Stdio::piped(),
                Stdio::piped(),
            );
            let out = c.stdout.take().unwrap();
            let mut x = tar(&["-xpf", "-"], dst, Stdio::from(out), Stdio::null());
            c.stdin.take().unwrap().write_all(&names).unwrap();
            assert!(
                c.wait().unwrap().success() && x.wait().unwrap().success(),
                "splitting into {}",
                dst.display()
            );
        }
        // The top layer changes things: a dir whited out, a dir made opaque, a file
        // replaced, a file added.
        let top = &lowers[0];
        let like = |rel: &str| {
            let d = top.join(rel);
            fs::create_dir_all(&d).unwrap();
            let md = fs::symlink_metadata(src.join(rel)).unwrap();
            lchown(&d, md.uid(), md.gid());
            chmod(&d, md.mode() & 0o7777);
        };
        for d in ["etc", "etc/cron.daily", "usr", "usr/share", "usr/share/doc"] {
            like(d);
        }
        kernel_whiteout(&top.join("usr/share/doc/bash"));
        set_xattr(&top.join("etc/cron.daily"), "trusted.overlay.opaque", b"y");
        write(&top.join("etc/cron.daily/only-this"), b"#!/bin/sh\n");
        write(&top.join("etc/hostname"), b"layered\n");
        for d in ["etc", "etc/cron.daily", "usr", "usr/share", "usr/share/doc"] {
            let md = fs::symlink_metadata(src.join(d)).unwrap();
            set_times(&top.join(d), md.mtime(), md.mtime_nsec());
        }
        Split { _dir: dir, lowers }
    })
}

fn sh_in(dir: &Path, cmd: &str) -> String {
    shell(&format!("cd '{}' && {cmd}", dir.display()))
}

/// `getfattr -R` output as a map of file -> attribute lines (its order follows readdir).
fn getfattr(dir: &Path) -> BTreeMap<String, String> {
    let out = sh_in(dir, "getfattr -R -h -d -m - . 2>/dev/null || true");
    out.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let (head, rest) = b.split_once('\n').unwrap_or((b, ""));
            (head.to_string(), rest.to_string())
        })
        .collect()
}

#[test]
fn read_only_rootfs_matches_kernel() {
    if support::skip_unless_root() {
        return;
    }
    let s = split();
    let check = LowersUnchanged::record(&s.lowers);
    let t = tempfile::tempdir().unwrap();
    let (km, lm) = (t.path().join("k"), t.path().join("l"));
    let stack = Stack::ro(s.lowers.clone());
    let kg = mount_kernel(&stack, &km);
    let lg = mount_layerfs(&stack, &lm, &[]);
    for cmd in [
        "find . -printf '%p %y %m %u %g %s %l\\n' | LC_ALL=C sort",
        "tar --sort=name -cf - . | tar -tvf -",
    ] {
        let (k, l) = (sh_in(&km, cmd), sh_in(&lm, cmd));
        assert!(k.lines().count() > 5000, "{cmd}: too little output");
        if k != l {
            let (kl, ll): (BTreeSet<&str>, BTreeSet<&str>) =
                (k.lines().collect(), l.lines().collect());
            panic!(
                "`{cmd}` differs:\nonly kernel: {:?}\nonly layerfs: {:?}",
                kl.difference(&ll).take(20).collect::<Vec<_>>(),
                ll.difference(&kl).take(20).collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(getfattr(&km), getfattr(&lm), "getfattr -R -d -m -");
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&km)
        .arg(&lm)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let k = snapshot(&km, &SnapOpts::with_mtimes().kernel());
    let l = snapshot(&lm, &SnapOpts::with_mtimes());
    assert_same_tree(&k, &l, "snapshots");
    assert_unique_inos(&l, "layerfs");
    assert!(!l.entries.contains_key(Path::new("usr/share/doc/bash")));
    assert_eq!(fs::read_dir(lm.join("etc/cron.daily")).unwrap().count(), 1);
    // A chroot runs programs from it.
    let run = |m: &Path| {
        shell(&format!(
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot '{}' /bin/sh -c 'ls / && dpkg -l | wc -l'",
            m.display()
        ))
    };
    let (ko, lo) = (run(&km), run(&lm));
    assert_eq!(ko, lo, "chroot output");
    let count: usize = lo.lines().last().unwrap().trim().parse().unwrap();
    assert!(count > 50, "dpkg -l lists {count} lines");
    drop(kg);
    drop(lg);
    check.check();
}

/// A small package built here (no network): files, a symlink, a conffile, a script.
fn build_deb(dir: &Path) -> PathBuf {
    let p = dir.join("pkg");
    write(
        &p.join("DEBIAN/control"),
        b"Package: layerfs-test\nVersion: 1.0\nArchitecture: all\nMaintainer: layerfs tests <tests@layerfs.invalid>\nDescription: test package\n",
    );
    write(&p.join("DEBIAN/conffiles"), b"/etc/layerfs-test.conf\n");
    write(
        &p.join("DEBIAN/postinst"),
        b"#!/bin/sh\nset -e\necho installed > /var/lib/layerfs-test.state\n",
    );
    chmod(&p.join("DEBIAN/postinst"), 0o755);
    write(&p.join("etc/layerfs-test.conf"), b"setting=1\n");
    write(
        &p.join("usr/share/layerfs-test/hello.txt"),
        b"hello from a package\n",
    );
    symlink("hello.txt", &p.join("usr/share/layerfs-test/link"));
    write(
        &p.join("usr/bin/layerfs-hello"),
        b"#!/bin/sh\ncat /usr/share/layerfs-test/link\n",
    );
    chmod(&p.join("usr/bin/layerfs-hello"), 0o755);
    let deb = dir.join("layerfs-test.deb");
    shell(&format!(
        "dpkg-deb --root-owner-group --build '{}' '{}' >/dev/null",
        p.display(),
        deb.display()
    ));
    deb
}

#[test]
fn programs_in_a_writable_rootfs() {
    if support::skip_unless_root() {
        return;
    }
    let s = split();
    let check = LowersUnchanged::record(&s.lowers);
    let t = tempfile::tempdir().unwrap();
    let deb = build_deb(t.path());
    let stack = rw_stack(t.path(), &s.lowers, "c");
    let m = t.path().join("m");
    let mut g = mount_layerfs(&stack, &m, &[]);
    fs::copy(&deb, m.join("tmp/layerfs-test.deb")).unwrap();
    let script = r#"
        set -e
        export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
        dpkg -i /tmp/layerfs-test.deb
        dpkg -s layerfs-test | grep -q 'Status: install ok installed'
        test "$(layerfs-hello)" = "hello from a package"
        test "$(cat /var/lib/layerfs-test.state)" = installed
        dpkg -i /tmp/layerfs-test.deb
        useradd -m -s /bin/sh -u 1500 testuser
        grep -q '^testuser:x:1500:' /etc/passwd
        test -d /home/testuser
        sed -i 's/^setting=1$/setting=2/' /etc/layerfs-test.conf
        grep -q '^setting=2$' /etc/layerfs-test.conf
        sed -i '1i # edited in place' /etc/debian_version
        cp -a /usr/share/common-licenses /opt/licenses
        cp -a /usr/bin /opt/bin-copy
        tar -C /etc -cf /tmp/etc.tar .
        mkdir /opt/etc-copy
        tar -C /opt/etc-copy -xpf /tmp/etc.tar
        rm -rf /usr/share/doc
        mv /usr/share/man /usr/share/man2
        test ! -e /usr/share/doc
        test ! -e /usr/share/man
        test -d /usr/share/man2/man1
        rm /tmp/etc.tar /tmp/layerfs-test.deb
    "#;
    let out = Command::new("chroot")
        .arg(&m)
        .args(["/bin/sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chroot script failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let o = SnapOpts::with_mtimes();
    let ours = snapshot(&m, &o);
    assert_unique_inos(&ours, "after the programs");
    for p in [
        "usr/share/man2/man1",
        "opt/licenses",
        "opt/etc-copy/passwd",
        "home/testuser",
        "usr/bin/layerfs-hello",
    ] {
        assert!(ours.entries.contains_key(Path::new(p)), "{p} missing");
    }
    g.unmount();
    let g = mount_layerfs(&stack, &m, &[]);
    assert_same_tree(&ours, &snapshot(&m, &o), "after remount");
    drop(g);
    let km = t.path().join("k");
    let kg = mount_kernel(&stack, &km);
    let k = snapshot(&km, &o.kernel());
    drop(kg);
    assert_same_tree(
        &k,
        &accept_visible_link_counts(&k, &ours, &stack.lowers),
        "kernel overlay of the same lower and upper dirs",
    );
    check.check();
}
