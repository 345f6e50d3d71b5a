//! The parts of the FUSE kernel protocol (include/uapi/linux/fuse.h, 7.42+) this probe
//! speaks. Structs are `repr(C)` with the kernel's layout; sizes are checked in tests.

#![allow(dead_code)]

pub const KERNEL_VERSION: u32 = 7;
/// The minor version we answer with: 7.42 introduced FUSE_OVER_IO_URING.
pub const KERNEL_MINOR: u32 = 42;

// Opcodes.
pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
/// `fuse_open_out.open_flags`: no FLUSH when the file is closed.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
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
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const STATX: u32 = 52;
pub const MAX_OPCODE: usize = 64;

// INIT flags (flags | flags2 << 32).
pub const ASYNC_READ: u64 = 1 << 0;
pub const BIG_WRITES: u64 = 1 << 5;
pub const PARALLEL_DIROPS: u64 = 1 << 18;
pub const MAX_PAGES: u64 = 1 << 22;
pub const INIT_EXT: u64 = 1 << 30;
pub const OVER_IO_URING: u64 = 1 << 41;

/// `_IOR(229, 0, uint32_t)`: bind a freshly opened /dev/fuse to an existing connection.
pub const DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

// FUSE over io_uring.
pub const URING_CMD_REGISTER: u32 = 1;
pub const URING_CMD_COMMIT_AND_FETCH: u32 = 2;
pub const URING_IN_OUT_HEADER_SZ: usize = 128;
pub const URING_OP_IN_OUT_SZ: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttrOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateIn {
    pub flags: u32,
    pub mode: u32,
    pub umask: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MkdirIn {
    pub mode: u32,
    pub umask: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub read_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetattrIn {
    pub valid: u32,
    pub padding: u32,
    pub fh: u64,
    pub size: u64,
    pub lock_owner: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub unused4: u32,
    pub uid: u32,
    pub gid: u32,
    pub unused5: u32,
}

pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub flags2: u32,
    pub unused: [u32; 11],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub map_alignment: u16,
    pub flags2: u32,
    pub max_stack_depth: u32,
    pub request_timeout: u16,
    pub unused: [u16; 11],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub padding: u32,
    pub spare: [u32; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Dirent {
    pub ino: u64,
    pub off: u64,
    pub namelen: u32,
    pub typ: u32,
}

/// `struct fuse_uring_ent_in_out`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UringEntInOut {
    pub flags: u64,
    pub commit_id: u64,
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}

/// `struct fuse_uring_req_header`: iov[0] of a ring entry.
#[repr(C, align(64))]
pub struct UringReqHeader {
    /// fuse_in_header on fetch, fuse_out_header on commit.
    pub in_out: [u8; URING_IN_OUT_HEADER_SZ],
    /// The opcode's fixed argument (the kernel's in_args[0]).
    pub op_in: [u8; URING_OP_IN_OUT_SZ],
    pub ring_ent_in_out: UringEntInOut,
}

/// `struct fuse_uring_cmd_req`: the first 24 bytes of an SQE128's command area.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UringCmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}

/// Size of the fixed argument (the kernel's `in_args[0]`) that precedes names and data.
/// The classic transport needs it to split a request the way the ring already does.
pub fn op_header_size(opcode: u32) -> usize {
    match opcode {
        LOOKUP | UNLINK | RMDIR | STATFS | DESTROY => 0,
        FORGET | BATCH_FORGET | INTERRUPT | MKDIR | OPEN | OPENDIR | ACCESS | GETXATTR
        | LISTXATTR | RENAME | LINK => 8,
        GETATTR | CREATE | MKNOD | RENAME2 | FSYNC | FSYNCDIR => 16,
        RELEASE | FLUSH | RELEASEDIR => 24,
        READ | WRITE | READDIR | READDIRPLUS => 40,
        INIT => 64,
        SETATTR => 88,
        _ => 0,
    }
}

/// Plain-old-data marker: every bit pattern is a valid value.
///
/// # Safety
/// Only for `repr(C)` structs made of integers with no padding the kernel would not zero.
pub unsafe trait Pod: Copy + Default {}
unsafe impl Pod for InHeader {}
unsafe impl Pod for OutHeader {}
unsafe impl Pod for Attr {}
unsafe impl Pod for EntryOut {}
unsafe impl Pod for AttrOut {}
unsafe impl Pod for OpenOut {}
unsafe impl Pod for CreateIn {}
unsafe impl Pod for MkdirIn {}
unsafe impl Pod for ReadIn {}
unsafe impl Pod for SetattrIn {}
unsafe impl Pod for InitIn {}
unsafe impl Pod for InitOut {}
unsafe impl Pod for Kstatfs {}
unsafe impl Pod for Dirent {}
unsafe impl Pod for UringEntInOut {}
unsafe impl Pod for UringCmdReq {}

/// Read a struct from the front of `b`; missing trailing bytes read as zero (the kernel
/// sends shorter structs to older protocol minors).
pub fn read<T: Pod>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = b.len().min(std::mem::size_of::<T>());
    // SAFETY: T is Pod, so any bytes form a valid value; n is within both buffers.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), &mut v as *mut T as *mut u8, n) };
    v
}

pub fn bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod and lives as long as the returned slice.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<InitIn>(), 64);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<Kstatfs>(), 80);
        assert_eq!(size_of::<UringEntInOut>(), 32);
        assert_eq!(size_of::<UringReqHeader>(), 320); // 288 + alignment padding
        assert_eq!(std::mem::offset_of!(UringReqHeader, ring_ent_in_out), 256);
        assert_eq!(size_of::<UringCmdReq>(), 24);
    }
}
