//! What every engine test starts from: two images on the Debian test rootfs that share
//! its base layer, pushed to a registry on 127.0.0.1 (reached through a counting
//! proxy), and a private containerd, with `layerfs snapshotter` serving it when the
//! snapshotter under test is layerfs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use support::containerd::{Containerd, Snapshotter};
use support::images::*;
use support::mounts::MountGuard;
use support::proxy::Proxy;
use support::registry::*;
use support::shell::*;

/// The snapshotter the tests drive: `layerfs snapshotter`, which [`Engine::new`] starts
/// (`"overlayfs"` here runs the same tests against containerd's own).
pub const SNAPSHOTTER: &str = "layerfs";

/// What the snapshotter under test is compared with, tree for tree: containerd's
/// `overlayfs` for layerfs; for `overlayfs` itself, the `native` one (plain copies).
pub fn reference_snapshotter() -> &'static str {
    if SNAPSHOTTER == "overlayfs" {
        "native"
    } else {
        "overlayfs"
    }
}

/// Image A's own layer: a dir with a file and a symlink to it.
pub const A_HELLO: &str = "srv/a/hello.txt";
pub const A_HELLO_TEXT: &str = "hello from image a\n";
/// Image B's own layer: deletes this base file (a whiteout)...
pub const B_DELETES: &str = "etc/issue.net";
/// ...and adds a dir holding a file owned by 1000:1000, mode 0640.
pub const B_FILE: &str = "srv/b/dir/file";
pub const B_FILE_TEXT: &str = "in image b\n";

/// The base layer (the whole rootfs) and the two images on it.
pub struct Images {
    pub base: Layer,
    pub a: Image,
    pub b: Image,
}

impl Images {
    /// The chain ids containerd names the committed snapshots by.
    pub fn base_chain(&self) -> String {
        self.base.diff_id.clone()
    }

    pub fn a_chain(&self) -> String {
        chain_id(&[&self.base.diff_id, &self.a.layers[1].diff_id])
    }

    pub fn b_chain(&self) -> String {
        chain_id(&[&self.base.diff_id, &self.b.layers[1].diff_id])
    }

    /// Built once per test process (tarring and compressing the rootfs takes seconds).
    pub fn get() -> &'static Images {
        static IMAGES: OnceLock<Images> = OnceLock::new();
        IMAGES.get_or_init(|| {
            let base = Layer::new(rootfs_tar(), Comp::Gzip);
            let a_top = LayerBuilder::new()
                .dir("srv/a", 0o755)
                .file(A_HELLO, A_HELLO_TEXT.as_bytes())
                .symlink("srv/a/link", "hello.txt")
                .build();
            let b_top = LayerBuilder::new()
                .whiteout(B_DELETES)
                .dir("srv/b", 0o755)
                .dir("srv/b/dir", 0o750)
                .file_full(B_FILE, B_FILE_TEXT.as_bytes(), 0o640, 1000, 1000, MTIME)
                .build();
            Images {
                a: image(vec![base.clone(), Layer::new(a_top, Comp::Gzip)]),
                b: image(vec![base.clone(), Layer::new(b_top, Comp::Gzip)]),
                base,
            }
        })
    }
}

/// The OCI chain id of a stack of diff ids, bottom first.
pub fn chain_id(diff_ids: &[&str]) -> String {
    let mut chain = diff_ids[0].to_string();
    for d in &diff_ids[1..] {
        chain = sha(format!("{chain} {d}").as_bytes());
    }
    chain
}

/// The Debian rootfs as one layer tar: every owner, mode, xattr, hard link and device
/// node as it is on disk, in name order.
fn rootfs_tar() -> Vec<u8> {
    let out = Command::new("tar")
        .args([
            "--sort=name",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-C",
        ])
        .arg(support::debian::rootfs())
        .args(["-cf", "-", "."])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "tar of the rootfs failed");
    out.stdout
}

/// One committed or active snapshot as `ctr snapshots ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapRow {
    pub key: String,
    pub parent: String,
    pub kind: String,
}

/// A registry holding images `a:1` and `b:1` behind a counting proxy, a containerd and
/// (for layerfs) the snapshotter; all torn down on drop, containerd first.
pub struct Engine {
    pub ctrd: Containerd,
    pub snapshotter: Option<Snapshotter>,
    pub proxy: Proxy,
    /// Kept for its drop: the proxy relays to it.
    _registry: Registry,
    pub dir: tempfile::TempDir,
}

impl Engine {
    /// A fresh world for [`SNAPSHOTTER`].
    pub fn new() -> Engine {
        Self::with(SNAPSHOTTER == "layerfs", None)
    }

    /// A fresh world; with `layerfs`, `layerfs snapshotter` runs (with `--mount-type`
    /// when given) on a store of its own.
    pub fn with(layerfs: bool, mount_type: Option<&str>) -> Engine {
        let imgs = Images::get();
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start(&dir.path().join("registry"), None);
        for (repo, img) in [("a", &imgs.a), ("b", &imgs.b)] {
            for l in &img.layers {
                put_blob(&registry.addr(), repo, &l.blob);
            }
            put_blob(&registry.addr(), repo, &img.config);
            put_manifest(&registry.addr(), repo, "1", &img.manifest);
        }
        let proxy = Proxy::start(registry.port);
        let store = dir.path().join("store");
        let snapshotter = layerfs
            .then(|| Snapshotter::start(&dir.path().join("snapshotter"), &store, mount_type));
        let socket = snapshotter
            .as_ref()
            .map_or(dir.path().join("no-snapshotter.sock"), |s| s.socket.clone());
        let ctrd = Containerd::start(&dir.path().join("containerd"), &socket);
        Engine {
            ctrd,
            snapshotter,
            proxy,
            _registry: registry,
            dir,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The layerfs store the snapshotter keeps its snapshots in.
    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// `127.0.0.1:PORT/NAME:1`, through the proxy.
    pub fn image_ref(&self, name: &str) -> String {
        format!("{}/{name}:1", self.proxy.addr())
    }

    /// Pull image `name` (`a` or `b`) and unpack it for snapshotter `s`.
    pub fn pull(&self, s: &str, name: &str) {
        self.ctrd.ok(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            s,
            &self.image_ref(name),
        ]);
    }

    /// `ctr snapshots --snapshotter S ARGS…`, which must succeed.
    pub fn snap_ok(&self, s: &str, args: &[&str]) -> String {
        let mut all = vec!["snapshots", "--snapshotter", s];
        all.extend_from_slice(args);
        self.ctrd.ok(&all)
    }

    /// `ctr snapshots --snapshotter S ARGS…`, which must fail: its one error line.
    pub fn snap_fails(&self, s: &str, args: &[&str]) -> String {
        let mut all = vec!["snapshots", "--snapshotter", s];
        all.extend_from_slice(args);
        self.ctrd.fails(&all)
    }

    /// `ctr snapshots view KEY PARENT`, kept from containerd's garbage collector:
    /// `ctr snapshots prepare` and `commit` label what they make `containerd.io/gc.root`,
    /// `view` does not, so a view nothing else holds goes with the next collection
    /// (one runs soon after any removal). Labelled at once; made again if it went
    /// before that.
    pub fn view(&self, s: &str, key: &str, parent: &str) {
        for _ in 0..5 {
            self.snap_ok(s, &["view", key, parent]);
            let mut args = vec!["snapshots", "--snapshotter", s];
            args.extend(["label", key, "containerd.io/gc.root=test"]);
            if self.ctrd.ctr(&args).status.success() {
                return;
            }
        }
        panic!("view {key} of {parent}: collected each time before it was labelled");
    }

    /// Wait until containerd reaches snapshotter S again (after a restart of it):
    /// containerd's gRPC connection to a proxy plugin reconnects with backoff, and
    /// calls fail as `unavailable` meanwhile. The probe is a `Prepare` (of a snapshot
    /// removed at once): a listing would not do, containerd answers an empty one from
    /// its own records.
    pub fn wait_for_snapshotter(&self, s: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let o = self
                .ctrd
                .ctr(&["snapshots", "--snapshotter", s, "prepare", "reach-probe"]);
            if o.status.success() {
                self.snap_ok(s, &["rm", "reach-probe"]);
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "containerd does not reach snapshotter {s} again: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// `ctr snapshots ls` as printed.
    pub fn snapshots_listing(&self, s: &str) -> String {
        self.snap_ok(s, &["ls"])
    }

    /// `ctr snapshots ls`, parsed.
    pub fn snapshots(&self, s: &str) -> Vec<SnapRow> {
        let out = self.snapshots_listing(s);
        let mut lines = out.lines();
        let head = lines.next().unwrap_or_default();
        assert!(head.starts_with("KEY"), "ctr snapshots ls: {out}");
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [key, kind] => SnapRow {
                        key: key.to_string(),
                        parent: String::new(),
                        kind: kind.to_string(),
                    },
                    [key, parent, kind] => SnapRow {
                        key: key.to_string(),
                        parent: parent.to_string(),
                        kind: kind.to_string(),
                    },
                    _ => panic!("ctr snapshots ls: odd line {l:?}"),
                }
            })
            .collect()
    }

    /// Mount snapshot `key` of `s` on `target` the way `ctr snapshots mounts` says.
    pub fn mount_snapshot(&self, s: &str, key: &str, target: &Path) -> MountGuard {
        fs::create_dir_all(target).unwrap();
        let cmds = self.snap_ok(s, &["mounts", target.to_str().unwrap(), key]);
        assert!(cmds.starts_with("mount "), "ctr snapshots mounts: {cmds}");
        let guard = MountGuard::new(target);
        shell(&cmds);
        guard
    }

    /// The arguments of `ctr run` that every container here gets: the snapshotter and
    /// runc's state under the containerd's dir.
    pub fn run_args<'a>(&'a self, s: &'a str, runc_root: &'a str) -> Vec<&'a str> {
        vec!["run", "--runc-root", runc_root, "--snapshotter", s]
    }

    /// `ctr run --rm … IMAGE ID sh -c SCRIPT`; its output.
    pub fn run_sh(&self, s: &str, image: &str, id: &str, script: &str) -> String {
        let runc_root = self.ctrd.runc_root();
        let image = self.image_ref(image);
        let mut args = self.run_args(s, runc_root.to_str().unwrap());
        args.extend(["--rm", &image, id, "sh", "-c", script]);
        self.ctrd.ok(&args)
    }

    /// Start `sleep 600` in a detached container (`ctr run -d`, no I/O).
    pub fn run_detached(&self, s: &str, image: &str, id: &str) {
        let runc_root = self.ctrd.runc_root();
        let image = self.image_ref(image);
        let mut args = self.run_args(s, runc_root.to_str().unwrap());
        args.extend(["-d", "--null-io", &image, id, "sleep", "600"]);
        self.ctrd.ok(&args);
    }

    /// `ctr tasks exec` in a running container; its output.
    pub fn exec(&self, id: &str, exec_id: &str, cmd: &[&str]) -> String {
        let mut args = vec!["tasks", "exec", "--exec-id", exec_id, id];
        args.extend_from_slice(cmd);
        self.ctrd.ok(&args)
    }

    /// Kill a container's task and remove task and container (and its snapshot).
    pub fn remove_container(&self, id: &str) {
        self.ctrd.ok(&["tasks", "delete", "--force", id]);
        self.ctrd.ok(&["containers", "rm", id]);
    }
}

/// A tree as `find` sees it, path -> "type mode owner size-or-target [content hash]":
/// what must be equal between two snapshotters. Directory sizes are left out (they
/// are whatever the backing filesystem says).
pub fn tree_listing(root: &Path) -> BTreeMap<String, String> {
    let meta = shell(&format!(
        "cd {} && find . -printf '%P\\t%y %m %U:%G %s %l\\n'",
        q(root)
    ));
    let sums = shell(&format!(
        "cd {} && find . -type f -print0 | xargs -0r md5sum",
        q(root)
    ));
    let mut sum_of: BTreeMap<String, String> = BTreeMap::new();
    for l in sums.lines() {
        let (sum, path) = l.split_once("  ").unwrap();
        sum_of.insert(path.trim_start_matches("./").to_string(), sum.to_string());
    }
    meta.lines()
        .map(|l| {
            let (path, rest) = l.split_once('\t').unwrap();
            let f: Vec<&str> = rest.splitn(4, ' ').collect();
            let size = if f[0] == "d" { "-" } else { f[3] };
            let mut v = format!("{} {} {} {size}", f[0], f[1], f[2]);
            if let Some(sum) = sum_of.get(path) {
                v.push(' ');
                v.push_str(sum);
            }
            (path.to_string(), v)
        })
        .collect()
}

/// Panic with the first differences when two listings differ.
pub fn assert_same_listing(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, what: &str) {
    let mut diffs = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => diffs.push(format!("only in the first: {k} {v}")),
            Some(w) if w != v => diffs.push(format!("{k}: {v} vs {w}")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            diffs.push(format!("only in the second: {k} {v}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(20)]
    );
}
