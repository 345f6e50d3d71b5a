//! A private containerd for the engine tests, and the `layerfs snapshotter` that serves
//! it as a proxy snapshotter.
//!
//! The containerd has its own config, root, state, sockets and `opt` dir under a temp
//! dir, the CRI plugin off, and a proxy snapshotter plugin named `layerfs` on a socket
//! the test chooses; each one uses a namespace of its own, so the cgroups runc makes for
//! its containers (`/<namespace>/<id>` in every hierarchy) are its own too. `ctr` runs
//! against it with a time limit, so a hang is a failure. On drop: its tasks and
//! containers are removed through containerd while it still answers, then the daemon,
//! the shims whose `-address` is its socket and every process in its cgroups are
//! killed, whatever is still mounted under its dir is unmounted, and its cgroups, shim
//! sockets and runc state go.
//!
//! The snapshotter runs as a child (`layerfs --root STORE snapshotter --address SOCKET
//! --mount-dir DIR`); a test can `kill -9` it and start it again on the same socket and
//! store. On drop it is stopped, every mount under its mount dir is detached, and the
//! FUSE daemons that served them are gone.

use std::fs;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use sha2::{Digest as _, Sha256};

use crate::cli::{command, layerfs_bin};
use crate::mounts::{mounts_below, umount, unmount_below};
use crate::procs::{pid_alive, processes, signal, wait_gone};
use crate::shell::out_str;

/// The most any one `ctr` command may take (a pull of the Debian-based test images
/// takes seconds).
pub const CTR_LIMIT: Duration = Duration::from_secs(180);

/// Run a command with its output captured; past `limit` it is killed and the result
/// is `Err` with what it printed so far.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{cmd:?} still running after {limit:?}: killed; stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// A running containerd of its own, torn down on drop.
pub struct Containerd {
    /// Everything it writes is under this dir (the caller's; left in place).
    pub dir: PathBuf,
    /// Its gRPC socket (`ctr --address`).
    pub address: PathBuf,
    /// The namespace every `ctr` command of this guard uses (unique to the guard).
    pub namespace: String,
    /// The socket of the proxy snapshotter plugin `layerfs` (nothing need listen there).
    pub proxy_socket: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Start one with everything under `dir`, the `layerfs` proxy snapshotter on
    /// `proxy_socket`, and wait until it answers `ctr version`.
    pub fn start(dir: &Path, proxy_socket: &Path) -> Containerd {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        fs::create_dir_all(dir).unwrap();
        let namespace = format!(
            "layerfs-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            address: dir.join("containerd.sock"),
            namespace,
            proxy_socket: proxy_socket.to_path_buf(),
            child: None,
        };
        fs::write(c.config_path(), c.config()).unwrap();
        c.spawn();
        c
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The runc state dir for its containers (`ctr run --runc-root`): runc's default,
    /// `/run/containerd/runc`, is shared by every containerd on the machine.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// The dir of one of containerd's built-in snapshotters (`overlayfs`, `native`).
    pub fn snapshotter_dir(&self, name: &str) -> PathBuf {
        self.root()
            .join(format!("io.containerd.snapshotter.v1.{name}"))
    }

    /// The version 2 config: everything under `dir`. Off: the CRI plugin (it wants CNI
    /// and a sandbox image) and the snapshotters that cannot work here (aufs, btrfs and
    /// zfs need their filesystems, devmapper a thin pool) and would only log errors.
    fn config(&self) -> String {
        let d = &self.dir;
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[proxy_plugins.layerfs]
  type = "snapshot"
  address = "{proxy}"
"#,
            root = self.root().display(),
            state = self.state().display(),
            sock = self.address.display(),
            opt = d.join("opt").display(),
            proxy = self.proxy_socket.display(),
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd is needed: run scripts/deps");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answered = output_within(self.bare_ctr().arg("version"), Duration::from_secs(10))
                .is_ok_and(|o| o.status.success());
            if answered {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited with {st} at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` the daemon (its shims and containers live on) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill it and start it again with the same config.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `ctr --address SOCKET` without a namespace, and nothing from the caller's
    /// `CONTAINERD_*` variables.
    fn bare_ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        for v in [
            "CONTAINERD_ADDRESS",
            "CONTAINERD_NAMESPACE",
            "CONTAINERD_SNAPSHOTTER",
        ] {
            c.env_remove(v);
        }
        c.arg("--address").arg(&self.address);
        c
    }

    /// `ctr --address SOCKET --namespace NS`.
    pub fn ctr_command(&self) -> Command {
        let mut c = self.bare_ctr();
        c.arg("--namespace").arg(&self.namespace);
        c
    }

    /// Run `ctr ARGS…` (within [`CTR_LIMIT`]; a hang panics).
    pub fn ctr(&self, args: &[&str]) -> Output {
        output_within(self.ctr_command().args(args), CTR_LIMIT)
            .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", self.log()))
    }

    /// Run `ctr ARGS…` and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(o.status.success(), "ctr {args:?}: {}", out_str(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Run `ctr ARGS…` and require that it fails with one `ctr: ` line on stderr
    /// and nothing on stdout; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            !o.status.success(),
            "ctr {args:?} succeeded: {}",
            out_str(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("ctr: ") && o.stdout.is_empty(),
            "ctr {args:?}: expected one `ctr: ` error line: {}",
            out_str(&o)
        );
        lines[0].to_string()
    }

    /// Remove every task and container of its namespace through containerd, each
    /// call within a short limit (best effort: it may not answer).
    fn remove_containers(&self) {
        let limit = Duration::from_secs(15);
        let list = |args: &[&str]| -> Vec<String> {
            output_within(self.ctr_command().args(args), limit)
                .ok()
                .filter(|o| o.status.success())
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        for t in list(&["tasks", "ls", "-q"]) {
            let _ = output_within(
                self.ctr_command()
                    .args(["tasks", "kill", "--all", "--signal", "SIGKILL"])
                    .arg(&t),
                limit,
            );
            let _ = output_within(
                self.ctr_command()
                    .args(["tasks", "delete", "--force"])
                    .arg(&t),
                limit,
            );
        }
        for c in list(&["containers", "ls", "-q"]) {
            let _ = output_within(self.ctr_command().args(["containers", "rm"]).arg(&c), limit);
        }
    }

    /// The cgroup dirs runc made for this namespace: `/<namespace>` in each v1
    /// hierarchy, or in the v2 tree.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let base = Path::new("/sys/fs/cgroup");
        let mut out = vec![base.join(&self.namespace)];
        if let Ok(rd) = fs::read_dir(base) {
            for e in rd.flatten() {
                out.push(e.path().join(&self.namespace));
            }
        }
        out.retain(|p| p.is_dir());
        out
    }

    /// Every process in this namespace's cgroups (the containers' processes).
    pub fn container_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let mut stack = self.cgroup_dirs();
        while let Some(d) = stack.pop() {
            if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(rd) = fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The shims serving this containerd (`containerd-shim-* … -address SOCKET`), with
    /// the namespace and id from their command lines.
    pub fn shims(&self) -> Vec<(u32, String, String)> {
        let want = self.address.as_os_str().as_encoded_bytes();
        processes()
            .into_iter()
            .filter_map(|p| {
                let arg = |name: &str| {
                    p.args
                        .iter()
                        .position(|a| a == name.as_bytes())
                        .and_then(|i| p.args.get(i + 1))
                };
                let shim = p
                    .args
                    .first()
                    .is_some_and(|a| String::from_utf8_lossy(a).contains("containerd-shim"));
                (shim && arg("-address").is_some_and(|a| a == want) && pid_alive(p.pid)).then(
                    || {
                        let s = |n: &str| {
                            arg(n).map_or(String::new(), |v| String::from_utf8_lossy(v).into())
                        };
                        (p.pid, s("-namespace"), s("-id"))
                    },
                )
            })
            .collect()
    }

    /// Tear everything down (see the module doc). Safe to call twice.
    pub fn cleanup(&mut self) {
        if self.child.is_some() {
            self.remove_containers();
        }
        self.kill9();
        let shims = self.shims();
        let victims: Vec<u32> = self
            .container_pids()
            .into_iter()
            .chain(shims.iter().map(|s| s.0))
            .collect();
        for &pid in &victims {
            signal(pid, Signal::KILL);
        }
        for &pid in &victims {
            wait_gone(pid);
        }
        // A shim's socket is /run/containerd/s/<sha256 of "ADDRESS/NAMESPACE/ID">; a
        // killed shim leaves it behind.
        for (_, ns, id) in &shims {
            let key = format!("{}/{ns}/{id}", self.address.display());
            let hash = hex::encode(Sha256::digest(key.as_bytes()));
            let _ = fs::remove_file(Path::new("/run/containerd/s").join(hash));
        }
        unmount_below(&self.dir);
        // Children first: a cgroup goes with rmdir once it has no processes and no
        // child cgroups.
        for top in self.cgroup_dirs() {
            let mut dirs = vec![top.clone()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(rd) = fs::read_dir(&dirs[i]) {
                    dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
                i += 1;
            }
            for d in dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
        let _ = fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
    }

    /// What the teardown would have left: processes, mounts, cgroups (empty when it
    /// worked). For tests of the guard itself.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if self.child.is_some() {
            out.push("containerd".into());
        }
        out.extend(self.shims().iter().map(|s| format!("shim {}", s.0)));
        out.extend(self.container_pids().iter().map(|p| format!("process {p}")));
        out.extend(
            mounts_below(&self.dir)
                .iter()
                .map(|m| format!("mount {}", m.display())),
        );
        out.extend(
            self.cgroup_dirs()
                .iter()
                .map(|c| format!("cgroup {}", c.display())),
        );
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `layerfs snapshotter` as a child process, serving containerd's snapshots API on a
/// unix socket.
pub struct Snapshotter {
    pub store: PathBuf,
    pub socket: PathBuf,
    pub mount_dir: PathBuf,
    /// `--mount-type` (`fuse` or `overlay`); the snapshotter's default when `None`.
    pub mount_type: Option<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Snapshotter {
    /// Start `layerfs --root STORE snapshotter --address DIR/snapshotter.sock
    /// --mount-dir DIR/mounts` and wait until its socket accepts connections.
    pub fn start(dir: &Path, store: &Path, mount_type: Option<&str>) -> Snapshotter {
        fs::create_dir_all(dir).unwrap();
        let mut s = Snapshotter {
            store: store.to_path_buf(),
            socket: dir.join("snapshotter.sock"),
            mount_dir: dir.join("mounts"),
            mount_type: mount_type.map(String::from),
            log: dir.join("snapshotter.log"),
            child: None,
        };
        s.spawn();
        s
    }

    /// Its stdout and stderr so far, every run appended.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = command(&self.store);
        cmd.arg("snapshotter")
            .arg("--address")
            .arg(&self.socket)
            .arg("--mount-dir")
            .arg(&self.mount_dir);
        if let Some(t) = &self.mount_type {
            cmd.args(["--mount-type", t]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn layerfs snapshotter");
        self.child = Some(child);
        // A socket left by a killed one refuses connections: wait for one that accepts.
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!(
                    "layerfs snapshotter exited with {st} at start:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "layerfs snapshotter did not listen on {} within 30 s:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` it and reap it; its snapshots' mounts stay (their daemons are apart).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and its exit status (killed with -9 after 10 s: `None`).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        signal(c.id(), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start it again on the same socket, store and mount dir (killed with -9 first if
    /// it still runs).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Live layerfs processes (this build's binary) whose command line names a path
    /// under the mount dir: the daemons of its snapshots' mounts.
    pub fn mount_daemons(&self) -> Vec<u32> {
        let dir = self.mount_dir.as_os_str().as_encoded_bytes();
        let bin = layerfs_bin();
        processes()
            .into_iter()
            .filter(|p| {
                Some(p.pid) != self.pid()
                    && p.args
                        .iter()
                        .any(|a| a.windows(dir.len()).any(|w| w == dir))
                    && fs::read_link(format!("/proc/{}/exe", p.pid)).is_ok_and(|x| x == bin)
                    && pid_alive(p.pid)
            })
            .map(|p| p.pid)
            .collect()
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.stop();
        // Detach every mount (FUSE or overlay) under the mount dir, deepest first; a
        // FUSE daemon exits once its detached mount is unused. Those that do not, go.
        let mounts = mounts_below(&self.mount_dir);
        for m in &mounts {
            let _ = umount(m, true);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.mount_daemons().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in self.mount_daemons() {
            signal(pid, Signal::KILL);
            wait_gone(pid);
        }
        unmount_below(&self.mount_dir);
    }
}
