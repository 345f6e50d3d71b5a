//! Streaming one layer blob in one pass: a reader thread copies the blob into the staging
//! dir and hashes it (the blob digest), decompresses it and hashes the result (the
//! diff-id), handing the tar stream over a bounded channel to the extracting thread. The
//! expansion limit stops a decompression bomb before it fills the disk.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::error::{Error, Result};
use crate::store::archive::Compression;
use crate::store::digest::{Digest, Hasher};
use crate::store::extract::{self, ExtractOptions, Extracted};
use crate::store::tarsplit::{Recorder, Recording};
use crate::sys;

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
    /// Hashes the blob: none for an uncompressed one, whose digest is the tar's (the
    /// pump hashes that already).
    hasher: Option<Hasher>,
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
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
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
        if self.read.get() - self.last >= 1 << 20 {
            self.last = self.read.get();
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
    pub(crate) fn from_env() -> Result<Self> {
        let mut lim = ExpansionLimit::default();
        if let Some(v) = std::env::var_os("LAYERFS_MAX_EXPANSION") {
            let ratio: u64 = v
                .to_str()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    Error::invalid_input(format!(
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
            hasher: (comp != Compression::None).then(Hasher::new),
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
                        .and(tee.hasher.clone())
                        .map(Hasher::finish);
                    PumpError::Decode(e, whole)
                }
            };
        let (diff, mut tee) = match comp {
            Compression::None => match pump(&mut tee, tx, &back_rx, limit) {
                Ok(diff) => (diff, tee),
                Err(e) => return Err(classify(e, tee)),
            },
            Compression::Gzip => {
                let mut decoder =
                    flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, tee));
                match pump(&mut decoder, tx, &back_rx, limit) {
                    Ok(diff) => (diff, decoder.into_inner().into_inner()),
                    Err(e) => return Err(classify(e, decoder.into_inner().into_inner())),
                }
            }
            Compression::Zstd => {
                let mut decoder =
                    zstd::Decoder::with_buffer(BufReader::with_capacity(1 << 20, tee))
                        .map_err(|e| PumpError::Decode(e, None))?;
                match pump(&mut decoder, tx, &back_rx, limit) {
                    Ok(diff) => (diff, decoder.finish().into_inner()),
                    Err(e) => return Err(classify(e, decoder.finish().into_inner())),
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
        let size = read.get();
        let blob = tee.hasher.take().map_or(diff.0, Hasher::finish);
        Ok((blob, size, diff.0))
    };
    let (pumped, extracted) = std::thread::scope(|s| {
        let reader = s.spawn(produce);
        let extracted = match extract_to {
            Some((dir, opts)) => {
                let mut tar_stream = ChanReader {
                    rx,
                    back: back_tx,
                    cur: Vec::new(),
                    pos: 0,
                };
                // A blob that is its tar is recorded around its stored files, so the
                // store can rebuild it instead of keeping it (see `tarsplit`).
                let record = comp == Compression::None && opts.objects.is_some();
                let rec = std::cell::RefCell::new(Recorder::default());
                let mut stream = Recording {
                    inner: &mut tar_stream,
                    rec: &rec,
                };
                let mut res = sys::open_root_dir(dir)
                    .map_err(|e| Error::from(e).context(format!("opening {}", dir.display())))
                    .and_then(|fd| {
                        extract::extract(&mut stream, fd.as_fd(), opts, record.then_some(&rec))
                    });
                if res.is_ok() {
                    // Trailing blocks after the tar's end still count for the diff-id.
                    let _ = io::copy(&mut stream, &mut io::sink());
                }
                drop(tar_stream);
                if let Ok(x) = &mut res
                    && record
                {
                    x.split = Some(rec.into_inner().finish());
                }
                Some(res)
            }
            None => {
                drop(rx);
                None
            }
        };
        let pumped = reader.join().unwrap_or_else(|_| {
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
                return Err(Error::corrupt(format!(
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
            return Err(Error::corrupt(format!("{what}: {why}")));
        }
        Err(PumpError::Expands(out, read)) => {
            return Err(Error::corrupt(format!(
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
