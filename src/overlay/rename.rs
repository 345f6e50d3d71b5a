//! `rename(2)` in the union: plain, `RENAME_NOREPLACE` and `RENAME_EXCHANGE`, across
//! layers. A lower directory moves with a kernel-format redirect; the node table, the
//! hard-link aliases and the kernel-visible inode numbers move with it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::fs::OverlayFs;
use super::inode_table::{Node, NodeState};
use super::layers::{RealDir, UPPER};
use super::mutate::Slot;
use crate::markers;
use crate::sys::{self, Errno, RenameFlags, SysResult};

impl OverlayFs {
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
        for (p, n) in [(parent, name), (newparent, newname)] {
            if let Ok(node) = self.node(p) {
                self.name_changed(&node, n);
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
        let parent_node = self.node(parent)?;
        let new_parent_node = self.node(newparent)?;
        let (src, _) = self.lookup_node(&parent_node, name)?.ok_or(Errno::NOENT)?;
        let dst = self.lookup_node(&new_parent_node, newname)?.map(|(n, _)| n);
        if noreplace && dst.is_some() {
            return Err(Errno::EXIST);
        }
        // A copy still being synced keeps its name (its record names it) and its inode.
        for n in std::iter::once(&src).chain(dst.as_ref()) {
            if !n.is_dir() {
                self.syncs.wait(n.ino);
            }
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
        if src.is_dir() && self.is_ancestor(&src, &new_parent_node) {
            return Err(Errno::INVAL);
        }
        if exchange {
            return self.rename_exchange(
                &parent_node,
                name,
                &src,
                &new_parent_node,
                newname,
                dst.as_ref().ok_or(Errno::NOENT)?,
            );
        }

        let parent_upper = self.upper_dir(&parent_node)?;
        let new_parent_upper = self.upper_dir(&new_parent_node)?;
        // The source moves as an upper object.
        let redirect = if src.is_dir() {
            self.prepare_dir_move(&src)?
        } else {
            self.copy_up(&src)?;
            None
        };
        let src_view = self.dir_view(&parent_node)?;
        let src_needs_wh = self.res.lower_has(&src_view, name)?;
        let dst_view = self.dir_view(&new_parent_node)?;
        let dst_lower = self.res.lower_has(&dst_view, newname)?;

        // A plain upper directory moved over a lower one must not merge with it: mark it
        // opaque before it moves (it hides nothing where it is), so no crash can leave
        // it merged at its new place.
        let make_opaque = src.is_dir() && redirect.is_none() && dst_lower;
        if make_opaque && let Some(w) = &self.writer {
            w.set_opaque(parent_upper.fd(), Some(name))?;
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
                self.keep_orphan_if_last(d, &new_parent_node, &new_parent_upper, newname);
            }
        }
        let slot = self.slot_after_target(&new_parent_upper, newname)?;
        // A directory cannot replace the whiteout at its target (rename(2) refuses a
        // directory over a non-directory): it trades places with it instead, in one
        // step, as the kernel's overlayfs does; the whiteout lands at the old name.
        let swap_whiteout = src.is_dir() && matches!(slot, Slot::Whiteout);
        let device_wh = self.writer.as_ref().is_some_and(|w| w.device_whiteouts());
        let mut wh_done = false;
        if src_needs_wh && !device_wh && !swap_whiteout {
            // `.wh.NAME` before the move: the upper entry hides its own `.wh.` while
            // both exist, so no moment (or crash) shows the lower entry again.
            self.writer()?.whiteout(parent_upper.fd(), name)?;
            wh_done = true;
        }
        {
            // getattr and open follow a file's aliases by name without the kernel's
            // directory locks: the real rename and the alias update must look atomic
            // to them, or in between they would find the whiteout left at the old
            // name, or the replaced file at the new one.
            let (mut src_st, dst_st) = lock_states(&src, dst.as_ref());
            let move_it = |flags| {
                sys::rename_at(
                    parent_upper.fd(),
                    name,
                    new_parent_upper.fd(),
                    newname,
                    flags,
                )
            };
            if swap_whiteout {
                move_it(RenameFlags::EXCHANGE)?;
            } else if src_needs_wh && device_wh {
                match move_it(RenameFlags::WHITEOUT) {
                    Ok(()) => wh_done = true,
                    Err(Errno::INVAL) | Err(Errno::PERM) => move_it(RenameFlags::empty())?,
                    Err(e) => return Err(e),
                }
            } else if let Err(e) = move_it(RenameFlags::empty()) {
                if wh_done {
                    // The `.wh.` written before the move: nothing moved, so it goes.
                    let _ = sys::unlink_at(parent_upper.fd(), &markers::oci_whiteout_name(name));
                }
                return Err(e);
            }
            if let Some(mut d) = dst_st
                && let NodeState::File(f) = &mut *d
            {
                f.aliases
                    .retain(|a| !(a.parent.ino == new_parent_node.ino && *a.name == *newname));
            }
            record_move(
                &mut src_st,
                &parent_node,
                name,
                &new_parent_node,
                newname,
                &new_parent_upper,
                redirect.clone(),
            );
        }
        if swap_whiteout {
            // A device whiteout now at the old name is the one it needs; anything
            // else there (an xattr whiteout, or no lower entry to hide) goes.
            let kept = src_needs_wh
                && sys::stat_at(parent_upper.fd(), name)
                    .is_ok_and(|st| markers::is_whiteout_stat(&st));
            if kept {
                wh_done = true;
            } else {
                sys::unlink_at(parent_upper.fd(), name)?;
            }
        }
        if matches!(slot, Slot::OciWhiteout) {
            // The entry now hides its `.wh.` file; remove it.
            let _ = sys::unlink_at(new_parent_upper.fd(), &markers::oci_whiteout_name(newname));
        }
        if src_needs_wh && !wh_done {
            self.writer()?.whiteout(parent_upper.fd(), name)?;
        }
        if make_opaque && let NodeState::Dir(s) = &mut *src.state.write() {
            s.lowers = Arc::from(Vec::new());
        }

        // Update the nodes.
        if let Some(d) = &dst {
            self.drop_alias(d, &new_parent_node, newname);
        }
        self.moved(
            &src,
            &parent_node,
            name,
            &new_parent_node,
            newname,
            &new_parent_upper,
            redirect,
        );
        Ok(())
    }

    /// The slot at the destination once a replaced target is out of the way.
    fn slot_after_target(&self, parent_upper: &RealDir, name: &OsStr) -> SysResult<Slot> {
        match self.slot(parent_upper, name) {
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
        parent_node: &Arc<Node>,
        name: &OsStr,
        src: &Arc<Node>,
        new_parent_node: &Arc<Node>,
        newname: &OsStr,
        dst: &Arc<Node>,
    ) -> SysResult<()> {
        if src.is_dir() && self.is_ancestor(src, new_parent_node)
            || dst.is_dir() && self.is_ancestor(dst, parent_node)
        {
            return Err(Errno::INVAL);
        }
        let parent_upper = self.upper_dir(parent_node)?;
        let new_parent_upper = self.upper_dir(new_parent_node)?;
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
        sys::rename_at(
            parent_upper.fd(),
            name,
            new_parent_upper.fd(),
            newname,
            RenameFlags::EXCHANGE,
        )?;
        // Moved plain dirs must not merge with what lies below their new names.
        for (node, dir_upper, n, redirected) in [
            (src, &new_parent_upper, newname, r1.is_some()),
            (dst, &parent_upper, name, r2.is_some()),
        ] {
            if node.is_dir() && !redirected {
                let view = self.dir_view(
                    if std::ptr::eq(dir_upper.as_ref(), new_parent_upper.as_ref()) {
                        new_parent_node
                    } else {
                        parent_node
                    },
                )?;
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
        self.moved(
            src,
            parent_node,
            name,
            new_parent_node,
            &placeholder,
            &new_parent_upper,
            r1,
        );
        self.moved(
            dst,
            new_parent_node,
            newname,
            parent_node,
            name,
            &parent_upper,
            r2,
        );
        self.moved(
            src,
            new_parent_node,
            &placeholder,
            new_parent_node,
            newname,
            &new_parent_upper,
            None,
        );
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
                if a.parent.ino == from.ino && *a.name == *name {
                    a.parent = to.clone();
                    a.name = newname.into();
                    a.real = to_upper.clone();
                }
            }
            true
        }
    }
}

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

type StateGuard<'a> = parking_lot::RwLockWriteGuard<'a, NodeState>;
