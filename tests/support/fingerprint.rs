//! Fingerprints of real directory trees, to prove that something did not change: a lower
//! layer (nothing at all may change, not even a rewrite of the same bytes) or a store
//! (nothing a command could change, outside the lock file).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::tree::{SnapOpts, snapshot};

/// Everything that identifies the state of a tree, including what a write would change
/// even when it puts the same bytes back (ctime, inode numbers).
pub fn fingerprint(root: &Path) -> BTreeMap<PathBuf, String> {
    entries(root, true)
}

/// Everything under a store root that a command could change, the lock file aside: path
/// → type, mode, owner, size, content hash, link target, device, xattrs.
pub fn store_fingerprint(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = entries(root, false);
    out.remove(Path::new("lock"));
    out
}

/// The one walk behind both: a snapshot of `root`, with exact times, link counts and
/// inode numbers when `exact`.
fn entries(root: &Path, exact: bool) -> BTreeMap<PathBuf, String> {
    let t = snapshot(
        root,
        &SnapOpts {
            dir_nlink: exact,
            mtimes: false,
            mtime_cutoff: exact.then_some(i64::MAX),
            content: true,
            skip_phantoms: false,
        },
    );
    t.entries
        .into_iter()
        .map(|(p, mut s)| {
            if !exact {
                s.nlink = 0;
                return (p, format!("{s:?}"));
            }
            let md = fs::symlink_metadata(root.join(&p)).unwrap();
            let v = format!(
                "{s:?} mtime={}.{} ctime={}.{} ino={}",
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec(),
                md.ino()
            );
            (p, v)
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
