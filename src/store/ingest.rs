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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::store::digest::Digest;
use crate::store::images::{ImageRecord, LayerRef, Reference};
use crate::store::parallel::run_bounded;
use crate::store::plan::{ImagePlan, LayerPlan};
use crate::store::stage::{ImportObserver, LayerEvent, Stage, upsert};
use crate::store::stream::stream_blob;
use crate::store::{LayerRecord, Store};

/// Where layer blobs come from.
pub trait BlobFetcher: Sync {
    /// A reader over the whole blob of `layer`, from its first byte. It may resume
    /// interrupted transfers underneath; whatever it yields is verified against the
    /// layer's digest and size.
    fn open(&self, layer: &LayerPlan) -> Result<Box<dyn Read + Send>>;
}

/// What `ingest` did.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The record as stored.
    pub image: ImageRecord,
    /// Whether the store had this image (same id and manifest) before.
    pub was_present: bool,
    /// Layers whose blob was fetched (extracted or not).
    pub layers_fetched: usize,
    /// Layers found in the store: nothing fetched for them.
    pub layers_existing: usize,
    /// Blob bytes fetched.
    pub bytes_fetched: u64,
}

/// One blob to fetch.
struct Job {
    /// Index of the first layer in the plan with this blob.
    layer: usize,
    /// Extract it (else the layer is here or being extracted by another job: the blob is
    /// fetched and verified, then only stored).
    extract: bool,
}

/// A finished job.
struct Done {
    blob: Digest,
    blob_size: u64,
    blob_file: PathBuf,
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
            return Err(io::Error::other("stopped: another layer failed"));
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
    pub fn ingest(
        &self,
        what: &str,
        plan: &ImagePlan,
        fetch: &dyn BlobFetcher,
        parallel: usize,
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
        let mut idx = self.images()?;
        let was_present = idx
            .get(&plan.config_digest)
            .is_some_and(|r| r.manifest_digest == manifest.digest);

        // Decide per layer: here already, or fetched (once per blob; extracted once per
        // diff-id).
        let mut jobs: Vec<Job> = Vec::new();
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut extracting: HashSet<Digest> = HashSet::new();
        let mut existing = 0;
        // Every layer of a manifest names its blob by digest and size.
        let blobs = plan
            .layers
            .iter()
            .map(|l| {
                l.blob
                    .zip(l.blob_size)
                    .ok_or_else(|| Error::new(format!("{what}: layer {} has no digest", l.diff_id)))
            })
            .collect::<Result<Vec<(Digest, u64)>>>()?;
        for (i, (l, &(blob, _))) in plan.layers.iter().zip(&blobs).enumerate() {
            // A blob listed twice (empty layers often are) is handled once.
            if !seen.insert(blob) {
                continue;
            }
            let layer_here = self.layer_exists(&l.diff_id);
            if layer_here && self.blob_path(&blob).is_file() {
                obs.layer(&blob, LayerEvent::Exists);
                existing += 1;
                continue;
            }
            let extract = !layer_here && extracting.insert(l.diff_id);
            jobs.push(Job { layer: i, extract });
        }

        // Fetch: a bounded set of workers takes jobs in manifest order.
        let stage_dir = stage.dir.clone();
        let results = run_bounded(jobs.len(), parallel, |j, cancel| {
            let job = &jobs[j];
            let l = &plan.layers[job.layer];
            self.fetch_layer(
                what,
                j,
                job,
                l,
                blobs[job.layer],
                &stage_dir,
                fetch,
                cancel,
                obs,
            )
        })?;

        // Everything verified: stage it under its final names.
        let mut bytes_fetched = 0;
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for (job, done) in jobs.iter().zip(results) {
            bytes_fetched += done.blob_size;
            let diff_id = plan.layers[job.layer].diff_id;
            if self.blob_path(&done.blob).is_file() || stage.blobs.contains(&done.blob) {
                let _ = fs::remove_file(&done.blob_file);
            } else {
                fs::rename(&done.blob_file, stage.blob(&done.blob))
                    .ctx(format!("renaming {}", done.blob_file.display()))?;
                stage.blobs.insert(done.blob);
            }
            if let Some((dir, rec)) = done.layer {
                fs::rename(&dir, stage.layer(&diff_id))
                    .ctx(format!("renaming {}", dir.display()))?;
                sizes.insert(diff_id, rec.size);
                stage.layers.insert(diff_id, rec);
            }
        }
        let mut layers = Vec::new();
        for (l, &(blob, blob_size)) in plan.layers.iter().zip(&blobs) {
            let size = match sizes.get(&l.diff_id) {
                Some(s) => *s,
                None => self
                    .layer_record(&l.diff_id)?
                    .map(|r| r.size)
                    .ok_or_else(|| Error::new(format!("{what}: layer {} is missing", l.diff_id)))?,
            };
            layers.push(LayerRef {
                diff_id: l.diff_id,
                blob,
                media_type: l.media_type.clone(),
                blob_size,
                size,
            });
        }
        stage.put_blob(self, &manifest.bytes)?;
        stage.put_blob(self, &plan.config)?;
        self.commit_stage(&stage, &lock)?;
        let mut rec = plan.record(manifest, layers);
        let image = upsert(&mut idx, &mut rec, &tags);
        self.write_images(&idx, &lock)?;
        drop(stage);
        Ok(Ingested {
            image,
            was_present,
            layers_fetched: jobs.len(),
            layers_existing: existing,
            bytes_fetched,
        })
    }

    /// Fetch one blob into the staging dir, verifying it, and extract it when asked.
    #[allow(clippy::too_many_arguments)]
    fn fetch_layer(
        &self,
        what: &str,
        n: usize,
        job: &Job,
        l: &LayerPlan,
        (blob, size): (Digest, u64),
        stage_dir: &std::path::Path,
        fetch: &dyn BlobFetcher,
        cancel: &AtomicBool,
        obs: &dyn ImportObserver,
    ) -> Result<Done> {
        let what = format!("{what}: layer {blob}");
        obs.layer(&blob, LayerEvent::Start { size });
        let blob_file = stage_dir.join(format!("fetch-{n}.blob"));
        let out = File::create(&blob_file).ctx(format!("creating {}", blob_file.display()))?;
        let work = stage_dir.join(format!("fetch-{n}"));
        if job.extract {
            fs::create_dir_all(work.join("diff")).ctx(format!("creating {}", work.display()))?;
        }
        let reader = fetch.open(l)?;
        let report = |done: u64| obs.layer(&blob, LayerEvent::Progress { done });
        let metered = Metered {
            inner: reader,
            done: 0,
            last: Instant::now(),
            report: &report,
            cancel,
        };
        let extract_to = job.extract.then(|| work.join("diff"));
        let s = stream_blob(
            &what,
            Some(blob),
            Box::new(metered),
            l.compression,
            self.expansion,
            Some(out),
            extract_to.as_deref().map(|p| (p, self.extract)),
            &|_| {},
        )?;
        l.verify(&what, &s)?;
        let layer = match s.extracted {
            Some(x) => {
                let rec = self.finish_layer(&work, &l.diff_id, &x)?;
                obs.layer(
                    &blob,
                    LayerEvent::Extracted {
                        size: rec.size,
                        entries: rec.entries,
                    },
                );
                Some((work, rec))
            }
            None => {
                obs.layer(&blob, LayerEvent::BlobStored);
                None
            }
        };
        Ok(Done {
            blob,
            blob_size: s.blob_size,
            blob_file,
            layer,
        })
    }
}
