//! Ingesting an image that arrives blob by blob (a registry pull): the caller has fetched
//! and verified the manifest and the config; the layer blobs are streamed one by one,
//! several at once, through the same verified path as `import` (blob digest and size
//! checked while the blob streams, decompressed, diff-id checked, extracted safely into
//! the staging dir, renamed into place only when the whole image checked out).
//!
//! A layer already in the store (with its blob) is not fetched at all: pulling an image
//! whose layers are all here transfers nothing but its manifest and config. A layer that
//! is here under another blob (the same tar compressed differently) has its blob fetched
//! and verified but is not extracted again.
//!
//! Progress is reported by blob digest (what a registry names a layer by), not by diff-id
//! as `import` does.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::store::digest::Digest;
use crate::store::extract::ExtractOptions;
use crate::store::images::{LayerRef, Reference};
use crate::store::lazy::{BlobForm, LazyRecord, LazySource};
use crate::store::parallel::run_bounded;
use crate::store::partial::{Form, Partial, PartialPulled};
use crate::store::plan::{ImagePlan, LayerPlan};
use crate::store::stage::{ImportObserver, LayerEvent, Stage, upsert};
use crate::store::stream::stream_blob;
use crate::store::{LayerRecord, Store};

/// Where layer blobs come from.
pub(crate) trait BlobFetcher: Sync {
    /// A reader over the whole blob of `layer`, from its first byte. It may resume
    /// interrupted transfers underneath; whatever it yields is verified against the
    /// layer's digest and size.
    fn open(&self, layer: &LayerPlan) -> Result<Box<dyn Read + Send>>;

    /// A reader over bytes `start..end` of the blob of `layer`, or `None` where the
    /// source cannot read part of a blob (then partial pulls are not tried).
    fn range(
        &self,
        _layer: &LayerPlan,
        _start: u64,
        _end: u64,
    ) -> Result<Option<Box<dyn Read + Send>>> {
        Ok(None)
    }
}

/// What `ingest` did.
#[derive(Debug, Clone)]
pub(crate) struct Ingested {
    /// Whether the store had this image (same id and manifest) before.
    pub was_present: bool,
}

/// One blob to fetch.
struct Job {
    /// Index of the first layer in the plan with this blob.
    layer: usize,
    blob: Digest,
    blob_size: u64,
    /// Extract it (else the layer is here or being extracted by another job: the blob is
    /// fetched and verified, then only stored).
    extract: bool,
}

/// What every job of one ingest shares.
struct Fetching<'a> {
    /// Names the image in errors.
    what: &'a str,
    stage_dir: &'a Path,
    /// How layers are extracted (into this import's file objects).
    extract: ExtractOptions,
    fetch: &'a dyn BlobFetcher,
    obs: &'a dyn ImportObserver,
    /// A lazy pull, and where from.
    lazy: Option<&'a LazySource>,
}

/// A finished job.
struct Done {
    blob: Digest,
    /// The fetched blob (none after a partial pull).
    blob_file: Option<PathBuf>,
    /// The staged layer dir and its record, when extracted.
    layer: Option<(PathBuf, LayerRecord)>,
}

/// Counts what passes, reports progress at most every 100 ms, and stops when told to.
struct Metered<'a> {
    inner: Box<dyn Read + Send>,
    done: u64,
    last: Instant,
    report: &'a (dyn Fn(u64) + Sync),
    cancel: &'a AtomicBool,
}

impl Read for Metered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other(Error::cancelled(
                "stopped: another layer failed",
            )));
        }
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if n == 0 || self.last.elapsed() >= Duration::from_millis(100) {
            self.last = Instant::now();
            (self.report)(self.done);
        }
        Ok(n)
    }
}

impl Store {
    /// Ingest the image `plan` describes, fetching the layer blobs the store lacks from
    /// `fetch`, up to `parallel` at once. `what` names the image in errors. The plan's
    /// tags are given to the image. On any error the store is left as it was.
    pub(crate) fn ingest(
        &self,
        what: &str,
        plan: &ImagePlan,
        fetch: &dyn BlobFetcher,
        parallel: usize,
        lazy: Option<&LazySource>,
        obs: &dyn ImportObserver,
    ) -> Result<Ingested> {
        let tags = plan
            .tags
            .iter()
            .map(|t| Reference::parse_tag(t))
            .collect::<Result<Vec<_>>>()?;
        let Some(manifest) = &plan.manifest else {
            return Err(Error::new(format!("{what}: no manifest")));
        };
        let lock = self.lock()?;
        let mut stage = Stage::new(self)?;
        let mut catalog = self.images()?;
        let was_present = catalog
            .get(&plan.config_digest)
            .is_some_and(|r| r.manifest_digest == manifest.digest);

        // Decide per layer: here already, or fetched (once per blob; extracted once per
        // diff-id).
        let mut jobs: Vec<Job> = Vec::new();
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut extracting: HashSet<Digest> = HashSet::new();
        // Every layer of a manifest names its blob by digest and size.
        let blobs = plan
            .layers
            .iter()
            .map(|l| {
                l.blob.zip(l.blob_size).ok_or_else(|| {
                    Error::corrupt(format!("{what}: layer {} has no digest", l.diff_id))
                })
            })
            .collect::<Result<Vec<(Digest, u64)>>>()?;
        for (i, (layer, &(blob, blob_size))) in plan.layers.iter().zip(&blobs).enumerate() {
            // A blob listed twice (empty layers often are) is handled once.
            if !seen.insert(blob) {
                continue;
            }
            let layer_here = self.layer_exists(&layer.diff_id);
            // A layer pulled lazily serves another image (or a full pull) only once it
            // is complete and checked against its diff-id.
            if layer_here
                && let Some(rec) = self.lazy_record(&layer.diff_id)?
                && !(lazy.is_some() && rec.blob == blob)
            {
                self.finish_lazy(&layer.diff_id)
                    .map_err(|e| e.context(what))?;
            }
            // A zstd:chunked layer whose tar the store can rebuild needs nothing fetched:
            // a partial pull would find every file here (its blob is not kept).
            let rebuildable = (layer.chunked.is_some() || layer.estargz.is_some())
                && self.tar_split_path(&layer.diff_id).is_file();
            if layer_here && (self.has_blob(&blob) || rebuildable) {
                obs.layer(&blob, LayerEvent::Exists);
                continue;
            }
            let extract = !layer_here && extracting.insert(layer.diff_id);
            jobs.push(Job {
                layer: i,
                blob,
                blob_size,
                extract,
            });
        }

        // Fetch: a bounded set of workers takes jobs in manifest order.
        let stage_dir = stage.dir.clone();
        let fetching = Fetching {
            what,
            stage_dir: &stage_dir,
            extract: stage.extract_options(self),
            fetch,
            obs,
            lazy,
        };
        let results = run_bounded(jobs.len(), parallel, |job_no, cancel| {
            let job = &jobs[job_no];
            self.fetch_layer(&fetching, job_no, job, &plan.layers[job.layer], cancel)
        })?;

        // Everything verified: stage it under its final names.
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for (job, done) in jobs.iter().zip(results) {
            let diff_id = plan.layers[job.layer].diff_id;
            if let Some((dir, rec)) = done.layer {
                sizes.insert(diff_id, stage.adopt_layer(&dir, rec)?);
            }
            // After the layer: a tar blob staged with its record is not kept.
            if let Some(f) = &done.blob_file {
                stage.adopt_blob(self, f, done.blob)?;
            }
        }
        let mut layers = Vec::new();
        for (layer, &(blob, blob_size)) in plan.layers.iter().zip(&blobs) {
            let size = match sizes.get(&layer.diff_id) {
                Some(s) => *s,
                None => self
                    .layer_record(&layer.diff_id)?
                    .map(|r| r.size)
                    .ok_or_else(|| {
                        Error::not_found(format!("{what}: layer {} is missing", layer.diff_id))
                    })?,
            };
            layers.push(LayerRef {
                diff_id: layer.diff_id,
                blob,
                media_type: layer.media_type.clone(),
                blob_size,
                size,
            });
        }
        stage.put_blob(self, &manifest.bytes)?;
        stage.put_blob(self, &plan.config)?;
        self.commit_stage(&stage, &lock)?;
        let mut rec = plan.record(manifest, layers);
        upsert(&mut catalog, &mut rec, &tags);
        self.write_images(&catalog, &lock)?;
        drop(stage);
        Ok(Ingested { was_present })
    }

    /// Fetch one blob into the staging dir, verifying it, and extract it when asked.
    fn fetch_layer(
        &self,
        ctx: &Fetching<'_>,
        job_no: usize,
        job: &Job,
        layer: &LayerPlan,
        cancel: &AtomicBool,
    ) -> Result<Done> {
        let (blob, obs) = (job.blob, ctx.obs);
        let what = format!("{}: layer {blob}", ctx.what);
        obs.layer(
            &blob,
            LayerEvent::Start {
                size: job.blob_size,
            },
        );
        let work = ctx.stage_dir.join(format!("fetch-{job_no}"));
        if job.extract {
            fs::create_dir_all(work.join("diff")).ctx(format!("creating {}", work.display()))?;
        }
        let report = |done: u64| obs.layer(&blob, LayerEvent::Progress { done });
        let form = (layer.chunked.map(Form::ZstdChunked)).or(layer.estargz.map(Form::Estargz));
        if job.extract
            && let Some(form) = form
        {
            let p = Partial {
                what: &what,
                layer,
                form,
                blob_size: job.blob_size,
                fetch: ctx.fetch,
                cancel,
                lazy: ctx.lazy.is_some(),
            };
            if let Some(PartialPulled {
                streamed,
                stats,
                deferred,
            }) = self.pull_partial(&p, &work, ctx.extract.clone(), &report)?
            {
                if let Some(src) = ctx.lazy
                    && !deferred.is_empty()
                {
                    // Checked against the diff-id once complete (`finish_lazy`).
                    Store::write_lazy_record(
                        &work,
                        &LazyRecord {
                            reference: src.reference.clone(),
                            insecure: src.insecure,
                            timeout_ms: Some(src.timeout_ms),
                            retries: Some(src.retries),
                            blob,
                            form: match form {
                                Form::ZstdChunked(_) => BlobForm::ZstdChunked,
                                Form::Estargz(t) if t.zstd_frame.is_some() => BlobForm::StargzZstd,
                                Form::Estargz(_) => BlobForm::Estargz,
                            },
                            objects: deferred,
                        },
                    )?;
                } else if streamed.diff_id != layer.diff_id {
                    return Err(Error::corrupt(format!(
                        "{what}: diff-id mismatch: the layer rebuilt from its TOC and the \
                         parts fetched by range hashes to {}, the config says {}",
                        streamed.diff_id, layer.diff_id
                    )));
                }
                let tree = streamed.extracted.expect("extracted");
                let rec = self.finish_layer(&work, &layer.diff_id, &tree)?;
                obs.layer(
                    &blob,
                    LayerEvent::PartialPull {
                        fetched: stats.bytes,
                        of: job.blob_size,
                        requests: stats.requests,
                        from_store: stats.reused,
                        files: stats.reused + stats.fetched + stats.deferred,
                        later: stats.deferred,
                    },
                );
                return Ok(Done {
                    blob,
                    blob_file: None,
                    layer: Some((work, rec)),
                });
            }
        }
        let blob_file = ctx.stage_dir.join(format!("fetch-{job_no}.blob"));
        let blob_out = File::create(&blob_file).ctx(format!("creating {}", blob_file.display()))?;
        let reader = ctx.fetch.open(layer)?;
        let metered = Metered {
            inner: reader,
            done: 0,
            last: Instant::now(),
            report: &report,
            cancel,
        };
        let extract_to = job.extract.then(|| work.join("diff"));
        let streamed = stream_blob(
            &what,
            Some(blob),
            Box::new(metered),
            layer.compression,
            self.expansion,
            Some(blob_out),
            extract_to.as_deref().map(|p| (p, ctx.extract.clone())),
            &|_| {},
        )?;
        layer.verify(&what, &streamed)?;
        let staged_layer = match streamed.extracted {
            Some(tree) => {
                let rec = self.finish_layer(&work, &layer.diff_id, &tree)?;
                obs.layer(&blob, LayerEvent::extracted(&rec));
                Some((work, rec))
            }
            None => {
                obs.layer(&blob, LayerEvent::BlobStored);
                None
            }
        };
        Ok(Done {
            blob,
            blob_file: Some(blob_file),
            layer: staged_layer,
        })
    }
}
