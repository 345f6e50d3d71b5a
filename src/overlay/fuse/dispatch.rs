//! layerfs's own FUSE request handling for the io_uring transport: a request's bytes
//! in, the core called, the answer's bytes out. The same decisions as the fuser adapter
//! (`adapter.rs`), from the same options; no overlay rules live here either.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::passthrough::{Attach, PassthroughTable};
use super::request::FuseOptions;
use super::wire::{self, Args, InHeader};
use crate::overlay::fs::OverlayFs;
use crate::overlay::readdir::{DirEntryRef, DirPlusReply, DirReply};
use crate::overlay::types::{Attr, Ctx, Entry, SetAttr, XattrList};
use crate::sys::fuse_dev;
use crate::sys::{Errno, TimeSpec};

/// A passthrough backing file registered on the connection; closed when dropped.
pub struct DevBacking {
    dev: Arc<OwnedFd>,
    id: u32,
}

impl Drop for DevBacking {
    fn drop(&mut self) {
        if let Err(e) = fuse_dev::backing_close(self.dev.as_fd(), self.id) {
            log::debug!("closing backing file {}: {e}", self.id);
        }
    }
}

/// What a request gets back.
pub enum Answer {
    /// `out` holds the answer.
    Ok,
    /// `out` holds an OPEN or CREATE answer naming this backing file: keep it registered
    /// until the kernel has the answer (dropped before, its id could be closed and given
    /// to another file in between).
    Open(Arc<DevBacking>),
    /// An error (a positive errno).
    Err(i32),
    /// Nothing (FORGET, INTERRUPT).
    None,
}

impl From<Errno> for Answer {
    fn from(e: Errno) -> Self {
        Answer::Err(e.raw_os_error())
    }
}

fn done(r: Result<(), Errno>) -> Answer {
    match r {
        Ok(()) => Answer::Ok,
        Err(e) => e.into(),
    }
}

/// A malformed request: the kernel sent fewer bytes than its opcode has.
const BAD: Answer = Answer::Err(libc::EINVAL);

pub struct Dispatcher {
    fs: Arc<OverlayFs>,
    opts: FuseOptions,
    passthrough: PassthroughTable<DevBacking>,
    dev: Arc<OwnedFd>,
}

impl Dispatcher {
    pub fn new(fs: Arc<OverlayFs>, opts: FuseOptions, dev: Arc<OwnedFd>) -> Self {
        Dispatcher {
            fs,
            passthrough: PassthroughTable::new(opts.passthrough),
            opts,
            dev,
        }
    }

    pub fn options(&self) -> &FuseOptions {
        &self.opts
    }

    /// The kernel agreed to passthrough at INIT.
    pub fn enable_passthrough(&self) {
        self.passthrough.enable();
    }

    fn entry(&self, out: &mut Vec<u8>, e: &Entry) -> Answer {
        wire::entry(
            out,
            e.attr.ino,
            e.generation,
            self.opts.ttl_for(e.immutable),
            &e.attr,
        );
        Answer::Ok
    }

    fn entry_result(&self, out: &mut Vec<u8>, r: Result<Entry, Errno>) -> Answer {
        match r {
            Ok(e) => self.entry(out, &e),
            Err(e) => e.into(),
        }
    }

    fn attr_ttl(&self, ino: u64, default: Duration) -> Duration {
        if self.fs.has_successor(ino) {
            Duration::ZERO
        } else {
            default
        }
    }

    /// Serve one request. `arg`: the opcode's fixed argument; `payload`: what follows.
    pub fn handle(&self, h: &InHeader, arg: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Answer {
        out.clear();
        let ctx = Ctx {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
        };
        let ino = h.nodeid;
        let mut a = Args::new(arg);
        let mut p = Args::new(payload);
        match h.opcode {
            wire::LOOKUP => {
                let Some(name) = p.name() else { return BAD };
                match self.fs.lookup(ino, name) {
                    Ok(e) => self.entry(out, &e),
                    Err(Errno::NOENT) => {
                        let attr = Attr {
                            mode: libc::S_IFREG,
                            blksize: 4096,
                            ..Attr::default()
                        };
                        let ttl = self.opts.negative_ttl(self.fs.is_writable());
                        wire::entry(out, 0, 0, ttl, &attr);
                        Answer::Ok
                    }
                    Err(e) => e.into(),
                }
            }
            wire::FORGET => {
                self.fs.forget(ino, a.u64().unwrap_or(0));
                Answer::None
            }
            wire::BATCH_FORGET => {
                let n = a.u32().unwrap_or(0);
                for _ in 0..n {
                    let (Some(node), Some(count)) = (p.u64(), p.u64()) else {
                        break;
                    };
                    self.fs.forget(node, count);
                }
                Answer::None
            }
            wire::INTERRUPT => Answer::None,
            wire::GETATTR => {
                let (Some(flags), Some(_), Some(fh)) = (a.u32(), a.u32(), a.u64()) else {
                    return BAD;
                };
                let fh = (flags & wire::GETATTR_FH != 0).then_some(fh);
                match self.fs.getattr(ino, fh) {
                    Ok(at) => {
                        let ttl = self.attr_ttl(ino, self.opts.ttl_for(!self.fs.is_writable()));
                        wire::attr_out(out, ttl, &at);
                        Answer::Ok
                    }
                    Err(e) => e.into(),
                }
            }
            wire::SETATTR => self.setattr(ctx, ino, arg, out),
            wire::READLINK => match self.fs.readlink(ino) {
                Ok(t) => {
                    out.extend_from_slice(&t);
                    Answer::Ok
                }
                Err(e) => e.into(),
            },
            wire::SYMLINK => {
                let (Some(name), Some(target)) = (p.name(), p.name()) else {
                    return BAD;
                };
                self.entry_result(out, self.fs.symlink(ctx, ino, name, target))
            }
            wire::MKNOD => {
                let (Some(mode), Some(rdev)) = (a.u32(), a.u32()) else {
                    return BAD;
                };
                let Some(name) = p.name() else { return BAD };
                self.entry_result(out, self.fs.mknod(ctx, ino, name, mode, rdev as u64))
            }
            wire::MKDIR => {
                let Some(mode) = a.u32() else { return BAD };
                let Some(name) = p.name() else { return BAD };
                self.entry_result(out, self.fs.mkdir(ctx, ino, name, mode))
            }
            wire::UNLINK => match p.name() {
                Some(name) => done(self.fs.unlink(ino, name)),
                None => BAD,
            },
            wire::RMDIR => match p.name() {
                Some(name) => done(self.fs.rmdir(ino, name)),
                None => BAD,
            },
            wire::RENAME | wire::RENAME2 => {
                let Some(newdir) = a.u64() else { return BAD };
                let flags = if h.opcode == wire::RENAME2 {
                    a.u32().unwrap_or(0)
                } else {
                    0
                };
                let (Some(name), Some(newname)) = (p.name(), p.name()) else {
                    return BAD;
                };
                done(self.fs.rename(ino, name, newdir, newname, flags))
            }
            wire::LINK => {
                let Some(old) = a.u64() else { return BAD };
                let Some(name) = p.name() else { return BAD };
                self.entry_result(out, self.fs.link(old, ino, name))
            }
            wire::OPEN => {
                let Some(flags) = a.u32() else { return BAD };
                self.open(ctx, ino, flags as i32, out)
            }
            wire::READ => {
                let (Some(fh), Some(offset), Some(size)) = (a.u64(), a.u64(), a.u32()) else {
                    return BAD;
                };
                self.fs.read_with(fh, offset, size as usize, |r| match r {
                    Ok(d) => {
                        out.extend_from_slice(d);
                        Answer::Ok
                    }
                    Err(e) => e.into(),
                })
            }
            wire::WRITE => {
                let (Some(fh), Some(offset), Some(size), Some(flags)) =
                    (a.u64(), a.u64(), a.u32(), a.u32())
                else {
                    return BAD;
                };
                let Some(data) = p.bytes(size as usize) else {
                    return BAD;
                };
                // As in the adapter: only writes that bypass the page cache come here,
                // and the kernel cleared no set-id bit for them.
                let kill = flags & wire::WRITE_KILL_SUIDGID != 0;
                match self.fs.write(ctx, fh, offset, data, kill) {
                    Ok(n) => {
                        wire::write_out(out, n as u32);
                        Answer::Ok
                    }
                    Err(e) => e.into(),
                }
            }
            wire::STATFS => match self.fs.statfs() {
                Ok(s) => {
                    wire::statfs_out(out, &s);
                    Answer::Ok
                }
                Err(e) => e.into(),
            },
            wire::RELEASE => {
                let Some(fh) = a.u64() else { return BAD };
                self.passthrough.detach(fh);
                self.fs.release(fh);
                Answer::Ok
            }
            wire::FSYNC => {
                let (Some(fh), Some(flags)) = (a.u64(), a.u32()) else {
                    return BAD;
                };
                done(self.fs.fsync(fh, flags & wire::FSYNC_FDATASYNC != 0))
            }
            wire::SETXATTR => {
                let (Some(size), Some(flags)) = (a.u32(), a.u32()) else {
                    return BAD;
                };
                let (Some(name), Some(value)) = (p.name(), p.bytes(size as usize)) else {
                    return BAD;
                };
                done(self.fs.setxattr(ino, name, value, flags as i32))
            }
            wire::GETXATTR => {
                let Some(size) = a.u32() else { return BAD };
                let Some(name) = p.name() else { return BAD };
                self.getxattr(ino, name, size, out)
            }
            wire::LISTXATTR => {
                let Some(size) = a.u32() else { return BAD };
                match self.fs.listxattr(ino, size as usize) {
                    Ok(XattrList::Size(n)) => {
                        wire::xattr_size(out, n as u32);
                        Answer::Ok
                    }
                    Ok(XattrList::Names(list)) => {
                        out.extend_from_slice(&list);
                        Answer::Ok
                    }
                    Err(e) => e.into(),
                }
            }
            wire::REMOVEXATTR => match p.name() {
                Some(name) => done(self.fs.removexattr(ino, name)),
                None => BAD,
            },
            wire::FLUSH => match a.u64() {
                Some(fh) => done(self.fs.flush(fh)),
                None => BAD,
            },
            // Zero-message opendir, as in the adapter (see there).
            wire::OPENDIR => match self.fs.opendir(ino) {
                Ok(()) => Answer::Err(libc::ENOSYS),
                Err(e) => e.into(),
            },
            wire::READDIR | wire::READDIRPLUS => {
                let (Some(_fh), Some(offset), Some(size)) = (a.u64(), a.u64(), a.u32()) else {
                    return BAD;
                };
                let max = size as usize;
                let r = if h.opcode == wire::READDIR {
                    self.fs
                        .readdir_into(ino, offset, &mut PlainOut { out, max })
                } else {
                    let mut o = PlusOut {
                        out,
                        max,
                        opts: &self.opts,
                    };
                    self.fs.readdirplus_into(ino, offset, &mut o)
                };
                done(r)
            }
            wire::RELEASEDIR | wire::DESTROY => Answer::Ok,
            wire::FSYNCDIR => done(self.fs.fsyncdir(ino)),
            wire::ACCESS => match a.u32() {
                Some(mask) => done(self.fs.access(ctx, ino, mask as i32)),
                None => BAD,
            },
            wire::CREATE => {
                let (Some(flags), Some(mode)) = (a.u32(), a.u32()) else {
                    return BAD;
                };
                let Some(name) = p.name() else { return BAD };
                self.create(ctx, ino, name, mode, flags as i32, out)
            }
            wire::FALLOCATE => {
                let (Some(fh), Some(offset), Some(len), Some(mode)) =
                    (a.u64(), a.u64(), a.u64(), a.u32())
                else {
                    return BAD;
                };
                done(self.fs.fallocate(fh, offset, len, mode as i32))
            }
            wire::LSEEK => {
                let (Some(fh), Some(offset), Some(whence)) = (a.u64(), a.u64(), a.u32()) else {
                    return BAD;
                };
                match self.fs.lseek(fh, offset as i64, whence as i32) {
                    Ok(o) => {
                        wire::lseek_out(out, o);
                        Answer::Ok
                    }
                    Err(e) => e.into(),
                }
            }
            wire::COPY_FILE_RANGE => {
                let (Some(fh_in), Some(off_in), Some(_), Some(fh_out), Some(off_out), Some(len)) =
                    (a.u64(), a.u64(), a.u64(), a.u64(), a.u64(), a.u64())
                else {
                    return BAD;
                };
                match self.fs.copy_file_range(fh_in, off_in, fh_out, off_out, len) {
                    Ok(n) => {
                        wire::write_out(out, n as u32);
                        Answer::Ok
                    }
                    Err(e) => e.into(),
                }
            }
            _ => Answer::Err(libc::ENOSYS),
        }
    }

    fn setattr(&self, ctx: Ctx, ino: u64, arg: &[u8], out: &mut Vec<u8>) -> Answer {
        let mut a = Args::new(arg);
        let f: Option<[u64; 7]> = (|| {
            let valid = a.u32()? as u64;
            a.u32()?;
            Some([
                valid,
                a.u64()?,
                a.u64()?,
                a.u64()?,
                a.u64()?,
                a.u64()?,
                a.u64()?,
            ])
        })();
        let Some([valid, fh, size, _lock_owner, atime, mtime, _ctime]) = f else {
            return BAD;
        };
        let g: Option<[u32; 8]> = (|| {
            Some([
                a.u32()?,
                a.u32()?,
                a.u32()?,
                a.u32()?,
                a.u32()?,
                a.u32()?,
                a.u32()?,
                a.u32()?,
            ])
        })();
        let Some([atimensec, mtimensec, _ctimensec, mode, _, uid, gid, _]) = g else {
            return BAD;
        };
        let valid = valid as u32;
        let on = |bit: u32| valid & bit != 0;
        let time = |set: u32, now: u32, sec: u64, nsec: u32| {
            if on(now) {
                Some(TimeSpec::Now)
            } else if on(set) {
                Some(TimeSpec::Set(sec as i64, nsec as i64))
            } else {
                None
            }
        };
        let set = SetAttr {
            mode: on(wire::FATTR_MODE).then_some(mode),
            uid: on(wire::FATTR_UID).then_some(uid),
            gid: on(wire::FATTR_GID).then_some(gid),
            size: on(wire::FATTR_SIZE).then_some(size),
            atime: time(wire::FATTR_ATIME, wire::FATTR_ATIME_NOW, atime, atimensec),
            mtime: time(wire::FATTR_MTIME, wire::FATTR_MTIME_NOW, mtime, mtimensec),
            fh: on(wire::FATTR_FH).then_some(fh),
        };
        let truncates = set.size.is_some();
        match self.fs.setattr(ctx, ino, set) {
            Ok(at) => {
                if truncates && self.passthrough.pinned_to_lower(ino) {
                    // As in the adapter: new opens must not share the pinned lower file.
                    if let Err(e) = self.fs.supersede(ino) {
                        log::warn!("inode {ino}: {e}");
                    }
                }
                wire::attr_out(out, self.attr_ttl(ino, self.opts.ttl), &at);
                Answer::Ok
            }
            Err(e) => e.into(),
        }
    }

    fn getxattr(&self, ino: u64, name: &OsStr, size: u32, out: &mut Vec<u8>) -> Answer {
        if size == 0 {
            return match self.fs.getxattr(ino, name, &mut []) {
                Ok(n) => {
                    wire::xattr_size(out, n as u32);
                    Answer::Ok
                }
                Err(e) => e.into(),
            };
        }
        out.resize(size as usize, 0);
        match self.fs.getxattr(ino, name, out) {
            Ok(n) => {
                out.truncate(n);
                Answer::Ok
            }
            Err(e) => e.into(),
        }
    }

    fn backing(&self, f: BorrowedFd<'_>) -> std::io::Result<DevBacking> {
        let id = fuse_dev::backing_open(self.dev.as_fd(), f)?;
        Ok(DevBacking {
            dev: self.dev.clone(),
            id,
        })
    }

    /// `FOPEN_DIRECT_IO` for a handle opened with `flags` that does not pass through,
    /// when `direct_writes` asks for it (`FuseOptions::direct_io`); else nothing.
    fn direct_flag(&self, flags: i32) -> u32 {
        if self.opts.direct_io(flags) {
            wire::FOPEN_DIRECT_IO
        } else {
            0
        }
    }

    fn open(&self, ctx: Ctx, ino: u64, flags: i32, out: &mut Vec<u8>) -> Answer {
        let o = match self.fs.open(ctx, ino, flags) {
            Ok(o) => o,
            Err(e) => return e.into(),
        };
        let acc = flags & libc::O_ACCMODE;
        let writes = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let direct = self.direct_flag(flags);
        match self
            .passthrough
            .attach(&self.fs, ino, o.fh, writes, |f| self.backing(f))
        {
            Ok(Attach::Passthrough(b)) => open_answer(out, o.fh, Some(b), 0),
            Ok(Attach::Cached) => {
                self.fs.offer_pages(o.fh, flags);
                open_answer(out, o.fh, None, direct)
            }
            Ok(Attach::Supersede) => {
                self.fs.release(o.fh);
                match self.fs.supersede(ino) {
                    Ok(_) => Answer::Err(libc::ESTALE),
                    Err(e) => e.into(),
                }
            }
            Err(e) => {
                self.fs.release(o.fh);
                e.into()
            }
        }
    }

    fn create(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        out: &mut Vec<u8>,
    ) -> Answer {
        let (e, o) = match self.fs.create(ctx, parent, name, mode, flags) {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        let ttl = self.opts.ttl;
        let direct = self.direct_flag(flags);
        if direct != 0 && !self.passthrough.passes_new_files() {
            // As in the adapter: a new write-only file without passthrough is written
            // through the daemon, past the mount's page cache.
            wire::entry(out, e.attr.ino, e.generation, ttl, &e.attr);
            wire::open_out(out, o.fh, wire::FOPEN_NOFLUSH | direct, 0);
            return Answer::Ok;
        }
        match self
            .passthrough
            .attach(&self.fs, e.attr.ino, o.fh, true, |f| self.backing(f))
        {
            Ok(Attach::Passthrough(b)) => {
                wire::entry(out, e.attr.ino, e.generation, ttl, &e.attr);
                open_answer(out, o.fh, Some(b), 0)
            }
            Ok(Attach::Cached) => {
                // Passthrough refused (no backing file): written as without it.
                wire::entry(out, e.attr.ino, e.generation, ttl, &e.attr);
                open_answer(out, o.fh, None, direct)
            }
            Ok(Attach::Supersede) => {
                self.fs.release(o.fh);
                self.fs.forget(e.attr.ino, 1);
                Answer::Err(libc::EIO)
            }
            Err(er) => {
                self.fs.release(o.fh);
                self.fs.forget(e.attr.ino, 1);
                er.into()
            }
        }
    }
}

/// The `fuse_open_out` of a handle: straight to its backing file, or through the
/// daemon and the kernel's page cache (which stays valid across opens: every write goes
/// through us), with `direct` (`FOPEN_DIRECT_IO` or nothing). No FLUSH on close: the
/// daemon buffers no writes.
fn open_answer(
    out: &mut Vec<u8>,
    fh: u64,
    backing: Option<Arc<DevBacking>>,
    direct: u32,
) -> Answer {
    match backing {
        Some(b) => {
            wire::open_out(out, fh, wire::FOPEN_NOFLUSH | wire::FOPEN_PASSTHROUGH, b.id);
            Answer::Open(b)
        }
        None => {
            let flags = wire::FOPEN_KEEP_CACHE | wire::FOPEN_NOFLUSH | direct;
            wire::open_out(out, fh, flags, 0);
            Answer::Ok
        }
    }
}

/// A READDIR answer being filled.
struct PlainOut<'a> {
    out: &'a mut Vec<u8>,
    max: usize,
}

impl DirReply for PlainOut<'_> {
    fn add(&mut self, e: DirEntryRef<'_>) -> bool {
        !wire::dirent(self.out, self.max, e.ino, e.off, e.dtype, e.name)
    }
}

/// A READDIRPLUS answer being filled.
struct PlusOut<'a> {
    out: &'a mut Vec<u8>,
    max: usize,
    opts: &'a FuseOptions,
}

impl DirPlusReply for PlusOut<'_> {
    fn add(&mut self, e: DirEntryRef<'_>, entry: Option<&Entry>) -> bool {
        let fits = match entry {
            Some(ent) => wire::direntplus(
                self.out,
                self.max,
                ent.attr.ino,
                ent.generation,
                self.opts.ttl_for(ent.immutable),
                &ent.attr,
                e.off,
                e.dtype,
                e.name,
            ),
            None => {
                // `.` and `..`: node id 0, so the kernel makes no dentry for them.
                let attr = Attr {
                    ino: e.ino,
                    mode: libc::S_IFDIR,
                    blksize: 4096,
                    ..Attr::default()
                };
                wire::direntplus(
                    self.out,
                    self.max,
                    0,
                    0,
                    Duration::ZERO,
                    &attr,
                    e.off,
                    e.dtype,
                    e.name,
                )
            }
        };
        !fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::ROOT_INO;

    fn header(opcode: u32, nodeid: u64) -> InHeader {
        InHeader {
            opcode,
            nodeid,
            unique: 7,
            ..InHeader::default()
        }
    }

    fn dispatcher(lower: std::path::PathBuf) -> Dispatcher {
        let fs = OverlayFs::new(crate::overlay::Options::new(vec![lower], None, None)).unwrap();
        let dev: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        Dispatcher::new(Arc::new(fs), FuseOptions::default(), Arc::new(dev))
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn lookups_answer_entries_and_negative_entries_with_node_id_zero() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("l");
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::write(lower.join("f"), b"12345").unwrap();
        let d = dispatcher(lower);
        let mut out = Vec::new();
        let a = d.handle(&header(wire::LOOKUP, ROOT_INO), &[], b"f\0", &mut out);
        assert!(matches!(a, Answer::Ok));
        assert_eq!(out.len(), 128);
        let ino = u64_at(&out, 0);
        assert_ne!(ino, 0);
        assert_eq!(u64_at(&out, 40 + 8), 5, "size in the entry's attributes");
        let a = d.handle(&header(wire::LOOKUP, ROOT_INO), &[], b"nope\0", &mut out);
        assert!(matches!(a, Answer::Ok));
        assert_eq!(u64_at(&out, 0), 0, "a negative entry");
        // A name without its NUL, and a short fixed argument, are refused.
        let a = d.handle(&header(wire::LOOKUP, ROOT_INO), &[], b"f", &mut out);
        assert!(matches!(a, Answer::Err(libc::EINVAL)));
        let a = d.handle(&header(wire::GETATTR, ino), &[0; 4], &[], &mut out);
        assert!(matches!(a, Answer::Err(libc::EINVAL)));
        // FORGET has no answer; an unknown opcode is ENOSYS.
        let forget = 1u64.to_ne_bytes();
        let a = d.handle(&header(wire::FORGET, ino), &forget, &[], &mut out);
        assert!(matches!(a, Answer::None));
        let a = d.handle(&header(4096, ROOT_INO), &[], &[], &mut out);
        assert!(matches!(a, Answer::Err(libc::ENOSYS)));
    }

    #[test]
    fn listings_fill_the_buffer_the_kernel_offers_and_resume_at_the_last_offset() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("l");
        std::fs::create_dir_all(&lower).unwrap();
        for i in 0..20 {
            std::fs::write(lower.join(format!("file{i:02}")), b"x").unwrap();
        }
        let d = dispatcher(lower);
        let mut names = Vec::new();
        let mut offset = 0u64;
        let mut out = Vec::new();
        loop {
            // struct fuse_read_in: fh, offset, size (a buffer of 100 bytes: 3 entries).
            let mut arg = Vec::new();
            arg.extend_from_slice(&0u64.to_ne_bytes());
            arg.extend_from_slice(&offset.to_ne_bytes());
            arg.extend_from_slice(&100u32.to_ne_bytes());
            arg.resize(40, 0);
            let a = d.handle(&header(wire::READDIR, ROOT_INO), &arg, &[], &mut out);
            assert!(matches!(a, Answer::Ok));
            assert!(out.len() <= 100);
            if out.is_empty() {
                break;
            }
            let mut at = 0;
            while at < out.len() {
                let off = u64_at(&out, at + 8);
                let len = u32::from_ne_bytes(out[at + 16..at + 20].try_into().unwrap()) as usize;
                names.push(String::from_utf8(out[at + 24..at + 24 + len].to_vec()).unwrap());
                offset = off;
                at += (24 + len).div_ceil(8) * 8;
            }
        }
        names.retain(|n| n != "." && n != "..");
        names.sort();
        let want: Vec<String> = (0..20).map(|i| format!("file{i:02}")).collect();
        assert_eq!(names, want, "every name once across the batches");
    }
}
