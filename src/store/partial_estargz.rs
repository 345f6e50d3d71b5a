//! Partial and lazy pulls of eStargz layers: fetch the blob's tail (footer and TOC),
//! then every gzip member but those of chunks whose bytes the store has (or, in a lazy
//! pull, those of files left for later), and rebuild the layer's tar from the fetched
//! members and the store's file objects. The rebuilt tar goes through the same
//! extraction as any pull and must hash to the diff-id the config names.
//!
//! What can be skipped depends on the writer (see `estargz_index`): every chunk of a
//! layerfs-written blob; in a blob from stargz's Go writer only the chunks of a file
//! before its last (the last one's member also holds the next entries' headers), so
//! only files over one chunk (4 MiB by default) save anything.
//!
//! A lazy pull's deferred files stream as zeros (the extractor makes stubs of them);
//! until the layer is complete its diff-id is not known to hold, so the tree is checked
//! against the TOC instead: every regular file's content must be one the TOC names.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;
use crate::store::archive::Compression;
use crate::store::digest::Digest;
use crate::store::estargz_index::{self, Index};
use crate::store::extract::{ExtractOptions, INLINE_MAX};
use crate::store::lazy::LazyObject;
use crate::store::objects;
use crate::store::partial::{
    Partial, PartialPulled, PartialStats, Section, SparseBlob, fetch_all, fetch_ranges, merged,
    whole_is_better,
};
use crate::store::plan::StargzToc;
use crate::store::stream::stream_blob;
use crate::store::toc::{Toc, TocEntry};

/// The blob's last bytes fetched first: the footer, and the TOC when it is this small.
const TAIL: u64 = 256 << 10;
/// Blobs smaller than this are fetched whole: a partial pull could save little.
const MIN_BLOB: u64 = 1 << 20;

/// A piece of the rebuilt tar.
#[derive(Debug, Clone)]
enum Seg {
    /// Fetched members, decompressed.
    Gz(u64, u64),
    /// Bytes `at..at + len` of a file's content, from the store (or zeros: `later`).
    Skip {
        digest: Digest,
        at: u64,
        len: u64,
        later: bool,
    },
}

impl Store {
    /// Pull an eStargz layer partially (see the module); `Ok(None)` when a whole fetch
    /// is the better way.
    pub(super) fn pull_partial_estargz(
        &self,
        p: &Partial<'_>,
        toc_at: &StargzToc,
        work: &Path,
        mut extract: ExtractOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Option<PartialPulled>> {
        let what = p.what;
        if p.blob_size < MIN_BLOB {
            return Ok(None);
        }
        let mut stats = PartialStats::default();
        let codec = if toc_at.zstd_frame.is_some() {
            Codec::Zstd
        } else {
            Codec::Gzip
        };
        let Some(Meta {
            toc,
            toc_offset,
            meta_start,
            meta,
        }) = self.stargz_toc(p, toc_at, &mut stats)?
        else {
            return Ok(None);
        };
        let index = Index::parse(what, &toc, toc_offset)?;

        // Which chunks to skip: those whose member's end is known, of files the store
        // has (or, lazily, of larger files to fetch when opened).
        let objects_dir = self.layout.objects_dir();
        let have = |d: &Digest| objects_dir.join(objects::rel_path(d)).is_file();
        let local = self.small_files_here(
            index
                .files
                .iter()
                .filter(|f| {
                    f.size as usize <= INLINE_MAX && f.first_skippable() && !have(&f.digest)
                })
                .map(|f| f.digest)
                .collect(),
        );
        let mut segs: Vec<Seg> = Vec::new();
        let mut deferred: Vec<LazyObject> = Vec::new();
        let mut deferred_seen = HashSet::new();
        let mut cur = 0u64;
        for f in &index.files {
            let skippable = f.chunks.iter().any(|c| c.end.is_some());
            let from_store = skippable && (have(&f.digest) || local.contains_key(&f.digest));
            let later =
                !from_store && p.lazy && f.size as usize > INLINE_MAX && f.first_skippable();
            if from_store {
                stats.reused += 1;
            } else if later {
                stats.deferred += 1;
                if deferred_seen.insert(f.digest) {
                    let (offset, end) = f.range();
                    deferred.push(LazyObject {
                        digest: f.digest,
                        size: f.size,
                        offset,
                        end,
                    });
                }
            } else {
                stats.fetched += 1;
                continue;
            }
            for c in &f.chunks {
                let Some(end) = c.end else { continue };
                if c.offset > cur {
                    segs.push(Seg::Gz(cur, c.offset));
                }
                segs.push(Seg::Skip {
                    digest: f.digest,
                    at: c.at,
                    len: c.len,
                    later,
                });
                cur = end;
            }
        }
        if segs.is_empty() {
            log::info!("{what}: no eStargz chunk to skip: fetching it whole");
            return Ok(None);
        }
        segs.push(Seg::Gz(cur, p.blob_size));
        // What is still to fetch: the members kept, less the tail already here.
        let mut ranges = Vec::new();
        for s in &segs {
            if let Seg::Gz(a, b) = *s {
                let b = b.min(meta_start);
                if a < b {
                    ranges.push((a, b));
                }
            }
        }
        let groups = merged(ranges);
        let needed: u64 = groups.iter().map(|(a, b)| b - a).sum();
        if !p.lazy && whole_is_better(p, needed + stats.bytes) {
            return Ok(None);
        }
        let sparse = SparseBlob::create(work)?;
        sparse.write_at(&meta, meta_start)?;
        drop(meta);
        fetch_ranges(p, &sparse, &groups, stats.bytes, &mut stats, progress)?;
        if !deferred.is_empty() {
            // Where each deferred file's content starts in the tar: the decompressed
            // length of everything before its first chunk.
            let mut at = 0u64;
            let mut lazy_at = HashMap::new();
            for s in &segs {
                match s {
                    Seg::Gz(a, b) => {
                        at += decode(codec, &sparse.file, *a, *b)
                            .and_then(|mut r| io::copy(&mut r, &mut io::sink()))
                            .map_err(|e| Error::corrupt(format!("{what}: bytes {a}..{b}: {e}")))?;
                    }
                    Seg::Skip {
                        digest,
                        at: 0,
                        len,
                        later: true,
                    } => {
                        lazy_at.insert(at, *digest);
                        at += len;
                    }
                    Seg::Skip { len, .. } => at += len,
                }
            }
            extract.lazy = Some(Arc::new(lazy_at));
        }
        let tar = Rebuilt {
            codec,
            segs: segs.into_iter(),
            cur: None,
            sparse: &sparse.file,
            objects_dir: objects_dir.clone(),
            local,
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
        let streamed = streamed?;
        if !deferred.is_empty() {
            let tree = streamed.extracted.as_ref().expect("extracted");
            check_contents(
                what,
                &toc,
                &index,
                &toc_at.digest,
                tree.file_hashes.values(),
            )?;
        }
        Ok(Some(PartialPulled {
            streamed,
            stats,
            deferred,
        }))
    }
}

impl Store {
    /// The TOC (checked against the manifest's digest), where it starts, and the blob's
    /// last bytes fetched for it; `None`: fetch whole.
    fn stargz_toc(
        &self,
        p: &Partial<'_>,
        at: &StargzToc,
        stats: &mut PartialStats,
    ) -> Result<Option<Meta>> {
        let what = p.what;
        let mut fetch = |a: u64, b: u64| -> Result<Option<Vec<u8>>> {
            let got = fetch_all(p, a, b)?;
            if let Some(g) = &got {
                stats.requests += 1;
                stats.bytes += g.len() as u64;
            }
            Ok(got)
        };
        let unsupported = |e: Error| -> Result<Option<Meta>> {
            if e.kind() == ErrorKind::Unsupported {
                log::info!("{e}: fetching it whole");
                Ok(None)
            } else {
                Err(e)
            }
        };
        if let Some((off, len)) = at.zstd_frame {
            // The TOC frame, then the footer: the blob's end.
            if off.saturating_add(len) > p.blob_size {
                return Err(Error::corrupt(format!(
                    "{what}: the TOC annotation names bytes {off}..{} of a blob of {}",
                    off.saturating_add(len),
                    p.blob_size
                )));
            }
            let Some(meta) = fetch(off, p.blob_size)? else {
                return Ok(None);
            };
            return match estargz_index::read_zstd_toc(what, &meta[..len as usize], &at.digest) {
                Ok(toc) => Ok(Some(Meta {
                    toc,
                    toc_offset: off,
                    meta_start: off,
                    meta,
                })),
                Err(e) => unsupported(e),
            };
        }
        let mut meta_start = p.blob_size.saturating_sub(TAIL);
        let Some(mut meta) = fetch(meta_start, p.blob_size)? else {
            return Ok(None);
        };
        let Some((toc_offset, footer_len)) = estargz_index::footer(&meta) else {
            log::info!("{what}: no eStargz footer: fetching it whole");
            return Ok(None);
        };
        let toc_end = p.blob_size - footer_len as u64;
        if toc_offset >= toc_end {
            return Err(Error::corrupt(format!(
                "{what}: the eStargz footer puts the TOC at {toc_offset}, past the blob's \
                 data ({toc_end} bytes)"
            )));
        }
        if toc_offset < meta_start {
            let Some(mut head) = fetch(toc_offset, meta_start)? else {
                return Ok(None);
            };
            head.extend_from_slice(&meta);
            meta = head;
            meta_start = toc_offset;
        }
        let member = &meta[(toc_offset - meta_start) as usize..(toc_end - meta_start) as usize];
        match estargz_index::read_toc(what, member, &at.digest) {
            Ok(toc) => Ok(Some(Meta {
                toc,
                toc_offset,
                meta_start,
                meta,
            })),
            Err(e) => unsupported(e),
        }
    }
}

/// A stargz-layout blob's TOC and the bytes fetched to find it.
struct Meta {
    toc: Toc,
    /// Where the TOC's member (frame) starts: the end of the file data.
    toc_offset: u64,
    /// `meta` is the blob from here to its end.
    meta_start: u64,
    meta: Vec<u8>,
}

/// How the blob's pieces are compressed.
#[derive(Debug, Clone, Copy)]
enum Codec {
    Gzip,
    Zstd,
}

/// A lazy layer's tree against its TOC: each regular file's content is one the TOC
/// names (or the TOC itself, an entry of the tar), and the content of each name's last
/// entry (a later entry of a name replaces an earlier one) is there (a deferred file's
/// stub names its content). Until the layer is complete this is what holds it to the
/// TOC the manifest names.
fn check_contents<'a>(
    what: &str,
    toc: &Toc,
    index: &Index,
    toc_digest: &Digest,
    tree: impl Iterator<Item = &'a Digest>,
) -> Result<()> {
    let allowed: HashSet<Digest> = index.files.iter().map(|f| f.digest).collect();
    let mut last: HashMap<&str, Option<&TocEntry>> = HashMap::new();
    for e in &toc.entries {
        if e.kind == "chunk" {
            continue;
        }
        let name = e
            .name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/');
        last.insert(name, (e.kind == "reg" && e.size > 0).then_some(e));
    }
    let mut named: HashMap<Digest, &str> = HashMap::new();
    for e in last.into_values().flatten() {
        if let Ok(d) = e.digest.parse() {
            named.insert(d, e.name.as_str());
        }
    }
    let empty = Digest::of(b"");
    let mut seen = HashSet::new();
    for d in tree {
        if *d == empty || d == toc_digest {
            continue;
        }
        if !allowed.contains(d) {
            return Err(Error::corrupt(format!(
                "{what}: the tar holds a file whose content ({d}) its eStargz TOC does not name"
            )));
        }
        seen.insert(*d);
    }
    if let Some((d, name)) = named.iter().find(|(d, _)| !seen.contains(*d)) {
        return Err(Error::corrupt(format!(
            "{what}: eStargz TOC entry {name:?}: its content ({d}) is not in the tar"
        )));
    }
    Ok(())
}

/// The members (frames) in `a..b` of the sparse copy, decompressed.
fn decode(codec: Codec, sparse: &File, a: u64, b: u64) -> io::Result<Box<dyn Read + Send + '_>> {
    let section = BufReader::with_capacity(
        1 << 16,
        Section {
            file: sparse,
            pos: a,
            end: b,
        },
    );
    Ok(match codec {
        Codec::Gzip => Box::new(MultiGzDecoder::new(section)),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(section)?),
    })
}

/// The layer's tar, segment by segment.
struct Rebuilt<'a> {
    codec: Codec,
    segs: std::vec::IntoIter<Seg>,
    cur: Option<Box<dyn Read + Send + 'a>>,
    sparse: &'a File,
    objects_dir: std::path::PathBuf,
    /// Small files' contents found in the store's layer trees.
    local: HashMap<Digest, Vec<u8>>,
}

impl<'a> Rebuilt<'a> {
    fn open(&self, seg: Seg) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match seg {
            Seg::Gz(a, b) => decode(self.codec, self.sparse, a, b)?,
            Seg::Skip {
                len, later: true, ..
            } => Box::new(io::repeat(0).take(len)),
            Seg::Skip {
                digest, at, len, ..
            } => {
                if let Some(b) = self.local.get(&digest) {
                    let from = (at as usize).min(b.len());
                    let to = (at.saturating_add(len) as usize).min(b.len());
                    return Ok(Box::new(io::Cursor::new(b[from..to].to_vec())));
                }
                let mut f = File::open(self.objects_dir.join(objects::rel_path(&digest)))?;
                f.seek(SeekFrom::Start(at))?;
                Box::new(f.take(len))
            }
        })
    }
}

impl Read for Rebuilt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.cur.is_none() {
                let Some(seg) = self.segs.next() else {
                    return Ok(0);
                };
                self.cur = Some(self.open(seg)?);
            }
            let n = self.cur.as_mut().expect("set above").read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.cur = None;
        }
    }
}
