//! Importing images from files: every layer verified while it streams (see `stream`),
//! staged in a private temp dir (see `stage`), and moved into place only when the whole
//! image checked out.
//!
//! When a layer stream ends both digests are compared with the manifest and the config.
//! Layers already in the store are skipped before any of that work ("already exists").
//!
//! Nothing is visible in the store until every layer of every image in the source is
//! verified: then the staged blobs and layer dirs are renamed into place (after one
//! `syncfs`) and the image records written. A failure leaves the store as it was; a crash
//! leaves only the staging dir, which the next command removes.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};

use crate::error::{Error, IoContext, Result};
use crate::store::archive::{self, Compression, Format, OCI_CONFIG, OCI_MANIFEST, Source};
use crate::store::digest::{Digest, Hasher};
use crate::store::images::{ImageCatalog, ImageRecord, LayerRef, Reference};
use crate::store::plan::{ImagePlan, LayerPlan, ManifestBlob, PlanSource, Platform};
use crate::store::stage::{Stage, upsert};
use crate::store::stream::stream_blob;
use crate::store::{Store, now_secs};

pub use crate::store::stage::{ImportObserver, LayerEvent, Quiet};
pub use crate::store::stream::ExpansionLimit;

/// What `import` should do beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Tag the imported image (only for sources with one image).
    pub tag: Option<String>,
    /// Pick this platform from a multi-platform index (default: the host's).
    pub platform: Option<String>,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    pub format: Format,
    /// The records as stored, one per image in the source.
    pub images: Vec<ImageRecord>,
    pub layers_extracted: usize,
    pub layers_existing: usize,
}

impl Store {
    /// Import every image in `path` (OCI layout, oci-archive, docker-archive, layer tar).
    pub fn import(
        &self,
        path: &Path,
        opts: &ImportOptions,
        obs: &dyn ImportObserver,
    ) -> Result<Imported> {
        let tag = opts.tag.as_deref().map(Reference::parse_tag).transpose()?;
        let (platform, explicit) = match &opts.platform {
            Some(p) => (Platform::parse(p)?, true),
            None => (Platform::host(), false),
        };
        let src = archive::detect(path)?;
        obs.note(&format!("{}: {}", path.display(), src.format.describe()));
        // Everything about the source that can be checked without the layers is checked
        // before the lock is taken.
        let plans = match src.format {
            Format::OciLayout | Format::OciArchive => {
                archive::oci_plans(&src, &platform, explicit)?
            }
            Format::DockerArchive | Format::DockerDir => archive::docker_plans(&src)?,
            Format::LayerTar(_) => Vec::new(),
        };
        if tag.is_some() && plans.len() > 1 {
            return Err(Error::invalid_input(format!(
                "{}: holds {} images; --tag needs a source with one",
                path.display(),
                plans.len()
            )));
        }
        let lock = self.lock()?;
        let mut stage = Stage::new(self)?;
        let mut catalog = self.images()?;
        let mut out = Imported {
            format: src.format,
            images: Vec::new(),
            layers_extracted: 0,
            layers_existing: 0,
        };
        let mut records = Vec::new();
        if let Format::LayerTar(comp) = src.format {
            records.push(self.import_layer_tar(&src, comp, &mut stage, &catalog, obs, &mut out)?);
        } else {
            for plan in &plans {
                records.push(self.import_plan(&src, plan, &mut stage, obs, &mut out)?);
            }
        }
        self.commit_stage(&stage, &lock)?;
        for (mut rec, mut tags) in records {
            if let Some(t) = &tag {
                tags = vec![t.clone()];
            }
            let stored = upsert(&mut catalog, &mut rec, &tags);
            out.images.push(stored);
        }
        self.write_images(&catalog, &lock)?;
        drop(stage);
        Ok(out)
    }

    fn import_plan(
        &self,
        src: &Source,
        plan: &ImagePlan,
        stage: &mut Stage,
        obs: &dyn ImportObserver,
        out: &mut Imported,
    ) -> Result<(ImageRecord, Vec<String>)> {
        let mut layers = Vec::new();
        for layer in &plan.layers {
            layers.push(self.import_layer(src, layer, stage, obs, out)?);
        }
        let manifest = match &plan.manifest {
            Some(m) => m.clone(),
            None => make_manifest(&plan.config, &layers)?,
        };
        stage.put_blob(self, &manifest.bytes)?;
        stage.put_blob(self, &plan.config)?;
        let rec = plan.record(&manifest, layers);
        Ok((rec, plan.tags.clone()))
    }

    /// Size of a layer that is in the store or staged.
    fn known_layer_size(&self, stage: &Stage, d: &Digest) -> Result<Option<u64>> {
        if let Some(r) = stage.layers.get(d) {
            return Ok(Some(r.size));
        }
        Ok(self.layer_record(d)?.map(|r| r.size))
    }

    fn import_layer(
        &self,
        src: &Source,
        layer: &LayerPlan,
        stage: &mut Stage,
        obs: &dyn ImportObserver,
        out: &mut Imported,
    ) -> Result<LayerRef> {
        let what = match &layer.blob {
            Some(d) => format!("{}: layer {d}", src.path.display()),
            None => format!("{}: layer {}", src.path.display(), layer.member),
        };
        let existing = self.known_layer_size(stage, &layer.diff_id)?;
        if let (Some(size), Some(blob)) = (existing, &layer.blob)
            && (self.has_blob(blob) || stage.blobs.contains(blob))
        {
            obs.layer(&layer.diff_id, LayerEvent::Exists);
            out.layers_existing += 1;
            let blob_size = match layer.blob_size {
                Some(n) => n,
                None => self
                    .blob_len(blob)
                    .or_else(|| fs::metadata(stage.blob(blob)).ok().map(|m| m.len()))
                    .unwrap_or(0),
            };
            return Ok(LayerRef {
                diff_id: layer.diff_id,
                blob: *blob,
                media_type: layer.media_type.clone(),
                blob_size,
                size,
            });
        }
        let (reader, size) = src.files.open(&layer.member)?;
        let incoming = stage.incoming();
        let blob_file = File::create(&incoming).ctx(format!("creating {}", incoming.display()))?;
        obs.layer(&layer.diff_id, LayerEvent::Start { size });
        let diff_id = layer.diff_id;
        let progress = |done: u64| obs.layer(&diff_id, LayerEvent::Progress { done });
        let layer_dir = stage.layer(&layer.diff_id);
        let extract_to = if existing.is_none() {
            fs::create_dir_all(layer_dir.join("diff"))
                .ctx(format!("creating {}", layer_dir.display()))?;
            Some((layer_dir.join("diff"), stage.extract_options(self)))
        } else {
            None
        };
        let res = stream_blob(
            &what,
            layer.blob,
            reader,
            layer.compression,
            self.expansion,
            Some(blob_file),
            extract_to.as_ref().map(|(p, o)| (p.as_path(), o.clone())),
            &progress,
        );
        let streamed = match res {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&incoming);
                return Err(e);
            }
        };
        layer.verify(&what, &streamed)?;
        let size = match (existing, streamed.extracted) {
            (Some(size), _) => {
                let blob_new = stage.adopt_blob(self, &incoming, streamed.blob)?;
                let ev = if blob_new {
                    LayerEvent::BlobStored
                } else {
                    LayerEvent::Exists
                };
                obs.layer(&layer.diff_id, ev);
                out.layers_existing += 1;
                size
            }
            (None, Some(tree)) => {
                let rec = self.finish_layer(&layer_dir, &layer.diff_id, &tree)?;
                obs.layer(&layer.diff_id, LayerEvent::extracted(&rec));
                out.layers_extracted += 1;
                let size = stage.record_layer(rec);
                // After the layer: a tar blob staged with its record is not kept.
                stage.adopt_blob(self, &incoming, streamed.blob)?;
                size
            }
            (None, None) => unreachable!("extraction requested"),
        };
        Ok(LayerRef {
            diff_id: layer.diff_id,
            blob: streamed.blob,
            media_type: layer.media_type.clone(),
            blob_size: streamed.blob_size,
            size,
        })
    }

    fn import_layer_tar(
        &self,
        src: &Source,
        comp: Compression,
        stage: &mut Stage,
        catalog: &ImageCatalog,
        obs: &dyn ImportObserver,
        out: &mut Imported,
    ) -> Result<(ImageRecord, Vec<String>)> {
        let path = &src.path;
        // Hash the file first (cheap next to extraction): a layer imported before is
        // found by its blob digest and not extracted again.
        let blob = hash_file(path)?;
        let known = catalog
            .images
            .values()
            .flat_map(|r| r.layers.iter())
            .find(|l| l.blob == blob && self.layer_exists(&l.diff_id))
            .cloned();
        let layer = match known {
            Some(known) => {
                obs.layer(&known.diff_id, LayerEvent::Exists);
                out.layers_existing += 1;
                known
            }
            None => {
                let file = File::open(path).ctx(format!("opening {}", path.display()))?;
                let size = file
                    .metadata()
                    .ctx(format!("stat {}", path.display()))?
                    .len();
                let incoming = stage.incoming();
                let blob_file =
                    File::create(&incoming).ctx(format!("creating {}", incoming.display()))?;
                let work = stage.dir.join("layer-tar");
                fs::create_dir_all(work.join("diff"))
                    .ctx(format!("creating {}", work.display()))?;
                obs.layer(&blob, LayerEvent::Start { size });
                let progress = |done: u64| obs.layer(&blob, LayerEvent::Progress { done });
                let what = format!("{}: layer", path.display());
                let streamed = stream_blob(
                    &what,
                    Some(blob),
                    Box::new(file),
                    comp,
                    self.expansion,
                    Some(blob_file),
                    Some((&work.join("diff"), stage.extract_options(self))),
                    &progress,
                )?;
                if streamed.blob != blob {
                    return Err(Error::new(format!(
                        "{}: changed while it was read",
                        path.display()
                    )));
                }
                let extracted = streamed.extracted.expect("extracted");
                let diff = work.join("diff");
                if (diff.join("oci-layout").is_file() && diff.join("index.json").is_file())
                    || (diff.join("manifest.json").is_file()
                        && extracted.entries < 10_000
                        && has_json_config(&diff))
                {
                    return Err(Error::invalid_input(format!(
                        "{}: this is a compressed image archive, not a layer; decompress it first ({} -d)",
                        path.display(),
                        if comp == Compression::Zstd {
                            "zstd"
                        } else {
                            "gzip"
                        }
                    )));
                }
                let size = if self.layer_exists(&streamed.diff_id)
                    || stage.layers.contains_key(&streamed.diff_id)
                {
                    obs.layer(&streamed.diff_id, LayerEvent::Exists);
                    out.layers_existing += 1;
                    self.known_layer_size(stage, &streamed.diff_id)?
                        .unwrap_or(0)
                } else {
                    let rec = self.finish_layer(&work, &streamed.diff_id, &extracted)?;
                    obs.layer(&streamed.diff_id, LayerEvent::extracted(&rec));
                    out.layers_extracted += 1;
                    stage.adopt_layer(&work, rec)?
                };
                stage.adopt_blob(self, &incoming, streamed.blob)?;
                LayerRef {
                    diff_id: streamed.diff_id,
                    blob: streamed.blob,
                    media_type: comp.media_type().to_string(),
                    blob_size: streamed.blob_size,
                    size,
                }
            }
        };
        let platform = Platform::host();
        let config = serde_json::json!({
            "architecture": platform.arch,
            "os": platform.os,
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [layer.diff_id.to_string()] },
        });
        let config = serde_json::to_vec(&config)
            .map_err(|e| Error::new(format!("encoding a config: {e}")))?;
        let config_digest = Digest::of(&config);
        let manifest = make_manifest(&config, std::slice::from_ref(&layer))?;
        stage.put_blob(self, &manifest.bytes)?;
        stage.put_blob(self, &config)?;
        let rec = ImageRecord {
            id: config_digest,
            manifest_digest: manifest.digest,
            manifest_media_type: manifest.media_type,
            config_digest,
            size: layer.size,
            layers: vec![layer],
            tags: Vec::new(),
            created: None,
            imported: now_secs(),
            platform: platform.to_string(),
        };
        Ok((rec, Vec::new()))
    }

    /// Add a layer from an uncompressed tar stream (a container commit): extracted,
    /// recorded, and its tar kept as a blob (digest = diff-id). Returns the layer as an
    /// image lists it. A layer already present is not written again.
    pub fn add_layer_tar(&self, reader: impl Read + Send + 'static) -> Result<LayerRef> {
        let lock = self.lock()?;
        let mut stage = Stage::new(self)?;
        let incoming = stage.incoming();
        let blob_file = File::create(&incoming).ctx(format!("creating {}", incoming.display()))?;
        let work = stage.dir.join("layer-tar");
        fs::create_dir_all(work.join("diff")).ctx(format!("creating {}", work.display()))?;
        let streamed = stream_blob(
            "new layer",
            None,
            Box::new(reader),
            Compression::None,
            self.expansion,
            Some(blob_file),
            Some((&work.join("diff"), stage.extract_options(self))),
            &|_| {},
        )?;
        let extracted = streamed.extracted.expect("extracted");
        let size = match self.layer_record(&streamed.diff_id)? {
            Some(r) => r.size,
            None => {
                let rec = self.finish_layer(&work, &streamed.diff_id, &extracted)?;
                stage.adopt_layer(&work, rec)?
            }
        };
        stage.adopt_blob(self, &incoming, streamed.blob)?;
        self.commit_stage(&stage, &lock)?;
        Ok(LayerRef {
            diff_id: streamed.diff_id,
            blob: streamed.blob,
            media_type: Compression::None.media_type().to_string(),
            blob_size: streamed.blob_size,
            size,
        })
    }

    /// Record an image whose layers are in the store already (after `add_layer_tar`):
    /// the manifest and config are stored as blobs and checked against each other and
    /// against the store. Returns the stored record.
    pub fn add_image(
        &self,
        manifest: &[u8],
        config: &[u8],
        tags: &[String],
    ) -> Result<ImageRecord> {
        let tags = tags
            .iter()
            .map(|t| Reference::parse_tag(t))
            .collect::<Result<Vec<_>>>()?;
        let config_digest = Digest::of(config);
        let manifest = ManifestBlob {
            bytes: manifest.to_vec(),
            digest: Digest::of(manifest),
            media_type: String::new(),
        };
        let what = format!("image {}", config_digest.short());
        let plan = ImagePlan::from_manifest(&what, &GivenConfig(config), manifest, Vec::new())?;
        let manifest = plan.manifest.clone().expect("planned from a manifest");
        let lock = self.lock()?;
        let mut layers = Vec::new();
        for l in &plan.layers {
            let blob = l.blob.expect("planned from a manifest");
            let rec = self.layer_record(&l.diff_id)?.ok_or_else(|| {
                Error::not_found(format!("layer {} is not in the store", l.diff_id))
            })?;
            if !self.has_blob(&blob) {
                return Err(Error::not_found(format!("blob {blob} is not in the store")));
            }
            layers.push(LayerRef {
                diff_id: l.diff_id,
                blob,
                media_type: l.media_type.clone(),
                blob_size: l.blob_size.unwrap_or(0),
                size: rec.size,
            });
        }
        let mut stage = Stage::new(self)?;
        stage.put_blob(self, &manifest.bytes)?;
        stage.put_blob(self, &plan.config)?;
        self.commit_stage(&stage, &lock)?;
        let mut rec = plan.record(&manifest, layers);
        let mut catalog = self.images()?;
        let stored = upsert(&mut catalog, &mut rec, &tags);
        self.write_images(&catalog, &lock)?;
        Ok(stored)
    }
}

/// A manifest and config handed over whole (a commit): the layer blobs are in the store.
struct GivenConfig<'a>(&'a [u8]);

impl PlanSource for GivenConfig<'_> {
    fn config(&self, _: &Digest, _: u64) -> Result<Vec<u8>> {
        Ok(self.0.to_vec())
    }

    fn layer_member(&self, digest: &Digest) -> Result<String> {
        Ok(digest.to_string())
    }

    fn unreadable_media_type(&self) -> &'static str {
        "unknown"
    }
}

/// An OCI manifest for a config and layers that came without one (docker archives,
/// layer tars).
fn make_manifest(config: &[u8], layers: &[LayerRef]) -> Result<ManifestBlob> {
    let enc = |e: oci_spec::OciSpecError| Error::new(format!("making a manifest: {e}"));
    let od = |d: &Digest| -> Result<oci_spec::image::Digest> {
        d.to_string()
            .parse()
            .map_err(|e: oci_spec::OciSpecError| Error::new(format!("making a manifest: {e}")))
    };
    let cfg = DescriptorBuilder::default()
        .media_type(MediaType::from(OCI_CONFIG))
        .digest(od(&Digest::of(config))?)
        .size(config.len() as u64)
        .build()
        .map_err(enc)?;
    let mut descs = Vec::new();
    for layer in layers {
        descs.push(
            DescriptorBuilder::default()
                .media_type(MediaType::from(layer.media_type.as_str()))
                .digest(od(&layer.blob)?)
                .size(layer.blob_size)
                .build()
                .map_err(enc)?,
        );
    }
    let m = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(cfg)
        .layers(descs)
        .build()
        .map_err(enc)?;
    let bytes = m.to_string().map_err(enc)?.into_bytes();
    Ok(ManifestBlob {
        digest: Digest::of(&bytes),
        bytes,
        media_type: OCI_MANIFEST.to_string(),
    })
}

fn hash_file(path: &Path) -> Result<Digest> {
    let mut f = File::open(path).ctx(format!("opening {}", path.display()))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .ctx(format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Whether a directory holds what a docker archive has next to `manifest.json`: a
/// `<64 hex>.json` config or a `blobs/sha256` dir.
fn has_json_config(dir: &Path) -> bool {
    if dir.join("blobs/sha256").is_dir() {
        return true;
    }
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .is_some_and(|h| Digest::from_hex(h).is_some())
        })
    })
}
