//! The overlay core driven in process, the way the kernel drives it, against a small
//! model of the merged view. No mount and no root: it runs in every `cargo test`.
//!
//! A mounted test cannot choose when the kernel forgets an inode, when a RELEASE arrives,
//! or where a reader resumes a listing; this driver can. It plays the kernel's part: it
//! resolves paths through its own dentry cache (a LOOKUP only for names it does not hold),
//! keeps the kernel's lookup count per node id (one count per id, as the kernel's inode
//! does, even when a number is reused by a new object), and sends FORGET only when the
//! kernel would: for an inode with no dentry and no open file, at a moment the case
//! chooses. Every operation's result is compared with the model; `ESTALE` from the core is
//! always a failure (the kernel would have had no reason to see it). At the end the whole
//! tree, read through the core, must be the model's.
//!
//! The lower layers are plain files and directories (names that are files in one layer
//! and directories in another included); whiteouts, renames of lower directories and
//! every other rule are the mounted differential test's business.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::Path;

use layerfs::overlay::readdir::{DirEntryRef, DirReply};
use layerfs::overlay::{Ctx, Options, OverlayFs, ROOT_INO};
use proptest::prelude::*;
use rustix::io::Errno;
use support::rng::env_u64;

/// Every path a case may name; parents come first.
const PATHS: &[&str] = &[
    "a", "b", "c", "d", "e", "d/a", "d/b", "d/e", "e/a", "e/b", "d/e/a", "d/e/b",
];

/// One entry of a lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lower {
    File(u8),
    Dir,
}

#[derive(Debug, Clone)]
enum Op {
    Create(&'static str),
    Mkdir(&'static str),
    Unlink(&'static str),
    Rmdir(&'static str),
    Rename(&'static str, &'static str),
    Write(&'static str, u8),
    Read(&'static str),
    Stat(&'static str),
    List(&'static str),
    /// Open a file and keep the handle; `Release` closes the oldest one later.
    Hold(&'static str),
    Release,
    /// Start reading a directory with a small buffer; `Resume` finishes it later.
    ListStart(&'static str),
    Resume,
    /// The kernel evicts up to N unused dentries (leaves first).
    Evict(u8),
    /// The kernel sends the FORGETs of up to N inodes it no longer holds.
    Forget(u8),
}

/// A node of the model: the merged view as POSIX promises it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MNode {
    Dir,
    File(Vec<u8>),
}

/// The merged view of plain lower layers (top first): the top layer that has a name
/// decides its type; a directory merges the same-named directories below it down to the
/// first layer where the name is not a directory.
fn merged(layers: &[Vec<(&'static str, Lower)>]) -> BTreeMap<String, MNode> {
    let mut real: Vec<BTreeMap<String, Lower>> = Vec::new();
    for spec in layers {
        let mut m: BTreeMap<String, Lower> = BTreeMap::new();
        for (p, e) in spec {
            let blocked = parents(p)
                .iter()
                .any(|a| matches!(m.get(*a), Some(Lower::File(_))));
            if m.contains_key(*p) || blocked {
                continue;
            }
            for a in parents(p) {
                m.entry(a.to_string()).or_insert(Lower::Dir);
            }
            m.insert(p.to_string(), *e);
        }
        real.push(m);
    }
    let mut out = BTreeMap::new();
    fn visit(
        real: &[BTreeMap<String, Lower>],
        dir: &str,
        from: &[usize],
        out: &mut BTreeMap<String, MNode>,
    ) {
        let mut names: BTreeSet<String> = BTreeSet::new();
        for &i in from {
            for k in real[i].keys() {
                let rest = if dir.is_empty() {
                    Some(k.as_str())
                } else {
                    k.strip_prefix(&format!("{dir}/"))
                };
                if let Some(r) = rest
                    && !r.contains('/')
                {
                    names.insert(k.clone());
                }
            }
        }
        for p in names {
            let mut layers = Vec::new();
            let mut kind = None;
            for &i in from {
                match (real[i].get(&p), kind) {
                    (None, _) => continue,
                    (Some(Lower::File(b)), None) => {
                        out.insert(p.clone(), MNode::File(vec![*b; 3]));
                        kind = Some(false);
                        break;
                    }
                    (Some(Lower::File(_)), Some(_)) => break,
                    (Some(Lower::Dir), None) => {
                        kind = Some(true);
                        layers.push(i);
                    }
                    (Some(Lower::Dir), Some(_)) => layers.push(i),
                }
            }
            if kind == Some(true) {
                out.insert(p.clone(), MNode::Dir);
                visit(real, &p, &layers, out);
            }
        }
    }
    let all: Vec<usize> = (0..real.len()).collect();
    visit(&real, "", &all, &mut out);
    out
}

fn parents(p: &str) -> Vec<&str> {
    p.char_indices()
        .filter(|(_, c)| *c == '/')
        .map(|(i, _)| &p[..i])
        .collect()
}

fn parent_of(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

fn name_of(p: &str) -> &OsStr {
    OsStr::new(p.rsplit('/').next().unwrap())
}

fn build_layer(dir: &Path, spec: &[(&'static str, Lower)]) {
    fs::create_dir_all(dir).unwrap();
    let mut taken: BTreeMap<&str, bool> = BTreeMap::new();
    for (p, e) in spec {
        let par = parents(p);
        if taken.contains_key(p) || par.iter().any(|a| taken.get(a) == Some(&false)) {
            continue;
        }
        for a in par {
            if !taken.contains_key(a) {
                fs::create_dir(dir.join(a)).unwrap();
                taken.insert(a, true);
            }
        }
        match e {
            Lower::File(b) => fs::write(dir.join(p), [*b; 3]).unwrap(),
            Lower::Dir => fs::create_dir(dir.join(p)).unwrap(),
        }
        taken.insert(p, matches!(e, Lower::Dir));
    }
}

/// A reply buffer of `cap` entries.
struct Buf {
    cap: usize,
    got: Vec<(OsString, u64)>,
}

impl DirReply for Buf {
    fn add(&mut self, e: DirEntryRef<'_>) -> bool {
        if self.got.len() == self.cap {
            return true;
        }
        self.got.push((e.name.to_os_string(), e.off));
        false
    }
}

/// The kernel's side: dentries, lookup counts, open files, listings in progress.
struct Kernel<'f> {
    fs: &'f OverlayFs,
    ctx: Ctx,
    /// path → node id (positive dentries only).
    dentries: BTreeMap<String, u64>,
    /// node id → the kernel inode that answers to it now: whether it is a directory, its
    /// generation, and the lookups it holds.
    counts: HashMap<u64, (bool, u64, u64)>,
    /// Kernel inodes a reply with the same node id but another type or generation
    /// replaced (the kernel marks the old one bad and makes a new one): their lookups,
    /// forgotten separately.
    replaced: Vec<(u64, u64)>,
    /// Open files: (node id, handle).
    open: Vec<(u64, u64)>,
    /// A listing in progress: directory, node id, names so far, offset, and the names
    /// the model had when it started.
    listing: Option<Listing>,
}

type Res = Result<String, i32>;

struct Listing {
    dir: String,
    id: u64,
    names: Vec<OsString>,
    offset: u64,
    at_start: BTreeSet<String>,
}

fn errno(e: Errno) -> i32 {
    e.raw_os_error()
}

impl<'f> Kernel<'f> {
    /// A reply (lookup, create, mkdir) gave the kernel a lookup of `id`, an object of
    /// that type and generation. A number the kernel still holds for an object of another
    /// type or generation (a deleted file whose number a new object reuses) is another
    /// kernel inode.
    fn got(&mut self, id: u64, is_dir: bool, generation: u64) {
        let e = self.counts.entry(id).or_insert((is_dir, generation, 0));
        if e.0 != is_dir || e.1 != generation {
            if e.2 > 0 {
                self.replaced.push((id, e.2));
            }
            *e = (is_dir, generation, 0);
        }
        e.2 += 1;
    }

    /// The node id of `p`, looking up what the dentry cache lacks; ENOENT/ENOTDIR as the
    /// path walk would answer.
    fn walk(&mut self, p: &str) -> Result<u64, i32> {
        if p.is_empty() {
            return Ok(ROOT_INO);
        }
        let mut cur = ROOT_INO;
        let mut so_far = String::new();
        for comp in p.split('/') {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(comp);
            let attr = self.fs.getattr(cur, None).map_err(errno)?;
            if !attr.is_dir() {
                return Err(libc::ENOTDIR);
            }
            cur = match self.dentries.get(&so_far) {
                Some(&id) => id,
                None => match self.fs.lookup(cur, OsStr::new(comp)) {
                    Ok(e) => {
                        self.got(e.attr.ino, e.attr.is_dir(), e.generation);
                        self.dentries.insert(so_far.clone(), e.attr.ino);
                        e.attr.ino
                    }
                    Err(e) => return Err(errno(e)),
                },
            };
        }
        Ok(cur)
    }

    /// The node id of directory `p` (ENOTDIR when it is something else).
    fn walk_dir(&mut self, p: &str) -> Result<u64, i32> {
        let id = self.walk(p)?;
        if self.is_dir(id)? {
            Ok(id)
        } else {
            Err(libc::ENOTDIR)
        }
    }

    fn is_dir(&self, id: u64) -> Result<bool, i32> {
        Ok(self.fs.getattr(id, None).map_err(errno)?.is_dir())
    }

    /// Drop the dentries of `p` and below.
    fn drop_subtree(&mut self, p: &str) {
        let pre = format!("{p}/");
        self.dentries.retain(|k, _| k != p && !k.starts_with(&pre));
    }

    fn apply(&mut self, op: &Op) -> Res {
        match *op {
            Op::Create(p) => {
                let parent = self.walk_dir(parent_of(p))?;
                if self.walk(p).is_ok() {
                    return Err(libc::EEXIST);
                }
                let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
                let (e, o) = self
                    .fs
                    .create(self.ctx, parent, name_of(p), 0o644, flags)
                    .map_err(errno)?;
                self.got(e.attr.ino, false, e.generation);
                self.dentries.insert(p.to_string(), e.attr.ino);
                self.fs.release(o.fh);
                Ok(String::new())
            }
            Op::Mkdir(p) => {
                let parent = self.walk_dir(parent_of(p))?;
                if self.walk(p).is_ok() {
                    return Err(libc::EEXIST);
                }
                let e = self
                    .fs
                    .mkdir(self.ctx, parent, name_of(p), 0o755)
                    .map_err(errno)?;
                self.got(e.attr.ino, true, e.generation);
                self.dentries.insert(p.to_string(), e.attr.ino);
                Ok(String::new())
            }
            Op::Unlink(p) => {
                let parent = self.walk_dir(parent_of(p))?;
                let id = self.walk(p)?;
                if self.is_dir(id)? {
                    return Err(libc::EISDIR);
                }
                self.fs.unlink(parent, name_of(p)).map_err(errno)?;
                self.drop_subtree(p);
                Ok(String::new())
            }
            Op::Rmdir(p) => {
                let parent = self.walk_dir(parent_of(p))?;
                let id = self.walk(p)?;
                if !self.is_dir(id)? {
                    return Err(libc::ENOTDIR);
                }
                self.fs.rmdir(parent, name_of(p)).map_err(errno)?;
                self.drop_subtree(p);
                Ok(String::new())
            }
            Op::Rename(a, b) => {
                let pa = self.walk_dir(parent_of(a))?;
                let pb = self.walk_dir(parent_of(b))?;
                let src = self.walk(a)?;
                let src_dir = self.is_dir(src)?;
                if src_dir && (b == a || b.starts_with(&format!("{a}/"))) {
                    return if b == a {
                        Ok(String::new())
                    } else {
                        Err(libc::EINVAL)
                    };
                }
                if let Ok(dst) = self.walk(b) {
                    if dst == src {
                        return Ok(String::new());
                    }
                    match (src_dir, self.is_dir(dst)?) {
                        (true, false) => return Err(libc::ENOTDIR),
                        (false, true) => return Err(libc::EISDIR),
                        _ => {}
                    }
                    if a.starts_with(&format!("{b}/")) {
                        return Err(libc::ENOTEMPTY);
                    }
                }
                self.fs
                    .rename(pa, name_of(a), pb, name_of(b), 0)
                    .map_err(errno)?;
                self.drop_subtree(b);
                let moved: Vec<(String, u64)> = self
                    .dentries
                    .iter()
                    .filter(|(k, _)| *k == a || k.starts_with(&format!("{a}/")))
                    .map(|(k, v)| (format!("{b}{}", &k[a.len()..]), *v))
                    .collect();
                self.drop_subtree(a);
                self.dentries.extend(moved);
                Ok(String::new())
            }
            Op::Write(p, byte) => {
                let id = self.walk(p)?;
                if self.is_dir(id)? {
                    return Err(libc::EISDIR);
                }
                let o = self.fs.open(self.ctx, id, libc::O_WRONLY).map_err(errno)?;
                let r = self.fs.write(Ctx::ROOT, o.fh, 1, &[byte], false);
                self.fs.release(o.fh);
                r.map_err(errno)?;
                Ok(String::new())
            }
            Op::Read(p) => {
                let id = self.walk(p)?;
                if self.is_dir(id)? {
                    return Err(libc::EISDIR);
                }
                let o = self.fs.open(self.ctx, id, libc::O_RDONLY).map_err(errno)?;
                let mut buf = vec![0u8; 64];
                let r = self.fs.read(o.fh, 0, &mut buf);
                self.fs.release(o.fh);
                let n = r.map_err(errno)?;
                Ok(format!("{:?}", &buf[..n]))
            }
            Op::Stat(p) => {
                let id = self.walk(p)?;
                let a = self.fs.getattr(id, None).map_err(errno)?;
                Ok(if a.is_dir() {
                    "dir".into()
                } else {
                    format!("file {}", a.size)
                })
            }
            Op::List(p) => {
                let id = self.walk(p)?;
                if !self.is_dir(id)? {
                    return Err(libc::ENOTDIR);
                }
                Ok(format!("{:?}", self.list_all(id, 0)?.0))
            }
            Op::Hold(p) => {
                let id = self.walk(p)?;
                if self.is_dir(id)? {
                    return Err(libc::EISDIR);
                }
                let o = self.fs.open(self.ctx, id, libc::O_RDONLY).map_err(errno)?;
                self.open.push((id, o.fh));
                Ok(String::new())
            }
            Op::Release => {
                if !self.open.is_empty() {
                    let (_, fh) = self.open.remove(0);
                    self.fs.release(fh);
                }
                Ok(String::new())
            }
            Op::ListStart(p) => {
                let id = self.walk(p)?;
                if !self.is_dir(id)? {
                    return Err(libc::ENOTDIR);
                }
                let mut b = Buf {
                    cap: 3,
                    got: Vec::new(),
                };
                self.fs.readdir_into(id, 0, &mut b).map_err(errno)?;
                let offset = b.got.last().map_or(0, |x| x.1);
                let names = b.got.into_iter().map(|x| x.0).collect();
                self.listing = Some(Listing {
                    dir: p.to_string(),
                    id,
                    names,
                    offset,
                    at_start: BTreeSet::new(),
                });
                Ok(String::new())
            }
            Op::Resume | Op::Evict(_) | Op::Forget(_) => Ok(String::new()),
        }
    }

    /// Read a whole listing from `offset` in small buffers.
    fn list_all(&mut self, id: u64, mut offset: u64) -> Result<(Vec<OsString>, u64), i32> {
        let mut names = Vec::new();
        loop {
            let mut b = Buf {
                cap: 3,
                got: Vec::new(),
            };
            self.fs.readdir_into(id, offset, &mut b).map_err(errno)?;
            if b.got.is_empty() {
                return Ok((names, offset));
            }
            offset = b.got.last().unwrap().1;
            names.extend(
                b.got
                    .into_iter()
                    .map(|x| x.0)
                    .filter(|n| n != "." && n != ".."),
            );
        }
    }

    /// Evict up to `n` dentries nobody uses: leaves first, never an open file's.
    fn evict(&mut self, n: usize) {
        for _ in 0..n {
            // Open files and a directory being listed pin their dentries.
            let open: BTreeSet<u64> = self
                .open
                .iter()
                .map(|x| x.0)
                .chain(self.listing.as_ref().map(|l| l.id))
                .collect();
            let victim = self
                .dentries
                .iter()
                .filter(|(k, v)| {
                    let pre = format!("{k}/");
                    !open.contains(v) && !self.dentries.keys().any(|c| c.starts_with(&pre))
                })
                .map(|(k, _)| k.clone())
                .next_back();
            match victim {
                Some(k) => {
                    self.dentries.remove(&k);
                }
                None => return,
            }
        }
    }

    /// FORGET up to `n` inodes the kernel no longer holds (no dentry, no open file).
    fn forget(&mut self, n: usize) {
        let held: BTreeSet<u64> = self
            .dentries
            .values()
            .copied()
            .chain(self.open.iter().map(|x| x.0))
            .chain(self.listing.as_ref().map(|l| l.id))
            .collect();
        // Replaced kernel inodes go first: nothing refers to them by name any more.
        // (One whose number an open file also uses waits: that file may be its.)
        let mut budget = n;
        let open: BTreeSet<u64> = self.open.iter().map(|x| x.0).collect();
        let mut i = 0;
        while budget > 0 && i < self.replaced.len() {
            if open.contains(&self.replaced[i].0) {
                i += 1;
                continue;
            }
            let (id, c) = self.replaced.remove(i);
            self.fs.forget(id, c);
            budget -= 1;
        }
        let free: Vec<u64> = self
            .counts
            .keys()
            .copied()
            .filter(|id| !held.contains(id))
            .take(budget)
            .collect();
        for id in free {
            let (_, _, c) = self.counts.remove(&id).unwrap();
            self.fs.forget(id, c);
        }
    }
}

/// The model's answer to an operation (same conventions as `Kernel::apply`).
fn model_apply(m: &mut BTreeMap<String, MNode>, op: &Op) -> Res {
    let dir_ok = |m: &BTreeMap<String, MNode>, p: &str| -> Result<(), i32> {
        let mut so_far = String::new();
        for comp in p.split('/').filter(|c| !c.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(comp);
            match m.get(&so_far) {
                Some(MNode::Dir) => {}
                Some(_) => return Err(libc::ENOTDIR),
                None => return Err(libc::ENOENT),
            }
        }
        Ok(())
    };
    let get = |m: &BTreeMap<String, MNode>, p: &str| -> Result<MNode, i32> {
        dir_ok(m, parent_of(p))?;
        m.get(p).cloned().ok_or(libc::ENOENT)
    };
    let remove_subtree = |m: &mut BTreeMap<String, MNode>, p: &str| {
        let pre = format!("{p}/");
        m.retain(|k, _| k != p && !k.starts_with(&pre));
    };
    match *op {
        Op::Create(p) | Op::Mkdir(p) => {
            dir_ok(m, parent_of(p))?;
            if m.contains_key(p) {
                return Err(libc::EEXIST);
            }
            let n = if matches!(op, Op::Create(_)) {
                MNode::File(Vec::new())
            } else {
                MNode::Dir
            };
            m.insert(p.to_string(), n);
            Ok(String::new())
        }
        Op::Unlink(p) => match get(m, p)? {
            MNode::Dir => Err(libc::EISDIR),
            MNode::File(_) => {
                m.remove(p);
                Ok(String::new())
            }
        },
        Op::Rmdir(p) => match get(m, p)? {
            MNode::File(_) => Err(libc::ENOTDIR),
            MNode::Dir if !model_children(m, p).is_empty() => Err(libc::ENOTEMPTY),
            MNode::Dir => {
                m.remove(p);
                Ok(String::new())
            }
        },
        Op::Rename(a, b) => {
            dir_ok(m, parent_of(a))?;
            dir_ok(m, parent_of(b))?;
            let src = get(m, a)?;
            let src_dir = src == MNode::Dir;
            if src_dir && (b == a || b.starts_with(&format!("{a}/"))) {
                return if b == a {
                    Ok(String::new())
                } else {
                    Err(libc::EINVAL)
                };
            }
            if let Some(dst) = m.get(b).cloned() {
                if a == b {
                    return Ok(String::new());
                }
                match (src_dir, dst == MNode::Dir) {
                    (true, false) => return Err(libc::ENOTDIR),
                    (false, true) => return Err(libc::EISDIR),
                    _ => {}
                }
                if a.starts_with(&format!("{b}/"))
                    || (dst == MNode::Dir && !model_children(m, b).is_empty())
                {
                    return Err(libc::ENOTEMPTY);
                }
            }
            let moved: Vec<(String, MNode)> = m
                .iter()
                .filter(|(k, _)| *k == a || k.starts_with(&format!("{a}/")))
                .map(|(k, v)| (format!("{b}{}", &k[a.len()..]), v.clone()))
                .collect();
            remove_subtree(m, b);
            remove_subtree(m, a);
            m.extend(moved);
            Ok(String::new())
        }
        Op::Write(p, byte) => match get(m, p)? {
            MNode::Dir => Err(libc::EISDIR),
            MNode::File(mut d) => {
                if d.len() < 2 {
                    d.resize(2, 0);
                }
                d[1] = byte;
                m.insert(p.to_string(), MNode::File(d));
                Ok(String::new())
            }
        },
        Op::Read(p) => match get(m, p)? {
            MNode::Dir => Err(libc::EISDIR),
            MNode::File(d) => Ok(format!("{:?}", &d[..])),
        },
        Op::Stat(p) => match get(m, p)? {
            MNode::Dir => Ok("dir".into()),
            MNode::File(d) => Ok(format!("file {}", d.len())),
        },
        Op::List(p) | Op::ListStart(p) => {
            if !p.is_empty() {
                match get(m, p)? {
                    MNode::Dir => {}
                    MNode::File(_) => return Err(libc::ENOTDIR),
                }
            }
            if matches!(op, Op::ListStart(_)) {
                return Ok(String::new());
            }
            let c: Vec<OsString> = model_children(m, p)
                .into_iter()
                .map(OsString::from)
                .collect();
            Ok(format!("{c:?}"))
        }
        Op::Hold(p) => match get(m, p)? {
            MNode::Dir => Err(libc::EISDIR),
            MNode::File(_) => Ok(String::new()),
        },
        Op::Release | Op::Resume | Op::Evict(_) | Op::Forget(_) => Ok(String::new()),
    }
}

/// The whole tree through the core (path → "dir" or the file's bytes).
fn tree_of(
    k: &mut Kernel<'_>,
    dir: &str,
    id: u64,
    out: &mut BTreeMap<String, MNode>,
) -> Result<(), String> {
    let (names, _) = k
        .list_all(id, 0)
        .map_err(|e| format!("listing {dir:?}: errno {e}"))?;
    for n in names {
        let p = if dir.is_empty() {
            n.to_string_lossy().into_owned()
        } else {
            format!("{dir}/{}", n.to_string_lossy())
        };
        let e =
            k.fs.lookup(id, &n)
                .map_err(|e| format!("lookup of listed {p:?}: {e}"))?;
        k.got(e.attr.ino, e.attr.is_dir(), e.generation);
        if e.attr.is_dir() {
            out.insert(p.clone(), MNode::Dir);
            tree_of(k, &p, e.attr.ino, out)?;
        } else {
            let o =
                k.fs.open(k.ctx, e.attr.ino, libc::O_RDONLY)
                    .map_err(|e| format!("open {p:?}: {e}"))?;
            let mut buf = vec![0u8; 64];
            let r = k.fs.read(o.fh, 0, &mut buf);
            k.fs.release(o.fh);
            let n = r.map_err(|e| format!("read {p:?}: {e}"))?;
            out.insert(p, MNode::File(buf[..n].to_vec()));
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Case {
    layers: Vec<Vec<(&'static str, Lower)>>,
    ops: Vec<Op>,
}

fn run_case(c: &Case) -> Result<(), String> {
    let t = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lowers: Vec<_> = c
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let d = t.path().join(format!("l{i}"));
            build_layer(&d, l);
            d
        })
        .collect();
    let (upper, work) = (t.path().join("u"), t.path().join("w"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let fs_ = OverlayFs::new(Options::new(lowers, Some(upper), Some(work)))
        .map_err(|e| format!("open: {e}"))?;
    let mut model = merged(&c.layers);
    let mut k = Kernel {
        fs: &fs_,
        ctx: Ctx {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            pid: 1,
        },
        dentries: BTreeMap::new(),
        counts: HashMap::new(),
        replaced: Vec::new(),
        open: Vec::new(),
        listing: None,
    };
    let mut log = Vec::new();
    for (i, op) in c.ops.iter().enumerate() {
        let seen_before: Option<BTreeSet<String>> = match op {
            Op::ListStart(p) => Some(model_children(&model, p)),
            _ => None,
        };
        let got = k.apply(op);
        let want = model_apply(&mut model, op);
        log.push(format!("{i}: {op:?} -> {got:?}"));
        let same = match (op, &got, &want) {
            (Op::List(_), Ok(g), Ok(w)) => sorted_set(g) == sorted_set(w),
            _ => got == want,
        };
        if got == Err(libc::ESTALE) || !same {
            return Err(format!(
                "step {i} {op:?}: core {got:?}, model {want:?}\n{}",
                log.join("\n")
            ));
        }
        match op {
            Op::ListStart(_) => {
                if let (Some(l), Some(start)) = (k.listing.as_mut(), seen_before) {
                    l.at_start = start;
                }
            }
            Op::Resume => {
                // A directory removed since is dead: the kernel answers ENOENT itself.
                let alive = |l: &Listing| {
                    l.dir.is_empty()
                        || model.get(&l.dir) == Some(&MNode::Dir)
                            && k.dentries.get(&l.dir) == Some(&l.id)
                };
                if let Some(mut l) = k.listing.take().filter(alive) {
                    let rest = match k.list_all(l.id, l.offset) {
                        Ok((r, _)) => r,
                        Err(e) => {
                            return Err(format!(
                                "step {i}: resuming {:?}: errno {e}\n{}",
                                l.dir,
                                log.join("\n")
                            ));
                        }
                    };
                    l.names.extend(rest);
                    l.names.retain(|n| n != "." && n != "..");
                    let got: Vec<String> = l
                        .names
                        .iter()
                        .map(|n| n.to_string_lossy().into_owned())
                        .collect();
                    let uniq: BTreeSet<&String> = got.iter().collect();
                    if uniq.len() != got.len() {
                        return Err(format!(
                            "step {i}: listing of {:?} repeats a name: {got:?}\n{}",
                            l.dir,
                            log.join("\n")
                        ));
                    }
                    // Every name there from the start to the end was listed once.
                    let now = model_children(&model, &l.dir);
                    for n in l.at_start.intersection(&now) {
                        if !uniq.contains(n) {
                            return Err(format!(
                                "step {i}: resumed listing of {:?} misses {n:?} (got {got:?})\n{}",
                                l.dir,
                                log.join("\n")
                            ));
                        }
                    }
                }
            }
            Op::Evict(n) => k.evict(*n as usize),
            Op::Forget(n) => k.forget(*n as usize),
            _ => {}
        }
    }
    // Release what is open, let the kernel forget what it can, then compare trees.
    for (_, fh) in std::mem::take(&mut k.open) {
        fs_.release(fh);
    }
    k.forget(usize::MAX);
    let mut tree = BTreeMap::new();
    tree_of(&mut k, "", ROOT_INO, &mut tree).map_err(|e| format!("{e}\n{}", log.join("\n")))?;
    if tree != model {
        return Err(format!(
            "tree differs:\n  core:  {tree:?}\n  model: {model:?}\n{}",
            log.join("\n")
        ));
    }
    Ok(())
}

fn model_children(m: &BTreeMap<String, MNode>, p: &str) -> BTreeSet<String> {
    let pre = if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    };
    m.keys()
        .filter(|k| {
            k.starts_with(&pre) && !k[pre.len()..].is_empty() && !k[pre.len()..].contains('/')
        })
        .map(|k| k[pre.len()..].to_string())
        .collect()
}

fn sorted_set(s: &str) -> BTreeSet<String> {
    s.trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn path() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(PATHS)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => path().prop_map(Op::Create),
        2 => path().prop_map(Op::Mkdir),
        3 => path().prop_map(Op::Unlink),
        2 => path().prop_map(Op::Rmdir),
        3 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        2 => (path(), any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
        1 => path().prop_map(Op::Read),
        1 => path().prop_map(Op::Stat),
        1 => prop_oneof![Just(""), Just("d"), Just("e"), Just("d/e")].prop_map(Op::List),
        1 => path().prop_map(Op::Hold),
        1 => Just(Op::Release),
        1 => prop_oneof![Just(""), Just("d"), Just("e")].prop_map(Op::ListStart),
        1 => Just(Op::Resume),
        2 => (1u8..6).prop_map(Op::Evict),
        2 => (1u8..6).prop_map(Op::Forget),
    ]
}

fn lower() -> impl Strategy<Value = Lower> {
    prop_oneof![any::<u8>().prop_map(Lower::File), Just(Lower::Dir)]
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(proptest::collection::vec((path(), lower()), 0..8), 1..=3),
        proptest::collection::vec(op(), 1..60),
    )
        .prop_map(|(layers, ops)| Case { layers, ops })
}

#[test]
fn the_core_driven_as_the_kernel_drives_it_matches_the_model() {
    crate::run_fixed(
        ("LAYERFS_DRIVER_CASES", 300),
        ("LAYERFS_DRIVER_SEED", 0x0c0e_d71e),
        case(),
        run_case,
    );
}

/// Lookups race renames of the directory they walk through, in threads, as the kernel's
/// parallel lookups do (`PARALLEL_DIROPS`): every walk finds the file or no name, never
/// another error, and the file is always whole. As in the kernel, a rename excludes
/// lookups in the directories it changes (the parent's lock), not lookups inside the
/// directory it moves.
#[test]
fn lookups_racing_renames_find_the_file_or_nothing() {
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    fs::create_dir_all(l.join("x/y")).unwrap();
    fs::write(l.join("x/y/f"), b"lower").unwrap();
    let (upper, work) = (t.path().join("u"), t.path().join("w"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let fs_ = OverlayFs::new(Options::new(vec![l], Some(upper), Some(work))).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rounds = env_u64("LAYERFS_DRIVER_RENAMES", 2000);
    // The root's i_rwsem: shared for a lookup in it, exclusive for a rename in it.
    let root_lock = std::sync::RwLock::new(());
    let found = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|sc| {
        let walkers: Vec<_> = (0..2)
            .map(|_| {
                sc.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for top in ["x", "z"] {
                            // Each step holds the lookups the kernel would hold, and
                            // forgets them after use.
                            let mut held = Vec::new();
                            let mut walk = || -> Result<u64, Errno> {
                                let a = {
                                    let _shared = root_lock.read().unwrap();
                                    fs_.lookup(ROOT_INO, OsStr::new(top))?.attr.ino
                                };
                                held.push(a);
                                let b = fs_.lookup(a, OsStr::new("y"))?.attr.ino;
                                held.push(b);
                                let f = fs_.lookup(b, OsStr::new("f"))?.attr.ino;
                                held.push(f);
                                Ok(f)
                            };
                            match walk() {
                                Ok(f) => {
                                    let o = fs_.open(Ctx::ROOT, f, libc::O_RDONLY).unwrap();
                                    let mut buf = [0u8; 16];
                                    let n = fs_.read(o.fh, 0, &mut buf).unwrap();
                                    fs_.release(o.fh);
                                    assert_eq!(&buf[..n], b"lower");
                                    found.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Err(Errno::NOENT) => {}
                                Err(e) => panic!("a walk through {top} failed: {e}"),
                            }
                            for id in held {
                                fs_.forget(id, 1);
                            }
                        }
                    }
                })
            })
            .collect();
        // Rename until both the renames and the walks that found the file number
        // `rounds` at least.
        let mut i = 0;
        while i < rounds || found.load(std::sync::atomic::Ordering::Relaxed) < rounds {
            let (a, b) = if i % 2 == 0 { ("x", "z") } else { ("z", "x") };
            {
                let _exclusive = root_lock.write().unwrap();
                fs_.rename(ROOT_INO, OsStr::new(a), ROOT_INO, OsStr::new(b), 0)
                    .unwrap_or_else(|e| panic!("rename {a} -> {b}: {e}"));
            }
            i += 1;
            std::thread::yield_now();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in walkers {
            w.join().unwrap();
        }
    });
}

/// A merged listing read in several replies is built once: the read past its end (the
/// one that tells the kernel there is no more) still finds it, and only that read drops
/// it. (A directory that one layer has is listed as it is read, see
/// `src/overlay/readdir_stream.rs`.)
#[test]
fn a_listing_is_built_once_per_read_through() {
    use std::sync::Arc;
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    let l2 = t.path().join("l2");
    fs::create_dir_all(l.join("d")).unwrap();
    fs::create_dir_all(l2.join("d")).unwrap();
    for i in 0..49 {
        fs::write(l.join(format!("d/f{i}")), b"x").unwrap();
    }
    fs::write(l2.join("d/f49"), b"x").unwrap();
    let fs_ = OverlayFs::new(Options::new(vec![l, l2], None, None)).unwrap();
    let d = fs_.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
    let read = |offset: u64| {
        let mut b = Buf {
            cap: 20,
            got: Vec::new(),
        };
        fs_.readdir_into(d, offset, &mut b).unwrap();
        b.got
    };
    // The first reply (from offset 0) builds the listing.
    let mut got = read(0);
    let mut offset = got.last().unwrap().1;
    let (built, _) = fs_.readdir(d, offset).unwrap();
    while got.len() < 52 {
        let more = read(offset);
        assert!(!more.is_empty(), "the listing ended early");
        offset = more.last().unwrap().1;
        got.extend(more);
        let (now, _) = fs_.readdir(d, offset).unwrap();
        assert!(
            Arc::ptr_eq(&now, &built),
            "a later reply built the listing again"
        );
    }
    assert_eq!(got.len(), 52, ". and .. and 50 names");
    // Everything was sent; the read past the end finds nothing, from the same listing.
    assert!(read(offset).is_empty());
    // That read dropped it: a later read from the middle builds a new one.
    let (again, _) = fs_.readdir(d, offset).unwrap();
    assert!(
        !Arc::ptr_eq(&again, &built),
        "the listing was kept after the end"
    );
}
