//! Bad input: each case fails with one line naming the problem, a non-zero exit, and a
//! store that is byte-for-byte what it was before.

use std::fs;
use std::path::{Path, PathBuf};

use support::cli::*;
use support::fingerprint::*;
use support::images::*;
use support::samples::*;

/// A store with one image in it already, to see that nothing changes.
fn populated(t: &Path) -> PathBuf {
    let root = t.join("store");
    let (a, _) = sample_pair();
    let src = t.join("good");
    write_oci_layout(&src, &[(&a, Some("good:1"))], false);
    ok(&root, &["import", src.to_str().unwrap()]);
    root
}

/// Import `src` into a populated store: it must fail with one line containing every
/// `want`, and leave the store unchanged.
fn refused(t: &Path, src: &Path, extra: &[&str], want: &[&str]) {
    let root = populated(t);
    let before = store_fingerprint(&root);
    let mut args = vec!["import", src.to_str().unwrap()];
    args.extend_from_slice(extra);
    let err = fails(&root, &args);
    eprintln!("REFUSED: {err}");
    for w in want {
        assert!(err.contains(w), "error {err:?} should mention {w:?}");
    }
    assert_eq!(
        before,
        store_fingerprint(&root),
        "store changed by a refused import ({err})"
    );
    // And every command still works.
    ok(&root, &["images"]);
    ok(&root, &["system", "check"]);
}

fn two_layers() -> Image {
    let l1 = Layer::new(
        LayerBuilder::new().file("one", b"first layer").build(),
        Comp::Gzip,
    );
    let l2 = Layer::new(
        LayerBuilder::new().file("two", &vec![5u8; 100_000]).build(),
        Comp::Gzip,
    );
    image(vec![l1, l2])
}

/// `img` as an OCI layout (untagged) in a new temp dir: the dir and the layout.
fn layout(img: &Image) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_oci_layout(&src, &[(img, None)], false);
    (t, src)
}

/// Importing `img` is refused with one line naming every `want`.
fn refused_image(img: &Image, want: &[&str]) {
    let (t, src) = layout(img);
    refused(t.path(), &src, &[], want);
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256").join(hex_of(digest))
}

#[test]
fn flipped_bit_in_a_layer_blob() {
    let t = tempfile::tempdir().unwrap();
    let img = two_layers();
    let src = t.path().join("src");
    write_oci_layout(&src, &[(&img, Some("bad:1"))], false);
    // The last layer, so the first one was already extracted when the damage shows.
    let p = blob_path(&src, &img.layers[1].digest);
    let mut data = fs::read(&p).unwrap();
    let i = data.len() / 2;
    data[i] ^= 0x10;
    fs::write(&p, data).unwrap();
    refused(
        t.path(),
        &src,
        &[],
        &[&img.layers[1].digest, "blob digest mismatch"],
    );
}

#[test]
fn manifest_or_config_digest_mismatch() {
    let img = two_layers();
    let (t, src) = layout(&img);
    let p = blob_path(&src, &img.manifest_digest);
    let mut m = fs::read(&p).unwrap();
    m.push(b' ');
    fs::write(&p, m).unwrap();
    refused(
        t.path(),
        &src,
        &[],
        &["manifest", &img.manifest_digest, "digest mismatch"],
    );

    let (t, src) = layout(&img);
    let p = blob_path(&src, &img.config_digest);
    let c = String::from_utf8(fs::read(&p).unwrap())
        .unwrap()
        .replace("/bin/sh", "/bin/xx");
    fs::write(&p, c).unwrap();
    refused(
        t.path(),
        &src,
        &[],
        &["config", &img.config_digest, "digest mismatch"],
    );
}

#[test]
fn missing_blob() {
    let img = two_layers();
    let (t, src) = layout(&img);
    fs::remove_file(blob_path(&src, &img.layers[0].digest)).unwrap();
    refused(t.path(), &src, &[], &[&img.layers[0].digest, "missing"]);
}

#[test]
fn truncated_gzip_and_zstd_streams() {
    for comp in [Comp::Gzip, Comp::Zstd] {
        let tar = LayerBuilder::new()
            .file("big", &vec![9u8; 200_000])
            .file("more", b"x")
            .build();
        let mut layer = Layer::new(tar, comp);
        // Cut the stream, and make the manifest agree with the cut blob, so only the
        // decompression can notice.
        layer.blob.truncate(layer.blob.len() - 12);
        layer.digest = sha(&layer.blob);
        let name = if comp == Comp::Gzip {
            "truncated gzip"
        } else {
            "zstd"
        };
        refused_image(&image(vec![layer.clone()]), &[&layer.digest, name]);
    }
}

fn hostile(t: &Path, tar: Vec<u8>, want: &str) {
    let img = image(vec![
        Layer::new(LayerBuilder::new().file("fine", b"ok").build(), Comp::Gzip),
        Layer::new(tar, Comp::Gzip),
    ]);
    let src = t.join("src");
    write_oci_layout(&src, &[(&img, None)], false);
    refused(t, &src, &[], &[want]);
    assert!(!t.join("escaped").exists());
}

#[test]
fn dot_dot_path() {
    let t = tempfile::tempdir().unwrap();
    let tar = LayerBuilder::new()
        .raw(tar::EntryType::Regular, b"a/../../escaped", b"", b"x")
        .build();
    hostile(t.path(), tar, "entry a/../../escaped");
}

#[test]
fn absolute_path() {
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("escaped");
    let tar = LayerBuilder::new()
        .raw(
            tar::EntryType::Regular,
            target.to_str().unwrap().as_bytes(),
            b"",
            b"x",
        )
        .build();
    hostile(
        t.path(),
        tar,
        &format!("entry {}: absolute path", target.display()),
    );
}

#[test]
fn file_through_a_symlinked_parent() {
    let t = tempfile::tempdir().unwrap();
    // The symlink points at the test's own temp dir: harmless even if followed.
    let tar = LayerBuilder::new()
        .symlink("lnk", t.path().to_str().unwrap())
        .file("lnk/escaped", b"x")
        .build();
    hostile(t.path(), tar, "entry lnk/escaped: parent lnk is a symlink");
}

#[test]
fn hard_link_to_outside() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside-file");
    fs::write(&outside, b"secret").unwrap();
    let tar = LayerBuilder::new()
        .raw(
            tar::EntryType::Link,
            b"pw",
            outside.to_str().unwrap().as_bytes(),
            b"",
        )
        .build();
    hostile(t.path(), tar, "entry pw: hard link to");
    let t = tempfile::tempdir().unwrap();
    let tar = LayerBuilder::new()
        .raw(tar::EntryType::Link, b"pw", b"../../etc/hostname", b"")
        .build();
    hostile(t.path(), tar, "entry pw: hard link to ../../etc/hostname");
    // Through a symlink inside the layer that points out of it.
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("outside-file"), b"secret").unwrap();
    let tar = LayerBuilder::new()
        .symlink("out", t.path().to_str().unwrap())
        .hardlink("pw", "out/outside-file")
        .build();
    hostile(
        t.path(),
        tar,
        "entry pw: hard link to out/outside-file, which is not in the layer",
    );
}

#[test]
fn unknown_media_type() {
    let img = two_layers();
    let (t, src) = layout(&img);
    // Rewrite the manifest with a layer type nobody knows, and point the index at it.
    let m = String::from_utf8(img.manifest.clone()).unwrap().replacen(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/x-mystery",
        1,
    );
    let mut bad = img.clone();
    bad.manifest = m.into_bytes();
    bad.manifest_digest = sha(&bad.manifest);
    fs::remove_dir_all(&src).unwrap();
    write_oci_layout(&src, &[(&bad, None)], false);
    refused(
        t.path(),
        &src,
        &[],
        &[
            "unknown media type application/x-mystery",
            &img.layers[0].digest,
        ],
    );
}

#[test]
fn not_an_image() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("notes.txt");
    fs::write(&p, "just some text, not an image\n".repeat(50)).unwrap();
    refused(t.path(), &p, &[], &["notes.txt", "not an image"]);
    let d = t.path().join("empty-dir");
    fs::create_dir(&d).unwrap();
    refused(t.path(), &d, &[], &["empty-dir", "not an image"]);
    refused(
        t.path(),
        &t.path().join("nowhere"),
        &[],
        &["nowhere", "No such file"],
    );
}

#[test]
fn diff_id_count_or_value_mismatch() {
    let base = two_layers();
    let one_id = vec![base.layers[0].diff_id.clone()];
    let img = image_for(base.layers.clone(), host_arch(), Some(one_id));
    refused_image(&img, &[&img.config_digest, "1 diff-ids", "2 layers"]);

    let wrong = vec![base.layers[0].diff_id.clone(), sha(b"something else")];
    let img = image_for(base.layers.clone(), host_arch(), Some(wrong));
    refused_image(&img, &[&base.layers[1].digest, "diff-id mismatch"]);
}

#[test]
fn bad_arguments() {
    let img = two_layers();
    let (t, src) = layout(&img);
    refused(
        t.path(),
        &src,
        &["--tag", "UPPER:case"],
        &["invalid image reference \"UPPER:case\""],
    );
    refused(
        t.path(),
        &src,
        &["--platform", "linux"],
        &["invalid platform \"linux\""],
    );
}

#[test]
fn compressed_image_archive_is_not_taken_for_a_layer() {
    let t = tempfile::tempdir().unwrap();
    let img = two_layers();
    let docker = t.path().join("img.tar");
    write_docker_archive(&docker, &[(&img, &["x:1"])]);
    let gz = t.path().join("img.tar.gz");
    fs::write(&gz, compress(&fs::read(&docker).unwrap(), Comp::Gzip)).unwrap();
    refused(
        t.path(),
        &gz,
        &[],
        &["img.tar.gz", "compressed image archive", "gzip -d"],
    );
}

#[test]
fn decompression_bomb_is_refused_naming_the_layer() {
    // 1 GiB of zeros as 1024 gzip members of 1 MiB each (about 1 MiB on disk): the store
    // stops after 256 MiB of output at more than 100:1.
    let t = tempfile::tempdir().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut e, &vec![0u8; 1 << 20]).unwrap();
    let member = e.finish().unwrap();
    let p = t.path().join("bomb.tar.gz");
    fs::write(&p, member.repeat(1024)).unwrap();
    refused(
        t.path(),
        &p,
        &[],
        &["bomb.tar.gz: layer: refused", "decompression bomb", "100:1"],
    );
}

#[test]
fn expansion_limit_setting_is_checked() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let images_with = |value: &str| {
        std::process::Command::new(layerfs_bin())
            .arg("--root")
            .arg(&root)
            .arg("images")
            .env("LAYERFS_MAX_EXPANSION", value)
            .output()
            .unwrap()
    };
    let out = images_with("lots");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "layerfs: LAYERFS_MAX_EXPANSION=lots: expected a whole number (0 for no limit)"
    );
    let out = images_with("0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
