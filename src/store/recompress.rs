//! Layer blobs written again in another form: a layer's tar as zstd:chunked or eStargz
//! (for `push` and `save` with `--compression`), and the blob of a layer pulled
//! partially from a zstd:chunked or eStargz blob, which the store does not keep: it is
//! encoded again from the layer's tar and used only when that gives the very same bytes
//! (the blob was written by this encoder and compression library version).

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use crate::store::digest::Digest;

use crate::error::{Error, IoContext, Result};
use crate::store::archive::{
    Compression, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use crate::store::estargz;
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
        (matches!(
            Compression::from_media_type(&l.media_type),
            Some(Compression::Zstd | Compression::Gzip)
        ) && self.tar_split_path(&l.diff_id).is_file())
        .then(|| l.clone())
    }

    /// The blob of a layer pulled partially (zstd:chunked or eStargz), encoded again
    /// from its tar into a temp file (removed with the guard), when that reproduces the
    /// blob byte for byte.
    pub(crate) fn rebuild_partial_blob(&self, l: &LayerRef) -> Result<(PathBuf, TempBlob, u64)> {
        let (digest, size, path, guard, form) =
            if Compression::from_media_type(&l.media_type) == Some(Compression::Gzip) {
                let (enc, path, guard) = self.encode_estargz(l)?;
                (enc.digest, enc.size, path, guard, "estargz")
            } else {
                let (enc, path, guard) = self.encode_chunked(l)?;
                (enc.digest, enc.size, path, guard, "zstd:chunked")
            };
        if digest != l.blob {
            return Err(Error::unsupported(format!(
                "layer {}: it was pulled partially, and its blob {} was written by another \
                 {form} encoder, so it cannot be rebuilt byte for byte; push or save with \
                 --compression zstd:chunked (new blob digests, same diff-ids and image id)",
                l.diff_id, l.blob
            )));
        }
        Ok((path, guard, size))
    }
}

/// A form to write every layer of an image in again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerForm {
    /// Same tar (same diff-ids, same config and image id).
    ZstdChunked,
    /// The tar gains the landmark and TOC entries: new diff-ids, a new config.
    Estargz,
}

impl LayerForm {
    /// From the `--compression` value.
    pub(crate) fn parse(s: &str) -> Result<LayerForm> {
        match s {
            "zstd:chunked" => Ok(LayerForm::ZstdChunked),
            "estargz" => Ok(LayerForm::Estargz),
            _ => Err(Error::invalid_input(format!(
                "unknown compression {s:?} (zstd:chunked or estargz)"
            ))),
        }
    }
}

/// An image with every layer written again in another form: a new OCI manifest, the new
/// layer blobs in temp files, and a new config when the diff-ids changed.
pub(crate) struct Rewritten {
    pub manifest: Vec<u8>,
    pub digest: Digest,
    /// Each new layer blob once.
    pub blobs: Vec<NewBlob>,
    /// The new config (eStargz), else the stored one stands.
    pub config: Option<NewBlob>,
}

/// A blob written to a temp file (removed with `file`).
pub(crate) struct NewBlob {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
    pub file: TempBlob,
}

impl Store {
    /// The layer written as eStargz into a temp file (removed with the returned guard).
    fn encode_estargz(&self, l: &LayerRef) -> Result<(estargz::Encoded, PathBuf, TempBlob)> {
        let what = format!("layer {}", l.diff_id);
        let path = self.layout.tmp_dir().join(layout::unique_name("estargz"));
        let guard = TempBlob(path.clone());
        let out = File::create(&path).ctx(format!("creating {}", path.display()))?;
        let enc = estargz::encode(&what, self.layer_tar(l)?, out)?;
        Ok((enc, path, guard))
    }

    /// `rec` with its layers in `form`; `stored` is its stored manifest.
    pub(crate) fn rewrite(
        &self,
        rec: &ImageRecord,
        stored: &[u8],
        form: LayerForm,
    ) -> Result<Rewritten> {
        let what = format!("image {}", rec.id.short());
        let mut descriptors = Vec::new();
        let mut blobs: Vec<NewBlob> = Vec::new();
        let mut diff_ids = Vec::new();
        for l in &rec.layers {
            let at = |e: Error| e.context(format!("{what}: layer {}", l.diff_id));
            let (digest, size, path, guard, desc) = match form {
                LayerForm::ZstdChunked => {
                    let (enc, path, guard) = self.encode_chunked(l).map_err(at)?;
                    let desc = serde_json::json!({
                        "mediaType": OCI_LAYER_ZSTD,
                        "annotations": enc.positions.annotations(),
                    });
                    diff_ids.push(l.diff_id);
                    (enc.digest, enc.size, path, guard, desc)
                }
                LayerForm::Estargz => {
                    let (enc, path, guard) = self.encode_estargz(l).map_err(at)?;
                    let desc = serde_json::json!({
                        "mediaType": OCI_LAYER_GZIP,
                        "annotations": {
                            estargz::TOC_DIGEST: enc.toc_digest.to_string(),
                            estargz::UNCOMPRESSED_SIZE: enc.uncompressed_size.to_string(),
                        },
                    });
                    diff_ids.push(enc.diff_id);
                    (enc.digest, enc.size, path, guard, desc)
                }
            };
            let mut desc = desc;
            desc["digest"] = digest.to_string().into();
            desc["size"] = size.into();
            descriptors.push(desc);
            if !blobs.iter().any(|b| b.digest == digest) {
                blobs.push(NewBlob {
                    digest,
                    size,
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
        let config = if form == LayerForm::Estargz {
            let mut cfg: serde_json::Value =
                serde_json::from_slice(&self.read_blob(&rec.config_digest)?)
                    .map_err(|e| Error::corrupt(format!("{what}: stored config: {e}")))?;
            cfg["rootfs"]["diff_ids"] = diff_ids
                .iter()
                .map(|d| serde_json::Value::from(d.to_string()))
                .collect();
            let bytes =
                serde_json::to_vec(&cfg).map_err(|e| Error::new(format!("{what}: config: {e}")))?;
            let path = self.layout.tmp_dir().join(layout::unique_name("config"));
            let file = TempBlob(path.clone());
            std::fs::write(&path, &bytes).ctx(format!("writing {}", path.display()))?;
            let digest = Digest::of(&bytes);
            doc["config"]["digest"] = digest.to_string().into();
            doc["config"]["size"] = bytes.len().into();
            Some(NewBlob {
                digest,
                size: bytes.len() as u64,
                path,
                file,
            })
        } else {
            None
        };
        let manifest =
            serde_json::to_vec(&doc).map_err(|e| Error::new(format!("{what}: manifest: {e}")))?;
        Ok(Rewritten {
            digest: Digest::of(&manifest),
            manifest,
            blobs,
            config,
        })
    }
}
