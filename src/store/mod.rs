//! The layer store: blobs and extracted layers kept once by digest, image records with
//! tags, space accounting and cleanup. See `layout` for the on-disk shape.
//!
//! The API is plain-typed and UI-free: the CLI and tests call it directly. Every method
//! that changes the store takes the store lock for its duration; readers take none.
//! Store code never calls container code: callers that know about containers pass what
//! they use as `ContainerUse` values, and what else holds images (read-only image mounts)
//! as callbacks to `rmi` and `system prune` (see `gc`).

pub(crate) mod archive;
pub(crate) mod df;
pub(crate) mod digest;
pub(crate) mod estargz;
pub(crate) mod estargz_index;
pub mod extract;
pub(crate) mod gc;
pub(crate) mod idmode;
pub(crate) mod images;
pub mod import;
pub(crate) mod ingest;
pub(crate) mod layout;
pub(crate) mod lazy;
pub(crate) mod lock;
pub(crate) mod migrate;
pub(crate) mod objects;
pub(crate) mod parallel;
mod partial;
mod partial_estargz;
pub(crate) mod plan;
pub(crate) mod recompress;
pub(crate) mod save;
mod stage;
mod stream;
pub(crate) mod tarsplit;
pub(crate) mod toc;
pub(crate) mod tree;
pub(crate) mod zstd_chunked;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use archive::{Compression, Format};
pub use df::{DfReport, ImageUsage, LayerUsage, Totals};
pub use digest::Digest;
pub use gc::{CheckReport, PruneReport, RmiEvent};
pub(crate) use images::Reference;
pub use images::{ImageCatalog, ImageRecord, LayerRef};
pub use import::{ExpansionLimit, ImportObserver, ImportOptions, Imported, LayerEvent};
pub use migrate::MigrateReport;

use crate::error::{Error, Result};
use extract::ExtractOptions;
use layout::{Layout, read_json};
use lock::StoreLock;

/// Summary of one layer, `layers/sha256/<hex>/layer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: Digest,
    /// Bytes of file data (hard links counted once).
    pub size: u64,
    /// Objects in the tree, the root included.
    pub entries: u64,
    /// When it was extracted (seconds since the epoch).
    pub created: u64,
}

/// A rebuilt blob in `tmp/`, removed when dropped.
#[derive(Debug)]
pub struct TempBlob(PathBuf);

impl Drop for TempBlob {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a container needs from the store, as the container code reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerUse {
    /// Name (or id) shown in messages.
    pub name: String,
    /// The image it was created from, when that is known.
    pub image: Option<Digest>,
    /// The layers its mount uses: kept even when the image record goes.
    pub layers: Vec<Digest>,
    /// Bytes in its writable layer.
    pub size: u64,
}

/// An open store.
pub struct Store {
    layout: Layout,
    extract: ExtractOptions,
    expansion: ExpansionLimit,
    on_wait: Box<dyn Fn() + Send + Sync>,
    /// Leftovers removed when the store was opened.
    leftovers_removed: usize,
    /// Made with subordinate ids: its files are read and written in a user namespace.
    subids: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.layout.root)
            .finish()
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Open (creating if needed) the store at `root`. When no other command holds the
    /// lock, leftovers of interrupted commands are removed on the way.
    pub fn open(root: &Path) -> Result<Store> {
        Self::open_with_ids(root, crate::sys::IdMaps::of_this_process().as_ref())
    }

    /// Open a store used with the maps of a user namespace (`None`: none): a store
    /// records the maps it was made with and is refused with others (see `idmode`).
    /// From outside the namespace its store commands run in, the caller names the maps.
    pub fn open_with_ids(root: &Path, ids: Option<&crate::sys::IdMaps>) -> Result<Store> {
        idmode::check_or_record(root, ids)?;
        let layout = Layout::new(root);
        layout.create()?;
        crate::sys::raise_nofile_limit();
        let mut store = Store {
            layout,
            extract: ExtractOptions::for_this_process(),
            expansion: ExpansionLimit::from_env()?,
            on_wait: Box::new(|| {}),
            leftovers_removed: 0,
            subids: ids.is_some(),
        };
        if let Some(lock) = StoreLock::try_acquire(&store.layout)? {
            store.leftovers_removed = gc::remove_leftovers(&store.layout, &lock)?;
        }
        Ok(store)
    }

    /// Called once when a command has to wait for another one's lock.
    pub(crate) fn set_lock_wait_notice(&mut self, f: impl Fn() + Send + Sync + 'static) {
        self.on_wait = Box::new(f);
    }

    /// Extract as if unprivileged (OCI whiteouts kept, owners not set): for tests.
    pub fn set_extract_options(&mut self, opts: ExtractOptions) {
        self.extract = opts;
    }

    /// How far a compressed layer may expand (see `ExpansionLimit`); tests lower it.
    pub fn set_expansion_limit(&mut self, limit: ExpansionLimit) {
        self.expansion = limit;
    }

    /// Whether the store's files are owned by subordinate ids (see `idmode`): mounts serve
    /// them from a user namespace.
    pub(crate) fn subids(&self) -> bool {
        self.subids
    }

    pub(crate) fn root(&self) -> &Path {
        &self.layout.root
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Take the store lock, then clear what interrupted commands left.
    pub(crate) fn lock(&self) -> Result<StoreLock> {
        let lock = StoreLock::acquire(&self.layout, &*self.on_wait)?;
        gc::remove_leftovers(&self.layout, &lock)?;
        Ok(lock)
    }

    /// All image records.
    pub fn images(&self) -> Result<ImageCatalog> {
        Ok(read_json(&self.layout.images_index())?.unwrap_or_default())
    }

    pub(crate) fn write_images(&self, catalog: &ImageCatalog, _lock: &StoreLock) -> Result<()> {
        let mut catalog = catalog.clone();
        catalog.version = 1;
        self.layout
            .write_json_atomic(&self.layout.images_index(), &catalog)
    }

    /// The image a user named (tag, `name@digest`, id or id prefix).
    pub fn image(&self, name: &str) -> Result<ImageRecord> {
        self.images()?.resolve(name).cloned()
    }

    pub(crate) fn layer_exists(&self, diff_id: &Digest) -> bool {
        self.layout.layer(diff_id).join("layer.json").is_file()
    }

    pub(crate) fn layer_record(&self, diff_id: &Digest) -> Result<Option<LayerRecord>> {
        read_json(&self.layout.layer(diff_id).join("layer.json"))
    }

    /// Every layer dir in the store.
    pub fn layer_ids(&self) -> Result<Vec<Digest>> {
        list_hex_dir(&self.layout.layers_dir())
    }

    /// Every blob in the store.
    pub fn blob_ids(&self) -> Result<Vec<Digest>> {
        list_hex_dir(&self.layout.blobs_dir())
    }

    /// The lower dirs to mount an image with: top layer first (as `lowerdir=` wants;
    /// manifests list the base first). Fails naming the first missing layer.
    pub fn layer_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>> {
        let mut out = Vec::with_capacity(image.layers.len());
        for l in image.layers.iter().rev() {
            if !self.layer_exists(&l.diff_id) {
                return Err(Error::not_found(format!(
                    "layer {} of image {} is missing from the store; import the image again",
                    l.diff_id,
                    image.id.short()
                )));
            }
            out.push(self.layout.layer_diff(&l.diff_id));
        }
        Ok(out)
    }

    /// The file store (`ROOT/objects`): the data-only lower layer every mount of a
    /// store layer needs, since the layer trees hold metacopy stubs that name its files.
    pub fn objects_dir(&self) -> PathBuf {
        self.layout.objects_dir()
    }

    /// The extracted tree of one layer.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layout.layer_diff(diff_id)
    }

    /// A stored blob, whole (manifests and configs).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.layout.blob(d);
        std::fs::read(&p).map_err(|e| Error::io(format!("blob {d} ({})", p.display()), e))
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.layout.blob(d)
    }

    /// The record a tar blob is rebuilt from (a layer whose blob is its tar: the
    /// blob's digest is the diff-id), when the store keeps that instead of the blob.
    pub(crate) fn tar_split_path(&self, d: &Digest) -> PathBuf {
        self.layout.layer(d).join(tarsplit::FILE_NAME)
    }

    /// Whether the store has a blob: as a file, as a tar it can rebuild, or as the
    /// zstd:chunked blob of a layer pulled partially (rebuilt by encoding its tar).
    pub(crate) fn has_blob(&self, d: &Digest) -> bool {
        self.layout.blob(d).is_file()
            || self.tar_split_path(d).is_file()
            || self.partial_layer_of(d).is_some()
    }

    /// A blob's bytes and size: the file, or the tar rebuilt from its record and the
    /// file objects.
    pub(crate) fn open_blob(&self, d: &Digest) -> Result<(Box<dyn std::io::Read + Send>, u64)> {
        let p = self.layout.blob(d);
        match std::fs::File::open(&p) {
            Ok(f) => {
                let len = f
                    .metadata()
                    .map_err(|e| Error::io(format!("blob {d}"), e))?
                    .len();
                return Ok((Box::new(f), len));
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("blob {d} ({})", p.display()), e));
            }
            Err(_) => {}
        }
        let rec = self.tar_split_path(d);
        if !rec.is_file() {
            if let Some(l) = self.partial_layer_of(d) {
                // Read through a handle; the file goes with the guard.
                let (path, _guard, len) = self.rebuild_partial_blob(&l)?;
                let f = std::fs::File::open(&path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                return Ok((Box::new(f), len));
            }
            return Err(Error::not_found(format!(
                "blob {d} is missing from the store"
            )));
        }
        self.lazy_complete(d)?;
        let split = tarsplit::TarSplit::read(&rec)?;
        let len = split.len();
        Ok((
            Box::new(tarsplit::Verified::new(
                tarsplit::Reader::new(split, &self.layout.objects_dir()),
                *d,
                len,
            )),
            len,
        ))
    }

    /// A blob as a file (what an upload that may seek and retry needs): the stored file,
    /// or the rebuilt tar written to a temp file under `tmp/`, removed when the returned
    /// guard goes.
    pub(crate) fn blob_file(&self, d: &Digest) -> Result<(PathBuf, Option<TempBlob>)> {
        let p = self.layout.blob(d);
        if p.is_file() {
            return Ok((p, None));
        }
        if !self.tar_split_path(d).is_file()
            && let Some(l) = self.partial_layer_of(d)
        {
            let (path, guard, _) = self.rebuild_partial_blob(&l)?;
            return Ok((path, Some(guard)));
        }
        let (mut r, _) = self.open_blob(d)?;
        let tmp = TempBlob(self.layout.tmp_dir().join(layout::unique_name("blob")));
        let mut f = std::fs::File::create(&tmp.0)
            .map_err(|e| Error::io(format!("creating {}", tmp.0.display()), e))?;
        std::io::copy(&mut r, &mut f).map_err(|e| Error::io(format!("blob {d}"), e))?;
        Ok((tmp.0.clone(), Some(tmp)))
    }

    /// A blob's size (the rebuilt tar's, for a blob kept as a record).
    pub(crate) fn blob_len(&self, d: &Digest) -> Option<u64> {
        if let Ok(m) = std::fs::metadata(self.layout.blob(d)) {
            return Some(m.len());
        }
        tarsplit::TarSplit::read(&self.tar_split_path(d))
            .ok()
            .map(|s| s.len())
    }

    /// Give an image another tag (taking it from the image that had it).
    pub(crate) fn tag(&self, src: &str, new: &str) -> Result<ImageRecord> {
        let tag = Reference::parse_tag(new)?;
        let lock = self.lock()?;
        let mut catalog = self.images()?;
        let id = catalog.resolve(src)?.id;
        catalog.set_tag(&id, &tag);
        self.write_images(&catalog, &lock)?;
        Ok(catalog.get(&id).cloned().expect("just tagged"))
    }
}

fn list_hex_dir(dir: &Path) -> Result<Vec<Digest>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if let Some(d) = e.file_name().to_str().and_then(Digest::from_hex) {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}
