//! A reproducible tar writer, and a pipe that carries a tar stream from a writer thread
//! to a reader (the store's layer import) with the writer's failure at the end.
//!
//! Format: POSIX.1-2001 (ustar headers, PAX extended headers only where ustar cannot
//! hold a value: long paths and link targets, big sizes or ids, and every xattr as
//! `SCHILY.xattr.NAME`). Fixed fields, so equal trees give equal bytes: user and group
//! names empty, mtime in whole seconds, no atime/ctime records, PAX headers named
//! `PaxHeaders/NAME` with mode 0644, owner 0 and mtime 0.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry (its path).
    HardLink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One tar entry (the data of a regular file is passed separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Relative path, without a leading `/` or `./`, without a trailing `/`.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch (negative values are written as 0).
    pub mtime: i64,
    /// Data bytes of a regular file; 0 otherwise.
    pub size: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// An OCI marker file (`.wh.NAME` or `.wh..wh..opq`): empty, fixed metadata.
    pub(crate) fn marker(path: Vec<u8>) -> Entry {
        Entry {
            path,
            kind: Kind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            xattrs: Vec::new(),
        }
    }
}

const BLOCK: usize = 512;
/// Largest value of an 11-digit octal field.
const MAX_OCTAL_11: u64 = 0o77_777_777_777;
/// Largest value of a 7-digit octal field.
const MAX_OCTAL_7: u64 = 0o7_777_777;

/// Writes entries to a stream; `finish` writes the end-of-archive blocks.
pub(crate) struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // "LEN KEY=VALUE\n", where LEN counts itself.
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn put_bytes(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        TarWriter {
            out,
            buf: vec![0u8; 1 << 20],
        }
    }

    fn header(
        &mut self,
        name: &[u8],
        ty: tar::EntryType,
        e: &Entry,
        size: u64,
    ) -> io::Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        {
            let u = h
                .as_ustar_mut()
                .ok_or_else(|| io::Error::other("ustar header"))?;
            put_bytes(&mut u.name, name);
        }
        h.set_entry_type(ty);
        h.set_mode(e.mode & 0o7777);
        h.set_uid(e.uid.min(MAX_OCTAL_7));
        h.set_gid(e.gid.min(MAX_OCTAL_7));
        h.set_mtime((e.mtime.max(0) as u64).min(MAX_OCTAL_11));
        h.set_size(size.min(MAX_OCTAL_11));
        Ok(h)
    }

    /// Append one entry; `data` must give exactly `e.size` bytes for a regular file.
    pub(crate) fn append(&mut self, e: &Entry, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut path = e.path.clone();
        if e.kind == Kind::Dir {
            path.push(b'/');
        }
        let (ty, size, link): (tar::EntryType, u64, Option<&[u8]>) = match &e.kind {
            Kind::Dir => (tar::EntryType::Directory, 0, None),
            Kind::File => (tar::EntryType::Regular, e.size, None),
            Kind::Symlink(t) => (tar::EntryType::Symlink, 0, Some(t)),
            Kind::HardLink(t) => (tar::EntryType::Link, 0, Some(t)),
            Kind::Char(..) => (tar::EntryType::Char, 0, None),
            Kind::Block(..) => (tar::EntryType::Block, 0, None),
            Kind::Fifo => (tar::EntryType::Fifo, 0, None),
        };
        // PAX records, in a fixed order.
        let mut pax = Vec::new();
        if path.len() > 100 {
            pax_record(&mut pax, b"path", &path);
        }
        if let Some(l) = link
            && l.len() > 100
        {
            pax_record(&mut pax, b"linkpath", l);
        }
        if size > MAX_OCTAL_11 {
            pax_record(&mut pax, b"size", size.to_string().as_bytes());
        }
        if e.uid > MAX_OCTAL_7 {
            pax_record(&mut pax, b"uid", e.uid.to_string().as_bytes());
        }
        if e.gid > MAX_OCTAL_7 {
            pax_record(&mut pax, b"gid", e.gid.to_string().as_bytes());
        }
        if e.mtime as u64 > MAX_OCTAL_11 && e.mtime > 0 {
            pax_record(&mut pax, b"mtime", e.mtime.to_string().as_bytes());
        }
        for (k, v) in &e.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            let base = path
                .split(|c| *c == b'/')
                .rfind(|c| !c.is_empty())
                .unwrap_or(b"entry");
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(&base[..base.len().min(100 - name.len())]);
            let pe = Entry {
                path: name.clone(),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: pax.len() as u64,
                xattrs: Vec::new(),
            };
            let mut h = self.header(&name, tar::EntryType::XHeader, &pe, pax.len() as u64)?;
            h.set_cksum();
            self.out.write_all(h.as_bytes())?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        let mut h = self.header(&path, ty, e, size)?;
        if let Some(l) = link {
            let u = h
                .as_ustar_mut()
                .ok_or_else(|| io::Error::other("ustar header"))?;
            put_bytes(&mut u.linkname, l);
        }
        if let Kind::Char(ma, mi) | Kind::Block(ma, mi) = e.kind {
            h.set_device_major(ma)?;
            h.set_device_minor(mi)?;
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        if size > 0 {
            let data = data.ok_or_else(|| io::Error::other("no data for a regular file"))?;
            let mut left = size;
            while left > 0 {
                let want = (left as usize).min(self.buf.len());
                let n = match data.read(&mut self.buf[..want]) {
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(err),
                };
                if n == 0 {
                    return Err(io::Error::other(format!(
                        "{} shrank while it was being read",
                        String::from_utf8_lossy(&e.path)
                    )));
                }
                self.out.write_all(&self.buf[..n])?;
                left -= n as u64;
            }
            self.pad(size)?;
        }
        Ok(())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Write the two zero blocks that end an archive; returns the stream.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

// ---------------------------------------------------------------------------------------
// A pipe between threads that carries the writer's verdict.

enum Msg {
    Data(Vec<u8>),
    End(crate::error::Result<()>),
}

/// The writing half: buffered chunks; `close` sends the verdict.
pub(crate) struct PipeWriter {
    tx: SyncSender<Msg>,
    buf: Vec<u8>,
}

/// The reading half: EOF only after the writer said it succeeded; its error otherwise.
pub(crate) struct PipeReader {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

const CHUNK: usize = 256 * 1024;

/// A pipe holding at most a few MiB in flight.
pub(crate) fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(16);
    (
        PipeWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        },
    )
}

/// The writer's error when the reading side went away: cancelled, for the reader has
/// its own error to tell.
fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        crate::error::Error::cancelled("the reader stopped"),
    )
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.tx.send(Msg::Data(chunk)).map_err(|_| closed())?;
        }
        Ok(())
    }
}

impl PipeWriter {
    /// Send what is buffered and the verdict (an error makes the reader fail).
    pub(crate) fn close(mut self, res: crate::error::Result<()>) {
        let res = match (res, self.flush()) {
            (Ok(()), Err(e)) => Err(crate::error::Error::from(e)),
            (r, _) => r,
        };
        let _ = self.tx.send(Msg::End(res));
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.cur.len() {
                let n = out.len().min(self.cur.len() - self.pos);
                out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(d)) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Ok(Msg::End(Ok(()))) => self.done = true,
                Ok(Msg::End(Err(e))) => return Err(io::Error::other(e)),
                Err(_) => {
                    return Err(io::Error::other(crate::error::Error::cancelled(
                        "the tar writer stopped",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind, size: u64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            size,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn pax_lengths_count_themselves() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"x");
        assert_eq!(v, b"9 path=x\n");
        let mut v = Vec::new();
        let long = vec![b'a'; 95];
        pax_record(&mut v, b"path", &long);
        let s = String::from_utf8(v.clone()).unwrap();
        let (len, _) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), v.len());
    }

    #[test]
    fn written_tar_reads_back() {
        let mut w = TarWriter::new(Vec::new());
        let long = format!("{}/file", "d".repeat(150));
        w.append(&entry("d", Kind::Dir, 0), None).unwrap();
        let mut data: &[u8] = b"hello";
        let mut f = entry(&long, Kind::File, 5);
        f.xattrs = vec![(b"user.k".to_vec(), b"v\0bin".to_vec())];
        w.append(&f, Some(&mut data)).unwrap();
        w.append(
            &entry("d/l", Kind::HardLink(long.as_bytes().to_vec()), 0),
            None,
        )
        .unwrap();
        w.append(&entry("d/s", Kind::Symlink(b"../x".to_vec()), 0), None)
            .unwrap();
        w.append(&entry("d/c", Kind::Char(1, 3), 0), None).unwrap();
        let bytes = w.finish().unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            if p == long {
                let x: Vec<_> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| x.unwrap().key().unwrap().to_string())
                    .collect();
                assert!(x.contains(&"SCHILY.xattr.user.k".to_string()));
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert_eq!(s, "hello");
            }
            seen.push((p, e.header().entry_type()));
        }
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0].0, "d/");
        assert_eq!(seen[2].1, tar::EntryType::Link);
        // Same input, same bytes.
        let mut w2 = TarWriter::new(Vec::new());
        w2.append(&entry("d", Kind::Dir, 0), None).unwrap();
        let b2 = w2.finish().unwrap();
        let mut w3 = TarWriter::new(Vec::new());
        w3.append(&entry("d", Kind::Dir, 0), None).unwrap();
        assert_eq!(b2, w3.finish().unwrap());
    }

    #[test]
    fn shrinking_file_is_an_error() {
        let mut w = TarWriter::new(Vec::new());
        let mut data: &[u8] = b"abc";
        let err = w
            .append(&entry("f", Kind::File, 10), Some(&mut data))
            .unwrap_err();
        assert!(err.to_string().contains("shrank"));
    }

    #[test]
    fn a_stopped_reader_cancels_the_writer() {
        let (mut w, r) = pipe();
        drop(r);
        let err = w.write_all(&vec![0u8; 2 * CHUNK]).unwrap_err();
        let err = crate::error::Error::io("/a/file", err);
        assert_eq!(err.kind(), crate::error::ErrorKind::Cancelled);
        assert_eq!(err.to_string(), "/a/file: the reader stopped");
    }

    #[test]
    fn pipe_carries_errors() {
        let (mut w, mut r) = pipe();
        std::thread::spawn(move || {
            w.write_all(b"abc").unwrap();
            w.close(Err(crate::error::Error::new("boom")));
        });
        let mut s = Vec::new();
        let err = r.read_to_end(&mut s).unwrap_err();
        assert!(err.to_string().contains("boom"));
        let (mut w, mut r) = pipe();
        std::thread::spawn(move || {
            w.write_all(b"abc").unwrap();
            w.close(Ok(()));
        });
        let mut s = Vec::new();
        r.read_to_end(&mut s).unwrap();
        assert_eq!(s, b"abc");
    }
}
