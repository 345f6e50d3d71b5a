//! Partial pulls of zstd:chunked layers: fetch the layer's TOC and tar-split by range,
//! then only the frames of files whose content the store does not have, and rebuild the
//! layer's tar from the tar-split, the store's file objects and the fetched frames. The
//! rebuilt tar goes through the same extraction as any pull, and its sha256 must be the
//! diff-id the config names: a TOC or a frame that lies cannot get into the store. The
//! blob itself is never whole here, so it is not kept (see `recompress`).
//!
//! Worth it only when it saves bytes: when the frames still needed are more than half
//! the blob, the blob is fetched whole as for any other layer (and kept).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::store::Store;
use crate::store::archive::Compression;
use crate::store::digest::{Digest, Hasher};
use crate::store::extract::{ExtractOptions, INLINE_MAX};
use crate::store::ingest::BlobFetcher;
use crate::store::layout::read_json;
use crate::store::lazy::LazyObject;
use crate::store::objects;
use crate::store::plan::{LayerPlan, StargzToc};
use crate::store::stream::{Streamed, stream_blob};
use crate::store::tree::TreeEntry;
use crate::store::zstd_chunked::{FileRange, Index, Piece, Positions};
use crate::sys::{self, OFlags};

/// Ranges closer than this are fetched in one request (fewer round trips for a few
/// bytes more).
const MERGE_GAP: u64 = 64 << 10;
/// No partial pull makes more range requests than this for one layer.
const MAX_REQUESTS: usize = 256;
/// Range requests in flight at once for one layer.
const PARALLEL_REQUESTS: usize = 4;

/// What a partial pull fetched.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PartialStats {
    /// Files whose content came from the store.
    pub reused: u64,
    /// Files fetched.
    pub fetched: u64,
    /// Bytes fetched (metadata and frames).
    pub bytes: u64,
    /// Range requests made.
    pub requests: u64,
    /// Files left to fetch later (a lazy pull).
    pub deferred: u64,
}

/// What a partial pull extracted.
pub(super) struct PartialPulled {
    pub streamed: Streamed,
    pub stats: PartialStats,
    /// A lazy pull: the objects left to fetch, with their frames.
    pub deferred: Vec<LazyObject>,
}

/// Which seekable form a layer blob is in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Form {
    /// Where its TOC and tar-split are.
    ZstdChunked(Positions),
    /// stargz's layout (eStargz, or its zstd form): where its TOC is.
    Estargz(StargzToc),
}

/// One partial pull of a layer.
pub(super) struct Partial<'a> {
    pub what: &'a str,
    pub layer: &'a LayerPlan,
    pub form: Form,
    pub blob_size: u64,
    pub fetch: &'a dyn BlobFetcher,
    pub cancel: &'a AtomicBool,
    /// Fetch only files of at most `INLINE_MAX` bytes now; the rest become stubs whose
    /// objects are fetched when opened (the diff-id cannot be checked until then).
    pub lazy: bool,
}

impl Store {
    /// Pull `p.layer` partially, extracting it into `work/diff`; `Ok(None)` when a whole
    /// fetch is the better way (the fetcher has no ranges, or most frames are needed).
    pub(super) fn pull_partial(
        &self,
        p: &Partial<'_>,
        work: &Path,
        mut extract: ExtractOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Option<PartialPulled>> {
        // A store with no layer has no file to reuse: fetching the TOC first would only
        // cost a request (a lazy pull still wants it).
        if !p.lazy && self.layer_ids()?.is_empty() {
            return Ok(None);
        }
        let positions = match p.form {
            Form::ZstdChunked(positions) => positions,
            Form::Estargz(toc) => {
                return self.pull_partial_estargz(p, &toc, work, extract, progress);
            }
        };
        let what = p.what;
        let mut stats = PartialStats::default();
        let (start, end) = positions.metadata_range();
        let Some(meta) = fetch_all(p, start, end)? else {
            return Ok(None);
        };
        stats.bytes += meta.len() as u64;
        stats.requests += 1;
        let slice = |s: crate::store::zstd_chunked::Span| {
            &meta[(s.offset - start) as usize..(s.end() - start) as usize]
        };
        let index = match Index::parse(
            what,
            &positions,
            p.blob_size,
            slice(positions.manifest),
            slice(positions.tarsplit),
        ) {
            Ok(i) => i,
            // A TOC version this build does not know: the blob is still plain zstd.
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                log::info!("{e}: fetching it whole");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let objects_dir = self.layout.objects_dir();
        let have = |d: &Digest| objects_dir.join(objects::rel_path(d)).is_file();
        // The frames to fetch: one per content the store lacks.
        let mut wanted: Vec<&FileRange> = Vec::new();
        let mut seen = HashSet::new();
        for f in &index.files {
            if have(&f.digest) {
                stats.reused += 1;
            } else if seen.insert(f.digest) {
                wanted.push(f);
            }
        }
        // Small files are inline in layer trees, not objects: look them up there.
        let local = self.small_files_here(
            wanted
                .iter()
                .filter(|f| f.size as usize <= INLINE_MAX)
                .map(|f| f.digest)
                .collect(),
        );
        wanted.retain(|f| !local.contains_key(&f.digest));
        stats.reused += index
            .files
            .iter()
            .filter(|f| local.contains_key(&f.digest))
            .count() as u64;
        let mut deferred: Vec<LazyObject> = Vec::new();
        if p.lazy {
            wanted.retain(|f| {
                let later = f.size as usize > INLINE_MAX;
                if later {
                    deferred.push(LazyObject {
                        digest: f.digest,
                        size: f.size,
                        offset: f.offset,
                        end: f.end,
                    });
                }
                !later
            });
        }
        let needed: u64 = wanted.iter().map(|f| f.end - f.offset).sum();
        if !p.lazy && whole_is_better(p, needed) {
            return Ok(None);
        }
        let sparse = SparseBlob::create(work)?;
        let groups = merged(wanted.iter().map(|f| (f.offset, f.end)).collect());
        fetch_ranges(p, &sparse, &groups, meta.len() as u64, &mut stats, progress)?;
        let later: HashSet<Digest> = deferred.iter().map(|o| o.digest).collect();
        stats.deferred = index
            .files
            .iter()
            .filter(|f| later.contains(&f.digest))
            .count() as u64;
        stats.fetched = index.files.len() as u64 - stats.reused - stats.deferred;
        if !later.is_empty() {
            // Where each deferred file's content would start in the tar stream.
            let mut at = 0u64;
            let mut lazy_at = HashMap::new();
            for piece in &index.pieces {
                match piece {
                    Piece::Bytes(b) => at += b.len() as u64,
                    Piece::File(i) => {
                        let f = &index.files[*i];
                        if later.contains(&f.digest) {
                            lazy_at.insert(at, f.digest);
                        }
                        at += f.size;
                    }
                }
            }
            extract.lazy = Some(std::sync::Arc::new(lazy_at));
        }
        // Files of one content read the one copy fetched.
        let fetched = wanted
            .iter()
            .map(|f| (f.digest, (f.offset, f.end)))
            .collect();
        let tar = Rebuilt {
            what: what.to_string(),
            later,
            local,
            fetched,
            index,
            next: 0,
            cur: None,
            objects_dir,
            sparse: &sparse.file,
        };
        let streamed = stream_blob(
            what,
            None,
            Box::new(tar),
            Compression::None,
            self.expansion,
            None,
            Some((&work.join("diff"), extract)),
            &|_| {},
        );
        Ok(Some(PartialPulled {
            streamed: streamed?,
            stats,
            deferred,
        }))
    }
}

/// Whether fetching `needed` bytes by range is more than half the blob (then the blob
/// is fetched whole, and kept).
pub(super) fn whole_is_better(p: &Partial<'_>, needed: u64) -> bool {
    let whole = needed > p.blob_size / 2;
    if whole {
        log::info!(
            "{}: {needed} of {} bytes would be fetched by range: fetching it whole",
            p.what,
            p.blob_size
        );
    }
    whole
}

/// A sparse copy of a blob in the staging dir: fetched ranges land at their own
/// offsets. Removed when dropped.
pub(super) struct SparseBlob {
    path: PathBuf,
    pub file: File,
}

impl SparseBlob {
    pub(super) fn create(work: &Path) -> Result<SparseBlob> {
        let path = work.with_extension("ranges");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(format!("creating {}", path.display()))?;
        Ok(SparseBlob { path, file })
    }

    /// `data`, which is the blob's bytes from `at` on.
    pub(super) fn write_at(&self, data: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(data, at)
            .ctx(format!("writing {}", self.path.display()))
    }
}

impl Drop for SparseBlob {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Fetch each of `groups` (ranges of the blob) into `sparse` at its own offset, up to
/// `PARALLEL_REQUESTS` at a time, counting requests and bytes; `done` bytes were
/// fetched before.
pub(super) fn fetch_ranges(
    p: &Partial<'_>,
    sparse: &SparseBlob,
    groups: &[(u64, u64)],
    done: u64,
    stats: &mut PartialStats,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let what = p.what;
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(done);
    let failed = AtomicBool::new(false);
    let one = |a: u64, b: u64, buf: &mut [u8]| -> Result<()> {
        let mut r = p
            .fetch
            .range(p.layer, a, b)?
            .ok_or_else(|| Error::new(format!("{what}: the source stopped serving ranges")))?;
        let mut at = a;
        loop {
            let n = r
                .read(buf)
                .map_err(|e| Error::io(format!("{what}: fetching bytes {a}..{b}"), e))?;
            if n == 0 {
                break;
            }
            sparse.write_at(&buf[..n], at)?;
            at += n as u64;
            progress(done.fetch_add(n as u64, Ordering::Relaxed) + n as u64);
        }
        if at != b {
            return Err(Error::network(format!(
                "{what}: bytes {a}..{b}: the registry sent {} bytes",
                at - a
            )));
        }
        Ok(())
    };
    let worker = || -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if p.cancel.load(Ordering::Relaxed) {
                return Err(Error::cancelled("stopped: another layer failed"));
            }
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(&(a, b)) = groups.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return Ok(());
            };
            one(a, b, &mut buf).inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
        }
    };
    let threads = groups.len().clamp(1, PARALLEL_REQUESTS);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::new("a fetch thread panicked")))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    stats.requests += groups.len() as u64;
    stats.bytes += groups.iter().map(|(a, b)| b - a).sum::<u64>();
    Ok(())
}

/// `ranges` sorted by start, those less than `MERGE_GAP` apart merged into one; then,
/// while there are more than `MAX_REQUESTS`, the two closest merged (a request's round
/// trip is worth more than a few skipped bytes).
pub(super) fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort();
    let mut groups: Vec<(u64, u64)> = Vec::new();
    for (a, b) in ranges {
        match groups.last_mut() {
            Some(g) if a <= g.1 + MERGE_GAP => g.1 = g.1.max(b),
            _ => groups.push((a, b)),
        }
    }
    if groups.len() > MAX_REQUESTS {
        // Keep the widest gaps: they split the ranges into MAX_REQUESTS groups.
        let mut gaps: Vec<(u64, usize)> = groups
            .windows(2)
            .enumerate()
            .map(|(i, w)| (w[1].0 - w[0].1, i))
            .collect();
        gaps.sort_by(|x, y| y.cmp(x));
        let mut cuts: Vec<usize> = gaps[..MAX_REQUESTS - 1].iter().map(|g| g.1).collect();
        cuts.sort();
        let mut out = Vec::with_capacity(MAX_REQUESTS);
        let mut start = 0;
        for c in cuts.into_iter().chain(std::iter::once(groups.len() - 1)) {
            out.push((groups[start].0, groups[c].1));
            start = c + 1;
        }
        groups = out;
    }
    groups
}

impl Store {
    /// The contents of the small files `small` names (at most `INLINE_MAX` bytes: kept
    /// in layer trees, not as objects) that some layer of the store has, read and
    /// checked against their digests. Reads every layer's `tree.json` once, and only
    /// when there is such a file to look for.
    pub(super) fn small_files_here(&self, small: HashSet<Digest>) -> HashMap<Digest, Vec<u8>> {
        let mut found = HashMap::new();
        if small.is_empty() {
            return found;
        }
        for d in self.layer_ids().unwrap_or_default() {
            let Ok(Some(tree)) =
                read_json::<Vec<TreeEntry>>(&self.layout.layer(&d).join("tree.json"))
            else {
                continue;
            };
            for e in tree {
                let Some(sha) = e
                    .sha256
                    .filter(|s| small.contains(s) && !found.contains_key(s))
                else {
                    continue;
                };
                if e.kind == 'f'
                    && let Some(b) = read_small(&self.layout.layer_diff(&d), &e.path.0)
                    && Digest::of(&b) == sha
                {
                    found.insert(sha, b);
                }
            }
            if found.len() == small.len() {
                break;
            }
        }
        log::debug!(
            "small files: {} wanted, {} found here",
            small.len(),
            found.len()
        );
        found
    }
}

/// A small regular file below `root`, opened without following any symlink.
fn read_small(root: &Path, rel: &[u8]) -> Option<Vec<u8>> {
    let comps: Vec<&[u8]> = rel
        .split(|&c| c == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let (last, dirs) = comps.split_last()?;
    let mut dir = sys::open_root_dir(root).ok()?;
    for c in dirs {
        dir = sys::open_dir_path(dir.as_fd(), OsStr::from_bytes(c)).ok()?;
    }
    let fd = sys::open_regular_at(dir.as_fd(), OsStr::from_bytes(last), OFlags::RDONLY).ok()?;
    let mut out = Vec::new();
    File::from(fd)
        .take(INLINE_MAX as u64 + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() <= INLINE_MAX).then_some(out)
}

/// A whole range read into memory (`None`: the fetcher has no ranges).
pub(super) fn fetch_all(p: &Partial<'_>, a: u64, b: u64) -> Result<Option<Vec<u8>>> {
    let Some(mut r) = p.fetch.range(p.layer, a, b)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity((b - a) as usize);
    r.read_to_end(&mut out)
        .map_err(|e| Error::io(format!("{}: fetching bytes {a}..{b}", p.what), e))?;
    if out.len() as u64 != b - a {
        return Err(Error::network(format!(
            "{}: bytes {a}..{b}: the registry sent {} bytes",
            p.what,
            out.len()
        )));
    }
    Ok(Some(out))
}

/// The layer's tar, piece by piece: tar-split bytes, store objects, fetched frames
/// (each checked against its size and digest as it ends).
struct Rebuilt<'a> {
    what: String,
    /// Contents left for later (a lazy pull): zeros stand in.
    later: HashSet<Digest>,
    /// Small files found in the store's layer trees, by content.
    local: HashMap<Digest, Vec<u8>>,
    /// Where the fetched frames of each content are.
    fetched: HashMap<Digest, (u64, u64)>,
    index: Index,
    next: usize,
    cur: Option<Box<dyn Read + Send + 'a>>,
    objects_dir: std::path::PathBuf,
    sparse: &'a File,
}

impl<'a> Rebuilt<'a> {
    fn open(&self, piece: Piece) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match piece {
            Piece::Bytes(b) => Box::new(io::Cursor::new(b)),
            Piece::File(i) => {
                let f = &self.index.files[i];
                if self.later.contains(&f.digest) {
                    return Ok(Box::new(io::repeat(0).take(f.size)));
                }
                if let Some(b) = self.local.get(&f.digest) {
                    return Ok(Box::new(Checked::new(
                        &self.what,
                        f,
                        io::Cursor::new(b.clone()),
                    )));
                }
                let obj = self.objects_dir.join(objects::rel_path(&f.digest));
                match File::open(&obj) {
                    Ok(o) => Box::new(Checked::new(&self.what, f, o)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let (pos, end) = self.fetched.get(&f.digest).copied().ok_or_else(|| {
                            io::Error::other(format!("object {} vanished", f.digest))
                        })?;
                        let section = Section {
                            file: self.sparse,
                            pos,
                            end,
                        };
                        let dec =
                            zstd::stream::read::Decoder::with_buffer(BufReader::new(section))?;
                        Box::new(Checked::new(&self.what, f, dec))
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }
}

impl Read for Rebuilt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.cur.is_none() {
                // Each piece is read once: take it rather than copy it.
                let Some(piece) = self.index.pieces.get_mut(self.next) else {
                    return Ok(0);
                };
                let piece = std::mem::replace(piece, Piece::Bytes(Vec::new()));
                self.next += 1;
                self.cur = Some(self.open(piece)?);
            }
            let n = self.cur.as_mut().expect("set above").read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.cur = None;
        }
    }
}

/// A range of a file, read with `pread`.
pub(super) struct Section<'a> {
    pub file: &'a File,
    pub pos: u64,
    pub end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// One file's content: exactly its size, hashing to its digest.
struct Checked<R> {
    inner: R,
    what: String,
    name: String,
    want: Digest,
    left: u64,
    hasher: Hasher,
}

impl<R: Read> Checked<R> {
    fn new(what: &str, f: &FileRange, inner: R) -> Self {
        Checked {
            inner,
            what: what.to_string(),
            name: f.name.clone(),
            want: f.digest,
            left: f.size,
            hasher: Hasher::new(),
        }
    }

    fn fail(&self, why: String) -> io::Error {
        io::Error::other(Error::corrupt(format!(
            "{}: zstd:chunked entry {:?}: {why}",
            self.what, self.name
        )))
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Nothing may follow the content in its frames.
            let mut extra = [0u8; 1];
            if self
                .inner
                .read(&mut extra)
                .map_err(|e| self.fail(e.to_string()))?
                > 0
            {
                return Err(self.fail("its frame holds more than the manifest's size".into()));
            }
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self
            .inner
            .read(&mut buf[..want])
            .map_err(|e| self.fail(format!("invalid frame: {e}")))?;
        if n == 0 {
            return Err(self.fail(format!("{} bytes short", self.left)));
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        if self.left == 0 {
            let got = std::mem::take(&mut self.hasher).finish();
            if got != self.want {
                return Err(self.fail(format!(
                    "content hashes to {got}, the manifest says {}",
                    self.want
                )));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_close_and_down_to_the_request_limit() {
        assert_eq!(
            merged(vec![(200_000, 300_000), (0, 10), (20, 30)]),
            [(0, 30), (200_000, 300_000)]
        );
        // Ranges 1 MB apart, but every tenth gap wider: those gaps are kept.
        let n = 3 * MAX_REQUESTS as u64;
        let mut ranges = Vec::new();
        let mut at = 0u64;
        for i in 0..n {
            ranges.push((at, at + 10));
            at += if i % 10 == 9 { 5_000_000 } else { 1_000_000 };
        }
        let g = merged(ranges.clone());
        assert_eq!(g.len(), MAX_REQUESTS);
        // Every range is inside one group; groups do not overlap.
        for r in &ranges {
            assert!(g.iter().any(|x| x.0 <= r.0 && r.1 <= x.1), "{r:?}");
        }
        assert!(g.windows(2).all(|w| w[0].1 < w[1].0));
        // The wide gaps are among the cuts.
        let wide = g
            .windows(2)
            .filter(|w| w[1].0 - w[0].1 >= 4_000_000)
            .count();
        assert_eq!(wide as u64, (n - 1) / 10);
    }
}
