//! Uncompressed layer tars kept as a record of their bytes around the file contents, not
//! as a second copy: the tar is rebuilt, byte for byte, from the record and the store's
//! file objects.
//!
//! While a layer is extracted, [`Recorder`] sees every byte of the tar stream. The bytes
//! of each file that goes to the file store (larger than `extract::INLINE_MAX`) are left
//! out and named by their digest; everything else (headers, PAX and GNU extension
//! records, small files, padding, the end blocks and whatever follows them) is kept as
//! it came. A layer whose blob is its tar (digest = diff-id: commits, docker-archive
//! layers, plain `.tar` imports) then needs no blob: `layers/sha256/<diff-id>/tar-split`
//! (zstd) holds the record, and [`Reader`] gives the tar back. Compressed blobs are kept:
//! their bytes depend on the compressor and its version, which layerfs cannot match.
//!
//! The record: `LFTS1\n`, then little-endian `u64` raw length, `u64` segment count,
//! each segment `u64` offset into the raw bytes, `u64` size and 32 digest bytes, then
//! the raw bytes.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::store::digest::Digest;
use crate::store::objects;

const MAGIC: &[u8] = b"LFTS1\n";
/// The record's file name in a layer dir.
pub(crate) const FILE_NAME: &str = "tar-split";

/// A file whose bytes are the object `digest`, at `offset` into the raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    offset: u64,
    size: u64,
    digest: Option<Digest>,
}

/// What extraction recorded of one tar stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TarSplit {
    raw: Vec<u8>,
    segments: Vec<Segment>,
    /// Something made the stream impossible to rebuild (a file the extraction did not
    /// store whole as an object, a sparse entry): keep the blob.
    broken: bool,
}

impl TarSplit {
    /// Whether the tar can be rebuilt from this record and the objects.
    pub(crate) fn complete(&self) -> bool {
        !self.broken && self.segments.iter().all(|s| s.digest.is_some())
    }

    /// The objects the rebuilt tar reads.
    pub(crate) fn objects(&self) -> impl Iterator<Item = Digest> + '_ {
        self.segments.iter().filter_map(|s| s.digest)
    }

    /// The tar's size.
    pub(crate) fn len(&self) -> u64 {
        self.raw.len() as u64 + self.segments.iter().map(|s| s.size).sum::<u64>()
    }

    /// Write the record (zstd) to `path`.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let f = File::create(path).ctx(format!("creating {}", path.display()))?;
        let mut z = zstd::Encoder::new(f, 3).ctx("compressing the tar record")?;
        let mut head = Vec::with_capacity(MAGIC.len() + 16 + self.segments.len() * 48);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(self.raw.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.segments.len() as u64).to_le_bytes());
        for s in &self.segments {
            let d = s
                .digest
                .ok_or_else(|| Error::new("tar record with a file left open"))?;
            head.extend_from_slice(&s.offset.to_le_bytes());
            head.extend_from_slice(&s.size.to_le_bytes());
            head.extend_from_slice(d.as_bytes());
        }
        z.write_all(&head)
            .and_then(|_| z.write_all(&self.raw))
            .and_then(|_| z.finish().and_then(|f| f.sync_all()))
            .ctx(format!("writing {}", path.display()))
    }

    /// Read a record written by [`TarSplit::write`].
    pub(crate) fn read(path: &Path) -> Result<TarSplit> {
        let bad =
            |why: &str| Error::corrupt(format!("{}: damaged tar record: {why}", path.display()));
        let f = File::open(path).ctx(format!("opening {}", path.display()))?;
        let mut z = zstd::Decoder::new(f).ctx(format!("reading {}", path.display()))?;
        let mut magic = [0u8; 6];
        z.read_exact(&mut magic).map_err(|_| bad("too short"))?;
        if magic != MAGIC {
            return Err(bad("not a tar record"));
        }
        let mut u64_at = || -> Result<u64> {
            let mut b = [0u8; 8];
            z.read_exact(&mut b).map_err(|_| bad("too short"))?;
            Ok(u64::from_le_bytes(b))
        };
        let raw_len = u64_at()?;
        let n = u64_at()?;
        let mut segments = Vec::new();
        for _ in 0..n {
            let mut b = [0u8; 48];
            z.read_exact(&mut b).map_err(|_| bad("too short"))?;
            let offset = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            let size = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
            let d: [u8; 32] = b[16..].try_into().expect("32 bytes");
            if offset > raw_len || segments.last().is_some_and(|s: &Segment| s.offset > offset) {
                return Err(bad("segments out of order"));
            }
            segments.push(Segment {
                offset,
                size,
                digest: Some(Digest::from_bytes(d)),
            });
        }
        let mut raw = Vec::new();
        z.read_to_end(&mut raw)
            .ctx(format!("reading {}", path.display()))?;
        if raw.len() as u64 != raw_len {
            return Err(bad("raw bytes of the wrong length"));
        }
        Ok(TarSplit {
            raw,
            segments,
            broken: false,
        })
    }
}

/// Records a tar stream as it is read (see the module doc). Extraction tells it where
/// the bytes of a stored file start ([`Recorder::skip`]) and what they were
/// ([`Recorder::stored`]).
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    split: TarSplit,
    /// Stream position of the next byte read.
    pos: u64,
    /// The stream range of the file being left out.
    skip: Option<(u64, u64)>,
}

impl Recorder {
    /// The `size` bytes at stream position `at` are a file's content that goes to the
    /// file store (extraction calls this before reading them).
    pub(crate) fn skip(&mut self, at: u64, size: u64) {
        if at != self.pos || self.skip.is_some() {
            // Not where the stream is: something read ahead; this tar cannot be rebuilt.
            self.split.broken = true;
            return;
        }
        self.skip = Some((at, at + size));
        self.split.segments.push(Segment {
            offset: self.split.raw.len() as u64,
            size,
            digest: None,
        });
    }

    /// The content skipped last hashed to `d` and is in the file store.
    pub(crate) fn stored(&mut self, d: Digest) {
        match self.split.segments.last_mut() {
            Some(s) if s.digest.is_none() => s.digest = Some(d),
            _ => self.split.broken = true,
        }
    }

    /// The stream cannot be rebuilt from a record (e.g. a sparse entry).
    pub(crate) fn give_up(&mut self) {
        self.split.broken = true;
    }

    fn saw(&mut self, buf: &[u8]) {
        let mut i = 0;
        while i < buf.len() {
            let pos = self.pos + i as u64;
            match self.skip {
                Some((start, end)) if pos >= start && pos < end => {
                    let n = ((end - pos) as usize).min(buf.len() - i);
                    i += n;
                    if pos + n as u64 == end {
                        self.skip = None;
                    }
                }
                _ => {
                    let n = match self.skip {
                        Some((start, _)) if start > pos => {
                            ((start - pos) as usize).min(buf.len() - i)
                        }
                        _ => buf.len() - i,
                    };
                    self.split.raw.extend_from_slice(&buf[i..i + n]);
                    i += n;
                }
            }
        }
        self.pos += buf.len() as u64;
    }

    pub(crate) fn finish(self) -> TarSplit {
        let mut s = self.split;
        // Every byte seen is either kept or a stored file's.
        if self.skip.is_some() || s.len() != self.pos {
            s.broken = true;
        }
        s
    }
}

/// A reader that shows a [`Recorder`] every byte it reads.
pub(crate) struct Recording<'a, R> {
    pub(crate) inner: R,
    pub(crate) rec: &'a RefCell<Recorder>,
}

impl<R: Read> Read for Recording<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.rec.borrow_mut().saw(&buf[..n]);
        Ok(n)
    }
}

/// The tar a record stands for, read back from the record and the file objects. A
/// missing object or one of the wrong size is an error naming it.
pub(crate) struct Reader {
    split: TarSplit,
    objects: std::path::PathBuf,
    /// Next segment; position in the raw bytes.
    seg: usize,
    raw_pos: usize,
    /// The object being read, and the bytes of it still to come.
    cur: Option<(File, u64, Digest)>,
}

impl Reader {
    pub(crate) fn new(split: TarSplit, objects: &Path) -> Reader {
        Reader {
            split,
            objects: objects.to_path_buf(),
            seg: 0,
            raw_pos: 0,
            cur: None,
        }
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((f, left, d)) = &mut self.cur {
                if *left == 0 {
                    self.cur = None;
                    continue;
                }
                let want = (*left).min(buf.len() as u64) as usize;
                let n = f.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::other(format!(
                        "file object {d} is shorter than its record"
                    )));
                }
                *left -= n as u64;
                return Ok(n);
            }
            let next_raw_end = self
                .split
                .segments
                .get(self.seg)
                .map_or(self.split.raw.len(), |s| s.offset as usize);
            if self.raw_pos < next_raw_end {
                let n = (next_raw_end - self.raw_pos).min(buf.len());
                buf[..n].copy_from_slice(&self.split.raw[self.raw_pos..self.raw_pos + n]);
                self.raw_pos += n;
                return Ok(n);
            }
            let Some(s) = self.split.segments.get(self.seg) else {
                return Ok(0);
            };
            self.seg += 1;
            let d = s
                .digest
                .ok_or_else(|| io::Error::other("tar record with a file left open"))?;
            let p = self.objects.join(objects::rel_path(&d));
            let f = File::open(&p)
                .map_err(|e| io::Error::new(e.kind(), format!("file object {d}: {e}")))?;
            if f.metadata()?.len() != s.size {
                return Err(io::Error::other(format!(
                    "file object {d} has the wrong size"
                )));
            }
            self.cur = Some((f, s.size, d));
        }
    }
}

/// A rebuilt tar of `left` bytes, hashed as it is read: its last bytes come back only
/// when all of them hashed to the digest they stand for (a reader that stops at the
/// length it was told still gets the error).
pub(crate) struct Verified<R> {
    inner: R,
    want: Digest,
    hasher: crate::store::digest::Hasher,
    left: u64,
}

impl<R: Read> Verified<R> {
    pub(crate) fn new(inner: R, want: Digest, len: u64) -> Self {
        Verified {
            inner,
            want,
            hasher: crate::store::digest::Hasher::new(),
            left: len,
        }
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.left > 0 {
            return Err(io::Error::other(format!(
                "blob {} rebuilt from its record is {} bytes short: the record or a file \
                 object is damaged (run `layerfs system check`)",
                self.want, self.left
            )));
        }
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "blob {} rebuilt from its record is too long: the record or a file object \
                 is damaged (run `layerfs system check`)",
                self.want
            )));
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        if n > 0 && self.left == 0 {
            let got = std::mem::take(&mut self.hasher).finish();
            if got != self.want {
                return Err(io::Error::other(format!(
                    "blob {} rebuilt from its record hashes to {got}: the record or a file \
                     object is damaged (run `layerfs system check`)",
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
    fn records_and_rebuilds_around_skipped_files() {
        let t = tempfile::tempdir().unwrap();
        let objs = t.path().join("objects");
        let big = vec![7u8; 10_000];
        let d = Digest::of(&big);
        let p = objs.join(objects::rel_path(&d));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &big).unwrap();
        // A stream: 100 header bytes, the big file, 50 bytes of padding and trailer.
        let mut stream = vec![1u8; 100];
        stream.extend_from_slice(&big);
        stream.extend_from_slice(&[2u8; 50]);
        let rec = RefCell::new(Recorder::default());
        let mut r = Recording {
            inner: &stream[..],
            rec: &rec,
        };
        let mut out = vec![0u8; 100];
        r.read_exact(&mut out).unwrap();
        rec.borrow_mut().skip(100, big.len() as u64);
        let mut rest = Vec::new();
        // Small reads across the boundaries.
        let mut buf = [0u8; 333];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
            if rest.len() >= big.len() && rec.borrow().split.segments[0].digest.is_none() {
                rec.borrow_mut().stored(d);
            }
        }
        let split = rec.into_inner().finish();
        assert!(split.complete());
        assert_eq!(split.raw.len(), 150);
        assert_eq!(split.len(), stream.len() as u64);
        let f = t.path().join(FILE_NAME);
        split.write(&f).unwrap();
        let back = TarSplit::read(&f).unwrap();
        assert_eq!(back, split);
        let mut rebuilt = Vec::new();
        Reader::new(back, &objs).read_to_end(&mut rebuilt).unwrap();
        assert_eq!(rebuilt, stream);
        // A missing object is named.
        std::fs::remove_file(&p).unwrap();
        let err = Reader::new(TarSplit::read(&f).unwrap(), &objs)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains(&d.to_string()), "{err}");
    }

    #[test]
    fn a_skip_elsewhere_than_the_stream_breaks_the_record() {
        let rec = RefCell::new(Recorder::default());
        rec.borrow_mut().skip(10, 5);
        assert!(!rec.into_inner().finish().complete());
    }
}
