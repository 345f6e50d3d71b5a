//! eStargz layer blobs (stargz-snapshotter's seekable gzip): a gzip-compressed tar in
//! which every regular file's content (in chunks of at most 4 MiB) is a gzip member of
//! its own, whose first entry is the `.no.prefetch.landmark` file, whose last entry is
//! the TOC (`stargz.index.json`: every entry with offsets and digests, a member of its
//! own), and which ends with a 51-byte footer member naming the TOC's offset. Any gzip
//! reader sees a plain gzip layer. The tar is not the input tar (the landmark and the
//! TOC are entries of it), so the diff-id changes: [`encode`] returns the new one.
//!
//! Written deterministically (the same tar gives the same blob with this build's
//! deflate). Each chunk's TOC entry also names where its member ends (`endOffset`), so
//! a partial pull (`estargz_index`) can skip any chunk of a layerfs-written blob; in
//! blobs written by stargz's Go writer the last chunk of a file shares its member with
//! the headers after it, and only the chunks before it can be skipped.

use std::io::{self, Read, Write};

use flate2::Compression as Level;
use flate2::write::GzEncoder;

use crate::error::{Error, Result};
use crate::store::digest::{Digest, Hasher};
use crate::store::toc::{Out, Toc, TocEntry, Visitor, walk};

pub(crate) const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
pub(crate) const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";
pub(crate) const TOC_NAME: &str = "stargz.index.json";
const LANDMARK: &str = ".no.prefetch.landmark";
const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
const CHUNK: u64 = 4 << 20;

/// What [`encode`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub digest: Digest,
    pub size: u64,
    /// sha256 of the eStargz tar (the input's entries, the landmark, the TOC).
    pub diff_id: Digest,
    /// sha256 of the TOC JSON (the `toc.digest` annotation).
    pub toc_digest: Digest,
    pub uncompressed_size: u64,
}

struct Writer<W: Write> {
    w: Out<W>,
    /// Bytes that are no file's content, for the next member.
    pending: Vec<u8>,
    /// The tar written (its sha256 is the new diff-id).
    tar: Hasher,
    toc: Vec<TocEntry>,
    /// A file's chunk entries after the first, to follow its entry.
    chunks: Vec<TocEntry>,
}

impl<W: Write> Writer<W> {
    /// Write `data` as one gzip member.
    fn member(&mut self, data: &[u8]) -> io::Result<()> {
        let mut gz = GzEncoder::new(&mut self.w, Level::default());
        gz.write_all(data)?;
        gz.finish()?;
        Ok(())
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let data = std::mem::take(&mut self.pending);
            self.member(&data)?;
        }
        Ok(())
    }
}

fn werr(e: io::Error) -> Error {
    Error::io("writing eStargz", e)
}

impl<W: Write> Visitor for Writer<W> {
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.tar.update(b);
        self.pending.extend_from_slice(b);
        Ok(())
    }

    fn file(&mut self, e: &mut TocEntry, content: &mut dyn Read) -> Result<()> {
        self.flush_pending().map_err(werr)?;
        let mut whole = Hasher::new();
        let mut at = 0u64;
        while at < e.size {
            let n = (e.size - at).min(CHUNK);
            let mut buf = Vec::with_capacity(n as usize);
            content
                .take(n)
                .read_to_end(&mut buf)
                .map_err(|err| Error::io("reading the tar", err))?;
            if buf.len() as u64 != n {
                return Err(Error::corrupt(format!(
                    "tar entry {:?}: truncated file content",
                    e.name
                )));
            }
            whole.update(&buf);
            self.tar.update(&buf);
            let offset = self.w.pos();
            self.member(&buf).map_err(werr)?;
            // Where the chunk's member ends (a layerfs addition readers may ignore): a
            // partial pull can then skip any chunk, not only those another chunk follows.
            let end_offset = self.w.pos();
            let last = at + n == e.size;
            let chunk_size = if last { 0 } else { n };
            let chunk_digest = Digest::of(&buf).to_string();
            if at == 0 {
                e.offset = offset;
                e.end_offset = end_offset;
                e.chunk_size = chunk_size;
                e.chunk_digest = chunk_digest;
            } else {
                self.chunks.push(TocEntry {
                    kind: "chunk".into(),
                    name: e.name.clone(),
                    offset,
                    end_offset,
                    chunk_offset: at,
                    chunk_size,
                    chunk_digest,
                    ..TocEntry::default()
                });
            }
            at += n;
        }
        e.digest = whole.finish().to_string();
        Ok(())
    }

    fn entry(&mut self, e: TocEntry) -> Result<()> {
        self.toc.push(e);
        self.toc.append(&mut self.chunks);
        Ok(())
    }

    /// The input's end blocks: the TOC entry comes before the new ones.
    fn end(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }

    /// An input that is eStargz already keeps its entries, not its landmark and TOC
    /// (written anew): encoding such a tar again gives the same blob.
    fn keep(&mut self, e: &TocEntry) -> bool {
        !is_own_entry(&e.name)
    }
}

/// The entries eStargz adds to a tar: the landmarks and the TOC.
pub(crate) fn is_own_entry(name: &str) -> bool {
    let n = name.trim_start_matches("./").trim_start_matches('/');
    [LANDMARK, PREFETCH_LANDMARK, TOC_NAME].contains(&n)
}

/// A ustar header for an entry layerfs adds (owner root, mtime 0, mode 0644).
fn header(name: &str, size: u64) -> Result<Vec<u8>> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path(name)
        .map_err(|e| Error::io(format!("tar header {name}"), e))?;
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h.as_bytes().to_vec())
}

fn padding(size: u64) -> Vec<u8> {
    vec![0u8; (size.div_ceil(512) * 512 - size) as usize]
}

/// Write `tar` as an eStargz blob to `out`. `what` names the layer in errors.
pub(crate) fn encode(what: &str, tar: impl Read, out: impl Write) -> Result<Encoded> {
    let mut v = Writer {
        w: Out::new(io::BufWriter::with_capacity(1 << 20, out)),
        pending: Vec::new(),
        tar: Hasher::new(),
        toc: Vec::new(),
        chunks: Vec::new(),
    };
    let err = |e: io::Error| Error::io(format!("{what}: writing eStargz"), e);
    // No prioritised files: the no-prefetch landmark first.
    let mut landmark = TocEntry {
        kind: "reg".into(),
        name: LANDMARK.into(),
        mode: 0o644,
        size: 1,
        ..TocEntry::default()
    };
    v.bytes(&header(LANDMARK, 1)?)?;
    v.file(&mut landmark, &mut &[0x0fu8][..])?;
    v.bytes(&padding(1))?;
    v.entry(landmark)?;
    walk(what, "eStargz", tar, &mut v)?;
    v.flush_pending().map_err(err)?;
    let toc_json = serde_json::to_vec(&Toc {
        version: 1,
        entries: std::mem::take(&mut v.toc),
        ..Toc::default()
    })
    .map_err(|e| Error::new(format!("{what}: eStargz TOC: {e}")))?;
    // The TOC entry, its padding and the end blocks: one member, from the TOC's header.
    let toc_offset = v.w.pos();
    let mut last = header(TOC_NAME, toc_json.len() as u64)?;
    last.extend_from_slice(&toc_json);
    last.extend_from_slice(&padding(toc_json.len() as u64));
    last.extend_from_slice(&[0u8; 1024]);
    v.tar.update(&last);
    v.member(&last).map_err(err)?;
    v.w.write_all(&footer(toc_offset)).map_err(err)?;
    let uncompressed_size = v.tar.len();
    let (digest, size) = v.w.finish().map_err(err)?;
    Ok(Encoded {
        digest,
        size,
        diff_id: v.tar.finish(),
        toc_digest: Digest::of(&toc_json),
        uncompressed_size,
    })
}

/// The 51-byte footer: an empty gzip member whose extra field names the TOC's offset.
fn footer(toc_offset: u64) -> Vec<u8> {
    let mut f = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff];
    f.extend_from_slice(&26u16.to_le_bytes());
    f.extend_from_slice(b"SG");
    f.extend_from_slice(&22u16.to_le_bytes());
    f.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f.extend_from_slice(&[0u8; 8]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("etc/", tar::EntryType::Directory, b"");
        add("etc/hostname", tar::EntryType::Regular, b"box\n");
        let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        add("usr/lib/big.so", tar::EntryType::Regular, &big);
        b.into_inner().unwrap()
    }

    #[test]
    fn a_gzip_reader_sees_the_entries_then_the_toc_and_offsets_hold() {
        let tar = sample_tar();
        let mut blob = Vec::new();
        let enc = encode("t", &tar[..], &mut blob).unwrap();
        assert_eq!(enc.digest, Digest::of(&blob));
        let mut again = Vec::new();
        encode("t", &tar[..], &mut again).unwrap();
        assert_eq!(again, blob, "deterministic");

        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(Digest::of(&plain), enc.diff_id);
        assert_eq!(plain.len() as u64, enc.uncompressed_size);
        let mut names = Vec::new();
        let mut toc_json = Vec::new();
        for e in tar::Archive::new(&plain[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let n = e.path().unwrap().to_string_lossy().into_owned();
            if n == TOC_NAME {
                e.read_to_end(&mut toc_json).unwrap();
            }
            names.push(n);
        }
        assert_eq!(
            names,
            [LANDMARK, "etc/", "etc/hostname", "usr/lib/big.so", TOC_NAME]
        );
        assert_eq!(Digest::of(&toc_json), enc.toc_digest);

        // The footer names the TOC member, which starts with the TOC's tar header.
        let foot = &blob[blob.len() - 51..];
        let off = u64::from_str_radix(std::str::from_utf8(&foot[16..32]).unwrap(), 16).unwrap();
        let mut member = Vec::new();
        flate2::read::GzDecoder::new(&blob[off as usize..])
            .read_to_end(&mut member)
            .unwrap();
        assert_eq!(&member[..TOC_NAME.len()], TOC_NAME.as_bytes());

        // Every chunk's member decompresses to the bytes its digest names.
        let toc: Toc = serde_json::from_slice(&toc_json).unwrap();
        let chunks: Vec<&TocEntry> = toc
            .entries
            .iter()
            .filter(|e| !e.chunk_digest.is_empty())
            .collect();
        assert_eq!(
            chunks.len(),
            1 + 1 + 3,
            "landmark, hostname, 9 MiB in 3 chunks"
        );
        for c in chunks {
            let mut data = Vec::new();
            flate2::read::GzDecoder::new(&blob[c.offset as usize..])
                .read_to_end(&mut data)
                .unwrap();
            assert_eq!(Digest::of(&data).to_string(), c.chunk_digest, "{}", c.name);
        }
        let big = toc
            .entries
            .iter()
            .find(|e| e.name == "usr/lib/big.so")
            .unwrap();
        assert_eq!(big.chunk_size, CHUNK);
        assert_eq!(big.size, 9 << 20);
    }

    #[test]
    fn an_estargz_tar_encodes_to_the_same_blob_again() {
        let mut blob = Vec::new();
        let enc = encode("t", &sample_tar()[..], &mut blob).unwrap();
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        let mut again = Vec::new();
        let enc2 = encode("t", &tar[..], &mut again).unwrap();
        assert!(again == blob, "the landmark and TOC were not replaced");
        assert_eq!(enc2.diff_id, enc.diff_id);
    }
}
