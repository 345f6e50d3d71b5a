//! zstd:chunked layer blobs: a zstd-compressed tar in which every non-empty regular
//! file's content is a frame of its own, followed by three skippable frames — a TOC
//! ("manifest") of every entry with each file's digest and byte range, the tar-split
//! (every byte of the tar that is not file content, as JSON lines), and a 64-byte footer
//! — and named by four annotations on the layer descriptor. Readers unaware of it see a
//! plain zstd layer that decompresses to the same tar (same diff-id); a reader that
//! knows it fetches the TOC and the tar-split, then only the files it lacks, and rebuilds
//! the tar byte for byte (so the diff-id is checked as for any pull).
//!
//! This module is the format only: [`encode`] writes one from a tar (deterministic: the
//! same tar gives the same blob with this build's libzstd), [`Positions`] reads the
//! annotations, [`Index::parse`] reads and checks a TOC and tar-split pair.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::digest::Digest;
use crate::store::toc::{Out, Toc, TocEntry, Visitor, copy_hashed, walk};

pub(crate) const MANIFEST_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
pub(crate) const MANIFEST_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
pub(crate) const TARSPLIT_CHECKSUM: &str = "io.github.containers.zstd-chunked.tarsplit-checksum";
pub(crate) const TARSPLIT_POSITION: &str = "io.github.containers.zstd-chunked.tarsplit-position";

/// The zstd level every frame is written with.
const LEVEL: i32 = 3;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const FOOTER_MAGIC: u64 = 0x7855_6e49_6c55_4e47;
/// The most a TOC or tar-split may expand to (a bomb is refused before it is read).
const MAX_METADATA: u64 = 512 << 20;

/// Where the TOC and the tar-split are, as the layer descriptor's annotations say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Positions {
    pub manifest: Span,
    pub manifest_digest: Digest,
    pub tarsplit: Span,
    /// The annotation (written by older producers; newer ones name it in the TOC).
    pub tarsplit_digest: Option<Digest>,
}

/// A compressed range of the blob and its uncompressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub offset: u64,
    pub len: u64,
    pub uncompressed: u64,
}

impl Span {
    pub(crate) fn end(&self) -> u64 {
        self.offset + self.len
    }
}

impl Positions {
    /// From a layer descriptor's annotations: `Ok(None)` when it is not zstd:chunked
    /// with a tar-split (the oldest form and the newest, "canonical" one have none: they
    /// cannot be rebuilt byte for byte, so they are pulled whole); an error naming the
    /// annotation when one is malformed.
    pub(crate) fn from_annotations(
        what: &str,
        a: &HashMap<String, String>,
    ) -> Result<Option<Positions>> {
        let (Some(mc), Some(mp), Some(tp)) = (
            a.get(MANIFEST_CHECKSUM),
            a.get(MANIFEST_POSITION),
            a.get(TARSPLIT_POSITION),
        ) else {
            return Ok(None);
        };
        let bad = |name: &str, v: &str| {
            Error::corrupt(format!(
                "{what}: annotation {name}: malformed value \"{v}\""
            ))
        };
        let nums = |name: &str, v: &str, n: usize| -> Result<Vec<u64>> {
            let parts: Vec<u64> = v
                .split(':')
                .map(|p| p.parse::<u64>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad(name, v))?;
            if parts.len() != n {
                return Err(bad(name, v));
            }
            Ok(parts)
        };
        let m = nums(MANIFEST_POSITION, mp, 4)?;
        if m[3] != 1 {
            return Err(Error::unsupported(format!(
                "{what}: zstd:chunked manifest type {} (only type 1 is known)",
                m[3]
            )));
        }
        let t = nums(TARSPLIT_POSITION, tp, 3)?;
        let digest = |name: &str, v: &str| v.parse::<Digest>().map_err(|_| bad(name, v));
        Ok(Some(Positions {
            manifest: Span {
                offset: m[0],
                len: m[1],
                uncompressed: m[2],
            },
            manifest_digest: digest(MANIFEST_CHECKSUM, mc)?,
            tarsplit: Span {
                offset: t[0],
                len: t[1],
                uncompressed: t[2],
            },
            tarsplit_digest: a
                .get(TARSPLIT_CHECKSUM)
                .map(|tc| digest(TARSPLIT_CHECKSUM, tc))
                .transpose()?,
        }))
    }

    /// The annotations that name these positions.
    pub(crate) fn annotations(&self) -> BTreeMap<String, String> {
        let (m, t) = (self.manifest, self.tarsplit);
        let mut a = BTreeMap::from([
            (MANIFEST_CHECKSUM.into(), self.manifest_digest.to_string()),
            (
                MANIFEST_POSITION.into(),
                format!("{}:{}:{}:1", m.offset, m.len, m.uncompressed),
            ),
            (
                TARSPLIT_POSITION.into(),
                format!("{}:{}:{}", t.offset, t.len, t.uncompressed),
            ),
        ]);
        if let Some(d) = self.tarsplit_digest {
            a.insert(TARSPLIT_CHECKSUM.into(), d.to_string());
        }
        a
    }

    /// The range that holds both (they are written next to each other).
    pub(crate) fn metadata_range(&self) -> (u64, u64) {
        let start = self.manifest.offset.min(self.tarsplit.offset);
        let end = self.manifest.end().max(self.tarsplit.end());
        (start, end)
    }
}

/// One line of the tar-split (the JSON-lines form of vbatts/tar-split).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SplitLine {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    payload: Option<String>,
    position: u64,
}

/// A piece of the tar, in order: bytes kept in the tar-split, or one file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Bytes(Vec<u8>),
    /// Index into [`Index::files`].
    File(usize),
}

/// A regular file's content: where its frame(s) are and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRange {
    pub name: String,
    pub size: u64,
    pub digest: Digest,
    pub offset: u64,
    pub end: u64,
}

/// A TOC and tar-split read together and checked against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Index {
    pub pieces: Vec<Piece>,
    pub files: Vec<FileRange>,
}

impl Index {
    /// Read the compressed TOC and tar-split of a blob of `blob_size` bytes, fetched by
    /// `pos` and checked against its digests here. `what` names the layer. Every file of
    /// the tar-split must have a TOC entry of the same name and size with a sha256 digest
    /// and a range inside the blob's data frames; ranges may not overlap.
    pub(crate) fn parse(
        what: &str,
        pos: &Positions,
        blob_size: u64,
        manifest: &[u8],
        tarsplit: &[u8],
    ) -> Result<Index> {
        let data_end = pos.metadata_range().0;
        if pos.metadata_range().1 > blob_size || data_end < 8 {
            return Err(Error::corrupt(format!(
                "{what}: zstd:chunked metadata at {}..{} lies outside the {blob_size}-byte blob",
                data_end,
                pos.metadata_range().1
            )));
        }
        let check = |name: &str, bytes: &[u8], want: &Digest, by: &str| -> Result<()> {
            let got = Digest::of(bytes);
            if got != *want {
                return Err(Error::corrupt(format!(
                    "{what}: zstd:chunked {name} hashes to {got}, {by} says {want}"
                )));
            }
            Ok(())
        };
        check("manifest", manifest, &pos.manifest_digest, "the annotation")?;
        let toc_bytes = decompress(what, "manifest", manifest, pos.manifest.uncompressed)?;
        let toc: Toc = serde_json::from_slice(&toc_bytes)
            .map_err(|e| Error::corrupt(format!("{what}: zstd:chunked manifest: {e}")))?;
        if toc.version != 1 {
            return Err(Error::unsupported(format!(
                "{what}: zstd:chunked manifest version {}",
                toc.version
            )));
        }
        // The tar-split's digest: in the (checked) TOC, or an annotation, or both alike.
        let in_toc = match toc.tar_split_digest.as_str() {
            "" => None,
            d => Some(d.parse::<Digest>().map_err(|_| {
                Error::corrupt(format!(
                    "{what}: zstd:chunked manifest: tarSplitDigest {d:?}"
                ))
            })?),
        };
        match (in_toc, pos.tarsplit_digest) {
            (Some(t), Some(a)) if t != a => {
                return Err(Error::corrupt(format!(
                    "{what}: zstd:chunked: the manifest names tar-split {t}, the annotation {a}"
                )));
            }
            (Some(d), _) => check("tar-split", tarsplit, &d, "the manifest")?,
            (None, Some(d)) => check("tar-split", tarsplit, &d, "the annotation")?,
            (None, None) => {
                return Err(Error::corrupt(format!(
                    "{what}: zstd:chunked: no digest names the tar-split"
                )));
            }
        }
        let split_bytes = decompress(what, "tar-split", tarsplit, pos.tarsplit.uncompressed)?;
        // Regular files with content, by name, in order (a name may come twice).
        let mut by_name: HashMap<&str, VecDeque<&TocEntry>> = HashMap::new();
        for e in toc.entries.iter().filter(|e| e.kind == "reg" && e.size > 0) {
            by_name.entry(&e.name).or_default().push_back(e);
        }
        let mut pieces = Vec::new();
        let mut files: Vec<FileRange> = Vec::new();
        for (n, line) in split_bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let l: SplitLine = serde_json::from_slice(line).map_err(|e| {
                Error::corrupt(format!(
                    "{what}: zstd:chunked tar-split line {}: {e}",
                    n + 1
                ))
            })?;
            match l.kind {
                2 => {
                    let p = l.payload.unwrap_or_default();
                    let bytes = B64.decode(p.as_bytes()).map_err(|_| {
                        Error::corrupt(format!(
                            "{what}: zstd:chunked tar-split line {}: payload is not base64",
                            n + 1
                        ))
                    })?;
                    pieces.push(Piece::Bytes(bytes));
                }
                1 => {
                    let size = l.size.unwrap_or(0);
                    if size == 0 {
                        continue;
                    }
                    let name = l.name.unwrap_or_default();
                    let e = by_name
                        .get_mut(name.as_str())
                        .and_then(|q| q.pop_front())
                        .ok_or_else(|| {
                            Error::corrupt(format!(
                                "{what}: zstd:chunked: file {name:?} of the tar-split has no entry in the manifest"
                            ))
                        })?;
                    files.push(file_range(what, e, size, data_end)?);
                    pieces.push(Piece::File(files.len() - 1));
                }
                k => {
                    return Err(Error::corrupt(format!(
                        "{what}: zstd:chunked tar-split line {}: unknown type {k}",
                        n + 1
                    )));
                }
            }
        }
        let mut spans: Vec<&FileRange> = files.iter().collect();
        spans.sort_by_key(|f| f.offset);
        for w in spans.windows(2) {
            if w[1].offset < w[0].end {
                return Err(Error::corrupt(format!(
                    "{what}: zstd:chunked: entries {:?} and {:?} overlap",
                    w[0].name, w[1].name
                )));
            }
        }
        Ok(Index { pieces, files })
    }

    /// The tar's length.
    #[cfg(test)]
    pub(crate) fn tar_len(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Bytes(b) => b.len() as u64,
                Piece::File(i) => self.files[*i].size,
            })
            .sum()
    }
}

fn file_range(what: &str, e: &TocEntry, size: u64, data_end: u64) -> Result<FileRange> {
    let bad =
        |why: String| Error::corrupt(format!("{what}: zstd:chunked entry {:?}: {why}", e.name));
    if e.size != size {
        return Err(bad(format!(
            "the manifest says {} bytes, the tar-split {size}",
            e.size
        )));
    }
    let digest: Digest = e
        .digest
        .parse()
        .map_err(|_| bad(format!("digest {:?} is not a sha256 digest", e.digest)))?;
    if e.offset >= e.end_offset || e.end_offset > data_end {
        return Err(bad(format!(
            "range {}..{} is not inside the data frames (0..{data_end})",
            e.offset, e.end_offset
        )));
    }
    // A frame never needs much more than its content (zstd's bound is ~size/255 + 64 per
    // 128 KiB block); far more is a lie that would make us fetch the whole blob.
    if e.end_offset - e.offset > size + size / 64 + (64 << 10) {
        return Err(bad(format!(
            "{} compressed bytes for {size} bytes of content",
            e.end_offset - e.offset
        )));
    }
    Ok(FileRange {
        name: e.name.clone(),
        size,
        digest,
        offset: e.offset,
        end: e.end_offset,
    })
}

/// Decompress one frame of metadata, no larger than `want` (as its annotation says).
fn decompress(what: &str, name: &str, data: &[u8], want: u64) -> Result<Vec<u8>> {
    if want > MAX_METADATA {
        return Err(Error::corrupt(format!(
            "{what}: zstd:chunked {name} claims {want} bytes uncompressed (at most {MAX_METADATA})"
        )));
    }
    let mut out = Vec::with_capacity(want as usize);
    let dec = zstd::stream::read::Decoder::new(data)
        .map_err(|e| Error::corrupt(format!("{what}: zstd:chunked {name}: {e}")))?;
    dec.take(want + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::corrupt(format!("{what}: zstd:chunked {name}: {e}")))?;
    if out.len() as u64 != want {
        return Err(Error::corrupt(format!(
            "{what}: zstd:chunked {name} is {} bytes uncompressed, the annotation says {want}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decompress the frame(s) of one file from `compressed`, checking size and digest.
#[cfg(test)]
pub(crate) fn read_file(what: &str, f: &FileRange, compressed: &[u8]) -> Result<Vec<u8>> {
    let bad =
        |why: String| Error::corrupt(format!("{what}: zstd:chunked entry {:?}: {why}", f.name));
    let mut out = Vec::with_capacity(f.size as usize);
    let dec = zstd::stream::read::Decoder::new(compressed).map_err(|e| bad(e.to_string()))?;
    dec.take(f.size + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("invalid frame: {e}")))?;
    if out.len() as u64 != f.size {
        return Err(bad(format!(
            "{} bytes decompressed, the manifest says {}",
            out.len(),
            f.size
        )));
    }
    let got = Digest::of(&out);
    if got != f.digest {
        return Err(bad(format!(
            "content hashes to {got}, the manifest says {}",
            f.digest
        )));
    }
    Ok(out)
}

/// What [`encode`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub digest: Digest,
    pub size: u64,
    /// sha256 of the tar read (the diff-id).
    pub diff_id: Digest,
    pub positions: Positions,
}

/// Writes the blob as the walk goes: bytes that are no file's content gather into one
/// frame (and one tar-split line) until a file's content starts its own frame.
struct Writer<W: Write> {
    w: Out<W>,
    frame: Vec<u8>,
    split: Vec<u8>,
    lines: Vec<SplitLine>,
    toc: Vec<TocEntry>,
}

impl<W: Write> Writer<W> {
    fn line(&mut self, kind: u8, name: Option<String>, size: Option<u64>, payload: Option<String>) {
        let position = self.lines.len() as u64;
        self.lines.push(SplitLine {
            kind,
            name,
            size,
            payload,
            position,
        });
    }

    fn flush_split(&mut self) {
        if !self.split.is_empty() {
            let payload = B64.encode(std::mem::take(&mut self.split));
            self.line(2, None, None, Some(payload));
        }
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        if !self.frame.is_empty() {
            let c = zstd::bulk::compress(&self.frame, LEVEL)?;
            self.w.write_all(&c)?;
            self.frame.clear();
        }
        Ok(())
    }

    /// One skippable frame holding compressed metadata: its span.
    fn metadata(&mut self, compressed: &[u8], uncompressed: usize) -> io::Result<Span> {
        let offset = self.w.pos() + 8;
        self.skippable(compressed)?;
        Ok(Span {
            offset,
            len: compressed.len() as u64,
            uncompressed: uncompressed as u64,
        })
    }

    fn skippable(&mut self, data: &[u8]) -> io::Result<()> {
        self.w.write_all(&SKIPPABLE_MAGIC.to_le_bytes())?;
        self.w.write_all(&(data.len() as u32).to_le_bytes())?;
        self.w.write_all(data)
    }
}

fn write_err(what: &str) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io(format!("{what}: writing zstd:chunked"), e)
}

impl<W: Write> Visitor for Writer<W> {
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.frame.extend_from_slice(b);
        self.split.extend_from_slice(b);
        Ok(())
    }

    fn file(&mut self, e: &mut TocEntry, content: &mut dyn Read) -> Result<()> {
        let err = |e: io::Error| Error::io("writing zstd:chunked", e);
        self.flush_frame().map_err(err)?;
        self.flush_split();
        e.offset = self.w.pos();
        let mut enc = zstd::stream::write::Encoder::new(&mut self.w, LEVEL).map_err(err)?;
        enc.include_contentsize(true).map_err(err)?;
        enc.set_pledged_src_size(Some(e.size)).map_err(err)?;
        let mut crc = Crc64::new();
        let (digest, _) = copy_hashed(content, &mut enc, &mut |b| crc.update(b)).map_err(err)?;
        enc.finish().map_err(err)?;
        e.end_offset = self.w.pos();
        e.digest = digest.to_string();
        self.line(
            1,
            Some(e.name.clone()),
            Some(e.size),
            Some(B64.encode(crc.sum())),
        );
        Ok(())
    }

    fn entry(&mut self, e: TocEntry) -> Result<()> {
        if e.kind != "reg" || e.size == 0 {
            self.flush_split();
            self.line(1, Some(e.name.clone()), None, None);
        }
        self.toc.push(e);
        Ok(())
    }

    fn end(&mut self, b: &[u8]) -> Result<()> {
        self.bytes(b)
    }
}

/// Write `tar` as a zstd:chunked blob to `out`. `what` names the layer in errors.
pub(crate) fn encode(what: &str, tar: impl Read, out: impl Write) -> Result<Encoded> {
    let mut v = Writer {
        w: Out::new(io::BufWriter::with_capacity(1 << 20, out)),
        frame: Vec::new(),
        split: Vec::new(),
        lines: Vec::new(),
        toc: Vec::new(),
    };
    let diff_id = walk(what, "zstd:chunked", tar, &mut v)?;
    let err = write_err(what);
    v.flush_frame().map_err(&err)?;
    v.flush_split();
    let mut split_json = Vec::new();
    for l in &v.lines {
        serde_json::to_writer(&mut split_json, l)
            .map_err(|e| Error::new(format!("{what}: zstd:chunked tar-split: {e}")))?;
        split_json.push(b'\n');
    }
    // The TOC names the compressed tar-split's digest (newer readers take it from
    // there, older ones from the annotation: both are written).
    let split_c = zstd::bulk::compress(&split_json, LEVEL).map_err(&err)?;
    let tarsplit_digest = Digest::of(&split_c);
    let toc_json = serde_json::to_vec(&Toc {
        version: 1,
        entries: std::mem::take(&mut v.toc),
        tar_split_digest: tarsplit_digest.to_string(),
    })
    .map_err(|e| Error::new(format!("{what}: zstd:chunked manifest: {e}")))?;
    let manifest_c = zstd::bulk::compress(&toc_json, LEVEL).map_err(&err)?;
    let manifest = v.metadata(&manifest_c, toc_json.len()).map_err(&err)?;
    let tarsplit = v.metadata(&split_c, split_json.len()).map_err(&err)?;
    let mut footer = Vec::with_capacity(64);
    for x in [
        manifest.offset,
        manifest.len,
        manifest.uncompressed,
        1,
        tarsplit.offset,
        tarsplit.len,
        tarsplit.uncompressed,
        FOOTER_MAGIC,
    ] {
        footer.extend_from_slice(&x.to_le_bytes());
    }
    v.skippable(&footer).map_err(&err)?;
    let (digest, size) = v.w.finish().map_err(&err)?;
    Ok(Encoded {
        digest,
        size,
        diff_id,
        positions: Positions {
            manifest,
            manifest_digest: Digest::of(&manifest_c),
            tarsplit,
            tarsplit_digest: Some(tarsplit_digest),
        },
    })
}

/// CRC-64 with the ISO polynomial, as tar-split records each file (its payload).
struct Crc64(u64);

impl Crc64 {
    const POLY: u64 = 0xD800_0000_0000_0000;

    fn new() -> Crc64 {
        Crc64(0)
    }

    fn update(&mut self, data: &[u8]) {
        let mut crc = !self.0;
        for &b in data {
            let mut c = (crc ^ b as u64) & 0xff;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ Self::POLY
                } else {
                    c >> 1
                };
            }
            crc = c ^ (crc >> 8);
        }
        self.0 = !crc;
    }

    fn sum(&self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
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
        add("etc/empty", tar::EntryType::Regular, b"");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        add("usr/lib/big.so", tar::EntryType::Regular, &big);
        let long = format!("{}/file", "d".repeat(150));
        add(&long, tar::EntryType::Regular, b"long name\n");
        b.into_inner().unwrap()
    }

    fn slice(blob: &[u8], s: Span) -> &[u8] {
        &blob[s.offset as usize..s.end() as usize]
    }

    #[test]
    fn crc64_iso_known_value() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO))
        let mut c = Crc64::new();
        c.update(b"123456789");
        assert_eq!(c.0, 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn encoded_blob_is_plain_zstd_of_the_same_tar_and_deterministic() {
        let tar = sample_tar();
        let mut blob = Vec::new();
        let enc = encode("t", &tar[..], &mut blob).unwrap();
        assert_eq!(enc.diff_id, Digest::of(&tar));
        assert_eq!(enc.digest, Digest::of(&blob));
        let mut plain = Vec::new();
        zstd::stream::read::Decoder::new(&blob[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, tar, "a reader unaware of the format gets the tar");
        let mut again = Vec::new();
        encode("t", &tar[..], &mut again).unwrap();
        assert_eq!(again, blob);
        // The footer names the same spans as the annotations.
        let foot = &blob[blob.len() - 64..];
        let v = |i: usize| u64::from_le_bytes(foot[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(
            (v(0), v(1), v(2)),
            (
                enc.positions.manifest.offset,
                enc.positions.manifest.len,
                enc.positions.manifest.uncompressed
            )
        );
        assert_eq!(v(7), FOOTER_MAGIC);
    }

    #[test]
    fn index_rebuilds_the_tar_from_ranges() {
        let tar = sample_tar();
        let mut blob = Vec::new();
        let enc = encode("t", &tar[..], &mut blob).unwrap();
        let ann: HashMap<String, String> = enc.positions.annotations().into_iter().collect();
        let pos = Positions::from_annotations("t", &ann).unwrap().unwrap();
        assert_eq!(pos, enc.positions);
        let idx = Index::parse(
            "t",
            &pos,
            blob.len() as u64,
            slice(&blob, pos.manifest),
            slice(&blob, pos.tarsplit),
        )
        .unwrap();
        assert_eq!(idx.files.len(), 3);
        assert_eq!(idx.tar_len(), tar.len() as u64);
        let mut out = Vec::new();
        for p in &idx.pieces {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(b),
                Piece::File(i) => {
                    let f = &idx.files[*i];
                    out.extend(
                        read_file("t", f, &blob[f.offset as usize..f.end as usize]).unwrap(),
                    );
                }
            }
        }
        assert_eq!(out, tar);
        assert!(
            idx.files
                .iter()
                .any(|f| f.name.ends_with("/file") && f.name.len() > 150)
        );
    }

    #[test]
    fn lies_are_refused_naming_the_entry() {
        let tar = sample_tar();
        let mut blob = Vec::new();
        let enc = encode("t", &tar[..], &mut blob).unwrap();
        let pos = enc.positions;
        let toc: Toc = serde_json::from_slice(
            &decompress(
                "t",
                "m",
                slice(&blob, pos.manifest),
                pos.manifest.uncompressed,
            )
            .unwrap(),
        )
        .unwrap();
        let split = slice(&blob, pos.tarsplit).to_vec();
        let try_toc = |f: &dyn Fn(&mut Toc)| {
            let mut t = toc.clone();
            f(&mut t);
            let json = serde_json::to_vec(&t).unwrap();
            let c = zstd::bulk::compress(&json, 3).unwrap();
            let mut p = pos;
            p.manifest_digest = Digest::of(&c);
            p.manifest.uncompressed = json.len() as u64;
            Index::parse("t", &p, blob.len() as u64, &c, &split)
                .unwrap_err()
                .to_string()
        };
        let e = try_toc(&|t| {
            let e = t
                .entries
                .iter_mut()
                .find(|e| e.name == "usr/lib/big.so")
                .unwrap();
            e.end_offset = blob.len() as u64 + 10;
        });
        assert!(
            e.contains("usr/lib/big.so") && e.contains("not inside"),
            "{e}"
        );
        let e = try_toc(&|t| {
            let first = t
                .entries
                .iter()
                .find(|e| e.name == "etc/hostname")
                .unwrap()
                .clone();
            let e = t
                .entries
                .iter_mut()
                .find(|e| e.name == "usr/lib/big.so")
                .unwrap();
            e.offset = first.offset;
        });
        assert!(
            e.contains("overlap") || e.contains("compressed bytes"),
            "{e}"
        );
        let e = try_toc(&|t| {
            t.entries.retain(|e| e.name != "etc/hostname");
        });
        assert!(e.contains("etc/hostname") && e.contains("no entry"), "{e}");
        let e = try_toc(&|t| {
            let e = t
                .entries
                .iter_mut()
                .find(|e| e.name == "etc/hostname")
                .unwrap();
            e.digest = "md5:abc".into();
        });
        assert!(e.contains("etc/hostname") && e.contains("digest"), "{e}");
        // The manifest itself must hash to its annotation.
        let mut p = pos;
        p.manifest_digest = Digest::of(b"other");
        let e = Index::parse(
            "t",
            &p,
            blob.len() as u64,
            slice(&blob, pos.manifest),
            &split,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("manifest hashes to"), "{e}");
        // Content that does not match its digest.
        let idx = Index::parse(
            "t",
            &pos,
            blob.len() as u64,
            slice(&blob, pos.manifest),
            &split,
        )
        .unwrap();
        let f = idx.files.iter().find(|f| f.name == "etc/hostname").unwrap();
        let other = zstd::bulk::compress(b"evi\n", 3).unwrap();
        let e = read_file("t", f, &other).unwrap_err().to_string();
        assert!(e.contains("etc/hostname") && e.contains("hashes to"), "{e}");
    }

    #[test]
    fn the_tar_split_digest_comes_from_the_toc_or_the_annotation() {
        let tar = sample_tar();
        let mut blob = Vec::new();
        let enc = encode("t", &tar[..], &mut blob).unwrap();
        let pos = enc.positions;
        let (m, t) = (slice(&blob, pos.manifest), slice(&blob, pos.tarsplit));
        let n = blob.len() as u64;
        // Newer producers write no annotation: the TOC's digest is enough.
        let mut p = pos;
        p.tarsplit_digest = None;
        Index::parse("t", &p, n, m, t).unwrap();
        // The two disagree: refused.
        p.tarsplit_digest = Some(Digest::of(b"other"));
        let e = Index::parse("t", &p, n, m, t).unwrap_err().to_string();
        assert!(e.contains("the annotation"), "{e}");
        // A TOC version this build does not know: "unsupported" (the pull fetches the
        // blob whole).
        let mut toc: Toc =
            serde_json::from_slice(&decompress("t", "m", m, pos.manifest.uncompressed).unwrap())
                .unwrap();
        toc.version = 2;
        let json = serde_json::to_vec(&toc).unwrap();
        let c = zstd::bulk::compress(&json, 3).unwrap();
        let mut p = pos;
        p.manifest_digest = Digest::of(&c);
        p.manifest.uncompressed = json.len() as u64;
        let e = Index::parse("t", &p, n, &c, t).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported, "{e}");
    }
}
