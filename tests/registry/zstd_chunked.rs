//! zstd:chunked against a real registry through the counting proxy: `push
//! --compression zstd:chunked` writes blobs any zstd reader takes (same diff-ids); a
//! pull of an image whose files the store mostly has fetches the TOC, the tar-split and
//! only the missing files' frames by range, rebuilds the layer byte for byte (pushing it
//! again gives the same manifest digest, `system check` passes, the mount shows the same
//! tree); TOCs that lie are refused naming the entry, with the store unchanged.

use std::path::PathBuf;

use crate::common::*;
use support::cli::*;
use support::fingerprint::*;
use support::images::*;
use support::mounts::MountGuard;
use support::proxy::*;
use support::registry::*;
use support::rng::Rng;

/// Two layer tars sharing every file but one (so no layer is shared): the second adds
/// a 1 MiB incompressible file, twice.
fn layer_pair() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(7);
    let big: Vec<Vec<u8>> = (0..6).map(|_| rng.bytes(200_000)).collect();
    let new = rng.bytes(1 << 20);
    let build = |second: bool| {
        let mut b = LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/os-release", b"NAME=sample\n")
            .dir("usr", 0o755)
            .dir("usr/lib", 0o755)
            .symlink("usr/lib/current", "libbig0.so")
            .file_xattrs("usr/lib/tagged", b"tagged\n", &[("user.k", b"v")]);
        for (i, data) in big.iter().enumerate() {
            b = b.file(&format!("usr/lib/libbig{i}.so"), data);
        }
        b = b.hardlink("usr/lib/again", "usr/lib/libbig1.so");
        if second {
            // Twice: one content, fetched once.
            b = b
                .dir("usr/bin", 0o755)
                .file("usr/bin/new", &new)
                .file("usr/bin/new-copy", &new);
        }
        b.build()
    };
    (build(false), build(true))
}

struct Setup {
    _t: tempfile::TempDir,
    dir: PathBuf,
    reg: Registry,
    proxy: Proxy,
    /// (manifest digest, layer blob digest, its size) of one and two as pushed.
    one: (String, String, u64),
    two: (String, String, u64),
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let reg = Registry::start(&dir.join("reg"), None);
    let proxy = Proxy::start(reg.port);
    let src = dir.join("src");
    let (a, b) = layer_pair();
    std::fs::write(dir.join("one.tar"), &a).unwrap();
    std::fs::write(dir.join("two.tar"), &b).unwrap();
    let host = reg.addr();
    let mut pushed = Vec::new();
    for (tar, name) in [("one.tar", "one"), ("two.tar", "two")] {
        let r = format!("{host}/demo/{name}:1");
        ok(&src, &["import", "-t", &r, dir.join(tar).to_str().unwrap()]);
        let out = ok(&src, &["push", "--compression", "zstd:chunked", &r]);
        let digest = pushed_digest(&out);
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob_on_registry(&reg, &digest)).unwrap())
                .unwrap();
        let l = &m["layers"][0];
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert!(
            l["annotations"]["io.github.containers.zstd-chunked.manifest-checksum"].is_string(),
            "{m}"
        );
        pushed.push((
            digest,
            l["digest"].as_str().unwrap().to_string(),
            l["size"].as_u64().unwrap(),
        ));
    }
    let two = pushed.pop().unwrap();
    let one = pushed.pop().unwrap();
    Setup {
        _t: t,
        dir,
        reg,
        proxy,
        one,
        two,
    }
}

#[test]
fn a_partial_pull_fetches_only_what_the_store_lacks_and_rebuilds_the_layer() {
    if support::skip_unless_root() {
        return;
    }
    let s = setup();
    let host = s.proxy.addr();
    let dst = s.dir.join("dst");

    // A store with nothing: the whole blob, as a plain zstd layer (same diff-id).
    let out = ok(&dst, &["pull", &format!("{host}/demo/one:1")]);
    assert!(out.contains(&format!("Digest: {}", s.one.0)), "{out}");
    let whole: u64 = blob_gets(&s.proxy, &s.one.1)
        .iter()
        .map(|g| g.body_bytes)
        .sum();
    // (Its TOC was read first: with no file here, a whole fetch is the better way.)
    assert!(
        whole >= s.one.2 && whole < s.one.2 + 64 * 1024,
        "fetched {whole} for a {}-byte blob",
        s.one.2
    );

    // Two shares every file but one: the TOC, the tar-split and that file's frame.
    s.proxy.clear();
    let out = ok(&dst, &["pull", &format!("{host}/demo/two:1")]);
    let gets = blob_gets(&s.proxy, &s.two.1);
    let bytes: u64 = gets.iter().map(|g| g.body_bytes).sum();
    assert!(
        gets.iter().all(|g| g.range.is_some()),
        "every blob request names a range: {gets:?}"
    );
    // TOC and tar-split, then the new content once; the small files (inline in the
    // store's layer trees, not objects) are found there too.
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(
        out.contains("Pull complete (partial: ") && out.contains("in 2 requests"),
        "{out}"
    );
    assert!(
        (1 << 20..(1 << 20) + 64 * 1024).contains(&bytes),
        "fetched {bytes} bytes of a {}-byte blob: {gets:?}\n{out}",
        s.two.2
    );

    // Byte for byte: pushed again as stored it is the same manifest, and check passes.
    let out = ok(
        &dst,
        &[
            "push",
            &format!("{host}/demo/two:1"),
            &format!("{}/again/two:1", s.reg.addr()),
        ],
    );
    assert_eq!(pushed_digest(&out), s.two.0, "{out}");
    let saved = s.dir.join("two-saved.tar");
    ok(
        &dst,
        &[
            "save",
            "-o",
            saved.to_str().unwrap(),
            &format!("{host}/demo/two:1"),
        ],
    );
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains(hex_of(&s.two.1)),
        "the saved archive holds the rebuilt blob"
    );
    let out = ok(&dst, &["system", "check"]);
    assert!(out.contains("all intact"), "{out}");

    // The same tree as the source store's image, read through a container's mount.
    let src = s.dir.join("src");
    assert!(
        exported(
            &src,
            &format!("{}/demo/two:1", s.reg.addr()),
            &s.dir.join("src.tar")
        ) == exported(&dst, &format!("{host}/demo/two:1"), &s.dir.join("dst.tar")),
        "the exports differ"
    );

    // Pulling two again (or into a store that has its layer) fetches no blob at all.
    s.proxy.clear();
    ok(&dst, &["pull", &format!("{host}/demo/two:1")]);
    assert!(
        blob_gets(&s.proxy, &s.two.1).is_empty(),
        "{:?}",
        s.proxy.seen()
    );
}

/// The TOC of the (first) layer of a pushed manifest, from the registry's storage.
fn toc_of(s: &Setup, manifest: &str) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_on_registry(&s.reg, manifest)).unwrap())
            .unwrap();
    let layer = &m["layers"][0];
    let blob = std::fs::read(blob_on_registry(&s.reg, layer["digest"].as_str().unwrap())).unwrap();
    let pos: Vec<u64> = layer["annotations"]["io.github.containers.zstd-chunked.manifest-position"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|v| v.parse().unwrap())
        .collect();
    let c = &blob[pos[0] as usize..(pos[0] + pos[1]) as usize];
    serde_json::from_slice(&zstd::stream::decode_all(c).unwrap()).unwrap()
}

/// Rewrite the TOC of two's blob with `lie`, upload the blob and a manifest naming it
/// (annotations updated: the lie is consistent), and return the tag.
fn lying_image(s: &Setup, tag: &str, lie: &dyn Fn(&mut serde_json::Value)) -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_on_registry(&s.reg, &s.two.0)).unwrap())
            .unwrap();
    let layer = &manifest["layers"][0];
    let blob = std::fs::read(blob_on_registry(&s.reg, layer["digest"].as_str().unwrap())).unwrap();
    let ann = &layer["annotations"];
    let pos = |k: &str| -> Vec<u64> {
        ann[format!("io.github.containers.zstd-chunked.{k}")]
            .as_str()
            .unwrap()
            .split(':')
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let (m, ts) = (pos("manifest-position"), pos("tarsplit-position"));
    let toc_c = &blob[m[0] as usize..(m[0] + m[1]) as usize];
    let mut toc: serde_json::Value =
        serde_json::from_slice(&zstd::stream::decode_all(toc_c).unwrap()).unwrap();
    lie(&mut toc);
    let toc_json = serde_json::to_vec(&toc).unwrap();
    let new_toc = zstd::bulk::compress(&toc_json, 3).unwrap();
    // Data frames, the new TOC, the same tar-split, a new footer.
    let mut out = blob[..(m[0] - 8) as usize].to_vec();
    let skippable = |out: &mut Vec<u8>, data: &[u8]| {
        out.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    };
    let m_off = out.len() as u64 + 8;
    skippable(&mut out, &new_toc);
    let t_off = out.len() as u64 + 8;
    skippable(&mut out, &blob[ts[0] as usize..(ts[0] + ts[1]) as usize]);
    let mut footer = Vec::new();
    for v in [
        m_off,
        new_toc.len() as u64,
        toc_json.len() as u64,
        1,
        t_off,
        ts[1],
        ts[2],
        0x7855_6e49_6c55_4e47,
    ] {
        footer.extend_from_slice(&v.to_le_bytes());
    }
    skippable(&mut out, &footer);
    let mut manifest = manifest.clone();
    let l = &mut manifest["layers"][0];
    l["digest"] = sha(&out).into();
    l["size"] = out.len().into();
    let a = &mut l["annotations"];
    a["io.github.containers.zstd-chunked.manifest-checksum"] = sha(&new_toc).into();
    a["io.github.containers.zstd-chunked.manifest-position"] =
        format!("{m_off}:{}:{}:1", new_toc.len(), toc_json.len()).into();
    a["io.github.containers.zstd-chunked.tarsplit-position"] =
        format!("{t_off}:{}:{}", ts[1], ts[2]).into();
    put_blob(&s.reg.addr(), "demo/lie", &out);
    let config = manifest["config"]["digest"].as_str().unwrap();
    put_blob(
        &s.reg.addr(),
        "demo/lie",
        &std::fs::read(blob_on_registry(&s.reg, config)).unwrap(),
    );
    put_manifest(
        &s.reg.addr(),
        "demo/lie",
        tag,
        &serde_json::to_vec(&manifest).unwrap(),
    );
    format!("{}/demo/lie:{tag}", s.proxy.addr())
}

/// A change to a TOC.
type Lie = dyn Fn(&mut serde_json::Value);

fn entry<'a>(toc: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    toc["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no entry {name}"))
}

#[test]
fn tocs_that_lie_are_refused_naming_the_entry_and_nothing_is_stored() {
    if support::skip_unless_root() {
        return;
    }
    let s = setup();
    let dst = s.dir.join("dst");
    ok(&dst, &["pull", &format!("{}/demo/one:1", s.proxy.addr())]);
    let before = store_fingerprint(&dst);
    let cases: Vec<(&str, Box<Lie>, &str)> = vec![
        (
            // The new file's range points at another file's frame.
            "swapped",
            Box::new(|t| {
                let other = entry(t, "usr/lib/libbig2.so").clone();
                let e = entry(t, "usr/bin/new");
                e["offset"] = other["offset"].clone();
                e["endOffset"] = other["endOffset"].clone();
            }),
            "usr/bin/new",
        ),
        (
            // Two files of one size trade ranges and digests: each frame checks, the
            // rebuilt tar does not hash to the diff-id.
            "consistent",
            Box::new(|t| {
                let a = entry(t, "usr/lib/libbig1.so").clone();
                let b = entry(t, "usr/lib/libbig2.so").clone();
                for (name, from) in [("usr/lib/libbig1.so", &b), ("usr/lib/libbig2.so", &a)] {
                    let e = entry(t, name);
                    for k in ["offset", "endOffset", "digest"] {
                        e[k] = from[k].clone();
                    }
                }
            }),
            "diff-id mismatch",
        ),
        (
            "outside",
            Box::new(|t| {
                let e = entry(t, "usr/bin/new");
                e["endOffset"] = (1u64 << 40).into();
            }),
            "usr/bin/new",
        ),
        (
            "absurd",
            Box::new(|t| {
                let e = entry(t, "usr/bin/new");
                e["size"] = (1u64 << 50).into();
            }),
            "usr/bin/new",
        ),
    ];
    for (tag, lie, name) in &cases {
        let r = lying_image(&s, tag, lie.as_ref());
        let err = fails(&dst, &["pull", &r]);
        assert!(
            err.contains(name) || err.contains("diff-id mismatch"),
            "{tag}: {err}"
        );
        eprintln!("{tag}: {err}");
        assert_eq!(store_fingerprint(&dst), before, "{tag}: the store changed");
    }
}

/// A file's content in a layer tar.
fn file_in(tar: &[u8], name: &str) -> Vec<u8> {
    let mut a = tar::Archive::new(tar);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some(name) {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            return v;
        }
    }
    panic!("{name} is not in the tar")
}

#[test]
fn a_lazy_pull_mounts_at_once_and_fetches_each_file_when_opened() {
    if support::skip_unless_root() {
        return;
    }
    let mut s = setup();
    let (_, tar_two) = layer_pair();
    let host = s.proxy.addr();
    let two = format!("{host}/demo/two:1");
    let dst = s.dir.join("dst");

    // The tree and the small files only: no frame of a file over 4 KiB.
    s.proxy.clear();
    let out = lazy_pull(&dst, &two);
    let bytes: u64 = blob_gets(&s.proxy, &s.two.1)
        .iter()
        .map(|g| g.body_bytes)
        .sum();
    assert!(bytes < 64 * 1024, "fetched {bytes}: {out}");
    assert!(out.contains("fetched when opened"), "{out}");
    assert_eq!(lazy_records(&dst), 1);
    assert!(ok(&dst, &["images"]).contains("to fetch"));

    ok(&dst, &["create", "--name", "c", &two]);
    let mnt = PathBuf::from(ok(&dst, &["mount", "c"]).trim());
    let mut guard = MountGuard::new(&mnt);
    // Listing and stat fetch nothing; the first open fetches that file only.
    s.proxy.clear();
    let md = std::fs::symlink_metadata(mnt.join("usr/bin/new")).unwrap();
    assert_eq!(md.len(), 1 << 20);
    assert!(blob_gets(&s.proxy, &s.two.1).is_empty());
    let want3 = file_in(&tar_two, "usr/lib/libbig3.so");
    assert_eq!(
        std::fs::read(mnt.join("usr/lib/libbig3.so")).unwrap(),
        want3
    );
    let gets = blob_gets(&s.proxy, &s.two.1);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(gets[0].body_bytes < 210_000, "{gets:?}");

    // The registry gone: EIO for a file not here yet, and only for it; back: it reads.
    s.reg.stop();
    let err = std::fs::read(mnt.join("usr/lib/libbig4.so")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        std::fs::read(mnt.join("usr/lib/libbig3.so")).unwrap(),
        want3
    );
    s.reg.restart();
    assert_eq!(
        std::fs::read(mnt.join("usr/lib/libbig4.so")).unwrap(),
        file_in(&tar_two, "usr/lib/libbig4.so")
    );
    // Bytes altered on the way: the content fails its digest, nothing is placed, EIO;
    // the next open (honest bytes) reads.
    let at = toc_of(&s, &s.two.0)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "usr/lib/libbig5.so")
        .unwrap()["offset"]
        .as_u64()
        .unwrap();
    s.proxy.set_faults(Faults {
        path_has: "/blobs/".into(),
        corrupt_at: Some(at + 5000),
        ..Faults::default()
    });
    let err = std::fs::read(mnt.join("usr/lib/libbig5.so")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    s.proxy.set_faults(Faults::default());
    assert_eq!(
        std::fs::read(mnt.join("usr/lib/libbig5.so")).unwrap(),
        file_in(&tar_two, "usr/lib/libbig5.so")
    );
    guard.unmount();

    // A pull completes it: every file here, the tar checked against its diff-id.
    ok(&dst, &["pull", &two]);
    assert_eq!(lazy_records(&dst), 0);
    assert!(ok(&dst, &["system", "check"]).contains("all intact"));
    assert!(!ok(&dst, &["images"]).contains("to fetch"));
    let src = s.dir.join("src");
    assert!(
        exported(
            &src,
            &format!("{}/demo/two:1", s.reg.addr()),
            &s.dir.join("src.tar")
        ) == exported(&dst, &two, &s.dir.join("dst.tar")),
        "the exports differ"
    );
}

#[test]
fn a_lazy_layer_that_lies_serves_no_other_image() {
    if support::skip_unless_root() {
        return;
    }
    let s = setup();
    let dst = s.dir.join("dst");
    // Two files of one size trade ranges and digests: every file reads as its TOC
    // says, the tar does not hash to the diff-id the config names (two's).
    let lie = lying_image(&s, "consistent", &|t| {
        let a = entry(t, "usr/lib/libbig1.so").clone();
        let b = entry(t, "usr/lib/libbig2.so").clone();
        for (name, from) in [("usr/lib/libbig1.so", &b), ("usr/lib/libbig2.so", &a)] {
            let e = entry(t, name);
            for k in ["offset", "endOffset", "digest"] {
                e[k] = from[k].clone();
            }
        }
    });
    lazy_pull(&dst, &lie);
    // The honest image with that diff-id: refused, not served the lying layer.
    let two = format!("{}/demo/two:1", s.proxy.addr());
    let err = fails(&dst, &["pull", &two]);
    assert!(err.contains("does not match its diff-id"), "{err}");
    // check finds it; repair removes it; then the honest image pulls.
    let out = run(&dst, &["system", "check"]);
    assert!(!out.status.success());
    let out = run(&dst, &["system", "check", "--repair"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("removed"), "{said}");
    ok(&dst, &["pull", &two]);
    assert!(ok(&dst, &["system", "check"]).contains("all intact"));
    assert_eq!(lazy_records(&dst), 0);
}

#[test]
fn estargz_pushed_pulls_back_as_gzip_with_its_new_diff_ids() {
    if support::skip_unless_root() {
        return;
    }
    let s = setup();
    let src = s.dir.join("src");
    let r = format!("{}/demo/gz:1", s.reg.addr());
    let out = ok(
        &src,
        &[
            "push",
            "--compression",
            "estargz",
            &format!("{}/demo/two:1", s.reg.addr()),
            &r,
        ],
    );
    let digest = pushed_digest(&out);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_on_registry(&s.reg, &digest)).unwrap()).unwrap();
    let l = &m["layers"][0];
    assert_eq!(
        l["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert!(l["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string());
    // Pulled whole (every digest checked): the landmark and the TOC are in the tree.
    let dst = s.dir.join("dst");
    let out = ok(&dst, &["pull", &r]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    ok(&dst, &["create", "--name", "c", &r]);
    let t = s.dir.join("gz.tar");
    ok(&dst, &["export", "-o", t.to_str().unwrap(), "c"]);
    let names = std::process::Command::new("tar")
        .arg("tf")
        .arg(&t)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(names.contains("stargz.index.json"), "{names}");
    assert!(names.contains("usr/bin/new"), "{names}");
}
