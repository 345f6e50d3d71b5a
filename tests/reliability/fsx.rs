//! Data integrity, fsx style: random reads, writes, truncates, fallocate and hole
//! punching, mmap reads and writes, copy_file_range within and between files, reopen
//! and remount cycles, on files that start in a lower layer. After every operation the
//! touched files are compared byte for byte with an in-memory model; on a mismatch the
//! op log is printed and written to a file.
//!
//! Size: `LAYERFS_FSX_OPS` operations per passthrough mode (default 20000),
//! `LAYERFS_FSX_SEED` (default 1), `LAYERFS_FSX_MAXLEN` bytes per file (default 256 KiB).

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, copy_file_range, fallocate};

use support::files::*;
use support::report::*;
use support::rng::*;
use support::stack::*;
use support::watchdog::*;

const PAGE: u64 = 4096;

struct FileModel {
    name: String,
    data: Vec<u8>,
    /// The layer copy as it was before the run (lower files must never change).
    lower_orig: Option<Vec<u8>>,
    fd: Option<File>,
    /// The open fd is read-only (the file may still be in the lower layer).
    read_only: bool,
}

struct Fsx {
    rng: Rng,
    mnt: PathBuf,
    files: Vec<FileModel>,
    log: Vec<String>,
    maxlen: u64,
    ops: u64,
    all_passthrough: bool,
}

type R = Result<(), String>;

fn errstr(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Fsx {
    fn path(&self, i: usize) -> PathBuf {
        self.mnt.join(&self.files[i].name)
    }

    fn note(&mut self, s: String) {
        self.log.push(format!("{:6} {s}", self.ops));
    }

    /// An fd for reading (any mode).
    fn rfd(&mut self, i: usize) -> Result<&File, String> {
        if self.files[i].fd.is_none() {
            let p = self.path(i);
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map_err(|e| format!("open ro {}: {e}", p.display()))?;
            self.files[i].fd = Some(f);
            self.files[i].read_only = true;
        }
        Ok(self.files[i].fd.as_ref().unwrap())
    }

    /// An fd for writing: a read-only one is closed first and the file opened O_RDWR
    /// (this is where a lower file gets copied up).
    fn wfd(&mut self, i: usize) -> Result<&File, String> {
        if self.files[i].read_only {
            self.files[i].fd = None;
            self.files[i].read_only = false;
        }
        if self.files[i].fd.is_none() {
            let p = self.path(i);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map_err(|e| format!("open rw {}: {e}", p.display()))?;
            self.files[i].fd = Some(f);
        }
        Ok(self.files[i].fd.as_ref().unwrap())
    }

    fn len(&self, i: usize) -> u64 {
        self.files[i].data.len() as u64
    }

    /// Compare a whole file (size and every byte) with the model.
    fn verify(&mut self, i: usize) -> R {
        let want_len = self.len(i);
        let f = self.rfd(i)?;
        let st = f.metadata().map_err(|e| format!("fstat: {e}"))?;
        let mut got = vec![0u8; want_len as usize + 1];
        let mut n = 0;
        while n < got.len() {
            match f.read_at(&mut got[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        got.truncate(n);
        let name = self.files[i].name.clone();
        if st.len() != want_len {
            return Err(format!(
                "{name}: fstat size {} but model has {want_len}",
                st.len()
            ));
        }
        compare(&name, &self.files[i].data, &got)
    }

    fn verify_all(&mut self) -> R {
        for i in 0..self.files.len() {
            self.verify(i)?;
        }
        Ok(())
    }

    fn close_all(&mut self) {
        for f in &mut self.files {
            f.fd = None;
            f.read_only = false;
        }
    }

    /// A random (offset, len) for an operation, biased towards page edges.
    fn range(&mut self, within: u64, maxlen: u64) -> (u64, u64) {
        let mut off = self.rng.below(within.max(1));
        if self.rng.chance(30) {
            off &= !(PAGE - 1);
        }
        let mut len = self.rng.range(1, maxlen.max(1));
        if self.rng.chance(20) {
            len = (len + PAGE - 1) & !(PAGE - 1);
        }
        (off, len)
    }

    fn op_read(&mut self, i: usize) -> R {
        let size = self.len(i);
        let (off, len) = self.range(size + 100, 65536);
        self.note(format!("read {} off {off} len {len}", self.files[i].name));
        let mut buf = vec![0u8; len as usize];
        let f = self.rfd(i)?;
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], off + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(format!("pread: {e}")),
            }
        }
        let d = &self.files[i].data;
        let want: &[u8] = if off >= size {
            &[]
        } else {
            &d[off as usize..(off + len).min(size) as usize]
        };
        compare(&format!("read at {off}"), want, &buf[..n])
    }

    fn op_write(&mut self, i: usize) -> R {
        let size = self.len(i);
        let (off, len) = self.range((size + 8192).min(self.maxlen), 65536);
        let len = len.min(self.maxlen.saturating_sub(off)).max(1);
        let data = self.rng.bytes(len as usize);
        // Some writes go through a write-only descriptor of their own, opened by path:
        // without passthrough its writes bypass the FUSE page cache (`direct_writes`),
        // next to the cached and mapped pages of the other descriptors.
        let mut own_fd = self.rng.chance(30);
        if own_fd && self.all_passthrough && self.files[i].read_only {
            // The known limit of passthrough=all (see op_truncate).
            own_fd = false;
        }
        self.note(format!(
            "write {} off {off} len {len}{}",
            self.files[i].name,
            if own_fd { " (write-only fd)" } else { "" }
        ));
        if own_fd {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.path(i))
                .and_then(|f| f.write_all_at(&data, off))
                .map_err(|e| format!("open O_WRONLY + pwrite: {e}"))?;
        } else {
            let f = self.wfd(i)?;
            f.write_all_at(&data, off)
                .map_err(|e| format!("pwrite: {e}"))?;
        }
        let m = &mut self.files[i].data;
        let end = (off + len) as usize;
        if m.len() < end {
            m.resize(end, 0);
        }
        m[off as usize..end].copy_from_slice(&data);
        Ok(())
    }

    fn op_truncate(&mut self, i: usize) -> R {
        let size = self.len(i);
        let new = if self.rng.chance(50) {
            self.rng.below(size + 1)
        } else {
            self.rng.below(self.maxlen + 1)
        };
        let mut by_path = self.rng.chance(40);
        if by_path && self.all_passthrough && self.files[i].read_only {
            // Known limit of passthrough=all: an fd passed through to the lower file
            // cannot follow the copy-up, so that case is left out in this mode.
            by_path = false;
        }
        self.note(format!(
            "truncate {} {size} -> {new}{}",
            self.files[i].name,
            if by_path { " (by path)" } else { "" }
        ));
        if by_path {
            truncate(&self.path(i), new).map_err(|e| format!("truncate: {e}"))?;
        } else {
            let f = self.wfd(i)?;
            f.set_len(new).map_err(|e| format!("ftruncate: {e}"))?;
        }
        self.files[i].data.resize(new as usize, 0);
        Ok(())
    }

    fn op_fallocate(&mut self, i: usize) -> R {
        let size = self.len(i);
        let (off, len) = self.range((size + 8192).min(self.maxlen), 65536);
        let len = len.min(self.maxlen.saturating_sub(off)).max(1);
        let kind = self.rng.below(4);
        let (mode, what) = match kind {
            0 => (FallocateFlags::empty(), "alloc"),
            1 => (FallocateFlags::KEEP_SIZE, "alloc-keep-size"),
            2 => (
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                "punch-hole",
            ),
            _ => (FallocateFlags::ZERO_RANGE, "zero-range"),
        };
        self.note(format!(
            "fallocate {what} {} off {off} len {len}",
            self.files[i].name
        ));
        fallocate(self.wfd(i)?, mode, off, len).map_err(|e| format!("fallocate {what}: {e}"))?;
        let m = &mut self.files[i].data;
        let end = (off + len) as usize;
        let keep = mode.contains(FallocateFlags::KEEP_SIZE);
        if !keep && m.len() < end {
            m.resize(end, 0);
        }
        if kind >= 2 {
            let stop = end.min(m.len());
            if (off as usize) < stop {
                m[off as usize..stop].fill(0);
            }
        }
        Ok(())
    }

    // mmap has no safe form (a mapping can change under any reference into it).
    #[allow(unsafe_code)]
    fn op_mmap(&mut self, i: usize, write: bool) -> R {
        let size = self.len(i);
        if size == 0 {
            return Ok(());
        }
        let (off, len) = self.range(size, 65536);
        let len = len.min(size - off);
        let map_off = off & !(PAGE - 1);
        let map_len = (off + len - map_off) as usize;
        self.note(format!(
            "mmap-{} {} off {off} len {len}",
            if write { "write" } else { "read" },
            self.files[i].name
        ));
        let fd = if write {
            self.wfd(i)?.as_raw_fd()
        } else {
            self.rfd(i)?.as_raw_fd()
        };
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of an fd we own, within the file's size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                fd,
                map_off as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errstr("mmap"));
        }
        // SAFETY: the mapping is map_len bytes long and stays mapped until munmap below.
        let mapped = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, map_len) };
        let rel = (off - map_off) as usize;
        let res = if write {
            let data = self.rng.bytes(len as usize);
            mapped[rel..rel + len as usize].copy_from_slice(&data);
            // SAFETY: msync of the mapping made above.
            let r = unsafe { libc::msync(p, map_len, libc::MS_SYNC) };
            let r = if r != 0 { Err(errstr("msync")) } else { Ok(()) };
            self.files[i].data[off as usize..(off + len) as usize].copy_from_slice(&data);
            r
        } else {
            let want = self.files[i].data[off as usize..(off + len) as usize].to_vec();
            compare(
                &format!("mmap read at {off}"),
                &want,
                &mapped[rel..rel + len as usize],
            )
        };
        // SAFETY: unmapping exactly what was mapped.
        unsafe { libc::munmap(p, map_len) };
        res
    }

    fn op_copy_range(&mut self, i: usize, j: usize) -> R {
        let src_len = self.len(i);
        if src_len == 0 {
            return Ok(());
        }
        let (off_in, len) = self.range(src_len, 65536);
        let len = len.min(src_len - off_in);
        let dst_len = self.len(j);
        let mut off_out = self
            .rng
            .below((dst_len + 8192).min(self.maxlen - len).max(1));
        if i == j {
            // Ranges in one file must not overlap.
            let lo = off_in.saturating_sub(len);
            if off_out > lo && off_out < off_in + len {
                off_out = off_in + len;
            }
            if off_out + len > self.maxlen {
                if off_in >= len {
                    off_out = 0;
                } else {
                    return Ok(());
                }
            }
        }
        self.note(format!(
            "copy_file_range {} off {off_in} -> {} off {off_out} len {len}",
            self.files[i].name, self.files[j].name
        ));
        self.wfd(j)?;
        self.rfd(i)?;
        let (fd_in, fd_out) = (&self.files[i].fd, &self.files[j].fd);
        let (fd_in, fd_out) = (fd_in.as_ref().unwrap(), fd_out.as_ref().unwrap());
        let mut done = 0u64;
        while done < len {
            let mut oi = off_in + done;
            let mut oo = off_out + done;
            let n = copy_file_range(
                fd_in,
                Some(&mut oi),
                fd_out,
                Some(&mut oo),
                (len - done) as usize,
            )
            .map_err(|e| format!("copy_file_range: {e}"))?;
            if n == 0 {
                return Err(format!("copy_file_range stopped short at {done} of {len}"));
            }
            done += n as u64;
        }
        let chunk = self.files[i].data[off_in as usize..(off_in + len) as usize].to_vec();
        let m = &mut self.files[j].data;
        let end = (off_out + len) as usize;
        if m.len() < end {
            m.resize(end, 0);
        }
        m[off_out as usize..end].copy_from_slice(&chunk);
        Ok(())
    }

    fn op_fsync(&mut self, i: usize) -> R {
        self.note(format!("fsync {}", self.files[i].name));
        let f = self.rfd(i)?;
        f.sync_all().map_err(|e| format!("fsync: {e}"))
    }

    fn op_reopen(&mut self, i: usize) -> R {
        self.note(format!("close+reopen {}", self.files[i].name));
        self.files[i].fd = None;
        self.files[i].read_only = false;
        self.verify(i)
    }

    /// One random operation, then verification of the files it touched.
    fn step(&mut self) -> R {
        let i = self.rng.below(self.files.len() as u64) as usize;
        let w = self.rng.below(100);
        let mut touched = vec![i];
        match w {
            0..=14 => self.op_read(i)?,
            15..=36 => self.op_write(i)?,
            37..=46 => self.op_truncate(i)?,
            47..=58 => self.op_fallocate(i)?,
            59..=66 => self.op_mmap(i, false)?,
            67..=76 => self.op_mmap(i, true)?,
            77..=92 => {
                let j = if self.rng.chance(40) {
                    i
                } else {
                    self.rng.below(self.files.len() as u64) as usize
                };
                touched.push(j);
                self.op_copy_range(i, j)?
            }
            93..=95 => self.op_fsync(i)?,
            _ => self.op_reopen(i)?,
        }
        for t in touched {
            self.verify(t)?;
        }
        Ok(())
    }
}

fn compare(what: &str, want: &[u8], got: &[u8]) -> R {
    if want == got {
        return Ok(());
    }
    let first = want
        .iter()
        .zip(got.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    Err(format!(
        "{what}: {} bytes expected, {} read; first difference at offset {first} \
         (expected {:?}, got {:?})",
        want.len(),
        got.len(),
        want.get(first..(first + 16).min(want.len())),
        got.get(first..(first + 16).min(got.len())),
    ))
}

/// Lower-layer files: plain, sparse, empty and small, all different.
fn make_lower(rng: &mut Rng, lower: &Path, maxlen: u64) -> Vec<FileModel> {
    let mut files = Vec::new();
    for k in 0..5 {
        let name = format!("f{k}");
        let mut data = match k {
            0 => rng.bytes(maxlen as usize / 2),
            1 => {
                // Sparse: data islands between holes.
                let mut d = vec![0u8; maxlen as usize * 3 / 4];
                for _ in 0..4 {
                    let off = rng.below(d.len() as u64 - 5000) as usize;
                    let b = rng.bytes(4096);
                    d[off..off + 4096].copy_from_slice(&b);
                }
                d
            }
            2 => Vec::new(),
            3 => rng.bytes(100),
            _ => {
                let n = rng.range(1, maxlen) as usize;
                rng.bytes(n)
            }
        };
        let p = lower.join(&name);
        if k == 1 {
            let f = File::create(&p).unwrap();
            f.set_len(data.len() as u64).unwrap();
            let mut off = 0;
            while off < data.len() {
                let end = (off + 4096).min(data.len());
                if data[off..end].iter().any(|b| *b != 0) {
                    f.write_all_at(&data[off..end], off as u64).unwrap();
                }
                off = end;
            }
        } else {
            fs::write(&p, &data).unwrap();
        }
        data.shrink_to_fit();
        files.push(FileModel {
            name,
            lower_orig: Some(data.clone()),
            data,
            fd: None,
            read_only: false,
        });
    }
    // A file created through the mount joins the run later (no lower copy).
    files
}

fn run_fsx(mode: &str, salt: u64) {
    let ops = env_u64("LAYERFS_FSX_OPS", 20_000);
    let seed = env_u64("LAYERFS_FSX_SEED", 1) ^ salt;
    let maxlen = env_u64("LAYERFS_FSX_MAXLEN", 256 * 1024).max(16 * 1024);
    let remounts = 3u64;
    let mut report = Report::new("fsx", mode);
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 2);
    let mnt = t.path().join("m");
    let mut rng = Rng::new(seed);
    let mut files = make_lower(&mut rng, &stack.lowers[1], maxlen);
    // One lower file shadowed by a different top-layer copy.
    fs::write(stack.lowers[1].join("f4"), b"hidden bottom copy").unwrap();
    fs::write(stack.lowers[0].join("f4"), &files[4].data).unwrap();
    let extra: Vec<&str> = match mode {
        "passthrough-upper" => vec![],
        "passthrough-off" => vec!["passthrough=off"],
        _ => vec!["passthrough=all"],
    };
    let mut guard = mount_layerfs(&stack, &mnt, &extra);
    let wd = Watchdog::new(&format!("fsx {mode}"), 600 + ops / 20, vec![mnt.clone()]);
    // A file that exists only in the upper layer.
    fs::write(mnt.join("new"), b"").unwrap();
    files.push(FileModel {
        name: "new".into(),
        data: Vec::new(),
        lower_orig: None,
        fd: None,
        read_only: false,
    });
    let mut fsx = Fsx {
        rng,
        mnt: mnt.clone(),
        files,
        log: Vec::new(),
        maxlen,
        ops: 0,
        all_passthrough: mode == "passthrough-all",
    };
    let mut failure: Option<String> = None;
    if let Err(e) = fsx.verify_all() {
        failure = Some(format!("initial contents: {e}"));
    }
    let remount_every = ops / (remounts + 1);
    while failure.is_none() && fsx.ops < ops {
        fsx.ops += 1;
        if let Err(e) = fsx.step() {
            failure = Some(e);
            break;
        }
        if fsx.ops.is_multiple_of(1000)
            && let Err(e) = fsx.verify_all()
        {
            failure = Some(format!("full check: {e}"));
            break;
        }
        if remount_every > 0 && fsx.ops.is_multiple_of(remount_every) && fsx.ops < ops {
            fsx.note("unmount + remount".into());
            fsx.close_all();
            guard.unmount();
            guard = mount_layerfs(&stack, &mnt, &extra);
            if let Err(e) = fsx.verify_all() {
                failure = Some(format!("after remount: {e}"));
            }
        }
    }
    fsx.close_all();
    report.passed(fsx.ops.saturating_sub(u64::from(failure.is_some())));
    if let Some(e) = &failure {
        let log_path = std::env::temp_dir().join(format!("layerfs-fsx-{mode}-seed{seed}.log"));
        let _ = fs::write(&log_path, fsx.log.join("\n"));
        let tail: Vec<&String> = fsx.log.iter().rev().take(40).collect();
        eprintln!(
            "fsx {mode} seed {seed}: FAILED at op {}: {e}\nlast operations (newest first):\n{}\nfull log: {}",
            fsx.ops,
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            log_path.display()
        );
        report.check(&format!("op {} (seed {seed})", fsx.ops), Err(e.clone()));
    }
    report.check("no hang", wd.disarm());
    guard.unmount();
    // The lower layer is never written; the upper holds exactly the model.
    let mut layers_ok = Ok(());
    for f in &fsx.files {
        if let Some(orig) = &f.lower_orig {
            let lower = if f.name == "f4" {
                &stack.lowers[0]
            } else {
                &stack.lowers[1]
            };
            if let Err(e) = compare(
                &format!("lower {}", f.name),
                orig,
                &fs::read(lower.join(&f.name)).unwrap(),
            ) {
                layers_ok = Err(e);
            }
        }
    }
    report.check("lower layers untouched", layers_ok);
    if failure.is_none() {
        // The kernel's overlayfs reads the same upper dir and sees the same bytes.
        let km = t.path().join("k");
        let kg = mount_kernel(&stack, &km);
        let mut kres = Ok(());
        for f in &fsx.files {
            let got = fs::read(km.join(&f.name)).map_err(|e| e.to_string());
            match got {
                Ok(g) => {
                    if let Err(e) = compare(&format!("kernel view of {}", f.name), &f.data, &g) {
                        kres = Err(e);
                    }
                }
                Err(e) => kres = Err(format!("kernel view of {}: {e}", f.name)),
            }
        }
        drop(kg);
        report.check("kernel overlay reads the same bytes", kres);
        report.ok("work dir empty", work_leftovers(&stack).is_empty(), || {
            format!("{:?}", work_leftovers(&stack))
        });
    }
    report.finish();
}

#[test]
fn fsx_passthrough_upper() {
    if support::skip_unless_root() {
        return;
    }
    run_fsx("passthrough-upper", 0);
}

#[test]
fn fsx_passthrough_off() {
    if support::skip_unless_root() {
        return;
    }
    run_fsx("passthrough-off", 0x5eed_0001);
}

#[test]
fn fsx_passthrough_all() {
    if support::skip_unless_root() {
        return;
    }
    run_fsx("passthrough-all", 0x5eed_0002);
}
