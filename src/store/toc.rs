//! What both seekable layer formats (zstd:chunked, eStargz) are built from: the CRFS
//! table-of-contents entry, and one walk over a tar that reports each entry's metadata,
//! each regular file's content, and every other byte of the tar, in order.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::digest::{Digest, Hasher};

/// One entry of a TOC (the fields containers/storage and stargz write and read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TocEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(rename = "linkName", default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default)]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u64,
    #[serde(rename = "userName", default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(
        rename = "groupName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub group_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modtime: String,
    #[serde(rename = "devMajor", default, skip_serializing_if = "is_zero")]
    pub dev_major: u64,
    #[serde(rename = "devMinor", default, skip_serializing_if = "is_zero")]
    pub dev_minor: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// zstd:chunked: the end of the file's frames.
    #[serde(rename = "endOffset", default, skip_serializing_if = "is_zero")]
    pub end_offset: u64,
    /// eStargz: where a chunk starts in the file, its size, its digest.
    #[serde(rename = "chunkOffset", default, skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    #[serde(rename = "chunkSize", default, skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    #[serde(
        rename = "chunkDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_digest: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A TOC: version 1 and its entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Toc {
    pub version: u32,
    pub entries: Vec<TocEntry>,
    /// zstd:chunked: the compressed tar-split's digest.
    #[serde(
        rename = "tarSplitDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub tar_split_digest: String,
}

/// What a walk over a tar reports, in the tar's order.
pub(crate) trait Visitor {
    /// Bytes that are no regular file's content: headers, extension records, padding, the
    /// data a link or device entry may carry.
    fn bytes(&mut self, b: &[u8]) -> Result<()>;
    /// A non-empty regular file's content: exactly `e.size` bytes to read from
    /// `content`; the visitor records what it needs in `e` (digest, offsets).
    fn file(&mut self, e: &mut TocEntry, content: &mut dyn Read) -> Result<()>;
    /// An entry, after its content.
    fn entry(&mut self, e: TocEntry) -> Result<()>;
    /// Whether the entry `e` (its header just read) is written at all: a dropped entry's
    /// bytes, content included, reach no other callback.
    fn keep(&mut self, _e: &TocEntry) -> bool {
        true
    }
    /// The end-of-archive blocks and whatever follows them.
    fn end(&mut self, b: &[u8]) -> Result<()>;
}

/// Reads the tar, hashing it.
struct In<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> In<R> {
    /// Up to `n` bytes (fewer only at the end of the stream).
    fn next_bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(n);
        (&mut self.inner).take(n as u64).read_to_end(&mut buf)?;
        self.hasher.update(&buf);
        Ok(buf)
    }
}

impl<R: Read> Read for In<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Metadata carried by extension headers to the entry that follows them.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    pax: BTreeMap<String, Vec<u8>>,
}

/// Walk `tar`, reporting to `v`; returns the tar's sha256. `what` names the layer and
/// `format` the form being written, in errors.
pub(crate) fn walk(
    what: &str,
    format: &str,
    tar: impl Read,
    v: &mut impl Visitor,
) -> Result<Digest> {
    let mut r = In {
        inner: io::BufReader::with_capacity(1 << 20, tar),
        hasher: Hasher::new(),
    };
    let read_err = |e: io::Error| Error::io(format!("{what}: reading the tar"), e);
    let bad = |why: &str| Error::corrupt(format!("{what}: tar entry: {why}"));
    let mut pending = Pending::default();
    // An entry's extension headers and header, held until the visitor keeps the entry.
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let block = r.next_bytes(512).map_err(read_err)?;
        if block.len() < 512 || block.iter().all(|&b| b == 0) {
            for b in held.drain(..) {
                v.bytes(&b)?;
            }
            let mut rest = block;
            r.read_to_end(&mut rest).map_err(read_err)?;
            v.end(&rest)?;
            break;
        }
        let h = tar::Header::from_byte_slice(&block);
        let size = h.entry_size().map_err(|_| bad("unreadable size"))?;
        let padded = size.div_ceil(512) * 512;
        let kind = h.entry_type();
        use tar::EntryType as T;
        match kind {
            T::XHeader | T::XGlobalHeader | T::GNULongName | T::GNULongLink => {
                if size > 1 << 24 {
                    return Err(bad("extension header over 16 MiB"));
                }
                let data = r.next_bytes(padded as usize).map_err(read_err)?;
                if (data.len() as u64) < padded {
                    return Err(bad("truncated extension header"));
                }
                let body = &data[..size as usize];
                match kind {
                    T::XHeader => {
                        for ext in tar::PaxExtensions::new(body) {
                            let ext = ext.map_err(|_| bad("malformed PAX header"))?;
                            let key = ext.key().map_err(|_| bad("malformed PAX key"))?;
                            pending
                                .pax
                                .insert(key.to_string(), ext.value_bytes().to_vec());
                        }
                    }
                    T::GNULongName => pending.path = Some(trim_nul(body)),
                    T::GNULongLink => pending.link = Some(trim_nul(body)),
                    _ => {}
                }
                held.push(block);
                held.push(data);
                continue;
            }
            T::GNUSparse => {
                return Err(Error::unsupported(format!(
                    "{what}: a sparse tar entry cannot be written as {format}"
                )));
            }
            _ => {}
        }
        let p = std::mem::take(&mut pending);
        let mut e = entry_of(h, p, format).map_err(|why| bad(&why))?;
        let size = e.size;
        let padded = size.div_ceil(512) * 512;
        held.push(block);
        if !v.keep(&e) {
            held.clear();
            let n = io::copy(&mut Read::take(&mut r, padded), &mut io::sink()).map_err(read_err)?;
            if n < padded {
                return Err(bad("truncated file content"));
            }
            continue;
        }
        for b in held.drain(..) {
            v.bytes(&b)?;
        }
        if e.kind == "reg" && size > 0 {
            let mut content = Read::take(&mut r, size);
            v.file(&mut e, &mut content)?;
            if content.limit() > 0 {
                return Err(bad("truncated file content"));
            }
            let pad = r.next_bytes((padded - size) as usize).map_err(read_err)?;
            v.bytes(&pad)?;
        } else {
            // Any data a link or device carries is no file's content.
            e.size = 0;
            let data = r.next_bytes(padded as usize).map_err(read_err)?;
            v.bytes(&data)?;
        }
        v.entry(e)?;
    }
    Ok(r.hasher.finish())
}

/// The TOC entry of the header `h` and the extension records before it.
fn entry_of(h: &tar::Header, p: Pending, format: &str) -> std::result::Result<TocEntry, String> {
    use tar::EntryType as T;
    let path = p
        .pax
        .get("path")
        .cloned()
        .or(p.path)
        .unwrap_or_else(|| h.path_bytes().into_owned());
    let name = String::from_utf8(path)
        .map_err(|_| format!("a path that is not UTF-8 cannot be named in {format}"))?;
    let link = p
        .pax
        .get("linkpath")
        .cloned()
        .or(p.link)
        .or_else(|| h.link_name_bytes().map(|l| l.into_owned()))
        .unwrap_or_default();
    let num = |key: &str, dflt: u64| -> u64 {
        p.pax
            .get(key)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.split('.').next().and_then(|i| i.parse().ok()))
            .unwrap_or(dflt)
    };
    // A PAX record, else the header's field.
    let text = |key: &str, dflt: Option<&str>| -> String {
        p.pax
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .or_else(|| dflt.map(str::to_string))
            .unwrap_or_default()
    };
    let kind = match h.entry_type() {
        T::Link => "hardlink",
        T::Symlink => "symlink",
        T::Char => "char",
        T::Block => "block",
        T::Directory => "dir",
        T::Fifo => "fifo",
        _ => "reg",
    };
    let mtime = num("mtime", h.mtime().unwrap_or(0));
    Ok(TocEntry {
        kind: kind.into(),
        name,
        link_name: String::from_utf8_lossy(&link).into_owned(),
        mode: h.mode().unwrap_or(0) as i64,
        size: num("size", h.entry_size().unwrap_or(0)),
        uid: num("uid", h.uid().unwrap_or(0)),
        gid: num("gid", h.gid().unwrap_or(0)),
        user_name: text("uname", h.username().ok().flatten()),
        group_name: text("gname", h.groupname().ok().flatten()),
        modtime: jiff::Timestamp::from_second(mtime as i64)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        dev_major: h.device_major().ok().flatten().unwrap_or(0) as u64,
        dev_minor: h.device_minor().ok().flatten().unwrap_or(0) as u64,
        xattrs: p
            .pax
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("SCHILY.xattr.")
                    .map(|x| (x.to_string(), B64.encode(v)))
            })
            .collect(),
        ..TocEntry::default()
    })
}

fn trim_nul(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

/// A writer that counts and hashes what goes through it (a blob being written).
pub(crate) struct Out<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Out<W> {
    pub(crate) fn new(inner: W) -> Self {
        Out {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Bytes written so far.
    pub(crate) fn pos(&self) -> u64 {
        self.hasher.len()
    }

    /// Flush, and the digest of everything written.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        self.inner.flush()?;
        let len = self.hasher.len();
        Ok((self.hasher.finish(), len))
    }
}

impl<W: Write> Write for Out<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copy exactly what `r` yields into `w`, hashing it; the digest and length.
pub(crate) fn copy_hashed(
    r: &mut dyn Read,
    w: &mut dyn Write,
    on: &mut dyn FnMut(&[u8]),
) -> io::Result<(Digest, u64)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        on(&buf[..n]);
        w.write_all(&buf[..n])?;
    }
    let len = h.len();
    Ok((h.finish(), len))
}
