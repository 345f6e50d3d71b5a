//! Staging: what an import (or a pull, or a commit) produces is written into a private
//! dir under `tmp/` and becomes visible only when the whole image checked out. Then the
//! staged blobs and layer dirs are renamed into place after one `syncfs`, and the image
//! record is written. A failure drops the staging dir; a crash leaves only that dir,
//! which the next command removes.
//!
//! Also here: the per-layer progress events that staging a layer reports, and the
//! records (`tree.json`, `layer.json`) written next to a freshly extracted tree.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::store::digest::Digest;
use crate::store::extract::{ExtractOptions, Extracted, ObjectDirs};
use crate::store::images::{ImageCatalog, ImageRecord};
use crate::store::layout::sync_dir;
use crate::store::lock::StoreLock;
use crate::store::objects;
use crate::store::{LayerRecord, Store, now_secs};
use crate::store::{tarsplit, tree};
use crate::sys::{self, Errno, RenameFlags};

/// Per-layer progress, for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEvent {
    /// The layer is in the store already: nothing read.
    Exists,
    /// The layer is in the store, but this blob was not: the blob was read and stored.
    BlobStored,
    /// Reading starts; `size` is the blob size.
    Start { size: u64 },
    /// Bytes of the blob read so far.
    Progress { done: u64 },
    /// Extracted and verified (staged until the whole image is).
    Extracted { size: u64, entries: u64 },
    /// Pulled partially (zstd:chunked), extracted and verified: `fetched` of the blob's
    /// `of` bytes in `requests` range requests; `from_store` of its `files` files with
    /// content came from the store; `later` are left to fetch when opened (a lazy pull).
    PartialPull {
        fetched: u64,
        of: u64,
        requests: u64,
        from_store: u64,
        files: u64,
        later: u64,
    },
}

impl LayerEvent {
    /// A layer is extracted, as its record says.
    pub(super) fn extracted(rec: &LayerRecord) -> LayerEvent {
        LayerEvent::Extracted {
            size: rec.size,
            entries: rec.entries,
        }
    }
}

/// Receives progress; called from the import's threads.
pub trait ImportObserver: Sync {
    fn layer(&self, diff_id: &Digest, event: LayerEvent);
    /// Free-form notes ("format: oci-archive").
    fn note(&self, _msg: &str) {}
}

/// An observer that shows nothing.
pub struct Quiet;
impl ImportObserver for Quiet {
    fn layer(&self, _: &Digest, _: LayerEvent) {}
}

/// The staging area of one import, removed when dropped.
pub(super) struct Stage {
    pub(super) dir: PathBuf,
    pub(super) blobs: HashSet<Digest>,
    pub(super) layers: HashMap<Digest, LayerRecord>,
    n: u64,
}

impl Stage {
    pub(super) fn new(store: &Store) -> Result<Stage> {
        let dir = store.layout.new_tmp_dir("import")?;
        for d in ["blobs", "layers", "objects"] {
            fs::create_dir(dir.join(d)).ctx(format!("creating {}", dir.join(d).display()))?;
        }
        Ok(Stage {
            dir,
            blobs: HashSet::new(),
            layers: HashMap::new(),
            n: 0,
        })
    }

    pub(super) fn blob(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join(d.hex())
    }

    pub(super) fn layer(&self, d: &Digest) -> PathBuf {
        self.dir.join("layers").join(d.hex())
    }

    /// Where this import's new file objects go (flat, by hex digest).
    pub(super) fn objects(&self) -> PathBuf {
        self.dir.join("objects")
    }

    /// How this import extracts layers: the store's options, with its file objects.
    pub(super) fn extract_options(&self, store: &Store) -> ExtractOptions {
        let mut o = store.extract.clone();
        if o.objects.is_some() {
            o.objects = Some(ObjectDirs {
                store: store.layout.objects_dir(),
                staged: self.objects(),
            });
        }
        o
    }

    pub(super) fn incoming(&mut self) -> PathBuf {
        self.n += 1;
        self.dir.join(format!("incoming-{}", self.n))
    }

    /// Stage a small blob (manifest, config) unless the store has it.
    pub(super) fn put_blob(&mut self, store: &Store, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        if store.blob_path(&d).is_file() || self.blobs.contains(&d) {
            return Ok(d);
        }
        let p = self.blob(&d);
        fs::write(&p, data).ctx(format!("writing {}", p.display()))?;
        self.blobs.insert(d);
        Ok(d)
    }

    /// Keep the blob streamed into `incoming` under its digest, unless the store or the
    /// stage has it already (then this copy is dropped). Returns whether it was new.
    pub(super) fn adopt_blob(
        &mut self,
        store: &Store,
        incoming: &Path,
        digest: Digest,
    ) -> Result<bool> {
        // A tar blob of a layer staged with its record is rebuilt from it, not kept.
        let rebuilt = self.layers.contains_key(&digest)
            && self.layer(&digest).join(tarsplit::FILE_NAME).is_file();
        if rebuilt || store.has_blob(&digest) || self.blobs.contains(&digest) {
            let _ = fs::remove_file(incoming);
            return Ok(false);
        }
        fs::rename(incoming, self.blob(&digest)).ctx(format!("renaming {}", incoming.display()))?;
        self.blobs.insert(digest);
        Ok(true)
    }

    /// Record a layer extracted and checked in its staged place; returns its size.
    pub(super) fn record_layer(&mut self, rec: LayerRecord) -> u64 {
        let size = rec.size;
        self.layers.insert(rec.diff_id, rec);
        size
    }

    /// Move a layer dir finished elsewhere in the stage (`work`) to its staged place and
    /// record it; returns its size.
    pub(super) fn adopt_layer(&mut self, work: &Path, rec: LayerRecord) -> Result<u64> {
        fs::rename(work, self.layer(&rec.diff_id)).ctx(format!("renaming {}", work.display()))?;
        Ok(self.record_layer(rec))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some((parent, name)) = self.dir.parent().zip(self.dir.file_name())
            && let Ok(fd) = sys::open_root_dir(parent)
        {
            let _ = sys::remove_tree(fd.as_fd(), name);
        }
    }
}

impl Store {
    /// Move everything staged into place: data synced first, then renamed, so a layer
    /// dir under its final name is always complete.
    pub(super) fn commit_stage(&self, stage: &Stage, _lock: &StoreLock) -> Result<()> {
        if stage.blobs.is_empty() && stage.layers.is_empty() {
            return Ok(());
        }
        let sd = File::open(&stage.dir).ctx(format!("opening {}", stage.dir.display()))?;
        sys::syncfs(sd.as_fd()).ctx("syncing the store")?;
        // Objects first: a layer in place never names a missing object.
        objects::place_staged(&stage.objects(), &self.layout.objects_dir())?;
        let blobs_src =
            sys::open_root_dir(&stage.dir.join("blobs")).ctx("opening the staged blobs")?;
        let blobs_dst = sys::open_root_dir(&self.layout.blobs_dir()).ctx("opening the blob dir")?;
        for b in &stage.blobs {
            place(blobs_src.as_fd(), blobs_dst.as_fd(), &b.hex())?;
        }
        let layers_src =
            sys::open_root_dir(&stage.dir.join("layers")).ctx("opening the staged layers")?;
        let layers_dst =
            sys::open_root_dir(&self.layout.layers_dir()).ctx("opening the layer dir")?;
        for l in stage.layers.keys() {
            place(layers_src.as_fd(), layers_dst.as_fd(), &l.hex())?;
        }
        sync_dir(&self.layout.blobs_dir())?;
        sync_dir(&self.layout.layers_dir())?;
        Ok(())
    }

    /// Record a freshly extracted layer: `tree.json` for `system check`, `layer.json`.
    pub(super) fn finish_layer(
        &self,
        layer_dir: &Path,
        diff_id: &Digest,
        x: &Extracted,
    ) -> Result<LayerRecord> {
        let diff = layer_dir.join("diff");
        let fd = sys::open_root_dir(&diff).ctx(format!("opening {}", diff.display()))?;
        let scan = tree::scan_tree(fd.as_fd(), &x.file_hashes)
            .ctx(format!("recording the tree of layer {diff_id}"))?;
        let rec = LayerRecord {
            diff_id: *diff_id,
            size: scan.size,
            entries: scan.entries.len() as u64,
            created: now_secs(),
        };
        if let Some(split) = &x.split {
            // Only files the tree keeps: an object the record names is never pruned
            // while the layer lives.
            let kept: HashSet<&Digest> = x.file_hashes.values().collect();
            if split.complete() && split.objects().all(|d| kept.contains(&d)) {
                split.write(&layer_dir.join(tarsplit::FILE_NAME))?;
            }
        }
        let tree = serde_json::to_vec(&scan.entries)
            .map_err(|e| Error::new(format!("encoding the tree of layer {diff_id}: {e}")))?;
        fs::write(layer_dir.join("tree.json"), tree)
            .ctx(format!("writing {}", layer_dir.display()))?;
        let meta = serde_json::to_vec_pretty(&rec)
            .map_err(|e| Error::new(format!("encoding layer {diff_id}: {e}")))?;
        fs::write(layer_dir.join("layer.json"), meta)
            .ctx(format!("writing {}", layer_dir.display()))?;
        Ok(rec)
    }
}

/// Rename `name` from one dir to another unless the target exists (then the staged copy
/// is identical content and is dropped with the staging dir).
fn place(
    src: std::os::fd::BorrowedFd<'_>,
    dst: std::os::fd::BorrowedFd<'_>,
    name: &str,
) -> Result<()> {
    let n = std::ffi::OsStr::new(name);
    match sys::rename_at(src, n, dst, n, RenameFlags::NOREPLACE) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(Errno::NOTEMPTY) => Ok(()),
        Err(e) => Err(Error::from(e).context(format!("moving {name} into the store"))),
    }
}

/// Insert or update an image record; returns the stored record.
pub(super) fn upsert(
    catalog: &mut ImageCatalog,
    rec: &mut ImageRecord,
    tags: &[String],
) -> ImageRecord {
    let key = rec.id.hex();
    if let Some(old) = catalog.images.get(&key) {
        rec.tags = old.tags.clone();
        rec.imported = old.imported;
    }
    catalog.images.insert(key, rec.clone());
    for t in tags {
        catalog.set_tag(&rec.id, t);
    }
    catalog.get(&rec.id).cloned().expect("just inserted")
}
