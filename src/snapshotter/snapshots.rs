//! The snapshotter's operations on plain types, as containerd's snapshots API defines
//! them (`Prepare`, `View`, `Mounts`, `Commit`, `Remove`, `Stat`, `Update`, `Usage`,
//! `Walk`, `Cleanup`). Synchronous and free of gRPC: the service calls it under a lock,
//! and the unit tests drive it with no containerd and no mount.
//!
//! Errors carry the kind containerd expects (see `service::status`): a missing key or
//! parent is `NotFound`, a taken key `AlreadyExists`, a parent that is not committed or
//! an unknown field `InvalidArgument`, a commit of a non-active snapshot or a remove of a
//! snapshot with children `FailedPrecondition` (`ErrorKind::InUse`). A refused call
//! changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::container::escape_opt_path;
use crate::error::{Error, IoContext, Result};
use crate::snapshotter::mounts::{self, Mount};
use crate::snapshotter::records::{Kind, LABEL_REF, Record, Records, Stamp, Tree, chain_id};
use crate::store::{Digest, Store};

/// How a snapshot reaches containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    /// A `bind` of a layerfs union mount the snapshotter keeps (one daemon per
    /// snapshot, so running containers outlive a snapshotter restart).
    Fuse,
    /// The kernel's overlayfs over the same directories, mounted by containerd.
    Overlay,
}

/// Where things go.
#[derive(Debug, Clone)]
pub struct Config {
    /// Mountpoints of the union mounts, one dir per snapshot.
    pub mount_dir: PathBuf,
    pub mount_type: MountType,
    /// The layerfs binary that serves a union mount.
    pub program: PathBuf,
}

/// A snapshot as containerd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub kind: Kind,
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: std::time::SystemTime,
    pub updated: std::time::SystemTime,
}

/// Bytes and inodes a snapshot's own tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// The snapshotter over one store.
pub struct Core {
    store: Store,
    dir: PathBuf,
    cfg: Config,
    records: Records,
}

fn info(name: &str, r: &Record) -> Info {
    Info {
        name: name.to_string(),
        kind: r.kind,
        parent: r.parent.clone(),
        labels: r.labels.clone().into_iter().collect(),
        created: r.created.time(),
        updated: r.updated.time(),
    }
}

fn not_found(key: &str) -> Error {
    Error::not_found(format!("snapshot {key} does not exist"))
}

/// The snapshots dir of a store.
pub(crate) fn snapshots_dir(store: &Store) -> PathBuf {
    store.root().join("snapshots")
}

/// The chain ids of a store's images: chain id → (diff-id, the parent's chain id).
fn image_chains(store: &Store) -> Result<HashMap<String, (Digest, String)>> {
    let mut out = HashMap::new();
    for img in store.images()?.images.values() {
        let mut chain = String::new();
        for l in &img.layers {
            let next = if chain.is_empty() {
                l.diff_id.to_string()
            } else {
                Digest::of(format!("{chain} {}", l.diff_id).as_bytes()).to_string()
            };
            out.insert(next.clone(), (l.diff_id, chain));
            chain = next;
        }
    }
    Ok(out)
}

impl Core {
    /// Open the snapshotter's records in `store` (creating the dirs).
    pub fn open(store: Store, cfg: Config) -> Result<Core> {
        let dir = snapshots_dir(&store);
        std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
        if cfg.mount_type == MountType::Fuse {
            std::fs::create_dir_all(&cfg.mount_dir)
                .ctx(format!("creating {}", cfg.mount_dir.display()))?;
        }
        let records = Records::load(&dir)?;
        Ok(Core {
            store,
            dir,
            cfg,
            records,
        })
    }

    fn save(&self, records: &Records) -> Result<()> {
        records.save(&self.dir)
    }

    /// Apply a change to a copy of the records and write it; the copy becomes current
    /// only when it is on disk.
    fn change(&mut self, f: impl FnOnce(&mut Records)) -> Result<()> {
        let mut next = self.records.clone();
        f(&mut next);
        self.save(&next)?;
        self.records = next;
        Ok(())
    }

    fn own_dir(&self, n: u64) -> PathBuf {
        self.dir.join(n.to_string())
    }

    fn tree_path(&self, t: Tree) -> PathBuf {
        match t {
            Tree::Dir(n) => self.own_dir(n).join("fs"),
            Tree::Layer(d) => self.store.layer_dir(&d),
        }
    }

    fn get(&self, key: &str) -> Result<&Record> {
        self.records
            .snapshots
            .get(key)
            .ok_or_else(|| not_found(key))
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(info(key, self.get(key)?))
    }

    pub fn list(&self) -> Vec<Info> {
        self.records
            .snapshots
            .iter()
            .map(|(k, r)| info(k, r))
            .collect()
    }

    /// `Prepare` (`readonly = false`) and `View`.
    pub fn create(
        &mut self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        readonly: bool,
    ) -> Result<Vec<Mount>> {
        log::debug!("create {key} (parent {parent:?}, readonly {readonly}, labels {labels:?})");
        if key.is_empty() {
            return Err(Error::invalid_input("snapshot key is empty"));
        }
        if self.records.snapshots.contains_key(key) {
            return Err(Error::already_exists(format!(
                "snapshot {key} already exists"
            )));
        }
        if !parent.is_empty() {
            let p = self.records.snapshots.get(parent).ok_or_else(|| {
                Error::not_found(format!("parent snapshot {parent} does not exist"))
            })?;
            if p.kind != Kind::Committed {
                return Err(Error::invalid_input(format!(
                    "parent {parent} is not a committed snapshot"
                )));
            }
        }
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        if let Some(target) = labels.get(LABEL_REF) {
            self.offer_target(target, parent, &labels)?;
        }
        let now = Stamp::now();
        let n = self.records.next_id + 1;
        let own = self.own_dir(n);
        // The dirs first: a crash before the record leaves a dir only, which Cleanup
        // removes.
        for sub in ["fs", "work"] {
            std::fs::create_dir_all(own.join(sub))
                .ctx(format!("creating {}", own.join(sub).display()))?;
        }
        let rec = Record {
            kind: if readonly { Kind::View } else { Kind::Active },
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            tree: Tree::Dir(n),
        };
        let saved = self.change(|r| {
            r.next_id = n;
            r.snapshots.insert(key.to_string(), rec);
        });
        if let Err(e) = saved {
            let _ = crate::container::remove_tree(&own);
            return Err(e);
        }
        match self.mounts(key) {
            Ok(m) => Ok(m),
            Err(e) => {
                // Nothing half-made stays behind a failed Prepare.
                let _ = self.remove(key);
                Err(e.context(format!("preparing snapshot {key}")))
            }
        }
    }

    /// A prepare naming the chain id it will be committed as (`containerd.io/snapshot.ref`):
    /// when that tree is here already (a layer of a layerfs image, or a snapshot
    /// containerd unpacked, in any namespace), record a committed snapshot over it and
    /// answer `AlreadyExists`, so containerd skips the unpacking and finds it by a walk
    /// (labelled with the chain id, with the parent it asked for).
    fn offer_target(
        &mut self,
        target: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let tree = match self.records.tree_of_chain(target) {
            Some(t) => Some(t),
            None => {
                let chains = image_chains(&self.store)?;
                match chains.get(target) {
                    Some((diff_id, parent_chain))
                        if self.chain_of(parent).as_deref() == Some(parent_chain.as_str())
                            && self.store.layer_exists(diff_id) =>
                    {
                        Some(Tree::Layer(*diff_id))
                    }
                    _ => None,
                }
            }
        };
        let Some(tree) = tree else {
            return Ok(());
        };
        let name = format!("{target}@{parent}");
        // Under the store lock: `rmi` and `prune` read the records under it, so the
        // layer is either gone (and not offered) or seen as used.
        let _lock = self.store.lock()?;
        if let Tree::Layer(d) = tree
            && !self.store.layer_exists(&d)
        {
            return Ok(());
        }
        if !self.records.snapshots.contains_key(&name) {
            let now = Stamp::now();
            let rec = Record {
                kind: Kind::Committed,
                parent: parent.to_string(),
                labels: labels.clone(),
                created: now,
                updated: now,
                tree,
            };
            self.change(|r| {
                r.snapshots.insert(name.clone(), rec);
            })?;
        }
        Err(Error::already_exists(format!(
            "target snapshot {target} exists"
        )))
    }

    /// The chain id a committed snapshot stands for ("" for no parent at all).
    fn chain_of(&self, key: &str) -> Option<String> {
        if key.is_empty() {
            return Some(String::new());
        }
        chain_id(key, self.records.snapshots.get(key)?)
    }

    /// `Mounts`: how containerd mounts an active snapshot or a view. A union mount the
    /// snapshotter keeps is mounted (again) when it is missing or its daemon is gone.
    pub fn mounts(&mut self, key: &str) -> Result<Vec<Mount>> {
        let rec = self.get(key)?.clone();
        if rec.kind == Kind::Committed {
            return Err(Error::in_use(format!(
                "failed to get active mount: requested snapshot {key} not active or view"
            )));
        }
        let trees = self
            .records
            .ancestors(&rec.parent)
            .map_err(|p| Error::not_found(format!("parent snapshot {p} of {key} is gone")))?;
        // Store layers hold metacopy stubs: their data is in the store's file objects.
        let stubs = trees.iter().any(|t| matches!(t, Tree::Layer(_)));
        let lowers = trees
            .into_iter()
            .map(|t| self.tree_path(t))
            .collect::<Vec<_>>();
        let Tree::Dir(n) = rec.tree else {
            return Err(Error::new(format!("snapshot {key} has no directory")));
        };
        let own = self.own_dir(n);
        let readonly = rec.kind == Kind::View;
        if lowers.is_empty() {
            return Ok(vec![Mount::bind(&own.join("fs"), readonly)]);
        }
        match self.cfg.mount_type {
            MountType::Overlay => {
                if readonly && lowers.len() == 1 && !stubs {
                    return Ok(vec![Mount::bind(&lowers[0], true)]);
                }
                let mut lowerdir = lowers
                    .iter()
                    .map(|l| escape_opt_path(l))
                    .collect::<Result<Vec<_>>>()?
                    .join(":");
                let mut options = vec!["index=off".to_string()];
                if stubs {
                    // The kernel follows the stubs' redirects into a data-only layer;
                    // a stub over a file of a lower layer needs `metacopy=on`.
                    lowerdir.push_str("::");
                    lowerdir.push_str(&escape_opt_path(&self.store.objects_dir())?);
                    options.push("metacopy=on".to_string());
                }
                if !readonly {
                    options.push(format!("workdir={}", own.join("work").display()));
                    options.push(format!("upperdir={}", own.join("fs").display()));
                }
                options.push(format!("lowerdir={lowerdir}"));
                Ok(vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }])
            }
            MountType::Fuse => {
                let upper = (!readonly).then(|| (own.join("fs"), own.join("work")));
                let mp = self.cfg.mount_dir.join(n.to_string());
                // Store layers hold stubs: their data is in the store's file objects.
                let data = if stubs {
                    vec![self.store.objects_dir()]
                } else {
                    Vec::new()
                };
                mounts::ensure(&self.cfg.program, n, (&lowers, &data), upper.as_ref(), &mp)?;
                Ok(vec![Mount::bind(&mp, readonly)])
            }
        }
    }

    /// `Commit`: an active snapshot becomes the committed snapshot `name`; its upper
    /// dir is its tree from now on (nothing is copied).
    pub fn commit(&mut self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        log::debug!("commit {key} as {name} (labels {labels:?})");
        if name.is_empty() {
            return Err(Error::invalid_input("snapshot name is empty"));
        }
        let rec = self.get(key)?.clone();
        if rec.kind != Kind::Active {
            return Err(Error::in_use(format!(
                "failed to commit snapshot: snapshot \"{key}\" is not active"
            )));
        }
        if self.records.snapshots.contains_key(name) {
            return Err(Error::already_exists(format!(
                "snapshot {name} already exists"
            )));
        }
        let Tree::Dir(n) = rec.tree else {
            return Err(Error::new(format!("snapshot {key} has no directory")));
        };
        // Written through the union mount: it goes first, so the tree is complete.
        mounts::release(n, &self.cfg.mount_dir.join(n.to_string()))?;
        // Copies the daemon showed before they were on disk: settled before their
        // records go with the work dir.
        let own = self.own_dir(n);
        crate::overlay::settle_copy_ups(&own.join("fs"), &own.join("work"))?;
        let now = Stamp::now();
        let committed = Record {
            kind: Kind::Committed,
            labels: labels.into_iter().collect(),
            created: now,
            updated: now,
            ..rec
        };
        self.change(|r| {
            r.snapshots.remove(key);
            r.snapshots.insert(name.to_string(), committed);
        })?;
        let work = self.own_dir(n).join("work");
        if let Err(e) = crate::container::remove_tree(&work) {
            log::warn!("{e}");
        }
        if let Err(e) = self.share_committed(name, n) {
            log::warn!("snapshot {name}: keeping its own tree: {e}");
        }
        Ok(())
    }

    /// After a commit: when the chain id the new snapshot stands for is here already
    /// (containerd unpacked it in another namespace, or a layerfs image has it), the
    /// record moves onto that tree and the fresh copy goes. containerd checked the
    /// layer's diff-id while unpacking, so the two trees hold the same thing.
    fn share_committed(&mut self, name: &str, n: u64) -> Result<()> {
        let Some(chain) = self
            .records
            .snapshots
            .get(name)
            .and_then(|r| chain_id(name, r))
        else {
            return Ok(());
        };
        let other = self
            .records
            .snapshots
            .iter()
            .find(|(k, r)| {
                k.as_str() != name
                    && r.kind == Kind::Committed
                    && r.tree != Tree::Dir(n)
                    && chain_id(k, r).as_deref() == Some(chain.as_str())
            })
            .map(|(_, r)| r.tree);
        let _lock;
        let tree = match other {
            Some(t) => t,
            None => {
                let Some((diff_id, _)) = image_chains(&self.store)?.remove(&chain) else {
                    return Ok(());
                };
                _lock = self.store.lock()?;
                if !self.store.layer_exists(&diff_id) {
                    return Ok(());
                }
                Tree::Layer(diff_id)
            }
        };
        self.change(|r| {
            if let Some(rec) = r.snapshots.get_mut(name) {
                rec.tree = tree;
            }
        })?;
        if !self.records.uses_dir(n) {
            self.remove_own_dir(n);
        }
        log::debug!("snapshot {name} shares the tree of chain {chain}");
        Ok(())
    }

    /// `Remove`: the record goes first, then its mount and, when no other record
    /// shares it, its directory.
    pub fn remove(&mut self, key: &str) -> Result<()> {
        let rec = self.get(key)?.clone();
        if self.records.has_children(key) {
            return Err(Error::in_use(format!(
                "cannot remove snapshot {key}: other snapshots stand on it"
            )));
        }
        if let Tree::Dir(n) = rec.tree
            && rec.kind != Kind::Committed
        {
            mounts::release(n, &self.cfg.mount_dir.join(n.to_string()))?;
        }
        self.change(|r| {
            r.snapshots.remove(key);
        })?;
        if let Tree::Dir(n) = rec.tree
            && !self.records.uses_dir(n)
        {
            self.remove_own_dir(n);
        }
        Ok(())
    }

    fn remove_own_dir(&self, n: u64) {
        let own = self.own_dir(n);
        // Renamed aside first: a crash mid-removal leaves a leftover Cleanup finds.
        let aside = self.dir.join(format!("removing-{n}"));
        let target = match std::fs::rename(&own, &aside) {
            Ok(()) => aside,
            Err(_) => own,
        };
        if let Err(e) = crate::container::remove_tree(&target) {
            log::warn!("{e}");
        }
    }

    /// `Update`: only labels change (`labels` or `labels.NAME` field paths; none means
    /// all labels).
    pub fn update(
        &mut self,
        key: &str,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        let rec = self.get(key)?.clone();
        let mut next = rec.labels.clone();
        if paths.is_empty() {
            next = labels.into_iter().collect();
        } else {
            for p in paths {
                if p == "labels" {
                    next = labels.clone().into_iter().collect();
                } else if let Some(l) = p.strip_prefix("labels.") {
                    match labels.get(l) {
                        Some(v) => next.insert(l.to_string(), v.clone()),
                        None => next.remove(l),
                    };
                } else {
                    return Err(Error::invalid_input(format!(
                        "cannot update field {p} of snapshot {key}: only labels change"
                    )));
                }
            }
        }
        let updated = Record {
            labels: next,
            updated: Stamp::now(),
            ..rec
        };
        let out = info(key, &updated);
        self.change(|r| {
            r.snapshots.insert(key.to_string(), updated);
        })?;
        Ok(out)
    }

    /// `Usage`: what the snapshot's own tree holds (its upper dir while active).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.get(key)?;
        Ok(tree_usage(&self.tree_path(rec.tree)))
    }

    /// `Cleanup`: directories and mountpoints no record names (leftovers of calls cut
    /// short), and mounts of snapshots that are gone.
    pub fn cleanup(&mut self) -> Result<usize> {
        let mut n = 0;
        let rd = std::fs::read_dir(&self.dir).ctx(format!("reading {}", self.dir.display()))?;
        for e in rd {
            let e = e.ctx(format!("reading {}", self.dir.display()))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let keep = match name.parse::<u64>() {
                Ok(id) => self.records.uses_dir(id),
                Err(_) => !name.starts_with("removing-"),
            };
            if !keep {
                log::info!("cleanup: removing {}", e.path().display());
                if let Ok(id) = name.parse::<u64>() {
                    mounts::release(id, &self.cfg.mount_dir.join(id.to_string()))?;
                }
                crate::container::remove_tree(&e.path())?;
                n += 1;
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.cfg.mount_dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(id) = name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                let wanted = self
                    .records
                    .snapshots
                    .values()
                    .any(|r| r.tree == Tree::Dir(id) && r.kind != Kind::Committed);
                if !wanted {
                    log::info!("cleanup: removing the mountpoint {}", e.path().display());
                    mounts::release(id, &e.path())?;
                    let _ = std::fs::remove_dir(e.path());
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// After a restart: mount again what active snapshots and views had (a union
    /// mount whose daemon still runs is kept as it is). Returns how many were mounted.
    pub fn restore(&mut self) -> usize {
        if self.cfg.mount_type != MountType::Fuse {
            return 0;
        }
        let keys: Vec<String> = self
            .records
            .snapshots
            .iter()
            .filter(|(_, r)| r.kind != Kind::Committed && !r.parent.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        let mut n = 0;
        for k in keys {
            match self.mounts(&k) {
                Ok(_) => n += 1,
                Err(e) => log::warn!("snapshot {k}: {e}"),
            }
        }
        n
    }

    /// What the snapshots need from the store and hold themselves, for `system df`,
    /// `prune` and `rmi`.
    pub(crate) fn uses(store: &Store) -> Result<Vec<SnapshotUse>> {
        let dir = snapshots_dir(store);
        let records = Records::load(&dir)?;
        let mut out = Vec::new();
        for (key, r) in &records.snapshots {
            let layers = records
                .ancestors(&r.parent)
                .unwrap_or_default()
                .into_iter()
                .chain([r.tree])
                .filter_map(|t| match t {
                    Tree::Layer(d) => Some(d),
                    Tree::Dir(_) => None,
                })
                .collect();
            let tree = match r.tree {
                Tree::Dir(n) => dir.join(n.to_string()).join("fs"),
                Tree::Layer(d) => store.layer_dir(&d),
            };
            out.push(SnapshotUse {
                key: key.clone(),
                kind: r.kind,
                layers,
                tree,
            });
        }
        Ok(out)
    }
}

/// One snapshot as the store's accounting sees it.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotUse {
    pub key: String,
    pub kind: Kind,
    /// Store layers it stands on (its own tree included).
    pub layers: Vec<Digest>,
    /// Its own tree: a dir of its own, or the store layer it stands on (a tree two
    /// records share appears in both).
    pub tree: PathBuf,
}

/// Bytes on disk and inodes of a tree (`store::df::usage`).
pub(crate) fn tree_usage(path: &Path) -> Usage {
    let (size, inodes) = crate::store::df::usage(path);
    Usage { size, inodes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn core(tmp: &Path) -> Core {
        let store = Store::open(&tmp.join("store")).unwrap();
        Core::open(
            store,
            Config {
                mount_dir: tmp.join("mounts"),
                mount_type: MountType::Overlay,
                program: PathBuf::from("/nonexistent"),
            },
        )
        .unwrap()
    }

    fn kind(e: Error) -> ErrorKind {
        e.kind()
    }

    #[test]
    fn prepare_commit_view_remove() {
        let t = tempfile::tempdir().unwrap();
        let mut c = core(t.path());
        let m = c.create("a", "", HashMap::new(), false).unwrap();
        assert_eq!(m[0].kind, "bind");
        let fs = PathBuf::from(&m[0].source);
        std::fs::write(fs.join("f"), b"x").unwrap();
        c.commit("A", "a", HashMap::new()).unwrap();
        assert_eq!(c.stat("A").unwrap().kind, Kind::Committed);
        assert_eq!(kind(c.stat("a").unwrap_err()), ErrorKind::NotFound);
        let m = c.create("b", "A", HashMap::new(), false).unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
        let v = c.create("v", "A", HashMap::new(), true).unwrap();
        assert_eq!(v[0].kind, "bind", "a one-layer view is a read-only bind");
        assert!(v[0].options.contains(&"ro".to_string()));
        assert_eq!(PathBuf::from(&v[0].source), fs);
        assert!(c.usage("A").unwrap().size > 0);
        // Refusals change nothing.
        let before = c.list();
        assert_eq!(kind(c.remove("A").unwrap_err()), ErrorKind::InUse);
        assert_eq!(
            kind(c.commit("V", "v", HashMap::new()).unwrap_err()),
            ErrorKind::InUse
        );
        assert_eq!(
            kind(c.create("b", "A", HashMap::new(), false).unwrap_err()),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind(c.create("c", "nope", HashMap::new(), false).unwrap_err()),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(c.create("c", "b", HashMap::new(), false).unwrap_err()),
            ErrorKind::InvalidInput
        );
        assert_eq!(kind(c.mounts("A").unwrap_err()), ErrorKind::InUse);
        assert_eq!(kind(c.remove("zz").unwrap_err()), ErrorKind::NotFound);
        assert_eq!(
            kind(c.commit("A", "b", HashMap::new()).unwrap_err()),
            ErrorKind::AlreadyExists
        );
        assert_eq!(c.list(), before);
        c.remove("b").unwrap();
        c.remove("v").unwrap();
        c.remove("A").unwrap();
        assert!(c.list().is_empty());
        assert!(!fs.exists(), "the tree goes with its last record");
    }

    #[test]
    fn records_survive_a_reopen() {
        let t = tempfile::tempdir().unwrap();
        let mut c = core(t.path());
        c.create("a", "", HashMap::new(), false).unwrap();
        c.commit("A", "a", [("l".to_string(), "1".to_string())].into())
            .unwrap();
        drop(c);
        let c = core(t.path());
        let i = c.stat("A").unwrap();
        assert_eq!(i.labels.get("l").map(String::as_str), Some("1"));
    }

    #[test]
    fn update_changes_labels_only() {
        let t = tempfile::tempdir().unwrap();
        let mut c = core(t.path());
        c.create("a", "", [("x".into(), "1".into())].into(), false)
            .unwrap();
        let i = c
            .update("a", [("y".into(), "2".into())].into(), &["labels.y".into()])
            .unwrap();
        assert_eq!(i.labels.len(), 2);
        let i = c.update("a", HashMap::new(), &["labels.x".into()]).unwrap();
        assert_eq!(i.labels.keys().collect::<Vec<_>>(), vec!["y"]);
        assert_eq!(
            kind(
                c.update("a", HashMap::new(), &["parent".into()])
                    .unwrap_err()
            ),
            ErrorKind::InvalidInput
        );
        let i = c.update("a", HashMap::new(), &[]).unwrap();
        assert!(i.labels.is_empty());
    }

    #[test]
    fn a_known_chain_is_offered_without_unpacking() {
        let t = tempfile::tempdir().unwrap();
        let mut c = core(t.path());
        // Unpacked once in one namespace...
        let chain = Digest::of(b"layer").to_string();
        let labels: HashMap<String, String> = [(LABEL_REF.into(), chain.clone())].into();
        c.create("ns1/1/extract", "", labels.clone(), false)
            .unwrap();
        c.commit(&format!("ns1/2/{chain}"), "ns1/1/extract", labels.clone())
            .unwrap();
        // ...then asked for by another: a committed record over the same tree.
        let e = c
            .create("ns2/1/extract", "", labels.clone(), false)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let shared = c.stat(&format!("{chain}@")).unwrap();
        assert_eq!(shared.kind, Kind::Committed);
        assert_eq!(shared.labels.get(LABEL_REF), Some(&chain));
        assert!(
            c.stat("ns2/1/extract").is_err(),
            "no active snapshot was made"
        );
        // The tree stays until both records are gone.
        c.remove(&format!("ns1/2/{chain}")).unwrap();
        assert!(c.usage(&format!("{chain}@")).unwrap().inodes > 0);
        c.remove(&format!("{chain}@")).unwrap();
        assert_eq!(c.cleanup().unwrap(), 0);
    }

    #[test]
    fn a_chain_unpacked_twice_is_stored_once() {
        let t = tempfile::tempdir().unwrap();
        let mut c = core(t.path());
        let chain = Digest::of(b"layer").to_string();
        let mut dirs = Vec::new();
        for ns in ["a", "b"] {
            let m = c
                .create(
                    &format!("{ns}/1/extract {chain}"),
                    "",
                    HashMap::new(),
                    false,
                )
                .unwrap();
            let fs = PathBuf::from(&m[0].source);
            std::fs::write(fs.join("f"), ns).unwrap();
            c.commit(
                &format!("{ns}/2/{chain}"),
                &format!("{ns}/1/extract {chain}"),
                HashMap::new(),
            )
            .unwrap();
            dirs.push(fs);
        }
        assert!(dirs[0].is_dir());
        assert!(!dirs[1].exists(), "the second copy went");
        assert_eq!(
            c.usage(&format!("b/2/{chain}")).unwrap(),
            c.usage(&format!("a/2/{chain}")).unwrap()
        );
        c.remove(&format!("a/2/{chain}")).unwrap();
        assert!(dirs[0].is_dir(), "still used by b");
        c.remove(&format!("b/2/{chain}")).unwrap();
        assert!(!dirs[0].exists());
    }

    #[test]
    fn cleanup_removes_only_leftovers() {
        let t = tempfile::tempdir().unwrap();
        let mut c = core(t.path());
        c.create("a", "", HashMap::new(), false).unwrap();
        let dir = snapshots_dir(&c.store);
        std::fs::create_dir_all(dir.join("99/fs")).unwrap();
        std::fs::create_dir_all(dir.join("removing-5/fs")).unwrap();
        assert_eq!(c.cleanup().unwrap(), 2);
        assert!(dir.join("1/fs").is_dir());
        assert!(!dir.join("99").exists());
    }
}
