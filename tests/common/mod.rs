//! Shared helpers for integration tests: real mounts (layerfs and the kernel's overlayfs)
//! behind guards that always unmount, layer builders, and full tree snapshots.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn layerfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_layerfs"))
}

/// Whether a path is currently a mount point (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mountinfo(m).as_slice() == want)
    })
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Unmount on drop, whatever happened in the test.
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

    /// Unmount now and wait until the mount is gone.
    pub fn unmount(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&self.path) {
            let c = CString::new(self.path.as_os_str().as_bytes()).unwrap();
            // SAFETY: plain umount syscall on a NUL-terminated path.
            let r = unsafe { libc::umount(c.as_ptr()) };
            if r != 0 && Instant::now() > deadline {
                // SAFETY: as above, lazy detach as a last resort.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                break;
            }
            if r != 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A layer stack description: lower dirs (top first), optional upper and work.
pub struct Stack {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

impl Stack {
    pub fn lowerdir(&self) -> String {
        self.lowers
            .iter()
            .map(|p| p.to_str().unwrap().replace(':', "\\:"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Mount with layerfs (daemonized, returns once the mount is ready).
pub fn mount_layerfs(stack: &Stack, mnt: &Path, extra: &[&str]) -> MountGuard {
    try_mount_layerfs(stack, mnt, extra).unwrap_or_else(|e| panic!("layerfs mount failed: {e}"))
}

pub fn try_mount_layerfs(stack: &Stack, mnt: &Path, extra: &[&str]) -> Result<MountGuard, String> {
    fs::create_dir_all(mnt).unwrap();
    let mut opts = format!("lowerdir={}", stack.lowerdir());
    if let (Some(u), Some(w)) = (&stack.upper, &stack.work) {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    for e in extra {
        opts.push(',');
        opts.push_str(e);
    }
    let out = Command::new(layerfs_bin())
        .arg("-o")
        .arg(&opts)
        .arg(mnt)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    assert!(
        is_mounted(mnt),
        "layerfs returned success but {} is not mounted",
        mnt.display()
    );
    Ok(MountGuard::new(mnt))
}

/// Mount the same stack with the kernel's overlayfs (index=on, redirect_dir=on).
pub fn mount_kernel(stack: &Stack, mnt: &Path) -> MountGuard {
    fs::create_dir_all(mnt).unwrap();
    let mut opts = format!("lowerdir={}", stack.lowerdir());
    if let (Some(u), Some(w)) = (&stack.upper, &stack.work) {
        opts.push_str(&format!(
            ",upperdir={},workdir={},index=on,redirect_dir=on",
            u.display(),
            w.display()
        ));
    }
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(mnt)
        .status()
        .expect("run mount");
    assert!(st.success(), "kernel overlay mount failed: {opts}");
    MountGuard::new(mnt)
}

/// One entry of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub content: u64,
    pub link: Option<OsString>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub mtime: Option<(i64, i64)>,
}

/// A whole-tree snapshot plus the hard-link structure (groups of paths sharing an inode).
#[derive(Debug, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Snap>,
    pub link_groups: BTreeSet<Vec<PathBuf>>,
}

pub struct SnapOpts {
    /// Directory nlink differs legitimately in some cases; compare only when asked.
    pub dir_nlink: bool,
    pub mtimes: bool,
}

impl Default for SnapOpts {
    fn default() -> Self {
        SnapOpts {
            dir_nlink: true,
            mtimes: false,
        }
    }
}

pub fn list_xattrs(p: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut out = BTreeMap::new();
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: llistxattr writes at most buf.len() bytes.
    let n =
        unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n <= 0 {
        return out;
    }
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: lgetxattr writes at most val.len() bytes.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                val.as_mut_ptr() as *mut libc::c_void,
                val.len(),
            )
        };
        if m >= 0 {
            val.truncate(m as usize);
            out.insert(OsString::from_vec(name.to_vec()), val);
        }
    }
    out
}

fn hash_file(p: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let Ok(mut f) = fs::File::open(p) else {
        return 0;
    };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => h.write(&buf[..n]),
        }
    }
    h.finish()
}

/// Snapshot everything below `root` (never following symlinks).
pub fn snapshot(root: &Path, o: &SnapOpts) -> Tree {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let md = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) => panic!("lstat {}: {e}", full.display()),
        };
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_socket() {
            's'
        } else if ft.is_char_device() {
            'c'
        } else {
            'b'
        };
        let snap = Snap {
            kind,
            mode: md.permissions().mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if kind == 'd' { 0 } else { md.size() },
            nlink: if kind == 'd' && !o.dir_nlink {
                0
            } else {
                md.nlink()
            },
            rdev: if kind == 'c' || kind == 'b' {
                md.rdev()
            } else {
                0
            },
            content: if kind == 'f' { hash_file(&full) } else { 0 },
            link: if kind == 'l' {
                Some(fs::read_link(&full).unwrap().into_os_string())
            } else {
                None
            },
            xattrs: list_xattrs(&full),
            mtime: if o.mtimes && kind != 'l' && kind != 'd' {
                Some((md.mtime(), md.mtime_nsec()))
            } else {
                None
            },
        };
        if kind != 'd' {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        entries.insert(rel.clone(), snap);
        if kind == 'd' {
            let mut names: Vec<OsString> = fs::read_dir(&full)
                .unwrap_or_else(|e| panic!("readdir {}: {e}", full.display()))
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            let uniq: BTreeSet<&OsString> = names.iter().collect();
            assert_eq!(
                uniq.len(),
                names.len(),
                "duplicate names in {}",
                full.display()
            );
            for n in names {
                stack.push(rel.join(n));
            }
        }
    }
    let link_groups = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Tree {
        entries,
        link_groups,
    }
}

/// Compare two trees and describe every difference (empty when equal).
pub fn diff_trees(a: &Tree, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, sa) in &a.entries {
        match b.entries.get(p) {
            None => out.push(format!("only in first: {}", p.display())),
            Some(sb) if sa != sb => out.push(format!(
                "differs: {}\n  first:  {sa:?}\n  second: {sb:?}",
                p.display()
            )),
            _ => {}
        }
    }
    for p in b.entries.keys() {
        if !a.entries.contains_key(p) {
            out.push(format!("only in second: {}", p.display()));
        }
    }
    if a.link_groups != b.link_groups {
        out.push(format!(
            "hard-link groups differ:\n  first:  {:?}\n  second: {:?}",
            a.link_groups, b.link_groups
        ));
    }
    out
}

pub fn assert_same_tree(a: &Tree, b: &Tree, what: &str) {
    let d = diff_trees(a, b);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.join("\n")
    );
}

/// Write a file, creating parents.
pub fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap();
}

/// Make a kernel-form whiteout (char device 0/0).
pub fn kernel_whiteout(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod with a NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
    assert_eq!(r, 0, "mknod whiteout {}", p.display());
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: lsetxattr reads the two strings and value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn mknod(p: &Path, mode: u32, dev: u64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod with a NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn os(s: &[u8]) -> &OsStr {
    OsStr::from_bytes(s)
}

/// Copy a directory tree exactly (cp -a), for identical copies of layers.
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}
