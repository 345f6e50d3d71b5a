//! `save` read by other tools: skopeo (inspect and copy) and podman (load) see the same
//! manifest digest (OCI forms) and the same image id, and `layerfs import` reads every
//! form back, several images at once included. A failed save leaves nothing behind.

use std::fs;
use std::path::Path;
use std::process::Command;

use support::cli::*;
use support::samples::*;
use support::store_env::*;

fn skopeo_inspect(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", reference])
        .output()
        .expect("skopeo is installed (scripts/deps)");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn skopeo_config(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--config", reference])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// podman with a private store under the test's dir; its stdout.
fn podman_in(env: &Env, args: &[&str]) -> String {
    let out = Command::new("podman")
        .arg("--root")
        .arg(env.path("podman-root"))
        .arg("--runroot")
        .arg(env.path("podman-run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("podman is installed");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn skopeo_reads_every_form_with_the_same_digests() {
    let env = Env::new();
    let img = sample_image();
    env.import(&img, "sample:1");
    let diff_ids: Vec<String> = img.layers.iter().map(|l| l.diff_id.clone()).collect();
    for (format, transport) in [
        ("oci-archive", "oci-archive"),
        ("oci-dir", "oci"),
        ("docker-archive", "docker-archive"),
    ] {
        let out = env.path(&format!("sample.{format}"));
        env.ok(&[
            "save",
            "sample:1",
            "-o",
            out.to_str().unwrap(),
            "--format",
            format,
        ]);
        let reference = format!("{transport}:{}", out.display());
        let v = skopeo_inspect(&reference);
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2, "{format}: {v}");
        if format == "docker-archive" {
            // The archive holds uncompressed layers: their digests are the diff-ids.
            let layers: Vec<String> = v["Layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect();
            assert_eq!(layers, diff_ids);
        } else {
            assert_eq!(v["Digest"], img.manifest_digest.as_str(), "{format}");
        }
        let cfg = skopeo_config(&reference);
        assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    }

    // skopeo copy to an OCI layout, then layerfs imports that: the same manifest digest.
    let archive = env.path("sample.oci-archive");
    let copied = env.path("copied");
    let st = Command::new("skopeo")
        .args([
            "copy",
            &format!("oci-archive:{}", archive.display()),
            &format!("oci:{}:copied:1", copied.display()),
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let fresh = env.path("fresh");
    ok(&fresh, &["import", copied.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&ok(&fresh, &["inspect", "copied:1"])).unwrap();
    assert_eq!(v[0]["ManifestDigest"], img.manifest_digest.as_str());
}

#[test]
fn committed_image_loads_in_podman() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let m = env.mounted("sample:1", "c1");
    fs::write(m.join("added"), "by the container").unwrap();
    let id = env.line(&["commit", "c1", "made/here:2"]);
    let manifest = env.inspect("made/here:2")["ManifestDigest"]
        .as_str()
        .unwrap()
        .to_string();
    let archive = env.path("made.tar");
    env.ok(&["save", "made/here:2", "-o", archive.to_str().unwrap()]);
    assert_eq!(
        skopeo_inspect(&format!("oci-archive:{}", archive.display()))["Digest"],
        manifest.as_str()
    );
    let podman = |args: &[&str]| podman_in(&env, args);
    let loaded = podman(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("made/here:2"), "{loaded}");
    let images: serde_json::Value =
        serde_json::from_str(&podman(&["images", "--format", "json"])).unwrap();
    let i = &images[0];
    assert_eq!(format!("sha256:{}", i["Id"].as_str().unwrap()), id);
    assert_eq!(i["Digest"], manifest.as_str());
}

#[test]
fn several_images_in_one_archive_and_failures_leave_nothing() {
    let env = Env::with_sample();
    env.import(&sibling_image(), "sibling:1");
    for format in ["oci-archive", "docker-archive", "oci-dir"] {
        let out = env.path(&format!("both.{format}"));
        env.ok(&[
            "save",
            "sample:1",
            "sibling:1",
            "-o",
            out.to_str().unwrap(),
            "--format",
            format,
        ]);
        let fresh = env.path(&format!("fresh-{format}"));
        let o = ok(&fresh, &["import", out.to_str().unwrap()]);
        assert!(o.contains("sample:1") && o.contains("sibling:1"), "{o}");
        // The shared base layer is stored once.
        let layers = fs::read_dir(fresh.join("layers/sha256")).unwrap().count();
        assert_eq!(layers, 3, "{format}");
    }
    // Failures: an unknown image among known ones, a missing directory, an existing
    // OCI dir; nothing is written.
    let dir = env.path("out");
    fs::create_dir(&dir).unwrap();
    let err = env.fails(&[
        "save",
        "sample:1",
        "ghost",
        "-o",
        dir.join("x.tar").to_str().unwrap(),
    ]);
    assert!(err.contains("no such image: ghost"), "{err}");
    let err = env.fails(&["save", "sample:1", "-o", "/no/such/dir/x.tar"]);
    assert!(err.contains("/no/such/dir"), "{err}");
    let err = env.fails(&[
        "save",
        "sample:1",
        "-o",
        dir.to_str().unwrap(),
        "--format",
        "oci-dir",
    ]);
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    assert!(!Path::new("/no/such/dir").exists());
}

#[test]
fn save_as_zstd_chunked_keeps_the_image_id_and_is_reproducible() {
    let env = Env::new();
    let img = sample_image();
    env.import(&img, "sample:1");
    let diff_ids: Vec<String> = img.layers.iter().map(|l| l.diff_id.clone()).collect();
    let save = |name: &str| {
        let out = env.path(name);
        env.ok(&[
            "save",
            "--compression",
            "zstd:chunked",
            "sample:1",
            "-o",
            out.to_str().unwrap(),
        ]);
        out
    };
    let a = save("a.tar");
    let b = save("b.tar");
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "same archive twice"
    );

    // skopeo: new layer blobs with the four annotations, the same config and diff-ids.
    let reference = format!("oci-archive:{}", a.display());
    let v = skopeo_inspect(&reference);
    assert_ne!(v["Digest"], img.manifest_digest.as_str());
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", &reference])
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        for k in [
            "manifest-checksum",
            "manifest-position",
            "tarsplit-checksum",
            "tarsplit-position",
        ] {
            assert!(
                l["annotations"][format!("io.github.containers.zstd-chunked.{k}")].is_string(),
                "{m}"
            );
        }
    }
    let cfg = skopeo_config(&reference);
    assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(diff_ids));

    // Imported back (a plain zstd read, diff-ids checked): the same image id.
    let fresh = env.path("fresh");
    ok(&fresh, &["import", "-t", "back:1", a.to_str().unwrap()]);
    let back: serde_json::Value =
        serde_json::from_str(&ok(&fresh, &["inspect", "back:1"])).unwrap();
    assert_eq!(back[0]["Id"], env.inspect("sample:1")["Id"]);

    // A docker-archive holds uncompressed layers: the option is refused.
    let err = env.fails(&[
        "save",
        "--compression",
        "zstd:chunked",
        "--format",
        "docker-archive",
        "sample:1",
        "-o",
        env.path("d.tar").to_str().unwrap(),
    ]);
    assert!(err.contains("--compression"), "{err}");
}

#[test]
fn save_as_estargz_loads_in_podman_and_imports_back() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    let img = sample_image();
    env.import(&img, "sample:1");
    let save = |name: &str| {
        let out = env.path(name);
        env.ok(&[
            "save",
            "--compression",
            "estargz",
            "sample:1",
            "-o",
            out.to_str().unwrap(),
        ]);
        out
    };
    let a = save("a.tar");
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(save("b.tar")).unwrap(),
        "same archive twice"
    );
    let reference = format!("oci-archive:{}", a.display());
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", &reference])
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert!(
            l["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string(),
            "{m}"
        );
    }

    // layerfs reads it back (as gzip, every diff-id checked): the image's files plus the
    // landmark and the TOC at the top.
    let fresh = env.path("fresh");
    ok(&fresh, &["import", "-t", "back:1", a.to_str().unwrap()]);
    let back: serde_json::Value =
        serde_json::from_str(&ok(&fresh, &["inspect", "back:1"])).unwrap();
    let id = back[0]["Id"].as_str().unwrap().to_string();
    assert_ne!(id, env.inspect("sample:1")["Id"].as_str().unwrap());
    ok(&fresh, &["create", "--name", "c", "back:1"]);
    let listing = env.path("back.tar");
    ok(&fresh, &["export", "-o", listing.to_str().unwrap(), "c"]);
    let names = Command::new("tar")
        .arg("tf")
        .arg(&listing)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout).into_owned();
    for n in [
        "stargz.index.json",
        ".no.prefetch.landmark",
        "etc/os-release",
    ] {
        assert!(
            names.lines().any(|l| l.trim_start_matches("./") == n),
            "{n}: {names}"
        );
    }

    // podman loads it (its own diff-id checks) under the same image id.
    let podman = |args: &[&str]| podman_in(&env, args);
    podman(&["load", "-i", a.to_str().unwrap()]);
    let images: serde_json::Value =
        serde_json::from_str(&podman(&["images", "--format", "json"])).unwrap();
    assert_eq!(format!("sha256:{}", images[0]["Id"].as_str().unwrap()), id);
}
