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
use crate::store::images::{ImageIndex, ImageRecord, LayerRef, Reference};
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

/// One layer ready for the image record.
struct DoneLayer {
    r: LayerRef,
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
            return Err(Error::new(format!(
                "{}: holds {} images; --tag needs a source with one",
                path.display(),
                plans.len()
            )));
        }
        let lock = self.lock()?;
        let mut stage = Stage::new(self)?;
        let mut idx = self.images()?;
        let mut out = Imported {
            format: src.format,
            images: Vec::new(),
            layers_extracted: 0,
            layers_existing: 0,
        };
        let mut records = Vec::new();
        if let Format::LayerTar(comp) = src.format {
            records.push(self.import_layer_tar(&src, comp, &mut stage, &idx, obs, &mut out)?);
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
            let stored = upsert(&mut idx, &mut rec, &tags);
            out.images.push(stored);
        }
        self.write_images(&idx, &lock)?;
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
        let mut done = Vec::new();
        for l in &plan.layers {
            done.push(self.import_layer(src, l, stage, obs, out)?);
        }
        let manifest = match &plan.manifest {
            Some(m) => m.clone(),
            None => make_manifest(&plan.config, &done)?,
        };
        stage.put_blob(self, &manifest.bytes)?;
        stage.put_blob(self, &plan.config)?;
        let rec = plan.record(&manifest, done.into_iter().map(|d| d.r).collect());
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
        l: &LayerPlan,
        stage: &mut Stage,
        obs: &dyn ImportObserver,
        out: &mut Imported,
    ) -> Result<DoneLayer> {
        let what = match &l.blob {
            Some(d) => format!("{}: layer {d}", src.path.display()),
            None => format!("{}: layer {}", src.path.display(), l.member),
        };
        let existing = self.known_layer_size(stage, &l.diff_id)?;
        if let (Some(size), Some(blob)) = (existing, &l.blob)
            && (self.blob_path(blob).is_file() || stage.blobs.contains(blob))
        {
            obs.layer(&l.diff_id, LayerEvent::Exists);
            out.layers_existing += 1;
            let bsize = match l.blob_size {
                Some(n) => n,
                None => fs::metadata(self.blob_path(blob))
                    .or_else(|_| fs::metadata(stage.blob(blob)))
                    .map(|m| m.len())
                    .unwrap_or(0),
            };
            return Ok(DoneLayer {
                r: LayerRef {
                    diff_id: l.diff_id,
                    blob: *blob,
                    media_type: l.media_type.clone(),
                    blob_size: bsize,
                    size,
                },
            });
        }
        let (reader, size) = src.files.open(&l.member)?;
        let incoming = stage.incoming();
        let blob_file = File::create(&incoming).ctx(format!("creating {}", incoming.display()))?;
        obs.layer(&l.diff_id, LayerEvent::Start { size });
        let diff_id = l.diff_id;
        let progress = |done: u64| obs.layer(&diff_id, LayerEvent::Progress { done });
        let layer_dir = stage.layer(&l.diff_id);
        let extract_to = if existing.is_none() {
            fs::create_dir_all(layer_dir.join("diff"))
                .ctx(format!("creating {}", layer_dir.display()))?;
            Some((layer_dir.join("diff"), self.extract))
        } else {
            None
        };
        let res = stream_blob(
            &what,
            l.blob,
            reader,
            l.compression,
            self.expansion,
            Some(blob_file),
            extract_to.as_ref().map(|(p, o)| (p.as_path(), *o)),
            &progress,
        );
        let s = match res {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&incoming);
                return Err(e);
            }
        };
        l.verify(&what, &s)?;
        let blob_path = stage.blob(&s.blob);
        let blob_new = !(self.blob_path(&s.blob).is_file() || stage.blobs.contains(&s.blob));
        if blob_new {
            fs::rename(&incoming, &blob_path).ctx(format!("renaming {}", incoming.display()))?;
            stage.blobs.insert(s.blob);
        } else {
            let _ = fs::remove_file(&incoming);
        }
        let size = match (existing, s.extracted) {
            (Some(size), _) => {
                let ev = if blob_new {
                    LayerEvent::BlobStored
                } else {
                    LayerEvent::Exists
                };
                obs.layer(&l.diff_id, ev);
                out.layers_existing += 1;
                size
            }
            (None, Some(x)) => {
                let rec = self.finish_layer(&layer_dir, &l.diff_id, &x)?;
                out.layers_extracted += 1;
                stage.extracted(obs, l.diff_id, rec)
            }
            (None, None) => unreachable!("extraction requested"),
        };
        Ok(DoneLayer {
            r: LayerRef {
                diff_id: l.diff_id,
                blob: s.blob,
                media_type: l.media_type.clone(),
                blob_size: s.blob_size,
                size,
            },
        })
    }

    fn import_layer_tar(
        &self,
        src: &Source,
        comp: Compression,
        stage: &mut Stage,
        idx: &ImageIndex,
        obs: &dyn ImportObserver,
        out: &mut Imported,
    ) -> Result<(ImageRecord, Vec<String>)> {
        let path = &src.path;
        // Hash the file first (cheap next to extraction): a layer imported before is
        // found by its blob digest and not extracted again.
        let blob = hash_file(path)?;
        let known = idx
            .images
            .values()
            .flat_map(|r| r.layers.iter())
            .find(|l| l.blob == blob && self.layer_exists(&l.diff_id))
            .cloned();
        let lref = match known {
            Some(l) => {
                obs.layer(&l.diff_id, LayerEvent::Exists);
                out.layers_existing += 1;
                l
            }
            None => {
                let f = File::open(path).ctx(format!("opening {}", path.display()))?;
                let size = f.metadata().ctx(format!("stat {}", path.display()))?.len();
                let incoming = stage.incoming();
                let blob_file =
                    File::create(&incoming).ctx(format!("creating {}", incoming.display()))?;
                let work = stage.dir.join("layer-tar");
                fs::create_dir_all(work.join("diff"))
                    .ctx(format!("creating {}", work.display()))?;
                obs.layer(&blob, LayerEvent::Start { size });
                let progress = |done: u64| obs.layer(&blob, LayerEvent::Progress { done });
                let what = format!("{}: layer", path.display());
                let s = stream_blob(
                    &what,
                    Some(blob),
                    Box::new(f),
                    comp,
                    self.expansion,
                    Some(blob_file),
                    Some((&work.join("diff"), self.extract)),
                    &progress,
                )?;
                if s.blob != blob {
                    return Err(Error::new(format!(
                        "{}: changed while it was read",
                        path.display()
                    )));
                }
                let x = s.extracted.expect("extracted");
                let diff = work.join("diff");
                if (diff.join("oci-layout").is_file() && diff.join("index.json").is_file())
                    || (diff.join("manifest.json").is_file()
                        && x.entries < 10_000
                        && has_json_config(&diff))
                {
                    return Err(Error::new(format!(
                        "{}: this is a compressed image archive, not a layer; decompress it first ({} -d)",
                        path.display(),
                        if comp == Compression::Zstd {
                            "zstd"
                        } else {
                            "gzip"
                        }
                    )));
                }
                let size = if self.layer_exists(&s.diff_id) || stage.layers.contains_key(&s.diff_id)
                {
                    obs.layer(&s.diff_id, LayerEvent::Exists);
                    out.layers_existing += 1;
                    self.known_layer_size(stage, &s.diff_id)?.unwrap_or(0)
                } else {
                    let rec = self.finish_layer(&work, &s.diff_id, &x)?;
                    fs::rename(&work, stage.layer(&s.diff_id))
                        .ctx(format!("renaming {}", work.display()))?;
                    out.layers_extracted += 1;
                    stage.extracted(obs, s.diff_id, rec)
                };
                if !self.blob_path(&s.blob).is_file() {
                    fs::rename(&incoming, stage.blob(&s.blob))
                        .ctx(format!("renaming {}", incoming.display()))?;
                    stage.blobs.insert(s.blob);
                }
                LayerRef {
                    diff_id: s.diff_id,
                    blob: s.blob,
                    media_type: comp.media_type().to_string(),
                    blob_size: s.blob_size,
                    size,
                }
            }
        };
        let platform = Platform::host();
        let config = serde_json::json!({
            "architecture": platform.arch,
            "os": platform.os,
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [lref.diff_id.to_string()] },
        });
        let config = serde_json::to_vec(&config)
            .map_err(|e| Error::new(format!("encoding a config: {e}")))?;
        let config_digest = Digest::of(&config);
        let done = vec![DoneLayer { r: lref }];
        let manifest = make_manifest(&config, &done)?;
        stage.put_blob(self, &manifest.bytes)?;
        stage.put_blob(self, &config)?;
        let rec = ImageRecord {
            id: config_digest,
            manifest_digest: manifest.digest,
            manifest_media_type: manifest.media_type,
            config_digest,
            size: done[0].r.size,
            layers: done.into_iter().map(|d| d.r).collect(),
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
        let s = stream_blob(
            "new layer",
            None,
            Box::new(reader),
            Compression::None,
            self.expansion,
            Some(blob_file),
            Some((&work.join("diff"), self.extract)),
            &|_| {},
        )?;
        let x = s.extracted.expect("extracted");
        let size = match self.layer_record(&s.diff_id)? {
            Some(r) => r.size,
            None => {
                let rec = self.finish_layer(&work, &s.diff_id, &x)?;
                fs::rename(&work, stage.layer(&s.diff_id))
                    .ctx(format!("renaming {}", work.display()))?;
                let size = rec.size;
                stage.layers.insert(s.diff_id, rec);
                size
            }
        };
        if !self.blob_path(&s.blob).is_file() {
            fs::rename(&incoming, stage.blob(&s.blob))
                .ctx(format!("renaming {}", incoming.display()))?;
            stage.blobs.insert(s.blob);
        }
        self.commit_stage(&stage, &lock)?;
        Ok(LayerRef {
            diff_id: s.diff_id,
            blob: s.blob,
            media_type: Compression::None.media_type().to_string(),
            blob_size: s.blob_size,
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
            let rec = self
                .layer_record(&l.diff_id)?
                .ok_or_else(|| Error::new(format!("layer {} is not in the store", l.diff_id)))?;
            if !self.blob_path(&blob).is_file() {
                return Err(Error::new(format!("blob {blob} is not in the store")));
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
        let mut idx = self.images()?;
        let stored = upsert(&mut idx, &mut rec, &tags);
        self.write_images(&idx, &lock)?;
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
fn make_manifest(config: &[u8], layers: &[DoneLayer]) -> Result<ManifestBlob> {
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
    for l in layers {
        descs.push(
            DescriptorBuilder::default()
                .media_type(MediaType::from(l.r.media_type.as_str()))
                .digest(od(&l.r.blob)?)
                .size(l.r.blob_size)
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
