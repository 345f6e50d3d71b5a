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
                eprintln!(
                    "{} still busy after 10 s: detaching it",
                    self.path.display()
                );
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
    /// A read-only stack of these lower dirs (top first).
    pub fn ro(lowers: Vec<PathBuf>) -> Stack {
        Stack {
            lowers,
            upper: None,
            work: None,
        }
    }

    pub fn lowerdir(&self) -> String {
        self.lowers
            .iter()
            .map(|p| p.to_str().unwrap().replace(':', "\\:"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Mount options: the layers, `rw_extra` after the upper and work dirs when there
    /// are some, then `extra`.
    pub fn options(&self, rw_extra: &str, extra: &[&str]) -> String {
        let mut opts = format!("lowerdir={}", self.lowerdir());
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            opts.push_str(&format!(
                ",upperdir={},workdir={}{rw_extra}",
                u.display(),
                w.display()
            ));
        }
        for e in extra {
            opts.push(',');
            opts.push_str(e);
        }
        opts
    }
}

/// Mount with layerfs (daemonized, returns once the mount is ready).
pub fn mount_layerfs(stack: &Stack, mnt: &Path, extra: &[&str]) -> MountGuard {
    try_mount_layerfs(stack, mnt, extra).unwrap_or_else(|e| panic!("layerfs mount failed: {e}"))
}

pub fn try_mount_layerfs(stack: &Stack, mnt: &Path, extra: &[&str]) -> Result<MountGuard, String> {
    fs::create_dir_all(mnt).unwrap();
    let opts = stack.options("", extra);
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
/// Inode numbers are kept for consistency checks but never compared between trees.
#[derive(Debug, Clone)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Snap>,
    pub link_groups: BTreeSet<Vec<PathBuf>>,
    pub inos: BTreeMap<PathBuf, u64>,
}

pub struct SnapOpts {
    /// Directory nlink differs legitimately in some cases; compare only when asked.
    pub dir_nlink: bool,
    /// Exact mtimes of files, fifos, devices (not directories or symlinks).
    pub mtimes: bool,
    /// Mtimes of every entry, exact when older than this time (seconds since the epoch),
    /// otherwise only "recent": two mounts that made the same changes at slightly
    /// different moments agree on which entries changed, and on every kept timestamp.
    pub mtime_cutoff: Option<i64>,
    /// Content hash of regular files (off for huge trees where sizes suffice).
    pub content: bool,
    /// Skip names that readdir lists but lstat cannot find. The kernel's overlayfs lists
    /// whiteouts in directories it does not merge (a directory only one layer has, an
    /// opaque one) as such phantom entries; layerfs hides every marker. Only for
    /// snapshots of kernel mounts.
    pub skip_phantoms: bool,
}

impl Default for SnapOpts {
    fn default() -> Self {
        SnapOpts {
            dir_nlink: true,
            mtimes: false,
            mtime_cutoff: None,
            content: true,
            skip_phantoms: false,
        }
    }
}

impl SnapOpts {
    /// The same options for a kernel mount (see `skip_phantoms`).
    pub fn kernel(mut self) -> Self {
        self.skip_phantoms = true;
        self
    }
}

/// Mtime of an entry that changed during the test (see `SnapOpts::mtime_cutoff`).
pub const RECENT: (i64, i64) = (-1, -1);

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
    let mut inos = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let md = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if o.skip_phantoms && e.kind() == std::io::ErrorKind::NotFound => continue,
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
            content: if kind == 'f' && o.content {
                hash_file(&full)
            } else {
                0
            },
            link: if kind == 'l' {
                Some(fs::read_link(&full).unwrap().into_os_string())
            } else {
                None
            },
            xattrs: list_xattrs(&full),
            mtime: match o.mtime_cutoff {
                Some(cut) if md.mtime() >= cut => Some(RECENT),
                Some(_) => Some((md.mtime(), md.mtime_nsec())),
                None if o.mtimes && kind != 'l' && kind != 'd' => {
                    Some((md.mtime(), md.mtime_nsec()))
                }
                None => None,
            },
        };
        if kind != 'd' {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        inos.insert(rel.clone(), md.ino());
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
        inos,
    }
}

/// Inode numbers of a tree that do not identify objects uniquely: a directory sharing its
/// number with anything else, or two names with one number that are not hard links.
pub fn ino_clashes(t: &Tree) -> Vec<String> {
    let mut by_ino: BTreeMap<u64, Vec<&PathBuf>> = BTreeMap::new();
    for (p, i) in &t.inos {
        by_ino.entry(*i).or_default().push(p);
    }
    let mut out = Vec::new();
    for (ino, paths) in by_ino {
        if paths.len() < 2 {
            continue;
        }
        let dirs = paths.iter().any(|p| t.entries[*p].kind == 'd');
        let first = &t.entries[paths[0]];
        let same_object = paths.iter().all(|p| {
            let e = &t.entries[*p];
            e.kind == first.kind && e.size == first.size && e.content == first.content
        });
        if dirs || !same_object {
            out.push(format!("inode {ino} shared by {paths:?}"));
        }
    }
    out
}

pub fn assert_unique_inos(t: &Tree, what: &str) {
    let c = ino_clashes(t);
    assert!(
        c.is_empty(),
        "{what}: inode numbers not unique:\n{}",
        c.join("\n")
    );
}

/// Paths whose inode number differs between two snapshots of the same tree.
pub fn ino_changes(a: &Tree, b: &Tree) -> Vec<String> {
    a.inos
        .iter()
        .filter_map(|(p, i)| match b.inos.get(p) {
            Some(j) if j != i => Some(format!("{}: {i} -> {j}", p.display())),
            _ => None,
        })
        .collect()
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

/// Accept the known differences in link counts (returns a copy of `ours` with the
/// kernel's counts adopted where the difference is one of these):
/// - the kernel's overlayfs copies up one name of a lower file with several names into
///   its index dir and links the other names lazily; layerfs links every visible name to
///   the upper copy at once. The kernel keeps counting names the lower layer has that
///   are hidden in the mount (whited out, under a file or an opaque dir of a higher
///   layer); layerfs reports the names there are. Accepted where the layerfs count is
///   lower and equals the number of names the tree shows for that file (the hard-link
///   groups are compared exactly);
/// - for the same reason the parents of every name of a lower hard link are copied up
///   at once, so they are merged (one link) where the kernel still shows a lower-only
///   directory's real count. Accepted where layerfs reports 1 for a directory that holds,
///   at any depth in a lower layer, a file with several names. Any other directory's
///   count must match
///   (`tests/xattr_nlink.rs` pins the counts across copy-up).
pub fn accept_visible_link_counts(kernel: &Tree, ours: &Tree, lowers: &[PathBuf]) -> Tree {
    let linked_dirs = dirs_holding_lower_links(lowers);
    let mut out = ours.clone();
    let mut group_len: BTreeMap<&PathBuf, u64> = BTreeMap::new();
    for g in &ours.link_groups {
        for p in g {
            group_len.insert(p, g.len() as u64);
        }
    }
    for (p, e) in out.entries.iter_mut() {
        let Some(k) = kernel.entries.get(p) else {
            continue;
        };
        let visible = group_len.get(p).copied().unwrap_or(1);
        if e.kind != 'd' && k.kind == e.kind && e.nlink < k.nlink && e.nlink == visible {
            e.nlink = k.nlink;
        }
        if e.kind == 'd' && k.kind == 'd' && e.nlink == 1 && linked_dirs.contains(p) {
            e.nlink = k.nlink;
        }
    }
    out
}

/// Relative paths of the directories that hold, at any depth in one of `lowers`, a
/// regular file with more than one name.
pub fn dirs_holding_lower_links(lowers: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for l in lowers {
        let mut stack = vec![l.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let Ok(md) = e.path().symlink_metadata() else {
                    continue;
                };
                if md.is_dir() {
                    stack.push(e.path());
                } else if md.is_file() && md.nlink() > 1 {
                    let rel = e.path().strip_prefix(l).unwrap().to_path_buf();
                    out.extend(rel.ancestors().skip(1).map(Path::to_path_buf));
                }
            }
        }
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

/// Mount the kernel's overlayfs with extra options (after the standard ones).
pub fn mount_kernel_with(stack: &Stack, mnt: &Path, extra: &[&str]) -> MountGuard {
    fs::create_dir_all(mnt).unwrap();
    let opts = stack.options(",index=on,redirect_dir=on", extra);
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(mnt)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "kernel overlay mount failed: {opts}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MountGuard::new(mnt)
}

/// A writable stack in `base`: lowers as given, fresh `upper` and `work` dirs named with
/// `tag` so several stacks can share the lowers.
pub fn rw_stack(base: &Path, lowers: &[PathBuf], tag: &str) -> Stack {
    let upper = base.join(format!("upper-{tag}"));
    let work = base.join(format!("work-{tag}"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    Stack {
        lowers: lowers.to_vec(),
        upper: Some(upper),
        work: Some(work),
    }
}

/// The same stack with other lower dirs (e.g. the kernel form of OCI-form layers).
pub fn with_lowers(s: &Stack, lowers: &[PathBuf]) -> Stack {
    Stack {
        lowers: lowers.to_vec(),
        upper: s.upper.clone(),
        work: s.work.clone(),
    }
}

/// Everything that identifies the state of a real directory tree, including what a
/// write would change even when it puts the same bytes back (ctime, inode numbers).
pub fn fingerprint(root: &Path) -> BTreeMap<PathBuf, String> {
    let t = snapshot(
        root,
        &SnapOpts {
            dir_nlink: true,
            mtimes: false,
            mtime_cutoff: Some(i64::MAX),
            content: true,
            skip_phantoms: false,
        },
    );
    t.entries
        .iter()
        .map(|(p, s)| {
            let md = fs::symlink_metadata(root.join(p)).unwrap();
            let v = format!(
                "{s:?} mtime={}.{} ctime={}.{} ino={}",
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec(),
                md.ino()
            );
            (p.clone(), v)
        })
        .collect()
}

/// Records the lower layers of a test and checks that nothing wrote to them.
pub struct LowersUnchanged {
    before: Vec<(PathBuf, BTreeMap<PathBuf, String>)>,
}

impl LowersUnchanged {
    pub fn record(lowers: &[PathBuf]) -> Self {
        LowersUnchanged {
            before: lowers.iter().map(|l| (l.clone(), fingerprint(l))).collect(),
        }
    }

    pub fn diffs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (dir, before) in &self.before {
            let now = fingerprint(dir);
            for (p, v) in before {
                match now.get(p) {
                    None => out.push(format!("{}: {} removed", dir.display(), p.display())),
                    Some(w) if w != v => out.push(format!(
                        "{}: {} changed\n  {v}\n  {w}",
                        dir.display(),
                        p.display()
                    )),
                    _ => {}
                }
            }
            for p in now.keys() {
                if !before.contains_key(p) {
                    out.push(format!("{}: {} added", dir.display(), p.display()));
                }
            }
        }
        out
    }

    pub fn check(&self) {
        let d = self.diffs();
        assert!(d.is_empty(), "a lower layer was written:\n{}", d.join("\n"));
    }
}

/// Copy a layer tree, turning OCI markers (`.wh.NAME`, `.wh..wh..opq`) into the kernel's
/// forms (0/0 device, `trusted.overlay.opaque=y`), for the kernel to mount.
pub fn oci_to_kernel(src: &Path, dst: &Path) {
    copy_tree(src, dst);
    convert_dir(dst);
    fn convert_dir(d: &Path) {
        let md = fs::symlink_metadata(d).unwrap();
        let mut names: Vec<OsString> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = d.join(&n);
            let b = n.as_bytes();
            if b == b".wh..wh..opq" {
                fs::remove_file(&p).unwrap();
                set_xattr(d, "trusted.overlay.opaque", b"y");
            } else if let Some(t) = b.strip_prefix(b".wh.") {
                fs::remove_file(&p).unwrap();
                kernel_whiteout(&d.join(os(t)));
            } else if fs::symlink_metadata(&p).unwrap().is_dir() {
                convert_dir(&p);
            }
        }
        set_times(d, md.mtime(), md.mtime_nsec());
    }
}

/// Set atime and mtime of a path (not following a symlink).
pub fn set_times(p: &Path, sec: i64, nsec: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: utimensat reads the path and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Give every entry below `root` (and `root`) the same old timestamp, children first.
pub fn set_all_times(root: &Path, sec: i64) {
    let md = fs::symlink_metadata(root).unwrap();
    if md.is_dir() {
        for e in fs::read_dir(root).unwrap() {
            set_all_times(&e.unwrap().path(), sec);
        }
    }
    set_times(root, sec, 0);
}

pub fn symlink(target: &str, p: &Path) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::symlink(target, p).unwrap();
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Run a shell command line; panic with its output when it fails.
pub fn shell(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a shell command line as another user (real and effective ids, no supplementary
/// groups unless given) with a umask; returns (exit code, stdout+stderr).
pub fn shell_as(uid: u32, gid: u32, groups: &[u32], umask: u32, cmd: &str) -> (i32, String) {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    let out = c
        .args(["--", "sh", "-c"])
        .arg(format!("umask {umask:03o}; {cmd}"))
        .output()
        .expect("run setpriv");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), s)
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

/// The pid of the layerfs daemon serving `mnt` (found by its command line).
pub fn daemon_pid(mnt: &Path) -> Option<i32> {
    let want = mnt.as_os_str().as_bytes();
    let bin = layerfs_bin();
    for e in fs::read_dir("/proc").ok()? {
        let e = e.ok()?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_ours = fs::read_link(e.path().join("exe")).is_ok_and(|x| x == bin);
        if is_ours && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

/// `lstat` of a path, or the errno.
pub fn lstat(p: &Path) -> Result<fs::Metadata, i32> {
    fs::symlink_metadata(p).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// The errno of an io::Result, for assertions.
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}
