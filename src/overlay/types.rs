//! Plain types the core speaks: no FUSE types here, so tests can drive the core directly.

use crate::sys::{Stat, TimeSpec};

/// Who is asking (from the FUSE request header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Ctx {
    pub const ROOT: Ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// A timestamp: seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// Attributes of a merged object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub blksize: u32,
}

impl Attr {
    pub fn from_stat(ino: u64, st: &Stat) -> Attr {
        Attr {
            ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: Time {
                sec: st.st_atime,
                nsec: st.st_atime_nsec as u32,
            },
            mtime: Time {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec as u32,
            },
            ctime: Time {
                sec: st.st_ctime,
                nsec: st.st_ctime_nsec as u32,
            },
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            blksize: st.st_blksize as u32,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// A looked-up entry: attributes plus the generation number for the FUSE reply.
/// Returning one means the kernel's lookup count for `attr.ino` went up by one.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub attr: Attr,
    pub generation: u64,
    /// Lower-only objects never change behind the kernel's back.
    pub immutable: bool,
}

/// What `setattr` asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    /// The file handle the change came through, if any (`ftruncate`, `futimens`).
    pub fh: Option<u64>,
}

/// Filesystem statistics.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Result of opening a file.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// Keep the kernel's page cache (the file cannot have changed since last open).
    pub keep_cache: bool,
}

/// The answer to `listxattr`: the size asked for, or the NUL-separated names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrList {
    Size(usize),
    Names(Vec<u8>),
}
