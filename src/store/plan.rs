//! What to import: the plan of one image, built from its manifest and config the same way
//! whether they come from an archive, a registry or a container commit, and the one check
//! of a streamed layer blob against what the plan promises.
//!
//! A plan says, per layer, where the blob is in its source, its digest and size as the
//! manifest promises them, how it is compressed, and the diff-id the config promises.
//! What differs between sources (how the config and the layer blobs are found) is the
//! `PlanSource` the caller gives.

use oci_spec::image::{ImageConfiguration, ImageManifest};

use crate::error::{Error, Result};
use crate::store::archive::{Compression, OCI_MANIFEST};
use crate::store::digest::Digest;
use crate::store::images::{ImageRecord, LayerRef};
use crate::store::now_secs;
use crate::store::stream::Streamed;
use crate::store::zstd_chunked::Positions;

/// A platform as `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub(crate) fn host() -> Platform {
        Platform {
            os: oci_spec::image::Os::default().to_string(),
            arch: oci_spec::image::Arch::default().to_string(),
            variant: None,
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(Error::invalid_input(format!(
                "invalid platform \"{s}\": expected OS/ARCH[/VARIANT], e.g. linux/amd64"
            )));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            arch: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// The platform an index entry is for.
    pub(crate) fn of_descriptor(p: &oci_spec::image::Platform) -> Platform {
        Platform {
            os: p.os().to_string(),
            arch: p.architecture().to_string(),
            variant: p.variant().clone(),
        }
    }

    /// Whether an image for `other` is one for this platform (no variant asked for: any).
    pub(crate) fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.arch == other.arch
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A verified manifest: its bytes, their digest, and its media type.
#[derive(Debug, Clone)]
pub(crate) struct ManifestBlob {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
}

/// One layer to import.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    /// Where the blob is in the source.
    pub member: String,
    /// The blob digest the manifest promises (unknown for old docker archives).
    pub blob: Option<Digest>,
    /// The blob size the manifest promises (unknown for docker archives).
    pub blob_size: Option<u64>,
    pub compression: Compression,
    pub media_type: String,
    pub diff_id: Digest,
    /// Where a zstd:chunked blob keeps its TOC and tar-split (from its annotations).
    pub chunked: Option<Positions>,
    /// A blob laid out by stargz's writer (eStargz, or its zstd form): where its TOC is.
    pub estargz: Option<StargzToc>,
}

/// Where a stargz-layout blob's TOC is, and its digest (the `toc.digest` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StargzToc {
    pub digest: Digest,
    /// The zstd form (`ctr-remote images convert --zstdchunked`): the TOC's zstd frame
    /// (offset, length), from the `io.containers.zstd-chunked.manifest-position`
    /// annotation; gzip (eStargz) blobs name it in their footer.
    pub zstd_frame: Option<(u64, u64)>,
}

/// The old `io.containers.zstd-chunked.manifest-position` annotation's TOC range
/// (`OFFSET:LENGTH:UNCOMPRESSED:TYPE`).
fn stargz_zstd_frame(v: &str) -> Option<(u64, u64)> {
    let mut it = v.split(':').map(|x| x.parse::<u64>().ok());
    let (off, len) = (it.next()??, it.next()??);
    (len > 0).then_some((off, len))
}

/// One image to import, its manifest and config verified.
#[derive(Debug, Clone)]
pub(crate) struct ImagePlan {
    /// `None` for docker archives: a manifest is made once the blob digests are known.
    pub manifest: Option<ManifestBlob>,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub created: Option<String>,
    pub platform: String,
    pub layers: Vec<LayerPlan>,
    pub tags: Vec<String>,
}

/// What differs between the places an image comes from.
pub(crate) trait PlanSource {
    /// The config blob `digest`, as the manifest's descriptor (`size`) names it; a source
    /// that reads it checks it against the descriptor.
    fn config(&self, digest: &Digest, size: u64) -> Result<Vec<u8>>;
    /// Where the blob of a layer is (a member name), or why the source lacks it.
    fn layer_member(&self, digest: &Digest) -> Result<String>;
    /// How messages call a layer media type we cannot read ("unknown", "unsupported"):
    /// archive imports and pulls have said it differently, and users know both.
    fn unreadable_media_type(&self) -> &'static str;
}

/// What the plan needs from an image config.
pub(crate) struct ConfigFacts {
    pub diff_ids: Vec<Digest>,
    pub created: Option<String>,
    pub platform: String,
}

impl ConfigFacts {
    /// Parse a config and check that it lists one diff-id per layer. `what` starts every
    /// message.
    pub(crate) fn parse(
        what: &str,
        digest: &Digest,
        config: &[u8],
        layers: usize,
    ) -> Result<ConfigFacts> {
        let cfg = ImageConfiguration::from_reader(config).map_err(|e| {
            Error::corrupt(format!(
                "{what}: config {digest}: not a valid image config: {e}"
            ))
        })?;
        let ids = cfg.rootfs().diff_ids();
        if ids.len() != layers {
            return Err(Error::corrupt(format!(
                "{what}: config {digest} lists {} diff-ids but the image has {layers} layers",
                ids.len()
            )));
        }
        let diff_ids = ids
            .iter()
            .map(|s| {
                s.parse::<Digest>().map_err(|e| {
                    Error::corrupt(format!("{what}: config {digest}: diff-id: {}", e.message()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut platform = format!("{}/{}", cfg.os(), cfg.architecture());
        if let Some(v) = cfg.variant() {
            platform.push('/');
            platform.push_str(v);
        }
        Ok(ConfigFacts {
            diff_ids,
            created: cfg.created().clone(),
            platform,
        })
    }
}

/// A digest from an OCI descriptor, as ours; `what` and `field` start the message.
fn descriptor_digest(what: &str, field: &str, d: &oci_spec::image::Digest) -> Result<Digest> {
    d.to_string()
        .parse::<Digest>()
        .map_err(|e| Error::corrupt(format!("{what}: {field}: {}", e.message())))
}

impl ImagePlan {
    /// The plan of the image `manifest` describes. The manifest's digest is the caller's
    /// to check (it knows what it asked for); the config `source` gives is checked here
    /// against the manifest, and every layer's media type must be one we can read. An
    /// empty manifest media type is taken from the manifest (OCI's when it names none).
    /// `what` names the source at the start of every message.
    pub(crate) fn from_manifest(
        what: &str,
        source: &impl PlanSource,
        mut manifest: ManifestBlob,
        tags: Vec<String>,
    ) -> Result<ImagePlan> {
        let m = ImageManifest::from_reader(&manifest.bytes[..]).map_err(|e| {
            Error::corrupt(format!(
                "{what}: manifest {}: not a valid image manifest: {e}",
                manifest.digest
            ))
        })?;
        if manifest.media_type.is_empty() {
            manifest.media_type = m
                .media_type()
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| OCI_MANIFEST.to_string());
        }
        let cdesc = m.config();
        let config_digest = descriptor_digest(what, "config descriptor", cdesc.digest())?;
        let config = source.config(&config_digest, cdesc.size())?;
        let got = Digest::of(&config);
        if got != config_digest {
            return Err(Error::corrupt(format!(
                "{what}: config digest mismatch: the manifest says {config_digest}, the config hashes to {got}"
            )));
        }
        let facts = ConfigFacts::parse(what, &config_digest, &config, m.layers().len())?;
        let mut layers = Vec::new();
        for (d, diff_id) in m.layers().iter().zip(facts.diff_ids) {
            let digest = descriptor_digest(what, "layer descriptor", d.digest())?;
            let media_type = d.media_type().to_string();
            let compression = Compression::from_media_type(&media_type).ok_or_else(|| {
                Error::unsupported(format!(
                    "{what}: layer {digest}: {} media type {media_type}",
                    source.unreadable_media_type()
                ))
            })?;
            let chunked = match (compression, d.annotations()) {
                (Compression::Zstd, Some(a)) => {
                    Positions::from_annotations(&format!("{what}: layer {digest}"), a)?
                }
                _ => None,
            };
            let toc_digest = d
                .annotations()
                .as_ref()
                .and_then(|a| a.get(crate::store::estargz::TOC_DIGEST))
                .and_then(|v| v.parse::<Digest>().ok());
            let estargz = match (compression, toc_digest, d.annotations()) {
                (Compression::Gzip, Some(digest), _) => Some(StargzToc {
                    digest,
                    zstd_frame: None,
                }),
                (Compression::Zstd, Some(digest), Some(a)) if chunked.is_none() => a
                    .get("io.containers.zstd-chunked.manifest-position")
                    .and_then(|v| stargz_zstd_frame(v))
                    .map(|f| StargzToc {
                        digest,
                        zstd_frame: Some(f),
                    }),
                _ => None,
            };
            layers.push(LayerPlan {
                chunked,
                estargz,
                member: source.layer_member(&digest)?,
                blob: Some(digest),
                blob_size: Some(d.size()),
                compression,
                media_type,
                diff_id,
            });
        }
        Ok(ImagePlan {
            manifest: Some(manifest),
            config,
            config_digest,
            created: facts.created,
            platform: facts.platform,
            layers,
            tags,
        })
    }

    /// The record of this image once its layers are in place (`layers` in plan order).
    pub(crate) fn record(&self, manifest: &ManifestBlob, layers: Vec<LayerRef>) -> ImageRecord {
        ImageRecord {
            id: self.config_digest,
            manifest_digest: manifest.digest,
            manifest_media_type: manifest.media_type.clone(),
            config_digest: self.config_digest,
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            tags: Vec::new(),
            created: self.created.clone(),
            imported: now_secs(),
            platform: self.platform.clone(),
        }
    }
}

impl LayerPlan {
    /// Check what streaming the blob found against what the manifest and the config
    /// promise: blob digest, blob size, diff-id. `what` names the layer.
    pub(super) fn verify(&self, what: &str, got: &Streamed) -> Result<()> {
        if let Some(want) = self.blob
            && got.blob != want
        {
            return Err(Error::corrupt(format!(
                "{what}: blob digest mismatch: the blob hashes to {} (damaged or altered)",
                got.blob
            )));
        }
        if let Some(want) = self.blob_size
            && got.blob_size != want
        {
            return Err(Error::corrupt(format!(
                "{what}: size mismatch: the manifest says {want} bytes, the blob has {}",
                got.blob_size
            )));
        }
        if got.diff_id != self.diff_id {
            return Err(Error::corrupt(format!(
                "{what}: diff-id mismatch: the uncompressed layer hashes to {}, the config says {}",
                got.diff_id, self.diff_id
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        let of = |s: &str| Platform::parse(s).unwrap();
        assert!(p.matches(&of("linux/arm64/v8")));
        assert!(!p.matches(&of("linux/arm64/v7")));
        assert!(of("linux/arm64").matches(&p));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
    }
}
