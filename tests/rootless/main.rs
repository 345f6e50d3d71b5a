//! Rootless: an ordinary user's store, containers and mounts. The same image imported and
//! mounted by root and by an ordinary user (without subordinate id ranges) must list the
//! same owners, modes and types; changes made through both mounts must commit to the same
//! layer; and nothing the user does through layerfs may give the user what the user does
//! not have.
//!
//! As root (scripts/test) the user is `nobody`: every `layerfs` the user runs goes through
//! `setpriv`, from a copy of the binary the user can read, with a home of its own. The user
//! needs `/dev/fuse`: scripts/test opens it to `nobody` for the run and closes it again. As
//! an ordinary user (.ci/unprivileged) the tests run as that user when `/dev/fuse` is usable,
//! and skip otherwise.

mod commands;
mod owners;
mod ring;
mod safety;
mod subuid;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::mounts::unmount_below;
use support::privilege::say_skipped;
use support::{is_root, layerfs_bin};

/// The user the tests act as when they run as root.
pub const NOBODY: u32 = 65534;

/// An ordinary user with a home (its store lives in `$XDG_DATA_HOME/layerfs`, the
/// default); every mount below the home is taken down on drop.
pub struct User {
    pub uid: u32,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `LAYERFS_USERNS`: `off` (the plain mode, whatever ranges other tests add for
    /// the user meanwhile) unless a test asks for its ranges (`subuid`).
    userns: &'static str,
}

impl User {
    /// The test user, or `None` (said why) when the test cannot run here.
    pub fn new() -> Option<User> {
        let uid = if is_root() {
            NOBODY
        } else {
            rustix::process::geteuid().as_raw()
        };
        let dir = tempfile::Builder::new()
            .prefix("layerfs-rootless.")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("layerfs");
        fs::copy(layerfs_bin(), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        if is_root() {
            rustix::fs::chown(
                &home,
                Some(rustix::process::Uid::from_raw(uid)),
                Some(rustix::process::Gid::from_raw(uid)),
            )
            .unwrap();
        }
        let u = User {
            uid,
            dir,
            bin,
            userns: "off",
        };
        let fuse = u.sh("test -r /dev/fuse && test -w /dev/fuse && command -v fusermount3");
        if !fuse.status.success() {
            say_skipped(&format!(
                "needs /dev/fuse open to uid {uid} and fusermount3 (scripts/test opens it to nobody for the run)"
            ));
            return None;
        }
        Some(u)
    }

    /// The user with the subordinate ids `/etc/subuid` and `/etc/subgid` give it.
    pub fn with_subids(mut self) -> User {
        self.userns = "auto";
        self
    }

    /// The user's copy of the binary.
    pub fn bin_path(&self) -> &Path {
        &self.bin
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The user's store: the default root, `$XDG_DATA_HOME/layerfs`.
    pub fn store(&self) -> PathBuf {
        self.home().join(".local/share/layerfs")
    }

    /// A command run as the user, with a clean environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = if is_root() {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.uid))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            c
        } else {
            Command::new(program)
        };
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.home())
            .env("XDG_DATA_HOME", self.home().join(".local/share"))
            .env("LAYERFS_USERNS", self.userns)
            .current_dir(self.home())
            .stdin(Stdio::null());
        c
    }

    /// `layerfs ARGS…` as the user (default store).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(self.bin.to_str().unwrap())
            .args(args)
            .output()
            .unwrap()
    }

    /// `run`, required to succeed; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        support::cli::succeeded(args, self.run(args))
    }

    /// `run`, required to fail with one `layerfs: ` line; that line.
    pub fn fails(&self, args: &[&str]) -> String {
        support::cli::one_error_line(args, self.run(args))
    }

    /// A shell script as the user.
    pub fn sh(&self, script: &str) -> Output {
        self.command("sh").arg("-c").arg(script).output().unwrap()
    }

    /// `sh`, required to succeed; stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "as uid {}: {script}\n{}{}",
            self.uid,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Live processes of the user's binary whose command line names `mnt`: the daemon
    /// (with `subids`, also the process outside the namespace that unmounts).
    pub fn daemons(&self, mnt: &Path) -> Vec<u32> {
        let want = mnt.as_os_str().as_encoded_bytes();
        support::procs::processes()
            .into_iter()
            .filter(|p| {
                p.args.iter().any(|a| a == want)
                    && fs::read_link(format!("/proc/{}/exe", p.pid))
                        .is_ok_and(|x| x == self.bin_path())
                    && support::procs::pid_alive(p.pid)
            })
            .map(|p| p.pid)
            .collect()
    }

    /// `l` (holding `f`: "hi"), `u`, `w` and `m` in the home: the mount point and the
    /// options that stack them.
    pub fn one_file_stack(&self) -> (PathBuf, String) {
        let h = self.home();
        self.sh_ok(&format!(
            "cd '{}' && mkdir l u w m && echo hi > l/f",
            h.display()
        ));
        let opts = format!("lowerdir={0}/l,upperdir={0}/u,workdir={0}/w", h.display());
        (h.join("m"), opts)
    }

    /// A file the user can read, in its home.
    pub fn put(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.home().join(name);
        fs::File::create(&p).unwrap().write_all(data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if is_root() {
            unmount_below(self.dir.path());
        } else {
            for m in support::mounts::mount_table() {
                if m.mount_point.starts_with(self.dir.path()) {
                    let _ = Command::new("fusermount3")
                        .arg("-u")
                        .arg("-z")
                        .arg(&m.mount_point)
                        .status();
                }
            }
        }
        // The user's files may be read-only to their owner (modes from an image).
        let _ = Command::new("chmod")
            .args(["-R", "u+rwX"])
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status();
    }
}

/// `find -printf` of a tree: path, owner, group, mode, type and size of every object.
pub const LISTING: &str = r"find . -printf '%p %U %G %m %y %s\n' | LC_ALL=C sort";

/// An image layer with what an ordinary user cannot make: other owners (small and large
/// ids), set-id bits, a sticky dir, unreadable files, device nodes, a fifo, hard links,
/// symlinks, whiteouts, a user xattr, and an attempt to forge a recorded owner.
pub fn rich_layer() -> Vec<u8> {
    use tar::EntryType::{self, *};
    type Entry<'a> = (
        EntryType,
        &'a str,
        u32,
        (u64, u64),
        &'a [u8],
        Option<(u32, u32)>,
    );
    let dir = |p: &'static str, m: u32, o: (u64, u64)| -> Entry<'static> {
        (Directory, p, m, o, &b""[..], None)
    };
    let file = |p: &'static str, m: u32, o: (u64, u64), d: &'static [u8]| -> Entry<'static> {
        (Regular, p, m, o, d, None)
    };
    let entries: [Entry; 26] = [
        dir("./", 0o755, (0, 0)),
        dir("bin", 0o755, (0, 0)),
        dir("etc", 0o755, (0, 0)),
        dir("root", 0o700, (0, 0)),
        dir("tmp", 0o1777, (0, 0)),
        dir("home", 0o755, (0, 0)),
        dir("home/alice", 0o750, (1000, 1000)),
        dir("var", 0o755, (0, 0)),
        dir("var/mail", 0o2775, (0, 8)),
        dir("dev", 0o755, (0, 0)),
        dir("srv", 0o755, (0, 0)),
        file("bin/sh", 0o755, (0, 0), b"#!\n"),
        file("bin/su", 0o4755, (0, 0), b"su\n"),
        file("bin/wall", 0o2755, (0, 5), b"wall\n"),
        (Link, "bin/sudoedit", 0o4755, (0, 0), b"bin/su", None),
        (Symlink, "bin/ln", 0o777, (0, 0), b"sh", None),
        file("etc/shadow", 0o640, (0, 42), b"root:*:1::::::\n"),
        file("etc/secret", 0o000, (0, 0), b"nobody reads this\n"),
        file("root/.profile", 0o600, (0, 0), b"PS1=#\n"),
        file("home/alice/notes", 0o600, (1000, 1000), b"hi\n"),
        file("home/alice/big", 0o644, (2_000_000, 2_000_001), b"big\n"),
        (Char, "dev/null", 0o666, (0, 0), b"", Some((1, 3))),
        (Block, "dev/sda", 0o660, (0, 6), b"", Some((8, 0))),
        (Fifo, "dev/initctl", 0o600, (0, 0), b"", None),
        file("srv/.wh.gone", 0o644, (0, 0), b""),
        file("srv/plain", 0o644, (0, 0), b"p\n"),
    ];
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: EntryType, mode: u32, (uid, gid): (u64, u64), size: usize| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_size(size as u64);
        h
    };
    for (kind, path, mode, owner, data, dev) in entries {
        let linked = matches!(kind, Link | Symlink);
        let mut h = header(kind, mode, owner, if linked { 0 } else { data.len() });
        if let Some((ma, mi)) = dev {
            h.set_device_major(ma).unwrap();
            h.set_device_minor(mi).unwrap();
        }
        if linked {
            let target = std::str::from_utf8(data).unwrap();
            b.append_link(&mut h, path, target).unwrap();
        } else {
            b.append_data(&mut h, path, data).unwrap();
        }
    }
    // A user xattr, kept; a recorded owner in the image, dropped.
    for (path, xattr, value) in [
        ("srv/noted", "user.note", &b"kept"[..]),
        (
            "srv/forged",
            "user.containers.override_stat",
            b"0:0:04755:file",
        ),
    ] {
        b.append_pax_extensions([(format!("SCHILY.xattr.{xattr}").as_str(), value)])
            .unwrap();
        let mut h = header(Regular, 0o644, (0, 0), 2);
        b.append_data(&mut h, path, &b"x\n"[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The same root-owned store in a temp dir, driven by root (or skipped by the caller).
pub struct RootStore {
    pub env: support::store_env::Env,
}

impl Default for RootStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RootStore {
    pub fn new() -> RootStore {
        RootStore {
            env: support::store_env::Env::new(),
        }
    }

    pub fn import_tar(&self, name: &str, data: &[u8]) {
        let p = self.env.path(&format!("{name}.tar"));
        fs::write(&p, data).unwrap();
        self.env.ok(&["import", p.to_str().unwrap(), "-t", name]);
    }

    /// `LISTING` of a mounted tree (as root).
    pub fn listing(&self, mnt: &Path) -> String {
        let o = Command::new("sh")
            .arg("-c")
            .arg(LISTING)
            .current_dir(mnt)
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    }
}

/// Every object below `dir` as the disk has it: (path, uid, mode, is a device node).
pub fn disk_objects(dir: &Path) -> Vec<(PathBuf, u32, u32, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = md.file_type();
            use std::os::unix::fs::FileTypeExt;
            let dev = (ft.is_char_device() && md.rdev() != 0) || ft.is_block_device();
            out.push((p.clone(), md.uid(), md.mode(), dev));
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}
