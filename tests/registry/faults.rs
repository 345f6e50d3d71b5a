//! Pulls that go wrong, against a real registry behind a fault-injecting proxy: wrong
//! bytes, a download cut short (resumed with Range), the registry stopped mid-download,
//! unknown tags and repositories, a refused connection, an unsupported media type, a slow
//! registry (progress keeps moving, `--timeout` is per wait) and a stalled one. Each
//! failure is one line, and the store is left as it was.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use support::cli::*;
use support::fingerprint::*;
use support::images::*;
use support::proxy::*;
use support::registry::*;

/// `layerfs --root ROOT ARGS…` with a credentials file of its own (none there).
fn lf(root: &Path, args: &[&str]) -> Output {
    command(root)
        .args(args)
        .env("REGISTRY_AUTH_FILE", root.with_extension("auth.json"))
        .output()
        .unwrap()
}

fn lf_ok(root: &Path, args: &[&str]) -> String {
    succeeded(args, lf(root, args))
}

fn lf_fails(root: &Path, args: &[&str]) -> String {
    one_error_line(args, lf(root, args))
}

/// Pseudo-random bytes (incompressible enough to make a big blob).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An image with one ~`size` byte gzip layer and a small one, pushed to `host` as
/// `demo/big:1`.
fn push_big(t: &Path, host: &str, size: usize) -> Image {
    let big = Layer::new(
        LayerBuilder::new()
            .dir("data", 0o755)
            .file("data/blob.bin", &noise(size, 7))
            .build(),
        Comp::Gzip,
    );
    let small = Layer::new(
        LayerBuilder::new().file("hello", b"hello\n").build(),
        Comp::Gzip,
    );
    let img = image(vec![big, small]);
    let layout = t.join("big");
    write_oci_layout(&layout, &[(&img, Some("demo/big:1"))], false);
    let src = t.join("src");
    ok(&src, &["import", layout.to_str().unwrap()]);
    lf_ok(&src, &["push", "demo/big:1", &format!("{host}/demo/big:1")]);
    img
}

#[test]
fn wrong_bytes_fail_and_store_nothing() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), None);
    let proxy = Proxy::start(reg.port);
    let img = push_big(t.path(), &proxy.addr(), 200_000);
    let dst = t.path().join("dst");
    let before = empty_store(&dst);
    proxy.set_faults(Faults {
        path_has: img.layers[0].digest.clone(),
        corrupt_at: Some(1000),
        ..Faults::default()
    });
    let err = lf_fails(&dst, &["pull", &format!("{}/demo/big:1", proxy.addr())]);
    assert!(
        err.contains("digest mismatch") || err.contains("invalid gzip"),
        "{err}"
    );
    assert!(err.contains(&img.layers[0].digest), "{err}");
    assert_eq!(store_fingerprint(&dst), before, "the store changed");
    // A wrong config is caught before any layer moves.
    proxy.set_faults(Faults {
        path_has: img.config_digest.clone(),
        corrupt_at: Some(3),
        ..Faults::default()
    });
    proxy.clear();
    let err = lf_fails(&dst, &["pull", &format!("{}/demo/big:1", proxy.addr())]);
    assert!(
        err.contains("config") && err.contains("digest mismatch"),
        "{err}"
    );
    assert_eq!(proxy.count("GET", &img.layers[0].digest), 0);
    assert_eq!(store_fingerprint(&dst), before, "the store changed");
}

#[test]
fn cut_download_resumes_with_range() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), None);
    let proxy = Proxy::start(reg.port);
    let img = push_big(t.path(), &proxy.addr(), 3_000_000);
    proxy.set_faults(Faults {
        path_has: img.layers[0].digest.clone(),
        cut_after: Some((1_000_000, 2)),
        ..Faults::default()
    });
    proxy.clear();
    let dst = t.path().join("dst");
    let out = lf_ok(&dst, &["pull", &format!("{}/demo/big:1", proxy.addr())]);
    assert_eq!(out.matches("Pull complete").count(), 2, "{out}");
    let gets: Vec<Seen> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(&img.layers[0].digest))
        .collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=1000000-"));
    assert_eq!(gets[2].range.as_deref(), Some("bytes=2000000-"));
    assert_eq!(gets[2].status, 206);
    // Nothing was fetched twice, and the result verified.
    let total: u64 = gets.iter().map(|g| g.body_bytes).sum();
    assert_eq!(total, img.layers[0].blob.len() as u64);
    ok(&dst, &["system", "check"]);
}

#[test]
fn registry_stopped_mid_download_then_retry() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("reg"), None);
    let proxy = Proxy::start(reg.port);
    let img = push_big(t.path(), &proxy.addr(), 2_000_000);
    let dst = t.path().join("dst");
    let before = empty_store(&dst);
    // Slow the big blob down so that the stop lands in the middle of it.
    proxy.set_faults(Faults {
        path_has: img.layers[0].digest.clone(),
        throttle: Some(1_000_000),
        ..Faults::default()
    });
    proxy.clear();
    let child = Command::new(layerfs_bin())
        .arg("--root")
        .arg(&dst)
        .args(["pull", "--retries", "2", "--timeout", "2"])
        .arg(format!("{}/demo/big:1", proxy.addr()))
        .env("REGISTRY_AUTH_FILE", t.path().join("none.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.body_bytes_so_far() < 300_000 {
        assert!(Instant::now() < deadline, "the download did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    reg.stop();
    proxy.set_outage(true);
    let started = Instant::now();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the pull succeeded");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&img.layers[0].digest) && err.contains("attempts"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "gave up too late"
    );
    // Nothing but leftovers in tmp/, which the next command removes.
    ok(&dst, &["images"]);
    assert_eq!(store_fingerprint(&dst), before, "the store changed");

    reg.restart();
    proxy.set_outage(false);
    proxy.set_faults(Faults::default());
    let out = lf_ok(&dst, &["pull", &format!("{}/demo/big:1", proxy.addr())]);
    assert_eq!(out.matches("Pull complete").count(), 2, "{out}");
    ok(&dst, &["system", "check"]);
}

#[test]
fn clear_messages_for_what_users_get_wrong() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), None);
    let host = reg.addr();
    push_big(t.path(), &host, 1000);
    let dst = t.path().join("dst");
    let before = empty_store(&dst);

    let err = lf_fails(&dst, &["pull", &format!("{host}/demo/big:nope")]);
    assert!(
        err.contains("tag nope not found in repository demo/big"),
        "{err}"
    );
    let err = lf_fails(&dst, &["pull", &format!("{host}/no/such")]);
    assert!(err.contains("not found in repository no/such"), "{err}");
    let err = lf_fails(
        &dst,
        &[
            "pull",
            "--retries",
            "1",
            &format!("127.0.0.1:{}/x", free_port()),
        ],
    );
    assert!(
        err.contains("cannot reach registry") && err.contains("refused"),
        "{err}"
    );
    let err = lf_fails(&dst, &["pull", "Bad/Name"]);
    assert!(err.contains("invalid reference"), "{err}");
    let err = lf_fails(&dst, &["push", "no-such-image", &format!("{host}/x:1")]);
    assert!(err.contains("no such image"), "{err}");
    assert_eq!(store_fingerprint(&dst), before);

    // A layer of a media type we cannot read: refused before anything is fetched.
    let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;
    let blob = b"not a tar".to_vec();
    put_blob(&host, "odd/one", cfg);
    put_blob(&host, "odd/one", &blob);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(cfg), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.example.strange", "digest": sha(&blob), "size": blob.len()}],
    });
    put_manifest(
        &host,
        "odd/one",
        "1",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let err = lf_fails(&dst, &["pull", &format!("{host}/odd/one:1")]);
    assert!(
        err.contains("unsupported media type application/vnd.example.strange"),
        "{err}"
    );
    assert_eq!(store_fingerprint(&dst), before);
}

#[test]
fn slow_registry_keeps_progress_moving_and_a_stalled_one_times_out() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), None);
    let proxy = Proxy::start(reg.port);
    let img = push_big(t.path(), &proxy.addr(), 1_500_000);
    // ~1.5 MB at 600 kB/s: longer than --timeout 1, but data never stops for a second.
    proxy.set_faults(Faults {
        path_has: img.layers[0].digest.clone(),
        throttle: Some(600_000),
        ..Faults::default()
    });
    let dst = t.path().join("dst");
    // On a terminal (script(1) gives it one, TERM names its kind whatever the caller's
    // environment says) the bar shows the bytes as they come.
    let cmd = format!(
        "stty cols 120 rows 40; TERM=xterm REGISTRY_AUTH_FILE=/nonexistent {} --root {} pull --timeout 1 {}/demo/big:1",
        layerfs_bin().display(),
        dst.display(),
        proxy.addr()
    );
    let started = Instant::now();
    let o = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{shown}");
    assert!(started.elapsed() > Duration::from_secs(2), "not throttled?");
    assert!(shown.contains("Pull complete"), "{shown}");
    let mut states: Vec<&str> = shown
        .split(['\r', '\n', '\x1b'])
        .filter(|l| l.contains("Downloading") && l.contains("/s"))
        .collect();
    states.dedup();
    assert!(states.len() >= 3, "progress did not move: {states:?}");

    // A registry that stops sending: each wait ends after --timeout, then the retries.
    proxy.set_faults(Faults {
        path_has: img.layers[0].digest.clone(),
        stall_after: Some(100_000),
        ..Faults::default()
    });
    let dst2 = t.path().join("dst2");
    let before = empty_store(&dst2);
    let started = Instant::now();
    let err = lf_fails(
        &dst2,
        &[
            "pull",
            "--timeout",
            "1",
            "--retries",
            "1",
            &format!("{}/demo/big:1", proxy.addr()),
        ],
    );
    assert!(
        err.contains("timed out") && err.contains("2 attempts"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(store_fingerprint(&dst2), before);
}
