//! What the registry tests share: where the test registry keeps a blob, what a push
//! printed, the requests the proxy saw for a blob, lazy pulls, empty stores, exports.

use std::path::{Path, PathBuf};
use std::process::Output;

use support::cli::*;
use support::fingerprint::*;
use support::images::hex_of;
use support::proxy::{Proxy, Seen};
use support::registry::Registry;

/// Where the registry keeps a blob (or manifest) on disk.
pub fn blob_on_registry(reg: &Registry, digest: &str) -> PathBuf {
    let h = hex_of(digest);
    reg.dir
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&h[..2])
        .join(h)
        .join("data")
}

/// The first layer's digest and size in a pushed manifest.
pub fn layer_of(reg: &Registry, manifest: &str) -> (String, u64) {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_on_registry(reg, manifest)).unwrap()).unwrap();
    let l = &m["layers"][0];
    (
        l["digest"].as_str().unwrap().to_string(),
        l["size"].as_u64().unwrap(),
    )
}

/// The manifest digest a push printed.
pub fn pushed_digest(out: &str) -> String {
    let at = out.find("digest: ").expect("push prints the digest") + 8;
    out[at..].split_whitespace().next().unwrap().to_string()
}

/// The requests for one blob through the proxy.
pub fn blob_gets(proxy: &Proxy, digest: &str) -> Vec<Seen> {
    proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(&format!("/blobs/{digest}")))
        .collect()
}

/// The requests for one blob through the proxy, and their bytes.
pub fn blob_bytes(proxy: &Proxy, digest: &str) -> (usize, u64) {
    let gets = blob_gets(proxy, digest);
    (gets.len(), gets.iter().map(|g| g.body_bytes).sum())
}

/// An empty store, opened once so that it exists.
pub fn empty_store(p: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    ok(p, &["images"]);
    store_fingerprint(p)
}

/// An image's tree, exported from `root` (a container made and removed for it).
pub fn exported(root: &Path, image: &str, to: &Path) -> Vec<u8> {
    ok(root, &["create", "--name", "x", image]);
    ok(root, &["export", "-o", to.to_str().unwrap(), "x"]);
    ok(root, &["rm", "x"]);
    std::fs::read(to).unwrap()
}

/// `pull --lazy ARGS… REF` without the background completion (the tests decide when).
pub fn lazy_pull_output(root: &Path, args: &[&str], reference: &str) -> Output {
    command(root)
        .env("LAYERFS_LAZY_BACKGROUND", "0")
        .args(["pull", "--lazy"])
        .args(args)
        .arg(reference)
        .output()
        .unwrap()
}

/// [`lazy_pull_output`] that must succeed; its output.
pub fn lazy_pull(root: &Path, reference: &str) -> String {
    succeeded(
        &["pull", "--lazy", reference],
        lazy_pull_output(root, &[], reference),
    )
}

/// How many layers of a store are lazy (not complete).
pub fn lazy_records(root: &Path) -> usize {
    std::fs::read_dir(root.join("layers/sha256"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("lazy.json").exists())
        .count()
}
