//! `commit`, `save` and `export`: the layer a commit writes (whiteouts, opaque markers,
//! renamed directories in full, hard links, xattrs, no overlay xattrs), reproducible
//! digests, shared base layers, and the round trip container → commit → save → import
//! into a fresh store → create → mount giving the same tree (also through the kernel's
//! overlayfs), and export giving the merged tree.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::cli::*;
use support::files::*;
use support::images::sha;
use support::mounts::*;
use support::samples::*;
use support::stack::*;
use support::store_env::*;
use support::tree::*;
use support::xattr::*;

fn opts() -> SnapOpts {
    // Merged directories report nlink 1 (as the kernel's overlayfs does); a directory
    // that moved into one layer reports its real count. Everything else is compared.
    SnapOpts {
        dir_nlink: false,
        mtimes: false,
        ..SnapOpts::default()
    }
}

/// Every kind of change.
fn change_everything(m: &Path) {
    fs::write(m.join("etc/os-release"), "NAME=changed\n").unwrap();
    fs::remove_file(m.join("etc/passwd")).unwrap();
    fs::remove_file(m.join("srv/app/conf/a.conf")).unwrap();
    fs::rename(m.join("srv/app"), m.join("srv/renamed")).unwrap();
    fs::remove_dir_all(m.join("opq")).unwrap();
    fs::create_dir(m.join("opq")).unwrap();
    fs::write(m.join("opq/fresh"), "fresh").unwrap();
    write(&m.join("new/deep/file"), b"deep");
    fs::write(m.join("new/h1"), "linked").unwrap();
    fs::hard_link(m.join("new/h1"), m.join("new/h2")).unwrap();
    fs::hard_link(m.join("usr/lib/libx.so"), m.join("new/libx.hard")).unwrap();
    std::os::unix::fs::symlink("../etc/issue", m.join("new/link")).unwrap();
    set_xattr(&m.join("etc/issue"), "user.note", b"kept");
    fs::set_permissions(m.join("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(m.join("data/tagged"), Some(1234), Some(5678)).unwrap();
    mknod(&m.join("new/fifo"), libc::S_IFIFO | 0o644, 0);
    mknod(
        &m.join("new/zero"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 5),
    );
    fs::remove_dir_all(m.join("var/log")).unwrap();
    let long = "x".repeat(120);
    write(&m.join(format!("new/{long}/{long}")), b"long path");
}

/// One tar entry: path, type, link target, xattr names, mtime.
type TarItem = (String, tar::EntryType, Option<String>, Vec<String>, u64);

/// Entries of a layer tar, in order.
fn tar_entries(blob: &Path) -> Vec<TarItem> {
    let f = fs::File::open(blob).unwrap();
    let mut a = tar::Archive::new(f);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        assert_eq!(h.username_bytes().unwrap_or(b""), b"", "uname set");
        assert_eq!(h.groupname_bytes().unwrap_or(b""), b"", "gname set");
        let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.to_vec()).unwrap());
        let mut xattrs = Vec::new();
        if let Some(p) = e.pax_extensions().unwrap() {
            for x in p {
                let x = x.unwrap();
                let k = x.key().unwrap();
                assert!(!k.contains("atime") && !k.contains("ctime"), "{k}");
                if let Some(n) = k.strip_prefix("SCHILY.xattr.") {
                    xattrs.push(n.to_string());
                }
            }
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((path, h.entry_type(), link, xattrs, h.mtime().unwrap()));
    }
    out
}

/// More: a lower dir renamed over a path where the image has a dir (the committed layer
/// needs an opaque marker there), after one of its files was hard-linked elsewhere.
fn change_more(m: &Path) {
    fs::remove_dir_all(m.join("home/user")).unwrap();
    fs::rename(m.join("usr/lib"), m.join("home/user")).unwrap();
    fs::write(m.join("home/user/added-after-move"), "later").unwrap();
}

fn blob_of_top_layer(env: &Env, image: &str) -> PathBuf {
    let v = env.inspect(image);
    let top = v["Layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(top["MediaType"], "application/vnd.oci.image.layer.v1.tar");
    assert_eq!(top["Digest"], top["DiffID"], "stored uncompressed");
    let d = top["Digest"].as_str().unwrap();
    // The store keeps a tar blob as a record and rebuilds it: read it as `save` writes it.
    let out = env.path(&format!("saved-{}", image.replace([':', '/'], "_")));
    if !out.exists() {
        env.ok(&[
            "save",
            image,
            "--format",
            "oci-dir",
            "-o",
            out.to_str().unwrap(),
        ]);
    }
    let p = out
        .join("blobs/sha256")
        .join(d.strip_prefix("sha256:").unwrap());
    assert_eq!(
        sha(&fs::read(&p).unwrap()),
        d,
        "the rebuilt tar hashes to its digest"
    );
    p
}

#[test]
fn committed_layer_holds_the_changes_in_oci_form() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let m = env.mounted("sample:1", "c1");
    change_everything(&m);
    let id = env.line(&["commit", "c1", "out:1", "-m", "all changes", "-a", "me"]);
    assert!(id.starts_with("sha256:"), "{id}");
    let entries = tar_entries(&blob_of_top_layer(&env, "out:1"));
    let by_path: BTreeMap<&str, _> = entries.iter().map(|e| (e.0.as_str(), e)).collect();
    let has = |p: &str| by_path.contains_key(p);
    // Whiteouts in OCI form, never a device.
    assert!(has("etc/.wh.passwd"));
    assert!(
        has("srv/app/conf/.wh.a.conf") || has("srv/.wh.app"),
        "{by_path:?}"
    );
    assert!(has("srv/.wh.app"));
    assert!(has("var/.wh.log"));
    // The opaque marker right after its directory.
    let i = entries.iter().position(|e| e.0 == "opq/").unwrap();
    assert_eq!(entries[i + 1].0, "opq/.wh..wh..opq");
    assert!(has("opq/fresh"));
    // The renamed dir in full (its contents are in the image's layers).
    for p in [
        "srv/renamed/",
        "srv/renamed/version",
        "srv/renamed/conf/",
        "srv/renamed/conf/b.conf",
    ] {
        assert!(has(p), "{p} missing: {by_path:?}");
    }
    assert!(!has("srv/renamed/conf/a.conf"));
    // Hard links: new ones, and the copied-up lower one with all its names.
    assert_eq!(by_path["new/h2"].1, tar::EntryType::Link);
    assert_eq!(by_path["new/h2"].2.as_deref(), Some("new/h1"));
    let lib_names: Vec<_> = ["new/libx.hard", "usr/lib/libx.so", "usr/lib/libx.so.1"]
        .iter()
        .map(|p| by_path[p].1)
        .collect();
    assert_eq!(
        lib_names
            .iter()
            .filter(|t| **t == tar::EntryType::Link)
            .count(),
        2,
        "{lib_names:?}"
    );
    assert_eq!(by_path["new/link"].1, tar::EntryType::Symlink);
    assert_eq!(by_path["new/fifo"].1, tar::EntryType::Fifo);
    assert_eq!(by_path["new/zero"].1, tar::EntryType::Char);
    // Xattrs kept; the overlay's own never written.
    assert!(by_path["etc/issue"].3.contains(&"user.note".to_string()));
    for e in &entries {
        assert!(
            e.3.iter().all(|x| !x.contains("overlay")),
            "{}: {:?}",
            e.0,
            e.3
        );
    }
    // Long paths survive (PAX).
    assert!(entries.iter().any(|e| e.0.len() > 200));
    // The image: base layers shared, one more layer, history and author recorded.
    let base = env.inspect("sample:1");
    let new = env.inspect("out:1");
    let base_layers = base["Layers"].as_array().unwrap();
    let new_layers = new["Layers"].as_array().unwrap();
    assert_eq!(new_layers.len(), base_layers.len() + 1);
    for (a, b) in base_layers.iter().zip(new_layers) {
        assert_eq!(a["DiffID"], b["DiffID"]);
        assert_eq!(a["Digest"], b["Digest"]);
        assert_eq!(a["Path"], b["Path"], "the same layer dir, not a copy");
    }
    assert_eq!(new["Config"]["author"], "me");
    let hist = new["Config"]["history"].as_array().unwrap();
    assert_eq!(hist.last().unwrap()["comment"], "all changes");
    assert_eq!(hist.len(), new_layers.len(), "one history entry per layer");
    // The store shows the sharing.
    let df: serde_json::Value =
        serde_json::from_str(&env.ok(&["system", "df", "--format", "json"])).unwrap();
    let per: Vec<&serde_json::Value> = df["PerImage"].as_array().unwrap().iter().collect();
    let out = per.iter().find(|i| i["RepoTags"][0] == "out:1").unwrap();
    let base_size = base["Size"].as_u64().unwrap();
    assert_eq!(out["SharedSize"].as_u64().unwrap(), base_size);
    assert!(env.ok(&["system", "df", "-v"]).contains("out"));
}

#[test]
fn commit_is_reproducible() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let m = env.mounted("sample:1", "c1");
    change_everything(&m);
    env.ok(&["umount", "c1"]);
    let diff_id = |img: &str| -> String {
        env.inspect(img)["Layers"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["DiffID"]
            .as_str()
            .unwrap()
            .to_string()
    };
    env.ok(&["commit", "c1", "a:1"]);
    env.ok(&["commit", "c1", "a:2"]);
    // Mounted, without changes in between: the same bytes again.
    env.mount("c1");
    env.ok(&["commit", "c1", "a:3"]);
    assert_eq!(diff_id("a:1"), diff_id("a:2"));
    assert_eq!(diff_id("a:1"), diff_id("a:3"));
    // A change gives another layer.
    fs::write(env.mount("c1").join("another"), "x").unwrap();
    env.ok(&["commit", "c1", "a:4"]);
    assert_ne!(diff_id("a:1"), diff_id("a:4"));
    // A container without changes gives an empty but valid layer.
    env.create("sample:1", "empty");
    env.ok(&["commit", "empty", "e:1"]);
    env.ok(&["commit", "empty", "e:2"]);
    assert_eq!(diff_id("e:1"), diff_id("e:2"));
    assert_eq!(tar_entries(&blob_of_top_layer(&env, "e:1")).len(), 0);
}

fn merged_tree(m: &Path) -> Tree {
    snapshot(m, &opts())
}

/// Container `c1` of the sample image, mounted, with every kind of change and more; its
/// merged tree.
fn changed_container(env: &Env) -> Tree {
    env.import(&sample_image(), "sample:1");
    let m = env.mounted("sample:1", "c1");
    change_everything(&m);
    change_more(&m);
    merged_tree(&m)
}

#[test]
fn round_trip_commit_save_import_mount() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    let original = changed_container(&env);
    assert!(
        original.link_groups.iter().any(|g| g.len() == 3),
        "{:?}",
        original.link_groups
    );
    env.ok(&["commit", "c1", "rt/out:1"]);
    let entries = tar_entries(&blob_of_top_layer(&env, "rt/out:1"));
    let i = entries.iter().position(|e| e.0 == "home/user/").unwrap();
    assert_eq!(entries[i + 1].0, "home/user/.wh..wh..opq");
    let manifest = env.inspect("rt/out:1")["ManifestDigest"].clone();

    for format in ["oci-archive", "docker-archive", "oci-dir"] {
        let archive = env.path(&format!("out.{format}"));
        env.ok(&[
            "save",
            "rt/out:1",
            "-o",
            archive.to_str().unwrap(),
            "--format",
            format,
        ]);
        // A fresh store.
        let fresh = env.path(&format!("fresh-{format}"));
        let out = ok(&fresh, &["import", archive.to_str().unwrap()]);
        assert!(out.contains("Loaded image: rt/out:1"), "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&ok(&fresh, &["inspect", "rt/out:1"])).unwrap();
        if format != "docker-archive" {
            assert_eq!(v[0]["ManifestDigest"], manifest, "{format}");
        }
        assert_eq!(v[0]["Id"], env.inspect("rt/out:1")["Id"], "{format}");
        let id = ok(&fresh, &["create", "rt/out:1", "--name", "copy"]);
        assert_eq!(id.trim().len(), 64);
        let m2 = PathBuf::from(ok(&fresh, &["mount", "copy"]).trim());
        assert_same_tree(&original, &merged_tree(&m2), format);
        // The kernel's overlayfs over the new image's layer dirs shows the same tree.
        let km = env.path(&format!("kernel-{format}"));
        let kg: MountGuard = mount_kernel(&Stack::of_image(&v[0]), &km);
        assert_same_tree(&original, &merged_tree(&km), "kernel overlay");
        drop(kg);
        ok(&fresh, &["umount", "copy"]);
    }
}

#[test]
fn export_is_the_merged_tree() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    let original = changed_container(&env);
    let tar = env.path("c1.tar");
    env.ok(&["export", "c1", "-o", tar.to_str().unwrap()]);
    // Also to stdout, unmounted: the same bytes.
    env.ok(&["umount", "c1"]);
    let out = env.run(&["export", "c1"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, fs::read(&tar).unwrap());
    // Import the flat tar as a one-layer image in a fresh store and mount it.
    let fresh = env.path("fresh");
    ok(
        &fresh,
        &["import", tar.to_str().unwrap(), "--tag", "flat:1"],
    );
    ok(&fresh, &["create", "flat:1", "--name", "flat"]);
    let m2 = PathBuf::from(ok(&fresh, &["mount", "flat"]).trim());
    let mut copy = merged_tree(&m2);
    // The tar has no entry for the root itself.
    copy.entries.remove(Path::new(""));
    let mut orig = original;
    orig.entries.remove(Path::new(""));
    assert_same_tree(&orig, &copy, "export");
    // Symlinks were stored, not followed; hard links stayed links.
    assert!(
        fs::symlink_metadata(m2.join("usr/bin/abs"))
            .unwrap()
            .is_symlink()
    );
    assert!(
        copy.link_groups.iter().any(|g| g.len() == 3),
        "{:?}",
        copy.link_groups
    );
    ok(&fresh, &["umount", "flat"]);
}
