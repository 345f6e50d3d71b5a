//! The snapshot records: one JSON file, `ROOT/snapshots/snapshots.json`, rewritten
//! atomically (temp file, fsync, rename) after every change, so a crash leaves either
//! the old or the new set of records, never half of one.
//!
//! A record owns a directory `ROOT/snapshots/<id>/` (`fs/` the tree or upper dir,
//! `work/` the overlay work dir) or stands on a layer of the layerfs store. Directories
//! no record names are leftovers of an interrupted call; `Cleanup` removes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::store::Digest;

/// What containerd calls the kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writable: an upper dir over its parents.
    Active,
    /// Read-only view of its parents.
    View,
    /// Read-only, and a parent for others.
    Committed,
}

/// Where a snapshot's own tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Tree {
    /// `ROOT/snapshots/<n>/fs`: an upper dir, or the tree of a committed snapshot
    /// containerd unpacked. Several committed records may share one (the same chain id
    /// in two containerd namespaces): it goes with the last of them.
    Dir(u64),
    /// A layer of the store (`layers/sha256/<diff-id>/diff`), shared with its images.
    Layer(Digest),
}

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp(pub u64, pub u32);

impl Stamp {
    pub(crate) fn now() -> Stamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Stamp(d.as_secs(), d.subsec_nanos())
    }

    pub(crate) fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::new(self.0, self.1)
    }
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub kind: Kind,
    /// The parent's key ("" for none).
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: Stamp,
    pub updated: Stamp,
    pub tree: Tree,
}

/// Every record, by key, and the next directory number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Records {
    #[serde(default)]
    pub next_id: u64,
    #[serde(default)]
    pub snapshots: BTreeMap<String, Record>,
}

/// The label containerd puts on a snapshot it unpacks: the chain id it stands for.
pub(crate) const LABEL_REF: &str = "containerd.io/snapshot.ref";

impl Records {
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join("snapshots.json")
    }

    /// The records under `dir` (none when there is no file yet).
    pub(crate) fn load(dir: &Path) -> Result<Records> {
        Ok(crate::store::layout::read_json(&Self::path(dir))?.unwrap_or_default())
    }

    /// Write the records: a temp file beside them, fsynced, renamed over them, and the
    /// dir fsynced. Only the snapshotter writes here (it holds `snapshots/lock`), so
    /// the store lock is not needed, and store commands never wait for containerd.
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        let dest = Self::path(dir);
        let tmp = dir.join("snapshots.json.new");
        let mut data = serde_json::to_vec_pretty(self)
            .map_err(|e| crate::error::Error::new(format!("encoding {}: {e}", dest.display())))?;
        data.push(b'\n');
        let mut f = std::fs::File::create(&tmp).ctx(format!("creating {}", tmp.display()))?;
        f.write_all(&data)
            .and_then(|()| f.sync_all())
            .ctx(format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).ctx(format!("replacing {}", dest.display()))?;
        crate::store::layout::sync_dir(dir)
    }

    pub(crate) fn has_children(&self, key: &str) -> bool {
        self.snapshots.values().any(|r| r.parent == key)
    }

    /// Whether any record stands on directory `n`.
    pub(crate) fn uses_dir(&self, n: u64) -> bool {
        self.snapshots.values().any(|r| r.tree == Tree::Dir(n))
    }

    /// The committed snapshot that holds the tree of chain id `chain`, if any.
    pub(crate) fn tree_of_chain(&self, chain: &str) -> Option<Tree> {
        self.snapshots
            .iter()
            .find(|(k, r)| r.kind == Kind::Committed && chain_id(k, r).as_deref() == Some(chain))
            .map(|(_, r)| r.tree)
    }

    /// The chain of trees a snapshot stands on, its parent's first (top first, as
    /// `lowerdir` lists them). Fails naming a parent that is gone.
    pub(crate) fn ancestors(&self, parent: &str) -> std::result::Result<Vec<Tree>, String> {
        let mut out = Vec::new();
        let mut p = parent;
        while !p.is_empty() {
            let r = self.snapshots.get(p).ok_or_else(|| p.to_string())?;
            out.push(r.tree);
            p = &r.parent;
            if out.len() > self.snapshots.len() {
                return Err(p.to_string());
            }
        }
        Ok(out)
    }
}

/// The chain id a committed snapshot stands for: its `containerd.io/snapshot.ref`
/// label, or else the last part of its name when that is a digest (containerd names an
/// unpacked layer `<namespace>/<n>/<chain id>`).
pub(crate) fn chain_id(key: &str, r: &Record) -> Option<String> {
    if let Some(l) = r.labels.get(LABEL_REF) {
        return Some(l.clone());
    }
    let last = key.rsplit('/').next()?;
    last.strip_prefix("sha256:")
        .and_then(Digest::from_hex)
        .map(|d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, parent: &str, tree: Tree) -> Record {
        Record {
            kind,
            parent: parent.into(),
            labels: BTreeMap::new(),
            created: Stamp(1, 2),
            updated: Stamp(3, 4),
            tree,
        }
    }

    #[test]
    fn ancestors_top_first() {
        let mut r = Records::default();
        r.snapshots
            .insert("a".into(), rec(Kind::Committed, "", Tree::Dir(1)));
        r.snapshots
            .insert("b".into(), rec(Kind::Committed, "a", Tree::Dir(2)));
        r.snapshots
            .insert("c".into(), rec(Kind::Active, "b", Tree::Dir(3)));
        assert_eq!(r.ancestors("b").unwrap(), vec![Tree::Dir(2), Tree::Dir(1)]);
        assert_eq!(r.ancestors("").unwrap(), vec![]);
        assert_eq!(r.ancestors("x").unwrap_err(), "x");
        assert!(r.has_children("b"));
        assert!(!r.has_children("c"));
        assert!(r.uses_dir(3) && !r.uses_dir(4));
    }

    #[test]
    fn a_cycle_is_an_error_not_a_hang() {
        let mut r = Records::default();
        r.snapshots
            .insert("a".into(), rec(Kind::Committed, "b", Tree::Dir(1)));
        r.snapshots
            .insert("b".into(), rec(Kind::Committed, "a", Tree::Dir(2)));
        assert!(r.ancestors("a").is_err());
    }

    #[test]
    fn round_trips_through_json() {
        let mut r = Records::default();
        let d = Digest::of(b"x");
        let mut x = rec(Kind::View, "p", Tree::Layer(d));
        x.labels.insert(LABEL_REF.into(), d.to_string());
        r.snapshots.insert("k".into(), x);
        r.next_id = 7;
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Records>(&j).unwrap(), r);
        assert_eq!(
            r.tree_of_chain(&d.to_string()),
            None,
            "a view holds no chain"
        );
    }
}
