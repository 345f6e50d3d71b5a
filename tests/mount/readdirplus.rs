//! Listings with READDIRPLUS (the default: entries with attributes) and without
//! (`-o readdirplus=off`), both with the kernel's listing cache: the same trees as the
//! kernel's overlayfs, read-only and after changes, and listings that stay complete while
//! other threads create and delete.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::files::*;
use support::stack::*;
use support::tree::*;
use support::xattr::*;

const MODES: [&[&str]; 2] = [&[], &["readdirplus=off"]];

/// A stack with every whiteout form, an opaque dir, a merged big dir, links and specials.
fn layers(base: &Path) -> Vec<std::path::PathBuf> {
    let l: Vec<_> = (0..3).map(|i| base.join(format!("l{i}"))).collect();
    for d in &l {
        fs::create_dir_all(d).unwrap();
    }
    for i in 0..1500 {
        write(&l[2].join(format!("big/b{i}")), format!("{i}").as_bytes());
    }
    for i in 0..1500 {
        write(&l[1].join(format!("big/a{i}")), format!("{i}").as_bytes());
    }
    write(&l[2].join("gone"), b"x");
    write(&l[2].join("opq/hidden"), b"x");
    write(&l[2].join("dir/kept"), b"kept");
    symlink("dir/kept", &l[2].join("link"));
    mknod(&l[2].join("fifo"), libc::S_IFIFO | 0o640, 0);
    fs::hard_link(l[2].join("dir/kept"), l[2].join("hard")).unwrap();
    mknod(&l[1].join("gone"), libc::S_IFCHR | 0o600, 0);
    write(&l[1].join("opq/shown"), b"y");
    set_xattr(&l[1].join("opq"), "trusted.overlay.opaque", b"y");
    write(&l[0].join("dir/top"), b"top");
    l
}

#[test]
fn read_only_tree_matches_kernel() {
    for opt in MODES {
        read_only_tree_matches_kernel_with(opt);
    }
}

fn read_only_tree_matches_kernel_with(opt: &[&str]) {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = layers(t.path());
    let stack = Stack::ro(l.clone());
    let (km, lm) = (t.path().join("mk"), t.path().join("ml"));
    let kg = mount_kernel(&stack, &km);
    let lg = mount_layerfs(&stack, &lm, opt);
    let k = snapshot(&km, &SnapOpts::default().kernel());
    let ours = snapshot(&lm, &SnapOpts::default());
    // A second walk is answered from what READDIRPLUS taught the kernel.
    let again = snapshot(&lm, &SnapOpts::default());
    drop(kg);
    drop(lg);
    assert_same_tree(&k, &ours, &format!("kernel vs layerfs {opt:?}"));
    assert_same_tree(&ours, &again, "second walk");
    assert_eq!(
        ours.entries.keys().filter(|p| p.starts_with("big")).count(),
        3001
    );
    assert!(
        !ours
            .entries
            .keys()
            .any(|p| p.ends_with("gone") || p.ends_with("hidden"))
    );
}

#[test]
fn changes_show_in_listings_as_on_the_kernel() {
    for opt in MODES {
        changes_show_in_listings_as_on_the_kernel_with(opt);
    }
}

fn changes_show_in_listings_as_on_the_kernel_with(opt: &[&str]) {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = layers(t.path());
    let ks = rw_stack(t.path(), &l, "k");
    let ls = rw_stack(t.path(), &l, "o");
    let (km, lm) = (t.path().join("mk"), t.path().join("ml"));
    let kg = mount_kernel(&ks, &km);
    let lg = mount_layerfs(&ls, &lm, opt);
    for m in [&km, &lm] {
        // List first, so that the entries are known to the kernel before the changes.
        let _ = snapshot(m, &SnapOpts::default());
        for i in (0..1500).step_by(3) {
            fs::remove_file(m.join(format!("big/b{i}"))).unwrap();
        }
        fs::write(m.join("big/a7"), b"changed").unwrap();
        fs::rename(m.join("dir"), m.join("dir2")).unwrap();
        fs::create_dir(m.join("big/newdir")).unwrap();
        fs::write(m.join("big/newdir/f"), b"f").unwrap();
        fs::remove_dir_all(m.join("opq")).unwrap();
        symlink("a1", &m.join("big/sl"));
    }
    let k = snapshot(&km, &SnapOpts::default().kernel());
    let ours = snapshot(&lm, &SnapOpts::default());
    drop(kg);
    drop(lg);
    assert_same_tree(
        &k,
        &accept_visible_link_counts(&k, &ours, &l),
        "after changes",
    );
}

#[test]
fn listings_stay_complete_during_creates_and_deletes() {
    for opt in MODES {
        listings_stay_complete_during_creates_and_deletes_with(opt);
    }
}

fn listings_stay_complete_during_creates_and_deletes_with(opt: &[&str]) {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let l = layers(t.path());
    let ls = rw_stack(t.path(), &l, "o");
    let lm = t.path().join("ml");
    let _g = mount_layerfs(&ls, &lm, opt);
    let dir = lm.join("big");
    let stop = Arc::new(AtomicBool::new(false));
    // Listers run all the time; churn adds and removes names of its own.
    let listers: Vec<_> = (0..2)
        .map(|_| {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let names: BTreeSet<_> = fs::read_dir(&dir)
                        .unwrap()
                        .map(|e| e.unwrap().file_name())
                        .collect();
                    // The layer names never change: every listing has all of them.
                    assert!(
                        (0..1500).all(|i| names.contains(std::ffi::OsStr::new(&format!("a{i}")))),
                        "a listing lost a lower name"
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 0..20 {
        let made: Vec<String> = (0..50).map(|i| format!("c{round}-{i}")).collect();
        for n in &made {
            fs::write(dir.join(n), b"c").unwrap();
        }
        // A listing that starts after the creates sees every one of them.
        let names: BTreeSet<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        for n in &made {
            assert!(
                names.contains(n),
                "round {round}: {n} missing from a listing"
            );
        }
        for n in made.iter().step_by(2) {
            fs::remove_file(dir.join(n)).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in listers {
        assert!(h.join().unwrap() > 0);
    }
    let left = fs::read_dir(&dir).unwrap().count();
    assert_eq!(left, 3000 + 20 * 25);
}
