//! Merged directory listings.
//!
//! A listing is built once per open directory stream (at offset 0) and served from that
//! snapshot, so offsets are stable: a reader that stops and resumes (`telldir`/`seekdir`,
//! or a large directory read over several calls) sees each name exactly once.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::layers::UPPER;
use super::lookup::{DirView, Resolver};
use super::whiteout::{self, OCI_OPAQUE};
use crate::sys::{self, Errno, SysResult};

/// One name in a merged listing.
#[derive(Debug, Clone)]
pub struct ListEntry {
    pub name: OsString,
    pub ino: u64,
    /// `DT_*` type.
    pub dtype: u8,
    /// The inode number cannot be known without a full resolution (merged or
    /// redirected directories, copied-up files): the caller must resolve the name.
    pub needs_resolve: bool,
}

impl Resolver {
    /// List the merged contents of `dir` (without `.` and `..`).
    pub fn list(&self, dir: &DirView) -> SysResult<Vec<ListEntry>> {
        let mut out = Vec::new();
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        let has_lower = !dir.lowers.is_empty();

        if let Some(up) = &dir.upper {
            let dev = self.layers.get(UPPER).dev;
            for e in sys::read_dir_all(up.fd())? {
                let name = e.name.as_bytes();
                if name == OCI_OPAQUE {
                    continue;
                }
                if let Some(t) = whiteout::oci_whiteout_target(name) {
                    hidden.insert(t.to_vec());
                    continue;
                }
                let mut dtype = e.dtype;
                if dtype == libc::DT_CHR
                    || dtype == libc::DT_UNKNOWN
                    || (dtype == libc::DT_REG && up.xattr_whiteouts)
                {
                    match sys::stat_at(up.fd(), &e.name) {
                        Ok(st) => {
                            dtype = sys::dtype_of_mode(st.st_mode);
                            if whiteout::is_whiteout_stat(&st)
                                || (up.xattr_whiteouts
                                    && dtype == libc::DT_REG
                                    && st.st_size == 0
                                    && whiteout::is_xattr_whiteout(up.fd(), &e.name))
                            {
                                hidden.insert(name.to_vec());
                                continue;
                            }
                        }
                        Err(Errno::NOENT) => continue,
                        Err(err) => return Err(err),
                    }
                }
                hidden.insert(name.to_vec());
                let needs_resolve = dir.impure || (dtype == libc::DT_DIR && has_lower);
                out.push(ListEntry {
                    ino: self.layers.map_ino(dev, e.ino),
                    name: e.name,
                    dtype,
                    needs_resolve,
                });
            }
        }

        match dir.lowers.len() {
            0 => {}
            1 => {
                let l = &dir.lowers[0];
                let dev = self.layers.get(l.layer).dev;
                for e in sys::read_dir_all(l.fd())? {
                    let name = e.name.as_bytes();
                    if whiteout::is_marker_name(name) || hidden.contains(name) {
                        continue;
                    }
                    let mut dtype = e.dtype;
                    if dtype == libc::DT_CHR
                        || dtype == libc::DT_UNKNOWN
                        || (dtype == libc::DT_REG && l.xattr_whiteouts)
                    {
                        match sys::stat_at(l.fd(), &e.name) {
                            Ok(st) => {
                                dtype = sys::dtype_of_mode(st.st_mode);
                                if whiteout::is_whiteout_stat(&st)
                                    || (l.xattr_whiteouts
                                        && dtype == libc::DT_REG
                                        && st.st_size == 0
                                        && whiteout::is_xattr_whiteout(l.fd(), &e.name))
                                {
                                    continue;
                                }
                            }
                            Err(Errno::NOENT) => continue,
                            Err(err) => return Err(err),
                        }
                    }
                    out.push(ListEntry {
                        ino: self.layers.map_ino(dev, e.ino),
                        name: e.name,
                        dtype,
                        needs_resolve: false,
                    });
                }
            }
            _ => match self.index_of(dir)? {
                Some(idx) => {
                    for name in &idx.order {
                        if hidden.contains(&name[..]) {
                            continue;
                        }
                        let Some(e) = idx.get(name) else { continue };
                        if e.whiteout {
                            continue;
                        }
                        out.push(ListEntry {
                            name: OsStr::from_bytes(name).to_os_string(),
                            ino: e.ino,
                            dtype: e.dtype,
                            needs_resolve: false,
                        });
                    }
                }
                None => {
                    // Too large to index: merge layer by layer, resolving each name.
                    let mut seen: HashSet<Vec<u8>> = hidden;
                    for l in dir.lowers.iter() {
                        for e in sys::read_dir_all(l.fd())? {
                            let name = e.name.as_bytes();
                            if whiteout::is_marker_name(name) || !seen.insert(name.to_vec()) {
                                continue;
                            }
                            out.push(ListEntry {
                                name: e.name,
                                ino: 0,
                                dtype: e.dtype,
                                needs_resolve: true,
                            });
                        }
                    }
                    // Drop names that resolve to nothing (whited out further up).
                    let view = dir.clone();
                    out.retain_mut(|e| {
                        if !e.needs_resolve {
                            return true;
                        }
                        match self.resolve(&view, &e.name) {
                            Ok(Some(r)) => {
                                e.ino = r.ino;
                                e.dtype = sys::dtype_of_mode(r.stat.st_mode);
                                e.needs_resolve = false;
                                true
                            }
                            _ => false,
                        }
                    });
                }
            },
        }
        Ok(out)
    }
}
