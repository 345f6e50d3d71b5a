//! Space accounting, as `docker system df` shows it: per image its size, the part it
//! shares with other images and the part only it uses; totals for images, layers, blobs
//! and containers; the sum of image sizes next to what the store really uses on disk.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::error::Result;
use crate::store::digest::Digest;
use crate::store::extract::INLINE_MAX;
use crate::store::images::ImageRecord;
use crate::store::layout::read_json;
use crate::store::objects;
use crate::store::tree::TreeEntry;
use crate::store::{ContainerUse, Store};
use crate::sys;

/// One image's share of the space.
#[derive(Debug, Clone)]
pub struct ImageUsage {
    pub record: ImageRecord,
    /// All its layers.
    pub size: u64,
    /// Layers that other images use too.
    pub shared: u64,
    /// Layers only this image uses.
    pub unique: u64,
    /// Bytes of its file objects that another image has too (through any layer: a
    /// rebuild of a base image shares files, not layers).
    pub files_shared: u64,
    pub containers: usize,
}

/// One layer's use.
#[derive(Debug, Clone)]
pub struct LayerUsage {
    pub diff_id: Digest,
    pub size: u64,
    /// Images that list it.
    pub images: usize,
    /// Whether a container needs it (directly or through its image).
    pub in_use: bool,
}

/// A row of the summary table.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub total: usize,
    pub active: usize,
    pub size: u64,
    pub reclaimable: u64,
}

#[derive(Debug, Clone, Default)]
pub struct DfReport {
    pub images: Vec<ImageUsage>,
    pub layers: Vec<LayerUsage>,
    pub image_totals: Totals,
    pub layer_totals: Totals,
    pub blob_totals: Totals,
    pub container_totals: Totals,
    /// Sum of every image's size, shared layers counted once per image.
    pub sum_of_image_sizes: u64,
    /// Bytes of layers used by more than one image (each counted once).
    pub shared_size: u64,
    /// File objects: named by an image's layer (active), and reclaimable ones (no layer
    /// names them); sizes are disk blocks.
    pub object_totals: Totals,
    /// Bytes the file store saves: file contents the layers name, less each once.
    pub files_saved: u64,
    /// Disk blocks under the store root.
    pub disk_usage: u64,
}

impl Store {
    /// The space report. `containers` comes from the caller (the store knows none).
    pub fn df(&self, containers: &[ContainerUse]) -> Result<DfReport> {
        let catalog = self.images()?;
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for d in self.layer_ids()? {
            let size = self
                .layer_record(&d)
                .ok()
                .flatten()
                .map(|r| r.size)
                .unwrap_or(0);
            sizes.insert(d, size);
        }
        let mut users: HashMap<Digest, usize> = HashMap::new();
        for r in catalog.images.values() {
            let distinct: HashSet<Digest> = r.layers.iter().map(|l| l.diff_id).collect();
            for d in distinct {
                *users.entry(d).or_default() += 1;
            }
        }
        let active_images: HashSet<Digest> = containers.iter().filter_map(|c| c.image).collect();
        let mut active_layers: HashSet<Digest> = containers
            .iter()
            .flat_map(|c| c.layers.iter().copied())
            .collect();
        for r in catalog.images.values() {
            if active_images.contains(&r.id) {
                active_layers.extend(r.layers.iter().map(|l| l.diff_id));
            }
        }
        let size_of = |d: &Digest| sizes.get(d).copied().unwrap_or(0);

        // The file objects each layer names (content larger than a stub's threshold,
        // present in the file store), with their sizes.
        let on_disk: HashMap<Digest, u64> = objects::list(&self.layout.objects_dir())?
            .into_iter()
            .collect();
        let mut layer_objects: HashMap<Digest, HashMap<Digest, u64>> = HashMap::new();
        let mut named_total = 0u64;
        for d in sizes.keys() {
            let tree: Vec<TreeEntry> = read_json(&self.layout.layer(d).join("tree.json"))
                .ok()
                .flatten()
                .unwrap_or_default();
            let mut objs = HashMap::new();
            for e in tree {
                if let Some(s) = e
                    .sha256
                    .filter(|s| e.kind == 'f' && on_disk.contains_key(s))
                    && e.size as usize > INLINE_MAX
                {
                    objs.insert(s, e.size);
                }
            }
            named_total += objs.values().sum::<u64>();
            layer_objects.insert(*d, objs);
        }
        let mut image_objects: Vec<HashMap<Digest, u64>> = Vec::new();
        let mut object_users: HashMap<Digest, usize> = HashMap::new();
        for r in catalog.sorted() {
            let mut objs = HashMap::new();
            for l in &r.layers {
                if let Some(o) = layer_objects.get(&l.diff_id) {
                    objs.extend(o.iter().map(|(d, s)| (*d, *s)));
                }
            }
            for d in objs.keys() {
                *object_users.entry(*d).or_default() += 1;
            }
            image_objects.push(objs);
        }

        let mut report = DfReport::default();
        for (r, objs) in catalog.sorted().into_iter().zip(&image_objects) {
            let files_shared = objs
                .iter()
                .filter(|(d, _)| object_users.get(d).copied().unwrap_or(0) > 1)
                .map(|(_, s)| *s)
                .sum();
            let distinct: HashSet<Digest> = r.layers.iter().map(|l| l.diff_id).collect();
            let size: u64 = distinct.iter().map(size_of).sum();
            let shared: u64 = distinct
                .iter()
                .filter(|d| users.get(d).copied().unwrap_or(0) > 1)
                .map(size_of)
                .sum();
            report.sum_of_image_sizes += size;
            report.images.push(ImageUsage {
                record: r.clone(),
                size,
                shared,
                unique: size - shared,
                files_shared,
                containers: containers.iter().filter(|c| c.image == Some(r.id)).count(),
            });
        }
        let mut ids: Vec<&Digest> = sizes.keys().collect();
        ids.sort();
        for d in ids {
            let n = users.get(d).copied().unwrap_or(0);
            report.layers.push(LayerUsage {
                diff_id: *d,
                size: size_of(d),
                images: n,
                in_use: active_layers.contains(d),
            });
        }
        report.shared_size = report
            .layers
            .iter()
            .filter(|l| l.images > 1)
            .map(|l| l.size)
            .sum();

        let image_layers: HashSet<Digest> = users.keys().copied().collect();
        report.image_totals = Totals {
            total: catalog.images.len(),
            active: catalog
                .images
                .values()
                .filter(|r| active_images.contains(&r.id))
                .count(),
            size: image_layers.iter().map(size_of).sum(),
            reclaimable: image_layers
                .iter()
                .filter(|d| !active_layers.contains(d))
                .map(size_of)
                .sum(),
        };
        report.layer_totals = Totals {
            total: report.layers.len(),
            active: report
                .layers
                .iter()
                .filter(|l| l.images > 0 || l.in_use)
                .count(),
            size: report.layers.iter().map(|l| l.size).sum(),
            reclaimable: report
                .layers
                .iter()
                .filter(|l| l.images == 0 && !l.in_use)
                .map(|l| l.size)
                .sum(),
        };
        let mut used_blobs = HashSet::new();
        for r in catalog.images.values() {
            used_blobs.insert(r.manifest_digest);
            used_blobs.insert(r.config_digest);
            used_blobs.extend(r.layers.iter().map(|l| l.blob));
        }
        let mut blob_totals = Totals::default();
        for b in self.blob_ids()? {
            let size = std::fs::metadata(self.blob_path(&b))
                .map(|m| m.len())
                .unwrap_or(0);
            blob_totals.total += 1;
            blob_totals.size += size;
            if used_blobs.contains(&b) {
                blob_totals.active += 1;
            } else {
                blob_totals.reclaimable += size;
            }
        }
        report.blob_totals = blob_totals;
        let named: HashSet<&Digest> = layer_objects.values().flat_map(|o| o.keys()).collect();
        let by_image: HashSet<&Digest> = image_objects.iter().flat_map(|o| o.keys()).collect();
        let mut object_totals = Totals::default();
        for (d, bytes) in &on_disk {
            object_totals.total += 1;
            object_totals.size += bytes;
            if by_image.contains(d) {
                object_totals.active += 1;
            }
            if !named.contains(d) {
                object_totals.reclaimable += bytes;
            }
        }
        // Each object counted once: its size in any layer naming it.
        let mut seen = HashSet::new();
        let distinct: u64 = layer_objects
            .values()
            .flat_map(|o| o.iter())
            .filter(|(d, _)| seen.insert(**d))
            .map(|(_, s)| *s)
            .sum();
        report.object_totals = object_totals;
        report.files_saved = named_total.saturating_sub(distinct);
        report.container_totals = Totals {
            total: containers.len(),
            active: containers.len(),
            size: containers.iter().map(|c| c.size).sum(),
            reclaimable: 0,
        };
        report.disk_usage = disk_usage(self.root());
        Ok(report)
    }
}

/// Disk blocks used by a path and everything below it on its filesystem (an object with
/// several names counted once; mounts below it, such as a mounted container or image,
/// are not entered).
pub(crate) fn disk_usage(path: &Path) -> u64 {
    usage(path).0
}

/// Disk blocks (in bytes) and objects under a path, the path itself included (an
/// object with several names counted once): what containerd's `Usage` reports.
pub(crate) fn usage(path: &Path) -> (u64, u64) {
    let Ok(fd) = sys::open_root_dir(path) else {
        return std::fs::symlink_metadata(path)
            .map(|m| (std::os::unix::fs::MetadataExt::blocks(&m) * 512, 1))
            .unwrap_or((0, 0));
    };
    let Ok(st) = sys::stat_fd(fd.as_fd()) else {
        return (0, 0);
    };
    let (mut bytes, mut objects) = (st.st_blocks as u64 * 512, 1);
    walk_below(
        fd.as_fd(),
        st.st_dev,
        &mut |st| {
            bytes += st.st_blocks as u64 * 512;
            objects += 1;
        },
        &mut HashSet::new(),
    );
    (bytes, objects)
}

/// Bytes of file data below a directory (hard links counted once), as docker's
/// `SizeRw`.
pub(crate) fn data_size(root: &Path) -> u64 {
    let Ok(fd) = sys::open_root_dir(root) else {
        return 0;
    };
    let Ok(st) = sys::stat_fd(fd.as_fd()) else {
        return 0;
    };
    let mut total = 0;
    walk_below(
        fd.as_fd(),
        st.st_dev,
        &mut |st| {
            if sys::mode_type(st.st_mode) == libc::S_IFREG {
                total += st.st_size as u64;
            }
        },
        &mut HashSet::new(),
    );
    total
}

/// Visit everything below `dir` on the filesystem `dev`, never following symlinks or
/// entering mounts; an object with several names is visited once, what cannot be read
/// not at all.
fn walk_below(
    dir: BorrowedFd<'_>,
    dev: u64,
    visit: &mut dyn FnMut(&sys::Stat),
    seen: &mut HashSet<(u64, u64)>,
) {
    let Ok(entries) = sys::read_dir_all(dir) else {
        return;
    };
    for e in entries {
        let Ok(st) = sys::stat_at(dir, &e.name) else {
            continue;
        };
        if st.st_dev != dev {
            continue;
        }
        let is_dir = sys::is_dir_mode(st.st_mode);
        if !is_dir && st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        visit(&st);
        if is_dir && let Ok(sub) = sys::open_dir_path(dir, &e.name) {
            walk_below(sub.as_fd(), dev, visit, seen);
        }
    }
}
