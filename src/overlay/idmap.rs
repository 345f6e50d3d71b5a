//! uid/gid mapping between the ids stored in the layers and the ids the mount shows
//! (fuse-overlayfs `uidmapping=`/`gidmapping=`/`squash_to_*`, as podman passes them).
//!
//! A range `host:to:len` shows on-disk ids `host..host+len` as `to..to+len`; ids the
//! mount receives (file creation, chown) go the other way. Unmapped ids show as the
//! overflow id 65534. Squashing replaces every shown owner.
//!
//! A lower layer under an idmapped mount (podman 4.3 with `--uidmap` hands a mount program
//! such lower dirs *and* the mapping) reads with the mapping applied already: its owners
//! are taken back through the mapping's reverse as soon as they are read
//! ([`OverlayFs::as_stored`]), so the rest of the mount sees the ids the layer holds on
//! disk, shows them mapped once, and a copy-up stores them unmapped in the upper layer,
//! as from any other lower layer.

use super::fs::OverlayFs;
use super::layers::LayerId;
use crate::sys::Stat;

/// One contiguous range: on-disk `host..host+len` is shown as `to..to+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host: u32,
    pub to: u32,
    pub len: u32,
}

pub const OVERFLOW_ID: u32 = 65534;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

fn shown(ranges: &[IdRange], id: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .find(|r| id >= r.host && id - r.host < r.len)
        .map_or(OVERFLOW_ID, |r| r.to + (id - r.host))
}

fn stored(ranges: &[IdRange], id: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .find(|r| id >= r.to && id - r.to < r.len)
        .map_or(OVERFLOW_ID, |r| r.host + (id - r.to))
}

impl IdMap {
    pub fn is_identity(&self) -> bool {
        *self == IdMap::default()
    }

    /// The uid shown for an on-disk uid.
    pub fn uid_shown(&self, disk: u32) -> u32 {
        self.squash_uid.unwrap_or_else(|| shown(&self.uids, disk))
    }

    pub fn gid_shown(&self, disk: u32) -> u32 {
        self.squash_gid.unwrap_or_else(|| shown(&self.gids, disk))
    }

    /// The uid stored for a uid received through the mount.
    pub fn uid_stored(&self, id: u32) -> u32 {
        stored(&self.uids, id)
    }

    pub fn gid_stored(&self, id: u32) -> u32 {
        stored(&self.gids, id)
    }
}

impl OverlayFs {
    /// `st`, read from an object in `layer`, with the owner the layer holds on disk: on
    /// an idmapped lower layer the ids read are mapped ids, taken back to on-disk ids
    /// here (an id outside the mapping becomes the overflow id).
    #[inline]
    pub(crate) fn as_stored(&self, layer: LayerId, mut st: Stat) -> Stat {
        if self.layers().idmapped(layer) {
            let m = &self.opts.idmap;
            st.st_uid = m.uid_stored(st.st_uid);
            st.st_gid = m.gid_stored(st.st_gid);
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_userns_mapping() {
        // --uidmap 0:100000:65536 arrives as uidmapping=0:100000:65536.
        let m = IdMap {
            uids: vec![IdRange {
                host: 0,
                to: 100000,
                len: 65536,
            }],
            gids: vec![IdRange {
                host: 0,
                to: 100000,
                len: 65536,
            }],
            ..Default::default()
        };
        assert_eq!(m.uid_shown(0), 100000);
        assert_eq!(m.uid_shown(1000), 101000);
        assert_eq!(m.uid_shown(70000), OVERFLOW_ID);
        assert_eq!(m.uid_stored(100000), 0);
        assert_eq!(m.gid_stored(101000), 1000);
        assert_eq!(m.uid_stored(5), OVERFLOW_ID);
        for id in [0, 1, 999, 65535] {
            assert_eq!(m.uid_stored(m.uid_shown(id)), id, "round trip of {id}");
        }
    }

    #[test]
    fn squash_and_identity() {
        assert!(IdMap::default().is_identity());
        assert_eq!(IdMap::default().uid_shown(42), 42);
        let m = IdMap {
            squash_uid: Some(1000),
            squash_gid: Some(100),
            ..Default::default()
        };
        assert_eq!((m.uid_shown(0), m.gid_shown(5)), (1000, 100));
        assert_eq!(m.uid_stored(7), 7, "squash only changes what is shown");
    }
}
