//! Owners, modes and file types that the disk cannot hold, kept in an xattr: the form
//! containers/storage and fuse-overlayfs use for rootless stores.
//!
//! An ordinary user cannot `chown` a file to another uid, create a device node, or keep
//! a set-id file safely on the host. In a layer written that way (an *override layer*)
//! every object that needs it carries `user.containers.override_stat` =
//! `UID:GID:MODE:TYPE` (MODE in octal with a leading 0, as `0%o` writes it, TYPE one of `file`, `dir`,
//! `symlink`, `pipe`, `socket`, `block-MAJOR-MINOR`, `char-MAJOR-MINOR`); the older
//! three-field form `UID:GID:MODE` keeps the type on disk. On disk the object has:
//! - the user's own ids;
//! - its permission bits without set-uid, set-gid and sticky, plus owner access
//!   (`u+rw` for files, `u+rwx` for directories), so the daemon can always read it;
//! - a regular empty file in place of a device node, fifo or socket.
//!
//! An object without the xattr in an override layer shows its disk mode and type, and
//! its owner as 0 where the disk has the layer owner's id (the layer root's owner), as
//! a user namespace mapping that user to root would show it. Symlinks cannot carry
//! `user.*` xattrs: they show root's ids unless the disk says otherwise.
//!
//! A layer is an override layer when its root carries one of the three names
//! fuse-overlayfs reads, checked in its order: `security.fuseoverlayfs.override_stat`,
//! `user.containers.override_stat`, `user.fuseoverlayfs.override_stat`. The names are
//! the overlay's own: never read from an image, never shown or settable through a mount.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use crate::sys::{self, Errno, Stat, SysResult};

/// The name layerfs writes.
pub const CONTAINERS: &str = "user.containers.override_stat";
/// fuse-overlayfs `xattr_permissions=1`.
pub const PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";
/// fuse-overlayfs `xattr_permissions=2`.
pub const USER: &str = "user.fuseoverlayfs.override_stat";

const DETECT_ORDER: [&str; 3] = [PRIVILEGED, CONTAINERS, USER];

/// Whether an xattr name is one of the override names.
pub fn is_override_xattr(name: &[u8]) -> bool {
    DETECT_ORDER.iter().any(|n| n.as_bytes() == name)
}

/// What an object really is: owner, full `st_mode` (type and permission bits), device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub rdev: u64,
}

impl Recorded {
    /// What a stat result says, as it is.
    pub fn of_stat(st: &Stat) -> Recorded {
        Recorded {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            rdev: st.st_rdev,
        }
    }

    /// Parse a value; `disk_mode` supplies the type for the three-field form.
    pub fn parse(v: &[u8], disk_mode: u32) -> Option<Recorded> {
        let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
        let mut it = s.splitn(4, ':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let perm = u32::from_str_radix(it.next()?, 8).ok()?;
        if perm & !0o7777 != 0 {
            return None;
        }
        let (ftype, rdev) = match it.next() {
            None => (sys::mode_type(disk_mode), 0),
            Some(t) => parse_type(t)?,
        };
        Some(Recorded {
            uid,
            gid,
            mode: ftype | perm,
            rdev,
        })
    }

    /// The four-field value.
    pub fn to_value(&self) -> String {
        let t = match sys::mode_type(self.mode) {
            libc::S_IFDIR => "dir".to_string(),
            libc::S_IFLNK => "symlink".to_string(),
            libc::S_IFIFO => "pipe".to_string(),
            libc::S_IFSOCK => "socket".to_string(),
            libc::S_IFBLK => format!(
                "block-{}-{}",
                sys::dev_major(self.rdev),
                sys::dev_minor(self.rdev)
            ),
            libc::S_IFCHR => format!(
                "char-{}-{}",
                sys::dev_major(self.rdev),
                sys::dev_minor(self.rdev)
            ),
            _ => "file".to_string(),
        };
        format!("{}:{}:0{:o}:{}", self.uid, self.gid, self.mode & 0o7777, t)
    }

    /// Put these into a stat result.
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = self.mode;
        st.st_rdev = self.rdev;
    }

    /// Whether the object is a stand-in on disk (recorded type not a file, dir or link).
    pub fn is_special(&self) -> bool {
        !matches!(
            sys::mode_type(self.mode),
            libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK
        )
    }
}

fn parse_type(t: &str) -> Option<(u32, u64)> {
    let dev = |rest: &str| -> Option<u64> {
        let (ma, mi) = rest.split_once('-')?;
        Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
    };
    Some(match t {
        "file" => (libc::S_IFREG, 0),
        "dir" => (libc::S_IFDIR, 0),
        "symlink" => (libc::S_IFLNK, 0),
        "pipe" => (libc::S_IFIFO, 0),
        "socket" => (libc::S_IFSOCK, 0),
        _ => {
            if let Some(r) = t.strip_prefix("block-") {
                (libc::S_IFBLK, dev(r)?)
            } else if let Some(r) = t.strip_prefix("char-") {
                (libc::S_IFCHR, dev(r)?)
            } else {
                return None;
            }
        }
    })
}

/// The type and permission bits an object recorded with `mode` gets on disk in an
/// override layer (see the module doc).
pub fn disk_mode(mode: u32) -> u32 {
    let perm = mode & 0o777;
    match sys::mode_type(mode) {
        libc::S_IFDIR => libc::S_IFDIR | perm | 0o700,
        libc::S_IFLNK => libc::S_IFLNK | 0o777,
        _ => libc::S_IFREG | perm | 0o600,
    }
}

/// How one layer keeps what its disk cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideLayer {
    /// The xattr name this layer uses.
    pub name: &'static str,
    /// The layer root's ids on disk: they show as 0 on objects without a record.
    pub owner: (u32, u32),
}

impl OverrideLayer {
    /// The override form of a layer, if its root says it has one.
    pub fn detect(root: BorrowedFd<'_>) -> SysResult<Option<OverrideLayer>> {
        for name in DETECT_ORDER {
            match sys::get_xattr(root, None, OsStr::new(name)) {
                Ok(Some(_)) => return Self::with_name(root, name).map(Some),
                Ok(None) | Err(Errno::NOTSUP) | Err(Errno::PERM) | Err(Errno::ACCESS) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// A layer using `name` (for a new upper layer, or one named by a mount option).
    pub fn with_name(root: BorrowedFd<'_>, name: &'static str) -> SysResult<OverrideLayer> {
        let st = sys::stat_fd(root)?;
        Ok(OverrideLayer {
            name,
            owner: (st.st_uid, st.st_gid),
        })
    }

    /// What an object (`name` in `dir`, or `dir` itself) really is; `st` is its stat.
    /// An unreadable or malformed record counts as none (logged).
    pub fn read(&self, dir: BorrowedFd<'_>, name: Option<&OsStr>, st: &Stat) -> Recorded {
        if sys::mode_type(st.st_mode) != libc::S_IFLNK {
            match sys::get_xattr(dir, name, OsStr::new(self.name)) {
                Ok(Some(v)) => match Recorded::parse(&v, st.st_mode) {
                    Some(r) => return r,
                    None => log::warn!(
                        "{:?}: malformed {} {:?} ignored",
                        name.unwrap_or(OsStr::new(".")),
                        self.name,
                        String::from_utf8_lossy(&v)
                    ),
                },
                Ok(None) => {}
                Err(e) => log::debug!("{:?}: reading {}: {e}", name, self.name),
            }
        }
        self.default_for(st)
    }

    /// What an object without a record shows.
    pub fn default_for(&self, st: &Stat) -> Recorded {
        let mut r = Recorded::of_stat(st);
        if r.uid == self.owner.0 {
            r.uid = 0;
        }
        if r.gid == self.owner.1 {
            r.gid = 0;
        }
        r
    }

    /// The stat an object shows: its disk stat with the record applied.
    pub fn shown(&self, dir: BorrowedFd<'_>, name: Option<&OsStr>, st: &Stat) -> Stat {
        let mut out = *st;
        self.read(dir, name, st).apply(&mut out);
        out
    }

    /// Record what an object is (not on symlinks: the kernel keeps `user.*` xattrs off
    /// them; their owner stays what the disk says).
    pub fn write(&self, dir: BorrowedFd<'_>, name: Option<&OsStr>, r: &Recorded) -> SysResult<()> {
        if sys::mode_type(r.mode) == libc::S_IFLNK {
            return Ok(());
        }
        sys::set_xattr(dir, name, OsStr::new(self.name), r.to_value().as_bytes(), 0)
    }

    /// Whether an object with disk stat `st` needs a record to show `r`.
    pub fn needs_record(&self, st: &Stat, r: &Recorded) -> bool {
        self.default_for(st) != *r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for r in [
            Recorded {
                uid: 0,
                gid: 0,
                mode: libc::S_IFDIR | 0o755,
                rdev: 0,
            },
            Recorded {
                uid: 1000,
                gid: 42,
                mode: libc::S_IFREG | 0o4755,
                rdev: 0,
            },
            Recorded {
                uid: 0,
                gid: 6,
                mode: libc::S_IFBLK | 0o660,
                rdev: libc::makedev(8, 1),
            },
            Recorded {
                uid: 0,
                gid: 0,
                mode: libc::S_IFCHR | 0o666,
                rdev: libc::makedev(1, 3),
            },
            Recorded {
                uid: 7,
                gid: 7,
                mode: libc::S_IFIFO | 0o600,
                rdev: 0,
            },
        ] {
            let v = r.to_value();
            assert_eq!(Recorded::parse(v.as_bytes(), libc::S_IFREG), Some(r), "{v}");
        }
        assert_eq!(
            Recorded {
                uid: 0,
                gid: 0,
                mode: libc::S_IFCHR | 0o666,
                rdev: libc::makedev(1, 3)
            }
            .to_value(),
            "0:0:0666:char-1-3"
        );
    }

    #[test]
    fn three_fields_keep_the_disk_type() {
        let r = Recorded::parse(b"0:0:0755", libc::S_IFDIR | 0o700).unwrap();
        assert_eq!(r.mode, libc::S_IFDIR | 0o755);
        assert_eq!(Recorded::parse(b"1:2:644\0", libc::S_IFREG).unwrap().gid, 2);
    }

    #[test]
    fn malformed_values_are_refused() {
        for v in [
            &b""[..],
            b"0:0",
            b"x:0:0755",
            b"0:0:0999",
            b"0:0:017777",
            b"0:0:0755:tape",
            b"0:0:0755:char-1",
            b"-1:0:0755",
        ] {
            assert_eq!(Recorded::parse(v, libc::S_IFREG), None, "{v:?}");
        }
    }

    #[test]
    fn disk_modes_are_safe_and_readable() {
        assert_eq!(disk_mode(libc::S_IFREG | 0o4755), libc::S_IFREG | 0o755);
        assert_eq!(disk_mode(libc::S_IFREG), libc::S_IFREG | 0o600);
        assert_eq!(disk_mode(libc::S_IFDIR | 0o1777), libc::S_IFDIR | 0o777);
        assert_eq!(disk_mode(libc::S_IFDIR | 0o500), libc::S_IFDIR | 0o700);
        assert_eq!(disk_mode(libc::S_IFCHR | 0o666), libc::S_IFREG | 0o666);
        assert_eq!(disk_mode(libc::S_IFIFO | 0o2640), libc::S_IFREG | 0o640);
    }

    #[test]
    fn records_on_disk_are_read_back_and_shown() {
        use std::os::fd::AsFd;
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let root = sys::open_root_dir(t.path()).unwrap();
        let ovl = OverrideLayer::with_name(root.as_fd(), CONTAINERS).unwrap();
        let name = OsStr::new("f");
        let st = sys::stat_at(root.as_fd(), name).unwrap();
        // No record: the layer owner's ids show as 0, the disk mode as it is.
        let plain = ovl.read(root.as_fd(), Some(name), &st);
        assert_eq!((plain.uid, plain.gid, plain.mode), (0, 0, st.st_mode));
        let rec = Recorded {
            uid: 7,
            gid: 8,
            mode: libc::S_IFCHR | 0o620,
            rdev: libc::makedev(4, 1),
        };
        if let Err(e) = ovl.write(root.as_fd(), Some(name), &rec) {
            // A filesystem without user xattrs (old tmpfs) cannot hold records at all.
            assert_eq!(e, Errno::NOTSUP);
            return;
        }
        assert!(ovl.needs_record(&st, &rec));
        assert!(!ovl.needs_record(&st, &plain));
        assert_eq!(ovl.read(root.as_fd(), Some(name), &st), rec);
        let shown = ovl.shown(root.as_fd(), Some(name), &st);
        assert_eq!((shown.st_uid, shown.st_gid), (7, 8));
        assert_eq!(shown.st_mode, libc::S_IFCHR | 0o620);
        assert_eq!(shown.st_rdev, libc::makedev(4, 1));
        // The layer is now found by its root only once the root carries a record.
        assert_eq!(OverrideLayer::detect(root.as_fd()).unwrap(), None);
        ovl.write(
            root.as_fd(),
            None,
            &ovl.default_for(&sys::stat_fd(root.as_fd()).unwrap()),
        )
        .unwrap();
        assert_eq!(
            OverrideLayer::detect(root.as_fd()).unwrap().map(|o| o.name),
            Some(CONTAINERS)
        );
    }

    #[test]
    fn names() {
        assert!(is_override_xattr(b"user.containers.override_stat"));
        assert!(is_override_xattr(b"security.fuseoverlayfs.override_stat"));
        assert!(!is_override_xattr(b"user.containers.override_stat2"));
    }
}
