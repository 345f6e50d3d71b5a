//! Mutating operations on names and metadata: create, mknod, mkdir, symlink, link,
//! unlink, rmdir, setattr, xattrs (rename in `rename.rs`, file data in `file_io.rs`).
//! Every change lands in the upper layer.
//!
//! The kernel's VFS holds the parent directory lock during create/unlink/rename, so two
//! mutations of one directory never run here at once; copy-up has its own per-node lock.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::fs::OverlayFs;
use super::handles::FileHandle;
use super::inode_table::{Alias, DirState, FileState, Kind, Node, NodeState};
use super::layers::{RealDir, UPPER};
use super::types::{Attr, Ctx, Entry, Opened, SetAttr};
use crate::markers;
use crate::override_stat::{self, Recorded};
use crate::sys::{self, Errno, OFlags, RenameFlags, Stat, SysResult};

/// A (uid, gid) pair.
type Owner = (u32, u32);

/// What occupies a name in the upper directory before we create there.
pub(super) enum Slot {
    Empty,
    /// A whiteout (device or xattr form) that the new entry replaces.
    Whiteout,
    /// An OCI `.wh.NAME` file to remove once the entry exists.
    OciWhiteout,
}

/// What to create.
enum NewObj<'a> {
    File { flags: i32 },
    Node { rdev: u64 },
    Dir,
    Symlink { target: &'a OsStr },
}

impl OverlayFs {
    pub(super) fn check_new_name(&self, name: &OsStr) -> SysResult<()> {
        if name.len() > 255 {
            return Err(Errno::NAMETOOLONG);
        }
        if markers::is_marker_name(name.as_bytes()) {
            // `.wh.` names are markers in every layer format; they cannot be stored.
            return Err(Errno::INVAL);
        }
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        Ok(())
    }

    /// Inspect the upper directory at `name` before creating there.
    pub(super) fn slot(&self, upper: &RealDir, name: &OsStr) -> SysResult<Slot> {
        match sys::stat_at(upper.fd(), name) {
            Ok(st) if markers::is_whiteout_stat(&st) => Ok(Slot::Whiteout),
            Ok(st)
                if upper.xattr_whiteouts
                    && st.st_size == 0
                    && markers::is_xattr_whiteout(upper.fd(), name) =>
            {
                Ok(Slot::Whiteout)
            }
            Ok(_) => Err(Errno::EXIST),
            Err(Errno::NOENT) => {
                let may_have = self.res.upper_oci_whiteouts || upper.had_oci_whiteouts();
                if may_have && sys::stat_at(upper.fd(), &markers::oci_whiteout_name(name)).is_ok() {
                    Ok(Slot::OciWhiteout)
                } else {
                    Ok(Slot::Empty)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// On-disk owner and mode for a new object, following the setgid-directory rules,
    /// and the owner the object gets when the daemon creates it in `parent_upper` (when
    /// that is certain without looking).
    fn new_owner(
        &self,
        ctx: Ctx,
        parent_upper: &RealDir,
        mode: u32,
    ) -> SysResult<(u32, u32, u32, Option<Owner>)> {
        let m = &self.opts.idmap;
        let caller_gid = ctx.gid;
        // The mount owner acting as root creates root's objects.
        let as_root = |id: u32, own: u32| {
            if self.owner_is_root && id == own {
                0
            } else {
                id
            }
        };
        let (own_uid, own_gid) = sys::owner_ids();
        let ctx = Ctx {
            uid: as_root(m.uid_stored(ctx.uid), own_uid),
            gid: as_root(m.gid_stored(ctx.gid), own_gid),
            pid: ctx.pid,
        };
        let pst = sys::stat_fd(parent_upper.fd())?;
        let pst = match self.layers().ovl(UPPER) {
            Some(o) => o.shown(parent_upper.fd(), None, &pst),
            None => pst,
        };
        let mut mode = mode;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            if sys::is_dir_mode(mode) {
                mode |= libc::S_ISGID;
            }
            pst.st_gid
        } else {
            ctx.gid
        };
        if mode & libc::S_ISGID != 0
            && !sys::is_dir_mode(mode)
            && ctx.uid != 0
            && gid != ctx.gid
            && !sys::process_groups(ctx.pid)
                .iter()
                .any(|g| *g == caller_gid || m.gid_stored(*g) == gid)
        {
            mode &= !libc::S_ISGID;
        }
        // The daemon's own ids, or the directory's group under setgid (or `grpid`): the
        // same whenever the directory's group is the daemon's.
        let egid = sys::getegid();
        let created = (pst.st_gid == egid).then(|| (sys::geteuid(), egid));
        Ok((ctx.uid, gid, mode, created))
    }

    /// Create an object in `dirfd` under `name` with the final owner and mode.
    /// `created_as`: the owner creation gives it, if known (else it is looked up).
    #[allow(clippy::too_many_arguments)]
    fn make_obj(
        &self,
        dirfd: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        obj: &NewObj<'_>,
        mode: u32,
        uid: u32,
        gid: u32,
        created_as: Option<Owner>,
    ) -> SysResult<Option<OwnedFd>> {
        // A rootless upper dir keeps on disk what it can, and the rest in a record.
        let ovl = self.layers().ovl(UPPER);
        let perm = match ovl {
            Some(_) => override_stat::disk_mode(mode) & 0o7777,
            None => mode & 0o7777,
        };
        let fd = match obj {
            NewObj::File { flags } => Some(sys::open_at(
                dirfd,
                name,
                OFlags::CREATE | OFlags::EXCL | real_access(*flags),
                perm,
            )?),
            // A device node, fifo or socket there: an empty file stands in.
            NewObj::Node { .. } if ovl.is_some() => {
                sys::open_at(dirfd, name, OFlags::CREATE | OFlags::EXCL, perm)?;
                None
            }
            NewObj::Node { rdev } => {
                sys::mknod_at(dirfd, name, mode, *rdev)?;
                None
            }
            NewObj::Dir => {
                sys::mkdir_at(dirfd, name, perm)?;
                None
            }
            NewObj::Symlink { target } => {
                sys::symlink_at(target, dirfd, name)?;
                None
            }
        };
        if let Some(ovl) = ovl {
            let rdev = match obj {
                NewObj::Node { rdev } => *rdev,
                _ => 0,
            };
            let rec = Recorded {
                uid,
                gid,
                mode,
                rdev,
            };
            if let Err(e) = ovl.write(dirfd, Some(name), &rec) {
                let _ = match obj {
                    NewObj::Dir => sys::rmdir_at(dirfd, name),
                    _ => sys::unlink_at(dirfd, name),
                };
                return Err(e);
            }
            self.own_on_disk(dirfd, Some(name), uid, gid);
            return Ok(fd);
        }
        let (cur_uid, cur_gid) = match created_as {
            Some(ids) => ids,
            None => {
                let st = sys::stat_at(dirfd, name)?;
                (st.st_uid, st.st_gid)
            }
        };
        if cur_uid != uid || cur_gid != gid {
            sys::chown_at(dirfd, Some(name), Some(uid), Some(gid))?;
            // chown clears set-id bits of files: put them back.
            if perm & 0o6000 != 0 && !matches!(obj, NewObj::Symlink { .. }) {
                sys::chmod_at(dirfd, Some(name), perm)?;
            }
        } else if matches!(obj, NewObj::Dir) && perm & 0o7000 != 0 {
            sys::chmod_at(dirfd, Some(name), perm)?;
        }
        Ok(fd)
    }

    /// Shared path of create/mknod/mkdir/symlink.
    fn create_common(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        obj: NewObj<'_>,
    ) -> SysResult<(Arc<Node>, Option<OwnedFd>, Stat)> {
        self.check_new_name(name)?;
        let parent_node = self.node(parent)?;
        let parent_upper = self.upper_dir(&parent_node)?;
        let slot = self.slot(&parent_upper, name)?;
        let (uid, gid, mode, created_as) = self.new_owner(ctx, &parent_upper, mode)?;
        let is_dir = matches!(obj, NewObj::Dir);
        let fd = match slot {
            Slot::Empty | Slot::OciWhiteout => {
                let fd =
                    self.make_obj(parent_upper.fd(), name, &obj, mode, uid, gid, created_as)?;
                if matches!(slot, Slot::OciWhiteout) {
                    let _ = sys::unlink_at(parent_upper.fd(), &markers::oci_whiteout_name(name));
                    if is_dir && let Some(w) = &self.writer {
                        w.set_opaque(parent_upper.fd(), Some(name))?;
                    }
                }
                fd
            }
            Slot::Whiteout => {
                // Build the object in the work dir, then swap it with the whiteout.
                let work = self.work()?;
                let tmp = self.tmp_name();
                let fd = self.make_obj(work, &tmp, &obj, mode, uid, gid, None)?;
                let res = (|| {
                    if is_dir {
                        if let Some(w) = &self.writer {
                            w.set_opaque(work, Some(&tmp))?;
                        }
                        sys::rename_at(work, &tmp, parent_upper.fd(), name, RenameFlags::EXCHANGE)?;
                        sys::unlink_at(work, &tmp)
                    } else {
                        sys::rename_at(work, &tmp, parent_upper.fd(), name, RenameFlags::empty())
                    }
                })();
                if let Err(e) = res {
                    let _ = sys::remove_tree(work, &tmp);
                    return Err(e);
                }
                fd
            }
        };
        let st = sys::stat_at(parent_upper.fd(), name)?;
        let ino = self.layers().map_ino(st.st_dev, st.st_ino);
        let kind = Kind::from_mode(st.st_mode);
        let state = if is_dir {
            let dfd = sys::open_dir_path(parent_upper.fd(), name)?;
            NodeState::dir(DirState {
                parent: Some(parent_node.clone()),
                name: name.to_os_string(),
                upper: Some(RealDir::new(UPPER, dfd)),
                lowers: Arc::from(Vec::new()),
                redirect: None,
                impure: false,
            })
        } else {
            NodeState::File(FileState {
                aliases: smallvec::smallvec![Alias {
                    parent: parent_node.clone(),
                    name: name.into(),
                    real: parent_upper.clone(),
                }],
                layer: UPPER,
                orphan: None,
                orphan_emptied: false,
            })
        };
        let node = self.table.insert_new(ino, kind, state);
        self.name_changed(&parent_node, name);
        Ok((node, fd, st))
    }

    fn entry_for(&self, node: &Arc<Node>) -> SysResult<Entry> {
        let st = self.stat_node(node)?;
        Ok(self.entry_from(node, &st))
    }

    /// An entry for a node whose current stat is at hand; the lookup count rises.
    fn entry_from(&self, node: &Arc<Node>, st: &Stat) -> Entry {
        let attr = self.attr_of(node, st);
        node.inc_lookup(1);
        Entry {
            attr,
            generation: node.generation.into(),
            immutable: false,
        }
    }

    /// `create`: make and open a regular file.
    pub fn create(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> SysResult<(Entry, Opened)> {
        let mode = libc::S_IFREG | (mode & 0o7777);
        let (node, fd, st) = self.create_common(ctx, parent, name, mode, NewObj::File { flags })?;
        let file = fd.ok_or(Errno::IO)?;
        let entry = self.entry_from(&node, &st);
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let fh = self
            .files
            .insert(FileHandle::new(node, file, UPPER, writable));
        Ok((
            entry,
            Opened {
                fh,
                keep_cache: false,
            },
        ))
    }

    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
    ) -> SysResult<Entry> {
        if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
            // A 0/0 device is a whiteout in the upper dir: it would vanish from the
            // merged view (and hide what a later lower layer has). The kernel's
            // overlayfs refuses it too, even to root.
            return Err(Errno::PERM);
        }
        let obj = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => NewObj::File {
                flags: libc::O_RDONLY,
            },
            libc::S_IFDIR => return Err(Errno::INVAL),
            _ => NewObj::Node { rdev },
        };
        let mode = if mode & libc::S_IFMT == 0 {
            mode | libc::S_IFREG
        } else {
            mode
        };
        let (node, _fd, st) = self.create_common(ctx, parent, name, mode, obj)?;
        Ok(self.entry_from(&node, &st))
    }

    pub fn mkdir(&self, ctx: Ctx, parent: u64, name: &OsStr, mode: u32) -> SysResult<Entry> {
        let mode = libc::S_IFDIR | (mode & 0o7777);
        let (node, _, st) = self.create_common(ctx, parent, name, mode, NewObj::Dir)?;
        Ok(self.entry_from(&node, &st))
    }

    pub fn symlink(&self, ctx: Ctx, parent: u64, name: &OsStr, target: &OsStr) -> SysResult<Entry> {
        let (node, _, st) = self.create_common(
            ctx,
            parent,
            name,
            libc::S_IFLNK | 0o777,
            NewObj::Symlink { target },
        )?;
        Ok(self.entry_from(&node, &st))
    }

    /// `link`: a new name for an existing non-directory.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> SysResult<Entry> {
        self.check_new_name(newname)?;
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::PERM);
        }
        self.copy_up(&node)?;
        // A second name for a copy still being synced would outlive its removal.
        self.syncs.wait(node.ino);
        let new_parent = self.node(newparent)?;
        let parent_upper = self.upper_dir(&new_parent)?;
        let slot = self.slot(&parent_upper, newname)?;
        let (real, name) = self.first_alias(&node)?;
        match slot {
            Slot::Whiteout => {
                let work = self.work()?;
                let tmp = self.tmp_name();
                sys::link_at(real.fd(), &name, work, &tmp)?;
                if let Err(e) =
                    sys::rename_at(work, &tmp, parent_upper.fd(), newname, RenameFlags::empty())
                {
                    let _ = sys::unlink_at(work, &tmp);
                    return Err(e);
                }
            }
            Slot::Empty | Slot::OciWhiteout => {
                sys::link_at(real.fd(), &name, parent_upper.fd(), newname)?;
                if matches!(slot, Slot::OciWhiteout) {
                    let _ = sys::unlink_at(parent_upper.fd(), &markers::oci_whiteout_name(newname));
                }
            }
        }
        self.mark_impure(&new_parent, &parent_upper);
        if let NodeState::File(f) = &mut *node.state.write() {
            f.aliases.push(Alias {
                parent: new_parent.clone(),
                name: newname.into(),
                real: parent_upper,
            });
        }
        self.name_changed(&new_parent, newname);
        self.twin_changed(&node);
        self.entry_for(&node)
    }

    /// At the end of the session: the work dir is left empty.
    pub fn finish(&self) {
        self.syncs.wait_all();
        if let Some(w) = &self.writer {
            w.finish();
        }
    }

    /// Remove a name from the upper dir, leaving a whiteout if a lower layer has it.
    /// `in_upper`: the name has a real entry in the upper dir; otherwise it comes from a
    /// lower layer (so a whiteout is needed without asking).
    fn remove_name(
        &self,
        parent: &Arc<Node>,
        parent_upper: &RealDir,
        name: &OsStr,
        in_upper: bool,
        is_dir: bool,
    ) -> SysResult<()> {
        let hide_lower = !in_upper || {
            let view = self.dir_view(parent)?;
            self.res.lower_has(&view, name)?
        };
        self.writer()?
            .remove(parent_upper, name, in_upper, is_dir, hide_lower)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        let parent_node = self.node(parent)?;
        let (node, _) = self.lookup_node(&parent_node, name)?.ok_or(Errno::NOENT)?;
        if node.is_dir() {
            return Err(Errno::ISDIR);
        }
        let parent_upper = self.upper_dir(&parent_node)?;
        self.copy_up_if_linked(&node)?;
        // Its record names it by inode: the inode must not be freed (and reused) first.
        self.syncs.wait(node.ino);
        let in_upper = self.file_layer(&node) == UPPER;
        if in_upper {
            self.keep_orphan_if_last(&node, &parent_node, &parent_upper, name);
        }
        let r = self.remove_name(&parent_node, &parent_upper, name, in_upper, false);
        self.name_changed(&parent_node, name);
        r?;
        self.drop_alias(&node, &parent_node, name);
        Ok(())
    }

    /// Before the last known name of an upper file goes while the kernel still knows the
    /// node (it is open, or the kernel holds its inode), keep a handle to it: an unlinked
    /// file stays usable while open, and its inode number is not given to a new file
    /// while the kernel may still send requests for the old one (a reused number would
    /// make the kernel mark the old inode bad, failing those requests with EIO). The
    /// handle goes with the node, when the kernel forgets it.
    pub(super) fn keep_orphan_if_last(
        &self,
        node: &Arc<Node>,
        parent_node: &Node,
        parent_upper: &RealDir,
        name: &OsStr,
    ) {
        if node.open_files.load(std::sync::atomic::Ordering::Acquire) == 0 && node.nlookup() == 0 {
            return;
        }
        let last = match &*node.state.read() {
            NodeState::File(f) => f
                .aliases
                .iter()
                .all(|a| a.parent.ino == parent_node.ino && *a.name == *name),
            NodeState::Dir(_) => false,
        };
        if last
            && let Ok(fd) = sys::open_path_at(parent_upper.fd(), name)
            && let NodeState::File(f) = &mut *node.state.write()
        {
            f.orphan = Some(fd);
        }
    }

    /// A name of `node` is gone. Where it was the last one, its data is freed now if
    /// no handle has the file open, as removing a file frees it on the kernel's
    /// overlayfs; the orphan handle (see `keep_orphan_if_last`) otherwise held it until
    /// the kernel forgot the node, so a full upper layer stayed full for a while after
    /// an `rm`.
    pub(super) fn drop_alias(&self, node: &Arc<Node>, parent_node: &Node, name: &OsStr) {
        if let NodeState::File(f) = &mut *node.state.write() {
            f.aliases
                .retain(|a| !(a.parent.ino == parent_node.ino && *a.name == *name));
            empty_orphan(node, f);
        }
    }

    /// Whether a merged directory has no visible entries.
    pub(super) fn dir_is_empty(&self, node: &Arc<Node>) -> SysResult<bool> {
        let view = self.dir_view(node)?;
        Ok(self.res.list(&view)?.is_empty())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        if name == "." {
            return Err(Errno::INVAL);
        }
        let parent_node = self.node(parent)?;
        let (node, _) = self.lookup_node(&parent_node, name)?.ok_or(Errno::NOENT)?;
        if !node.is_dir() {
            return Err(Errno::NOTDIR);
        }
        if !self.dir_is_empty(&node)? {
            return Err(Errno::NOTEMPTY);
        }
        let parent_upper = self.upper_dir(&parent_node)?;
        let in_upper = matches!(&*node.state.read(), NodeState::Dir(d) if d.upper.is_some());
        let r = self.remove_name(&parent_node, &parent_upper, name, in_upper, true);
        self.name_changed(&parent_node, name);
        r
    }

    /// Where to apply an attribute change: (real dir, name) of the upper object.
    fn upper_target(&self, node: &Arc<Node>) -> SysResult<(Arc<RealDir>, Option<OsString>)> {
        self.xattr_target(node)
    }

    pub fn setattr(&self, ctx: Ctx, ino: u64, set: SetAttr) -> SysResult<Attr> {
        let _ = ctx;
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        let node = self.node(ino)?;
        if let Some(size) = set.size {
            if node.is_dir() {
                return Err(Errno::ISDIR);
            }
            self.copy_up_limited(&node, Some(size))?;
        } else {
            self.copy_up(&node)?;
        }
        let (real, name) = self.upper_target(&node)?;
        let name = name.as_deref();
        if let Some(ovl) = self.layers().ovl(UPPER) {
            self.set_recorded(ovl, &real, name, &set)?;
        } else if set.uid.is_some() || set.gid.is_some() {
            let m = &self.opts.idmap;
            sys::chown_at(
                real.fd(),
                name,
                set.uid.map(|u| m.uid_stored(u)),
                set.gid.map(|g| m.gid_stored(g)),
            )?;
        }
        if let Some(mode) = set.mode
            && node.kind != Kind::Symlink
            && self.layers().ovl(UPPER).is_none()
        {
            sys::chmod_at(real.fd(), name, mode & 0o7777)?;
        }
        if let Some(size) = set.size {
            let h = set
                .fh
                .and_then(|fh| self.files.get(fh))
                .filter(|h| h.layer() == UPPER && h.writable);
            match h {
                Some(h) => sys::ftruncate(h.file().as_fd(), size)?,
                None => {
                    let f = self.open_real(&node, OFlags::WRONLY)?;
                    sys::ftruncate(f.as_fd(), size)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::utimens_at(
                real.fd(),
                name,
                set.atime.unwrap_or(sys::TimeSpec::Omit),
                set.mtime.unwrap_or(sys::TimeSpec::Omit),
            )?;
        }
        self.twin_changed(&node);
        let st = self.stat_node(&node)?;
        Ok(self.attr_of(&node, &st))
    }

    /// Owner and mode changes in a rootless upper layer: into the record (the mode also
    /// on disk, as far as it is safe there). Symlinks hold no record: their owner goes
    /// to the disk, where the daemon may set it.
    fn set_recorded(
        &self,
        ovl: &override_stat::OverrideLayer,
        real: &RealDir,
        name: Option<&OsStr>,
        set: &SetAttr,
    ) -> SysResult<()> {
        if set.uid.is_none() && set.gid.is_none() && set.mode.is_none() {
            return Ok(());
        }
        let m = &self.opts.idmap;
        let uid = set.uid.map(|u| m.uid_stored(u));
        let gid = set.gid.map(|g| m.gid_stored(g));
        let st = match name {
            Some(n) => sys::stat_at(real.fd(), n)?,
            None => sys::stat_fd(real.fd())?,
        };
        if sys::mode_type(st.st_mode) == libc::S_IFLNK {
            if uid.is_some() || gid.is_some() {
                let on_disk = |id: u32, owner: u32| if id == 0 { owner } else { id };
                sys::chown_at(
                    real.fd(),
                    name,
                    uid.map(|u| on_disk(u, ovl.owner.0)),
                    gid.map(|g| on_disk(g, ovl.owner.1)),
                )?;
            }
            return Ok(());
        }
        let mut rec = ovl.read(real.fd(), name, &st);
        if uid.is_some() || gid.is_some() {
            rec.uid = uid.unwrap_or(rec.uid);
            rec.gid = gid.unwrap_or(rec.gid);
            // As chown(2) on a real file: set-uid goes, set-gid with group execute.
            if set.mode.is_none() && !sys::is_dir_mode(rec.mode) {
                rec.mode &= !libc::S_ISUID;
                if rec.mode & libc::S_IXGRP != 0 {
                    rec.mode &= !libc::S_ISGID;
                }
            }
        }
        if let Some(mode) = set.mode {
            rec.mode = sys::mode_type(rec.mode) | (mode & 0o7777);
            let disk = override_stat::disk_mode(rec.mode) & 0o7777;
            if st.st_mode & 0o7777 != disk {
                sys::chmod_at(real.fd(), name, disk)?;
            }
        }
        ovl.write(real.fd(), name, &rec)?;
        if uid.is_some() || gid.is_some() {
            self.own_on_disk(real.fd(), name, rec.uid, rec.gid);
        }
        Ok(())
    }

    /// With `real_owners`, give an object of the recording upper layer its owner on disk
    /// too, where the namespace maps it (else the record alone says it). Its disk mode
    /// has no set-id bits for chown to clear.
    pub(super) fn own_on_disk(
        &self,
        dirfd: std::os::fd::BorrowedFd<'_>,
        name: Option<&OsStr>,
        uid: u32,
        gid: u32,
    ) {
        if !self.opts.real_owners {
            return;
        }
        match sys::chown_at(dirfd, name, Some(uid), Some(gid)) {
            Ok(()) | Err(Errno::INVAL) => {}
            Err(e) => log::debug!("{name:?}: chown to {uid}:{gid}: {e}"),
        }
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
        if markers::is_internal_xattr(name.as_bytes()) {
            return Err(Errno::PERM);
        }
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        let node = self.node(ino)?;
        self.copy_up(&node)?;
        let (real, n) = self.upper_target(&node)?;
        sys::set_xattr(real.fd(), n.as_deref(), name, value, flags)?;
        self.twin_changed(&node);
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> SysResult<()> {
        if markers::is_internal_xattr(name.as_bytes()) {
            return Err(Errno::PERM);
        }
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        let node = self.node(ino)?;
        // Nothing to remove: no need to copy up.
        let (real, n) = self.xattr_target(&node)?;
        if sys::get_xattr(real.fd(), n.as_deref(), name)?.is_none() {
            return Err(Errno::NODATA);
        }
        self.copy_up(&node)?;
        let (real, n) = self.upper_target(&node)?;
        sys::remove_xattr(real.fd(), n.as_deref(), name)?;
        self.twin_changed(&node);
        Ok(())
    }

    pub fn fsyncdir(&self, ino: u64) -> SysResult<()> {
        let node = self.node(ino)?;
        if !self.opts.fsync {
            return Ok(());
        }
        let up = match &*node.state.read() {
            NodeState::Dir(d) => d.upper.clone(),
            NodeState::File(_) => None,
        };
        if let Some(u) = up {
            let f = sys::open_dir_read(u.fd())?;
            sys::fsync(f.as_fd())?;
        }
        Ok(())
    }
}

/// Access mode for a newly created file's real fd.
fn real_access(flags: i32) -> OFlags {
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => OFlags::WRONLY,
        libc::O_RDWR => OFlags::RDWR,
        _ => OFlags::RDWR,
    }
}

/// Free the data of `node`'s orphan (its last name is gone) if no handle has it open:
/// after the removal of that name, and after the release of its last handle. Called
/// under the node's state lock: an open, which counts itself first, either counted
/// before this or finds the orphan emptied.
pub(super) fn empty_orphan(node: &Node, f: &mut FileState) {
    if f.aliases.is_empty()
        && !f.orphan_emptied
        && let Some(o) = &f.orphan
        && node.open_files.load(std::sync::atomic::Ordering::Acquire) == 0
    {
        f.orphan_emptied = free_unlinked_data(o.as_fd());
    }
}

/// Free the data of an upper file that has no name left: truncate it, if it is a
/// regular file that no other link names (`st_nlink` 0) and that holds blocks. Returns
/// whether it did.
fn free_unlinked_data(orphan: BorrowedFd<'_>) -> bool {
    match sys::stat_fd(orphan) {
        Ok(st)
            if st.st_nlink == 0
                && st.st_blocks > 0
                && sys::mode_type(st.st_mode) == libc::S_IFREG => {}
        _ => return false,
    }
    // Best effort: where the file cannot be opened for writing (an ordinary user's
    // daemon and a read-only mode), it is freed when the kernel forgets the node.
    match sys::reopen(orphan, OFlags::WRONLY | OFlags::NONBLOCK) {
        Ok(w) => sys::ftruncate(w.as_fd(), 0).is_ok(),
        Err(_) => false,
    }
}
