//! Every xattr call form, and directory link counts, against the kernel's overlayfs.
//!
//! Tools ask for an xattr's size first (`getxattr(path, name, NULL, 0)`), then read it
//! into a buffer of that size; `listxattr` works the same way. Each form is compared
//! with the kernel mounting the same layers (its own copy of the upper), for files,
//! directories, symlinks and specials that are lower-only, upper-only, copied up and
//! merged, on writable and read-only mounts. Directory link counts are compared before
//! and after a copy-up inside the directory, with the kernel's attribute cache warm.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::files::*;
use support::fingerprint::*;
use support::stack::*;
use support::xattr::*;

/// What one call form answered: the bytes, or the errno.
type Answer = Result<Vec<u8>, i32>;

fn errno(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

/// All call forms for one object: per xattr name, and for the list.
fn forms(p: &Path) -> BTreeMap<String, Answer> {
    let mut out = BTreeMap::new();
    let list = rustix::fs::llistxattr_query(p).map_err(errno);
    out.insert("list size".into(), list.map(|n| n.to_string().into_bytes()));
    let mut names = Vec::new();
    if let Ok(n) = list {
        let mut buf = vec![0u8; n];
        let exact = rustix::fs::llistxattr(p, &mut buf[..])
            .map(|m| buf[..m].to_vec())
            .map_err(errno);
        if let Ok(l) = &exact {
            let mut v: Vec<&[u8]> = l.split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
            v.sort();
            names = v
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            out.insert("list exact".into(), Ok(names.join(",").into_bytes()));
        } else {
            out.insert("list exact".into(), exact);
        }
        if n > 0 {
            let mut small = vec![0u8; n - 1];
            out.insert(
                "list too small".into(),
                rustix::fs::llistxattr(p, &mut small[..])
                    .map(|m| small[..m].to_vec())
                    .map_err(errno),
            );
        }
    }
    // The names listed, plus one that is not set and the internal ones (never shown).
    names.push("user.absent".into());
    names.push("trusted.overlay.opaque".into());
    names.push("trusted.overlay.origin".into());
    for name in names {
        let size = rustix::fs::lgetxattr_query(p, name.as_str()).map_err(errno);
        out.insert(
            format!("{name} size"),
            size.map(|n| n.to_string().into_bytes()),
        );
        let mut big = vec![0u8; 65536];
        out.insert(
            format!("{name} big"),
            rustix::fs::lgetxattr(p, name.as_str(), &mut big[..])
                .map(|m| big[..m].to_vec())
                .map_err(errno),
        );
        if let Ok(n) = size {
            let mut exact = vec![0u8; n];
            if n > 0 {
                out.insert(
                    format!("{name} exact"),
                    rustix::fs::lgetxattr(p, name.as_str(), &mut exact[..])
                        .map(|m| exact[..m].to_vec())
                        .map_err(errno),
                );
                let mut small = vec![0u8; n - 1];
                out.insert(
                    format!("{name} too small"),
                    rustix::fs::lgetxattr(p, name.as_str(), &mut small[..])
                        .map(|m| small[..m].to_vec())
                        .map_err(errno),
                );
            }
        }
    }
    out
}

/// Paths to probe (relative to the mount) and every form's answer for each.
fn probe(root: &Path, rels: &[&str]) -> BTreeMap<String, BTreeMap<String, Answer>> {
    rels.iter()
        .map(|r| (r.to_string(), forms(&root.join(r))))
        .collect()
}

fn assert_same(
    kernel: &BTreeMap<String, BTreeMap<String, Answer>>,
    ours: &BTreeMap<String, BTreeMap<String, Answer>>,
    what: &str,
) {
    let mut diffs = Vec::new();
    for (p, k) in kernel {
        let o = &ours[p];
        for (form, ka) in k {
            match o.get(form) {
                Some(oa) if oa == ka => {}
                oa => diffs.push(format!("{p}: {form}: kernel {ka:?}, layerfs {oa:?}")),
            }
        }
        for form in o.keys() {
            if !k.contains_key(form) {
                diffs.push(format!("{p}: {form}: only layerfs answers {:?}", o[form]));
            }
        }
    }
    assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
}

/// Two lower layers with xattrs on every kind of object.
fn build_lowers(base: &Path) -> Vec<PathBuf> {
    let top = base.join("l0");
    let bot = base.join("l1");
    for d in ["ldir/sub/deep", "mdir/sub", "idle"] {
        fs::create_dir_all(bot.join(d)).unwrap();
    }
    fs::create_dir_all(top.join("mdir/other")).unwrap();
    write(&bot.join("ldir/file"), b"lower file");
    write(&bot.join("ldir/sub/deep/f"), b"deep");
    write(&bot.join("mdir/sub/f"), b"m");
    write(&top.join("mdir/top"), b"t");
    write(&bot.join("cfile"), b"to copy up");
    symlink("harmless-target", &bot.join("ldir/link"));
    mknod(&bot.join("ldir/fifo"), libc::S_IFIFO | 0o644, 0);
    set_xattr(&bot.join("ldir"), "user.low", b"12345");
    set_xattr(&bot.join("ldir"), "user.empty", b"");
    set_xattr(&bot.join("ldir/file"), "user.f", b"file value");
    set_xattr(&bot.join("ldir/fifo"), "trusted.fifo", b"ff");
    set_xattr(&bot.join("ldir/link"), "trusted.sym", b"symlink value");
    set_xattr(&bot.join("ldir/sub"), "user.big", &[b'x'; 3000]);
    set_xattr(&bot.join("mdir"), "user.bottom", b"b");
    set_xattr(&top.join("mdir"), "user.top", b"tt");
    set_xattr(&bot.join("cfile"), "user.c", b"copied");
    set_xattr(&bot.join("idle"), "user.i", b"idle");
    vec![top, bot]
}

/// Paths that exist before `change`.
const PROBES_BEFORE: &[&str] = &[
    "",
    "ldir",
    "ldir/file",
    "ldir/link",
    "ldir/fifo",
    "ldir/sub",
    "mdir",
    "cfile",
    "idle",
];

/// Paths `change` creates.
const PROBES_NEW: &[&str] = &["nd", "nd/nf", "nd/nl"];

/// Every path after `change`.
fn probes() -> Vec<&'static str> {
    PROBES_BEFORE.iter().chain(PROBES_NEW).copied().collect()
}

/// The same changes through either mount: upper-only objects with xattrs, a copy-up.
fn change(m: &Path) {
    fs::create_dir(m.join("nd")).unwrap();
    write(&m.join("nd/nf"), b"new");
    symlink("harmless-target", &m.join("nd/nl"));
    set_xattr(&m.join("nd"), "user.x", b"12345");
    set_xattr(&m.join("nd/nf"), "user.y", b"");
    set_xattr(&m.join("nd/nl"), "trusted.z", b"on a symlink");
    set_xattr(&m.join("cfile"), "user.added", b"after copy-up");
    set_xattr(&m.join("ldir/sub"), "user.dir", b"copied-up dir");
}

#[test]
fn xattr_call_forms_match_the_kernel() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lowers = build_lowers(t.path());
    let check = LowersUnchanged::record(&lowers);

    // Read-only: every object lower-only, the same real objects: every answer equal.
    let ro = Stack::ro(lowers.clone());
    let (km, lm) = (t.path().join("k-ro"), t.path().join("m-ro"));
    let kg = mount_kernel(&ro, &km);
    let lg = mount_layerfs(&ro, &lm, &[]);
    assert_same(
        &probe(&km, PROBES_BEFORE),
        &probe(&lm, PROBES_BEFORE),
        "read-only mount",
    );
    drop((kg, lg));

    // Writable, each with its own upper: the same changes through both. The uppers hold
    // different internal records (the kernel's `trusted.overlay.origin` and `uuid`,
    // layerfs's `trusted.overlay.layerfs.ino`), which the size of a whole list counts
    // (both answer the real list's size, as the kernel does); every other form agrees.
    let ks = rw_stack(t.path(), &lowers, "k");
    let ls = rw_stack(t.path(), &lowers, "l");
    let (km, lm) = (t.path().join("k-rw"), t.path().join("m-rw"));
    let kg = mount_kernel(&ks, &km);
    let mut lg = mount_layerfs(&ls, &lm, &[]);
    let no_sizes = |mut t: BTreeMap<String, BTreeMap<String, Answer>>| {
        for forms in t.values_mut() {
            forms.remove("list size");
            // Asked only when the size is not 0; `ERANGE` on both whenever asked.
            forms.remove("list too small");
        }
        t
    };
    assert_same(
        &no_sizes(probe(&km, PROBES_BEFORE)),
        &no_sizes(probe(&lm, PROBES_BEFORE)),
        "writable mounts, unchanged",
    );
    change(&km);
    change(&lm);
    let kernel_rw = no_sizes(probe(&km, &probes()));
    assert_same(
        &kernel_rw,
        &no_sizes(probe(&lm, &probes())),
        "writable mounts, changed",
    );
    drop(kg);

    // The kernel mounting layerfs's upper reads the same real objects: every answer,
    // list sizes included, equal (the kernel writes its records first, then layerfs
    // mounts the same dirs again).
    lg.unmount();
    let kg = mount_kernel(&ls, &km);
    // Its first lookups write `trusted.overlay.origin` where it is missing: ask twice.
    probe(&km, &probes());
    let kernel_on_ours = probe(&km, &probes());
    drop(kg);
    let lg = mount_layerfs(&ls, &lm, &[]);
    assert_same(
        &kernel_on_ours,
        &probe(&lm, &probes()),
        "the kernel on layerfs's upper",
    );
    drop(lg);
    check.check();
}

/// `st_nlink` of every directory under `m`, by relative path.
fn dir_links(m: &Path, rels: &[&str]) -> BTreeMap<String, u64> {
    rels.iter()
        .map(|r| {
            (
                r.to_string(),
                fs::symlink_metadata(m.join(r)).unwrap().nlink(),
            )
        })
        .collect()
}

#[test]
fn directory_link_counts_match_the_kernel_across_copy_up() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lowers = build_lowers(t.path());
    let check = LowersUnchanged::record(&lowers);
    let dirs = [
        "",
        "ldir",
        "ldir/sub",
        "ldir/sub/deep",
        "mdir",
        "mdir/sub",
        "idle",
    ];
    let ks = rw_stack(t.path(), &lowers, "k");
    let ls = rw_stack(t.path(), &lowers, "l");
    let (km, lm) = (t.path().join("k"), t.path().join("m"));
    let kg = mount_kernel(&ks, &km);
    let lg = mount_layerfs(&ls, &lm, &[]);

    // Before: the kernel caches these attributes now.
    let before = dir_links(&km, &dirs);
    assert_eq!(before, dir_links(&lm, &dirs), "before any change");
    assert!(
        before["ldir/sub"] > 1,
        "a lower-only directory reports its own count"
    );

    // A write deep inside copies up ldir, ldir/sub and ldir/sub/deep: all merged now.
    for m in [&km, &lm] {
        fs::write(m.join("ldir/sub/deep/f"), b"changed").unwrap();
        fs::create_dir(m.join("updir")).unwrap();
        fs::create_dir(m.join("updir/a")).unwrap();
        fs::create_dir(m.join("updir/b")).unwrap();
    }
    let mut all = dirs.to_vec();
    all.extend(["updir", "updir/a"]);
    let after = dir_links(&km, &all);
    assert_eq!(
        after["ldir/sub"], 1,
        "the kernel reports one link for merged dirs"
    );
    assert_eq!(after["updir"], 4, "an upper-only dir reports its own count");
    assert_eq!(
        after,
        dir_links(&lm, &all),
        "after copy-up inside the directories"
    );

    // A new subdirectory in an upper-only dir changes its count in both.
    for m in [&km, &lm] {
        fs::remove_dir(m.join("updir/b")).unwrap();
    }
    assert_eq!(dir_links(&km, &all), dir_links(&lm, &all), "after rmdir");
    drop((kg, lg));
    check.check();
}
