//! Mounts as the kernel lists them (`/proc/self/mountinfo`), and taking them down: one
//! reader of the mount table and one unmount loop, used by every guard.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::mount::{UnmountFlags, unmount};

/// One line of the mount table.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The device (major, minor) of the mounted filesystem.
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
    /// The filesystem type (`fuse.layerfs`, `tmpfs`, …).
    pub fstype: String,
    /// The mount source (`layerfs`, `layerfs:<container id>`, …).
    pub source: String,
}

/// The mount table of this process's namespace, in mount order.
pub fn mount_table() -> Vec<Mount> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let (major, minor) = f.get(2)?.split_once(':')?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = String::from_utf8_lossy(&unescape(r.next()?)).into_owned();
            Some(Mount {
                dev: (major.parse().ok()?, minor.parse().ok()?),
                mount_point: PathBuf::from(OsString::from_vec(unescape(f.get(4)?))),
                fstype,
                source,
            })
        })
        .collect()
}

/// Mountinfo writes space, tab, newline and backslash in a path as `\ooo` (octal).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = b
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Whether a path is currently a mount point.
pub fn is_mounted(path: &Path) -> bool {
    mount_table().iter().any(|m| m.mount_point == path)
}

/// The device of the filesystem mounted at `mnt` (the top one), without touching it.
pub fn mount_dev(mnt: &Path) -> Option<(u32, u32)> {
    mount_table()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mnt)
        .map(|m| m.dev)
}

/// The mount at `mnt` (the top one), as the mount table lists it.
pub fn mount_at(mnt: &Path) -> Option<Mount> {
    mount_table()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mnt)
}

/// Mountpoints at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mount_table()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// One `umount` (or `umount -l` when `lazy`) system call; the errno on failure.
pub fn umount(mnt: &Path, lazy: bool) -> Result<(), i32> {
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    unmount(mnt, flags).map_err(|e| e.raw_os_error())
}

/// Take down every mount at `mnt`: a busy one is retried for `patience`, then detached.
pub fn unmount_at(mnt: &Path, patience: Duration) {
    unmount_until_gone(|p| p == mnt, patience);
}

/// Take down every mount at or below `dir`, deepest first, detaching what stays busy
/// for 10 s.
pub fn unmount_below(dir: &Path) {
    unmount_until_gone(|p| p.starts_with(dir), Duration::from_secs(10));
}

/// Remove every mount at `mnt` (dead or alive) at once, lazily if it is busy.
pub fn clean_mount(mnt: &Path) {
    unmount_at(mnt, Duration::ZERO);
}

/// A tmpfs mounted at a directory (made if missing) with the given `-o` options, and
/// unmounted (with whatever is mounted below it) when this goes, also on failure.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mount -t tmpfs -o {options} {}: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        clean_mount(&self.0);
    }
}

/// The one unmount loop: until no mount `select` picks is left, unmount each (deepest
/// first); once `patience` is over, detach those that stay busy; give up 10 s later.
fn unmount_until_gone(select: impl Fn(&Path) -> bool, patience: Duration) {
    let detach_after = Instant::now() + patience;
    let give_up = detach_after + Duration::from_secs(10);
    loop {
        let mut mounts: Vec<PathBuf> = mount_table()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| select(p))
            .collect();
        if mounts.is_empty() {
            return;
        }
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        mounts.dedup();
        for m in &mounts {
            if umount(m, false).is_err() && Instant::now() >= detach_after {
                if !patience.is_zero() {
                    eprintln!(
                        "{} still busy after {patience:?}: detaching it",
                        m.display()
                    );
                }
                let _ = umount(m, true);
            }
        }
        if Instant::now() >= give_up {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts on drop, whatever happened in the test.
pub struct MountGuard {
    pub path: PathBuf,
    done: bool,
}

impl MountGuard {
    pub fn new(path: &Path) -> Self {
        MountGuard {
            path: path.to_path_buf(),
            done: false,
        }
    }

    /// Unmount now and wait until the mount is gone (detached if busy for 10 s).
    pub fn unmount(&mut self) {
        if !self.done {
            self.done = true;
            unmount_at(&self.path, Duration::from_secs(10));
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A tmpfs of a fixed size, unmounted on drop.
pub fn mount_tmpfs(mnt: &Path, size: &str) -> MountGuard {
    fs::create_dir_all(mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs on {}", mnt.display());
    MountGuard::new(mnt)
}

/// Abort the FUSE connection behind `mnt`: every waiter gets `ENOTCONN`.
pub fn abort_fuse(mnt: &Path) -> bool {
    let Some((major, minor)) = mount_dev(mnt) else {
        return false;
    };
    let conns = Path::new("/sys/fs/fuse/connections");
    if fs::read_dir(conns)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(conns)
            .status();
    }
    let id = (major << 20) | minor;
    fs::write(conns.join(id.to_string()).join("abort"), b"1").is_ok()
}
