//! A private podman (rootful) whose overlay storage calls a mount program: its own
//! `storage.conf` (graph root, run root, `mount_program`), tmp dir and events file under
//! a temp dir, runc, cgroupfs, no network. Every command runs within a time limit, so a
//! hang is a failure. On drop its containers are removed (killed first), whatever is
//! still mounted under its dir is unmounted (FUSE mounts, the idmapped mounts of lower
//! dirs, the private bind mount podman puts on its overlay dir) and the dir goes.
//!
//! Also: the owners recorded in an image's top layer (as `podman image save` writes it),
//! and a guard that gives the `containers` user subordinate ids for `--userns=auto`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::containerd::output_within;
use crate::mounts::{mounts_below, unmount_below};
use crate::shell::out_str;

/// The most one podman command may take (an import of the Debian rootfs takes seconds).
pub const PODMAN_LIMIT: Duration = Duration::from_secs(240);

/// `true` (with the reason printed) when a podman test must skip: not root, or no podman.
pub fn skip_without_podman() -> bool {
    if crate::skip_unless_root() {
        return true;
    }
    let found = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let thread = std::thread::current();
        eprintln!(
            "skipped: {} needs podman (scripts/deps installs it)",
            thread.name().unwrap_or("a test")
        );
    }
    !found
}

/// A podman of its own, torn down on drop.
pub struct Podman {
    pub dir: tempfile::TempDir,
    /// `mount_program` of the overlay driver; `None`: the kernel's overlayfs.
    pub mount_program: Option<PathBuf>,
}

impl Podman {
    pub fn new(mount_program: Option<&Path>) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-podman.")
            .tempdir()
            .unwrap();
        let p = Podman {
            dir,
            mount_program: mount_program.map(Path::to_path_buf),
        };
        let mut conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            p.path("root").display(),
            p.path("run").display()
        );
        if let Some(m) = &p.mount_program {
            conf.push_str(&format!(
                "\n[storage.options.overlay]\nmount_program = \"{}\"\n",
                m.display()
            ));
        }
        fs::write(p.path("storage.conf"), conf).unwrap();
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `podman` with this instance's storage, runtime and tmp dir.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .arg("--tmpdir")
            .arg(self.path("tmp"))
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        c
    }

    /// Run podman with `args` within [`PODMAN_LIMIT`]; a hang fails the test.
    pub fn run(&self, args: &[&str]) -> Output {
        output_within(self.command().args(args), PODMAN_LIMIT)
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "podman {args:?}: {}", out_str(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Import a root filesystem directory as image `name`.
    pub fn import_dir(&self, rootfs: &Path, name: &str) {
        let tar = self.path("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of {}", rootfs.display());
        self.ok(&["import", tar.to_str().unwrap(), name]);
        let _ = fs::remove_file(&tar);
    }

    /// The arguments `podman run`/`create` need before the image: no network, and
    /// resource limits at most the ones this process has (podman's defaults are higher,
    /// which a root without CAP_SYS_RESOURCE cannot set).
    pub fn run_args(&self) -> Vec<String> {
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(4096)
            .min(4096);
        vec![
            "--network".into(),
            "none".into(),
            "--ulimit".into(),
            format!("nofile={nofile}:{nofile}"),
            "--ulimit".into(),
            "nproc=4096:4096".into(),
        ]
    }

    /// `podman run [--rm] EXTRA… IMAGE sh -c SCRIPT`; returns its output (stdout then
    /// stderr) and whether it succeeded.
    pub fn sh(&self, extra: &[&str], image: &str, script: &str) -> (bool, String) {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(self.run_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([image.into(), "sh".into(), "-c".into(), script.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = self.run(&args);
        let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), out)
    }

    /// The upper (diff) dir of a container.
    pub fn upper_dir(&self, container: &str) -> PathBuf {
        let out = self.ok(&[
            "inspect",
            "--format",
            "{{.GraphDriver.Data.UpperDir}}",
            container,
        ]);
        PathBuf::from(out.trim())
    }

    /// `uid:gid` of every entry of an image's top layer, by path (no leading `./`, no
    /// trailing `/`), read from `podman image save --format oci-dir --uncompressed`.
    pub fn top_layer_owners(&self, image: &str) -> BTreeMap<String, (u64, u64)> {
        let out = self.path("saved");
        let _ = fs::remove_dir_all(&out);
        self.ok(&[
            "image",
            "save",
            "--format",
            "oci-dir",
            "--uncompressed",
            "-o",
            out.to_str().unwrap(),
            image,
        ]);
        let blob = |digest: &str| {
            out.join("blobs/sha256")
                .join(digest.strip_prefix("sha256:").unwrap())
        };
        let json = |p: PathBuf| -> serde_json::Value {
            serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
        };
        let index = json(out.join("index.json"));
        let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
        let top = manifest["layers"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        let mut data = Vec::new();
        fs::File::open(blob(top["digest"].as_str().unwrap()))
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        let mut owners = BTreeMap::new();
        for e in tar::Archive::new(&data[..]).entries().unwrap() {
            let e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            let h = e.header();
            owners.insert(path, (h.uid().unwrap(), h.gid().unwrap()));
        }
        let _ = fs::remove_dir_all(&out);
        owners
    }

    /// Remove every container (killed first) and take down every mount below the dir.
    /// Safe to call twice.
    pub fn cleanup(&mut self) {
        let limit = Duration::from_secs(60);
        let _ = output_within(self.command().args(["rm", "-a", "-f", "-t", "0"]), limit);
        unmount_below(self.dir.path());
    }

    /// What the teardown would leave: mounts below the dir (empty when it worked).
    pub fn leftovers(&self) -> Vec<String> {
        mounts_below(self.dir.path())
            .iter()
            .map(|m| format!("mount {}", m.display()))
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Serializes the tests that change `/etc/subuid` and `/etc/subgid`.
static SUBIDS: Mutex<()> = Mutex::new(());

/// Gives the `containers` user (whose ranges rootful `--userns=auto` takes ids from)
/// subordinate ids from 2147483647 on, when it has none; puts both files back as they
/// were on drop.
pub struct ContainersSubIds {
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
    _lock: MutexGuard<'static, ()>,
}

impl ContainersSubIds {
    pub fn add() -> ContainersSubIds {
        let lock = SUBIDS.lock().unwrap_or_else(|e| e.into_inner());
        let mut saved = Vec::new();
        for f in ["/etc/subuid", "/etc/subgid"] {
            let old = fs::read(f).ok();
            let text = String::from_utf8_lossy(old.as_deref().unwrap_or_default()).into_owned();
            saved.push((PathBuf::from(f), old));
            if !text.lines().any(|l| l.starts_with("containers:")) {
                let mut new = text.clone();
                if !new.is_empty() && !new.ends_with('\n') {
                    new.push('\n');
                }
                new.push_str("containers:2147483647:2147483648\n");
                fs::write(f, new).unwrap();
            }
        }
        ContainersSubIds { saved, _lock: lock }
    }
}

impl Drop for ContainersSubIds {
    fn drop(&mut self) {
        for (f, old) in &self.saved {
            match old {
                Some(b) => {
                    let _ = fs::write(f, b);
                }
                None => {
                    let _ = fs::remove_file(f);
                }
            }
        }
    }
}
