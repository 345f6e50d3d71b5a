//! Open files: open (copying up first for writing), read, write, sync, allocate, seek,
//! copy ranges, release. Handles hold the real file; reads never copy up.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::fs::OverlayFs;
use super::handles::FileHandle;
use super::inode_table::{Node, NodeState};
use super::layers::UPPER;
use super::types::{Ctx, Opened};
use crate::sys::{self, Errno, OFlags, SysResult};

impl OverlayFs {
    /// Open a regular file. Writing opens copy the file up first.
    pub fn open(&self, ctx: Ctx, ino: u64, flags: i32) -> SysResult<Opened> {
        let _ = ctx;
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::ISDIR);
        }
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if writable || flags & libc::O_TRUNC != 0 {
            if !self.is_writable() {
                return Err(Errno::ROFS);
            }
            self.copy_up(&node)?;
        }
        let file = self.open_real(&node, real_open_flags(flags))?;
        if flags & libc::O_TRUNC != 0 {
            sys::ftruncate(file.as_fd(), 0)?;
        }
        let layer = self.file_layer(&node);
        let keep_cache = layer != UPPER;
        let fh = self
            .files
            .insert(FileHandle::new(node, file, layer, writable));
        Ok(Opened { fh, keep_cache })
    }

    /// Open the real file behind a node with the given flags.
    pub(crate) fn open_real(&self, node: &Node, flags: OFlags) -> SysResult<OwnedFd> {
        let st = node.state.read();
        let NodeState::File(f) = &*st else {
            return Err(Errno::ISDIR);
        };
        let mut last = Errno::STALE;
        for a in &f.aliases {
            match sys::open_at(a.real.fd(), &a.name, flags, 0) {
                Ok(fd) => return Ok(fd),
                Err(e) => last = e,
            }
        }
        if let Some(o) = &f.orphan {
            return sys::reopen(o.as_fd(), flags);
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
        self.files.remove(fh);
    }

    pub fn flush(&self, fh: u64) -> SysResult<()> {
        self.files.get(fh).map(|_| ()).ok_or(Errno::BADF)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let h = self.files.get(fh).ok_or(Errno::BADF)?;
        if !self.opts.fsync {
            return Ok(());
        }
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

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<usize> {
        let h = self.writable_handle(fh)?;
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
