//! Layers pulled lazily: the tree is in place (built from the layer's zstd:chunked TOC
//! and tar-split, or an eStargz blob's members less those of the files left), but the content of files larger than `INLINE_MAX` is fetched when
//! first opened — by the mount daemon, from the registry the record names — or when the
//! pull is completed. Until then `layers/<diff-id>/lazy.json` names where each missing
//! object's frames are. The diff-id is checked only once every object is here (the tar
//! is rebuilt from the layer's tar-split record), so a lazy layer serves no other image
//! until then.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::digest::Digest;
use crate::store::layout::read_json;
use crate::store::objects;

/// The record's file name in a layer dir.
pub(crate) const FILE_NAME: &str = "lazy.json";

/// Where a lazy pull comes from (recorded for the fetches that follow it).
#[derive(Debug, Clone)]
pub(crate) struct LazySource {
    pub reference: String,
    pub insecure: bool,
    /// The pull's `--timeout` (milliseconds) and `--retries`, for the fetches after it.
    pub timeout_ms: u64,
    pub retries: u32,
}

/// Where a lazy layer's missing contents are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LazyRecord {
    /// The image reference pulled (registry and repository to fetch from).
    pub reference: String,
    /// Plain HTTP / unverified TLS allowed (`pull --insecure`).
    #[serde(default)]
    pub insecure: bool,
    /// The pull's `--timeout` in milliseconds and `--retries` (records from before they
    /// were kept name neither: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The blob (zstd:chunked or eStargz).
    pub blob: Digest,
    /// Its form (records written before eStargz was read name none: zstd:chunked).
    #[serde(default)]
    pub form: BlobForm,
    /// Each object the layer names that the store lacked, with its frames' range.
    pub objects: Vec<LazyObject>,
}

/// How a lazy layer's blob holds file contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum BlobForm {
    /// A file's content is zstd frames of its own.
    #[default]
    #[serde(rename = "zstd:chunked")]
    ZstdChunked,
    /// A file's content starts a gzip member; the last member may hold more after it.
    #[serde(rename = "estargz")]
    Estargz,
    /// The same layout in zstd frames (`ctr-remote images convert --zstdchunked`).
    #[serde(rename = "stargz-zstd")]
    StargzZstd,
}

/// One missing object: its size and the compressed bytes that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LazyObject {
    pub digest: Digest,
    pub size: u64,
    pub offset: u64,
    pub end: u64,
}

impl LazyRecord {
    /// The objects still missing from `objects_dir`.
    pub(crate) fn missing(&self, objects_dir: &Path) -> Vec<&LazyObject> {
        self.objects
            .iter()
            .filter(|o| !objects_dir.join(objects::rel_path(&o.digest)).is_file())
            .collect()
    }
}

/// The record beside a lower dir (`…/layers/sha256/<hex>/diff`), when it has one.
pub(crate) fn record_of_lower(lower: &Path) -> Result<Option<LazyRecord>> {
    let Some(dir) = lower.parent() else {
        return Ok(None);
    };
    read_json(&dir.join(FILE_NAME))
}

impl Store {
    pub(crate) fn lazy_path(&self, diff_id: &Digest) -> PathBuf {
        self.layout.layer(diff_id).join(FILE_NAME)
    }

    /// A layer's lazy record, when it was pulled lazily and is not complete.
    pub(crate) fn lazy_record(&self, diff_id: &Digest) -> Result<Option<LazyRecord>> {
        read_json(&self.lazy_path(diff_id))
    }

    /// For an image with lazily pulled layers: the bytes of file content not here yet
    /// (`None` when none of its layers is lazy).
    pub(crate) fn lazy_missing(&self, image: &crate::store::ImageRecord) -> Option<u64> {
        let objects_dir = self.layout.objects_dir();
        let mut any = false;
        let mut missing = 0;
        for l in &image.layers {
            if let Ok(Some(rec)) = self.lazy_record(&l.diff_id) {
                any = true;
                missing += rec
                    .missing(&objects_dir)
                    .iter()
                    .map(|o| o.size)
                    .sum::<u64>();
            }
        }
        any.then_some(missing)
    }

    /// Finish a lazy layer whose objects are all here: rebuild its tar from its record
    /// and the objects, check it against the diff-id, then drop the lazy record. Run
    /// under the store lock.
    pub(crate) fn finish_lazy(&self, diff_id: &Digest) -> Result<()> {
        let Some(rec) = self.lazy_record(diff_id)? else {
            return Ok(());
        };
        self.lazy_complete(diff_id)?;
        let (mut tar, _) = self.open_blob(diff_id)?;
        std::io::copy(&mut tar, &mut std::io::sink()).map_err(|e| {
            Error::corrupt(format!(
                "layer {diff_id} (pulled lazily from {}) does not match its diff-id: {} \
                 (`layerfs system check --repair` removes it)",
                rec.reference,
                crate::error::describe(&e)
            ))
        })?;
        std::fs::remove_file(self.lazy_path(diff_id))
            .map_err(|e| Error::io(format!("removing {}", self.lazy_path(diff_id).display()), e))
    }

    /// `Ok` unless `diff_id` is a lazily pulled layer whose files are not all here yet
    /// (then its tar cannot be rebuilt: the error says how to complete it).
    pub(crate) fn lazy_complete(&self, diff_id: &Digest) -> Result<()> {
        let Some(rec) = self.lazy_record(diff_id)? else {
            return Ok(());
        };
        let missing = rec.missing(&self.layout.objects_dir()).len();
        if missing == 0 {
            return Ok(());
        }
        Err(Error::not_found(format!(
            "layer {diff_id} was pulled lazily and {missing} of its files are not here yet; \
             `layerfs pull {}` fetches them",
            rec.reference
        )))
    }

    /// Write a layer's lazy record into its staged dir (placed with it).
    pub(crate) fn write_lazy_record(dir: &Path, rec: &LazyRecord) -> Result<()> {
        let json = serde_json::to_vec(rec)
            .map_err(|e| Error::new(format!("encoding {FILE_NAME}: {e}")))?;
        std::fs::write(dir.join(FILE_NAME), json)
            .map_err(|e| Error::io(format!("writing {}", dir.display()), e))
    }
}

/// Check fetched content against its object and place it in the store's objects dir
/// (written aside, synced, renamed in: never a partial object under its name).
pub(crate) fn place_fetched(objects_dir: &Path, o: &LazyObject, data: &[u8]) -> Result<()> {
    if data.len() as u64 != o.size {
        return Err(Error::corrupt(format!(
            "object {}: {} bytes, the TOC says {}",
            o.digest,
            data.len(),
            o.size
        )));
    }
    let got = Digest::of(data);
    if got != o.digest {
        return Err(Error::corrupt(format!(
            "object {}: the fetched content hashes to {got}",
            o.digest
        )));
    }
    objects::place_bytes(objects_dir, &o.digest, data)
}
