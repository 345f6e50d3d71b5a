//! Importing images: every layer verified while it streams, staged in a private temp dir,
//! and moved into place only when the whole image checked out.
//!
//! One pass over each layer blob: a reader thread reads the blob (copying it into the
//! staging dir and hashing it: the blob digest), decompresses it and hashes the result
//! (the diff-id), handing the tar stream over a bounded channel to the extracting thread.
//! When the stream ends both digests are compared with the manifest and the config.
//! Layers already in the store are skipped before any of that work ("already exists").
//!
//! Nothing is visible in the store until every layer of every image in the source is
//! verified: then the staged blobs and layer dirs are renamed into place (after one
//! `syncfs`) and the image records written. A failure leaves the store as it was; a crash
//! leaves only the staging dir, which the next command removes.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};

use crate::error::{Error, IoContext, Result};
use crate::store::archive::{
    self, Compression, Format, ImagePlan, LayerPlan, ManifestBlob, OCI_CONFIG, OCI_MANIFEST,
    Platform, Source,
};
use crate::store::digest::{Digest, Hasher};
use crate::store::extract::{self, ExtractOptions, Extracted, remove_tree_at};
use crate::store::images::{ImageIndex, ImageRecord, LayerRef, Reference};
use crate::store::layout::sync_dir;
use crate::store::lock::StoreLock;
use crate::store::{LayerRecord, Store, now_secs};
use crate::sys::{self, Errno, RenameFlags};

/// What `import` should do beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Tag the imported image (only for sources with one image).
    pub tag: Option<String>,
    /// Pick this platform from a multi-platform index (default: the host's).
    pub platform: Option<String>,
}

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

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    pub format: Format,
    /// The records as stored, one per image in the source.
    pub images: Vec<ImageRecord>,
    pub layers_extracted: usize,
    pub layers_existing: usize,
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
        for d in ["blobs", "layers"] {
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

    fn incoming(&mut self) -> PathBuf {
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
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some((parent, name)) = self.dir.parent().zip(self.dir.file_name())
            && let Ok(fd) = sys::open_root_dir(parent)
        {
            let _ = remove_tree_at(fd.as_fd(), name);
        }
    }
}

/// Errors of the reading side of a layer stream.
enum PumpError {
    /// Reading the source failed.
    Source(io::Error),
    /// The blob did not decompress; with the digest of the whole blob when it could be
    /// read to its end (a damaged blob says "digest mismatch" rather than "corrupt").
    Decode(io::Error, Option<Digest>),
    /// The extracting side stopped (it has its own error).
    Gone,
    /// The stream expanded past the limit: tar bytes out, blob bytes read.
    Expands(u64, u64),
}

/// A reader that copies what it reads into a file, hashes it and reports progress.
struct Tee<'a, R> {
    inner: R,
    out: Option<File>,
    hasher: Hasher,
    failed: Option<io::Error>,
    progress: &'a (dyn Fn(u64) + Sync),
    last: u64,
    /// Blob bytes read so far, for the decompressing side to check the expansion.
    read: &'a std::cell::Cell<u64>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
                return Err(e);
            }
        };
        self.hasher.update(&buf[..n]);
        self.read.set(self.read.get() + n as u64);
        if let Some(f) = &mut self.out
            && let Err(e) = f.write_all(&buf[..n])
        {
            self.failed = Some(io::Error::new(
                e.kind(),
                format!("writing the staged blob: {e}"),
            ));
            return Err(e);
        }
        if self.hasher.len() - self.last >= 1 << 20 {
            self.last = self.hasher.len();
            (self.progress)(self.last);
        }
        Ok(n)
    }
}

const CHUNK: usize = 256 << 10;

/// How far a compressed layer may expand: past `floor` bytes of tar, at most `ratio`
/// bytes of tar per byte of blob read so far. Real layers stay far below (text and code
/// compress 3 to 10 times); a stream of zeros declared as a layer (a decompression bomb)
/// is stopped after `floor` bytes instead of filling the disk or the CPU for hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpansionLimit {
    pub floor: u64,
    pub ratio: u64,
}

impl Default for ExpansionLimit {
    fn default() -> Self {
        ExpansionLimit {
            floor: 256 << 20,
            ratio: 100,
        }
    }
}

impl ExpansionLimit {
    /// The default, or the ratio in `$LAYERFS_MAX_EXPANSION` (`0`: no limit), for the
    /// rare real layer that holds gigabytes of zeros.
    pub fn from_env() -> Result<Self> {
        let mut lim = ExpansionLimit::default();
        if let Some(v) = std::env::var_os("LAYERFS_MAX_EXPANSION") {
            let ratio: u64 = v
                .to_str()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    Error::new(format!(
                        "LAYERFS_MAX_EXPANSION={}: expected a whole number (0 for no limit)",
                        v.to_string_lossy()
                    ))
                })?;
            lim.ratio = if ratio == 0 { u64::MAX } else { ratio };
        }
        Ok(lim)
    }

    fn exceeded(&self, out: u64, read: u64) -> bool {
        self.ratio != u64::MAX && out > self.floor && out / self.ratio.max(1) > read
    }
}

/// Why `pump` stopped early.
enum PumpStop {
    Io(io::Error),
    /// The stream expanded past the limit: tar bytes out, blob bytes read.
    Expands(u64, u64),
}

/// Decompress and hash `dec` to its end, sending the data on (when there is a receiver).
/// With `limit`, stop when the output outgrows what the blob read so far (`read`) allows.
fn pump<R: Read>(
    dec: &mut R,
    tx: Option<&SyncSender<Vec<u8>>>,
    pool: &Receiver<Vec<u8>>,
    limit: Option<(ExpansionLimit, &std::cell::Cell<u64>)>,
) -> std::result::Result<(Digest, u64), PumpStop> {
    let mut h = Hasher::new();
    loop {
        let mut buf = pool
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match dec.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PumpStop::Io(e)),
            }
        }
        buf.truncate(filled);
        h.update(&buf);
        if filled == 0 {
            break;
        }
        if let Some((lim, read)) = limit
            && lim.exceeded(h.len(), read.get())
        {
            return Err(PumpStop::Expands(h.len(), read.get()));
        }
        if let Some(tx) = tx
            && tx.send(buf).is_err()
        {
            return Err(PumpStop::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "consumer gone",
            )));
        }
    }
    let n = h.len();
    Ok((h.finish(), n))
}

/// Bytes arriving over the channel, as a `Read` for the tar reader.
struct ChanReader {
    rx: Receiver<Vec<u8>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let old = std::mem::replace(&mut self.cur, next);
                    let _ = self.back.try_send(old);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What streaming one blob found.
pub(super) struct Streamed {
    pub(super) blob: Digest,
    pub(super) blob_size: u64,
    pub(super) diff_id: Digest,
    pub(super) extracted: Option<Extracted>,
}

/// Stream one blob: copy it to `blob_out`, hash it, decompress, hash the tar, and
/// extract it into `extract_to` when given. `what` names the layer in errors.
#[allow(clippy::too_many_arguments)]
pub(super) fn stream_blob<'r>(
    what: &str,
    expected: Option<Digest>,
    reader: Box<dyn Read + Send + 'r>,
    comp: Compression,
    limit: ExpansionLimit,
    blob_out: Option<File>,
    extract_to: Option<(&Path, ExtractOptions)>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Streamed> {
    let (tx, rx) = sync_channel::<Vec<u8>>(16);
    let (back_tx, back_rx) = sync_channel::<Vec<u8>>(16);
    let extracting = extract_to.is_some();
    let produce = move || -> std::result::Result<(Digest, u64, Digest), PumpError> {
        let read = std::cell::Cell::new(0u64);
        let mut tee = Tee {
            inner: reader,
            out: blob_out,
            hasher: Hasher::new(),
            failed: None,
            progress,
            last: 0,
            read: &read,
        };
        let tx = if extracting { Some(&tx) } else { None };
        let limit = (comp != Compression::None).then_some((limit, &read));
        let classify =
            |e: PumpStop, mut tee: Tee<'_, Box<dyn Read + Send + 'r>>| match (e, tee.failed.take())
            {
                (PumpStop::Expands(out, read), _) => PumpError::Expands(out, read),
                (_, Some(src)) => PumpError::Source(src),
                (PumpStop::Io(e), None) if e.kind() == io::ErrorKind::BrokenPipe => PumpError::Gone,
                (PumpStop::Io(e), None) => {
                    let whole = io::copy(&mut tee, &mut io::sink())
                        .ok()
                        .map(|_| tee.hasher.clone().finish());
                    PumpError::Decode(e, whole)
                }
            };
        let (diff, mut tee) = match comp {
            Compression::None => match pump(&mut tee, tx, &back_rx, limit) {
                Ok(r) => (r, tee),
                Err(e) => return Err(classify(e, tee)),
            },
            Compression::Gzip => {
                let mut d =
                    flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, tee));
                match pump(&mut d, tx, &back_rx, limit) {
                    Ok(r) => (r, d.into_inner().into_inner()),
                    Err(e) => return Err(classify(e, d.into_inner().into_inner())),
                }
            }
            Compression::Zstd => {
                let mut d = zstd::Decoder::with_buffer(BufReader::with_capacity(1 << 20, tee))
                    .map_err(|e| PumpError::Decode(e, None))?;
                match pump(&mut d, tx, &back_rx, limit) {
                    Ok(r) => (r, d.finish().into_inner()),
                    Err(e) => return Err(classify(e, d.finish().into_inner())),
                }
            }
        };
        // Whatever follows the compressed stream is part of the blob too.
        if let Err(e) = io::copy(&mut tee, &mut io::sink()) {
            return Err(PumpError::Source(tee.failed.take().unwrap_or(e)));
        }
        if let Some(mut f) = tee.out.take()
            && let Err(e) = f.flush()
        {
            return Err(PumpError::Source(e));
        }
        let size = tee.hasher.len();
        Ok((tee.hasher.finish(), size, diff.0))
    };
    let (pumped, extracted) = std::thread::scope(|s| {
        let h = s.spawn(produce);
        let extracted = match extract_to {
            Some((dir, opts)) => {
                let mut r = ChanReader {
                    rx,
                    back: back_tx,
                    cur: Vec::new(),
                    pos: 0,
                };
                let res = sys::open_root_dir(dir)
                    .map_err(|e| Error::from(e).context(format!("opening {}", dir.display())))
                    .and_then(|fd| extract::extract(&mut r, fd.as_fd(), opts));
                if res.is_ok() {
                    // Trailing blocks after the tar's end still count for the diff-id.
                    let _ = io::copy(&mut r, &mut io::sink());
                }
                drop(r);
                Some(res)
            }
            None => {
                drop(rx);
                None
            }
        };
        let pumped = h.join().unwrap_or_else(|_| {
            Err(PumpError::Source(io::Error::other(
                "reader thread panicked",
            )))
        });
        (pumped, extracted)
    });
    let (blob, blob_size, diff_id) = match pumped {
        Ok(v) => v,
        Err(PumpError::Source(e)) => return Err(Error::io(format!("{what}: reading the blob"), e)),
        Err(PumpError::Decode(e, whole)) => {
            if let (Some(want), Some(got)) = (expected, whole)
                && want != got
            {
                return Err(Error::new(format!(
                    "{what}: blob digest mismatch: the blob hashes to {got} (damaged or altered)"
                )));
            }
            let why = if e.kind() == io::ErrorKind::UnexpectedEof {
                format!("truncated {} stream", comp.name())
            } else {
                format!(
                    "invalid {} stream: {}",
                    comp.name(),
                    crate::error::describe(&e)
                )
            };
            return Err(Error::new(format!("{what}: {why}")));
        }
        Err(PumpError::Expands(out, read)) => {
            return Err(Error::new(format!(
                "{what}: refused: the {} stream expands to more than {out} bytes from {read} bytes \
                 (a layer may expand at most {}:1 past {} MiB; a decompression bomb? \
                 LAYERFS_MAX_EXPANSION=RATIO allows more)",
                comp.name(),
                limit.ratio,
                limit.floor >> 20
            )));
        }
        Err(PumpError::Gone) => match extracted {
            Some(Err(e)) => return Err(e.context(what)),
            _ => return Err(Error::new(format!("{what}: extraction stopped"))),
        },
    };
    let extracted = match extracted {
        Some(Ok(x)) => Some(x),
        Some(Err(e)) => return Err(e.context(what)),
        None => None,
    };
    Ok(Streamed {
        blob,
        blob_size,
        diff_id,
        extracted,
    })
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
        let rec = ImageRecord {
            id: plan.config_digest,
            manifest_digest: manifest.digest,
            manifest_media_type: manifest.media_type.clone(),
            config_digest: plan.config_digest,
            size: done.iter().map(|d| d.r.size).sum(),
            layers: done.into_iter().map(|d| d.r).collect(),
            tags: Vec::new(),
            created: plan.created.clone(),
            imported: now_secs(),
            platform: plan.platform.clone(),
        };
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
            Some((d, _)) => format!("{}: layer {d}", src.path.display()),
            None => format!("{}: layer {}", src.path.display(), l.member),
        };
        let existing = self.known_layer_size(stage, &l.diff_id)?;
        if let (Some(size), Some((blob, bsize))) = (existing, &l.blob)
            && (self.blob_path(blob).is_file() || stage.blobs.contains(blob))
        {
            obs.layer(&l.diff_id, LayerEvent::Exists);
            out.layers_existing += 1;
            let bsize = if *bsize == 0 {
                fs::metadata(self.blob_path(blob))
                    .or_else(|_| fs::metadata(stage.blob(blob)))
                    .map(|m| m.len())
                    .unwrap_or(0)
            } else {
                *bsize
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
        let (reader, size) = src.container.open(&l.member)?;
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
            l.blob.map(|b| b.0),
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
        if let Some((want, want_size)) = &l.blob {
            if s.blob != *want {
                return Err(Error::new(format!(
                    "{what}: blob digest mismatch: the blob hashes to {} (damaged or altered)",
                    s.blob
                )));
            }
            if *want_size != 0 && *want_size != s.blob_size {
                return Err(Error::new(format!(
                    "{what}: size mismatch: the manifest says {want_size} bytes, the blob has {}",
                    s.blob_size
                )));
            }
        }
        if s.diff_id != l.diff_id {
            return Err(Error::new(format!(
                "{what}: diff-id mismatch: the uncompressed layer hashes to {}, the config says {}",
                s.diff_id, l.diff_id
            )));
        }
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
                extracted(stage, out, obs, l.diff_id, rec)
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

    /// Record a freshly extracted layer: `tree.json` for `system check`, `layer.json`.
    pub(super) fn finish_layer(
        &self,
        layer_dir: &Path,
        diff_id: &Digest,
        x: &Extracted,
    ) -> Result<LayerRecord> {
        let diff = layer_dir.join("diff");
        let fd = sys::open_root_dir(&diff).ctx(format!("opening {}", diff.display()))?;
        let scan = extract::scan_tree(fd.as_fd(), &x.file_hashes)
            .ctx(format!("recording the tree of layer {diff_id}"))?;
        let rec = LayerRecord {
            diff_id: *diff_id,
            size: scan.size,
            entries: scan.entries.len() as u64,
            created: now_secs(),
        };
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
                    extracted(stage, out, obs, s.diff_id, rec)
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

    /// Move everything staged into place: data synced first, then renamed, so a layer
    /// dir under its final name is always complete.
    pub(super) fn commit_stage(&self, stage: &Stage, _lock: &StoreLock) -> Result<()> {
        if stage.blobs.is_empty() && stage.layers.is_empty() {
            return Ok(());
        }
        let sd = File::open(&stage.dir).ctx(format!("opening {}", stage.dir.display()))?;
        sys::syncfs(sd.as_fd()).ctx("syncing the store")?;
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
        let m = oci_spec::image::ImageManifest::from_reader(manifest)
            .map_err(|e| Error::new(format!("not a valid image manifest: {e}")))?;
        let cfg = oci_spec::image::ImageConfiguration::from_reader(config)
            .map_err(|e| Error::new(format!("not a valid image config: {e}")))?;
        let config_digest = Digest::of(config);
        if m.config().digest().to_string() != config_digest.to_string() {
            return Err(Error::new(format!(
                "the manifest's config digest is {}, the config hashes to {config_digest}",
                m.config().digest()
            )));
        }
        let ids = cfg.rootfs().diff_ids();
        if ids.len() != m.layers().len() {
            return Err(Error::new(format!(
                "config lists {} diff-ids but the manifest has {} layers",
                ids.len(),
                m.layers().len()
            )));
        }
        let lock = self.lock()?;
        let mut layers = Vec::new();
        for (d, id) in m.layers().iter().zip(ids) {
            let diff_id: Digest = id.parse()?;
            let blob: Digest = d.digest().to_string().parse()?;
            let rec = self
                .layer_record(&diff_id)?
                .ok_or_else(|| Error::new(format!("layer {diff_id} is not in the store")))?;
            if !self.blob_path(&blob).is_file() {
                return Err(Error::new(format!("blob {blob} is not in the store")));
            }
            layers.push(LayerRef {
                diff_id,
                blob,
                media_type: d.media_type().to_string(),
                blob_size: d.size(),
                size: rec.size,
            });
        }
        let mut stage = Stage::new(self)?;
        let manifest_digest = stage.put_blob(self, manifest)?;
        stage.put_blob(self, config)?;
        self.commit_stage(&stage, &lock)?;
        let mut rec = ImageRecord {
            id: config_digest,
            manifest_digest,
            manifest_media_type: m
                .media_type()
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| OCI_MANIFEST.to_string()),
            config_digest,
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            tags: Vec::new(),
            created: cfg.created().clone(),
            imported: now_secs(),
            platform: format!("{}/{}", cfg.os(), cfg.architecture()),
        };
        let mut idx = self.images()?;
        let stored = upsert(&mut idx, &mut rec, &tags);
        self.write_images(&idx, &lock)?;
        Ok(stored)
    }
}

/// A layer extracted and checked into the staging dir: announce it, count it, record it;
/// returns its size.
fn extracted(
    stage: &mut Stage,
    out: &mut Imported,
    obs: &dyn ImportObserver,
    diff_id: Digest,
    rec: LayerRecord,
) -> u64 {
    obs.layer(
        &diff_id,
        LayerEvent::Extracted {
            size: rec.size,
            entries: rec.entries,
        },
    );
    out.layers_extracted += 1;
    let size = rec.size;
    stage.layers.insert(diff_id, rec);
    size
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
pub(super) fn upsert(idx: &mut ImageIndex, rec: &mut ImageRecord, tags: &[String]) -> ImageRecord {
    let key = rec.id.hex();
    if let Some(old) = idx.images.get(&key) {
        rec.tags = old.tags.clone();
        rec.imported = old.imported;
    }
    idx.images.insert(key, rec.clone());
    for t in tags {
        idx.set_tag(&rec.id, t);
    }
    idx.get(&rec.id).cloned().expect("just inserted")
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
