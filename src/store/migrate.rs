//! `system migrate`: layers written before the file store (whole files in the tree)
//! converted to stubs and file objects.
//!
//! Each layer is converted on the side and swapped in: a copy of its tree is built in
//! `tmp/` (directories, links, devices, small files as they are; every larger file's
//! content into the file store, a stub in its place; owners, modes, times and every xattr
//! kept), checked against the layer's `tree.json` (the same record `system check` uses),
//! its new objects synced and placed, and then exchanged with the old tree in one
//! `renameat2(RENAME_EXCHANGE)`. A `kill -9` at any moment leaves either the old tree or
//! the new one under the layer's name, both complete; what was left in `tmp/` is removed
//! by the next command, and objects no layer names by `prune`. A rerun converts the
//! layers still whole.
//!
//! A layer a live mount uses (a layerfs daemon's command line or a kernel overlay names
//! its directory) is left as it is: the mount holds the old tree's directories.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, IoContext, Result};
use crate::metacopy;
use crate::store::Store;
use crate::store::digest::Digest;
use crate::store::extract::INLINE_MAX;
use crate::store::layout::{read_json, sync_dir};
use crate::store::objects::{self, ObjectSink};
use crate::store::tree::{self, TreeEntry};
use crate::sys::{self, Errno, OFlags, RenameFlags, TimeSpec};

/// What `migrate` did.
#[derive(Debug, Default, Clone)]
pub struct MigrateReport {
    /// Layers converted now.
    pub converted: Vec<Digest>,
    /// Layers that were converted already (or have no file larger than a stub's line).
    pub already: usize,
    /// Layers left whole because a live mount uses them.
    pub busy: Vec<Digest>,
    /// Files that became stubs.
    pub files: u64,
    /// Their bytes, and the bytes of objects written (the rest was in the store already).
    pub bytes: u64,
    pub new_object_bytes: u64,
}

impl Store {
    /// Convert every whole-file layer (see the module doc).
    pub fn migrate(&self, progress: &dyn Fn(&Digest)) -> Result<MigrateReport> {
        let _lock = self.lock()?;
        let mut report = MigrateReport::default();
        let live = live_mount_text();
        for d in self.layer_ids()? {
            if !self.is_whole(&d)? {
                report.already += 1;
                continue;
            }
            let diff = self.layout.layer_diff(&d);
            if live.contains(&*diff.to_string_lossy()) {
                report.busy.push(d);
                continue;
            }
            progress(&d);
            self.migrate_layer(&d, &mut report)
                .map_err(|e| e.context(format!("converting layer {d}")))?;
            report.converted.push(d);
        }
        Ok(report)
    }

    /// Whether a layer still holds a file that would be a stub now: the first such
    /// file its record lists is looked at (a layer is converted whole or not at all).
    fn is_whole(&self, d: &Digest) -> Result<bool> {
        let tree: Vec<TreeEntry> = read_json(&self.layout.layer(d).join("tree.json"))?
            .ok_or_else(|| Error::corrupt(format!("layer {d}: tree.json is missing")))?;
        let Some(big) = tree
            .iter()
            .find(|e| e.kind == 'f' && e.size as usize > INLINE_MAX)
        else {
            return Ok(false);
        };
        let path = self
            .layout
            .layer_diff(d)
            .join(OsStr::from_bytes(&big.path.0));
        let Some((dir, name)) = path.parent().zip(path.file_name()) else {
            return Ok(false);
        };
        let dirfd = sys::open_root_dir(dir).ctx(format!("opening {}", dir.display()))?;
        let r = metacopy::redirect_of(dirfd.as_fd(), Some(name))
            .ctx(format!("reading {}", path.display()))?;
        Ok(r.is_none())
    }

    fn migrate_layer(&self, d: &Digest, report: &mut MigrateReport) -> Result<()> {
        let work = self.layout.new_tmp_dir("migrate")?;
        for sub in ["objects", "diff"] {
            std::fs::create_dir(work.join(sub)).ctx(format!("creating {}", work.display()))?;
        }
        let sink = ObjectSink::open(&self.layout.objects_dir(), &work.join("objects"))?;
        let layer = self.layout.layer(d);
        let src = sys::open_root_dir(&layer.join("diff")).ctx("opening the layer")?;
        let dst = sys::open_root_dir(&work.join("diff")).ctx("opening the new tree")?;
        let mut c = Converter {
            sink,
            privileged: self.extract.privileged,
            links: HashMap::new(),
            buf: vec![0u8; 1 << 20],
            files: 0,
            bytes: 0,
        };
        let at =
            |p: &[u8], e: Errno| Error::from(e).context(format!("{}", String::from_utf8_lossy(p)));
        c.dir(src.as_fd(), dst.as_fd(), b"")
            .map_err(|(p, e)| at(&p, e))?;
        let st = sys::stat_fd(src.as_fd()).map_err(|e| at(b".", e))?;
        copy_meta(src.as_fd(), None, dst.as_fd(), None, &st, c.privileged)
            .map_err(|e| at(b".", e))?;

        // The new tree must be what the layer's record says, before anything changes.
        let tree: Vec<TreeEntry> = read_json(&layer.join("tree.json"))?
            .ok_or_else(|| Error::corrupt("tree.json is missing"))?;
        let scan = tree::scan_tree(dst.as_fd(), &HashMap::new()).ctx("reading the new tree")?;
        let diffs = tree::compare_trees(&tree, &scan.entries);
        if let Some(first) = diffs.first() {
            return Err(Error::corrupt(format!(
                "the converted tree differs from the layer's record ({first}; {} difference(s)); \
                 nothing changed (run `layerfs system check`)",
                diffs.len()
            )));
        }
        let new_bytes = std::fs::read_dir(work.join("objects"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum::<u64>()
            })
            .unwrap_or(0);
        let wfd = File::open(&work).ctx("opening the work dir")?;
        sys::syncfs(wfd.as_fd()).ctx("syncing the store")?;
        objects::place_staged(&work.join("objects"), &self.layout.objects_dir())?;
        let lfd = sys::open_root_dir(&layer).ctx("opening the layer dir")?;
        let wdir = sys::open_root_dir(&work).ctx("opening the work dir")?;
        sys::rename_at(
            wdir.as_fd(),
            OsStr::new("diff"),
            lfd.as_fd(),
            OsStr::new("diff"),
            RenameFlags::EXCHANGE,
        )
        .ctx("swapping the converted tree in")?;
        sync_dir(&layer)?;
        // The old tree is in the work dir now: gone with it.
        if let (Some(parent), Some(name)) = (work.parent(), work.file_name()) {
            let p = sys::open_root_dir(parent).ctx("opening the tmp dir")?;
            sys::remove_tree(p.as_fd(), name).ctx("removing the old tree")?;
        }
        report.files += c.files;
        report.bytes += c.bytes;
        report.new_object_bytes += new_bytes;
        Ok(())
    }
}

/// The text of every place a live mount names its layers: the mount table (kernel
/// overlays list their `lowerdir=`) and the command lines of running processes (the
/// layerfs daemons).
fn live_mount_text() -> String {
    let mut s = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if e.file_name().as_bytes().iter().all(u8::is_ascii_digit)
                && let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            {
                s.push('\n');
                s.push_str(&String::from_utf8_lossy(&cmd).replace('\0', " "));
            }
        }
    }
    s
}

type Failed = (Vec<u8>, Errno);

struct Converter {
    sink: ObjectSink,
    privileged: bool,
    /// Files with several names: the first copy made, by source inode.
    links: HashMap<u64, (std::sync::Arc<OwnedFd>, std::ffi::OsString)>,
    buf: Vec<u8>,
    files: u64,
    bytes: u64,
}

fn join(prefix: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

impl Converter {
    /// Copy the entries of `src` into `dst` (both directories); directories' own
    /// metadata is set after their entries.
    fn dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        prefix: &[u8],
    ) -> std::result::Result<(), Failed> {
        let readable = sys::open_dir_read(src).map_err(|e| (prefix.to_vec(), e))?;
        let dst_shared = std::sync::Arc::new(
            sys::open_dir_path(dst, OsStr::new(".")).map_err(|e| (prefix.to_vec(), e))?,
        );
        for e in sys::read_dir_all(readable.as_fd()).map_err(|e| (prefix.to_vec(), e))? {
            let path = join(prefix, &e.name);
            let fail = |err: Errno| (path.clone(), err);
            let name = e.name.as_os_str();
            let st = sys::stat_at(src, name).map_err(fail)?;
            match sys::mode_type(st.st_mode) {
                libc::S_IFDIR => {
                    sys::mkdir_at(dst, name, 0o700).map_err(fail)?;
                    let s = sys::open_dir_path(src, name).map_err(fail)?;
                    let d = sys::open_dir_path(dst, name).map_err(fail)?;
                    self.dir(s.as_fd(), d.as_fd(), &path)?;
                    copy_meta(src, Some(name), dst, Some(name), &st, self.privileged)
                        .map_err(fail)?;
                }
                libc::S_IFREG => {
                    if st.st_nlink > 1
                        && let Some((d0, n0)) = self.links.get(&st.st_ino)
                    {
                        sys::link_at(d0.as_fd(), n0, dst, name).map_err(fail)?;
                        continue;
                    }
                    self.file(src, dst, name, &st).map_err(fail)?;
                    if st.st_nlink > 1 {
                        self.links
                            .insert(st.st_ino, (dst_shared.clone(), name.to_os_string()));
                    }
                }
                libc::S_IFLNK => {
                    let target = sys::readlink_at(src, name).map_err(fail)?;
                    sys::symlink_at(OsStr::from_bytes(&target), dst, name).map_err(fail)?;
                    copy_meta(src, Some(name), dst, Some(name), &st, self.privileged)
                        .map_err(fail)?;
                }
                _ => {
                    sys::mknod_at(dst, name, st.st_mode, st.st_rdev).map_err(fail)?;
                    copy_meta(src, Some(name), dst, Some(name), &st, self.privileged)
                        .map_err(fail)?;
                }
            }
        }
        Ok(())
    }

    /// A regular file: a stub and an object when it is larger than the line and whole,
    /// otherwise a copy (a stub stays a stub).
    fn file(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        st: &sys::Stat,
    ) -> std::result::Result<(), Errno> {
        let stub = metacopy::may_be_stub(st) && metacopy::redirect_of(src, Some(name))?.is_some();
        let from = sys::open_at(src, name, OFlags::RDONLY, 0)?;
        let to = sys::open_at(
            dst,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
            0o600,
        )?;
        if stub {
            sys::ftruncate(to.as_fd(), st.st_size as u64)?;
        } else if st.st_size as usize > INLINE_MAX {
            let mut f = File::from(from);
            let (d, len) = self
                .sink
                .put_stream(&[], &mut f, &mut self.buf)
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
            if len != st.st_size as u64 {
                // It changed while read: not what the record says; the check refuses it.
                return Err(Errno::STALE);
            }
            metacopy::make_stub(to.as_fd(), len, &objects::redirect(&d), self.privileged)?;
            self.files += 1;
            self.bytes += len;
        } else {
            // A small file: its bytes as they are (reflink where the filesystem can).
            crate::overlay::copy_up::copy_data(from.as_fd(), to.as_fd(), st.st_size as u64, false)?;
        }
        drop(to);
        copy_meta(src, Some(name), dst, Some(name), st, self.privileged)
    }
}

/// Owner, mode, xattrs and times of `src` onto `dst` (`None`: the fd itself).
fn copy_meta(
    src: BorrowedFd<'_>,
    src_name: Option<&OsStr>,
    dst: BorrowedFd<'_>,
    dst_name: Option<&OsStr>,
    st: &sys::Stat,
    privileged: bool,
) -> std::result::Result<(), Errno> {
    let is_link = sys::mode_type(st.st_mode) == libc::S_IFLNK;
    if privileged {
        sys::chown_at(dst, dst_name, Some(st.st_uid), Some(st.st_gid))?;
    }
    if !is_link {
        sys::chmod_at(dst, dst_name, st.st_mode & 0o7777)?;
    }
    copy_all_xattrs(src, src_name, dst, dst_name)?;
    sys::utimens_at(
        dst,
        dst_name,
        TimeSpec::Set(st.st_atime, st.st_atime_nsec as i64),
        TimeSpec::Set(st.st_mtime, st.st_mtime_nsec as i64),
    )
}

/// Every xattr, markers and owner records included (this is the same layer, moved);
/// one the namespace refuses here (`user.*` on a symlink) is skipped, as extraction does.
fn copy_all_xattrs(
    src: BorrowedFd<'_>,
    src_name: Option<&OsStr>,
    dst: BorrowedFd<'_>,
    dst_name: Option<&OsStr>,
) -> std::result::Result<(), Errno> {
    let list = match sys::list_xattr(src, src_name) {
        Ok(l) => l,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for attr in sys::split_xattr_names(&list) {
        let Some(v) = sys::get_xattr(src, src_name, attr)? else {
            continue;
        };
        match sys::set_xattr(dst, dst_name, attr, &v, 0) {
            Ok(()) | Err(Errno::PERM) | Err(Errno::NOTSUP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
