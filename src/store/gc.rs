//! Removing things: images (`rmi`), unused layers and blobs (`system prune`), leftovers
//! of interrupted commands, and damaged layers (`system check --repair`).
//!
//! A layer dir is deleted only when no image and no container needs it; a blob only when
//! no image refers to it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::AsFd;

use crate::error::{Error, IoContext, Result};
use crate::store::df::disk_usage;
use crate::store::digest::{Digest, Hasher};
use crate::store::images::{ImageCatalog, ImageRecord};
use crate::store::layout::{Layout, read_json};
use crate::store::lock::StoreLock;
use crate::store::objects;
use crate::store::tree::{self, TreeEntry};
use crate::store::{ContainerUse, Store};
use crate::sys;

/// Remove everything under `tmp/` (only ever called with the lock held, so nothing there
/// belongs to a live command).
pub(crate) fn remove_leftovers(layout: &Layout, _lock: &StoreLock) -> Result<usize> {
    let tmp = layout.tmp_dir();
    let fd = match sys::open_root_dir(&tmp) {
        Ok(fd) => fd,
        Err(sys::Errno::NOENT) => return Ok(0),
        Err(e) => return Err(Error::from(e).context(format!("opening {}", tmp.display()))),
    };
    let entries = sys::read_dir_all(fd.as_fd()).ctx(format!("reading {}", tmp.display()))?;
    for e in &entries {
        sys::remove_tree(fd.as_fd(), &e.name).ctx(format!(
            "removing the leftover {}",
            tmp.join(&e.name).display()
        ))?;
    }
    Ok(entries.len())
}

/// An image `rmi` is about to delete: the name it was given as, and its record.
pub(crate) type Doomed = (String, ImageRecord);

/// What `rmi` did, in order, for the caller to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RmiEvent {
    Untagged(String),
    /// An image record removed.
    Deleted(Digest),
    /// A layer dir removed.
    DeletedLayer(Digest),
}

/// What `system prune` removed.
#[derive(Debug, Default, Clone)]
pub struct PruneReport {
    pub images: Vec<Digest>,
    pub layers: Vec<Digest>,
    pub blobs: Vec<Digest>,
    /// File objects removed (no layer named them any more).
    pub objects: usize,
    pub leftovers: usize,
    /// Bytes freed (disk blocks).
    pub reclaimed: u64,
}

/// What `system check` found.
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    pub layers_checked: usize,
    pub blobs_checked: usize,
    /// Damaged layers with what is wrong, one line each.
    pub damaged_layers: Vec<(Digest, Vec<String>)>,
    pub damaged_blobs: Vec<Digest>,
    /// File objects checked, and those whose bytes no longer hash to their name.
    pub objects_checked: usize,
    pub damaged_objects: Vec<Digest>,
    /// Images that need a layer or blob that is missing or damaged.
    pub broken_images: Vec<(Digest, Vec<String>)>,
    pub repaired: bool,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damaged_layers.is_empty()
            && self.damaged_blobs.is_empty()
            && self.damaged_objects.is_empty()
            && self.broken_images.is_empty()
    }
}

/// What `check` found of one file object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectState {
    Present,
    Missing,
    /// Its bytes no longer hash to its name.
    Damaged,
}

/// Layers and blobs that images or containers need.
fn in_use(
    catalog: &ImageCatalog,
    containers: &[ContainerUse],
) -> (HashSet<Digest>, HashSet<Digest>) {
    let mut layers = HashSet::new();
    let mut blobs = HashSet::new();
    for r in catalog.images.values() {
        blobs.insert(r.manifest_digest);
        blobs.insert(r.config_digest);
        for l in &r.layers {
            layers.insert(l.diff_id);
            blobs.insert(l.blob);
        }
    }
    for c in containers {
        layers.extend(c.layers.iter().copied());
    }
    (layers, blobs)
}

impl Store {
    fn remove_layer(&self, d: &Digest) -> Result<u64> {
        let p = self.layout.layer(d);
        let used = disk_usage(&p);
        let parent = sys::open_root_dir(&self.layout.layers_dir()).ctx("opening the layer dir")?;
        // Renamed aside first: a crash mid-removal leaves a leftover, not half a layer.
        let aside = crate::store::layout::unique_name("rm-layer");
        let tmp = sys::open_root_dir(&self.layout.tmp_dir()).ctx("opening the tmp dir")?;
        match sys::rename_at(
            parent.as_fd(),
            OsStr::new(&d.hex()),
            tmp.as_fd(),
            OsStr::new(&aside),
            sys::RenameFlags::empty(),
        ) {
            Ok(()) => {}
            Err(sys::Errno::NOENT) => return Ok(0),
            Err(e) => return Err(Error::from(e).context(format!("removing layer {d}"))),
        }
        sys::remove_tree(tmp.as_fd(), OsStr::new(&aside)).ctx(format!("removing layer {d}"))?;
        Ok(used)
    }

    fn remove_blob(&self, d: &Digest) -> Result<u64> {
        let p = self.layout.blob(d);
        let used = std::fs::symlink_metadata(&p)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(used),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(format!("removing blob {d}"), e)),
        }
    }

    /// Remove layers and blobs among `candidates_*` that nothing needs any more.
    fn collect(
        &self,
        catalog: &ImageCatalog,
        containers: &[ContainerUse],
        layers: &BTreeSet<Digest>,
        blobs: &BTreeSet<Digest>,
        report: &mut PruneReport,
    ) -> Result<()> {
        let (used_layers, used_blobs) = in_use(catalog, containers);
        for l in layers {
            if !used_layers.contains(l) && self.layout.layer(l).exists() {
                report.reclaimed += self.remove_layer(l)?;
                report.layers.push(*l);
            }
        }
        for b in blobs {
            if !used_blobs.contains(b) && self.layout.blob(b).exists() {
                report.reclaimed += self.remove_blob(b)?;
                report.blobs.push(*b);
            }
        }
        Ok(())
    }

    /// Remove the file objects no layer names (what removed layers left, and what a
    /// crash between placing an import's objects and its layers left). Under the lock:
    /// no import can place a layer meanwhile, and a layer under its final name names
    /// only objects in place.
    fn collect_objects(&self, _lock: &StoreLock, report: &mut PruneReport) -> Result<()> {
        let mut named: HashSet<Digest> = HashSet::new();
        for l in self.layer_ids()? {
            let tree: Vec<TreeEntry> = match read_json(&self.layout.layer(&l).join("tree.json")) {
                Ok(Some(t)) => t,
                // A layer whose record is unreadable keeps every object: nothing is
                // removed on a guess (`system check` reports the layer).
                _ => return Ok(()),
            };
            named.extend(
                tree.iter()
                    .filter(|e| e.kind == 'f')
                    .filter_map(|e| e.sha256),
            );
        }
        let dir = self.layout.objects_dir();
        for (d, _) in objects::list(&dir)? {
            if !named.contains(&d) {
                report.reclaimed += objects::remove(&dir, &d)?;
                report.objects += 1;
            }
        }
        Ok(())
    }

    /// `rmi`: untag or delete images. `containers` says what containers use (they keep
    /// their image unless `force`, and always keep their layers).
    pub fn remove_images(
        &self,
        names: &[String],
        force: bool,
        containers: &[ContainerUse],
    ) -> Result<Vec<RmiEvent>> {
        self.remove_images_with(names, force, &|| containers.to_vec(), &|_| Ok(()))
    }

    /// `remove_images`, asking what containers use once the store lock is held, so a
    /// container created meanwhile is seen. `release` is called under the lock, once
    /// every name has been checked and before anything changes, with the images about to
    /// be deleted (as named, and their records): the caller frees what it holds of them
    /// (image mounts), or refuses with an error, and then nothing changes.
    pub(crate) fn remove_images_with(
        &self,
        names: &[String],
        force: bool,
        containers: &dyn Fn() -> Vec<ContainerUse>,
        release: &dyn Fn(&[Doomed]) -> Result<()>,
    ) -> Result<Vec<RmiEvent>> {
        let lock = self.lock()?;
        let containers = &containers()[..];
        let mut catalog = self.images()?;
        let mut events = Vec::new();
        let mut freed_layers = BTreeSet::new();
        let mut freed_blobs = BTreeSet::new();
        // Check every name first: a refused name changes nothing.
        let mut plan = Vec::new();
        for name in names {
            let rec = catalog.resolve(name)?.clone();
            let by_tag = catalog.tag_named(name).filter(|t| rec.tags.contains(t));
            let last = by_tag.is_none() || rec.tags.len() <= 1;
            if last {
                let users: Vec<&str> = containers
                    .iter()
                    .filter(|c| c.image == Some(rec.id))
                    .map(|c| c.name.as_str())
                    .collect();
                if !users.is_empty() && !force {
                    return Err(Error::in_use(format!(
                        "image {name} ({}) is used by container {}; remove the container first or use --force",
                        rec.id.short(),
                        users.join(", ")
                    )));
                }
                let repos: BTreeSet<&str> = rec.repositories().collect();
                if by_tag.is_none() && repos.len() > 1 && !force {
                    return Err(Error::in_use(format!(
                        "image {} is tagged in several repositories ({}); remove the tags or use --force",
                        rec.id.short(),
                        rec.tags.join(", ")
                    )));
                }
            }
            plan.push((rec.id, by_tag, last));
        }
        let mut doomed: Vec<Doomed> = Vec::new();
        for ((id, _, last), name) in plan.iter().zip(names) {
            if *last && !doomed.iter().any(|(_, r)| r.id == *id) {
                let rec = catalog.get(id).cloned().expect("resolved above");
                doomed.push((name.clone(), rec));
            }
        }
        release(&doomed)?;
        for (id, by_tag, last) in plan {
            let Some(rec) = catalog.get(&id).cloned() else {
                continue;
            };
            if !last {
                let t = by_tag.expect("untag by tag");
                catalog
                    .images
                    .get_mut(&id.hex())
                    .expect("present")
                    .tags
                    .retain(|x| *x != t);
                events.push(RmiEvent::Untagged(t));
                continue;
            }
            for t in &rec.tags {
                events.push(RmiEvent::Untagged(t.clone()));
            }
            catalog.images.remove(&id.hex());
            events.push(RmiEvent::Deleted(id));
            freed_blobs.insert(rec.manifest_digest);
            freed_blobs.insert(rec.config_digest);
            for l in &rec.layers {
                freed_layers.insert(l.diff_id);
                freed_blobs.insert(l.blob);
            }
        }
        // Records first: a crash after this leaves unused layers for prune, never an
        // image whose layers are gone.
        self.write_images(&catalog, &lock)?;
        let mut report = PruneReport::default();
        self.collect(
            &catalog,
            containers,
            &freed_layers,
            &freed_blobs,
            &mut report,
        )?;
        if !report.layers.is_empty() {
            self.collect_objects(&lock, &mut report)?;
        }
        events.extend(report.layers.into_iter().map(RmiEvent::DeletedLayer));
        Ok(events)
    }

    /// `system prune`: remove leftovers, untagged images (all unused images with `all`)
    /// that no container uses, and every layer and blob nothing needs.
    pub fn prune(&self, all: bool, containers: &[ContainerUse]) -> Result<PruneReport> {
        self.prune_with(all, &|| containers.to_vec(), &|| Ok(Vec::new()))
    }

    /// `prune`, asking what containers use once the store lock is held, and which images
    /// are held otherwise (`held`: mounted images), which are kept too.
    pub(crate) fn prune_with(
        &self,
        all: bool,
        containers: &dyn Fn() -> Vec<ContainerUse>,
        held: &dyn Fn() -> Result<Vec<Digest>>,
    ) -> Result<PruneReport> {
        let lock = StoreLock::acquire(&self.layout, &*self.on_wait)?;
        let containers = &containers()[..];
        let mut report = PruneReport {
            leftovers: self.leftovers_removed + remove_leftovers(&self.layout, &lock)?,
            ..Default::default()
        };
        let mut catalog = self.images()?;
        let mut used: HashSet<Digest> = containers.iter().filter_map(|c| c.image).collect();
        used.extend(held()?);
        let doomed: Vec<Digest> = catalog
            .images
            .values()
            .filter(|r| !used.contains(&r.id) && (all || r.tags.is_empty()))
            .map(|r| r.id)
            .collect();
        for d in &doomed {
            catalog.images.remove(&d.hex());
        }
        if !doomed.is_empty() {
            self.write_images(&catalog, &lock)?;
        }
        report.images = doomed;
        let layers: BTreeSet<Digest> = self.layer_ids()?.into_iter().collect();
        let blobs: BTreeSet<Digest> = self.blob_ids()?.into_iter().collect();
        self.collect(&catalog, containers, &layers, &blobs, &mut report)?;
        self.collect_objects(&lock, &mut report)?;
        Ok(report)
    }

    /// `system check`: verify every layer dir against the tree recorded when it was
    /// extracted, and every blob against its digest. With `repair`, remove what is
    /// damaged (the images that need it must be imported again).
    pub fn check(&self, repair: bool) -> Result<CheckReport> {
        let lock = if repair { Some(self.lock()?) } else { None };
        let mut report = CheckReport::default();
        let mut bad_layers = HashSet::new();
        let mut bad_blobs = HashSet::new();
        // Each file object is hashed once, however many layers name it.
        let mut objects_seen: HashMap<Digest, ObjectState> = HashMap::new();
        for d in self.layer_ids()? {
            report.layers_checked += 1;
            let problems = self.layer_problems(&d, &mut objects_seen, true);
            if !problems.is_empty() {
                bad_layers.insert(d);
                report.damaged_layers.push((d, problems));
            }
        }
        report.objects_checked = objects_seen.len();
        report.damaged_objects = objects_seen
            .iter()
            .filter(|(_, s)| **s == ObjectState::Damaged)
            .map(|(d, _)| *d)
            .collect();
        report.damaged_objects.sort();
        for d in self.blob_ids()? {
            report.blobs_checked += 1;
            let p = self.layout.blob(&d);
            let ok = std::fs::File::open(&p)
                .and_then(|mut f| {
                    let mut h = Hasher::new();
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = std::io::Read::read(&mut f, &mut buf)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    Ok(h.finish() == d)
                })
                .unwrap_or(false);
            if !ok {
                bad_blobs.insert(d);
                report.damaged_blobs.push(d);
            }
        }
        let catalog = self.images()?;
        for r in catalog.images.values() {
            let mut why = Vec::new();
            for l in &r.layers {
                if bad_layers.contains(&l.diff_id) {
                    why.push(format!("layer {} is damaged", l.diff_id));
                } else if !self.layer_exists(&l.diff_id) {
                    why.push(format!("layer {} is missing", l.diff_id));
                }
                if bad_blobs.contains(&l.blob) {
                    why.push(format!("blob {} is damaged", l.blob));
                } else if !self.has_blob(&l.blob) {
                    why.push(format!("blob {} is missing", l.blob));
                }
            }
            for b in [r.manifest_digest, r.config_digest] {
                if bad_blobs.contains(&b) || !self.layout.blob(&b).is_file() {
                    why.push(format!("blob {b} is missing or damaged"));
                }
            }
            if !why.is_empty() {
                report.broken_images.push((r.id, why));
            }
        }
        if let Some(_lock) = lock {
            let objects = self.layout.objects_dir();
            for d in &report.damaged_objects {
                objects::remove(&objects, d)?;
            }
            for (d, _) in &report.damaged_layers {
                self.remove_layer(d)?;
            }
            for d in &report.damaged_blobs {
                self.remove_blob(d)?;
            }
            report.repaired = true;
        }
        Ok(report)
    }

    /// What is wrong with one layer dir (empty when it is intact): its tree against
    /// its record, the file objects its stubs name (present; not hashed here), and
    /// whether a tar blob kept as a record rebuilds.
    pub fn check_layer(&self, d: &Digest) -> Vec<String> {
        self.layer_problems(d, &mut HashMap::new(), false)
    }

    /// `check_layer`, recording the file objects seen in `objects` (and hashing each
    /// once with `hash`).
    fn layer_problems(
        &self,
        d: &Digest,
        objects: &mut HashMap<Digest, ObjectState>,
        hash: bool,
    ) -> Vec<String> {
        // A lazily pulled layer lacks the objects its record names until they are
        // fetched; its tar rebuilds (and is checked) once they are all here.
        let lazy = self.lazy_record(d).ok().flatten();
        let later: HashSet<Digest> = lazy
            .iter()
            .flat_map(|r| r.objects.iter().map(|o| o.digest))
            .collect();
        let complete = lazy
            .as_ref()
            .is_none_or(|r| r.missing(&self.layout.objects_dir()).is_empty());
        let mut problems = self.tree_problems(d, objects, hash, &later);
        if problems.is_empty() && complete && self.tar_split_path(d).is_file() {
            // Rebuilt and hashed as `save` would (the reader checks the digest).
            let res = self.open_blob(d).and_then(|(mut r, _)| {
                std::io::copy(&mut r, &mut std::io::sink())
                    .map_err(|e| Error::io("rebuilding the tar", e))
            });
            if let Err(e) = res {
                problems.push(format!("tar record: {e}"));
            }
        }
        let n = problems.len();
        if n > 20 {
            problems.truncate(20);
            problems.push(format!("… and {} more", n - 20));
        }
        problems
    }

    fn tree_problems(
        &self,
        d: &Digest,
        objects: &mut HashMap<Digest, ObjectState>,
        hash: bool,
        later: &HashSet<Digest>,
    ) -> Vec<String> {
        let dir = self.layout.layer(d);
        let tree: Vec<TreeEntry> = match read_json(&dir.join("tree.json")) {
            Ok(Some(t)) => t,
            Ok(None) => return vec!["tree.json is missing".into()],
            Err(e) => return vec![e.to_string()],
        };
        let diff = dir.join("diff");
        let fd = match sys::open_root_dir(&diff) {
            Ok(fd) => fd,
            Err(e) => return vec![format!("diff: {}", Error::from(e))],
        };
        match tree::scan_tree(fd.as_fd(), &Default::default()) {
            Ok(scan) => {
                let mut problems = tree::compare_trees(&tree, &scan.entries);
                let dir = self.layout.objects_dir();
                for (path, o) in &scan.stubs {
                    let state = *objects.entry(*o).or_insert_with(|| {
                        if !dir.join(objects::rel_path(o)).is_file() {
                            ObjectState::Missing
                        } else if !hash {
                            ObjectState::Present
                        } else {
                            match objects::verify(&dir, o) {
                                Ok(true) => ObjectState::Present,
                                Ok(false) => ObjectState::Damaged,
                                Err(_) => ObjectState::Missing,
                            }
                        }
                    });
                    match state {
                        ObjectState::Present => {}
                        ObjectState::Missing if later.contains(o) => {}
                        ObjectState::Missing => {
                            problems.push(format!("file {path}: object {o} is missing"))
                        }
                        ObjectState::Damaged => {
                            problems.push(format!("file {path}: object {o} is damaged"))
                        }
                    }
                }
                problems
            }
            Err(e) => vec![format!("reading the tree: {}", Error::from(e))],
        }
    }
}
