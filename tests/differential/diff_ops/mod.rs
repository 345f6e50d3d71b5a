//! The operation model of the differential tests: random lower stacks and random
//! sequences of filesystem operations, applied through plain syscalls to a kernel
//! overlayfs mount and to a layerfs mount of identical layers.
//!
//! Paths come from a small pool so that operations collide often (a name that is a file
//! in one layer and a directory in another, renames over existing names, links to lower
//! files). Every operation returns its result or errno, and both mounts must agree.
//!
//! Safety: the tests run as root. Every open uses `O_NOFOLLOW`, metadata calls use the
//! non-following variants, and symlink targets are relative names inside the tree or
//! dangling absolute names, so nothing here can reach outside the test directory. Device
//! nodes use major 60 (reserved for local use, no driver), so opening them fails.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use rustix::fs::{
    AtFlags, CWD, FallocateFlags, FileType, Gid, Mode, OFlags, RenameFlags, Timespec, Timestamps,
    UTIME_NOW, UTIME_OMIT, Uid, XattrFlags, chownat, copy_file_range, fallocate, lgetxattr, linkat,
    llistxattr, lremovexattr, lsetxattr, makedev, mkdirat, mknodat, renameat_with, symlinkat,
    unlinkat, utimensat,
};
use rustix::io::{self, Errno, pwrite};

use support::files::*;
use support::fingerprint::*;
use support::stack::*;
use support::tree::*;
use support::xattr::*;

/// Every path an operation or a lower layer may name. Parents come before children.
pub const PATHS: &[&str] = &[
    "a", "b", "c", "d", "e", "d/a", "d/b", "d/e", "e/a", "e/b", "d/e/a", "d/e/b",
];

/// Symlink targets: relative names inside the tree, and dangling names. Never `..`.
pub const TARGETS: &[&str] = &["a", "d/a", "e", "nonexistent-target", "/nonexistent-target"];

/// Contents of lower files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LData {
    Empty,
    Small,
    Large,
    /// 1 MiB with 4 KiB of data in the middle: the rest is holes.
    Sparse,
}

impl LData {
    fn write(self, p: &Path) {
        match self {
            LData::Empty => fs::write(p, b"").unwrap(),
            LData::Small => fs::write(p, b"lower\n").unwrap(),
            LData::Large => fs::write(p, pattern(20000, 7)).unwrap(),
            LData::Sparse => {
                let f = fs::File::create(p).unwrap();
                f.set_len(1 << 20).unwrap();
                use std::os::unix::fs::FileExt;
                f.write_all_at(&pattern(4096, 3), 512 << 10).unwrap();
            }
        }
    }
}

/// Bytes written by operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data {
    X,
    Hello,
    /// 10000 bytes.
    Big,
}

impl Data {
    pub fn bytes(self) -> Vec<u8> {
        match self {
            Data::X => b"x".to_vec(),
            Data::Hello => b"hello world\n".to_vec(),
            Data::Big => pattern(10000, 11),
        }
    }
}

pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Owners used in lower layers and by chown.
pub const OWNERS: &[(u32, u32)] = &[(0, 0), (1000, 1000), (1234, 100)];

/// One entry of a lower layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LEnt {
    File {
        data: LData,
        mode: u32,
        owner: usize,
        xattr: bool,
    },
    Dir {
        opaque: bool,
        mode: u32,
    },
    Symlink(&'static str),
    Whiteout,
    Fifo,
    /// A character device (60, 2): never a whiteout.
    Dev,
    /// A hard link to another path of the same layer (if that is a regular file there).
    Link(&'static str),
}

/// A lower layer: entries applied in order; an entry whose path (or a parent) is
/// already taken in the layer is skipped.
pub type LayerSpec = Vec<(&'static str, LEnt)>;

/// Which marker form the layerfs copy of the lower layers uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Kernel,
    Oci,
}

fn parents(p: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, c) in p.char_indices() {
        if c == '/' {
            out.push(&p[..i]);
        }
    }
    out
}

/// Build one layer dir in the given marker form.
pub fn build_layer(dir: &Path, spec: &LayerSpec, form: Form, time: i64) {
    fs::create_dir_all(dir).unwrap();
    // path -> is a directory
    let mut taken: std::collections::BTreeMap<&str, bool> = Default::default();
    let mut files: std::collections::BTreeSet<&str> = Default::default();
    for (p, ent) in spec {
        if taken.contains_key(p) {
            continue;
        }
        let par = parents(p);
        if par.iter().any(|a| taken.get(a) == Some(&false)) {
            continue;
        }
        for a in &par {
            if !taken.contains_key(a) {
                fs::create_dir(dir.join(a)).unwrap();
                taken.insert(a, true);
            }
        }
        let full = dir.join(p);
        match ent {
            LEnt::File {
                data,
                mode,
                owner,
                xattr,
            } => {
                data.write(&full);
                if *xattr {
                    set_xattr(&full, "user.lower", p.as_bytes());
                }
                let (u, g) = OWNERS[*owner];
                lchown(&full, u, g);
                chmod(&full, *mode);
                files.insert(p);
            }
            LEnt::Dir { opaque, mode } => {
                fs::create_dir(&full).unwrap();
                // Directories carry xattrs too (read through size queries by tools).
                set_xattr(&full, "user.lower", p.as_bytes());
                if *opaque {
                    match form {
                        Form::Kernel => set_xattr(&full, "trusted.overlay.opaque", b"y"),
                        Form::Oci => fs::write(full.join(".wh..wh..opq"), b"").unwrap(),
                    }
                }
                chmod(&full, *mode);
            }
            LEnt::Symlink(t) => symlink(t, &full),
            LEnt::Whiteout => match form {
                Form::Kernel => kernel_whiteout(&full),
                Form::Oci => {
                    let name = full.file_name().unwrap().to_str().unwrap();
                    fs::write(full.with_file_name(format!(".wh.{name}")), b"").unwrap();
                }
            },
            LEnt::Fifo => mknod(&full, libc::S_IFIFO | 0o644, 0),
            LEnt::Dev => mknod(&full, libc::S_IFCHR | 0o600, libc::makedev(60, 2)),
            LEnt::Link(to) => {
                if !files.contains(to) {
                    continue;
                }
                fs::hard_link(dir.join(to), &full).unwrap();
            }
        }
        taken.insert(p, matches!(ent, LEnt::Dir { .. }));
    }
    set_all_times(dir, time);
}

/// Build the whole stack (top first) under `base/NAME-i`; returns the layer dirs.
pub fn build_stack(base: &Path, name: &str, layers: &[LayerSpec], form: Form) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let d = base.join(format!("{name}-{i}"));
            build_layer(&d, l, form, 1_000_000_000 + 1000 * i as i64);
            d
        })
        .collect()
}

// ---------------------------------------------------------------------------- operations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acc {
    R,
    W,
    RW,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFl {
    pub acc: Acc,
    pub creat: bool,
    pub excl: bool,
    pub trunc: bool,
    pub append: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Fifo,
    Sock,
    /// Character device (60, 2).
    Chr,
    /// Block device (60, 1).
    Blk,
    /// Character device 0/0: the kernel refuses to create a whiteout through the mount.
    Chr00,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameHow {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ts {
    Set(i64, i64),
    Now,
    Omit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Falloc {
    Alloc,
    KeepSize,
    PunchHole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrHow {
    Any,
    Create,
    Replace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Open {
        p: &'static str,
        fl: OpenFl,
        mode: u32,
        data: Option<Data>,
    },
    Mknod {
        p: &'static str,
        kind: NodeKind,
        mode: u32,
    },
    Mkdir {
        p: &'static str,
        mode: u32,
    },
    Symlink {
        target: &'static str,
        p: &'static str,
    },
    Link {
        from: &'static str,
        to: &'static str,
    },
    Unlink(&'static str),
    Rmdir(&'static str),
    Rename {
        from: &'static str,
        to: &'static str,
        how: RenameHow,
    },
    Chmod {
        p: &'static str,
        mode: u32,
    },
    Chown {
        p: &'static str,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Truncate {
        p: &'static str,
        len: u64,
    },
    Utimens {
        p: &'static str,
        atime: Ts,
        mtime: Ts,
    },
    Write {
        p: &'static str,
        off: u64,
        data: Data,
    },
    Fallocate {
        p: &'static str,
        how: Falloc,
        off: u64,
        len: u64,
    },
    CopyRange {
        from: &'static str,
        to: &'static str,
        off_in: u64,
        off_out: u64,
        len: u64,
    },
    SetXattr {
        p: &'static str,
        name: &'static str,
        value: &'static str,
        how: XattrHow,
    },
    RemoveXattr {
        p: &'static str,
        name: &'static str,
    },
    /// `lgetxattr` in one of the forms tools use (size query first, then a buffer).
    GetXattr {
        p: &'static str,
        name: &'static str,
        form: XattrForm,
    },
    /// `llistxattr` in one of the same forms.
    ListXattr {
        p: &'static str,
        form: XattrForm,
    },
    Read(&'static str),
    Stat(&'static str),
    List(&'static str),
}

/// How an xattr value (or list) is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrForm {
    /// `size == 0`: only the length.
    Size,
    /// A buffer of exactly the length a size query gave.
    Exact,
    /// One byte less than that (`ERANGE` unless the value is empty).
    TooSmall,
    /// A large buffer.
    Big,
}

/// Read an xattr value or list in `form`: `call(buf)` is the syscall with that buffer.
///
/// A list's size query answers the length of the real object's whole list, internal
/// names included (the kernel's overlayfs does the same); the two mounts' upper dirs hold
/// different internal records (`trusted.overlay.origin` there, `…layerfs.ino` here), so
/// for lists the size query is compared as "covers the names shown", not as a number.
/// `tests/mount/xattr_nlink.rs` compares exact sizes where both read the same real objects.
fn xattr_form(
    form: XattrForm,
    list: bool,
    call: impl Fn(&mut [u8]) -> io::Result<usize>,
) -> Outcome {
    let size = outcome(call(&mut []))?;
    if list && form == XattrForm::Size {
        let mut buf = vec![0u8; 65536];
        let shown = second(outcome(call(&mut buf)))?;
        return Ok(i64::from(size >= shown));
    }
    if list && form == XattrForm::TooSmall {
        // Short of the size query's answer: ERANGE (nothing to ask with fewer than 1 byte).
        let mut buf = vec![0u8; (size as usize).saturating_sub(1)];
        return Ok(i64::from(size <= 1 || call(&mut buf) == Err(Errno::RANGE)));
    }
    let len = match form {
        XattrForm::Size => return Ok(size),
        XattrForm::Exact => size as usize,
        XattrForm::TooSmall if size == 0 => return Ok(-1),
        XattrForm::TooSmall => size as usize - 1,
        XattrForm::Big => 65536,
    };
    if len == 0 {
        // A buffer of no bytes is a size query again: nothing more to ask. (A list of
        // size 0 has no names, the same as a list of internal names only.)
        return Ok(if list {
            hash_of((0i64, Vec::<u8>::new()))
        } else {
            -2
        });
    }
    let mut buf = vec![0u8; len];
    let n = second(outcome(call(&mut buf)))?;
    let mut got = buf[..n as usize].to_vec();
    if form != XattrForm::Size {
        // A list's order is the filesystem's: compare the set of names.
        let mut names: Vec<&[u8]> = got.split(|b| *b == 0).collect();
        names.sort();
        got = names.join(&0u8);
    }
    Ok(hash_of((n, got)))
}

/// Result of one operation: a value (bytes moved, a hash of what was read) or an errno.
/// Errors of a second step (write after a successful open) are offset by 1000.
pub type Outcome = Result<i64, i32>;

/// A syscall's result as an `Outcome`: what it returned (0 for nothing), or its errno.
fn outcome<T: TryInto<i64>>(r: io::Result<T>) -> Outcome {
    r.map(|v| v.try_into().unwrap_or(i64::MAX))
        .map_err(|e| e.raw_os_error())
}

fn open(root: &Path, p: &str, flags: OFlags, mode: u32) -> Result<OwnedFd, i32> {
    let fl = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    rustix::fs::open(root.join(p), fl, Mode::from_raw_mode(mode)).map_err(|e| e.raw_os_error())
}

fn second(r: Outcome) -> Outcome {
    r.map_err(|e| e + 1000)
}

fn timespec(t: Ts) -> Timespec {
    match t {
        Ts::Set(s, n) => Timespec {
            tv_sec: s,
            tv_nsec: n,
        },
        Ts::Now => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Ts::Omit => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
    }
}

fn hash_of(h: impl Hash) -> i64 {
    let mut s = DefaultHasher::new();
    h.hash(&mut s);
    (s.finish() >> 1) as i64
}

/// `chmod` of a path without following a symlink, as the C library does it
/// (`fchmodat(AT_SYMLINK_NOFOLLOW)`): rustix refuses that flag outright, which would turn
/// every chmod into `EOPNOTSUPP`.
#[allow(unsafe_code)]
fn lchmod(p: &Path, mode: u32) -> Outcome {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: fchmodat reads a NUL-terminated path that lives across the call.
    let r = unsafe { libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_SYMLINK_NOFOLLOW) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        Ok(0)
    }
}

/// Apply one operation to the tree under `root`.
pub fn apply(root: &Path, op: &Op) -> Outcome {
    let path = |p: &str| root.join(p);
    match op {
        Op::Open { p, fl, mode, data } => {
            let mut flags = match fl.acc {
                Acc::R => OFlags::RDONLY,
                Acc::W => OFlags::WRONLY,
                Acc::RW => OFlags::RDWR,
            };
            if fl.creat {
                flags |= OFlags::CREATE;
            }
            if fl.excl {
                flags |= OFlags::EXCL;
            }
            if fl.trunc {
                flags |= OFlags::TRUNC;
            }
            if fl.append {
                flags |= OFlags::APPEND;
            }
            let fd = open(root, p, flags, *mode)?;
            match data {
                None => Ok(0),
                Some(d) => second(outcome(rustix::io::write(&fd, &d.bytes()))),
            }
        }
        Op::Mknod { p, kind, mode } => {
            let (t, dev) = match kind {
                NodeKind::Fifo => (FileType::Fifo, 0),
                NodeKind::Sock => (FileType::Socket, 0),
                NodeKind::Chr => (FileType::CharacterDevice, makedev(60, 2)),
                NodeKind::Blk => (FileType::BlockDevice, makedev(60, 1)),
                NodeKind::Chr00 => (FileType::CharacterDevice, 0),
            };
            outcome(mknodat(CWD, path(p), t, Mode::from_raw_mode(*mode), dev).map(|()| 0))
        }
        Op::Mkdir { p, mode } => {
            outcome(mkdirat(CWD, path(p), Mode::from_raw_mode(*mode)).map(|()| 0))
        }
        Op::Symlink { target, p } => outcome(symlinkat(*target, CWD, path(p)).map(|()| 0)),
        // link(2) never follows a symlink on Linux: linkat without AT_SYMLINK_FOLLOW.
        Op::Link { from, to } => {
            outcome(linkat(CWD, path(from), CWD, path(to), AtFlags::empty()).map(|()| 0))
        }
        Op::Unlink(p) => outcome(unlinkat(CWD, path(p), AtFlags::empty()).map(|()| 0)),
        Op::Rmdir(p) => outcome(unlinkat(CWD, path(p), AtFlags::REMOVEDIR).map(|()| 0)),
        Op::Rename { from, to, how } => {
            let flags = match how {
                RenameHow::Plain => RenameFlags::empty(),
                RenameHow::NoReplace => RenameFlags::NOREPLACE,
                RenameHow::Exchange => RenameFlags::EXCHANGE,
            };
            outcome(renameat_with(CWD, path(from), CWD, path(to), flags).map(|()| 0))
        }
        Op::Chmod { p, mode } => lchmod(&path(p), *mode),
        Op::Chown { p, uid, gid } => {
            let (u, g) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
            outcome(chownat(CWD, path(p), u, g, AtFlags::SYMLINK_NOFOLLOW).map(|()| 0))
        }
        // Follows a symlink: every target is inside the tree or missing.
        Op::Truncate { p, len } => truncate(&path(p), *len)
            .map(|()| 0)
            .map_err(|e| e.raw_os_error().unwrap_or(-1)),
        Op::Utimens { p, atime, mtime } => {
            let times = Timestamps {
                last_access: timespec(*atime),
                last_modification: timespec(*mtime),
            };
            outcome(utimensat(CWD, path(p), &times, AtFlags::SYMLINK_NOFOLLOW).map(|()| 0))
        }
        Op::Write { p, off, data } => {
            let fd = open(root, p, OFlags::WRONLY, 0)?;
            second(outcome(pwrite(&fd, &data.bytes(), *off)))
        }
        Op::Fallocate { p, how, off, len } => {
            let fd = open(root, p, OFlags::RDWR, 0)?;
            let mode = match how {
                Falloc::Alloc => FallocateFlags::empty(),
                Falloc::KeepSize => FallocateFlags::KEEP_SIZE,
                Falloc::PunchHole => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            };
            second(outcome(fallocate(&fd, mode, *off, *len).map(|()| 0)))
        }
        Op::CopyRange {
            from,
            to,
            off_in,
            off_out,
            len,
        } => {
            let fi = open(root, from, OFlags::RDONLY, 0)?;
            let fo = open(root, to, OFlags::WRONLY, 0).map_err(|e| e + 1000)?;
            let (mut oi, mut oo) = (*off_in, *off_out);
            let r = copy_file_range(&fi, Some(&mut oi), &fo, Some(&mut oo), *len as usize);
            outcome(r).map_err(|e| e + 2000)
        }
        Op::SetXattr {
            p,
            name,
            value,
            how,
        } => {
            let flags = match how {
                XattrHow::Any => XattrFlags::empty(),
                XattrHow::Create => XattrFlags::CREATE,
                XattrHow::Replace => XattrFlags::REPLACE,
            };
            outcome(lsetxattr(path(p), *name, value.as_bytes(), flags).map(|()| 0))
        }
        Op::RemoveXattr { p, name } => outcome(lremovexattr(path(p), *name).map(|()| 0)),
        Op::GetXattr { p, name, form } => {
            let p = path(p);
            xattr_form(*form, false, |buf| lgetxattr(&p, *name, buf))
        }
        Op::ListXattr { p, form } => {
            let p = path(p);
            xattr_form(*form, true, |buf| llistxattr(&p, buf))
        }
        Op::Read(p) => {
            let mut f = fs::File::from(open(root, p, OFlags::RDONLY, 0)?);
            let mut buf = Vec::new();
            match f.read_to_end(&mut buf) {
                Ok(_) => Ok(hash_of(&buf)),
                Err(e) => Err(e.raw_os_error().unwrap_or(-1) + 1000),
            }
        }
        Op::Stat(p) => {
            let md =
                fs::symlink_metadata(root.join(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            let ft = md.file_type();
            let dir = ft.is_dir();
            let dev = if ft.is_char_device() || ft.is_block_device() {
                md.rdev()
            } else {
                0
            };
            Ok(hash_of((
                md.mode(),
                md.uid(),
                md.gid(),
                if dir { 0 } else { md.size() },
                // Link counts are compared in the whole-tree snapshots, which know the
                // accepted differences (see `accept_visible_link_counts`).
                dev,
                list_xattrs(&root.join(p)),
            )))
        }
        Op::List(p) => {
            let rd = fs::read_dir(root.join(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            let mut names = Vec::new();
            for e in rd {
                let e = e.map_err(|e| e.raw_os_error().unwrap_or(-1) + 1000)?;
                // Names that cannot be found are the kernel's phantom whiteouts (see
                // `SnapOpts::skip_phantoms`); layerfs never lists them.
                if fs::symlink_metadata(e.path()).is_ok() {
                    names.push(e.file_name());
                }
            }
            names.sort();
            Ok(hash_of(names))
        }
    }
}

// ---------------------------------------------------------------------------- strategies

fn path() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(PATHS)
}

fn file_mode() -> impl Strategy<Value = u32> {
    proptest::sample::select(&[0o644u32, 0o600, 0o755, 0o4755, 0o2711, 0o444, 0o000][..])
}

fn dir_mode() -> impl Strategy<Value = u32> {
    proptest::sample::select(&[0o755u32, 0o700, 0o1777, 0o2775, 0o555][..])
}

fn lent() -> impl Strategy<Value = LEnt> {
    prop_oneof![
        4 => (
            prop_oneof![Just(LData::Empty), Just(LData::Small), Just(LData::Large), Just(LData::Sparse)],
            file_mode(),
            0..OWNERS.len(),
            any::<bool>()
        )
            .prop_map(|(data, mode, owner, xattr)| LEnt::File { data, mode, owner, xattr }),
        3 => (any::<bool>(), dir_mode()).prop_map(|(opaque, mode)| LEnt::Dir { opaque, mode }),
        1 => proptest::sample::select(TARGETS).prop_map(LEnt::Symlink),
        2 => Just(LEnt::Whiteout),
        1 => Just(LEnt::Fifo),
        1 => Just(LEnt::Dev),
        1 => path().prop_map(LEnt::Link),
    ]
}

/// The bottom layer of every stack: each pool path exists, so operations find things.
pub fn base_layer() -> LayerSpec {
    let file = |data, mode, owner, xattr| LEnt::File {
        data,
        mode,
        owner,
        xattr,
    };
    vec![
        (
            "d",
            LEnt::Dir {
                opaque: false,
                mode: 0o755,
            },
        ),
        (
            "e",
            LEnt::Dir {
                opaque: false,
                mode: 0o750,
            },
        ),
        (
            "d/e",
            LEnt::Dir {
                opaque: false,
                mode: 0o755,
            },
        ),
        ("a", file(LData::Small, 0o644, 0, false)),
        ("d/a", file(LData::Large, 0o640, 1, true)),
        ("e/a", file(LData::Sparse, 0o600, 0, false)),
        ("d/e/a", file(LData::Small, 0o4755, 2, true)),
        ("b", LEnt::Symlink("a")),
        ("e/b", LEnt::Link("d/a")),
        ("d/e/b", LEnt::Fifo),
    ]
}

/// Zero to three random lower layers above the base layer, top first.
pub fn stack() -> impl Strategy<Value = Vec<LayerSpec>> {
    proptest::collection::vec(proptest::collection::vec((path(), lent()), 0..10), 0..=3).prop_map(
        |mut v| {
            v.push(base_layer());
            v
        },
    )
}

fn ts() -> impl Strategy<Value = Ts> {
    prop_oneof![
        Just(Ts::Set(1_100_000_000, 0)),
        Just(Ts::Set(1_200_000_000, 123_456_789)),
        Just(Ts::Now),
        Just(Ts::Omit),
    ]
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![Just(Data::X), Just(Data::Hello), Just(Data::Big)]
}

fn offset() -> impl Strategy<Value = u64> {
    proptest::sample::select(&[0u64, 3, 4096, 600_000, 2 << 20][..])
}

fn openfl() -> impl Strategy<Value = OpenFl> {
    (
        prop_oneof![Just(Acc::R), Just(Acc::W), Just(Acc::RW)],
        any::<bool>(),
        any::<bool>(),
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(acc, creat, excl, trunc, append)| OpenFl {
            acc,
            creat,
            excl: creat && excl,
            trunc,
            append,
        })
}

fn xattr_form_strategy() -> impl Strategy<Value = XattrForm> {
    prop_oneof![
        Just(XattrForm::Size),
        Just(XattrForm::Exact),
        Just(XattrForm::TooSmall),
        Just(XattrForm::Big)
    ]
}

pub fn op() -> impl Strategy<Value = Op> {
    let xname = proptest::sample::select(&["user.a", "user.b", "user.lower", "trusted.t"][..]);
    prop_oneof![
        3 => (path(), openfl(), file_mode(), proptest::option::of(data()))
            .prop_map(|(p, fl, mode, data)| Op::Open { p, fl, mode, data }),
        1 => (
            path(),
            prop_oneof![
                Just(NodeKind::Fifo),
                Just(NodeKind::Sock),
                Just(NodeKind::Chr),
                Just(NodeKind::Blk),
                Just(NodeKind::Chr00)
            ],
            file_mode()
        )
            .prop_map(|(p, kind, mode)| Op::Mknod { p, kind, mode }),
        2 => (path(), dir_mode()).prop_map(|(p, mode)| Op::Mkdir { p, mode }),
        1 => (proptest::sample::select(TARGETS), path()).prop_map(|(target, p)| Op::Symlink { target, p }),
        2 => (path(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        2 => path().prop_map(Op::Unlink),
        2 => path().prop_map(Op::Rmdir),
        4 => (
            path(),
            path(),
            prop_oneof![3 => Just(RenameHow::Plain), 1 => Just(RenameHow::NoReplace), 1 => Just(RenameHow::Exchange)]
        )
            .prop_map(|(from, to, how)| Op::Rename { from, to, how }),
        1 => (path(), prop_oneof![file_mode(), dir_mode()]).prop_map(|(p, mode)| Op::Chmod { p, mode }),
        1 => (
            path(),
            proptest::option::of(proptest::sample::select(&[0u32, 1000, 1234][..])),
            proptest::option::of(proptest::sample::select(&[0u32, 100, 1000][..]))
        )
            .prop_map(|(p, uid, gid)| Op::Chown { p, uid, gid }),
        1 => (path(), proptest::sample::select(&[0u64, 1, 5000, 700_000][..]))
            .prop_map(|(p, len)| Op::Truncate { p, len }),
        1 => (path(), ts(), ts()).prop_map(|(p, atime, mtime)| Op::Utimens { p, atime, mtime }),
        2 => (path(), offset(), data()).prop_map(|(p, off, data)| Op::Write { p, off, data }),
        1 => (
            path(),
            prop_oneof![Just(Falloc::Alloc), Just(Falloc::KeepSize), Just(Falloc::PunchHole)],
            offset(),
            proptest::sample::select(&[1u64, 4096, 100_000][..])
        )
            .prop_map(|(p, how, off, len)| Op::Fallocate { p, how, off, len }),
        1 => (path(), path(), offset(), offset(), proptest::sample::select(&[1u64, 5000, 1 << 20][..]))
            .prop_map(|(from, to, off_in, off_out, len)| Op::CopyRange { from, to, off_in, off_out, len }),
        1 => (
            path(),
            xname.clone(),
            proptest::sample::select(&["", "v1", "a longer value"][..]),
            prop_oneof![Just(XattrHow::Any), Just(XattrHow::Create), Just(XattrHow::Replace)]
        )
            .prop_map(|(p, name, value, how)| Op::SetXattr { p, name, value, how }),
        1 => (path(), xname.clone()).prop_map(|(p, name)| Op::RemoveXattr { p, name }),
        1 => (path(), xname, xattr_form_strategy())
            .prop_map(|(p, name, form)| Op::GetXattr { p, name, form }),
        1 => (path(), xattr_form_strategy()).prop_map(|(p, form)| Op::ListXattr { p, form }),
        1 => path().prop_map(Op::Read),
        1 => path().prop_map(Op::Stat),
        1 => prop_oneof![Just(""), Just("d"), Just("e"), Just("d/e")].prop_map(Op::List),
    ]
}

// ---------------------------------------------------------------------------- one case

/// A case: lower layers (top first), the marker form layerfs reads them in, operations.
#[derive(Clone)]
pub struct Case {
    pub layers: Vec<LayerSpec>,
    pub form: Form,
    pub ops: Vec<Op>,
}

impl fmt::Debug for Case {
    /// Printed as Rust source, ready to paste into a regression test.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Case {{")?;
        writeln!(f, "    layers: vec![")?;
        for l in &self.layers {
            writeln!(f, "        vec![")?;
            for (p, e) in l {
                writeln!(f, "            ({p:?}, {e:?}),")?;
            }
            writeln!(f, "        ],")?;
        }
        writeln!(f, "    ],")?;
        writeln!(f, "    form: Form::{:?},", self.form)?;
        writeln!(f, "    ops: vec![")?;
        for o in &self.ops {
            writeln!(f, "        Op::{o:?},")?;
        }
        writeln!(f, "    ],")?;
        write!(f, "}}")
    }
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        stack(),
        prop_oneof![3 => Just(Form::Kernel), 1 => Just(Form::Oci)],
        proptest::collection::vec(op(), 1..40),
    )
        .prop_map(|(layers, form, ops)| Case { layers, form, ops })
}

fn snap_opts(cutoff: i64) -> SnapOpts {
    SnapOpts {
        dir_nlink: true,
        mtimes: false,
        mtime_cutoff: Some(cutoff),
        content: true,
        skip_phantoms: false,
    }
}

/// Compare a kernel tree with a layerfs tree (or the kernel's view of layerfs's upper).
fn compare(a: &Tree, b: &Tree, lowers: &[PathBuf], what: &str) -> Result<(), String> {
    let d = diff_trees(a, &accept_visible_link_counts(a, b, lowers));
    if d.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {} differences:\n{}",
            d.len(),
            d.join("\n")
        ))
    }
}

/// Run one case: the same operations on a kernel overlay and on layerfs, step by step,
/// then compare whole trees, again after a remount, and with the kernel mounting the
/// upper dir that layerfs wrote.
pub fn run_case(c: &Case) -> Result<(), String> {
    let t = tempfile::tempdir().unwrap();
    let base = t.path();
    let cutoff = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let klowers = build_stack(base, "kl", &c.layers, Form::Kernel);
    let llowers = match c.form {
        Form::Kernel => klowers.clone(),
        Form::Oci => build_stack(base, "ol", &c.layers, Form::Oci),
    };
    let all_lowers: Vec<PathBuf> = klowers.iter().chain(llowers.iter()).cloned().collect();
    let lowers_check = LowersUnchanged::record(&all_lowers);
    let ks = rw_stack(base, &klowers, "k");
    let ls = rw_stack(base, &llowers, "l");
    let (km, lm) = (base.join("mk"), base.join("ml"));
    let mut kg = mount_kernel(&ks, &km);
    let mut lg = mount_layerfs(&ls, &lm, &[]);

    // No snapshot before the operations: it would look up every name first, and
    // operations must also work on names this mount has not seen yet.
    let mut log = Vec::new();
    for (i, op) in c.ops.iter().enumerate() {
        let rk = apply(&km, op);
        let rl = apply(&lm, op);
        log.push(format!("  {i}: {op:?} -> kernel {rk:?}, layerfs {rl:?}"));
        if rk != rl {
            return Err(format!(
                "step {i} differs: {op:?}\n  kernel:  {}\n  layerfs: {}\nsteps:\n{}",
                show(rk),
                show(rl),
                log.join("\n")
            ));
        }
    }
    let steps = log.join("\n");
    if std::env::var_os("LAYERFS_PROPTEST_VERBOSE").is_some() {
        eprintln!("{c:?}\n{steps}");
    }
    let tk = snapshot(&km, &snap_opts(cutoff).kernel());
    let tl = snapshot(&lm, &snap_opts(cutoff));
    compare(
        &tk,
        &tl,
        &klowers,
        "after the operations (kernel vs layerfs)",
    )
    .map_err(|e| format!("{e}\nsteps:\n{steps}"))?;
    let clashes = ino_clashes(&tl);
    if !clashes.is_empty() {
        return Err(format!(
            "layerfs inode numbers not unique:\n{}\nsteps:\n{steps}",
            clashes.join("\n")
        ));
    }

    lg.unmount();
    let mut lg = mount_layerfs(&ls, &lm, &[]);
    let tl2 = snapshot(&lm, &snap_opts(cutoff));
    compare(&tk, &tl2, &klowers, "after remounting layerfs")
        .map_err(|e| format!("{e}\nsteps:\n{steps}"))?;
    let mut moved = ino_changes(&tl, &tl2);
    // A file opened for writing while a read-only descriptor of it is open (one op does
    // that: a copy range between two names of one file) gets a new kernel inode, and a
    // number from the successor range until the next mount (see `OverlayFs::supersede`;
    // `tests/mount/passthrough.rs` pins when exactly).
    let holds_two = c.ops.iter().any(|o| matches!(o, Op::CopyRange { .. }));
    moved.retain(|m| !(holds_two && from_successor_range(m)));
    if !moved.is_empty() {
        return Err(format!(
            "inode numbers changed by a remount:\n{}\nsteps:\n{steps}",
            moved.join("\n")
        ));
    }
    lg.unmount();
    kg.unmount();

    // The kernel reads what layerfs wrote (with the kernel form of the lower layers).
    let ks2 = with_lowers(&ls, &klowers);
    let kg2 = mount_kernel(&ks2, &km);
    let tkl = snapshot(&km, &snap_opts(cutoff).kernel());
    drop(kg2);
    compare(&tk, &tkl, &klowers, "kernel mounting the layerfs upper dir")
        .map_err(|e| format!("{e}\nsteps:\n{steps}"))?;

    let d = lowers_check.diffs();
    if !d.is_empty() {
        return Err(format!(
            "a lower layer was written:\n{}\nsteps:\n{steps}",
            d.join("\n")
        ));
    }
    Ok(())
}

fn show(r: Outcome) -> String {
    match r {
        Ok(v) => format!("Ok({v})"),
        Err(e) => {
            let (base, step) = (e % 1000, e / 1000);
            format!(
                "errno {e} ({}, step {step})",
                std::io::Error::from_raw_os_error(base)
            )
        }
    }
}

/// Whether an `ino_changes` line starts from a successor node's number.
fn from_successor_range(line: &str) -> bool {
    line.rsplit(": ")
        .next()
        .and_then(|r| r.split(" -> ").next())
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n >= SUCCESSOR_INOS)
}
