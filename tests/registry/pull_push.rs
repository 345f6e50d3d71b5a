//! Pull and push against a real registry on 127.0.0.1 (Debian's docker-registry), through
//! a counting proxy: shared layers cross the wire once, a re-pull moves only the manifest
//! and config, digests survive the round trip, the pulled image mounts to the same tree
//! as the pushed one; basic auth, bearer tokens, login/logout; skopeo both ways.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::cli::*;
use support::fingerprint::*;
use support::images::*;
use support::proxy::*;
use support::registry::*;
use support::samples::*;
use support::stack::*;
use support::store_env::read_layer_file;
use support::tree::*;

/// `layerfs` with a private credentials file (nothing from the machine's).
fn lf(root: &Path, auth: &Path, args: &[&str]) -> Output {
    command(root)
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth)
        .env("HOME", auth.parent().unwrap())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap()
}

fn lf_ok(root: &Path, auth: &Path, args: &[&str]) -> String {
    succeeded(args, lf(root, auth, args))
}

/// The one error line of a failed command.
fn lf_fails(root: &Path, auth: &Path, args: &[&str]) -> String {
    one_error_line(args, lf(root, auth, args))
}

fn inspect(root: &Path, name: &str) -> serde_json::Value {
    let v: Vec<serde_json::Value> = serde_json::from_str(&ok(root, &["inspect", name])).unwrap();
    v.into_iter().next().unwrap()
}

/// Import the two sample images (sharing a base layer) into a store.
fn source_store(dir: &Path) -> (PathBuf, Image, Image) {
    let (a, b) = sample_pair();
    let root = dir.join("src-store");
    write_oci_layout(&dir.join("one"), &[(&a, Some("demo/one:1.0"))], false);
    write_oci_layout(&dir.join("two"), &[(&b, Some("demo/two:1.0"))], false);
    ok(&root, &["import", dir.join("one").to_str().unwrap()]);
    ok(&root, &["import", dir.join("two").to_str().unwrap()]);
    (root, a, b)
}

/// Mount an image of a store (its layer dirs, top first) and snapshot the tree.
fn mounted_tree(root: &Path, name: &str, mnt: &Path) -> Tree {
    let v = inspect(root, name);
    let stack = Stack::of_image(&v);
    let g = mount_layerfs(&stack, mnt, &[]);
    let t = snapshot(mnt, &SnapOpts::default());
    drop(g);
    t
}

#[test]
fn push_then_pull_shares_layers_and_mounts_equal() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let auth = t.path().join("auth.json");
    let reg = Registry::start(&t.path().join("reg"), None);
    let proxy = Proxy::start(reg.port);
    let host = proxy.addr();
    let (src, a, b) = source_store(t.path());

    // Push one, then two: the shared base is found on the registry (HEAD), not sent again.
    let out = lf_ok(
        &src,
        &auth,
        &["push", "demo/one:1.0", &format!("{host}/demo/one:1.0")],
    );
    assert!(
        out.contains(&format!("The push refers to repository [{host}/demo/one]")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "1.0: digest: {} size: {}",
            a.manifest_digest,
            a.manifest.len()
        )),
        "{out}"
    );
    assert_eq!(out.matches(": Pushed").count(), 2, "{out}");
    let base = &a.layers[0].digest;
    proxy.clear();
    // Two goes up in small chunks (PATCH … PUT).
    let out = lf_ok(
        &src,
        &auth,
        &[
            "push",
            "--chunk-size",
            "300",
            "demo/two:1.0",
            &format!("{host}/demo/two:1.0"),
        ],
    );
    assert!(
        out.contains("2: digest:") || out.contains("1.0: digest:"),
        "{out}"
    );
    assert!(
        proxy.count("PATCH", "/v2/demo/two/blobs/uploads/") >= 2,
        "{:?}",
        proxy.seen()
    );

    // Pull into a fresh store: one (both layers), then two (base "Already exists").
    let dst = t.path().join("dst-store");
    proxy.clear();
    let out = lf_ok(&dst, &auth, &["pull", &format!("{host}/demo/one:1.0")]);
    assert!(out.contains("1.0: Pulling from demo/one"), "{out}");
    assert_eq!(out.matches(": Pull complete").count(), 2, "{out}");
    assert!(
        out.contains(&format!("Digest: {}", a.manifest_digest)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Status: Downloaded newer image for {host}/demo/one:1.0"
        )),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with(&format!("{host}/demo/one:1.0")),
        "{out}"
    );
    let out = lf_ok(&dst, &auth, &["pull", &format!("{host}/demo/two:1.0")]);
    assert!(
        out.contains(&format!("{}: Already exists", &hex_of(base)[..12])),
        "{out}"
    );
    assert_eq!(out.matches(": Pull complete").count(), 1, "{out}");
    // Each layer blob crossed the wire exactly once, whole.
    for l in a.layers.iter().chain(&b.layers) {
        let gets: Vec<Seen> = proxy
            .seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path.ends_with(&l.digest))
            .collect();
        assert_eq!(gets.len(), 1, "{}: {gets:?}", l.digest);
        assert_eq!(gets[0].body_bytes, l.blob.len() as u64);
    }

    // A re-pull moves the manifest and the config only.
    proxy.clear();
    let out = lf_ok(&dst, &auth, &["pull", &format!("{host}/demo/one:1.0")]);
    assert!(
        out.contains(&format!(
            "Status: Image is up to date for {host}/demo/one:1.0"
        )),
        "{out}"
    );
    assert_eq!(out.matches(": Already exists").count(), 2, "{out}");
    let blob_gets: Vec<Seen> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .collect();
    assert_eq!(blob_gets.len(), 1, "{blob_gets:?}");
    assert!(blob_gets[0].path.ends_with(&a.config_digest));
    assert_eq!(proxy.count("GET", "/manifests/1.0"), 1);

    // Digests survived: same manifest, config and layer blobs as the source.
    for (name, img) in [("one", &a), ("two", &b)] {
        let v = inspect(&dst, &format!("{host}/demo/{name}:1.0"));
        assert_eq!(v["ManifestDigest"], img.manifest_digest.as_str());
        assert_eq!(v["Id"], img.config_digest.as_str());
        let layers: Vec<&str> = v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["Digest"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = img.layers.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(layers, want);
    }
    ok(&dst, &["system", "check"]);

    // The pulled image mounts to the same tree as the pushed one.
    let pushed = mounted_tree(&src, "demo/two:1.0", &t.path().join("m1"));
    let pulled = mounted_tree(&dst, &format!("{host}/demo/two:1.0"), &t.path().join("m2"));
    assert_same_tree(&pushed, &pulled, "pushed vs pulled");
    assert!(pulled.entries.contains_key(Path::new("app/two")));
    assert!(pulled.entries.contains_key(Path::new("usr/lib/libbase.so")));

    // Pushing from the pulled store to another repository mounts the blobs across
    // repositories (a local tag says where they live) instead of uploading them.
    proxy.clear();
    let out = lf_ok(
        &dst,
        &auth,
        &[
            "push",
            &format!("{host}/demo/one:1.0"),
            &format!("{host}/demo/mirror:1.0"),
        ],
    );
    assert_eq!(out.matches(": Mounted from demo/").count(), 2, "{out}");
    assert_eq!(
        proxy.count("PUT", "/v2/demo/mirror/blobs/uploads/"),
        0,
        "{:?}",
        proxy.seen()
    );
    assert!(out.contains(&a.manifest_digest), "{out}");

    // Quiet pull prints the reference only; pull by digest works and keeps the digest.
    let dst2 = t.path().join("dst2");
    let out = lf_ok(
        &dst2,
        &auth,
        &[
            "pull",
            "-q",
            &format!("{host}/demo/mirror@{}", a.manifest_digest),
        ],
    );
    assert_eq!(out, format!("{host}/demo/mirror@{}\n", a.manifest_digest));
    let v = inspect(&dst2, &format!("{host}/demo/mirror@{}", a.manifest_digest));
    assert_eq!(v["Id"], a.config_digest.as_str());
}

#[test]
fn basic_auth_login_logout() {
    let t = tempfile::tempdir().unwrap();
    let auth = t.path().join("auth.json");
    let reg = Registry::start(&t.path().join("reg"), Some(("alice", "s3cret")));
    let host = reg.addr();
    let (src, _, _) = source_store(t.path());
    let target = format!("{host}/demo/one:1.0");

    let err = lf_fails(&src, &auth, &["push", "demo/one:1.0", &target]);
    assert!(
        err.contains("authentication required") && err.contains(&format!("layerfs login {host}")),
        "{err}"
    );
    ok(&t.path().join("dst"), &["images"]);
    let before = store_fingerprint(&t.path().join("dst"));
    let err = lf_fails(&t.path().join("dst"), &auth, &["pull", &target]);
    assert!(err.contains("authentication required"), "{err}");
    assert_eq!(store_fingerprint(&t.path().join("dst")), before);

    // A wrong password is refused and nothing is saved.
    let login = |pw: &str| {
        let mut c = Command::new(layerfs_bin());
        c.args(["login", "-u", "alice", "--password-stdin", &host])
            .env("REGISTRY_AUTH_FILE", &auth)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut ch = c.spawn().unwrap();
        use std::io::Write;
        ch.stdin
            .take()
            .unwrap()
            .write_all(format!("{pw}\n").as_bytes())
            .unwrap();
        ch.wait_with_output().unwrap()
    };
    let o = login("wrong");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refused") && err.contains("alice"), "{err}");
    assert!(!auth.exists());
    let o = login("s3cret");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Login Succeeded"));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth).unwrap()).unwrap();
    assert!(saved["auths"][&host]["auth"].is_string(), "{saved}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o600
    );

    lf_ok(&src, &auth, &["push", "demo/one:1.0", &target]);
    let out = lf_ok(&t.path().join("dst"), &auth, &["pull", &target]);
    assert!(out.contains("Pull complete"), "{out}");

    // Docker's config.json is read too (here through $DOCKER_CONFIG).
    let dc = t.path().join("dockercfg");
    std::fs::create_dir_all(&dc).unwrap();
    std::fs::copy(&auth, dc.join("config.json")).unwrap();
    let o = Command::new(layerfs_bin())
        .args([
            "--root",
            t.path().join("dst3").to_str().unwrap(),
            "pull",
            &target,
        ])
        .env("DOCKER_CONFIG", &dc)
        .env("HOME", t.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let out = lf_ok(&src, &auth, &["logout", &host]);
    assert!(
        out.contains(&format!("Removed login credentials for {host}")),
        "{out}"
    );

    // On a terminal (script(1) gives it one) the password is asked for and not echoed.
    let cmd = format!(
        "REGISTRY_AUTH_FILE={} {} login -u alice {host}",
        auth.display(),
        layerfs_bin().display()
    );
    let mut ch = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = ch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    // Wait for `want` in the terminal output (bounded).
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(s) = rx.recv_timeout(std::time::Duration::from_millis(100))
                && s.contains(want)
            {
                return;
            }
        }
        panic!("no \"{want}\" on the terminal");
    };
    let mut stdin = ch.stdin.take().unwrap();
    // Type only once the prompt is there (echo is off by then).
    wait_for("Password:");
    {
        use std::io::Write;
        stdin.write_all(b"s3cret\n").unwrap();
    }
    wait_for("Login Succeeded");
    drop(stdin);
    assert!(ch.wait().unwrap().success());
    let shown = reader.join().unwrap();
    assert!(
        shown.contains("Password:") && shown.contains("Login Succeeded"),
        "{shown}"
    );
    assert!(
        !shown.contains("s3cret"),
        "the password was echoed: {shown}"
    );
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth).unwrap()).unwrap();
    assert!(saved["auths"][&host]["auth"].is_string(), "{saved}");
    lf_ok(&src, &auth, &["logout", &host]);
    let err = lf_fails(&t.path().join("dst4"), &auth, &["pull", &target]);
    assert!(err.contains("authentication required"), "{err}");
    let out = lf_ok(&src, &auth, &["logout", &host]);
    assert!(out.contains("Not logged in"), "{out}");
}

#[test]
fn bearer_token_flow() {
    let t = tempfile::tempdir().unwrap();
    let auth = t.path().join("auth.json");
    let reg = Registry::start(&t.path().join("reg"), None);
    let proxy = Proxy::start_bearer(reg.port, Some(("bob", "tok-pass")));
    let host = proxy.addr();
    let (src, a, _) = source_store(t.path());
    let target = format!("{host}/team/app:2");

    let err = lf_fails(&src, &auth, &["push", "demo/one:1.0", &target]);
    assert!(err.contains("authentication required"), "{err}");
    let o = Command::new(layerfs_bin())
        .args(["login", "-u", "bob", "-p", "nope", &host])
        .env("REGISTRY_AUTH_FILE", &auth)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused"));
    let o = Command::new(layerfs_bin())
        .args(["login", "-u", "bob", "-p", "tok-pass", &host])
        .env("REGISTRY_AUTH_FILE", &auth)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    lf_ok(&src, &auth, &["push", "demo/one:1.0", &target]);
    let issued = proxy.tokens_issued();
    assert!(issued >= 1);
    let out = lf_ok(&t.path().join("dst"), &auth, &["pull", &target]);
    assert!(
        out.contains(&format!("Digest: {}", a.manifest_digest)),
        "{out}"
    );
    // One token per command, not per request.
    assert!(
        proxy.tokens_issued() <= issued + 2,
        "{}",
        proxy.tokens_issued()
    );
}

/// skopeo flags for a plain-HTTP registry. No credentials file: without one skopeo
/// looks under `/run/containers/<uid>/`, which a root podman run leaves closed to other
/// users (then skopeo fails as nobody instead of going on without credentials).
fn skopeo(args: &[&str]) -> Output {
    let o = Command::new("skopeo")
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .args(["--insecure-policy"])
        .args(args)
        .output()
        .expect("skopeo is needed: run scripts/deps");
    assert!(
        o.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn skopeo_interoperates_both_ways() {
    let t = tempfile::tempdir().unwrap();
    let auth = t.path().join("auth.json");
    let reg = Registry::start(&t.path().join("reg"), None);
    let host = reg.addr();
    let (src, a, _) = source_store(t.path());

    // layerfs pushes, skopeo copies it out to an OCI layout, which imports to the same image.
    lf_ok(
        &src,
        &auth,
        &["push", "demo/one:1.0", &format!("{host}/demo/one:1.0")],
    );
    let out_dir = t.path().join("skopeo-out");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/demo/one:1.0"),
        &format!("oci:{}:one", out_dir.display()),
    ]);
    let r2 = t.path().join("r2");
    ok(
        &r2,
        &["import", out_dir.to_str().unwrap(), "--tag", "back:1"],
    );
    let v = inspect(&r2, "back:1");
    assert_eq!(v["ManifestDigest"], a.manifest_digest.as_str());

    // skopeo pushes (converted to Docker schema 2 media types), layerfs pulls it.
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("oci:{}", t.path().join("one").display()),
        &format!("docker://{host}/sk/one:v2s2"),
    ]);
    let dst = t.path().join("dst");
    let out = lf_ok(&dst, &auth, &["pull", &format!("{host}/sk/one:v2s2")]);
    assert!(out.contains("Pull complete"), "{out}");
    let v = inspect(&dst, &format!("{host}/sk/one:v2s2"));
    assert_eq!(
        v["ManifestMediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(v["Id"], a.config_digest.as_str());
    assert_eq!(
        read_layer_file(&layer_dir(&dst, &a.layers[1].diff_id).join("app/one")),
        vec![1u8; 50_000]
    );

    // A multi-platform index: the host's platform by default, another on request.
    let other_arch = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let native = image_for(
        vec![Layer::new(
            LayerBuilder::new().file("which", b"native").build(),
            Comp::Gzip,
        )],
        host_arch(),
        None,
    );
    let foreign = image_for(
        vec![Layer::new(
            LayerBuilder::new().file("which", b"foreign").build(),
            Comp::Zstd,
        )],
        other_arch,
        None,
    );
    let multi = t.path().join("multi");
    write_oci_layout(&multi, &[(&native, None), (&foreign, None)], true);
    // skopeo copies an index when the layout names it: nest the platform list.
    let inner = std::fs::read(multi.join("index.json")).unwrap();
    let inner_digest = sha(&inner);
    std::fs::write(
        multi.join("blobs/sha256").join(hex_of(&inner_digest)),
        &inner,
    )
    .unwrap();
    let outer = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": inner_digest, "size": inner.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    std::fs::write(
        multi.join("index.json"),
        serde_json::to_vec(&outer).unwrap(),
    )
    .unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", multi.display()),
        &format!("docker://{host}/multi/arch:1"),
    ]);
    let m = t.path().join("m");
    lf_ok(&m, &auth, &["pull", &format!("{host}/multi/arch:1")]);
    assert_eq!(
        inspect(&m, &format!("{host}/multi/arch:1"))["Id"],
        native.config_digest.as_str()
    );
    lf_ok(
        &m,
        &auth,
        &[
            "pull",
            "--platform",
            &format!("linux/{other_arch}"),
            &format!("{host}/multi/arch:1"),
        ],
    );
    assert_eq!(
        inspect(&m, &format!("{host}/multi/arch:1"))["Id"],
        foreign.config_digest.as_str()
    );
    let err = lf_fails(
        &m,
        &auth,
        &[
            "pull",
            "--platform",
            "linux/s390x",
            &format!("{host}/multi/arch:1"),
        ],
    );
    assert!(
        err.contains("no image for platform linux/s390x") && err.contains(other_arch),
        "{err}"
    );
}

#[test]
fn layer_present_under_another_compression_fetches_only_the_blob() {
    let t = tempfile::tempdir().unwrap();
    let auth = t.path().join("auth.json");
    let reg = Registry::start(&t.path().join("reg"), None);
    let proxy = Proxy::start(reg.port);
    let host = proxy.addr();
    let (a, _) = sample_pair();
    // The same base tar, zstd instead of gzip, listed twice (as empty layers often are).
    let base_zstd = Layer::new(a.layers[0].tar.clone(), Comp::Zstd);
    let z = image(vec![
        base_zstd.clone(),
        a.layers[1].clone(),
        base_zstd.clone(),
    ]);
    write_oci_layout(&t.path().join("z"), &[(&z, Some("demo/z:1"))], false);
    let src = t.path().join("src");
    ok(&src, &["import", t.path().join("z").to_str().unwrap()]);
    lf_ok(
        &src,
        &auth,
        &["push", "demo/z:1", &format!("{host}/demo/z:1")],
    );

    // The destination has the gzip form of the base (and the app layer).
    write_oci_layout(&t.path().join("a"), &[(&a, Some("demo/a:1"))], false);
    let dst = t.path().join("dst");
    ok(&dst, &["import", t.path().join("a").to_str().unwrap()]);
    proxy.clear();
    let out = lf_ok(&dst, &auth, &["pull", &format!("{host}/demo/z:1")]);
    let short = &hex_of(&base_zstd.digest)[..12];
    assert_eq!(
        out.matches(&format!("{short}: Already exists (blob downloaded)"))
            .count(),
        1,
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}: Already exists",
            &hex_of(&a.layers[1].digest)[..12]
        )),
        "{out}"
    );
    assert_eq!(proxy.count("GET", &base_zstd.digest), 1);
    assert_eq!(proxy.count("GET", &a.layers[1].digest), 0);
    let v = inspect(&dst, &format!("{host}/demo/z:1"));
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3);
    ok(&dst, &["system", "check"]);
}

/// An index whose only entry names no platform (as `ctr-remote images convert` writes
/// them): pulled when its config is for this platform, refused naming the config's
/// platform when it is not.
#[test]
fn an_index_entry_without_a_platform_is_held_to_its_config() {
    if support::skip_unless_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), None);
    let addr = reg.addr();
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    for (tag, arch) in [("here", host_arch()), ("there", other)] {
        let layer = Layer::new(
            LayerBuilder::new().file("hello", b"hello\n").build(),
            Comp::Gzip,
        );
        let img = image_for(vec![layer], arch, None);
        for l in &img.layers {
            put_blob(&addr, "demo/idx", &l.blob);
        }
        put_blob(&addr, "demo/idx", &img.config);
        put_manifest(&addr, "demo/idx", &img.manifest_digest, &img.manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": img.manifest_digest,
                "size": img.manifest.len(),
            }],
        });
        put_index(&addr, "demo/idx", tag, &serde_json::to_vec(&index).unwrap());
    }
    let root = t.path().join("store");
    ok(&root, &["pull", &format!("{addr}/demo/idx:here")]);
    let err = fails(&root, &["pull", &format!("{addr}/demo/idx:there")]);
    assert!(
        err.contains("its index names none") && err.contains(&format!("linux/{other}")),
        "{err}"
    );
    assert!(!ok(&root, &["images"]).contains("there"));
}
