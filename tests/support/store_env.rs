//! A temporary store for the tests that drive `layerfs` as users do (containers,
//! commits, saves): everything mounted below it is unmounted when it is dropped,
//! whatever the test did.

use std::path::PathBuf;
use std::process::Output;

use crate::cli;
use crate::images::{Image, write_oci_layout};
use crate::mounts::{is_mounted, unmount_below};
use crate::samples::sample_image;

/// A temp dir holding a store (`root`) and anything else a test makes; every mount
/// below it is unmounted when this is dropped.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-ct.")
            .tempdir()
            .unwrap();
        let root = dir.path().join("store");
        Env { dir, root }
    }

    /// A store holding the sample image (`samples::sample_image`) as `sample:1`.
    pub fn with_sample() -> Env {
        let env = Env::new();
        env.import(&sample_image(), "sample:1");
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        cli::run(&self.root, args)
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        cli::ok(&self.root, args)
    }

    /// Run and require failure with exactly one `layerfs: ` line; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        cli::fails(&self.root, args)
    }

    /// `ok` and the single line it printed.
    pub fn line(&self, args: &[&str]) -> String {
        let out = self.ok(args);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "layerfs {args:?}: {out}");
        lines[0].to_string()
    }

    /// Create a container; returns its id.
    pub fn create(&self, image: &str, name: &str) -> String {
        let id = self.line(&["create", image, "--name", name]);
        assert_eq!(id.len(), 64, "{id}");
        id
    }

    /// Create a container and mount it; returns the mountpoint.
    pub fn mounted(&self, image: &str, name: &str) -> PathBuf {
        self.create(image, name);
        self.mount(name)
    }

    /// Mount a container; returns the mountpoint.
    pub fn mount(&self, c: &str) -> PathBuf {
        let p = PathBuf::from(self.line(&["mount", c]));
        assert!(is_mounted(&p), "{} not mounted", p.display());
        p
    }

    /// Import an OCI layout of one image under `tag`.
    pub fn import(&self, img: &Image, tag: &str) {
        let src = self.path(&format!("src-{}", tag.replace([':', '/'], "_")));
        write_oci_layout(&src, &[(img, Some(tag))], false);
        self.ok(&["import", src.to_str().unwrap()]);
    }

    /// `layerfs inspect IMAGE` as JSON.
    pub fn inspect(&self, image: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", image])).unwrap();
        v[0].clone()
    }

    /// The extracted layer dirs of an image, top first (as `lowerdir=` wants them).
    pub fn layer_dirs(&self, image: &str) -> Vec<PathBuf> {
        layer_dirs_of(&self.inspect(image))
    }

    /// `ps -a --format json`.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "-a", "--format", "json"])).unwrap()
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        unmount_below(self.dir.path());
    }
}

/// The extracted layer dirs of an image as `layerfs inspect` shows it (one element of
/// its array), top first (as `lowerdir=` wants them).
pub fn layer_dirs_of(inspect: &serde_json::Value) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["Path"].as_str().unwrap()))
        .collect();
    dirs.reverse();
    dirs
}

/// The bytes of a file in a store layer dir: a metacopy stub is followed into the
/// store's file objects (`ROOT/objects`, found above the layer dir), a plain file read.
pub fn read_layer_file(path: &std::path::Path) -> Vec<u8> {
    let x = crate::xattr::list_xattrs(path);
    let redirect = ["trusted.overlay.redirect", "user.overlay.redirect"]
        .iter()
        .find_map(|n| x.get(std::ffi::OsStr::new(n)).cloned());
    let Some(r) = redirect else {
        return std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    };
    let rel = String::from_utf8(r).unwrap();
    let root = path
        .ancestors()
        .find(|a| a.join("objects").is_dir() && a.join("layers").is_dir())
        .unwrap_or_else(|| panic!("{}: no store above it", path.display()));
    let obj = root.join("objects").join(rel.trim_start_matches('/'));
    std::fs::read(&obj)
        .unwrap_or_else(|e| panic!("{} (object {}): {e}", path.display(), obj.display()))
}
