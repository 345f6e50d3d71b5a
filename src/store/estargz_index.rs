//! Reading an eStargz blob's layout, for partial and lazy pulls: the footer names the
//! TOC's gzip member; the TOC (checked against the manifest's `toc.digest` annotation)
//! names each regular file's chunks and where their members start.
//!
//! A chunk's member can be skipped (its bytes taken from the store, or fetched later)
//! only where the member's end is known: the TOC's `endOffset` (layerfs's writer), or
//! the next chunk's offset when another chunk of the same file follows. stargz's Go
//! writer keeps a file's last member open for the tar headers after it, so that member
//! holds the next entries' headers and must be fetched. Nothing here is trusted for
//! content: the layer's tar is rebuilt and must hash to its diff-id.

use std::io::Read;

use flate2::read::GzDecoder;

use crate::error::{Error, Result};
use crate::store::digest::Digest;
use crate::store::estargz::TOC_NAME;
use crate::store::toc::Toc;

/// The footer's length in eStargz (the gzip extra field has an `SG` subfield) and in
/// the older stargz form (the extra field is the bare offset).
const FOOTER: usize = 51;
const LEGACY_FOOTER: usize = 47;
/// No TOC is larger than this (uncompressed).
const TOC_MAX: u64 = 64 << 20;
/// deflate's best ratio is about 1032:1: no chunk decompresses to more than this
/// many times its compressed bytes (plus a little for headers).
const MAX_RATIO: u64 = 1032;

/// The TOC's offset and the footer's length, from the blob's last bytes (`None`: no
/// eStargz footer).
pub(crate) fn footer(tail: &[u8]) -> Option<(u64, usize)> {
    let hex = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    };
    let gzip_extra = |f: &[u8]| f[..4] == [0x1f, 0x8b, 0x08, 0x04];
    if tail.len() >= FOOTER {
        let f = &tail[tail.len() - FOOTER..];
        if gzip_extra(f)
            && f[10..12] == 26u16.to_le_bytes()
            && &f[12..14] == b"SG"
            && &f[32..38] == b"STARGZ"
            && let Some(off) = hex(&f[16..32])
        {
            return Some((off, FOOTER));
        }
    }
    if tail.len() >= LEGACY_FOOTER {
        let f = &tail[tail.len() - LEGACY_FOOTER..];
        if gzip_extra(f)
            && f[10..12] == 22u16.to_le_bytes()
            && &f[28..34] == b"STARGZ"
            && let Some(off) = hex(&f[12..28])
        {
            return Some((off, LEGACY_FOOTER));
        }
    }
    None
}

/// The TOC from its gzip member (a tar whose first entry is `stargz.index.json`),
/// checked against the digest the manifest names.
pub(crate) fn read_toc(what: &str, member: &[u8], want: &Digest) -> Result<Toc> {
    let bad = |why: String| Error::corrupt(format!("{what}: eStargz TOC: {why}"));
    let mut ar = tar::Archive::new(GzDecoder::new(member));
    let mut entries = ar.entries().map_err(|e| bad(e.to_string()))?;
    let mut e = entries
        .next()
        .ok_or_else(|| bad("its member holds no tar entry".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let name = e.path_bytes().into_owned();
    if name.strip_prefix(b"./").unwrap_or(&name) != TOC_NAME.as_bytes() {
        return Err(bad(format!(
            "its member starts with {:?}, not {TOC_NAME}",
            String::from_utf8_lossy(&name)
        )));
    }
    if e.size() > TOC_MAX {
        return Err(bad(format!("{} bytes", e.size())));
    }
    let mut json = Vec::with_capacity(e.size() as usize);
    e.read_to_end(&mut json).map_err(|e| bad(e.to_string()))?;
    parse_toc(what, &json, want)
}

/// The TOC of stargz's zstd form: a zstd frame of its own holding the JSON.
pub(crate) fn read_zstd_toc(what: &str, frame: &[u8], want: &Digest) -> Result<Toc> {
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(frame)
        .and_then(|d| d.take(TOC_MAX + 1).read_to_end(&mut json))
        .map_err(|e| Error::corrupt(format!("{what}: stargz TOC frame: {e}")))?;
    if json.len() as u64 > TOC_MAX {
        return Err(Error::corrupt(format!(
            "{what}: stargz TOC over {TOC_MAX} bytes"
        )));
    }
    parse_toc(what, &json, want)
}

/// A TOC's JSON, checked against the digest the manifest names.
fn parse_toc(what: &str, json: &[u8], want: &Digest) -> Result<Toc> {
    let bad = |why: String| Error::corrupt(format!("{what}: eStargz TOC: {why}"));
    let got = Digest::of(json);
    if got != *want {
        return Err(bad(format!(
            "it hashes to {got}, the manifest's annotation says {want}"
        )));
    }
    let toc: Toc = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    if toc.version != 1 {
        return Err(Error::unsupported(format!(
            "{what}: eStargz TOC version {}",
            toc.version
        )));
    }
    Ok(toc)
}

/// One chunk of a file: its member's start, its end where known, and which bytes of
/// the file it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub offset: u64,
    /// Where the member ends, when only this chunk is in it (it can be skipped).
    pub end: Option<u64>,
    /// Where the next member named by the TOC starts (the member ends at or before).
    pub next: u64,
    /// The chunk's place in the file.
    pub at: u64,
    pub len: u64,
}

/// A non-empty regular file and its chunks, in blob order.
#[derive(Debug, Clone)]
pub(crate) struct File {
    pub name: String,
    pub digest: Digest,
    pub size: u64,
    pub chunks: Vec<Chunk>,
}

impl File {
    /// Every chunk can be skipped but perhaps the last.
    pub(crate) fn first_skippable(&self) -> bool {
        self.chunks[0].end.is_some()
    }

    /// The compressed bytes that hold the whole content (and perhaps headers after it).
    pub(crate) fn range(&self) -> (u64, u64) {
        let last = &self.chunks[self.chunks.len() - 1];
        (self.chunks[0].offset, last.end.unwrap_or(last.next))
    }
}

/// The blob's non-empty regular files, in blob order.
#[derive(Debug)]
pub(crate) struct Index {
    pub files: Vec<File>,
}

impl Index {
    /// The files of `toc`, checked: chunks in order, each inside the data before the
    /// TOC, members that do not overlap, sizes that add up and that their compressed
    /// bytes could hold. `what` names the layer in errors.
    pub(crate) fn parse(what: &str, toc: &Toc, toc_offset: u64) -> Result<Index> {
        let bad = |name: &str, why: String| {
            Error::corrupt(format!("{what}: eStargz TOC entry {name:?}: {why}"))
        };
        let mut files: Vec<File> = Vec::new();
        let mut open = false;
        for e in &toc.entries {
            match e.kind.as_str() {
                "reg" if e.size > 0 => {
                    let digest: Digest = e
                        .digest
                        .parse()
                        .map_err(|_| bad(&e.name, format!("digest {:?}", e.digest)))?;
                    let len = if e.chunk_size > 0 {
                        e.chunk_size
                    } else {
                        e.size
                    };
                    files.push(File {
                        name: e.name.clone(),
                        digest,
                        size: e.size,
                        chunks: vec![Chunk {
                            offset: e.offset,
                            end: (e.end_offset > 0).then_some(e.end_offset),
                            next: 0,
                            at: 0,
                            len,
                        }],
                    });
                    open = true;
                }
                "chunk" => {
                    let f = match files.last_mut() {
                        Some(f) if open && f.name == e.name => f,
                        _ => {
                            return Err(bad(&e.name, "a chunk of no file before it".into()));
                        }
                    };
                    let at: u64 = f.chunks.iter().map(|c| c.len).sum();
                    if e.chunk_offset != at {
                        return Err(bad(
                            &e.name,
                            format!("chunk at {}, expected at {at}", e.chunk_offset),
                        ));
                    }
                    let len = if e.chunk_size > 0 {
                        e.chunk_size
                    } else {
                        f.size.saturating_sub(at)
                    };
                    f.chunks.push(Chunk {
                        offset: e.offset,
                        end: (e.end_offset > 0).then_some(e.end_offset),
                        next: 0,
                        at,
                        len,
                    });
                }
                _ => open = false,
            }
        }
        // Members in blob order; each ends before the next one named starts.
        let mut prev = None::<(u64, String)>;
        let mut starts: Vec<u64> = Vec::new();
        for f in &files {
            for c in &f.chunks {
                if let Some((p, _)) = &prev
                    && c.offset <= *p
                {
                    return Err(bad(
                        &f.name,
                        format!("chunk at offset {} is not after offset {p}", c.offset),
                    ));
                }
                prev = Some((c.offset, f.name.clone()));
                starts.push(c.offset);
            }
        }
        if let Some((p, name)) = prev
            && p >= toc_offset
        {
            return Err(bad(
                &name,
                format!("offset {p} is not before the TOC at {toc_offset}"),
            ));
        }
        let mut i = 0;
        for f in &mut files {
            let n = f.chunks.len();
            for (k, c) in f.chunks.iter_mut().enumerate() {
                i += 1;
                c.next = starts.get(i).copied().unwrap_or(toc_offset);
                if let Some(end) = c.end
                    && (end <= c.offset || end > c.next)
                {
                    return Err(bad(
                        &f.name,
                        format!(
                            "member {}..{end} overlaps the next one at {}",
                            c.offset, c.next
                        ),
                    ));
                }
                if c.end.is_none() && k + 1 < n {
                    c.end = Some(c.next);
                }
                let room = (c.end.unwrap_or(c.next) - c.offset)
                    .saturating_mul(MAX_RATIO)
                    .saturating_add(1024);
                if c.len == 0 || c.len > room {
                    return Err(bad(
                        &f.name,
                        format!(
                            "a chunk of {} bytes in {} compressed bytes",
                            c.len,
                            c.end.unwrap_or(c.next) - c.offset
                        ),
                    ));
                }
            }
            let total: u64 = f.chunks.iter().map(|c| c.len).sum();
            if total != f.size {
                return Err(bad(
                    &f.name,
                    format!("chunks of {total} bytes for a file of {}", f.size),
                ));
            }
        }
        Ok(Index { files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::estargz::encode;

    fn sample_tar(big: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("a", b"small\n");
        let data: Vec<u8> = (0..big).map(|i| (i % 251) as u8).collect();
        add("big", &data);
        add("z", b"after\n");
        b.into_inner().unwrap()
    }

    fn index_of(blob: &[u8], want: &Digest) -> Index {
        let (off, flen) = footer(blob).expect("a footer");
        let toc = read_toc("t", &blob[off as usize..blob.len() - flen], want).unwrap();
        Index::parse("t", &toc, off).unwrap()
    }

    #[test]
    fn every_chunk_of_a_layerfs_blob_can_be_skipped() {
        let mut blob = Vec::new();
        let enc = encode("t", &sample_tar(9 << 20)[..], &mut blob).unwrap();
        let ix = index_of(&blob, &enc.toc_digest);
        let big = ix.files.iter().find(|f| f.name == "big").unwrap();
        assert_eq!(big.chunks.len(), 3);
        assert!(big.chunks.iter().all(|c| c.end.is_some()));
        // Each chunk's member holds exactly the chunk.
        for c in &big.chunks {
            let mut data = Vec::new();
            GzDecoder::new(&blob[c.offset as usize..c.end.unwrap() as usize])
                .read_to_end(&mut data)
                .unwrap();
            assert_eq!(data.len() as u64, c.len);
        }
        // The wrong annotation is refused.
        let (off, flen) = footer(&blob).unwrap();
        let err = read_toc(
            "t",
            &blob[off as usize..blob.len() - flen],
            &Digest::of(b"x"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("the manifest's annotation says"), "{err}");
    }

    #[test]
    fn without_end_offsets_only_chunks_another_follows_can_be_skipped() {
        let mut blob = Vec::new();
        let enc = encode("t", &sample_tar(9 << 20)[..], &mut blob).unwrap();
        let (off, flen) = footer(&blob).unwrap();
        let mut toc =
            read_toc("t", &blob[off as usize..blob.len() - flen], &enc.toc_digest).unwrap();
        for e in &mut toc.entries {
            e.end_offset = 0;
        }
        let ix = Index::parse("t", &toc, off).unwrap();
        let big = ix.files.iter().find(|f| f.name == "big").unwrap();
        let known: Vec<bool> = big.chunks.iter().map(|c| c.end.is_some()).collect();
        assert_eq!(known, [true, true, false]);
        let small = ix.files.iter().find(|f| f.name == "a").unwrap();
        assert!(!small.first_skippable());
    }

    #[test]
    fn tocs_that_lie_about_members_are_refused() {
        let mut blob = Vec::new();
        let enc = encode("t", &sample_tar(9 << 20)[..], &mut blob).unwrap();
        let (off, flen) = footer(&blob).unwrap();
        let toc = read_toc("t", &blob[off as usize..blob.len() - flen], &enc.toc_digest).unwrap();
        let lie = |f: &dyn Fn(&mut Toc)| {
            let mut t = toc.clone();
            f(&mut t);
            Index::parse("t", &t, off).unwrap_err().to_string()
        };
        let big =
            |t: &mut Toc| -> usize { t.entries.iter().position(|e| e.name == "big").unwrap() };
        let e = lie(&|t| {
            let i = big(t);
            t.entries[i + 1].offset = t.entries[i].offset;
        });
        assert!(e.contains("\"big\"") && e.contains("is not after"), "{e}");
        let e = lie(&|t| {
            let i = big(t);
            t.entries[i].end_offset = t.entries[i + 1].offset + 1;
        });
        assert!(e.contains("overlaps"), "{e}");
        let e = lie(&|t| {
            let i = big(t);
            t.entries[i].size = 1 << 50;
        });
        assert!(e.contains("compressed bytes"), "{e}");
        let e = lie(&|t| {
            let i = big(t);
            t.entries[i].size = 1;
        });
        assert!(e.contains("a chunk of 0 bytes"), "{e}");
        let e = lie(&|t| {
            let i = big(t);
            t.entries[i].chunk_size = 1 << 40;
        });
        assert!(e.contains("expected at"), "{e}");
        let e = lie(&|t| {
            let z = t.entries.iter_mut().find(|e| e.name == "z").unwrap();
            z.offset = off + 10;
        });
        assert!(e.contains("not before the TOC"), "{e}");
        let e = lie(&|t| {
            let i = big(t);
            t.entries[i + 1].name = "other".into();
        });
        assert!(e.contains("a chunk of no file"), "{e}");
    }
}
