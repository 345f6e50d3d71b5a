//! Support for the container tests: a temp store that unmounts everything below it when
//! dropped (whatever the test did), sample images with every kind of entry, and
//! helpers to run the binary against the store.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::is_mounted;
use crate::store_common::{self, Comp, Image, Layer, LayerBuilder, image, write_oci_layout};

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

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        store_common::run(&self.root, args)
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        store_common::ok(&self.root, args)
    }

    /// Run and require failure with exactly one `layerfs: ` line; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        store_common::fails(&self.root, args)
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
        let v = self.inspect(image);
        let mut dirs: Vec<PathBuf> = v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| PathBuf::from(l["Path"].as_str().unwrap()))
            .collect();
        dirs.reverse();
        dirs
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

/// Mountpoints at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Unmount everything at or below `dir` (detaching what stays busy).
pub fn unmount_below(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ms = mounts_below(dir);
        if ms.is_empty() {
            return;
        }
        for m in ms {
            let c = CString::new(m.as_os_str().as_bytes()).unwrap();
            // SAFETY: umount/umount2 with a NUL-terminated path.
            let r = unsafe { libc::umount(c.as_ptr()) };
            if r != 0 && Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the daemon serving a container (by the container id in its command line).
pub fn daemon_pid(id: &str) -> Option<u32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let needle = format!("fsname=layerfs:{id}");
        if cmd
            .split(|b| *b == 0)
            .any(|a| String::from_utf8_lossy(a).contains(&needle))
        {
            return Some(pid);
        }
    }
    None
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Wait until a process is gone.
pub fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        // A zombie of ours? Not ours (the daemon is reparented), so just wait.
        if fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(false)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Sample images.

/// A base layer with every kind of entry: nested dirs, hard links, symlinks (harmless
/// targets), xattrs, a setuid file, a fifo, a device node, files of another owner.
pub fn base_layer() -> Layer {
    Layer::new(
        LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/os-release", b"NAME=sample\nVERSION=1\n")
            .file("etc/motd", b"welcome\n")
            .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
            .dir("usr", 0o755)
            .dir("usr/bin", 0o755)
            .file_full(
                "usr/bin/tool",
                b"#!/bin/sh\necho tool\n",
                0o755,
                0,
                0,
                1_700_000_000,
            )
            .file_full("usr/bin/suid", b"setuid\n", 0o4755, 0, 0, 1_700_000_000)
            .symlink("usr/bin/abs", "/usr/bin/tool")
            .dir("usr/lib", 0o755)
            .file("usr/lib/libx.so", &vec![42u8; 200_000])
            .hardlink("usr/lib/libx.so.1", "usr/lib/libx.so")
            .symlink("usr/lib/libx.link", "libx.so")
            .dir("srv", 0o755)
            .dir("srv/app", 0o755)
            .file("srv/app/version", b"v1\n")
            .dir("srv/app/conf", 0o750)
            .file("srv/app/conf/a.conf", b"a=1\n")
            .file("srv/app/conf/b.conf", b"b=2\n")
            .dir("var", 0o755)
            .dir("var/log", 0o755)
            .file("var/log/old.log", b"old\n")
            .dir("opq", 0o755)
            .file("opq/keep1", b"1")
            .file("opq/keep2", b"2")
            .dir("data", 0o755)
            .file_xattrs("data/tagged", b"tagged", &[("user.mime", b"text/plain")])
            .dir("dev", 0o755)
            .chardev("dev/null", 1, 3)
            .dir("run", 0o755)
            .fifo("run/fifo")
            .dir("home", 0o755)
            .dir("home/user", 0o755)
            .file_full(
                "home/user/notes",
                b"mine\n",
                0o600,
                1000,
                1000,
                1_700_000_000,
            )
            .build(),
        Comp::Gzip,
    )
}

/// A second layer: changes a file, deletes one (OCI whiteout) and adds some.
pub fn app_layer() -> Layer {
    Layer::new(
        LayerBuilder::new()
            .dir("srv", 0o755)
            .dir("srv/app", 0o755)
            .file("srv/app/version", b"v2\n")
            .dir("etc", 0o755)
            .whiteout("etc/motd")
            .file("etc/issue", b"sample 2\n")
            .build(),
        Comp::Zstd,
    )
}

/// The sample image: base + app.
pub fn sample_image() -> Image {
    image(vec![base_layer(), app_layer()])
}

/// A second image sharing the base layer.
pub fn sibling_image() -> Image {
    let other = Layer::new(
        LayerBuilder::new()
            .dir("opt", 0o755)
            .file("opt/other", b"other image\n")
            .build(),
        Comp::Gzip,
    );
    image(vec![base_layer(), other])
}

/// A layer holding the host's `/bin/sh` (dash) and the libraries it needs, so a shell
/// runs chrooted in the image.
pub fn shell_layer() -> Layer {
    let sh = fs::canonicalize("/bin/sh").unwrap();
    let out = Command::new("ldd").arg(&sh).output().unwrap();
    let mut b = LayerBuilder::new().dir("bin", 0o755).file_full(
        "bin/sh",
        &fs::read(&sh).unwrap(),
        0o755,
        0,
        0,
        1_700_000_000,
    );
    let mut dirs = std::collections::BTreeSet::new();
    let mut files = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let path = l
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let rel = p.strip_prefix("/").unwrap().to_path_buf();
            let mut d = rel.parent();
            while let Some(x) = d {
                if x.as_os_str().is_empty() {
                    break;
                }
                dirs.insert(x.to_path_buf());
                d = x.parent();
            }
            files.push((rel, fs::read(&p).unwrap()));
        }
    }
    for d in dirs {
        b = b.dir(d.to_str().unwrap(), 0o755);
    }
    for (rel, data) in files {
        b = b.file_full(rel.to_str().unwrap(), &data, 0o755, 0, 0, 1_700_000_000);
    }
    b = b.dir("root", 0o700).dir("tmp", 0o1777);
    Layer::new(b.build(), Comp::None)
}

/// Write a file, creating parents.
pub fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap();
}

/// sha256 of every file's content, type, mode, owner, link target and xattrs under a
/// dir, with mtimes: a fingerprint that changes if anything at all is written there.
pub fn fingerprint(dir: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    store_common::fingerprint(dir)
}
