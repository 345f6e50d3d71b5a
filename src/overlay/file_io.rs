//! Open files: open (copying up first for writing), read, write, sync, allocate, seek,
//! copy ranges, release. Handles hold the real file; reads never copy up.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::fs::OverlayFs;
use super::handles::FileHandle;
use super::inode_table::{FileState, Node, NodeState};
use super::layers::{LayerId, UPPER};
use super::types::{Ctx, Opened, SetAttr};
use crate::sys::{self, Errno, OFlags, SysResult};

/// The kernel's marker for an open made by `execve` (`__FMODE_EXEC` in the open flags;
/// no user-space flag has this value).
const FMODE_EXEC: i32 = 0o40;
/// How long an O_TRUNC open waits for the RELEASE of a program that exited (the kernel
/// sends RELEASE after the close, in the background) before answering ETXTBSY.
const EXEC_RELEASE_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// `ETXTBSY` while a program runs from this file, as the kernel answers an O_TRUNC open
/// of it; a program that just exited gets a moment for its RELEASE to arrive.
fn wait_for_exec_releases(node: &Node) -> SysResult<()> {
    let deadline = std::time::Instant::now() + EXEC_RELEASE_GRACE;
    while node.exec_opens.load(std::sync::atomic::Ordering::Acquire) > 0 {
        if std::time::Instant::now() >= deadline {
            return Err(Errno::TXTBSY);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

/// Counts a node as open while one of its files is being opened.
struct OpeningGuard(Arc<Node>);

impl OpeningGuard {
    fn new(node: &Arc<Node>) -> Self {
        node.open_files
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        OpeningGuard(node.clone())
    }
}

impl Drop for OpeningGuard {
    fn drop(&mut self) {
        self.0
            .open_files
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl OverlayFs {
    /// Open a regular file. Writing opens copy the file up first.
    pub fn open(&self, ctx: Ctx, ino: u64, flags: i32) -> SysResult<Opened> {
        let _ = ctx;
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::ISDIR);
        }
        if node.successor().is_some() {
            // Its names lead to the successor now: the kernel looks the path up again.
            return Err(Errno::STALE);
        }
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if flags & libc::O_TRUNC != 0 {
            // The kernel sends O_TRUNC with the OPEN and only afterwards checks that
            // no one is executing the file (`handle_truncate`): refuse here, or a
            // running program would lose its text to an open that then fails.
            wait_for_exec_releases(&node)?;
        }
        if writable || flags & libc::O_TRUNC != 0 {
            if !self.is_writable() {
                return Err(Errno::ROFS);
            }
            self.copy_up(&node)?;
            if flags & (libc::O_SYNC | libc::O_DSYNC) != 0 {
                // Its writes are durable as they return: so must the copy be.
                self.syncs.wait(node.ino);
            }
        }
        // O_TRUNC (negotiated to come with the OPEN) truncates the copy as it opens,
        // whatever the access mode: the kernel checked write permission already.
        let mut real = real_open_flags(flags);
        if flags & libc::O_TRUNC != 0 {
            real |= OFlags::TRUNC;
        }
        // The layer of the file actually opened, read with it: a copy-up finishing in
        // between would otherwise mark a handle on the lower file as an upper one, and a
        // writer could then share it as its passthrough backing (a write into the lower
        // layer; seen in passthrough::readers_and_writers_at_once_never_see_an_error).
        // Counted as open from before the real file is opened until its handle counts
        // it: an unlink meanwhile must not free the data of a file being opened
        // (`drop_alias`).
        let opening = OpeningGuard::new(&node);
        Self::wait_for_offer(&node);
        let (file, layer) = self.open_real_in(&node, real)?;
        let keep_cache = layer != UPPER;
        let exec = flags & FMODE_EXEC != 0;
        let fh = self
            .files
            .insert(FileHandle::with_exec(node, file, layer, writable, exec));
        drop(opening);
        Ok(Opened { fh, keep_cache })
    }

    /// Open the real file behind a node with the given flags.
    pub(crate) fn open_real(&self, node: &Node, flags: OFlags) -> SysResult<OwnedFd> {
        self.open_real_in(node, flags).map(|(fd, _)| fd)
    }

    /// `open_real`, and the layer the opened file is in (read under the same lock as
    /// the names it was opened by).
    fn open_real_in(&self, node: &Node, flags: OFlags) -> SysResult<(OwnedFd, LayerId)> {
        if let Some(s) = node.successor() {
            return self.open_real_in(&s, flags);
        }
        let st = node.state.read();
        let NodeState::File(f) = &*st else {
            return Err(Errno::ISDIR);
        };
        let layer = f.layer;
        // A name may briefly hold something else while a change is under way (the
        // whiteout of an unlink, a rename over it): `ESTALE` then makes the kernel look
        // the path up again.
        let mut last = Errno::STALE;
        for a in &f.aliases {
            match sys::open_regular_at(a.real.fd(), &a.name, flags) {
                Ok(fd) if f.layer != UPPER && !self.layers().data.is_empty() => {
                    // A metacopy stub in a lower layer: its data is in a data-only layer.
                    let st = sys::stat_fd(fd.as_fd())?;
                    return match self
                        .layers()
                        .stub_data(fd.as_fd(), None, &st, flags, true)?
                    {
                        Some(data) => Ok((data, layer)),
                        None => Ok((fd, layer)),
                    };
                }
                Ok(fd) => return Ok((fd, layer)),
                Err(e) => last = e,
            }
        }
        if let Some(o) = &f.orphan {
            if f.orphan_emptied {
                return Err(Errno::STALE);
            }
            return sys::reopen(o.as_fd(), flags).map(|fd| (fd, layer));
        }
        Err(last)
    }

    /// Read from an open file into `buf`; returns the bytes read.
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> SysResult<usize> {
        let h = self.files.get(fh).ok_or(Errno::BADF)?;
        let file = h.file();
        let mut done = 0;
        while done < buf.len() {
            match sys::pread(file.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// Read with a per-thread buffer and hand the bytes to `f` (no allocation per read).
    pub fn read_with<R>(
        &self,
        fh: u64,
        offset: u64,
        size: usize,
        f: impl FnOnce(SysResult<&[u8]>) -> R,
    ) -> R {
        thread_local! {
            static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < size {
                b.resize(size, 0);
            }
            match self.read(fh, offset, &mut b[..size]) {
                Ok(n) => f(Ok(&b[..n])),
                Err(e) => f(Err(e)),
            }
        })
    }

    pub fn release(&self, fh: u64) {
        let Some(h) = self.files.remove(fh) else {
            return;
        };
        let node = h.node.clone();
        drop(h);
        // The last close of a file whose names are all gone frees its data (the
        // write lock only then: most releases are of files that keep their names).
        let orphaned = || matches!(&*node.state.read(), NodeState::File(f) if f.aliases.is_empty());
        if node.open_files.load(std::sync::atomic::Ordering::Acquire) == 0
            && orphaned()
            && let NodeState::File(f) = &mut *node.state.write()
        {
            super::mutate::empty_orphan(&node, f);
        }
    }

    pub fn flush(&self, fh: u64) -> SysResult<()> {
        self.files.get(fh).map(|_| ()).ok_or(Errno::BADF)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let h = self.files.get(fh).ok_or(Errno::BADF)?;
        if !self.opts.fsync {
            return Ok(());
        }
        // A copy still being synced: its record goes first, or a crash could drop it.
        self.syncs.wait(h.node.ino);
        let file = h.file();
        if datasync {
            sys::fdatasync(file.as_fd())
        } else {
            sys::fsync(file.as_fd())
        }
    }

    /// The open real file of a handle (for passthrough).
    pub fn handle_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.get(fh)
    }

    fn writable_handle(&self, fh: u64) -> SysResult<Arc<FileHandle>> {
        let h = self.files.get(fh).ok_or(Errno::BADF)?;
        if !h.writable || h.layer() != UPPER {
            return Err(Errno::BADF);
        }
        Ok(h)
    }

    /// Write through handle `fh`. `kill_suidgid`: the kernel asks us to clear set-id
    /// bits first (`FUSE_WRITE_KILL_SUIDGID`: a writer without `CAP_FSETID` on a handle
    /// whose writes bypass the kernel's page cache, where the kernel does not clear them
    /// itself); `ctx` is that writer. A `security.capability` xattr needs nothing here:
    /// the write to the upper file removes it, as any write does.
    pub fn write(
        &self,
        ctx: Ctx,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> SysResult<usize> {
        let h = self.writable_handle(fh)?;
        if kill_suidgid {
            self.kill_suidgid(ctx, fh, &h)?;
        }
        let file = h.file();
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(file.as_fd(), &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// Clear set-id bits as `file_remove_privs` does before a write by a process
    /// without `CAP_FSETID`: set-uid always; set-gid when group execute is set, or else
    /// (the bit then marks mandatory locking) when the writer is not in the file's
    /// group. On disk or in the upper layer's record, wherever the mode lives.
    fn kill_suidgid(&self, ctx: Ctx, fh: u64, h: &FileHandle) -> SysResult<()> {
        let ino = h.node.ino;
        let attr = self.getattr(ino, Some(fh))?;
        let mode = attr.mode;
        if sys::mode_type(mode) != libc::S_IFREG {
            return Ok(());
        }
        let mut kill = mode & libc::S_ISUID;
        if mode & libc::S_ISGID != 0
            && (mode & libc::S_IXGRP != 0 || !sys::in_group(ctx.pid, ctx.gid, attr.gid))
        {
            kill |= libc::S_ISGID;
        }
        if kill == 0 {
            return Ok(());
        }
        let set = SetAttr {
            mode: Some(mode & 0o7777 & !kill),
            fh: Some(fh),
            ..SetAttr::default()
        };
        self.setattr(Ctx::ROOT, ino, set)?;
        // The kernel drops only the size and times it caches after a write that went
        // around its page cache, not the mode: without this it would go on showing
        // (and executing with) the bits just cleared until the attributes expire.
        self.attr_changed(ino);
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> SysResult<()> {
        let h = self.writable_handle(fh)?;
        sys::fallocate(h.file().as_fd(), mode, offset, len)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> SysResult<usize> {
        let hi = self.files.get(fh_in).ok_or(Errno::BADF)?;
        let ho = self.writable_handle(fh_out)?;
        sys::copy_file_range(
            hi.file().as_fd(),
            off_in,
            ho.file().as_fd(),
            off_out,
            len.min(1 << 30) as usize,
        )
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> SysResult<u64> {
        let h = self.files.get(fh).ok_or(Errno::BADF)?;
        let w = match whence {
            libc::SEEK_DATA => sys::Whence::Data,
            libc::SEEK_HOLE => sys::Whence::Hole,
            libc::SEEK_SET => sys::Whence::Set,
            libc::SEEK_END => sys::Whence::End,
            _ => return Err(Errno::INVAL),
        };
        sys::lseek(h.file().as_fd(), offset, w)
    }
}

/// Flags for opening the real file: access mode and sync flags only. `O_APPEND` is
/// dropped because the kernel already sends the right offset, and Linux `pwrite` on an
/// `O_APPEND` fd would ignore it.
fn real_open_flags(flags: i32) -> OFlags {
    let keep = libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC | libc::O_NONBLOCK;
    OFlags::from_bits_retain((flags & keep) as u32)
}

impl OverlayFs {
    /// Hand a copied-up file's names to a new node, so that opens from now on reach a
    /// fresh kernel inode. The FUSE side asks for this when the kernel has this node's
    /// open files pinned to the lower file (passthrough: one backing file per kernel
    /// inode) and a new open needs the upper file. The old node keeps serving its open
    /// files and their metadata (through the successor); its new opens answer `ESTALE`,
    /// so the kernel looks the name up again and finds the successor. The successor has
    /// its own inode number until the next mount (node ids are inode numbers).
    pub fn supersede(&self, ino: u64) -> SysResult<u64> {
        let node = self.node(ino)?;
        if let Some(s) = node.successor() {
            return Ok(s.ino);
        }
        let _guard = node.copy_up_lock.lock();
        let state = match &*node.state.read() {
            NodeState::File(f) if f.layer == UPPER => FileState {
                aliases: f.aliases.clone(),
                layer: UPPER,
                orphan: match &f.orphan {
                    Some(o) => Some(o.try_clone().map_err(|_| Errno::MFILE)?),
                    None => None,
                },
                orphan_emptied: f.orphan_emptied,
            },
            _ => return Err(Errno::INVAL),
        };
        let successor = self.table.new_successor(&node, NodeState::File(state));
        // The names belong to the successor: nothing may reach the file through the old
        // node's copy of them once they change, and the kernel must look each of them
        // up again (other names of a hard link would show the old inode).
        let names = match &mut *node.state.write() {
            NodeState::File(f) => std::mem::take(&mut f.aliases),
            NodeState::Dir(_) => Default::default(),
        };
        for a in &names {
            self.name_moved(a.parent.ino, &a.name);
        }
        // From now on its attributes change through the successor: the kernel asks.
        self.attr_changed(node.ino);
        log::debug!("inode {ino}: names moved to node {}", successor.ino);
        Ok(successor.ino)
    }
}

impl OverlayFs {
    /// Whether a node's names moved to a successor (its attributes then change behind
    /// the kernel's cache of it: answer them with no validity).
    pub fn has_successor(&self, ino: u64) -> bool {
        self.node(ino).is_ok_and(|n| n.successor().is_some())
    }

    /// A change made through an old node reached the file its successor shows: the
    /// kernel's attributes of the successor are stale.
    pub(crate) fn twin_changed(&self, node: &Node) {
        if let Some(s) = node.successor() {
            self.attr_changed(s.ino);
        }
    }
}
