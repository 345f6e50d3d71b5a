//! `fuser::Filesystem` over the core: decode, call the core (`overlay::fs` and its
//! siblings), reply. No overlay rules live here.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno as FErrno, FileHandle, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::convert::{dtype_to_file_type, err, time_spec, to_fuse_attr};
use super::passthrough::{Attach, PassthroughMode, PassthroughTable};
use super::request::FuseOptions;
use crate::overlay::fs::OverlayFs;
use crate::overlay::readdir::{DirEntryRef, DirPlusReply, DirReply};
use crate::overlay::types::{Attr, Ctx, Entry, SetAttr, Time, XattrList};
use crate::sys::Errno;

pub struct FuseAdapter {
    fs: Arc<OverlayFs>,
    opts: FuseOptions,
    passthrough: PassthroughTable<fuser::BackingId>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<OverlayFs>, opts: FuseOptions) -> Self {
        FuseAdapter {
            fs,
            passthrough: PassthroughTable::new(opts.passthrough),
            opts,
        }
    }

    fn ctx(req: &Request) -> Ctx {
        Ctx {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }

    fn ttl_for(&self, immutable: bool) -> Duration {
        self.opts.ttl_for(immutable)
    }

    /// `FOPEN_DIRECT_IO` for a handle opened write-only when `direct_writes` is on: an
    /// open that does not pass through, or any create (see `create`).
    fn direct_io(&self, flags: i32) -> FopenFlags {
        if self.opts.direct_io(flags) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, e: Entry) {
        reply.entry(
            &self.ttl_for(e.immutable),
            &to_fuse_attr(&e.attr),
            Generation(e.generation),
        );
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn destroy(&mut self) {
        self.fs.finish();
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let caps = config.capabilities();
        // READDIRPLUS (when on) goes with the kernel's listing cache: every change to a
        // directory's entries drops that cache (`KernelCache::listing_changed`).
        let mut want = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_EXPORT_SUPPORT
            | InitFlags::FUSE_ASYNC_DIO
            // O_TRUNC arrives with the OPEN (one request, and the truncation happens
            // on the file the new handle opens) instead of as a SETATTR after it.
            | InitFlags::FUSE_ATOMIC_O_TRUNC;
        // Not FUSE_HANDLE_KILLPRIV_V2, though it saves a GETATTR per chown and most
        // security.capability GETXATTRs (tar x: 747 requests for 70 files → 639): with
        // it the kernel leaves clearing setuid/setgid on write to the server, and a
        // passthrough write never reaches the server (measured: a write by the owner kept
        // 6755 on a file the kernel's overlayfs turns into 755).
        if self.opts.passthrough != PassthroughMode::Off
            && caps.contains(InitFlags::FUSE_PASSTHROUGH)
        {
            want |= InitFlags::FUSE_PASSTHROUGH;
        } else if self.opts.writeback {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        if self.opts.readdirplus {
            want |= InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        }
        want &= caps;
        let _ = config.add_capabilities(want);
        if want.contains(InitFlags::FUSE_PASSTHROUGH) && config.set_max_stack_depth(1).is_ok() {
            self.passthrough.enable();
            log::info!("FUSE passthrough enabled");
        } else {
            log::info!("FUSE passthrough not in use");
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok(e) => self.reply_entry(reply, e),
            Err(Errno::NOENT) => {
                // A negative entry the kernel may cache: every creation goes through us.
                let ttl = self.opts.negative_ttl(self.fs.is_writable());
                let mut attr = to_fuse_attr(&Attr {
                    ino: 0,
                    size: 0,
                    blocks: 0,
                    atime: Time::default(),
                    mtime: Time::default(),
                    ctime: Time::default(),
                    mode: libc::S_IFREG,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 4096,
                });
                attr.ino = INodeNo(0);
                reply.entry(&ttl, &attr, Generation(0));
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => {
                let ttl = if self.fs.has_successor(ino.0) {
                    Duration::ZERO
                } else {
                    self.ttl_for(!self.fs.is_writable())
                };
                reply.attr(&ttl, &to_fuse_attr(&a))
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
            fh: fh.map(|f| f.0),
        };
        let truncates = set.size.is_some();
        match self.fs.setattr(Self::ctx(req), ino.0, set) {
            Ok(a) => {
                if truncates && self.passthrough.pinned_to_lower(ino.0) {
                    // The copy no longer has the pinned lower file's bytes: new opens
                    // must not share that backing file.
                    if let Err(e) = self.fs.supersede(ino.0) {
                        log::warn!("inode {}: {e}", ino.0);
                    }
                }
                let ttl = if self.fs.has_successor(ino.0) {
                    Duration::ZERO
                } else {
                    self.opts.ttl
                };
                reply.attr(&ttl, &to_fuse_attr(&a))
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .mknod(Self::ctx(req), parent.0, name, mode, rdev as u64)
        {
            Ok(e) => self.reply_entry(reply, e),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.fs.mkdir(Self::ctx(req), parent.0, name, mode) {
            Ok(e) => self.reply_entry(reply, e),
            Err(e) => reply.error(err(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .symlink(Self::ctx(req), parent.0, link_name, target.as_os_str())
        {
            Ok(e) => self.reply_entry(reply, e),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link(ino.0, newparent.0, newname) {
            Ok(e) => self.reply_entry(reply, e),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let o = match self.fs.open(Self::ctx(req), ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(err(e)),
        };
        // FOPEN_NOFLUSH: no FLUSH on close, which has nothing to do here (the daemon
        // buffers no writes; with the writeback cache the kernel still flushes its own).
        let acc = flags.0 & libc::O_ACCMODE;
        let writes = acc != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let direct = self.direct_io(flags.0);
        match self
            .passthrough
            .attach(&self.fs, ino.0, o.fh, writes, |f| reply.open_backing(f))
        {
            Ok(Attach::Passthrough(id)) => {
                reply.opened_passthrough(FileHandle(o.fh), FopenFlags::FOPEN_NOFLUSH, &id)
            }
            Ok(Attach::Cached) => {
                self.fs.offer_pages(o.fh, flags.0);
                // Every write goes through us, so cached pages stay valid across opens.
                reply.opened(
                    FileHandle(o.fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH | direct,
                )
            }
            Ok(Attach::Supersede) => {
                self.fs.release(o.fh);
                match self.fs.supersede(ino.0) {
                    // The VFS retries the path walk once, with a fresh lookup.
                    Ok(_) => reply.error(FErrno::ESTALE),
                    Err(e) => reply.error(err(e)),
                }
            }
            Err(e) => {
                self.fs.release(o.fh);
                reply.error(err(e))
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.read_with(fh.0, offset, size as usize, |r| match r {
            Ok(d) => reply.data(d),
            Err(e) => reply.error(err(e)),
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Sent only for writes that bypass the page cache (we do not negotiate
        // HANDLE_KILLPRIV): the kernel cleared nothing, so clear set-id bits here.
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.fs.write(Self::ctx(req), fh.0, offset, data, kill) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.fs.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.detach(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            // ENOSYS turns on zero-message opendir: the kernel then opens directories
            // without asking and caches their listings (FOPEN_CACHE_DIR|KEEP_CACHE),
            // which is safe because every change to a directory's entries goes through
            // us and drops that cache (`listing_changed`). Offsets need no per-stream
            // state (see readdir.rs), with or without READDIRPLUS.
            Ok(()) => reply.error(FErrno::ENOSYS),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut out = PlusReply {
            reply: &mut reply,
            adapter: self,
        };
        match self.fs.readdirplus_into(ino.0, offset, &mut out) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut out = PlainReply(&mut reply);
        match self.fs.readdir_into(ino.0, offset, &mut out) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.fs.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if size == 0 {
            match self.fs.getxattr(ino.0, name, &mut []) {
                Ok(n) => reply.size(n as u32),
                Err(e) => reply.error(err(e)),
            }
        } else {
            let mut buf = vec![0u8; size as usize];
            match self.fs.getxattr(ino.0, name, &mut buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(err(e)),
            }
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0, size as usize) {
            Ok(XattrList::Size(n)) => reply.size(n as u32),
            Ok(XattrList::Names(list)) => reply.data(&list),
            Err(e) => reply.error(err(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(Self::ctx(req), ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (e, o) = match self.fs.create(Self::ctx(req), parent.0, name, mode, flags) {
            Ok(r) => r,
            Err(e) => return reply.error(err(e)),
        };
        let ttl = self.opts.ttl;
        let attr = to_fuse_attr(&e.attr);
        let direct = self.direct_io(flags);
        if !direct.is_empty() && !self.passthrough.passes_new_files() {
            // A new file opened write-only (`tar x`) without passthrough: its writes go
            // to the daemon without a copy in the mount's page cache. With passthrough
            // it passes through: a write then costs one copy instead of two (1 GiB in
            // 1 MiB writes: 0.66 s against 0.75 s here), and `tar x` as much as a
            // direct write (the backing file's registration and the kernel's
            // `security.capability` lookup before each write cost about what a WRITE
            // request does over the ring).
            // Nothing is registered: a later passthrough open of the file still gets
            // its backing (direct handles do not hold the inode in caching mode).
            return reply.created(
                &ttl,
                &attr,
                Generation(e.generation),
                FileHandle(o.fh),
                FopenFlags::FOPEN_NOFLUSH | direct,
            );
        }
        match self
            .passthrough
            .attach(&self.fs, e.attr.ino, o.fh, true, |f| reply.open_backing(f))
        {
            Ok(Attach::Passthrough(id)) => reply.created_passthrough(
                &ttl,
                &attr,
                Generation(e.generation),
                FileHandle(o.fh),
                FopenFlags::FOPEN_NOFLUSH,
                &id,
            ),
            // Passthrough refused (no backing file): written as without it.
            Ok(Attach::Cached) => reply.created(
                &ttl,
                &attr,
                Generation(e.generation),
                FileHandle(o.fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH | direct,
            ),
            // A new file is never pinned to a lower one.
            Ok(Attach::Supersede) => {
                self.fs.release(o.fh);
                self.fs.forget(e.attr.ino, 1);
                reply.error(FErrno::EIO)
            }
            Err(er) => {
                // The file exists now; the kernel will look it up again.
                self.fs.release(o.fh);
                self.fs.forget(e.attr.ino, 1);
                reply.error(err(er))
            }
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.fs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err(e)),
        }
    }
}

/// fuser's READDIR reply as the core's reply buffer.
struct PlainReply<'a>(&'a mut ReplyDirectory);

impl DirReply for PlainReply<'_> {
    fn add(&mut self, e: DirEntryRef<'_>) -> bool {
        self.0
            .add(INodeNo(e.ino), e.off, dtype_to_file_type(e.dtype), e.name)
    }
}

/// fuser's READDIRPLUS reply as the core's reply buffer.
struct PlusReply<'a> {
    reply: &'a mut ReplyDirectoryPlus,
    adapter: &'a FuseAdapter,
}

impl DirPlusReply for PlusReply<'_> {
    fn add(&mut self, e: DirEntryRef<'_>, entry: Option<&Entry>) -> bool {
        match entry {
            Some(ent) => self.reply.add(
                INodeNo(ent.attr.ino),
                e.off,
                e.name,
                &self.adapter.ttl_for(ent.immutable),
                &to_fuse_attr(&ent.attr),
                Generation(ent.generation),
            ),
            None => {
                // `.` and `..`: the kernel makes no dentry; the attributes name the type.
                let attr = to_fuse_attr(&Attr {
                    ino: e.ino,
                    mode: libc::S_IFDIR,
                    blksize: 4096,
                    ..Attr::default()
                });
                self.reply.add(
                    INodeNo(e.ino),
                    e.off,
                    e.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                )
            }
        }
    }
}
