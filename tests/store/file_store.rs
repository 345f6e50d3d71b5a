//! The file store kept by the store's commands: each file's content once across images
//! that share files but no layer; `system check` verifying stubs and objects; `prune`
//! and `rmi` removing objects only when no layer names them; `df` showing the sharing;
//! `system migrate` converting a store written with whole files.

use std::fs;
use std::path::{Path, PathBuf};

use layerfs::store::extract::ExtractOptions;
use layerfs::store::import::Quiet;
use layerfs::store::{ImportOptions, Store};
use support::cli::*;
use support::images::*;
use support::store_env::*;
use support::xattr::*;

fn bytes(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

/// An image of one layer: two big files, a hard link, a small file, a symlink, a
/// set-uid file with an xattr.
fn image_a() -> Image {
    let l = LayerBuilder::new()
        .dir("usr", 0o755)
        .file("usr/big1", &bytes(1, 50_000))
        .hardlink("usr/big1.link", "usr/big1")
        .file_full("usr/suid", &bytes(2, 9_000), 0o4755, 0, 0, 1_700_000_000)
        .file_xattrs("usr/tagged", &bytes(3, 7_000), &[("user.k", b"v")])
        .file("usr/small", b"small\n")
        .symlink("usr/link", "big1")
        .build();
    image(vec![Layer::new(l, Comp::Gzip)])
}

/// Another image, no layer in common with `image_a`, two of its files the same.
fn image_b() -> Image {
    let l = LayerBuilder::new()
        .dir("opt", 0o755)
        .file("opt/same-big1", &bytes(1, 50_000))
        .file("opt/same-suid", &bytes(2, 9_000))
        .file("opt/own", &bytes(7, 30_000))
        .build();
    image(vec![Layer::new(l, Comp::Zstd)])
}

fn object_files(root: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(root.join("objects")) {
        for fan in rd.flatten() {
            for o in fs::read_dir(fan.path()).into_iter().flatten().flatten() {
                v.push(o.path());
            }
        }
    }
    v.sort();
    v
}

fn import(env: &Env, img: &Image, tag: &str) {
    env.import(img, tag);
}

#[test]
fn images_sharing_files_but_no_layer_store_them_once() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    import(&env, &image_a(), "a:1");
    assert_eq!(object_files(&env.root).len(), 3, "big1, suid, tagged");
    import(&env, &image_b(), "b:1");
    assert_eq!(object_files(&env.root).len(), 4, "only opt/own is new");
    let a = layer_dirs_of(&env.inspect("a:1"))[0].clone();
    let b = layer_dirs_of(&env.inspect("b:1"))[0].clone();
    assert_eq!(
        xattrs(&a.join("usr/big1"))["trusted.overlay.redirect"],
        xattrs(&b.join("opt/same-big1"))["trusted.overlay.redirect"]
    );
    assert_eq!(read_layer_file(&b.join("opt/same-big1")), bytes(1, 50_000));
    assert_eq!(fs::read(a.join("usr/small")).unwrap(), b"small\n");
    // df: each image shares 59,000 bytes of files with the other, no layer.
    let df: serde_json::Value =
        serde_json::from_str(&env.ok(&["system", "df", "--format", "json"])).unwrap();
    for i in df["PerImage"].as_array().unwrap() {
        assert_eq!(i["SharedSize"], 0, "{i}");
        assert_eq!(i["SharedFilesSize"], 59_000, "{i}");
    }
    assert_eq!(df["FileObjects"]["Total"], 4);
    assert_eq!(df["FileSharingSaves"], 59_000);
    assert!(env.ok(&["system", "check"]).contains("all intact"));

    // rmi of one image keeps the objects the other names, and removes its own.
    env.ok(&["rmi", "b:1"]);
    assert_eq!(object_files(&env.root).len(), 3);
    assert_eq!(read_layer_file(&a.join("usr/big1")), bytes(1, 50_000));
    env.ok(&["rmi", "a:1"]);
    assert!(object_files(&env.root).is_empty());
    // An object no layer names (a crash between placing objects and layers) goes with
    // prune.
    import(&env, &image_a(), "a:1");
    let stray = env.root.join("objects/00");
    fs::create_dir_all(&stray).unwrap();
    fs::write(stray.join("f".repeat(62)), b"stray").unwrap();
    let out = env.ok(&["system", "prune"]);
    assert!(out.contains("Deleted 1 file object"), "{out}");
    assert_eq!(object_files(&env.root).len(), 3);
}

#[test]
fn check_finds_changed_stubs_and_damaged_or_missing_objects() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    import(&env, &image_a(), "a:1");
    import(&env, &image_b(), "b:1");
    let a = layer_dirs_of(&env.inspect("a:1"))[0].clone();
    let b = layer_dirs_of(&env.inspect("b:1"))[0].clone();
    // A stub pointed at another object: the file's content changed.
    let other = xattrs(&b.join("opt/own"))["trusted.overlay.redirect"].clone();
    set_xattr(&a.join("usr/tagged"), "trusted.overlay.redirect", &other);
    let out = String::from_utf8_lossy(&run(&env.root, &["system", "check"]).stdout).into_owned();
    assert!(out.contains("usr/tagged: content differs"), "{out}");
    set_xattr(
        &a.join("usr/tagged"),
        "trusted.overlay.redirect",
        &objects_redirect_of(&bytes(3, 7_000)),
    );
    assert!(env.ok(&["system", "check"]).contains("all intact"));

    // A damaged object: both layers that name it are damaged, and so are both images.
    let victim = env
        .root
        .join("objects")
        .join(objects_rel(&bytes(1, 50_000)));
    let mut perm = fs::metadata(&victim).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    fs::set_permissions(&victim, perm).unwrap();
    fs::write(&victim, bytes(9, 50_000)).unwrap();
    let o = run(&env.root, &["system", "check"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("file object sha256:"), "{out}");
    assert!(
        out.contains("usr/big1: object sha256:") && out.contains("is damaged"),
        "{out}"
    );
    assert!(out.contains("opt/same-big1: object"), "{out}");
    // --repair removes the object and both layers; the images must be imported again.
    let o = run(&env.root, &["system", "check", "--repair"]);
    assert!(!o.status.success());
    assert!(!victim.exists());
    import(&env, &image_a(), "a:1");
    import(&env, &image_b(), "b:1");
    assert!(env.ok(&["system", "check"]).contains("all intact"));

    // A missing object.
    let gone = env
        .root
        .join("objects")
        .join(objects_rel(&bytes(7, 30_000)));
    fs::remove_file(&gone).unwrap();
    let out = String::from_utf8_lossy(&run(&env.root, &["system", "check"]).stdout).into_owned();
    assert!(
        out.contains("opt/own: object") && out.contains("is missing"),
        "{out}"
    );
}

fn objects_rel(content: &[u8]) -> String {
    let h = sha(content);
    let h = h.strip_prefix("sha256:").unwrap();
    format!("{}/{}", &h[..2], &h[2..])
}

fn objects_redirect_of(content: &[u8]) -> Vec<u8> {
    format!("/{}", objects_rel(content)).into_bytes()
}

#[test]
fn migrate_converts_a_store_of_whole_files() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let src = t.path().join("src");
    write_oci_layout(&src, &[(&image_a(), Some("a:1"))], false);
    let src_b = t.path().join("src-b");
    write_oci_layout(&src_b, &[(&image_b(), Some("b:1"))], false);
    {
        // A store as layerfs wrote it before the file store: whole files.
        let mut old = Store::open(&root).unwrap();
        old.set_extract_options(ExtractOptions::plain(true));
        old.import(&src, &ImportOptions::default(), &Quiet).unwrap();
        old.import(&src_b, &ImportOptions::default(), &Quiet)
            .unwrap();
    }
    let dir_a = layer_dirs_of(&inspect_json(&root, "a:1"))[0].clone();
    assert!(!xattrs(&dir_a.join("usr/big1")).contains_key("trusted.overlay.redirect"));
    assert!(object_files(&root).is_empty());
    let before_ino =
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir_a.join("usr/big1")).unwrap());
    assert!(ok(&root, &["system", "check"]).contains("all intact"));

    let out = ok(&root, &["system", "migrate"]);
    assert!(
        out.contains("2 layer(s) converted (6 files, 155kB now in the file store, 96kB of it new)"),
        "{out}"
    );
    assert_eq!(object_files(&root).len(), 4, "shared files once");
    assert!(ok(&root, &["system", "check"]).contains("all intact"));
    for (f, want) in [
        ("usr/big1", bytes(1, 50_000)),
        ("usr/big1.link", bytes(1, 50_000)),
        ("usr/suid", bytes(2, 9_000)),
    ] {
        assert_eq!(read_layer_file(&dir_a.join(f)), want, "{f}");
    }
    use std::os::unix::fs::MetadataExt;
    let m1 = fs::metadata(dir_a.join("usr/big1")).unwrap();
    let m2 = fs::metadata(dir_a.join("usr/big1.link")).unwrap();
    assert_eq!(m1.ino(), m2.ino(), "the hard link stays one inode");
    assert_ne!(m1.ino(), before_ino);
    assert_eq!(
        fs::metadata(dir_a.join("usr/suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(xattrs(&dir_a.join("usr/tagged"))["user.k"], b"v");
    assert_eq!(fs::read(dir_a.join("usr/small")).unwrap(), b"small\n");
    assert!(fs::read_dir(root.join("tmp")).unwrap().next().is_none());
    // Nothing left to do the second time.
    let out = ok(&root, &["system", "migrate"]);
    assert!(
        out.contains("0 layer(s) converted") && out.contains("2 already"),
        "{out}"
    );
}

fn inspect_json(root: &Path, image: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&ok(root, &["inspect", image])).unwrap()[0].clone()
}
