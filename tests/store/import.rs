//! Importing every source form and compression, what extraction keeps, sharing of layers
//! between images, references, tags, rmi and the space report, through the real binary.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use support::cli::*;
use support::fingerprint::*;
use support::images::*;
use support::samples::*;
use support::xattr::*;

fn images_json(root: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(root, &["images", "--format", "json"])).unwrap()
}

fn inspect(root: &Path, name: &str) -> serde_json::Value {
    let v: Vec<serde_json::Value> = serde_json::from_str(&ok(root, &["inspect", name])).unwrap();
    v.into_iter().next().unwrap()
}

fn three_layer_image() -> Image {
    three_layers_compressed([Comp::Gzip, Comp::Zstd, Comp::None])
}

fn three_layers_compressed(c: [Comp; 3]) -> Image {
    let l1 = Layer::new(
        LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/a", b"from layer 1")
            .build(),
        c[0],
    );
    let l2 = Layer::new(
        LayerBuilder::new().file("etc/b", b"from layer 2").build(),
        c[1],
    );
    let l3 = Layer::new(
        LayerBuilder::new().file("etc/c", b"from layer 3").build(),
        c[2],
    );
    image(vec![l1, l2, l3])
}

fn assert_three_layers(root: &Path, img: &Image) {
    for (l, f, want) in [
        (0, "etc/a", "from layer 1"),
        (1, "etc/b", "from layer 2"),
        (2, "etc/c", "from layer 3"),
    ] {
        let p = layer_dir(root, &img.layers[l].diff_id).join(f);
        assert_eq!(fs::read_to_string(&p).unwrap(), want, "{}", p.display());
    }
}

/// `img` tagged `tag` as an OCI layout in `t/oci`, imported into a new store `t/store`:
/// the store, the layout, and what the import printed.
fn imported(t: &Path, img: &Image, tag: &str) -> (PathBuf, PathBuf, String) {
    let root = t.join("store");
    let src = t.join("oci");
    write_oci_layout(&src, &[(img, Some(tag))], false);
    let out = ok(&root, &["import", src.to_str().unwrap()]);
    (root, src, out)
}

#[test]
fn oci_layout_dir_with_every_compression() {
    let t = tempfile::tempdir().unwrap();
    let img = three_layer_image();
    let (root, _, out) = imported(t.path(), &img, "example.com/three:1.0");
    assert!(out.contains("Loaded image: example.com/three:1.0"), "{out}");
    for l in &img.layers {
        let short = &hex_of(&l.diff_id)[..12];
        assert!(out.contains(&format!("sha256:{short}: extracted")), "{out}");
    }
    assert_three_layers(&root, &img);
    let v = images_json(&root);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["Repository"], "example.com/three");
    assert_eq!(v[0]["Tag"], "1.0");
    assert_eq!(v[0]["ID"], img.config_digest.as_str());
    assert_eq!(v[0]["Digest"], img.manifest_digest.as_str());
    // The blobs are kept as they came, so the image can be reproduced exactly.
    for blob in img
        .layers
        .iter()
        .map(|l| &l.blob)
        .chain([&img.config, &img.manifest])
    {
        let p = root.join("blobs/sha256").join(hex_of(&sha(blob)));
        match fs::read(&p) {
            Ok(b) => assert_eq!(&b, blob),
            // A tar blob is kept as a record in its layer dir (its digest is the
            // diff-id) and rebuilt for save and push.
            Err(_) => assert!(
                layer_dir(&root, &sha(blob))
                    .parent()
                    .unwrap()
                    .join("tar-split")
                    .is_file(),
                "blob {} neither kept nor recorded",
                sha(blob)
            ),
        }
    }
}

#[test]
fn oci_archive_docker_archive_and_layer_tars() {
    let t = tempfile::tempdir().unwrap();
    let img = three_layer_image();

    // oci-archive
    let root = t.path().join("s1");
    let layout = t.path().join("layout");
    write_oci_layout(&layout, &[(&img, Some("three:oci"))], false);
    let archive = t.path().join("img.oci.tar");
    tar_dir(&layout, &archive);
    let out = ok(&root, &["import", archive.to_str().unwrap()]);
    assert!(out.contains("Loaded image: three:oci"), "{out}");
    assert_three_layers(&root, &img);
    assert_eq!(
        inspect(&root, "three:oci")["ManifestDigest"],
        img.manifest_digest.as_str()
    );

    // docker-archive: same config, so the same image id; layers already there.
    let docker = t.path().join("img.docker.tar");
    write_docker_archive(&docker, &[(&img, &["docker.io/library/three:dock"])]);
    let out = ok(&root, &["import", docker.to_str().unwrap()]);
    assert!(out.contains("Loaded image: three:dock"), "{out}");
    assert_eq!(out.matches("already exists").count(), 3, "{out}");
    let fresh = t.path().join("s2");
    let out = ok(&fresh, &["import", docker.to_str().unwrap()]);
    assert_eq!(out.matches(": extracted").count(), 3, "{out}");
    assert_three_layers(&fresh, &img);
    let v = inspect(&fresh, "three:dock");
    assert_eq!(v["Id"], img.config_digest.as_str());
    let again = ok(&fresh, &["import", docker.to_str().unwrap()]);
    assert_eq!(again.matches(": already exists\n").count(), 3, "{again}");
    // An unpacked docker archive directory works too.
    let unpacked = t.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    tar::Archive::new(fs::File::open(&docker).unwrap())
        .unpack(&unpacked)
        .unwrap();
    let fresh = t.path().join("s3");
    ok(&fresh, &["import", unpacked.to_str().unwrap()]);
    assert_three_layers(&fresh, &img);

    // Single layer tars, each compression; a second import finds the layer.
    let tar = LayerBuilder::new()
        .dir("x", 0o755)
        .file("x/y", b"single")
        .build();
    for (comp, ext) in [
        (Comp::None, "tar"),
        (Comp::Gzip, "tar.gz"),
        (Comp::Zstd, "tar.zst"),
    ] {
        let root = t.path().join(format!("single-{ext}"));
        let p = t.path().join(format!("layer.{ext}"));
        fs::write(&p, compress(&tar, comp)).unwrap();
        let out = ok(&root, &["import", p.to_str().unwrap(), "--tag", "single"]);
        assert!(out.contains("Loaded image: single:latest"), "{out}");
        assert_eq!(
            fs::read(layer_dir(&root, &sha(&tar)).join("x/y")).unwrap(),
            b"single"
        );
        let again = ok(&root, &["import", p.to_str().unwrap(), "--tag", "single"]);
        assert!(again.contains("already exists"), "{again}");
        let v = images_json(&root);
        assert_eq!(v.len(), 1, "{v:?}");
    }
}

#[test]
fn multi_platform_index_picks_the_host_or_the_asked_platform() {
    let t = tempfile::tempdir().unwrap();
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let mine = image_for(
        vec![Layer::new(
            LayerBuilder::new()
                .file("arch", host_arch().as_bytes())
                .build(),
            Comp::Gzip,
        )],
        host_arch(),
        None,
    );
    let theirs = image_for(
        vec![Layer::new(
            LayerBuilder::new().file("arch", other.as_bytes()).build(),
            Comp::Gzip,
        )],
        other,
        None,
    );
    let src = t.path().join("multi");
    write_oci_layout(&src, &[(&mine, None), (&theirs, None)], true);

    let root = t.path().join("a");
    let out = ok(&root, &["import", src.to_str().unwrap(), "--tag", "multi"]);
    assert!(out.contains("Loaded image: multi:latest"), "{out}");
    assert_eq!(inspect(&root, "multi")["Id"], mine.config_digest.as_str());

    let root = t.path().join("b");
    let plat = format!("linux/{other}");
    ok(
        &root,
        &[
            "import",
            src.to_str().unwrap(),
            "--platform",
            &plat,
            "--tag",
            "multi",
        ],
    );
    let v = inspect(&root, "multi");
    assert_eq!(v["Id"], theirs.config_digest.as_str());
    assert_eq!(v["Platform"], plat.as_str());

    let err = fails(
        &root,
        &["import", src.to_str().unwrap(), "--platform", "linux/s390x"],
    );
    assert!(err.contains("no image for platform linux/s390x"), "{err}");
    assert!(err.contains(&format!("linux/{other}")), "{err}");
}

#[test]
fn extraction_keeps_metadata_and_converts_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let tar = LayerBuilder::new()
        .dir("d", 0o750)
        .file_full("d/suid", b"#!/bin/sh\n", 0o4755, 1000, 1001, 1_600_000_123)
        .hardlink("d/suid-link", "d/suid")
        .symlink("d/link", "suid")
        .fifo("d/fifo")
        .chardev("d/null", 1, 3)
        .file_xattrs(
            "d/xa",
            b"x",
            &[
                ("user.note", b"kept"),
                ("trusted.overlay.opaque", b"y"),
                ("user.overlay.redirect", b"/x"),
            ],
        )
        .whiteout("gone")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/new", b"n")
        .build();
    let p = t.path().join("layer.tar");
    fs::write(&p, &tar).unwrap();
    ok(&root, &["import", p.to_str().unwrap(), "--tag", "meta"]);
    let d = layer_dir(&root, &sha(&tar));

    let dm = fs::metadata(d.join("d")).unwrap();
    assert_eq!(dm.permissions().mode() & 0o7777, 0o750);
    assert_eq!(dm.mtime(), MTIME as i64);
    let f = fs::symlink_metadata(d.join("d/suid")).unwrap();
    assert_eq!(f.mtime(), 1_600_000_123);
    let link = fs::symlink_metadata(d.join("d/suid-link")).unwrap();
    assert_eq!(link.ino(), f.ino(), "hard link kept");
    assert_eq!(fs::read_link(d.join("d/link")).unwrap(), Path::new("suid"));
    let x = xattrs(&d.join("d/xa"));
    assert_eq!(x.get("user.note").map(|v| v.as_slice()), Some(&b"kept"[..]));
    assert!(
        !x.keys().any(|k| k.contains("overlay")),
        "forged overlay xattrs must be dropped: {x:?}"
    );
    assert!(!d.join("opq/.wh..wh..opq").exists() || !support::is_root());

    let fifo = fs::symlink_metadata(d.join("d/fifo")).unwrap();
    let record = |p: &str| {
        xattrs(&d.join(p))
            .get("user.containers.override_stat")
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    if support::is_root() {
        assert!(fifo.file_type().is_fifo());
        assert_eq!(record("d/suid"), None, "root keeps owners on disk");
        assert_eq!(f.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((f.uid(), f.gid()), (1000, 1001));
        let dev = fs::symlink_metadata(d.join("d/null")).unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), libc::makedev(1, 3));
        // OCI whiteouts became the kernel's forms.
        let wh = fs::symlink_metadata(d.join("gone")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "kernel whiteout"
        );
        assert!(!d.join(".wh.gone").exists());
        assert_eq!(
            xattrs(&d.join("opq"))
                .get("trusted.overlay.opaque")
                .map(|v| v.as_slice()),
            Some(&b"y"[..])
        );
        assert!(!d.join("opq/.wh..wh..opq").exists());
    } else {
        // Unprivileged: what the disk cannot hold is recorded; nothing set-id, no nodes.
        assert_eq!(f.permissions().mode() & 0o7777, 0o755);
        assert_eq!(record("d/suid").as_deref(), Some("1000:1001:04755:file"));
        assert!(fifo.file_type().is_file());
        assert_eq!(record("d/fifo").as_deref(), Some("0:0:0640:pipe"));
        assert!(fs::symlink_metadata(d.join("d/null")).unwrap().is_file());
        assert_eq!(record("d/null").as_deref(), Some("0:0:0666:char-1-3"));
        assert_eq!(record("d/xa"), None, "root's 0644 file needs no record");
        assert_eq!(
            record("").as_deref(),
            Some("0:0:0755:dir"),
            "the layer root is marked"
        );
        assert!(
            d.join(".wh.gone").exists(),
            "unprivileged keeps the OCI form"
        );
    }
}

#[test]
fn kernel_overlayfs_mounts_store_layers() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let base = Layer::new(
        LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/keep", b"k")
            .file("etc/remove-me", b"r")
            .dir("cache", 0o755)
            .file("cache/old", b"o")
            .build(),
        Comp::Gzip,
    );
    let top = Layer::new(
        LayerBuilder::new()
            .whiteout("etc/remove-me")
            .dir("cache", 0o755)
            .opaque("cache")
            .file("cache/new", b"n")
            .build(),
        Comp::Gzip,
    );
    let img = image(vec![base, top]);
    let src = t.path().join("oci");
    write_oci_layout(&src, &[(&img, Some("wh:1"))], false);
    ok(&root, &["import", src.to_str().unwrap()]);
    let v = inspect(&root, "wh:1");
    let mut lowers: Vec<String> = v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["Path"].as_str().unwrap().to_string())
        .collect();
    lowers.reverse();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!("lowerdir={}", lowers.join(":")),
        ])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let names = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let etc = names(&mnt.join("etc"));
    let cache = names(&mnt.join("cache"));
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert_eq!(etc, vec!["keep"]);
    assert_eq!(cache, vec!["new"]);
}

#[test]
fn shared_base_is_stored_once_and_df_shows_it() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (a, b) = sample_pair();
    let (sa, sb) = (t.path().join("a"), t.path().join("b"));
    write_oci_layout(&sa, &[(&a, Some("app:one"))], false);
    write_oci_layout(&sb, &[(&b, Some("app:two"))], false);
    ok(&root, &["import", sa.to_str().unwrap()]);
    let out = ok(&root, &["import", sb.to_str().unwrap()]);
    let base = &a.layers[0];
    assert!(
        out.contains(&format!(
            "sha256:{}: already exists",
            &hex_of(&base.diff_id)[..12]
        )),
        "{out}"
    );
    assert_eq!(out.matches(": extracted").count(), 1, "{out}");
    assert_eq!(fs::read_dir(root.join("layers/sha256")).unwrap().count(), 3);

    let df: serde_json::Value =
        serde_json::from_str(&ok(&root, &["system", "df", "--format", "json"])).unwrap();
    let base_size = 12 + 300_000;
    assert_eq!(df["SharedSize"], base_size);
    assert_eq!(df["SumOfImageSizes"], 2 * base_size + 50_000 + 70_000);
    assert_eq!(df["Layers"]["Total"], 3);
    assert_eq!(df["Layers"]["Size"], base_size + 50_000 + 70_000);
    for img in df["PerImage"].as_array().unwrap() {
        assert_eq!(img["SharedSize"], base_size);
        let unique = img["UniqueSize"].as_u64().unwrap();
        assert!(unique == 50_000 || unique == 70_000, "{img}");
    }
    let table = ok(&root, &["system", "df", "-v"]);
    assert!(
        table.contains("SHARED SIZE") && table.contains("UNIQUE SIZE"),
        "{table}"
    );
    assert!(table.contains("300kB"), "{table}");
    assert!(table.contains("Shared between images: 300kB"), "{table}");
    let images = ok(&root, &["images"]);
    assert!(images.starts_with("REPOSITORY"), "{images}");
    assert!(
        images.contains("app ") && images.contains("one") && images.contains("two"),
        "{images}"
    );
}

#[test]
fn reimport_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (root, src, _) = imported(t.path(), &three_layer_image(), "three:1");
    let before = store_fingerprint(&root);
    let out = ok(&root, &["import", src.to_str().unwrap()]);
    assert_eq!(out.matches("already exists").count(), 3, "{out}");
    assert_eq!(before, store_fingerprint(&root));
}

#[test]
fn references_tags_and_rmi() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (a, b) = sample_pair();
    let (sa, sb) = (t.path().join("a"), t.path().join("b"));
    write_oci_layout(&sa, &[(&a, None)], false);
    write_oci_layout(&sb, &[(&b, None)], false);
    let out = ok(&root, &["import", sa.to_str().unwrap(), "--tag", "alpha"]);
    assert!(out.contains("Loaded image: alpha:latest"), "{out}");
    let out = ok(&root, &["import", sb.to_str().unwrap()]);
    assert!(
        out.contains(&format!("Loaded image ID: {}", b.config_digest)),
        "{out}"
    );

    // Every way of naming an image.
    let a_id = a.config_digest.as_str();
    for name in [
        "alpha".to_string(),
        "alpha:latest".into(),
        format!("alpha@{}", a.manifest_digest),
        a_id.to_string(),
        hex_of(a_id).to_string(),
        hex_of(a_id)[..10].to_string(),
    ] {
        assert_eq!(inspect(&root, &name)["Id"], a_id, "{name}");
    }
    assert!(fails(&root, &["inspect", "nope"]).contains("no such image: nope"));
    assert!(fails(&root, &["tag", "alpha", "Bad Name"]).contains("invalid"));

    ok(&root, &["tag", "alpha", "alpha:v2"]);
    ok(&root, &["tag", hex_of(&b.config_digest), "beta:1"]);
    let out = ok(&root, &["images", "--digests"]);
    assert!(out.contains(&a.manifest_digest), "{out}");
    assert_eq!(out.lines().count(), 4, "{out}");

    // Removing one of two tags only untags.
    let out = ok(&root, &["rmi", "alpha:v2"]);
    assert_eq!(out.trim(), "Untagged: alpha:v2");
    assert_eq!(inspect(&root, "alpha")["Id"], a_id);

    // A container using beta keeps it, unless forced; its layers stay even then.
    let c = root.join("containers/c1");
    fs::create_dir_all(&c).unwrap();
    fs::write(
        c.join("container.json"),
        format!(r#"{{"name":"web","image":"{}"}}"#, b.config_digest),
    )
    .unwrap();
    let err = fails(&root, &["rmi", "beta:1"]);
    assert!(err.contains("used by container web"), "{err}");
    assert!(inspect(&root, "beta:1")["Id"] == b.config_digest.as_str());

    // alpha goes: its own layer goes, the shared base stays (beta needs it).
    let out = ok(&root, &["rmi", "alpha"]);
    assert!(out.contains(&format!("Deleted: {a_id}")), "{out}");
    assert!(
        out.contains(&format!("Deleted layer: {}", a.layers[1].diff_id)),
        "{out}"
    );
    assert!(!out.contains(&a.layers[0].diff_id), "{out}");
    assert!(layer_dir(&root, &a.layers[0].diff_id).exists());
    assert!(!layer_dir(&root, &a.layers[1].diff_id).exists());

    let out = ok(&root, &["rmi", "--force", "beta:1"]);
    assert!(
        out.contains(&format!("Deleted: {}", b.config_digest)),
        "{out}"
    );
    assert!(!out.contains("Deleted layer"), "{out}");
    for l in &b.layers {
        assert!(
            layer_dir(&root, &l.diff_id).exists(),
            "the container still needs {}",
            l.diff_id
        );
    }
    // Once the container is gone, prune frees them.
    fs::remove_dir_all(&c).unwrap();
    let out = ok(&root, &["system", "prune"]);
    assert_eq!(out.matches("Deleted layer").count(), 2, "{out}");
    assert_eq!(fs::read_dir(root.join("layers/sha256")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 0);
}

#[test]
fn inspect_shows_ids_digests_layers_and_config() {
    let t = tempfile::tempdir().unwrap();
    let img = three_layer_image();
    let (root, _, _) = imported(t.path(), &img, "three:1");
    let v = inspect(&root, "three:1");
    assert_eq!(v["ConfigDigest"], img.config_digest.as_str());
    assert_eq!(v["RepoTags"][0], "three:1");
    assert_eq!(
        v["RepoDigests"][0],
        format!("three@{}", img.manifest_digest).as_str()
    );
    assert_eq!(v["Config"]["config"]["Cmd"][0], "/bin/sh");
    let layers = v["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (l, want) in layers.iter().zip(&img.layers) {
        assert_eq!(l["DiffID"], want.diff_id.as_str());
        assert_eq!(l["Digest"], want.digest.as_str());
        assert_eq!(l["MediaType"], want.comp.media_type());
    }
}

#[test]
fn archives_written_by_skopeo() {
    if support::skip_without_tool("skopeo") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // Docker images cannot hold zstd layers.
    let img = three_layers_compressed([Comp::Gzip; 3]);
    let src = t.path().join("oci");
    write_oci_layout(&src, &[(&img, Some("three"))], false);
    let docker = t.path().join("docker.tar");
    let oci = t.path().join("oci.tar");
    for dest in [
        format!("docker-archive:{}:skopeo/three:d", docker.display()),
        format!("oci-archive:{}:skopeo/three:o", oci.display()),
    ] {
        let o = std::process::Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                &format!("oci:{}:three", src.display()),
                &dest,
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let root = t.path().join("store");
    let out = ok(&root, &["import", docker.to_str().unwrap()]);
    assert!(out.contains("Loaded image: skopeo/three:d"), "{out}");
    assert_three_layers(&root, &img);
    assert_eq!(
        inspect(&root, "skopeo/three:d")["Id"],
        img.config_digest.as_str()
    );
    let out = ok(&root, &["import", oci.to_str().unwrap()]);
    assert!(out.contains("Loaded image: skopeo/three:o"), "{out}");
    assert_eq!(
        inspect(&root, "skopeo/three:o")["Id"],
        img.config_digest.as_str()
    );
    ok(&root, &["system", "check"]);
}

/// `skopeo copy … oci-archive:FILE:app2` (and umoci) write a bare name as the ref name:
/// the image is named `app2:latest` (podman: `localhost/app2:latest`), and every
/// spelling of that name finds it. A ref name that reads as a version (`v1`, `latest`)
/// is a tag of no repository and names nothing, as before.
#[test]
fn bare_ref_names_written_by_skopeo() {
    if support::skip_without_tool("skopeo") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = three_layers_compressed([Comp::Gzip; 3]);
    let src = t.path().join("src");
    write_oci_layout(&src, &[(&img, Some("src:1"))], false);
    let copy = |dest: String| {
        let o = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", &format!("oci:{}:src:1", src.display())])
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo copy to {dest}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ref_name = |index: &[u8]| -> String {
        let v: serde_json::Value = serde_json::from_slice(index).unwrap();
        v["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let archive = |name: &str| {
        let p = t.path().join(format!("{}.oci.tar", name.replace(':', "_")));
        copy(format!("oci-archive:{}:{name}", p.display()));
        p
    };

    // A bare name, in an oci-archive: app2:latest.
    let app2 = archive("app2");
    let mut a = tar::Archive::new(fs::File::open(&app2).unwrap());
    let index = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_str() == Some("index.json"))
        .map(|mut e| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            v
        })
        .unwrap();
    assert_eq!(ref_name(&index), "app2", "skopeo writes the bare name");
    let root = t.path().join("s1");
    let out = ok(&root, &["import", app2.to_str().unwrap()]);
    assert!(out.contains("Loaded image: app2:latest"), "{out}");
    let v = images_json(&root);
    assert_eq!(
        (v.len(), &v[0]["Repository"], &v[0]["Tag"]),
        (1, &"app2".into(), &"latest".into())
    );
    for name in [
        "app2",
        "app2:latest",
        "localhost/app2",
        "localhost/app2:latest",
    ] {
        assert_eq!(
            inspect(&root, name)["Id"],
            img.config_digest.as_str(),
            "{name}"
        );
    }
    assert!(fails(&root, &["inspect", "example.com/app2"]).contains("no such image"));
    // Saved again under its name; rmi by podman's spelling removes that name.
    let saved = t.path().join("saved.tar");
    ok(
        &root,
        &["save", "localhost/app2", "-o", saved.to_str().unwrap()],
    );
    let out = ok(&root, &["rmi", "localhost/app2:latest"]);
    assert!(out.starts_with("Untagged: app2:latest\n"), "{out}");
    assert!(
        out.contains(&format!("Deleted: {}", img.config_digest)),
        "{out}"
    );
    let out = ok(&root, &["import", saved.to_str().unwrap()]);
    assert!(out.contains("Loaded image: app2:latest"), "{out}");

    // A bare name in an OCI layout directory, and with a tag.
    let dir = t.path().join("layout");
    copy(format!("oci:{}:app3", dir.display()));
    assert_eq!(ref_name(&fs::read(dir.join("index.json")).unwrap()), "app3");
    let out = ok(&t.path().join("s2"), &["import", dir.to_str().unwrap()]);
    assert!(out.contains("Loaded image: app3:latest"), "{out}");
    let tagged = archive("app4:1.0");
    let out = ok(&t.path().join("s3"), &["import", tagged.to_str().unwrap()]);
    assert!(out.contains("Loaded image: app4:1.0"), "{out}");

    // Version-like ref names are tags: the image gets no name from them (--tag names it).
    for tag in ["v1", "latest", "1.0"] {
        let p = archive(tag);
        let root = t.path().join(format!("s-{tag}"));
        let out = ok(&root, &["import", p.to_str().unwrap()]);
        assert_eq!(
            out.lines().last().unwrap(),
            format!("Loaded image ID: {}", img.config_digest),
            "{tag}: {out}"
        );
        assert_eq!(images_json(&root)[0]["Repository"], "<none>", "{tag}");
        let out = ok(&root, &["import", p.to_str().unwrap(), "--tag", "named:1"]);
        assert!(out.contains("Loaded image: named:1"), "{tag}: {out}");
    }
}

#[test]
fn docker_archive_with_symlinked_layer_members() {
    // Older `docker save` output shares a layer between images with a symlink member.
    let t = tempfile::tempdir().unwrap();
    let (a, b) = sample_pair();
    let p = t.path().join("two.tar");
    let mut tb = tar::Builder::new(fs::File::create(&p).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        tb.append_data(&mut h, name, data).unwrap();
    };
    let base = &a.layers[0].tar;
    add("base/layer.tar", base);
    add("app1/layer.tar", &a.layers[1].tar);
    add("app2/layer.tar", &b.layers[1].tar);
    let ca = format!("{}.json", hex_of(&a.config_digest));
    let cb = format!("{}.json", hex_of(&b.config_digest));
    add(&ca, &a.config);
    add(&cb, &b.config);
    let manifest = serde_json::json!([
        {"Config": ca, "RepoTags": ["sym:a"], "Layers": ["base/layer.tar", "app1/layer.tar"]},
        {"Config": cb, "RepoTags": ["sym:b"], "Layers": ["shared/layer.tar", "app2/layer.tar"]},
    ]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    tb.append_link(&mut h, "shared/layer.tar", "../base/layer.tar")
        .unwrap();
    tb.into_inner().unwrap();

    let root = t.path().join("store");
    let out = ok(&root, &["import", p.to_str().unwrap()]);
    assert!(
        out.contains("Loaded image: sym:a") && out.contains("Loaded image: sym:b"),
        "{out}"
    );
    assert_eq!(out.matches(": extracted").count(), 3, "{out}");
    assert_eq!(out.matches(": already exists").count(), 1, "{out}");
    let v = inspect(&root, "sym:b");
    assert_eq!(v["Id"], b.config_digest.as_str());
    // The manifest made for it lists every layer blob with its real size.
    for (l, want) in v["Manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&b.layers)
    {
        assert_eq!(l["size"], want.tar.len(), "{l}");
        assert_eq!(l["digest"], want.diff_id.as_str(), "{l}");
    }
    assert!(
        layer_dir(&root, &b.layers[0].diff_id)
            .join("usr/lib/libbase.so")
            .is_file()
    );
    // --tag needs a source with one image.
    let err = fails(&root, &["import", p.to_str().unwrap(), "--tag", "x"]);
    assert!(err.contains("holds 2 images"), "{err}");
}
