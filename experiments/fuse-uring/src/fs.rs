//! A minimal in-memory filesystem answering FUSE requests. Transport-independent: a
//! request arrives as (header, fixed argument, payload) and the answer is written into
//! a caller's buffer, so both transports run exactly the same code per request.

use crate::proto::{self, *};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Seconds the kernel may cache names and attributes (layerfs uses long TTLs too).
const TTL: u64 = 60;

struct Node {
    attr: Attr,
    children: Option<BTreeMap<Vec<u8>, u64>>,
}

pub struct Fs {
    nodes: Mutex<Vec<Node>>,
    /// Requests answered, by opcode.
    pub counts: Vec<AtomicU64>,
    /// INIT flags we answered with.
    pub init_flags: AtomicU64,
    /// Requests that came through /dev/fuse reads and through ring entries.
    pub via_dev: AtomicU64,
    pub via_ring: AtomicU64,
    /// With `--stat-dir`: a real directory each LOOKUP `fstatat`s its name in first, the
    /// least a server backed by real layers must do per lookup.
    pub stat_dir: Option<std::fs::File>,
}

pub enum Outcome {
    /// Send a reply: 0 with `out` as body, or a negative errno with no body.
    Reply(i32),
    /// FORGET and friends: no reply.
    None,
}

fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn attr(ino: u64, mode: u32, nlink: u32) -> Attr {
    let (s, ns) = now();
    Attr {
        ino,
        mode,
        nlink,
        blksize: 4096,
        atime: s,
        mtime: s,
        ctime: s,
        atimensec: ns,
        mtimensec: ns,
        ctimensec: ns,
        ..Default::default()
    }
}

fn push<T: Pod>(out: &mut Vec<u8>, v: &T) {
    out.extend_from_slice(proto::bytes(v));
}

fn entry(a: &Attr) -> EntryOut {
    EntryOut {
        nodeid: a.ino,
        generation: 1,
        entry_valid: TTL,
        attr_valid: TTL,
        attr: *a,
        ..Default::default()
    }
}

/// The name argument: NUL-terminated bytes at the front of the payload.
fn name(payload: &[u8]) -> &[u8] {
    let end = payload
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(payload.len());
    &payload[..end]
}

impl Fs {
    /// A root directory; with `populate > 0`, also `/d` holding `f0..f{populate-1}`.
    pub fn new(populate: usize) -> Fs {
        let root = Node {
            attr: attr(1, libc::S_IFDIR | 0o755, 2),
            children: Some(BTreeMap::new()),
        };
        let fs = Fs {
            nodes: Mutex::new(vec![
                Node {
                    attr: Attr::default(),
                    children: None,
                },
                root,
            ]),
            counts: (0..MAX_OPCODE).map(|_| AtomicU64::new(0)).collect(),
            init_flags: AtomicU64::new(0),
            via_dev: AtomicU64::new(0),
            via_ring: AtomicU64::new(0),
            stat_dir: None,
        };
        if populate > 0 {
            let mut nodes = fs.nodes.lock().unwrap();
            let d = Self::add(&mut nodes, 1, b"d", libc::S_IFDIR | 0o755);
            for i in 0..populate {
                Self::add(
                    &mut nodes,
                    d,
                    format!("f{i}").as_bytes(),
                    libc::S_IFREG | 0o644,
                );
            }
        }
        fs
    }

    fn add(nodes: &mut Vec<Node>, parent: u64, name: &[u8], mode: u32) -> u64 {
        let ino = nodes.len() as u64;
        let dir = mode & libc::S_IFMT == libc::S_IFDIR;
        nodes.push(Node {
            attr: attr(ino, mode, if dir { 2 } else { 1 }),
            children: dir.then(BTreeMap::new),
        });
        let p = &mut nodes[parent as usize];
        p.children.as_mut().unwrap().insert(name.to_vec(), ino);
        if dir {
            p.attr.nlink += 1;
        }
        ino
    }

    /// The INIT answer. `uring`: ask for FUSE_OVER_IO_URING if the kernel offers it;
    /// returns whether it was asked for.
    pub fn init(&self, op: &[u8], out: &mut Vec<u8>, uring: bool) -> (i32, bool) {
        let i: InitIn = proto::read(op);
        if i.major != KERNEL_VERSION || i.minor < 36 {
            eprintln!(
                "kernel FUSE {}.{} is too old for this probe",
                i.major, i.minor
            );
            return (-libc::EPROTO, false);
        }
        let offered = i.flags as u64 | ((i.flags2 as u64) << 32);
        let mut want = ASYNC_READ | BIG_WRITES | PARALLEL_DIROPS | MAX_PAGES | INIT_EXT;
        let use_uring = uring && offered & OVER_IO_URING != 0;
        if use_uring {
            want |= OVER_IO_URING;
        }
        want &= offered;
        self.init_flags.store(want, Ordering::Relaxed);
        let o = InitOut {
            major: KERNEL_VERSION,
            minor: KERNEL_MINOR.min(i.minor),
            max_readahead: i.max_readahead,
            flags: want as u32,
            flags2: (want >> 32) as u32,
            max_background: 64,
            congestion_threshold: 48,
            max_write: crate::MAX_WRITE as u32,
            time_gran: 1,
            max_pages: (crate::MAX_WRITE / 4096) as u16,
            ..Default::default()
        };
        push(out, &o);
        (0, use_uring)
    }

    pub fn handle(&self, h: &InHeader, op: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Outcome {
        out.clear();
        if let Some(c) = self.counts.get(h.opcode as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let r = match h.opcode {
            FORGET | BATCH_FORGET | INTERRUPT => return Outcome::None,
            LOOKUP => self.lookup(h.nodeid, name(payload), out),
            GETATTR => self.getattr(h.nodeid, out),
            SETATTR => self.setattr(h.nodeid, op, out),
            CREATE => self.create(h, op, name(payload), out),
            MKDIR => self.mkdir(h, op, name(payload), out),
            // No FLUSH on close (layerfs's read-only opens ask for none either).
            OPEN => {
                push(
                    out,
                    &OpenOut {
                        open_flags: FOPEN_NOFLUSH,
                        ..Default::default()
                    },
                );
                0
            }
            OPENDIR => {
                // PROBE_CACHE_DIR set: the kernel keeps the listing, as layerfs has it do.
                let open_flags = if std::env::var_os("PROBE_CACHE_DIR").is_some() {
                    FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE
                } else {
                    0
                };
                push(
                    out,
                    &OpenOut {
                        open_flags,
                        ..Default::default()
                    },
                );
                0
            }
            UNLINK => self.unlink(h.nodeid, name(payload)),
            RELEASE | RELEASEDIR | FLUSH | FSYNC | FSYNCDIR | DESTROY => 0,
            READDIR => self.readdir(h.nodeid, op, out),
            STATFS => {
                push(
                    out,
                    &Kstatfs {
                        bsize: 4096,
                        frsize: 4096,
                        namelen: 255,
                        ..Default::default()
                    },
                );
                0
            }
            GETXATTR | LISTXATTR => -libc::ENODATA,
            _ => -libc::ENOSYS,
        };
        Outcome::Reply(r)
    }

    fn lookup(&self, parent: u64, name: &[u8], out: &mut Vec<u8>) -> i32 {
        if let Some(d) = &self.stat_dir {
            use std::os::fd::AsRawFd;
            let mut c = [0u8; 256];
            let n = name.len().min(255);
            c[..n].copy_from_slice(&name[..n]);
            // SAFETY: a NUL-terminated name in a local buffer and a stat buffer we own.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let r = unsafe {
                libc::fstatat(
                    d.as_raw_fd(),
                    c.as_ptr().cast(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            std::hint::black_box((r, st.st_ino));
        }
        let nodes = self.nodes.lock().unwrap();
        let Some(dir) = nodes.get(parent as usize).and_then(|n| n.children.as_ref()) else {
            return -libc::ENOTDIR;
        };
        match dir.get(name) {
            Some(&ino) => push(out, &entry(&nodes[ino as usize].attr)),
            // A negative entry the kernel may cache (as layerfs answers).
            None => push(
                out,
                &EntryOut {
                    entry_valid: TTL,
                    ..Default::default()
                },
            ),
        }
        0
    }

    fn unlink(&self, parent: u64, name: &[u8]) -> i32 {
        let mut nodes = self.nodes.lock().unwrap();
        let Some(dir) = nodes
            .get_mut(parent as usize)
            .and_then(|n| n.children.as_mut())
        else {
            return -libc::ENOTDIR;
        };
        match dir.remove(name) {
            Some(_) => 0,
            None => -libc::ENOENT,
        }
    }

    fn getattr(&self, ino: u64, out: &mut Vec<u8>) -> i32 {
        let nodes = self.nodes.lock().unwrap();
        let Some(n) = nodes.get(ino as usize) else {
            return -libc::ENOENT;
        };
        push(
            out,
            &AttrOut {
                attr_valid: TTL,
                attr: n.attr,
                ..Default::default()
            },
        );
        0
    }

    fn setattr(&self, ino: u64, op: &[u8], out: &mut Vec<u8>) -> i32 {
        let s: SetattrIn = proto::read(op);
        let mut nodes = self.nodes.lock().unwrap();
        let Some(n) = nodes.get_mut(ino as usize) else {
            return -libc::ENOENT;
        };
        if s.valid & FATTR_MODE != 0 {
            n.attr.mode = (n.attr.mode & libc::S_IFMT) | (s.mode & 0o7777);
        }
        if s.valid & FATTR_UID != 0 {
            n.attr.uid = s.uid;
        }
        if s.valid & FATTR_GID != 0 {
            n.attr.gid = s.gid;
        }
        if s.valid & FATTR_SIZE != 0 {
            n.attr.size = s.size;
        }
        push(
            out,
            &AttrOut {
                attr_valid: TTL,
                attr: n.attr,
                ..Default::default()
            },
        );
        0
    }

    fn new_node(&self, h: &InHeader, parent: u64, name: &[u8], mode: u32) -> Result<Attr, i32> {
        let mut nodes = self.nodes.lock().unwrap();
        match nodes.get(parent as usize).and_then(|n| n.children.as_ref()) {
            None => return Err(-libc::ENOTDIR),
            Some(d) if d.contains_key(name) => return Err(-libc::EEXIST),
            Some(_) => {}
        }
        let ino = Self::add(&mut nodes, parent, name, mode);
        let a = &mut nodes[ino as usize].attr;
        a.uid = h.uid;
        a.gid = h.gid;
        Ok(*a)
    }

    fn create(&self, h: &InHeader, op: &[u8], name: &[u8], out: &mut Vec<u8>) -> i32 {
        let c: CreateIn = proto::read(op);
        let mode = libc::S_IFREG | (c.mode & 0o7777 & !c.umask);
        match self.new_node(h, h.nodeid, name, mode) {
            Ok(a) => {
                push(out, &entry(&a));
                push(out, &OpenOut::default());
                0
            }
            Err(e) => e,
        }
    }

    fn mkdir(&self, h: &InHeader, op: &[u8], name: &[u8], out: &mut Vec<u8>) -> i32 {
        let m: MkdirIn = proto::read(op);
        let mode = libc::S_IFDIR | (m.mode & 0o7777 & !m.umask);
        match self.new_node(h, h.nodeid, name, mode) {
            Ok(a) => {
                push(out, &entry(&a));
                0
            }
            Err(e) => e,
        }
    }

    /// Offsets are positions in the (sorted) child list; "." and ".." are left out.
    fn readdir(&self, ino: u64, op: &[u8], out: &mut Vec<u8>) -> i32 {
        let r: ReadIn = proto::read(op);
        let nodes = self.nodes.lock().unwrap();
        let Some(dir) = nodes.get(ino as usize).and_then(|n| n.children.as_ref()) else {
            return -libc::ENOTDIR;
        };
        for (i, (name, &child)) in dir.iter().enumerate().skip(r.offset as usize) {
            let reclen = (24 + name.len()).next_multiple_of(8);
            if out.len() + reclen > r.size as usize {
                break;
            }
            let d = Dirent {
                ino: child,
                off: i as u64 + 1,
                namelen: name.len() as u32,
                typ: (nodes[child as usize].attr.mode & libc::S_IFMT) >> 12,
            };
            push(out, &d);
            out.extend_from_slice(name);
            out.resize(out.len() + reclen - 24 - name.len(), 0);
        }
        0
    }

    /// "lookup=N create=N ..." for the opcodes that were seen.
    pub fn count_line(&self) -> String {
        let names = [
            (LOOKUP, "lookup"),
            (FORGET, "forget"),
            (BATCH_FORGET, "batch_forget"),
            (GETATTR, "getattr"),
            (SETATTR, "setattr"),
            (CREATE, "create"),
            (UNLINK, "unlink"),
            (MKDIR, "mkdir"),
            (OPEN, "open"),
            (FLUSH, "flush"),
            (RELEASE, "release"),
            (OPENDIR, "opendir"),
            (READDIR, "readdir"),
            (RELEASEDIR, "releasedir"),
            (INTERRUPT, "interrupt"),
            (STATFS, "statfs"),
        ];
        let mut s = String::new();
        let mut total = 0;
        for (op, n) in names {
            let c = self.counts[op as usize].load(Ordering::Relaxed);
            total += c;
            if c > 0 {
                s += &format!("{n}={c} ");
            }
        }
        let other: u64 = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            - total;
        s + &format!("other={other}")
    }
}
