//! The file store through mounts: layer trees of metacopy stubs whose data is in
//! `ROOT/objects`, read by layerfs and by the kernel's overlayfs alike, shared between
//! images that share files but no layer, and never written through a container.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::fingerprint::*;
use support::images::*;
use support::stack::*;
use support::store_env::*;
use support::tree::*;
use support::xattr::*;

fn opts() -> SnapOpts {
    SnapOpts {
        dir_nlink: false,
        ..SnapOpts::default()
    }
}

fn bytes(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Two layers: big files (stubs), small and empty ones (whole), a hard link, xattrs and
/// a set-uid bit on a stub, and a top layer that shadows a big file of the base and
/// holds another copy of a base file.
fn layered_image() -> Image {
    let base = LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/big", &bytes(1, 64 << 10))
        .hardlink("usr/lib/big.1", "usr/lib/big")
        .file_full("usr/lib/suid", &bytes(2, 9000), 0o4755, 0, 0, 1_700_000_000)
        .file_xattrs("usr/lib/tagged", &bytes(3, 5000), &[("user.mime", b"x/y")])
        .file("usr/lib/small", b"small\n")
        .file("usr/lib/empty", b"")
        .dir("etc", 0o755)
        .file("etc/conf", &bytes(4, 6000))
        .build();
    let top = LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/big", &bytes(5, 70 << 10))
        .dir("opt", 0o755)
        .file("opt/copy-of-conf", &bytes(4, 6000))
        .build();
    image(vec![
        Layer::new(base, Comp::Gzip),
        Layer::new(top, Comp::Zstd),
    ])
}

/// Another image with one layer of its own that holds two of the first image's files.
fn sharing_image() -> Image {
    let l = LayerBuilder::new()
        .dir("lib", 0o755)
        .file("lib/same-big", &bytes(1, 64 << 10))
        .file("lib/same-conf", &bytes(4, 6000))
        .file("lib/own", &bytes(9, 20_000))
        .build();
    image(vec![Layer::new(l, Comp::Gzip)])
}

fn objects(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fan in fs::read_dir(root.join("objects")).unwrap() {
        let fan = fan.unwrap().path();
        if fan.is_dir() {
            for o in fs::read_dir(&fan).unwrap() {
                out.push(o.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn is_stub(p: &Path) -> bool {
    let x = xattrs(p);
    x.contains_key("trusted.overlay.metacopy") && x.contains_key("trusted.overlay.redirect")
}

#[test]
fn stubs_share_objects_and_read_the_same_in_layerfs_and_the_kernel() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    env.import(&layered_image(), "a:1");
    let v = env.inspect("a:1");
    let dirs = layer_dirs_of(&v); // top first
    let (top, base) = (&dirs[0], &dirs[1]);
    // Big files are stubs; small and empty files stay whole.
    for f in ["usr/lib/big", "usr/lib/suid", "usr/lib/tagged", "etc/conf"] {
        assert!(is_stub(&base.join(f)), "{f} should be a stub");
        assert_eq!(
            fs::read(base.join(f))
                .unwrap()
                .iter()
                .filter(|b| **b != 0)
                .count(),
            0
        );
    }
    for f in ["usr/lib/small", "usr/lib/empty"] {
        assert!(!is_stub(&base.join(f)), "{f} should be whole");
    }
    assert_eq!(fs::read(base.join("usr/lib/small")).unwrap(), b"small\n");
    assert_eq!(
        fs::metadata(base.join("usr/lib/big")).unwrap().ino(),
        fs::metadata(base.join("usr/lib/big.1")).unwrap().ino(),
        "a hard link stays one stub"
    );
    assert_eq!(
        read_layer_file(&base.join("usr/lib/big")),
        bytes(1, 64 << 10)
    );
    assert_eq!(
        read_layer_file(&top.join("usr/lib/big")),
        bytes(5, 70 << 10)
    );
    // Five distinct big contents; the top layer's copy of etc/conf is the same object.
    assert_eq!(objects(&env.root).len(), 5, "{:?}", objects(&env.root));
    assert_eq!(
        xattrs(&top.join("opt/copy-of-conf"))["trusted.overlay.redirect"],
        xattrs(&base.join("etc/conf"))["trusted.overlay.redirect"]
    );

    // A second image with none of these layers stores only what it adds.
    env.import(&sharing_image(), "b:1");
    assert_eq!(objects(&env.root).len(), 6, "only lib/own is new");

    // layerfs and the kernel (the objects as a data-only layer) show the same tree.
    let image_tree = {
        let km = env.path("k-ro");
        let g = mount_kernel(&Stack::of_image(&v), &km);
        let t = snapshot(&km, &opts());
        drop(g);
        t
    };
    let objects_before = store_fingerprint(&env.root.join("objects"));
    let m = env.mounted("a:1", "c1");
    assert_same_tree(
        &image_tree,
        &snapshot(&m, &opts()),
        "layerfs vs kernel, image",
    );
    assert_eq!(fs::read(m.join("usr/lib/big")).unwrap(), bytes(5, 70 << 10));
    assert_eq!(
        fs::read(m.join("usr/lib/big.1")).unwrap(),
        bytes(1, 64 << 10)
    );
    assert_eq!(xattrs(&m.join("usr/lib/tagged"))["user.mime"], b"x/y");
    assert!(
        !list_xattrs(&m.join("usr/lib/tagged"))
            .keys()
            .any(|k| k.to_string_lossy().contains("overlay")),
        "the stub's own xattrs are not shown"
    );
    let md = fs::metadata(m.join("usr/lib/suid")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4755);
    assert_eq!(md.len(), 9000);
    assert!(md.blocks() > 0, "a stub shows the blocks of its data");

    // Writes copy the data up; the objects and the layers stay as they were.
    let layers_before: Vec<_> = dirs.iter().map(|d| store_fingerprint(d)).collect();
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("usr/lib/big.1"))
            .unwrap();
        f.write_all(b"appended").unwrap();
    }
    fs::set_permissions(
        m.join("etc/conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fs::remove_file(m.join("opt/copy-of-conf")).unwrap();
    fs::rename(m.join("usr/lib/tagged"), m.join("usr/lib/tagged.moved")).unwrap();
    let mut want = bytes(1, 64 << 10);
    want.extend_from_slice(b"appended");
    assert_eq!(fs::read(m.join("usr/lib/big.1")).unwrap(), want);
    assert_eq!(fs::read(m.join("etc/conf")).unwrap(), bytes(4, 6000));
    let container_tree = snapshot(&m, &opts());
    env.ok(&["umount", "c1"]);
    assert_eq!(store_fingerprint(&env.root.join("objects")), objects_before);
    for (d, before) in dirs.iter().zip(&layers_before) {
        assert_eq!(&store_fingerprint(d), before, "{} changed", d.display());
    }

    // The kernel reads the container's upper dir over the same stubs and objects.
    let cdir = fs::read_dir(env.root.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("upper").is_dir())
        .expect("container dir");
    let kwork = env.path("k-work");
    fs::create_dir_all(&kwork).unwrap();
    let mut stack = Stack::of_image(&v);
    stack.upper = Some(cdir.join("upper"));
    stack.work = Some(kwork);
    let km = env.path("k-rw");
    let g = mount_kernel(&stack, &km);
    let kernel_tree = snapshot(&km, &opts());
    drop(g);
    assert_same_tree(
        &container_tree,
        &kernel_tree,
        "layerfs vs kernel, container",
    );
}

/// A layer whose blob is its tar (docker-archive layers, commits) keeps a record of the
/// tar around its stored files instead of the blob; `save` rebuilds it byte for byte, and
/// a damaged object stops `save` with an error naming the blob, never a wrong archive.
#[test]
fn tar_blobs_are_rebuilt_from_a_record_not_kept() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    let img = layered_image();
    let archive = env.path("in.tar");
    write_docker_archive(&archive, &[(&img, &["d:1"])]);
    env.ok(&["import", archive.to_str().unwrap()]);
    let v = env.inspect("d:1");
    let layers: Vec<String> = v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["Digest"].as_str().unwrap().to_string())
        .collect();
    for (l, dir) in layers.iter().zip(layer_dirs_of(&v).iter().rev()) {
        let hex = l.strip_prefix("sha256:").unwrap();
        assert!(
            !env.root.join("blobs/sha256").join(hex).exists(),
            "blob {l} kept"
        );
        assert!(
            dir.parent().unwrap().join("tar-split").is_file(),
            "{l}: no record"
        );
    }
    // Saved twice as docker-archive: the same bytes; as OCI: the same layer digests.
    let a = env.path("a.tar");
    let b = env.path("b.tar");
    env.ok(&[
        "save",
        "d:1",
        "--format",
        "docker-archive",
        "-o",
        a.to_str().unwrap(),
    ]);
    env.ok(&[
        "save",
        "d:1",
        "--format",
        "docker-archive",
        "-o",
        b.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let oci = env.path("oci");
    env.ok(&[
        "save",
        "d:1",
        "--format",
        "oci-dir",
        "-o",
        oci.to_str().unwrap(),
    ]);
    for l in &layers {
        let p = oci
            .join("blobs/sha256")
            .join(l.strip_prefix("sha256:").unwrap());
        assert_eq!(sha(&fs::read(&p).unwrap()), *l, "{l} rebuilt wrong");
    }
    // A damaged object: save refuses, naming the blob, and writes no archive.
    let victim = objects(&env.root)[0].clone();
    let mut perm = fs::metadata(&victim).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    fs::set_permissions(&victim, perm).unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    let c = env.path("c.tar");
    let err = env.fails(&["save", "d:1", "-o", c.to_str().unwrap()]);
    assert!(err.contains("rebuilt") && err.contains("sha256:"), "{err}");
    assert!(!c.exists(), "a failed save left {}", c.display());
}
