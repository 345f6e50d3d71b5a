//! eStargz against a real registry through the counting proxy. A pull of an image whose
//! files the store mostly has fetches the blob's tail (footer and TOC), then every gzip
//! member but those of chunks the store has: every chunk of a layerfs-written blob
//! (its TOC says where each member ends), only the chunks before a file's last in a
//! blob laid out as stargz's Go writer lays it out (the last member also holds the next
//! headers). The rebuilt tar must hash to the diff-id; a lazy pull mounts at once and
//! fetches files when opened; TOCs that lie are refused with the store unchanged.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::common::*;
use support::cli::*;
use support::fingerprint::*;
use support::images::*;
use support::mounts::MountGuard;
use support::proxy::*;
use support::registry::*;
use support::rng::Rng;

const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// A change made to a TOC.
type Lie = Box<dyn Fn(&mut serde_json::Value)>;

/// One entry for [`go_estargz`]: a directory (name ends in `/`) or a file.
type Entry<'a> = (&'a str, &'a [u8]);

/// An eStargz blob as stargz's Go writer lays it out (1 MiB chunks): each chunk starts
/// a gzip member, the last chunk's member stays open for the headers after it, no
/// `endOffset`. Returns the layer (tar, blob) and the TOC JSON, which `lie` may change
/// (the annotation is the digest of what it leaves).
fn go_estargz(entries: &[Entry<'_>], lie: &dyn Fn(&mut serde_json::Value)) -> (Layer, String) {
    struct W {
        out: Vec<u8>,
        gz: Option<flate2::write::GzEncoder<Vec<u8>>>,
        tar: Vec<u8>,
    }
    impl W {
        fn write(&mut self, b: &[u8]) {
            self.tar.extend_from_slice(b);
            self.gz
                .get_or_insert_with(|| {
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default())
                })
                .write_all(b)
                .unwrap();
        }
        fn close(&mut self) {
            if let Some(g) = self.gz.take() {
                self.out.extend(g.finish().unwrap());
            }
        }
    }
    let header = |name: &str, size: usize, dir: bool| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size as u64);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_cksum();
        h.as_bytes().to_vec()
    };
    let pad = |n: usize| vec![0u8; n.div_ceil(512) * 512 - n];
    let mut w = W {
        out: Vec::new(),
        gz: None,
        tar: Vec::new(),
    };
    let mut toc = Vec::new();
    let landmark: Entry<'_> = (".no.prefetch.landmark", &[0x0f]);
    for (name, data) in std::iter::once(&landmark).chain(entries) {
        let dir = name.ends_with('/');
        w.write(&header(name, data.len(), dir));
        let mut e = serde_json::json!({
            "name": name.trim_end_matches('/'),
            "type": if dir { "dir" } else { "reg" },
            "mode": if dir { 0o755 } else { 0o644 },
            "modtime": "2023-11-14T22:13:20Z",
        });
        if dir || data.is_empty() {
            toc.push(e);
            continue;
        }
        e["size"] = data.len().into();
        e["digest"] = sha(data).into();
        let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
        for (k, c) in chunks.iter().enumerate() {
            w.close();
            let offset = w.out.len();
            w.write(c);
            let mut ce = if k == 0 {
                e.clone()
            } else {
                serde_json::json!({ "name": name, "type": "chunk", "chunkOffset": k << 20 })
            };
            ce["offset"] = offset.into();
            ce["chunkDigest"] = sha(c).into();
            if k + 1 < chunks.len() {
                ce["chunkSize"] = c.len().into();
            }
            toc.push(ce);
        }
        w.write(&pad(data.len()));
    }
    w.close();
    let toc_offset = w.out.len();
    let mut toc = serde_json::json!({ "version": 1, "entries": toc });
    lie(&mut toc);
    let json = serde_json::to_vec(&toc).unwrap();
    w.write(&header("stargz.index.json", json.len(), false));
    w.write(&json);
    w.write(&pad(json.len()));
    w.write(&[0u8; 1024]);
    w.close();
    let mut f = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff];
    f.extend_from_slice(&26u16.to_le_bytes());
    f.extend_from_slice(b"SG");
    f.extend_from_slice(&22u16.to_le_bytes());
    f.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    w.out.extend(f);
    let layer = Layer {
        digest: sha(&w.out),
        diff_id: sha(&w.tar),
        tar: w.tar,
        comp: Comp::Gzip,
        blob: w.out,
    };
    (layer, sha(&json))
}

/// An image of one eStargz layer whose manifest names `toc_digest`, as an OCI layout
/// imported into `src` as `name`.
fn import_estargz(dir: &Path, src: &Path, name: &str, layer: Layer, toc_digest: &str) {
    let mut img = image(vec![layer]);
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    m["layers"][0]["annotations"] = serde_json::json!({ TOC_DIGEST: toc_digest });
    img.manifest = serde_json::to_vec(&m).unwrap();
    img.manifest_digest = sha(&img.manifest);
    let layout = dir.join(format!("layout-{}", name.replace(['/', ':'], "-")));
    write_oci_layout(&layout, &[(&img, Some(name))], false);
    ok(src, &["import", layout.to_str().unwrap()]);
}

/// A registry behind the counting proxy, in a temp dir.
struct Env {
    _t: tempfile::TempDir,
    dir: PathBuf,
    reg: Registry,
    proxy: Proxy,
}

/// [`Env`], or `None` when the test must skip (not root).
fn env() -> Option<Env> {
    if support::skip_unless_root() {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let reg = Registry::start(&dir.join("reg"), None);
    let proxy = Proxy::start(reg.port);
    Some(Env {
        _t: t,
        dir,
        reg,
        proxy,
    })
}

/// The sample files: a 3.5 MiB file (four chunks in the Go layout, one in layerfs's),
/// six of 200 kB, small ones; `second` adds a new 300 kB file.
fn files(second: bool) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(11);
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("etc/".into(), vec![]),
        ("etc/os-release".into(), b"NAME=sample\n".to_vec()),
        ("usr/".into(), vec![]),
        ("usr/lib/".into(), vec![]),
        ("usr/lib/big.bin".into(), rng.bytes(7 << 19)),
    ];
    for i in 0..6 {
        v.push((format!("usr/lib/lib{i}.so"), rng.bytes(200_000)));
    }
    if second {
        v.push(("usr/lib/new.so".into(), Rng::new(99).bytes(300_000)));
    }
    v
}

fn plain_tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = LayerBuilder::new();
    for (name, data) in files {
        b = if let Some(d) = name.strip_suffix('/') {
            b.dir(d, 0o755)
        } else {
            b.file(name, data)
        };
    }
    b.build()
}

fn go_layer(files: &[(String, Vec<u8>)], lie: &dyn Fn(&mut serde_json::Value)) -> (Layer, String) {
    let entries: Vec<Entry<'_>> = files.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    go_estargz(&entries, lie)
}

#[test]
fn a_partial_pull_of_layerfs_estargz_skips_every_file_the_store_has() {
    let Some(Env {
        _t,
        dir,
        reg,
        proxy,
    }) = env()
    else {
        return;
    };
    let dir = dir.as_path();
    let (src, dst, full) = (dir.join("src"), dir.join("dst"), dir.join("full"));
    let mut pushed = Vec::new();
    for (second, name) in [(false, "one"), (true, "two")] {
        let tar = dir.join(format!("{name}.tar"));
        std::fs::write(&tar, plain_tar(&files(second))).unwrap();
        let r = format!("{}/demo/{name}:1", reg.addr());
        ok(&src, &["import", "-t", &r, tar.to_str().unwrap()]);
        let out = ok(&src, &["push", "--compression", "estargz", &r]);
        pushed.push(pushed_digest(&out));
    }
    let (blob, size) = layer_of(&reg, &pushed[1]);
    let two = format!("{}/demo/two:1", proxy.addr());
    // Into an empty store: one request for the whole blob (no TOC fetched first).
    ok(&dst, &["pull", &format!("{}/demo/one:1", proxy.addr())]);
    let (one_blob, one_size) = layer_of(&reg, &pushed[0]);
    assert_eq!(blob_bytes(&proxy, &one_blob), (1, one_size));
    proxy.clear();
    let out = ok(&dst, &["pull", &two]);
    assert!(out.contains("partial:"), "{out}");
    let (requests, bytes) = blob_bytes(&proxy, &blob);
    // The tail (footer, TOC), then the new file and the headers between files.
    assert!(
        bytes < 300_000 + 256 * 1024 + 64 * 1024,
        "{bytes} of {size}: {out}"
    );
    // One per run of members between skipped files: the tail, the headers between
    // the seven skipped files and after them.
    assert!(requests <= 9, "{requests} requests: {out}");
    assert!(ok(&dst, &["system", "check"]).contains("all intact"));
    // The same tree as a whole pull.
    ok(&full, &["pull", &two]);
    assert!(
        exported(&dst, &two, &dir.join("a.tar")) == exported(&full, &two, &dir.join("b.tar")),
        "the exports differ"
    );
    // The blob was not kept, and is written again byte for byte (to a registry that
    // has none of it).
    let reg2 = Registry::start(&dir.join("reg2"), None);
    let out = ok(
        &dst,
        &["push", &two, &format!("{}/demo/again:1", reg2.addr())],
    );
    assert_eq!(pushed_digest(&out), pushed[1], "{out}");
    assert_eq!(layer_of(&reg2, &pushed[1]), (blob, size));
}

#[test]
fn a_partial_pull_of_go_written_estargz_skips_the_chunks_before_each_files_last() {
    let Some(Env {
        _t,
        dir,
        reg,
        proxy,
    }) = env()
    else {
        return;
    };
    let dir = dir.as_path();
    let (src, dst, full) = (dir.join("src"), dir.join("dst"), dir.join("full"));
    let mut blobs = Vec::new();
    for (second, name) in [(false, "one"), (true, "two")] {
        let (layer, toc) = go_layer(&files(second), &|_| {});
        blobs.push((layer.digest.clone(), layer.blob.len() as u64));
        let r = format!("{}/demo/{name}:1", reg.addr());
        import_estargz(dir, &src, &r, layer, &toc);
        ok(&src, &["push", &r]);
    }
    let (blob, size) = blobs[1].clone();
    let two = format!("{}/demo/two:1", proxy.addr());
    ok(&dst, &["pull", &format!("{}/demo/one:1", proxy.addr())]);
    proxy.clear();
    let out = ok(&dst, &["pull", &two]);
    assert!(out.contains("partial:"), "{out}");
    // Three of big.bin's four chunks are skipped; every other member is fetched.
    let (_, bytes) = blob_bytes(&proxy, &blob);
    assert!(bytes <= size - (3 << 20), "{bytes} of {size}: {out}");
    assert!(
        bytes > size - (3 << 20) - 100_000,
        "{bytes} of {size}: {out}"
    );
    assert!(ok(&dst, &["system", "check"]).contains("all intact"));
    ok(&full, &["pull", &two]);
    assert!(
        exported(&dst, &two, &dir.join("a.tar")) == exported(&full, &two, &dir.join("b.tar")),
        "the exports differ"
    );
    // Not rebuildable byte for byte (another writer): push says so and what works.
    let reg2 = Registry::start(&dir.join("reg2"), None);
    let again = format!("{}/demo/again:1", reg2.addr());
    let err = fails(&dst, &["push", &two, &again]);
    assert!(
        err.contains("another estargz encoder") && err.contains("--compression"),
        "{err}"
    );
    ok(
        &dst,
        &["push", "--compression", "zstd:chunked", &two, &again],
    );
}

#[test]
fn a_lazy_estargz_pull_mounts_at_once_and_fetches_files_when_opened() {
    let Some(Env {
        _t,
        dir,
        reg,
        proxy,
    }) = env()
    else {
        return;
    };
    let dir = dir.as_path();
    let src = dir.join("src");
    // A name given twice: the later entry is the file.
    let mut want = files(true);
    want.push(("etc/os-release".into(), b"NAME=again\n".to_vec()));
    // One image in each layout.
    let tar = dir.join("two.tar");
    std::fs::write(&tar, plain_tar(&want)).unwrap();
    let ours = format!("{}/demo/ours:1", reg.addr());
    ok(&src, &["import", "-t", &ours, tar.to_str().unwrap()]);
    let out = ok(&src, &["push", "--compression", "estargz", &ours]);
    let (ours_blob, ours_size) = layer_of(&reg, &pushed_digest(&out));
    let (layer, toc) = go_layer(&want, &|_| {});
    let (go_blob, go_size) = (layer.digest.clone(), layer.blob.len() as u64);
    let go = format!("{}/demo/go:1", reg.addr());
    import_estargz(dir, &src, &go, layer, &toc);
    ok(&src, &["push", &go]);

    for (name, blob, size, most) in [
        ("ours", &ours_blob, ours_size, 400 * 1024),
        // Every file's last (or only) chunk: all but three of big.bin's four.
        ("go", &go_blob, go_size, go_size - (3 << 20) + 10_000),
    ] {
        let root = dir.join(format!("dst-{name}"));
        let r = format!("{}/demo/{name}:1", proxy.addr());
        proxy.clear();
        let out = lazy_pull(&root, &r);
        let (_, bytes) = blob_bytes(&proxy, blob);
        assert!(bytes < most, "{name}: fetched {bytes} of {size}: {out}");
        assert!(out.contains("fetched when opened"), "{name}: {out}");
        assert_eq!(lazy_records(&root), 1, "{name}");
        ok(&root, &["create", "--name", "c", &r]);
        let mnt = PathBuf::from(ok(&root, &["mount", "c"]).trim());
        let mut guard = MountGuard::new(&mnt);
        let files: std::collections::BTreeMap<&String, &Vec<u8>> =
            want.iter().map(|(p, d)| (p, d)).collect();
        for (path, data) in files {
            if !path.ends_with('/') {
                assert!(
                    std::fs::read(mnt.join(path)).unwrap() == *data,
                    "{name}: {path} differs"
                );
            }
        }
        guard.unmount();
        ok(&root, &["pull", &r]);
        assert_eq!(lazy_records(&root), 0, "{name}");
        assert!(
            ok(&root, &["system", "check"]).contains("all intact"),
            "{name}"
        );
    }
}

#[test]
fn estargz_tocs_that_lie_are_refused_and_nothing_is_stored() {
    let Some(Env { _t, dir, reg, .. }) = env() else {
        return;
    };
    let dir = dir.as_path();
    let src = dir.join("src");
    let dst = dir.join("dst");
    // The store has one's files, so that a partial pull is tried.
    let (layer, toc) = go_layer(&files(false), &|_| {});
    let one = format!("{}/demo/one:1", reg.addr());
    import_estargz(dir, &src, &one, layer, &toc);
    ok(&src, &["push", &one]);
    ok(&dst, &["pull", &one]);
    // Another 3.5 MiB content the store has, to swap in.
    let mut other = files(false);
    other[4].0 = "usr/lib/other.bin".into();
    other[4].1 = Rng::new(5).bytes(7 << 19);
    let other_digest = sha(&other[4].1);
    let (layer, toc) = go_layer(&other, &|_| {});
    let o = format!("{}/demo/other:1", reg.addr());
    import_estargz(dir, &src, &o, layer, &toc);
    ok(&src, &["push", &o]);
    ok(&dst, &["pull", &o]);
    let before = store_fingerprint(&dst);

    let entry = |toc: &mut serde_json::Value, name: &str, k: usize| -> serde_json::Value {
        toc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name)
            .nth(k)
            .unwrap()
            .clone()
    };
    let set =
        |toc: &mut serde_json::Value, name: &str, k: usize, key: &str, v: serde_json::Value| {
            let e = toc["entries"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .filter(|e| e["name"] == name)
                .nth(k)
                .unwrap();
            e[key] = v;
        };
    let cases: Vec<(&str, Lie, &str)> = vec![
        (
            "annotation",
            Box::new(|_| {}),
            "the manifest's annotation says",
        ),
        (
            "order",
            Box::new(move |t| {
                let second = entry(t, "usr/lib/big.bin", 1)["offset"].clone();
                set(t, "usr/lib/big.bin", 2, "offset", second);
            }),
            "\"usr/lib/big.bin\": chunk at offset",
        ),
        (
            "digest",
            Box::new(move |t| {
                set(
                    t,
                    "usr/lib/big.bin",
                    0,
                    "digest",
                    other_digest.clone().into(),
                )
            }),
            "diff-id mismatch",
        ),
    ];
    for (tag, lie, says) in cases {
        let (layer, mut toc) = go_layer(&files(true), &*lie);
        if tag == "annotation" {
            toc = sha(b"not the toc");
        }
        let r = format!("{}/demo/lie:{tag}", reg.addr());
        import_estargz(dir, &src, &r, layer, &toc);
        ok(&src, &["push", &r]);
        let err = fails(&dst, &["pull", &r]);
        assert!(err.contains(says), "{tag}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{tag}: {err}");
        assert_eq!(store_fingerprint(&dst), before, "{tag}: the store changed");
    }
    // Lazily (into an empty store, so that big.bin is left for later), the TOC stands
    // in for the diff-id until the layer is complete: a small file whose content it
    // misnames is refused at once.
    let dst = dir.join("dst-lazy");
    let before = empty_store(&dst);
    let (layer, toc) = go_layer(&files(true), &|t| {
        set(
            t,
            "etc/os-release",
            0,
            "digest",
            sha(b"NAME=other\n").into(),
        )
    });
    let r = format!("{}/demo/lie:lazy", reg.addr());
    import_estargz(dir, &src, &r, layer, &toc);
    ok(&src, &["push", &r]);
    let o = lazy_pull_output(&dst, &[], &r);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("its eStargz TOC does not name"), "{err}");
    assert_eq!(store_fingerprint(&dst), before, "lazy: the store changed");
}

/// `ctr-remote` (stargz-snapshotter's own tool: `images convert --estargz` and its
/// `--zstdchunked`, the same layout in zstd frames) against the private containerd `c`.
fn ctr_remote(c: &support::containerd::Containerd, args: &[&str]) {
    let o = std::process::Command::new("ctr-remote")
        .arg("--address")
        .arg(&c.address)
        .arg("--namespace")
        .arg(&c.namespace)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ctr-remote {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Bytes of every blob fetched through the proxy.
fn all_blob_bytes(proxy: &Proxy) -> u64 {
    proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .map(|s| s.body_bytes)
        .sum()
}

#[test]
fn stargz_images_made_by_ctr_remote_pull_partially_and_a_lazy_mount_runs_a_shell() {
    let Some(Env {
        _t,
        dir,
        reg,
        proxy,
    }) = env()
    else {
        return;
    };
    if support::skip_without_tool("ctr-remote") {
        return;
    }
    let dir = dir.as_path();
    let c = support::containerd::Containerd::start(&dir.join("containerd"), &dir.join("none.sock"));
    let src = dir.join("src");
    // A shell (dash and what it loads, from the test rootfs), a 9 MiB file; two adds a
    // new file.
    let rootfs = support::debian::rootfs();
    let mut rng = Rng::new(3);
    let big = rng.bytes(9 << 20);
    let new = rng.bytes(300_000);
    for (name, second) in [("one", false), ("two", true)] {
        let work = dir.join(name);
        std::fs::create_dir_all(work.join("srv")).unwrap();
        std::fs::write(work.join("srv/big.bin"), &big).unwrap();
        if second {
            std::fs::write(work.join("srv/new.bin"), &new).unwrap();
        }
        let tar = dir.join(format!("{name}.tar"));
        let st = std::process::Command::new("tar")
            .args(["--numeric-owner", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&rootfs)
            .args([
                "--no-recursion",
                "./usr",
                "./usr/bin",
                "./usr/lib",
                "./usr/lib64",
            ])
            .args([
                "./usr/lib/x86_64-linux-gnu",
                "./bin",
                "./lib",
                "./lib64",
                "./usr/bin/dash",
            ])
            .args(["./usr/lib/x86_64-linux-gnu/libc.so.6"])
            .args(["./usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"])
            .args(["./usr/lib64/ld-linux-x86-64.so.2"])
            .arg("-C")
            .arg(&work)
            .arg("--recursion")
            .arg("./srv")
            .status()
            .unwrap();
        assert!(st.success());
        let local = format!("demo/{name}:1");
        ok(&src, &["import", "-t", &local, tar.to_str().unwrap()]);
        let archive = dir.join(format!("{name}.oci.tar"));
        ok(&src, &["save", &local, "-o", archive.to_str().unwrap()]);
        let plain = format!("docker.io/demo/{name}:1");
        c.ok(&[
            "image",
            "import",
            "--index-name",
            &plain,
            archive.to_str().unwrap(),
        ]);
        // eStargz, and the same layout in zstd frames.
        for (tag, form) in [("esgz", "--estargz"), ("zc", "--zstdchunked")] {
            let to = format!("{}/demo/{name}:{tag}", reg.addr());
            ctr_remote(
                &c,
                &[
                    "image",
                    "convert",
                    form,
                    "--oci",
                    "--estargz-chunk-size",
                    "1048576",
                    &plain,
                    &to,
                ],
            );
            c.ok(&["image", "push", "--plain-http", &to]);
        }
    }
    for tag in ["esgz", "zc"] {
        let two = format!("{}/demo/two:{tag}", proxy.addr());

        // Partially: eight of big.bin's nine chunks come from the store.
        let (dst, full) = (
            dir.join(format!("dst-{tag}")),
            dir.join(format!("full-{tag}")),
        );
        ok(&dst, &["pull", &format!("{}/demo/one:{tag}", proxy.addr())]);
        proxy.clear();
        let out = ok(&dst, &["pull", &two]);
        assert!(out.contains("partial:"), "{tag}: {out}");
        let partial = all_blob_bytes(&proxy);
        proxy.clear();
        ok(&full, &["pull", &two]);
        let whole = all_blob_bytes(&proxy);
        assert!(
            partial + (8 << 20) <= whole + 300_000,
            "{tag}: {partial} vs {whole}: {out}"
        );
        assert!(
            partial < whole - (7 << 20),
            "{tag}: {partial} vs {whole}: {out}"
        );
        assert!(ok(&dst, &["system", "check"]).contains("all intact"));
        assert!(
            exported(&dst, &two, &dir.join("a.tar")) == exported(&full, &two, &dir.join("b.tar")),
            "{tag}: the exports differ"
        );

        // Lazily, into an empty store: a shell runs in the mount before the rest is here.
        let lazy = dir.join(format!("lazy-{tag}"));
        proxy.clear();
        let out = lazy_pull(&lazy, &two);
        assert!(out.contains("fetched when opened"), "{tag}: {out}");
        assert!(all_blob_bytes(&proxy) < whole - (7 << 20), "{tag}: {out}");
        ok(&lazy, &["create", "--name", "c", &two]);
        let mnt = PathBuf::from(ok(&lazy, &["mount", "c"]).trim());
        let mut guard = MountGuard::new(&mnt);
        let sh = std::process::Command::new("chroot")
            .arg(&mnt)
            .args(["/bin/dash", "-c", "echo shell runs"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&sh.stdout),
            "shell runs\n",
            "{tag}: {sh:?}"
        );
        assert!(std::fs::read(mnt.join("srv/big.bin")).unwrap() == big);
        guard.unmount();
        ok(&lazy, &["pull", &two]);
        assert_eq!(lazy_records(&lazy), 0);
        assert!(ok(&lazy, &["system", "check"]).contains("all intact"));
    }
}

#[test]
fn a_lazy_open_waits_out_a_slow_registry_and_a_stalled_one_is_eio() {
    let Some(Env {
        _t,
        dir,
        reg,
        proxy,
    }) = env()
    else {
        return;
    };
    let dir = dir.as_path();
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let want = files(true);
    let tar = dir.join("two.tar");
    std::fs::write(&tar, plain_tar(&want)).unwrap();
    let r = format!("{}/demo/two:1", reg.addr());
    ok(&src, &["import", "-t", &r, tar.to_str().unwrap()]);
    ok(&src, &["push", "--compression", "estargz", &r]);
    // The pull's --timeout and --retries hold for the fetches after it.
    let two = format!("{}/demo/two:1", proxy.addr());
    let args = ["--timeout", "1", "--retries", "0"];
    succeeded(&args, lazy_pull_output(&dst, &args, &two));
    ok(&dst, &["create", "--name", "c", &two]);
    let mnt = PathBuf::from(ok(&dst, &["mount", "c"]).trim());
    let mut guard = MountGuard::new(&mnt);
    let content = |name: &str| &want.iter().find(|(n, _)| n == name).unwrap().1;

    // Slow (200 kB/s): the open waits, then reads the right bytes.
    proxy.set_faults(Faults {
        path_has: "/blobs/".into(),
        throttle: Some(200_000),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    assert!(std::fs::read(mnt.join("usr/lib/lib0.so")).unwrap() == *content("usr/lib/lib0.so"));
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    // Opens of two files fetch at once (each waits only for its own).
    proxy.clear();
    std::thread::scope(|sc| {
        for name in ["usr/lib/lib2.so", "usr/lib/lib3.so"] {
            let mnt = &mnt;
            sc.spawn(move || {
                assert!(
                    std::fs::read(mnt.join(name)).unwrap() == *content(name),
                    "{name}"
                );
            });
        }
    });
    assert!(proxy.max_in_flight() >= 2, "{}", proxy.max_in_flight());
    // Stalled: EIO once the timeout has passed, not a hang.
    proxy.set_faults(Faults {
        path_has: "/blobs/".into(),
        stall_after: Some(1000),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let err = std::fs::read(mnt.join("usr/lib/lib1.so")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    proxy.set_faults(Faults::default());
    assert!(std::fs::read(mnt.join("usr/lib/lib1.so")).unwrap() == *content("usr/lib/lib1.so"));
    guard.unmount();
}
