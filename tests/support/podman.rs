//! A private podman whose overlay storage calls a mount program: its own `storage.conf`
//! (graph root, run root, `mount_program`), tmp dir and events file under a temp dir,
//! runc, cgroupfs, no network; as root, or rootless as a user made for the test. Every
//! command runs within a time limit, so a hang is a failure. On drop its containers are
//! removed (killed first), a rootless podman's processes (its pause process holds the
//! user and mount namespaces its FUSE mounts live in) are killed, whatever is still
//! mounted under its dir is unmounted (FUSE mounts, the idmapped mounts of lower dirs,
//! the private bind mount podman puts on its overlay dir) and the dir goes.
//!
//! Also: the owners recorded in an image's top layer (as `podman image save` writes it),
//! a guard that gives the `containers` user subordinate ids for `--userns=auto`, and one
//! that makes a user with subordinate ids for rootless podman.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rustix::process::Signal;

use crate::containerd::output_within;
use crate::mounts::{mounts_below, unmount_below};
use crate::procs::{signal, wait_gone};
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
        crate::privilege::say_skipped("needs podman (scripts/deps installs it)");
    }
    !found
}

/// `sh -c` script: `$1` a dir, the rest a command. On a tmpfs at the dir (where device
/// nodes work), a `/dev/fuse` node open to every user is mounted over `/dev/fuse`; then
/// the command runs. Only for a private mount namespace.
const OPEN_FUSE: &str = r#"d=$1; shift
mount -t tmpfs -o size=64k,mode=755 fuse-node "$d" &&
mknod -m 666 "$d/fuse" c 10 229 &&
mount --bind "$d/fuse" /dev/fuse &&
exec "$@""#;

/// A podman of its own, torn down on drop.
pub struct Podman {
    pub dir: tempfile::TempDir,
    /// `mount_program` of the overlay driver; `None`: the kernel's overlayfs.
    pub mount_program: Option<PathBuf>,
    /// Rootless: the user it runs as (name, uid, gid).
    user: Option<(String, u32, u32)>,
}

impl Podman {
    /// A rootful podman.
    pub fn new(mount_program: Option<&Path>) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-podman.")
            .tempdir()
            .unwrap();
        let p = Podman {
            dir,
            mount_program: mount_program.map(Path::to_path_buf),
            user: None,
        };
        p.write_storage_conf();
        p
    }

    /// A rootless podman run by `user`, with a copy of `mount_program` (the user may not
    /// reach the build dir). Everything it writes is under `home` (its `$HOME`, tmp dir
    /// and graph root) and `run` (its `$XDG_RUNTIME_DIR` and run root), both the user's.
    /// Each command runs in a private mount namespace where `/dev/fuse` is open to users
    /// (nothing outside changes).
    pub fn rootless(user: &RootlessUser, mount_program: &Path) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-podman.")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("mount-program");
        fs::copy(mount_program, &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(dir.path().join("fuse-node")).unwrap();
        for d in ["home", "run"] {
            let d = dir.path().join(d);
            fs::create_dir(&d).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
            chown(&d, Some(user.uid), Some(user.gid)).unwrap();
        }
        let p = Podman {
            dir,
            mount_program: Some(bin),
            user: Some((user.name.clone(), user.uid, user.gid)),
        };
        p.write_storage_conf();
        p
    }

    /// Where podman may write: the dir, or a rootless podman's home.
    pub fn writable(&self, rel: &str) -> PathBuf {
        match self.user {
            Some(_) => self.path("home").join(rel),
            None => self.path(rel),
        }
    }

    fn write_storage_conf(&self) {
        let (graph, run) = match self.user {
            Some(_) => (self.path("home/storage"), self.path("run/storage")),
            None => (self.path("root"), self.path("run")),
        };
        // A rootless podman takes `rootless_storage_path`, not `graphroot`.
        let mut conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{g}\"\nrootless_storage_path = \"{g}\"\nrunroot = \"{}\"\n",
            run.display(),
            g = graph.display(),
        );
        if let Some(m) = &self.mount_program {
            conf.push_str(&format!(
                "\n[storage.options.overlay]\nmount_program = \"{}\"\n",
                m.display()
            ));
        }
        fs::write(self.path("storage.conf"), conf).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `podman` with this instance's storage, runtime and tmp dir (rootless: as its user,
    /// with nothing from this process's environment).
    pub fn command(&self) -> Command {
        let conf = self.path("storage.conf");
        let mut c = match &self.user {
            None => {
                let mut c = Command::new("podman");
                c.env("CONTAINERS_STORAGE_CONF", &conf);
                c
            }
            Some((name, _, _)) => {
                // The user's mount program opens /dev/fuse, which may be closed to users:
                // in a mount namespace of its own podman finds an open node there (its
                // pause process keeps the namespace the first command made, and later
                // commands join it).
                let mut c = Command::new("unshare");
                c.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    OPEN_FUSE,
                    "sh",
                ])
                .arg(self.path("fuse-node"))
                .arg("setpriv")
                .arg(format!("--reuid={name}"))
                .arg(format!("--regid={name}"))
                .args(["--init-groups", "env", "-i"])
                .arg(format!("HOME={}", self.path("home").display()))
                .arg(format!("XDG_RUNTIME_DIR={}", self.path("run").display()))
                .arg(format!("USER={name}"))
                .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .arg(format!("CONTAINERS_STORAGE_CONF={}", conf.display()))
                .arg("podman");
                c
            }
        };
        c.arg("--tmpdir").arg(self.writable("tmp")).args([
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
        let _ = fs::remove_file(&tar);
        let st = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of {}", rootfs.display());
        fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
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
        let out = self.writable("saved");
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

    /// Remove every container (killed first), end a rootless podman's processes, and
    /// take down every mount below the dir. Safe to call twice.
    pub fn cleanup(&mut self) {
        let limit = Duration::from_secs(60);
        let _ = output_within(self.command().args(["rm", "-a", "-f", "-t", "0"]), limit);
        let pids = self.user_processes();
        for &pid in &pids {
            signal(pid, Signal::KILL);
        }
        for &pid in &pids {
            wait_gone(pid);
        }
        unmount_below(self.dir.path());
    }

    /// Live processes of a rootless podman's user (its pause process, conmon, the mount
    /// daemons); none for a rootful one.
    fn user_processes(&self) -> Vec<u32> {
        let Some((_, uid, _)) = self.user else {
            return Vec::new();
        };
        crate::procs::processes()
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{}/status", p.pid)).is_ok_and(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|v| v.split_whitespace().next())
                        == Some(uid.to_string().as_str())
                })
            })
            .map(|p| p.pid)
            .filter(|&pid| crate::procs::pid_alive(pid))
            .collect()
    }

    /// What the teardown would leave: mounts below the dir, a rootless podman's
    /// processes (empty when it worked).
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = mounts_below(self.dir.path())
            .iter()
            .map(|m| format!("mount {}", m.display()))
            .collect();
        out.extend(self.user_processes().iter().map(|p| format!("process {p}")));
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Serializes the tests that change `/etc/subuid`, `/etc/subgid` and the users.
static SUBIDS: Mutex<()> = Mutex::new(());

fn lock_subids() -> MutexGuard<'static, ()> {
    SUBIDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// What adding lines did to one of `/etc/subuid` and `/etc/subgid`: its text before
/// (`None`: it did not exist) and the text written.
struct SubIdEdit {
    file: &'static str,
    before: Option<String>,
    wrote: String,
}

/// Append `lines` to `/etc/subuid` and `/etc/subgid`.
fn add_subid_lines(lines: &[String]) -> Vec<SubIdEdit> {
    let mut edits = Vec::new();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let before = fs::read_to_string(file).ok();
        let mut new = before.clone().unwrap_or_default();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        for l in lines {
            new.push_str(l);
            new.push('\n');
        }
        fs::write(file, &new).unwrap();
        edits.push(SubIdEdit {
            file,
            before,
            wrote: new,
        });
    }
    edits
}

/// Undo `add_subid_lines`: a file still as it was written gets its text before back,
/// byte for byte (or is removed again); one changed meanwhile by others (another test
/// binary) loses only the lines added, and what the others changed stays.
fn remove_subid_lines(lines: &[String], edits: &[SubIdEdit]) {
    for e in edits {
        let Ok(text) = fs::read_to_string(e.file) else {
            continue;
        };
        if text == e.wrote {
            let _ = match &e.before {
                Some(b) => fs::write(e.file, b),
                None => fs::remove_file(e.file),
            };
            continue;
        }
        let mut kept: Vec<&str> = text.lines().collect();
        for l in lines {
            if let Some(i) = kept.iter().rposition(|k| k == l) {
                kept.remove(i);
            }
        }
        let kept: String = kept.iter().map(|l| format!("{l}\n")).collect();
        if kept.is_empty() && e.before.is_none() {
            let _ = fs::remove_file(e.file);
        } else if kept != text {
            let _ = fs::write(e.file, kept);
        }
    }
}

/// Lines added to `/etc/subuid` and `/etc/subgid` for a test, taken out again on drop
/// (even when the test fails); the tests that change the files wait for each other.
pub struct SubIdLine {
    lines: Vec<String>,
    edits: Vec<SubIdEdit>,
    _lock: MutexGuard<'static, ()>,
}

impl SubIdLine {
    /// Add `line` (`USER:START:COUNT`) to both files.
    pub fn add(line: &str) -> SubIdLine {
        Self::add_all(&[line])
    }

    /// Add `lines`, in this order, to both files.
    pub fn add_all(lines: &[&str]) -> SubIdLine {
        let lock = lock_subids();
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let edits = add_subid_lines(&lines);
        SubIdLine {
            lines,
            edits,
            _lock: lock,
        }
    }

    /// Only wait for the other tests that change the files, and hold them off.
    pub fn none() -> MutexGuard<'static, ()> {
        lock_subids()
    }
}

impl Drop for SubIdLine {
    fn drop(&mut self) {
        remove_subid_lines(&self.lines, &self.edits);
    }
}

/// The range [`ContainersSubIds`] gives the `containers` user.
const CONTAINERS_LINE: &str = "containers:2147483647:2147483648";

fn containers_line() -> Vec<String> {
    vec![CONTAINERS_LINE.to_string()]
}

/// Gives the `containers` user (whose ranges rootful `--userns=auto` takes ids from)
/// subordinate ids from 2147483647 on, when it has none; takes them out again on drop.
pub struct ContainersSubIds {
    added: Option<Vec<SubIdEdit>>,
    _lock: MutexGuard<'static, ()>,
}

impl ContainersSubIds {
    pub fn add() -> ContainersSubIds {
        let lock = lock_subids();
        let has = |f: &str| {
            fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("containers:"))
        };
        let added = (!has("/etc/subuid") || !has("/etc/subgid"))
            .then(|| add_subid_lines(&containers_line()));
        ContainersSubIds { added, _lock: lock }
    }
}

impl Drop for ContainersSubIds {
    fn drop(&mut self) {
        if let Some(edits) = &self.added {
            remove_subid_lines(&containers_line(), edits);
        }
    }
}

/// A user made for a rootless podman test, with 65536 subordinate uids and gids of its
/// own; deleted (with its group and ranges) on drop.
pub struct RootlessUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    line: Vec<String>,
    edits: Vec<SubIdEdit>,
    _lock: MutexGuard<'static, ()>,
}

impl RootlessUser {
    pub const NAME: &str = "layerfs-rootless";

    pub fn create() -> RootlessUser {
        let lock = lock_subids();
        let name = Self::NAME;
        // One left by a run that was killed.
        let _ = Command::new("userdel").arg(name).output();
        let o = Command::new("useradd")
            .args(["--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", "--user-group"])
            .args(["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name])
            .output()
            .expect("useradd");
        assert!(o.status.success(), "useradd {name}: {}", out_str(&o));
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, name]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let line = vec![format!("{name}:1500000000:65536")];
        let edits = add_subid_lines(&line);
        RootlessUser {
            name: name.to_string(),
            uid,
            gid,
            line,
            edits,
            _lock: lock,
        }
    }
}

impl Drop for RootlessUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        remove_subid_lines(&self.line, &self.edits);
    }
}
