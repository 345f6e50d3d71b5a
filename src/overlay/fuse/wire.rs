//! The FUSE protocol's bytes (include/uapi/linux/fuse.h, 7.40): opcodes, reading a
//! request's arguments, and writing the answers the core's results become. Used by the
//! io_uring transport, which speaks the protocol itself (fuser has no such transport).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::overlay::types::{Attr, Time};

pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const INIT: u32 = 26;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const INTERRUPT: u32 = 36;
pub const DESTROY: u32 = 38;
pub const BATCH_FORGET: u32 = 42;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const COPY_FILE_RANGE: u32 = 47;

pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR: u32 = 40;

// INIT flags (flags | flags2 << 32).
pub const ASYNC_READ: u64 = 1 << 0;
pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
pub const EXPORT_SUPPORT: u64 = 1 << 4;
pub const BIG_WRITES: u64 = 1 << 5;
pub const DO_READDIRPLUS: u64 = 1 << 13;
pub const READDIRPLUS_AUTO: u64 = 1 << 14;
pub const ASYNC_DIO: u64 = 1 << 15;
pub const WRITEBACK_CACHE: u64 = 1 << 16;
pub const PARALLEL_DIROPS: u64 = 1 << 18;
pub const MAX_PAGES: u64 = 1 << 22;
pub const CACHE_SYMLINKS: u64 = 1 << 23;
pub const INIT_EXT: u64 = 1 << 30;
pub const PASSTHROUGH: u64 = 1 << 37;
pub const OVER_IO_URING: u64 = 1 << 41;

// open_out.open_flags
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

// setattr_in.valid
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;

pub const GETATTR_FH: u32 = 1 << 0;
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const FSYNC_FDATASYNC: u32 = 1 << 0;

pub const NOTIFY_INVAL_INODE: i32 = 2;
pub const NOTIFY_INVAL_ENTRY: i32 = 3;
pub const NOTIFY_STORE: i32 = 4;

/// `sizeof(struct fuse_in_header)`.
pub const IN_HEADER_LEN: usize = 40;
/// `sizeof(struct fuse_out_header)`.
pub const OUT_HEADER_LEN: usize = 16;

/// Size of an opcode's fixed argument (the kernel's `in_args[0]`), which the ring
/// delivers apart from the names and data after it.
pub fn op_arg_len(opcode: u32) -> usize {
    match opcode {
        FORGET | INTERRUPT | MKDIR | OPEN | OPENDIR | ACCESS | GETXATTR | LISTXATTR | RENAME
        | LINK | SETXATTR => 8,
        GETATTR | CREATE | MKNOD | RENAME2 | FSYNC | FSYNCDIR => 16,
        BATCH_FORGET => 8,
        RELEASE | FLUSH | RELEASEDIR | LSEEK => 24,
        FALLOCATE => 32,
        READ | WRITE | READDIR | READDIRPLUS => 40,
        COPY_FILE_RANGE => 56,
        INIT => 64,
        SETATTR => 88,
        _ => 0,
    }
}

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> Option<InHeader> {
        let mut r = Args::new(b);
        Some(InHeader {
            len: r.u32()?,
            opcode: r.u32()?,
            unique: r.u64()?,
            nodeid: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
            pid: r.u32()?,
        })
    }
}

/// A cursor over a request's argument bytes.
pub struct Args<'a> {
    b: &'a [u8],
}

impl<'a> Args<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Args { b }
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Some(a)
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.bytes(8)?.try_into().ok()?))
    }

    /// A NUL-terminated name.
    pub fn name(&mut self) -> Option<&'a OsStr> {
        let end = self.b.iter().position(|&c| c == 0)?;
        let n = self.bytes(end + 1)?;
        Some(OsStr::from_bytes(&n[..end]))
    }

    pub fn rest(self) -> &'a [u8] {
        self.b
    }
}

fn put32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_ne_bytes());
}

fn put64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_ne_bytes());
}

fn time_parts(t: Time) -> (u64, u32) {
    (t.sec as u64, t.nsec)
}

/// `struct fuse_attr`.
pub fn attr(o: &mut Vec<u8>, a: &Attr) {
    let (at, atn) = time_parts(a.atime);
    let (mt, mtn) = time_parts(a.mtime);
    let (ct, ctn) = time_parts(a.ctime);
    for v in [a.ino, a.size, a.blocks, at, mt, ct] {
        put64(o, v);
    }
    for v in [
        atn,
        mtn,
        ctn,
        a.mode,
        a.nlink,
        a.uid,
        a.gid,
        a.rdev as u32,
        a.blksize,
        0,
    ] {
        put32(o, v);
    }
}

/// `struct fuse_entry_out`.
pub fn entry(o: &mut Vec<u8>, nodeid: u64, generation: u64, ttl: Duration, a: &Attr) {
    put64(o, nodeid);
    put64(o, generation);
    put64(o, ttl.as_secs());
    put64(o, ttl.as_secs());
    put32(o, ttl.subsec_nanos());
    put32(o, ttl.subsec_nanos());
    attr(o, a);
}

/// `struct fuse_attr_out`.
pub fn attr_out(o: &mut Vec<u8>, ttl: Duration, a: &Attr) {
    put64(o, ttl.as_secs());
    put32(o, ttl.subsec_nanos());
    put32(o, 0);
    attr(o, a);
}

/// `struct fuse_open_out`.
pub fn open_out(o: &mut Vec<u8>, fh: u64, flags: u32, backing_id: u32) {
    put64(o, fh);
    put32(o, flags);
    put32(o, backing_id);
}

/// `struct fuse_write_out` (also the answer of COPY_FILE_RANGE).
pub fn write_out(o: &mut Vec<u8>, size: u32) {
    put32(o, size);
    put32(o, 0);
}

/// `struct fuse_getxattr_out`: the size a GETXATTR/LISTXATTR of size 0 asks for.
pub fn xattr_size(o: &mut Vec<u8>, size: u32) {
    put32(o, size);
    put32(o, 0);
}

pub fn lseek_out(o: &mut Vec<u8>, offset: u64) {
    put64(o, offset);
}

/// `struct fuse_statfs_out`.
#[allow(clippy::too_many_arguments)]
pub fn statfs_out(o: &mut Vec<u8>, s: &crate::overlay::types::StatFs) {
    for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
        put64(o, v);
    }
    for v in [s.bsize, s.namelen, s.frsize, 0, 0, 0, 0, 0, 0, 0] {
        put32(o, v);
    }
}

/// `struct fuse_init_out` for the flags and limits chosen.
pub fn init_out(o: &mut Vec<u8>, flags: u64, max_readahead: u32, max_write: u32, stack: u32) {
    put32(o, KERNEL_VERSION);
    put32(o, KERNEL_MINOR);
    put32(o, max_readahead);
    put32(o, flags as u32);
    o.extend_from_slice(&64u16.to_ne_bytes()); // max_background
    o.extend_from_slice(&48u16.to_ne_bytes()); // congestion_threshold
    put32(o, max_write);
    put32(o, 1); // time_gran
    o.extend_from_slice(&((max_write / 4096) as u16).to_ne_bytes()); // max_pages
    o.extend_from_slice(&0u16.to_ne_bytes()); // map_alignment
    put32(o, (flags >> 32) as u32);
    put32(o, stack); // max_stack_depth
    o.resize(o.len() + 24, 0); // request_timeout, unused
}

fn dirent_body(o: &mut Vec<u8>, ino: u64, off: u64, dtype: u8, name: &OsStr) {
    let n = name.as_bytes();
    put64(o, ino);
    put64(o, off);
    put32(o, n.len() as u32);
    put32(o, dtype as u32);
    o.extend_from_slice(n);
    let pad = (8 - (24 + n.len()) % 8) % 8;
    o.resize(o.len() + pad, 0);
}

fn dirent_len(name: &OsStr) -> usize {
    (24 + name.len()).div_ceil(8) * 8
}

/// Append a `struct fuse_dirent` if it fits in `max` bytes; false when full.
pub fn dirent(o: &mut Vec<u8>, max: usize, ino: u64, off: u64, dtype: u8, name: &OsStr) -> bool {
    if o.len() + dirent_len(name) > max {
        return false;
    }
    dirent_body(o, ino, off, dtype, name);
    true
}

/// Append a `struct fuse_direntplus` if it fits in `max` bytes; false when full.
#[allow(clippy::too_many_arguments)]
pub fn direntplus(
    o: &mut Vec<u8>,
    max: usize,
    nodeid: u64,
    generation: u64,
    ttl: Duration,
    a: &Attr,
    off: u64,
    dtype: u8,
    name: &OsStr,
) -> bool {
    if o.len() + 128 + dirent_len(name) > max {
        return false;
    }
    entry(o, nodeid, generation, ttl, a);
    dirent_body(o, a.ino, off, dtype, name);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_have_the_kernels_sizes() {
        let a = Attr::default();
        let mut o = Vec::new();
        attr(&mut o, &a);
        assert_eq!(o.len(), 88);
        o.clear();
        entry(&mut o, 1, 0, Duration::ZERO, &a);
        assert_eq!(o.len(), 128);
        o.clear();
        attr_out(&mut o, Duration::ZERO, &a);
        assert_eq!(o.len(), 104);
        o.clear();
        init_out(&mut o, 0, 0, 1 << 20, 1);
        assert_eq!(o.len(), 64);
        o.clear();
        let s = crate::overlay::types::StatFs {
            blocks: 0,
            bfree: 0,
            bavail: 0,
            files: 0,
            ffree: 0,
            bsize: 0,
            namelen: 0,
            frsize: 0,
        };
        statfs_out(&mut o, &s);
        assert_eq!(o.len(), 80);
    }

    #[test]
    fn directory_entries_are_padded_and_refused_when_full() {
        let mut o = Vec::new();
        assert!(dirent(&mut o, 64, 5, 1, 4, OsStr::new("abc")));
        assert_eq!(o.len(), 32);
        assert!(!dirent(&mut o, 64, 6, 2, 4, OsStr::new("0123456789")));
        assert_eq!(o.len(), 32);
    }

    #[test]
    fn arguments_are_read_in_order_and_short_input_is_refused() {
        let mut b = Vec::new();
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(b"name\0rest");
        let mut r = Args::new(&b);
        assert_eq!(r.u32(), Some(7));
        assert_eq!(r.name(), Some(OsStr::new("name")));
        assert_eq!(r.rest(), b"rest");
        assert_eq!(Args::new(&[1, 2]).u32(), None);
        assert_eq!(Args::new(b"no-nul").name(), None);
    }
}
