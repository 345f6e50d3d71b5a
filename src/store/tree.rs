//! The record of a layer tree that `system check` verifies later: every entry with its
//! type, metadata, xattrs and content hash, written as `tree.json` when the layer is
//! extracted, and compared with a fresh scan of the layer dir.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::markers::is_internal_xattr;
use crate::override_stat::is_override_xattr;
use crate::store::digest::{Digest, Hasher};
use crate::store::objects;
use crate::sys::{self, Errno, OFlags};

/// A byte string in JSON: the plain string when it is UTF-8, else `"\0hex:<hex>"` (a real
/// name can never contain NUL, so the two forms cannot collide).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => s.serialize_str(&format!("\0hex:{}", hex::encode(&self.0))),
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        match s.strip_prefix("\0hex:") {
            Some(h) => hex::decode(h).map(Bytes).map_err(serde::de::Error::custom),
            None => Ok(Bytes(s.into_bytes())),
        }
    }
}

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// One object of a layer tree as extraction left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TreeEntry {
    pub path: Bytes,
    /// `f` file, `d` dir, `l` symlink, `c`/`b` device, `p` fifo, `s` socket.
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtime_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Bytes>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<Bytes, String>,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A scanned tree: entries sorted by path, plus totals.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub entries: Vec<TreeEntry>,
    /// Sum of regular file sizes (hard links counted once).
    pub size: u64,
    /// The metacopy stubs found, with the file object each names (see `objects`).
    pub stubs: Vec<(Bytes, Digest)>,
}

/// Walk the tree below `root`. File contents are hashed only where `known` has no hash
/// for the inode (extraction already hashed what it wrote).
pub(crate) fn scan_tree(
    root: BorrowedFd<'_>,
    known: &HashMap<u64, Digest>,
) -> sys::SysResult<Scan> {
    let mut scan = Scan::default();
    let mut seen = std::collections::HashSet::new();
    let st = sys::stat_fd(root)?;
    let (root_entry, _) = record(root, None, Vec::new(), &st, known)?;
    scan.entries.push(root_entry);
    walk(root, &[], known, &mut scan, &mut seen)?;
    scan.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

fn walk(
    dir: BorrowedFd<'_>,
    prefix: &[u8],
    known: &HashMap<u64, Digest>,
    scan: &mut Scan,
    seen: &mut std::collections::HashSet<u64>,
) -> sys::SysResult<()> {
    let mut names = sys::read_dir_all(dir)?;
    names.sort_by(|a, b| a.name.cmp(&b.name));
    for e in names {
        let st = sys::stat_at(dir, &e.name)?;
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(e.name.as_bytes());
        let (rec, stub) = record(dir, Some(&e.name), path.clone(), &st, known)?;
        if rec.kind == 'f' && seen.insert(st.st_ino) {
            scan.size += st.st_size as u64;
        }
        if let Some(d) = stub {
            scan.stubs.push((rec.path.clone(), d));
        }
        scan.entries.push(rec);
        if sys::is_dir_mode(st.st_mode) {
            let sub = sys::open_dir_path(dir, &e.name)?;
            walk(sub.as_fd(), &path, known, scan, seen)?;
        }
    }
    Ok(())
}

fn record(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    path: Vec<u8>,
    st: &sys::Stat,
    known: &HashMap<u64, Digest>,
) -> sys::SysResult<(TreeEntry, Option<Digest>)> {
    let kind = match sys::mode_type(st.st_mode) {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        _ => 's',
    };
    // A metacopy stub stands for the file object its redirect names: its content is that
    // object's (verified with the objects), not the empty stub's. A redirect that is not
    // one of ours names no content this tree can have.
    let stub = if kind == 'f' && crate::metacopy::may_be_stub(st) {
        crate::metacopy::redirect_of(dir, name)?
            .map(|r| objects::digest_of_redirect(&r).unwrap_or_else(|| Digest::of(&r)))
    } else {
        None
    };
    let sha256 = if kind == 'f' {
        match (known.get(&st.st_ino), stub) {
            (Some(d), _) => Some(*d),
            (None, Some(d)) => Some(d),
            (None, None) => Some(hash_file_at(dir, name.unwrap_or(OsStr::new(".")))?),
        }
    } else {
        None
    };
    let link = if kind == 'l' {
        Some(Bytes(sys::readlink_at(
            dir,
            name.unwrap_or(OsStr::new("")),
        )?))
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    let list = match sys::list_xattr(dir, name) {
        Ok(l) => l,
        Err(Errno::NOTSUP) | Err(Errno::PERM) | Err(Errno::ACCESS) => Vec::new(),
        Err(e) => return Err(e),
    };
    for attr in sys::split_xattr_names(&list) {
        let a = attr.as_bytes();
        // Opaque markers and recorded owners are part of what extraction made.
        if is_internal_xattr(a) && !a.ends_with(b".overlay.opaque") && !is_override_xattr(a) {
            continue;
        }
        if let Ok(Some(v)) = sys::get_xattr(dir, name, attr) {
            xattrs.insert(Bytes(a.to_vec()), hex::encode(v));
        }
    }
    Ok((
        TreeEntry {
            path: Bytes(path),
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: if kind == 'f' { st.st_size as u64 } else { 0 },
            mtime: st.st_mtime,
            mtime_ns: st.st_mtime_nsec,
            sha256,
            link,
            rdev: if kind == 'c' || kind == 'b' {
                st.st_rdev
            } else {
                0
            },
            xattrs,
        },
        stub,
    ))
}

fn hash_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> sys::SysResult<Digest> {
    let fd = sys::open_at(dir, name, OFlags::RDONLY, 0)?;
    let mut f = File::from(fd);
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Errno::from_io_error(&e).unwrap_or(Errno::IO)),
        }
    }
    Ok(h.finish())
}

/// Differences between a recorded tree and a scanned one, one line each.
pub(crate) fn compare_trees(expected: &[TreeEntry], actual: &[TreeEntry]) -> Vec<String> {
    let exp: BTreeMap<&Bytes, &TreeEntry> = expected.iter().map(|e| (&e.path, e)).collect();
    let act: BTreeMap<&Bytes, &TreeEntry> = actual.iter().map(|e| (&e.path, e)).collect();
    let mut out = Vec::new();
    let show = |p: &Bytes| {
        if p.0.is_empty() {
            "/".to_string()
        } else {
            p.to_string()
        }
    };
    for (p, e) in &exp {
        match act.get(p) {
            None => out.push(format!("{}: missing", show(p))),
            Some(a) if a != e => {
                let what = if a.kind != e.kind {
                    "type changed"
                } else if a.sha256 != e.sha256 {
                    "content differs"
                } else if a.size != e.size {
                    "size differs"
                } else if a.link != e.link {
                    "symlink target differs"
                } else if (a.mode, a.uid, a.gid) != (e.mode, e.uid, e.gid) {
                    "owner or mode differs"
                } else if a.xattrs != e.xattrs {
                    "xattrs differ"
                } else if a.rdev != e.rdev {
                    "device number differs"
                } else {
                    "timestamps differ"
                };
                out.push(format!("{}: {what}", show(p)));
            }
            _ => {}
        }
    }
    for p in act.keys() {
        if !exp.contains_key(p) {
            out.push(format!("{}: unexpected entry", show(p)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        for b in [&b"plain/name"[..], b"\xff\xfe odd", b""] {
            let j = serde_json::to_string(&Bytes(b.to_vec())).unwrap();
            assert_eq!(serde_json::from_str::<Bytes>(&j).unwrap().0, b);
        }
    }

    #[test]
    fn scan_records_and_compares() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"abc").unwrap();
        std::fs::hard_link(t.path().join("d/f"), t.path().join("d/g")).unwrap();
        let root = sys::open_root_dir(t.path()).unwrap();
        let ino =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(t.path().join("d/f")).unwrap());
        // A hash the caller knows already is taken as it is.
        let known = HashMap::from([(ino, Digest::of(b"abc"))]);
        let scan = scan_tree(root.as_fd(), &known).unwrap();
        assert_eq!(scan.size, 3);
        let f = scan.entries.iter().find(|e| e.path.0 == b"d/f").unwrap();
        assert_eq!(f.sha256, Some(Digest::of(b"abc")));
        let again = scan_tree(root.as_fd(), &HashMap::new()).unwrap();
        assert!(compare_trees(&scan.entries, &again.entries).is_empty());
        std::fs::write(t.path().join("d/g"), b"abd").unwrap();
        let damaged = scan_tree(root.as_fd(), &HashMap::new()).unwrap();
        let d = compare_trees(&scan.entries, &damaged.entries);
        assert!(
            d.iter().any(|l| l.contains("d/f") && l.contains("content")),
            "{d:?}"
        );
    }
}
