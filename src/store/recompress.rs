//! Layer blobs written again in another form: a layer's tar as zstd:chunked (for `push`
//! and `save` with `--compression zstd:chunked`), and the blob of a layer pulled
//! partially from a zstd:chunked blob, which the store does not keep: it is encoded
//! again from the layer's tar and used only when that gives the very same bytes (the
//! blob was written by this encoder and libzstd version).

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use crate::store::digest::Digest;

use crate::error::{Error, IoContext, Result};
use crate::store::archive::{Compression, OCI_CONFIG, OCI_LAYER_ZSTD, OCI_MANIFEST};
use crate::store::images::ImageRecord;
use crate::store::images::LayerRef;
use crate::store::layout;
use crate::store::zstd_chunked::{self, Encoded};
use crate::store::{Store, TempBlob};

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

impl Store {
    /// A layer's uncompressed tar: rebuilt from its record when the store keeps one,
    /// else its blob decompressed. The caller checks the diff-id.
    pub(crate) fn layer_tar(&self, l: &LayerRef) -> Result<Box<dyn Read + Send>> {
        if self.tar_split_path(&l.diff_id).is_file() {
            return Ok(self.open_blob(&l.diff_id)?.0);
        }
        let comp = self.layer_compression(l)?;
        let (f, _) = self.open_blob(&l.blob)?;
        Ok(match comp {
            Compression::None => f,
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f))),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(f)
                    .map_err(|e| Error::io(format!("blob {}", l.blob), e))?,
            ),
        })
    }

    /// How a layer's blob is compressed: by its media type, else by its first bytes.
    pub(crate) fn layer_compression(&self, l: &LayerRef) -> Result<Compression> {
        if let Some(c) = Compression::from_media_type(&l.media_type) {
            return Ok(c);
        }
        let mut head = [0u8; 4];
        let n = self.open_blob(&l.blob)?.0.read(&mut head).unwrap_or(0);
        Ok(Compression::sniff(&head[..n]))
    }

    /// The layer encoded as zstd:chunked into a temp file under `tmp/` (removed with the
    /// returned guard), checked against the layer's diff-id.
    pub(crate) fn encode_chunked(&self, l: &LayerRef) -> Result<(Encoded, PathBuf, TempBlob)> {
        let what = format!("layer {}", l.diff_id);
        let path = self.layout.tmp_dir().join(layout::unique_name("chunked"));
        let guard = TempBlob(path.clone());
        let out = File::create(&path).ctx(format!("creating {}", path.display()))?;
        let tar = self.layer_tar(l)?;
        let enc = zstd_chunked::encode(&what, tar, out)?;
        if enc.diff_id != l.diff_id {
            return Err(Error::corrupt(format!(
                "{what}: its tar hashes to {} (run `layerfs system check`)",
                enc.diff_id
            )));
        }
        Ok((enc, path, guard))
    }

    /// The layer of an image whose blob `d` is a zstd:chunked blob the store did not
    /// keep (the layer was pulled partially) but whose tar it can rebuild.
    pub(crate) fn partial_layer_of(&self, d: &Digest) -> Option<LayerRef> {
        let catalog = self.images().ok()?;
        let l = catalog
            .images
            .values()
            .flat_map(|r| r.layers.iter())
            .find(|l| l.blob == *d && l.diff_id != *d)?;
        (Compression::from_media_type(&l.media_type) == Some(Compression::Zstd)
            && self.tar_split_path(&l.diff_id).is_file())
        .then(|| l.clone())
    }

    /// The blob of a layer pulled partially, encoded again from its tar into a temp
    /// file (removed with the guard), when that reproduces the blob byte for byte.
    pub(crate) fn rebuild_partial_blob(&self, l: &LayerRef) -> Result<(PathBuf, TempBlob, u64)> {
        let (enc, path, guard) = self.encode_chunked(l)?;
        if enc.digest != l.blob {
            return Err(Error::unsupported(format!(
                "layer {}: it was pulled partially, and its blob {} was written by another \
                 zstd:chunked encoder, so it cannot be rebuilt byte for byte; push or save \
                 with --compression zstd:chunked (new blob digests, same diff-ids and image id)",
                l.diff_id, l.blob
            )));
        }
        Ok((path, guard, enc.size))
    }
}

/// An image with every layer written again as zstd:chunked: a new OCI manifest (same
/// config, so the same image id) and the new layer blobs in temp files.
pub(crate) struct Rewritten {
    pub manifest: Vec<u8>,
    pub digest: Digest,
    /// Each new layer blob once.
    pub blobs: Vec<NewBlob>,
}

/// A layer blob written to a temp file (removed with `file`).
pub(crate) struct NewBlob {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
    pub file: TempBlob,
}

impl Store {
    /// `rec` with its layers as zstd:chunked; `stored` is its stored manifest.
    pub(crate) fn rewrite_chunked(&self, rec: &ImageRecord, stored: &[u8]) -> Result<Rewritten> {
        let what = format!("image {}", rec.id.short());
        let mut descriptors = Vec::new();
        let mut blobs: Vec<NewBlob> = Vec::new();
        for l in &rec.layers {
            let (enc, path, guard) = self
                .encode_chunked(l)
                .map_err(|e| e.context(format!("{what}: layer {}", l.diff_id)))?;
            descriptors.push(serde_json::json!({
                "mediaType": OCI_LAYER_ZSTD,
                "digest": enc.digest.to_string(),
                "size": enc.size,
                "annotations": enc.positions.annotations(),
            }));
            if !blobs.iter().any(|b| b.digest == enc.digest) {
                blobs.push(NewBlob {
                    digest: enc.digest,
                    size: enc.size,
                    path,
                    file: guard,
                });
            }
        }
        let mut doc: serde_json::Value = serde_json::from_slice(stored)
            .map_err(|e| Error::corrupt(format!("{what}: stored manifest: {e}")))?;
        doc["mediaType"] = OCI_MANIFEST.into();
        doc["layers"] = descriptors.into();
        if doc["config"]["mediaType"] == DOCKER_CONFIG {
            doc["config"]["mediaType"] = OCI_CONFIG.into();
        }
        let manifest =
            serde_json::to_vec(&doc).map_err(|e| Error::new(format!("{what}: manifest: {e}")))?;
        Ok(Rewritten {
            digest: Digest::of(&manifest),
            manifest,
            blobs,
        })
    }
}
