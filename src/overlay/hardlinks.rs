//! Hard links inside lower layers.
//!
//! When one name of a lower file with several links is copied up, every other name of
//! it that is visible in the merged view must keep sharing the file (the kernel's
//! `index=on` behaviour). The names are found through a map of multi-link inodes per
//! lower layer, built the first time a layer needs it (layers never change).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use super::layers::{LayerId, Layers};
use crate::sys::{self, Errno, SysResult};

/// Paths (from the layer root, components joined by `/`) of each multi-link inode.
type LinkMap = HashMap<u64, Vec<Vec<u8>>>;

pub struct LinkMaps {
    maps: Vec<OnceLock<LinkMap>>,
}

impl LinkMaps {
    pub fn new(lowers: usize) -> Self {
        LinkMaps {
            maps: (0..lowers).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Every path of real inode `ino` in lower layer `layer`.
    pub fn paths(&self, layers: &Layers, layer: LayerId, ino: u64) -> Vec<Vec<u8>> {
        let Some(slot) = (layer as usize)
            .checked_sub(1)
            .and_then(|i| self.maps.get(i))
        else {
            return Vec::new();
        };
        let map = slot.get_or_init(|| {
            scan(layers, layer).unwrap_or_else(|e| {
                log::warn!("hard-link scan of layer {layer} failed: {e}");
                HashMap::new()
            })
        });
        map.get(&ino).cloned().unwrap_or_default()
    }
}

fn scan(layers: &Layers, layer: LayerId) -> SysResult<LinkMap> {
    let root = &layers.get(layer).root;
    let mut out: LinkMap = HashMap::new();
    let mut stack: Vec<(Option<OwnedFd>, Vec<u8>)> = vec![(None, Vec::new())];
    while let Some((fd, path)) = stack.pop() {
        let dirfd = fd.as_ref().map(|f| f.as_fd()).unwrap_or(root.fd());
        for e in sys::read_dir_all(dirfd)? {
            let mut p = path.clone();
            p.push(b'/');
            p.extend_from_slice(e.name.as_bytes());
            if e.dtype == libc::DT_DIR {
                match sys::open_dir_path(dirfd, &e.name) {
                    Ok(sub) => stack.push((Some(sub), p)),
                    Err(Errno::NOENT) => {}
                    Err(err) => return Err(err),
                }
                continue;
            }
            match sys::stat_at(dirfd, &e.name) {
                Ok(st) if st.st_nlink > 1 && !sys::is_dir_mode(st.st_mode) => {
                    out.entry(st.st_ino).or_default().push(p);
                }
                Ok(_) | Err(Errno::NOENT) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(out)
}

/// Split a layer path into its components.
pub fn components(path: &[u8]) -> impl Iterator<Item = &OsStr> {
    path.split(|c| *c == b'/')
        .filter(|c| !c.is_empty())
        .map(OsStr::from_bytes)
}
