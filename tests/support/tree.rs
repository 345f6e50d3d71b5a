//! Whole-tree snapshots (type, mode, owner, size, link count, device, content hash,
//! link target, xattrs, optionally times; the hard-link groups) and how two of them
//! differ, with the link-count differences from the kernel's overlayfs that layerfs
//! accepts on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::xattr::list_xattrs;

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
    /// Everything, and the exact mtimes of files, fifos and devices.
    pub fn with_mtimes() -> Self {
        SnapOpts {
            mtimes: true,
            ..SnapOpts::default()
        }
    }

    /// The same options for a kernel mount (see `skip_phantoms`).
    pub fn kernel(mut self) -> Self {
        self.skip_phantoms = true;
        self
    }
}

/// Mtime of an entry that changed during the test (see `SnapOpts::mtime_cutoff`).
pub const RECENT: (i64, i64) = (-1, -1);

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

/// Node ids (and so inode numbers) of successor nodes start here: a file opened for
/// writing while read-only descriptors of it pass through to its lower file moves to a
/// new kernel inode until the next mount.
pub const SUCCESSOR_INOS: u64 = 0xff00_0000_0000_0000;

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
///   (`tests/mount/xattr_nlink.rs` pins the counts across copy-up).
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
