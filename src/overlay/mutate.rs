//! Mutating operations: create, mknod, mkdir, symlink, link, unlink, rmdir, rename,
//! setattr, write, xattrs. Every change lands in the upper layer.
//!
//! The kernel's VFS holds the parent directory lock during create/unlink/rename, so two
//! mutations of one directory never run here at once; copy-up has its own per-node lock.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::fs::OverlayFs;
use super::handles::FileHandle;
use super::inode_table::{Alias, DirState, FileState, Kind, Node, NodeState};
use super::layers::{RealDir, UPPER};
use super::types::{Attr, Ctx, Entry, Opened, SetAttr};
use crate::markers;
use crate::sys::{self, Errno, OFlags, RenameFlags, Stat, SysResult};

/// The work-dir name of the whiteout that device whiteouts are links to.
const SHARED_WHITEOUT: &str = "#whiteout";

/// A (uid, gid) pair.
type Owner = (u32, u32);

/// What occupies a name in the upper directory before we create there.
enum Slot {
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
    fn check_new_name(&self, name: &OsStr) -> SysResult<()> {
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
    fn slot(&self, upper: &RealDir, name: &OsStr) -> SysResult<Slot> {
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
        let ctx = Ctx {
            uid: m.uid_stored(ctx.uid),
            gid: m.gid_stored(ctx.gid),
            pid: ctx.pid,
        };
        let pst = sys::stat_fd(parent_upper.fd())?;
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
        let perm = mode & 0o7777;
        let fd = match obj {
            NewObj::File { flags } => Some(sys::open_at(
                dirfd,
                name,
                OFlags::CREATE | OFlags::EXCL | real_access(*flags),
                perm,
            )?),
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
        let pnode = self.node(parent)?;
        let pu = self.upper_dir(&pnode)?;
        let slot = self.slot(&pu, name)?;
        let (uid, gid, mode, created_as) = self.new_owner(ctx, &pu, mode)?;
        let is_dir = matches!(obj, NewObj::Dir);
        let fd = match slot {
            Slot::Empty | Slot::OciWhiteout => {
                let fd = self.make_obj(pu.fd(), name, &obj, mode, uid, gid, created_as)?;
                if matches!(slot, Slot::OciWhiteout) {
                    let _ = sys::unlink_at(pu.fd(), &markers::oci_whiteout_name(name));
                    if is_dir {
                        if let Some(w) = &self.writer {
                            w.set_opaque(pu.fd(), Some(name))?;
                        }
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
                        sys::rename_at(work, &tmp, pu.fd(), name, RenameFlags::EXCHANGE)?;
                        sys::unlink_at(work, &tmp)
                    } else {
                        sys::rename_at(work, &tmp, pu.fd(), name, RenameFlags::empty())
                    }
                })();
                if let Err(e) = res {
                    let _ = sys::remove_tree(work, &tmp);
                    return Err(e);
                }
                fd
            }
        };
        let st = sys::stat_at(pu.fd(), name)?;
        let ino = self.layers().map_ino(st.st_dev, st.st_ino);
        let kind = Kind::from_mode(st.st_mode);
        let state = if is_dir {
            let dfd = sys::open_dir_path(pu.fd(), name)?;
            NodeState::Dir(DirState {
                parent: Some(pnode.clone()),
                name: name.to_os_string(),
                upper: Some(RealDir::new(UPPER, dfd)),
                lowers: Arc::from(Vec::new()),
                redirect: None,
                impure: false,
            })
        } else {
            NodeState::File(FileState {
                aliases: vec![Alias {
                    parent: pnode.clone(),
                    name: name.to_os_string(),
                    real: pu.clone(),
                }],
                layer: UPPER,
                orphan: None,
            })
        };
        let node = self.table.insert_new(ino, kind, state);
        pnode.entries_changed();
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
            generation: 0,
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
        let np = self.node(newparent)?;
        let pu = self.upper_dir(&np)?;
        let slot = self.slot(&pu, newname)?;
        let (real, name) = self.first_alias(&node)?;
        match slot {
            Slot::Whiteout => {
                let work = self.work()?;
                let tmp = self.tmp_name();
                sys::link_at(real.fd(), &name, work, &tmp)?;
                if let Err(e) = sys::rename_at(work, &tmp, pu.fd(), newname, RenameFlags::empty()) {
                    let _ = sys::unlink_at(work, &tmp);
                    return Err(e);
                }
            }
            Slot::Empty | Slot::OciWhiteout => {
                sys::link_at(real.fd(), &name, pu.fd(), newname)?;
                if matches!(slot, Slot::OciWhiteout) {
                    let _ = sys::unlink_at(pu.fd(), &markers::oci_whiteout_name(newname));
                }
            }
        }
        self.mark_impure(&np, &pu);
        if let NodeState::File(f) = &mut *node.state.write() {
            f.aliases.push(Alias {
                parent: np.clone(),
                name: newname.to_os_string(),
                real: pu,
            });
        }
        np.entries_changed();
        self.entry_for(&node)
    }

    /// At the end of the session: drop the shared whiteout, so that a cleanly
    /// unmounted work dir is empty.
    pub fn finish(&self) {
        if let Ok(work) = self.work() {
            let _ = sys::unlink_at(work, OsStr::new(SHARED_WHITEOUT));
        }
    }

    /// Create a whiteout at `name` in `dirfd`. Device whiteouts are hard links to one
    /// shared whiteout in the work dir (as the kernel's overlayfs does since 5.8): no
    /// new inode per deleted name.
    fn make_whiteout(&self, dirfd: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
        let w = self.writer.as_ref().ok_or(Errno::ROFS)?;
        if !w.device_whiteouts {
            return w.make_whiteout(dirfd, name);
        }
        let work = self.work()?;
        let shared = OsStr::new(SHARED_WHITEOUT);
        for _ in 0..3 {
            match sys::link_at(work, shared, dirfd, name) {
                Ok(()) => return Ok(()),
                Err(Errno::NOENT) => match w.make_whiteout(work, shared) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                },
                // Link count exhausted: start a new shared whiteout.
                Err(Errno::MLINK) => {
                    let _ = sys::unlink_at(work, shared);
                }
                Err(e) => return Err(e),
            }
        }
        w.make_whiteout(dirfd, name)
    }

    /// Put a whiteout at `name` in `pu`, replacing whatever real entry is there.
    fn whiteout_over(&self, pu: &RealDir, name: &OsStr, existing_dir: bool) -> SysResult<()> {
        let w = self.writer.as_ref().ok_or(Errno::ROFS)?;
        let work = self.work()?;
        if !w.device_whiteouts {
            if existing_dir {
                sys::remove_tree(pu.fd(), name)?;
            } else {
                match sys::unlink_at(pu.fd(), name) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            return w.make_whiteout(pu.fd(), name);
        }
        let tmp = self.tmp_name();
        self.make_whiteout(work, &tmp)?;
        let flags = if existing_dir {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::empty()
        };
        if let Err(e) = sys::rename_at(work, &tmp, pu.fd(), name, flags) {
            let _ = sys::unlink_at(work, &tmp);
            return Err(e);
        }
        if existing_dir {
            sys::remove_tree(work, &tmp)?;
        }
        Ok(())
    }

    /// Remove a name from the upper dir, leaving a whiteout if a lower layer has it.
    /// `in_upper`: the name has a real entry in the upper dir; otherwise it comes from a
    /// lower layer (so a whiteout is needed without asking).
    fn remove_name(
        &self,
        pnode: &Arc<Node>,
        pu: &RealDir,
        name: &OsStr,
        in_upper: bool,
        is_dir: bool,
    ) -> SysResult<()> {
        let needs_wh = !in_upper || {
            let view = self.dir_view(pnode)?;
            self.res.lower_has(&view, name)?
        };
        if needs_wh {
            if in_upper {
                self.whiteout_over(pu, name, is_dir)
            } else {
                self.make_whiteout(pu.fd(), name)
            }
        } else if in_upper {
            if is_dir {
                // Its upper dir may still hold whiteouts: move it away, then delete.
                let work = self.work()?;
                let tmp = self.tmp_name();
                sys::rename_at(pu.fd(), name, work, &tmp, RenameFlags::empty())?;
                sys::remove_tree(work, &tmp)
            } else {
                sys::unlink_at(pu.fd(), name)
            }
        } else {
            Ok(())
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        let pnode = self.node(parent)?;
        let (node, _) = self.lookup_node(&pnode, name)?.ok_or(Errno::NOENT)?;
        if node.is_dir() {
            return Err(Errno::ISDIR);
        }
        let pu = self.upper_dir(&pnode)?;
        self.copy_up_if_linked(&node)?;
        let in_upper = self.file_layer(&node) == UPPER;
        if in_upper {
            self.keep_orphan_if_last(&node, &pnode, &pu, name);
        }
        let r = self.remove_name(&pnode, &pu, name, in_upper, false);
        pnode.entries_changed();
        r?;
        self.drop_alias(&node, &pnode, name);
        Ok(())
    }

    /// Before the last known name of an open upper file goes, keep a handle to it (an
    /// unlinked file stays usable while open).
    fn keep_orphan_if_last(&self, node: &Arc<Node>, pnode: &Node, pu: &RealDir, name: &OsStr) {
        if node.open_files.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return;
        }
        let last = match &*node.state.read() {
            NodeState::File(f) => f
                .aliases
                .iter()
                .all(|a| a.parent.ino == pnode.ino && a.name == name),
            NodeState::Dir(_) => false,
        };
        if last {
            if let Ok(fd) = sys::open_path_at(pu.fd(), name) {
                if let NodeState::File(f) = &mut *node.state.write() {
                    f.orphan = Some(fd);
                }
            }
        }
    }

    fn drop_alias(&self, node: &Arc<Node>, pnode: &Node, name: &OsStr) {
        if let NodeState::File(f) = &mut *node.state.write() {
            f.aliases
                .retain(|a| !(a.parent.ino == pnode.ino && a.name == name));
        }
    }

    /// Whether a merged directory has no visible entries.
    fn dir_is_empty(&self, node: &Arc<Node>) -> SysResult<bool> {
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
        let pnode = self.node(parent)?;
        let (node, _) = self.lookup_node(&pnode, name)?.ok_or(Errno::NOENT)?;
        if !node.is_dir() {
            return Err(Errno::NOTDIR);
        }
        if !self.dir_is_empty(&node)? {
            return Err(Errno::NOTEMPTY);
        }
        let pu = self.upper_dir(&pnode)?;
        let in_upper = matches!(&*node.state.read(), NodeState::Dir(d) if d.upper.is_some());
        let r = self.remove_name(&pnode, &pu, name, in_upper, true);
        pnode.entries_changed();
        r
    }

    /// The path a directory's lower part lives at in every lower layer (absolute).
    fn lower_path(&self, node: &Arc<Node>) -> Vec<u8> {
        let (parent, name, redirect) = match &*node.state.read() {
            NodeState::Dir(d) => (d.parent.clone(), d.name.clone(), d.redirect.clone()),
            NodeState::File(_) => return Vec::new(),
        };
        let Some(parent) = parent else {
            return Vec::new();
        };
        let mut base = self.lower_path(&parent);
        match redirect {
            Some(r) if r.first() == Some(&b'/') => r,
            Some(r) => {
                base.push(b'/');
                base.extend_from_slice(&r);
                base
            }
            None => {
                base.push(b'/');
                base.extend_from_slice(name.as_bytes());
                base
            }
        }
    }

    /// Prepare a directory that moves: copy it up, and if it has lower parts, record
    /// where they are (redirect), so the rename keeps every file.
    fn prepare_dir_move(&self, node: &Arc<Node>) -> SysResult<Option<Vec<u8>>> {
        let has_lower = matches!(&*node.state.read(), NodeState::Dir(d) if !d.lowers.is_empty());
        let up = self.upper_dir(node)?;
        if !has_lower {
            return Ok(None);
        }
        let path = self.lower_path(node);
        let w = self.writer.as_ref().ok_or(Errno::ROFS)?;
        w.set_xattr(up.fd(), None, "redirect", &path)?;
        Ok(Some(path))
    }

    /// `rename` with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` support.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> SysResult<()> {
        let r = self.rename_inner(parent, name, newparent, newname, flags);
        // Listings of both directories are stale whatever happened.
        for p in [parent, newparent] {
            if let Ok(n) = self.node(p) {
                n.entries_changed();
            }
        }
        r
    }

    fn rename_inner(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> SysResult<()> {
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(Errno::INVAL);
        }
        if !exchange {
            self.check_new_name(newname)?;
        } else if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        let pnode = self.node(parent)?;
        let npnode = self.node(newparent)?;
        let (src, _) = self.lookup_node(&pnode, name)?.ok_or(Errno::NOENT)?;
        let dst = self.lookup_node(&npnode, newname)?.map(|(n, _)| n);
        if noreplace && dst.is_some() {
            return Err(Errno::EXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::NOENT);
        }
        if let Some(d) = &dst {
            if Arc::ptr_eq(d, &src) {
                // Two names of one file (or the same name): nothing to do.
                return Ok(());
            }
            if !exchange {
                if src.is_dir() && !d.is_dir() {
                    return Err(Errno::NOTDIR);
                }
                if !src.is_dir() && d.is_dir() {
                    return Err(Errno::ISDIR);
                }
                if d.is_dir() && !self.dir_is_empty(d)? {
                    return Err(Errno::NOTEMPTY);
                }
            }
        }
        if src.is_dir() && self.is_ancestor(&src, &npnode) {
            return Err(Errno::INVAL);
        }
        if exchange {
            return self.rename_exchange(
                &pnode,
                name,
                &src,
                &npnode,
                newname,
                dst.as_ref().ok_or(Errno::NOENT)?,
            );
        }

        let pu = self.upper_dir(&pnode)?;
        let npu = self.upper_dir(&npnode)?;
        // The source moves as an upper object.
        let redirect = if src.is_dir() {
            self.prepare_dir_move(&src)?
        } else {
            self.copy_up(&src)?;
            None
        };
        let src_view = self.dir_view(&pnode)?;
        let src_needs_wh = self.res.lower_has(&src_view, name)?;
        let dst_view = self.dir_view(&npnode)?;
        let dst_lower = self.res.lower_has(&dst_view, newname)?;

        // A plain upper directory moved over a lower one must not merge with it: mark it
        // opaque before it moves (it hides nothing where it is), so no crash can leave
        // it merged at its new place.
        let make_opaque = src.is_dir() && redirect.is_none() && dst_lower;
        if make_opaque {
            if let Some(w) = &self.writer {
                w.set_opaque(pu.fd(), Some(name))?;
            }
        }
        // Clear what is in the upper dir at the destination.
        if let Some(d) = &dst {
            self.copy_up_if_linked(d)?;
            if d.is_dir() {
                let in_upper = matches!(&*d.state.read(), NodeState::Dir(s) if s.upper.is_some());
                if in_upper {
                    // Merged-empty: its upper dir holds only whiteouts.
                    self.empty_upper_dir(d)?;
                }
            } else if self.file_layer(d) == UPPER {
                self.keep_orphan_if_last(d, &npnode, &npu, newname);
            }
        }
        match self.slot_after_target(&npu, newname)? {
            Slot::Whiteout if src.is_dir() => {
                sys::unlink_at(npu.fd(), newname)?;
            }
            Slot::OciWhiteout => {
                let _ = sys::unlink_at(npu.fd(), &markers::oci_whiteout_name(newname));
            }
            _ => {}
        }
        let device_wh = self.writer.as_ref().is_some_and(|w| w.device_whiteouts);
        let mut wh_done = false;
        {
            // getattr and open follow a file's aliases by name without the kernel's
            // directory locks: the real rename and the alias update must look atomic
            // to them, or in between they would find the whiteout left at the old
            // name, or the replaced file at the new one.
            let (mut src_st, dst_st) = lock_states(&src, dst.as_ref());
            if src_needs_wh && device_wh {
                match sys::rename_at(pu.fd(), name, npu.fd(), newname, RenameFlags::WHITEOUT) {
                    Ok(()) => wh_done = true,
                    Err(Errno::INVAL) | Err(Errno::PERM) => {
                        sys::rename_at(pu.fd(), name, npu.fd(), newname, RenameFlags::empty())?
                    }
                    Err(e) => return Err(e),
                }
            } else {
                sys::rename_at(pu.fd(), name, npu.fd(), newname, RenameFlags::empty())?;
            }
            if let Some(mut d) = dst_st {
                if let NodeState::File(f) = &mut *d {
                    f.aliases
                        .retain(|a| !(a.parent.ino == npnode.ino && a.name == newname));
                }
            }
            record_move(
                &mut src_st,
                &pnode,
                name,
                &npnode,
                newname,
                &npu,
                redirect.clone(),
            );
        }
        if src_needs_wh && !wh_done {
            self.make_whiteout(pu.fd(), name)?;
        }
        if make_opaque {
            if let NodeState::Dir(s) = &mut *src.state.write() {
                s.lowers = Arc::from(Vec::new());
            }
        }

        // Update the nodes.
        if let Some(d) = &dst {
            self.drop_alias(d, &npnode, newname);
        }
        self.moved(&src, &pnode, name, &npnode, newname, &npu, redirect);
        Ok(())
    }

    /// The slot at the destination once a replaced target is out of the way.
    fn slot_after_target(&self, pu: &RealDir, name: &OsStr) -> SysResult<Slot> {
        match self.slot(pu, name) {
            Err(Errno::EXIST) => Ok(Slot::Empty),
            other => other,
        }
    }

    /// Delete everything inside a directory's upper dir (whiteouts of a merged-empty dir).
    fn empty_upper_dir(&self, node: &Arc<Node>) -> SysResult<()> {
        let up = match &*node.state.read() {
            NodeState::Dir(d) => d.upper.clone(),
            NodeState::File(_) => None,
        };
        if let Some(up) = up {
            for e in sys::read_dir_all(up.fd())? {
                sys::remove_tree(up.fd(), &e.name)?;
            }
        }
        Ok(())
    }

    /// Record a move in the node.
    #[allow(clippy::too_many_arguments)]
    fn moved(
        &self,
        node: &Arc<Node>,
        from: &Arc<Node>,
        name: &OsStr,
        to: &Arc<Node>,
        newname: &OsStr,
        to_upper: &Arc<RealDir>,
        redirect: Option<Vec<u8>>,
    ) {
        let origin = record_move(
            &mut node.state.write(),
            from,
            name,
            to,
            newname,
            to_upper,
            redirect,
        );
        if origin {
            self.mark_impure(to, to_upper);
        }
    }

    fn rename_exchange(
        &self,
        pnode: &Arc<Node>,
        name: &OsStr,
        src: &Arc<Node>,
        npnode: &Arc<Node>,
        newname: &OsStr,
        dst: &Arc<Node>,
    ) -> SysResult<()> {
        if src.is_dir() && self.is_ancestor(src, npnode)
            || dst.is_dir() && self.is_ancestor(dst, pnode)
        {
            return Err(Errno::INVAL);
        }
        let pu = self.upper_dir(pnode)?;
        let npu = self.upper_dir(npnode)?;
        let r1 = if src.is_dir() {
            self.prepare_dir_move(src)?
        } else {
            self.copy_up(src)?;
            None
        };
        let r2 = if dst.is_dir() {
            self.prepare_dir_move(dst)?
        } else {
            self.copy_up(dst)?;
            None
        };
        sys::rename_at(pu.fd(), name, npu.fd(), newname, RenameFlags::EXCHANGE)?;
        // Moved plain dirs must not merge with what lies below their new names.
        for (node, dir_upper, n, redirected) in [
            (src, &npu, newname, r1.is_some()),
            (dst, &pu, name, r2.is_some()),
        ] {
            if node.is_dir() && !redirected {
                let view = self.dir_view(if std::ptr::eq(dir_upper.as_ref(), npu.as_ref()) {
                    npnode
                } else {
                    pnode
                })?;
                if self.res.lower_has(&view, n)? {
                    if let Some(w) = &self.writer {
                        w.set_opaque(dir_upper.fd(), Some(n))?;
                    }
                    if let NodeState::Dir(s) = &mut *node.state.write() {
                        s.lowers = Arc::from(Vec::new());
                    }
                }
            }
        }
        // Swap the names in both nodes (src first with a placeholder to avoid clashes).
        let placeholder = OsString::from("\0exchange");
        self.moved(src, pnode, name, npnode, &placeholder, &npu, r1);
        self.moved(dst, npnode, newname, pnode, name, &pu, r2);
        self.moved(src, npnode, &placeholder, npnode, newname, &npu, None);
        Ok(())
    }

    /// Whether `a` is `b` or one of its ancestors.
    fn is_ancestor(&self, a: &Arc<Node>, b: &Arc<Node>) -> bool {
        let mut cur = Some(b.clone());
        while let Some(n) = cur {
            if Arc::ptr_eq(&n, a) {
                return true;
            }
            cur = match &*n.state.read() {
                NodeState::Dir(d) => d.parent.clone(),
                NodeState::File(_) => None,
            };
        }
        false
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
        if set.uid.is_some() || set.gid.is_some() {
            let m = &self.opts.idmap;
            sys::chown_at(
                real.fd(),
                name,
                set.uid.map(|u| m.uid_stored(u)),
                set.gid.map(|g| m.gid_stored(g)),
            )?;
        }
        if let Some(mode) = set.mode {
            if node.kind != Kind::Symlink {
                sys::chmod_at(real.fd(), name, mode & 0o7777)?;
            }
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
        let st = self.stat_node(&node)?;
        Ok(self.attr_of(&node, &st))
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
        sys::set_xattr(real.fd(), n.as_deref(), name, value, flags)
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
        sys::remove_xattr(real.fd(), n.as_deref(), name)
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

/// Record in a node's state that it moved from `from`/`name` to `to`/`newname`.
/// Returns whether the new parent now holds an object with an origin (impure).
fn record_move(
    st: &mut NodeState,
    from: &Node,
    name: &OsStr,
    to: &Arc<Node>,
    newname: &OsStr,
    to_upper: &Arc<RealDir>,
    redirect: Option<Vec<u8>>,
) -> bool {
    match st {
        NodeState::Dir(d) => {
            d.parent = Some(to.clone());
            d.name = newname.to_os_string();
            if redirect.is_some() {
                d.redirect = redirect;
            }
            d.redirect.is_some()
        }
        NodeState::File(f) => {
            for a in f.aliases.iter_mut() {
                if a.parent.ino == from.ino && a.name == name {
                    a.parent = to.clone();
                    a.name = newname.to_os_string();
                    a.real = to_upper.clone();
                }
            }
            true
        }
    }
}

type StateGuard<'a> = parking_lot::RwLockWriteGuard<'a, NodeState>;

/// Write-lock the states of a rename's source and (optional, distinct) target, in a
/// fixed order. No other path holds two node states at once.
fn lock_states<'a>(
    src: &'a Arc<Node>,
    dst: Option<&'a Arc<Node>>,
) -> (StateGuard<'a>, Option<StateGuard<'a>>) {
    match dst {
        Some(d) if d.serial < src.serial => {
            let dg = d.state.write();
            (src.state.write(), Some(dg))
        }
        Some(d) => {
            let sg = src.state.write();
            (sg, Some(d.state.write()))
        }
        None => (src.state.write(), None),
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
