//! Copy-up: bring a lower object into the upper layer before its first change.
//!
//! The copy is built in the work directory (same filesystem as the upper layer) with its
//! data, owner, mode, xattrs and timestamps, then renamed into place: a crash at any
//! point leaves either the untouched lower object or the complete copy, and leftovers in
//! the work dir are removed at the next mount. Parents are copied up first, and their
//! timestamps are restored afterwards so a copy-up is invisible. A lower file with
//! several names gets every visible name linked to its copy; a journal link in the work
//! dir (`#links.DEV.INO.SHOWN`) lets the next mount finish that if the daemon dies
//! half-way, so the names never come apart.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::copy_sync::{self, join};
use super::fs::OverlayFs;
use super::inode_table::{Alias, Kind, Node, NodeState};
use super::layers::{LayerId, RealDir, UPPER};
use crate::markers::{self, ORIGIN_INO};
use crate::override_stat::{self, Recorded};
use crate::sys::{self, Errno, OFlags, Stat, SysResult, TimeSpec};

/// Saved timestamps of a directory, restored after we add an entry to it internally.
pub(crate) struct SavedTimes {
    atime: TimeSpec,
    mtime: TimeSpec,
}

impl SavedTimes {
    pub(crate) fn of(st: &Stat) -> Self {
        SavedTimes {
            atime: TimeSpec::Set(st.st_atime, st.st_atime_nsec as i64),
            mtime: TimeSpec::Set(st.st_mtime, st.st_mtime_nsec as i64),
        }
    }

    pub(crate) fn capture(dir: &RealDir) -> SysResult<Self> {
        Ok(Self::of(&sys::stat_fd(dir.fd())?))
    }

    pub(crate) fn restore(&self, dir: &RealDir) {
        self.restore_at(dir.fd());
    }

    pub(crate) fn restore_at(&self, dir: BorrowedFd<'_>) {
        let _ = sys::utimens_at(dir, None, self.atime, self.mtime);
    }
}

impl OverlayFs {
    /// The work directory; only called on writable mounts.
    pub(crate) fn work(&self) -> SysResult<BorrowedFd<'_>> {
        Ok(self.writer()?.work())
    }

    /// Make sure a directory node has an upper directory, copying up parents first.
    pub(crate) fn upper_dir(&self, node: &Arc<Node>) -> SysResult<Arc<RealDir>> {
        if let NodeState::Dir(d) = &*node.state.read() {
            if let Some(u) = &d.upper {
                return Ok(u.clone());
            }
        } else {
            return Err(Errno::NOTDIR);
        }
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        let _guard = node.copy_up_lock.lock();
        let (parent, name, src) = match &*node.state.read() {
            NodeState::Dir(d) => {
                if let Some(u) = &d.upper {
                    return Ok(u.clone());
                }
                let parent = d.parent.clone().ok_or(Errno::ROFS)?;
                (parent, d.name.clone(), d.lowers[0].clone())
            }
            NodeState::File(_) => return Err(Errno::NOTDIR),
        };
        let parent_upper = self.upper_dir(&parent)?;
        let st = self.as_stored(src.layer, sys::stat_fd(src.fd())?);
        let shown = self.recorded(src.layer, src.fd(), None, &st);
        let work = self.work()?;
        let tmp = self.tmp_name();
        sys::mkdir_at(work, &tmp, 0o700)?;
        let built = (|| {
            copy_xattrs(src.fd(), None, work, Some(&tmp))?;
            self.set_copy_owner(work, &tmp, &shown)?;
            sys::utimens_at(
                work,
                Some(&tmp),
                TimeSpec::Set(st.st_atime, st.st_atime_nsec as i64),
                TimeSpec::Set(st.st_mtime, st.st_mtime_nsec as i64),
            )
        })();
        if let Err(e) = built {
            let _ = sys::rmdir_at(work, &tmp);
            return Err(e);
        }
        let saved = SavedTimes::capture(&parent_upper)?;
        if let Err(e) = sys::rename_at(
            work,
            &tmp,
            parent_upper.fd(),
            &name,
            sys::RenameFlags::NOREPLACE,
        ) {
            let _ = sys::rmdir_at(work, &tmp);
            return Err(e);
        }
        saved.restore(&parent_upper);
        let fd = sys::open_dir_path(parent_upper.fd(), &name)?;
        let rd = RealDir::new(UPPER, fd);
        if let NodeState::Dir(d) = &mut *node.state.write() {
            d.upper = Some(rd.clone());
        }
        // Now merged: one link instead of the lower directory's count.
        self.attr_changed(node.ino);
        Ok(rd)
    }

    /// Copy a node up (full data).
    pub(crate) fn copy_up(&self, node: &Arc<Node>) -> SysResult<()> {
        self.copy_up_limited(node, None)
    }

    /// Copy a node up, copying at most `data_len` bytes of a regular file's data (a
    /// truncate to that size follows anyway, so the rest need not be copied).
    pub(crate) fn copy_up_limited(&self, node: &Arc<Node>, data_len: Option<u64>) -> SysResult<()> {
        if node.is_dir() {
            return self.upper_dir(node).map(|_| ());
        }
        if self.file_layer(node) == UPPER {
            return Ok(());
        }
        if !self.is_writable() {
            return Err(Errno::ROFS);
        }
        let _guard = node.copy_up_lock.lock();
        let aliases = match &*node.state.read() {
            NodeState::File(f) if f.layer == UPPER => return Ok(()),
            NodeState::File(f) => f.aliases.clone(),
            NodeState::Dir(_) => return Err(Errno::ISDIR),
        };
        let primary = aliases.first().ok_or(Errno::STALE)?;
        let parent_upper = self.upper_dir(&primary.parent)?;
        let st = self.as_stored(
            primary.real.layer,
            sys::stat_at(primary.real.fd(), &primary.name)?,
        );
        let work = self.work()?;
        let tmp = self.tmp_name();
        // A regular file with one name and data enough to be worth it: its copy shows
        // before it is on disk, recorded (`copy_sync`); anything else is synced before
        // it shows.
        let copied = data_len.map_or(st.st_size as u64, |l| l.min(st.st_size as u64));
        let defer = (self.syncs.available()
            && st.st_nlink == 1
            && sys::mode_type(st.st_mode) == libc::S_IFREG
            && copied >= copy_sync::DEFER_MIN)
            .then(|| join(&self.dir_path(&primary.parent), &primary.name));
        let mut record = None;
        let built = self.build_copy(
            (primary.real.layer, primary.real.fd()),
            &primary.name,
            &st,
            (work, &tmp),
            node,
            data_len,
            defer.as_deref(),
            &mut record,
        );
        let deferred = match (built, record) {
            (Ok(Some(file)), Some(r)) => Some((file, r)),
            (Ok(_), None) => None,
            (Ok(None), Some(r)) => {
                let _ = sys::unlink_at(work, &r);
                None
            }
            (Err(e), record) => {
                let _ = sys::unlink_at(work, &tmp);
                if let Some(r) = record {
                    let _ = sys::unlink_at(work, &r);
                }
                return Err(e);
            }
        };
        let deferred = deferred.inspect(|_| self.syncs.begin(node.ino));
        let give_up = |deferred: Option<(OwnedFd, OsString)>| {
            if let Some((_, record)) = deferred {
                let _ = sys::unlink_at(work, &record);
                self.syncs.abandon(node.ino);
            }
        };
        // A file with several names: a second link in the work dir journals the copy
        // until every visible name links to it, so a daemon that dies in between
        // leaves a record the next mount finishes from (`finish_linked_copy_ups`).
        let journal = (st.st_nlink > 1).then(|| links_journal_name(st.st_dev, st.st_ino, node.ino));
        if let Some(j) = &journal
            && let Err(e) = sys::link_at(work, &tmp, work, j)
        {
            let _ = sys::unlink_at(work, &tmp);
            give_up(deferred);
            return Err(e);
        }
        // The parent is marked before the copy lands in it, so that no moment shows
        // the copy with another number than the lower file's.
        self.mark_impure(&primary.parent, &parent_upper);
        let saved = match SavedTimes::capture(&parent_upper) {
            Ok(s) => s,
            Err(e) => {
                let _ = sys::unlink_at(work, &tmp);
                give_up(deferred);
                return Err(e);
            }
        };
        if let Err(e) = sys::rename_at(
            work,
            &tmp,
            parent_upper.fd(),
            &primary.name,
            sys::RenameFlags::NOREPLACE,
        ) {
            let _ = sys::unlink_at(work, &tmp);
            if let Some(j) = &journal {
                let _ = sys::unlink_at(work, j);
            }
            give_up(deferred);
            return Err(e);
        }
        saved.restore(&parent_upper);
        if let Some((file, record)) = deferred {
            self.syncs.push(node.ino, file, record);
        }

        let mut first = primary.clone();
        first.real = parent_upper.clone();
        if let NodeState::File(f) = &mut *node.state.write() {
            f.aliases = smallvec::smallvec![first];
            f.layer = UPPER;
        }
        self.retarget_handles(node, &parent_upper, &primary.name);
        // Every other visible name of a lower hard link becomes a link to the copy.
        let mut others: Vec<(Arc<Node>, OsString)> = aliases
            .iter()
            .skip(1)
            .map(|a| (a.parent.clone(), a.name.to_os_string()))
            .collect();
        if st.st_nlink > 1 {
            for (p, n) in self.visible_names(primary.real.layer, st.st_ino, node.ino) {
                let dup = (p.ino == primary.parent.ino && *n == *primary.name)
                    || others.iter().any(|(q, m)| q.ino == p.ino && *m == n);
                if !dup {
                    others.push((p, n));
                }
            }
        }
        for (parent, name) in others {
            if let Err(e) = self.link_up(node, &parent, &name) {
                log::warn!("copy-up: could not link {name:?} to the copy: {e}");
            }
        }
        if let Some(j) = &journal {
            let _ = sys::unlink_at(work, j);
        }
        Ok(())
    }

    /// Every visible name (parent, name) of lower inode `real_ino` of `layer`, which the
    /// mount shows as `ino`: at its own path, or below a renamed directory.
    fn visible_names(&self, layer: LayerId, real_ino: u64, ino: u64) -> Vec<(Arc<Node>, OsString)> {
        let mut out = Vec::new();
        let mut renamed = None;
        for path in self.links.paths(self.layers(), layer, real_ino) {
            let found = self.visible_alias(&path, ino).or_else(|| {
                // Not at its own path: a directory on the way may have been renamed.
                let renamed = renamed.get_or_insert_with(|| self.renamed_dirs());
                self.visible_alias(&moved_path(renamed, &path)?, ino)
            });
            if let Some(f) = found {
                out.push(f);
            }
        }
        out
    }

    /// Finish the copy-ups of lower hard links that a daemon left half done (see the
    /// journal in `copy_up_limited`): where some visible name is the copy already, every
    /// name still showing the lower file is linked to the copy too; where none is, the
    /// lower file shows everywhere still and the journal is just dropped. Runs before
    /// the work dir is cleaned, on a mount of its own (its nodes are thrown away).
    /// Returns whether there was anything to finish.
    pub(crate) fn finish_linked_copy_ups(&self) -> bool {
        let Some(w) = &self.writer else {
            return false;
        };
        let Ok(entries) = sys::read_dir_all(w.work()) else {
            return false;
        };
        let journals: Vec<(OsString, (u64, u64, u64))> = entries
            .into_iter()
            .filter_map(|e| parse_links_journal(&e.name).map(|k| (e.name, k)))
            .collect();
        for (journal, (dev, real_ino, ino)) in &journals {
            let names: Vec<_> = self
                .layers()
                .lowers
                .iter()
                .filter(|l| l.dev == *dev)
                .flat_map(|l| self.visible_names(l.id, *real_ino, *ino))
                .collect();
            let mut any_linked = false;
            let mut lower = Vec::new();
            for (parent, name) in names {
                let Ok(view) = self.dir_view(&parent) else {
                    continue;
                };
                match self.res.resolve(&view, &name) {
                    Ok(Some(r)) if r.layer() == UPPER => any_linked = true,
                    Ok(Some(_)) => lower.push((parent, name)),
                    _ => {}
                }
            }
            if !any_linked {
                continue;
            }
            for (parent, name) in lower {
                if let Err(e) = self.place_link(w.work(), journal, &parent, &name) {
                    log::warn!("finishing a copy-up: could not link {name:?}: {e}");
                }
            }
        }
        !journals.is_empty()
    }

    /// Move read-only handles still on the lower file to the new upper copy.
    fn retarget_handles(&self, node: &Arc<Node>, dir: &RealDir, name: &OsStr) {
        if node.kind != Kind::File {
            return;
        }
        self.files.for_each(|h| {
            if Arc::ptr_eq(&h.node, node) && h.layer() != UPPER {
                match sys::open_at(dir.fd(), name, OFlags::RDONLY, 0) {
                    Ok(f) => h.retarget(f, UPPER),
                    Err(e) => log::warn!("copy-up: cannot move an open handle to the copy: {e}"),
                }
            }
        });
    }

    /// Link `existing` in `dir` as `name` in `parent`'s upper dir (copied up first),
    /// keeping the parent's times; a link there already to the same file is fine.
    fn place_link(
        &self,
        dir: BorrowedFd<'_>,
        existing: &OsStr,
        parent: &Arc<Node>,
        name: &OsStr,
    ) -> SysResult<Arc<RealDir>> {
        let parent_upper = self.upper_dir(parent)?;
        let saved = SavedTimes::capture(&parent_upper)?;
        match sys::link_at(dir, existing, parent_upper.fd(), name) {
            Ok(()) => saved.restore(&parent_upper),
            Err(Errno::EXIST) => {
                // Linked already (a lookup raced with the copy-up): fine if it is ours.
                let a = sys::stat_at(dir, existing)?;
                let b = sys::stat_at(parent_upper.fd(), name)?;
                if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
                    return Err(Errno::EXIST);
                }
            }
            Err(e) => return Err(e),
        }
        self.mark_impure(parent, &parent_upper);
        Ok(parent_upper)
    }

    /// Give a copied-up node one more name: a hard link in `parent`'s upper dir.
    pub(crate) fn link_up(
        &self,
        node: &Arc<Node>,
        parent: &Arc<Node>,
        name: &OsStr,
    ) -> SysResult<()> {
        let (real, existing) = self.first_alias(node)?;
        let parent_upper = self.place_link(real.fd(), &existing, parent, name)?;
        if let NodeState::File(f) = &mut *node.state.write() {
            if f.aliases
                .iter()
                .any(|a| a.parent.ino == parent.ino && *a.name == *name)
            {
                return Ok(());
            }
            f.aliases.push(Alias {
                parent: parent.clone(),
                name: name.into(),
                real: parent_upper,
            });
        }
        Ok(())
    }

    /// Copy up a lower file that has several names before one of them is removed, so the
    /// names left stay one file and its link count goes down (as with the kernel's
    /// index): otherwise they would keep the lower file's count.
    pub(crate) fn copy_up_if_linked(&self, node: &Arc<Node>) -> SysResult<()> {
        if node.is_dir() || self.file_layer(node) == UPPER {
            return Ok(());
        }
        if self.stat_node(node)?.st_nlink > 1 {
            self.copy_up(node)?;
        }
        Ok(())
    }

    /// Every upper directory whose lower part lives at another path (it, or a directory
    /// above it, was renamed): pairs of (lower path, merged path), without leading `/`.
    fn renamed_dirs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(up) = &self.layers().upper else {
            return out;
        };
        let Ok(root) = sys::open_dir_path(up.root.fd(), OsStr::new(".")) else {
            return out;
        };
        let mut stack = vec![(root, Vec::new(), Vec::new())];
        while let Some((dir, merged, lower)) = stack.pop() {
            let Ok(entries) = sys::read_dir_all(dir.as_fd()) else {
                continue;
            };
            for e in entries {
                if e.dtype != libc::DT_DIR || markers::is_marker_name(e.name.as_bytes()) {
                    continue;
                }
                let Ok(fd) = sys::open_dir_path(dir.as_fd(), &e.name) else {
                    continue;
                };
                let child_merged = join(&merged, &e.name);
                let child_lower = match markers::read_markers(fd.as_fd(), None).map(|m| m.redirect)
                {
                    Ok(Some(r)) if r.first() == Some(&b'/') => r[1..].to_vec(),
                    Ok(Some(r)) => join(&lower, OsStr::from_bytes(&r)),
                    _ => join(&lower, &e.name),
                };
                if child_lower != child_merged {
                    out.push((child_lower.clone(), child_merged.clone()));
                }
                stack.push((fd, child_merged, child_lower));
            }
        }
        out
    }

    /// If the layer path `path` shows inode `ino` in the merged view, its parent and name.
    fn visible_alias(&self, path: &[u8], ino: u64) -> Option<(Arc<Node>, OsString)> {
        let comps: Vec<&OsStr> = super::hardlinks::components(path).collect();
        let (last, dirs) = comps.split_last()?;
        let mut cur = self.root.clone();
        for c in dirs {
            let (n, _) = self.lookup_node(&cur, c).ok()??;
            if !n.is_dir() {
                return None;
            }
            cur = n;
        }
        let view = self.dir_view(&cur).ok()?;
        let r = self.res.resolve(&view, last).ok()??;
        (r.ino == ino).then(|| (cur, last.to_os_string()))
    }

    /// Build the copy of one non-directory in the work dir under `tmp`. With `defer`
    /// (the copy's path in the upper layer, for a regular file) its data is not synced
    /// here: its record is made (named in `record`) before the data is copied, and the
    /// copy is returned for `copy_sync` to finish. On failure the caller removes `tmp`
    /// and the record.
    #[allow(clippy::too_many_arguments)]
    fn build_copy(
        &self,
        (src_layer, srcdir): (LayerId, BorrowedFd<'_>),
        name: &OsStr,
        st: &Stat,
        (work, tmp): (BorrowedFd<'_>, &OsStr),
        node: &Node,
        data_len: Option<u64>,
        defer: Option<&[u8]>,
        record: &mut Option<OsString>,
    ) -> SysResult<Option<OwnedFd>> {
        let shown = self.recorded(src_layer, srcdir, Some(name), st);
        let upper_records = self.layers().ovl(UPPER).is_some();
        let kind = Kind::from_mode(st.st_mode);
        let mut file = None;
        match kind {
            // A device node or fifo from a layer that has it for real, into a rootless
            // upper layer: a stand-in file.
            Kind::CharDev | Kind::BlockDev | Kind::Fifo | Kind::Socket if upper_records => {
                sys::open_at(
                    work,
                    tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
                    0o600,
                )?;
            }
            // A stand-in from a rootless layer, into a layer that has the real thing.
            Kind::File if !upper_records && shown.is_special() => {
                sys::mknod_at(work, tmp, shown.mode, shown.rdev)?;
            }
            Kind::File => {
                let src = sys::open_at(srcdir, name, OFlags::RDONLY, 0)?;
                let data = if src_layer == UPPER {
                    None
                } else {
                    self.layers()
                        .stub_data(src.as_fd(), None, st, OFlags::RDONLY, true)?
                };
                let src = data.unwrap_or(src);
                let dst = sys::open_at(
                    work,
                    tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
                    0o600,
                )?;
                if let Some(path) = defer {
                    let disk_ino = sys::stat_fd(dst.as_fd())?.st_ino;
                    *record = Some(copy_sync::write_record(work, node.ino, disk_ino, path)?);
                }
                let len = data_len.map_or(st.st_size as u64, |l| l.min(st.st_size as u64));
                copy_data(
                    src.as_fd(),
                    dst.as_fd(),
                    len,
                    self.opts.fsync && record.is_none(),
                )?;
                file = Some(dst);
            }
            Kind::Symlink => {
                let target = sys::readlink_at(srcdir, name)?;
                sys::symlink_at(OsStr::from_bytes(&target), work, tmp)?;
            }
            Kind::Dir => return Err(Errno::ISDIR),
            _ => sys::mknod_at(work, tmp, st.st_mode, st.st_rdev)?,
        }
        self.set_copy_owner(work, tmp, &shown)?;
        // After chown: chown clears security.capability.
        copy_xattrs(srcdir, Some(name), work, Some(tmp))?;
        if let Some(w) = &self.writer {
            // Keeps the inode number across remounts; optional where xattrs are refused
            // (user.* on symlinks and devices when unprivileged).
            let _ = w.set_xattr(work, Some(tmp), ORIGIN_INO, node.ino.to_string().as_bytes());
        }
        sys::utimens_at(
            work,
            Some(tmp),
            TimeSpec::Set(st.st_atime, st.st_atime_nsec as i64),
            TimeSpec::Set(st.st_mtime, st.st_mtime_nsec as i64),
        )?;
        match file {
            Some(f) if record.is_some() => return Ok(Some(f)),
            Some(f) if self.opts.fsync => sys::fsync(f.as_fd())?,
            _ => {}
        }
        Ok(None)
    }

    /// The path of a directory as the mount shows it (relative, empty for the root): an
    /// upper directory lives at that path in the upper layer.
    fn dir_path(&self, node: &Arc<Node>) -> Vec<u8> {
        let mut names = Vec::new();
        let mut cur = node.clone();
        loop {
            let up = match &*cur.state.read() {
                NodeState::Dir(d) => d.parent.clone().map(|p| (p, d.name.clone())),
                NodeState::File(_) => None,
            };
            let Some((parent, name)) = up else {
                break;
            };
            names.push(name);
            cur = parent;
        }
        names.iter().rev().fold(Vec::new(), |p, n| join(&p, n))
    }

    /// What a lower object is: its record in a rootless layer, else its disk stat.
    fn recorded(
        &self,
        layer: LayerId,
        dir: BorrowedFd<'_>,
        name: Option<&OsStr>,
        st: &Stat,
    ) -> Recorded {
        match self.layers().ovl(layer) {
            Some(o) => o.read(dir, name, st),
            None => Recorded::of_stat(st),
        }
    }

    /// Give a copy in the work dir the owner and mode of what it copies: on disk, or in
    /// the record of a rootless upper layer.
    fn set_copy_owner(&self, work: BorrowedFd<'_>, tmp: &OsStr, r: &Recorded) -> SysResult<()> {
        let is_link = sys::mode_type(r.mode) == libc::S_IFLNK;
        if let Some(ovl) = self.layers().ovl(UPPER) {
            if !is_link {
                sys::chmod_at(work, Some(tmp), override_stat::disk_mode(r.mode) & 0o7777)?;
                ovl.write(work, Some(tmp), r)?;
            }
            self.own_on_disk(work, Some(tmp), r.uid, r.gid);
            return Ok(());
        }
        sys::chown_at(work, Some(tmp), Some(r.uid), Some(r.gid))?;
        if !is_link {
            sys::chmod_at(work, Some(tmp), r.mode & 0o7777)?;
        }
        Ok(())
    }

    /// Record that a directory holds children whose inode numbers are not their real
    /// ones (copied-up files, redirected dirs), as the kernel's `impure` marker does.
    pub(crate) fn mark_impure(&self, dir: &Arc<Node>, upper: &RealDir) {
        let already = matches!(&*dir.state.read(), NodeState::Dir(d) if d.impure);
        if already {
            return;
        }
        if let Some(w) = &self.writer {
            let saved = SavedTimes::capture(upper).ok();
            let _ = w.set_xattr(upper.fd(), None, "impure", b"y");
            if let Some(s) = saved {
                s.restore(upper);
            }
        }
        if let NodeState::Dir(d) = &mut *dir.state.write() {
            d.impure = true;
        }
    }
}

/// Where a layer path shows in the merged view if a directory on it was renamed: the
/// longest renamed prefix (from `renamed`, see `renamed_dirs`) replaced by its new path.
fn moved_path(renamed: &[(Vec<u8>, Vec<u8>)], path: &[u8]) -> Option<Vec<u8>> {
    let path = path.strip_prefix(b"/").unwrap_or(path);
    let (lower, merged) = renamed
        .iter()
        .filter(|(lower, _)| path.starts_with(lower) && path.get(lower.len()) == Some(&b'/'))
        .max_by_key(|(lower, _)| lower.len())?;
    let mut moved = merged.clone();
    moved.extend_from_slice(&path[lower.len()..]);
    Some(moved)
}

/// How much is copied before its writeback is started, when the copy is to be made
/// durable: the disk writes one chunk while the next is copied, so the `fsync` at the
/// end waits for little (256 MiB: 0.18 s copied then synced, 0.12 s overlapped).
const WRITEBACK_CHUNK: usize = 4 << 20;

/// Copy `len` bytes of data, keeping holes: reflink if the filesystem can, else copy
/// only the data extents (`SEEK_DATA`/`SEEK_HOLE`) with `copy_file_range`. With
/// `durable`, each chunk's writeback starts as soon as it is copied (the caller fsyncs).
pub(crate) fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
    durable: bool,
) -> SysResult<()> {
    let src_len = sys::stat_fd(src)?.st_size as u64;
    if len == src_len && len > 0 && sys::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut off = 0u64;
    while off < len {
        let data = match sys::lseek(src, off as i64, sys::Whence::Data) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole is left
            Err(Errno::INVAL) | Err(Errno::NOTSUP) => off, // no hole support: all data
            Err(e) => return Err(e),
        };
        if data >= len {
            break;
        }
        let hole = match sys::lseek(src, data as i64, sys::Whence::Hole) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        copy_range(src, dst, data, hole, durable)?;
        off = hole;
    }
    sys::ftruncate(dst, len)
}

/// Copy bytes `[from, to)` at the same offsets; with `durable`, in chunks whose
/// writeback starts behind the copy.
fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    from: u64,
    to: u64,
    durable: bool,
) -> SysResult<()> {
    let mut pos = from;
    let mut use_cfr = true;
    let mut buf = Vec::new();
    let most = if durable { WRITEBACK_CHUNK } else { 1 << 30 };
    // Advisory: where writeback cannot be started early, the fsync does it all.
    let written = |at: u64, n: usize| {
        if durable {
            let _ = sys::start_writeback(dst, at, n as u64);
        }
    };
    while pos < to {
        let want = ((to - pos) as usize).min(most);
        if use_cfr {
            match sys::copy_file_range(src, pos, dst, pos, want) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    written(pos, n);
                    pos += n as u64;
                    continue;
                }
                Err(Errno::XDEV)
                | Err(Errno::NOSYS)
                | Err(Errno::INVAL)
                | Err(Errno::OPNOTSUPP) => {
                    use_cfr = false;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        if buf.is_empty() {
            buf = vec![0u8; 1 << 20];
        }
        let n = want.min(buf.len());
        let r = sys::pread(src, &mut buf[..n], pos)?;
        if r == 0 {
            return Ok(());
        }
        let mut w = 0;
        while w < r {
            w += sys::pwrite(dst, &buf[w..r], pos + w as u64)?;
        }
        written(pos, r);
        pos += r as u64;
    }
    Ok(())
}

/// Copy every xattr except the overlay's own from one object to another.
pub(crate) fn copy_xattrs(
    srcdir: BorrowedFd<'_>,
    src: Option<&OsStr>,
    dstdir: BorrowedFd<'_>,
    dst: Option<&OsStr>,
) -> SysResult<()> {
    let list = match sys::list_xattr(srcdir, src) {
        Ok(l) => l,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in sys::split_xattr_names(&list) {
        if markers::is_internal_xattr(name.as_bytes()) {
            continue;
        }
        let Some(value) = sys::get_xattr(srcdir, src, name)? else {
            continue;
        };
        match sys::set_xattr(dstdir, dst, name, &value, 0) {
            Ok(()) => {}
            // Not every namespace is writable everywhere (e.g. user.* on symlinks).
            Err(Errno::PERM) | Err(Errno::NOTSUP) => {
                log::debug!("copy-up: xattr {:?} not copied", name);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Work-dir name of the journal link of a lower hard link's copy: the lower file's
/// device and inode, and the number the mount shows for it.
fn links_journal_name(dev: u64, real_ino: u64, ino: u64) -> OsString {
    OsString::from(format!("#links.{dev}.{real_ino}.{ino}"))
}

fn parse_links_journal(name: &OsStr) -> Option<(u64, u64, u64)> {
    let rest = name.to_str()?.strip_prefix("#links.")?;
    let mut it = rest.split('.').map(|n| n.parse::<u64>().ok());
    let k = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_names_round_trip_and_nothing_else_parses() {
        let n = links_journal_name(2049, 1234, 99);
        assert_eq!(parse_links_journal(&n), Some((2049, 1234, 99)));
        for other in [
            "#lfs.1.2",
            "#links.1.2",
            "#links.1.2.3.4",
            "#links.a.2.3",
            "#whiteout",
        ] {
            assert_eq!(parse_links_journal(OsStr::new(other)), None, "{other}");
        }
    }

    /// A durable copy goes in chunks (writeback started behind each): the bytes, the
    /// length and the holes must come out as a whole copy's do.
    #[test]
    fn durable_copy_in_chunks_keeps_bytes_and_holes() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        let src = std::fs::File::create(t.path().join("src")).unwrap();
        let len = 3 * WRITEBACK_CHUNK as u64 + 12_345;
        src.set_len(len).unwrap();
        // Data across a chunk boundary, a hole of over a chunk, and data at the end.
        let data: Vec<u8> = (0..WRITEBACK_CHUNK + 777)
            .map(|i| (i % 251) as u8)
            .collect();
        src.write_all_at(&data, 1000).unwrap();
        src.write_all_at(b"tail", len - 4).unwrap();
        for durable in [true, false] {
            let dst = std::fs::File::create(t.path().join(format!("dst-{durable}"))).unwrap();
            let src = std::fs::File::open(t.path().join("src")).unwrap();
            copy_data(src.as_fd(), dst.as_fd(), len, durable).unwrap();
            let got = std::fs::read(t.path().join(format!("dst-{durable}"))).unwrap();
            let want = std::fs::read(t.path().join("src")).unwrap();
            assert_eq!(got.len(), want.len(), "durable={durable}");
            assert!(got == want, "durable={durable}: bytes differ");
            // The hole between the two data ranges stays a hole.
            let st = sys::stat_fd(dst.as_fd()).unwrap();
            assert!(
                (st.st_blocks as u64) * 512 < len / 2,
                "durable={durable}: {} blocks for a mostly sparse file",
                st.st_blocks
            );
        }
    }
}
