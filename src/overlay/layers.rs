//! The layer stack: one directory handle per layer, upper (if any) first.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::markers;
use crate::override_stat::OverrideLayer;
use crate::sys::{self, Errno};

/// Index of a layer: 0 is the upper layer, 1..=N the lower layers, top first.
pub type LayerId = u16;
pub const UPPER: LayerId = 0;

/// An open directory in one real layer (`O_PATH` handle).
#[derive(Debug)]
pub struct RealDir {
    pub layer: LayerId,
    pub fd: OwnedFd,
    /// Entries may be xattr whiteouts (the dir carries `overlay.opaque=x`).
    pub xattr_whiteouts: bool,
    /// For upper dirs: whether any `.wh.NAME` file was in it when first asked.
    oci_whiteouts: OnceLock<bool>,
}

impl RealDir {
    pub fn new(layer: LayerId, fd: OwnedFd) -> Arc<Self> {
        Self::with_markers(layer, fd, false)
    }

    pub fn with_markers(layer: LayerId, fd: OwnedFd, xattr_whiteouts: bool) -> Arc<Self> {
        Arc::new(Self {
            layer,
            fd,
            xattr_whiteouts,
            oci_whiteouts: OnceLock::new(),
        })
    }

    /// Whether this directory held OCI whiteout files when first asked (one listing).
    /// Only meaningful for an upper dir into which this mount writes no OCI whiteouts.
    pub fn had_oci_whiteouts(&self) -> bool {
        *self.oci_whiteouts.get_or_init(|| {
            let mut found = false;
            let r = sys::read_dir_each(self.fd(), |e| {
                found = markers::oci_whiteout_target(e.name.as_encoded_bytes()).is_some();
                !found
            });
            // If it cannot be read, assume the worst: probe for every name.
            found || r.is_err()
        })
    }

    #[inline]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn is_upper(&self) -> bool {
        self.layer == UPPER
    }
}

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    pub id: LayerId,
    pub path: PathBuf,
    pub root: Arc<RealDir>,
    pub dev: u64,
    /// Where owners and modes the disk cannot hold are recorded (rootless layers).
    pub ovl: Option<OverrideLayer>,
    /// The layer lies under an idmapped mount: the owners read from it are mapped ids
    /// already (see [`super::idmap`]). Lower layers only.
    pub idmapped: bool,
}

/// Where the data of a stub comes from when no data layer has it yet (an image pulled
/// lazily): `fetch` places the object the redirect names in a data layer, verified, or
/// says why it could not.
pub trait FetchData: Send + Sync {
    fn fetch(&self, redirect: &[u8]) -> Result<(), String>;
}

/// Builds the fetcher of a stack from its lower and data dirs (`None`: nothing in it
/// was pulled lazily). The program registers one at start (the store knows lazy layers,
/// the registry client fetches); without one, stubs without data read as `EIO`.
pub type FetcherFactory =
    fn(&[PathBuf], &[PathBuf]) -> crate::error::Result<Option<std::sync::Arc<dyn FetchData>>>;

static FETCHER_FACTORY: std::sync::OnceLock<FetcherFactory> = std::sync::OnceLock::new();

/// Register the program's [`FetcherFactory`] (the first registration stands).
pub fn set_fetcher_factory(f: FetcherFactory) {
    let _ = FETCHER_FACTORY.set(f);
}

/// The fetcher of a stack, from the registered factory.
pub(crate) fn fetcher_for(
    lowers: &[PathBuf],
    data: &[PathBuf],
) -> crate::error::Result<Option<std::sync::Arc<dyn FetchData>>> {
    match FETCHER_FACTORY.get() {
        Some(f) if !data.is_empty() => f(lowers, data),
        _ => Ok(None),
    }
}

impl std::fmt::Debug for dyn FetchData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FetchData")
    }
}

/// The whole stack plus the work directory.
#[derive(Debug)]
pub struct Layers {
    pub upper: Option<Layer>,
    /// `WORKDIR/work`: scratch space on the upper filesystem for atomic copy-up.
    pub work: Option<OwnedFd>,
    pub lowers: Vec<Layer>,
    /// Data-only layers (`O_PATH` roots): where metacopy stubs find their data.
    pub data: Vec<OwnedFd>,
    /// Fetches data no data layer has yet (lazily pulled images).
    pub fetch: Option<std::sync::Arc<dyn FetchData>>,
    /// Some layer records owners in xattrs (kept with `ovl`, read on hot paths).
    any_override: bool,
    /// Distinct devices in layer order (upper first); the position is the `fsidx`
    /// mixed into the high bits of inode numbers of every layer but the first fs.
    devs: Vec<u64>,
}

/// Bits of the inode number left for the real inode when layers span several filesystems.
const INO_BITS: u32 = 56;
const INO_MASK: u64 = (1 << INO_BITS) - 1;

impl Layers {
    /// Open every layer. `lowers` is top first, as in `lowerdir=`.
    pub fn open(
        lowers: &[PathBuf],
        data: &[PathBuf],
        upper: Option<&Path>,
        workdir: Option<&Path>,
    ) -> Result<Self, (PathBuf, Errno)> {
        let open_layer = |id: LayerId, path: &Path| -> Result<Layer, (PathBuf, Errno)> {
            let fd = sys::open_root_dir(path).map_err(|e| (path.to_path_buf(), e))?;
            let st = sys::stat_fd(fd.as_fd()).map_err(|e| (path.to_path_buf(), e))?;
            // The root of a layer may hold xattr whiteouts like any other dir.
            let markers =
                markers::read_markers(fd.as_fd(), None).map_err(|e| (path.to_path_buf(), e))?;
            let ovl = OverrideLayer::detect(fd.as_fd()).map_err(|e| (path.to_path_buf(), e))?;
            Ok(Layer {
                id,
                path: path.to_path_buf(),
                root: RealDir::with_markers(id, fd, markers.xattr_whiteouts),
                dev: st.st_dev,
                ovl,
                idmapped: false,
            })
        };
        let upper = match upper {
            Some(p) => Some(open_layer(UPPER, p)?),
            None => None,
        };
        let mut lower_layers = Vec::with_capacity(lowers.len());
        for (i, p) in lowers.iter().enumerate() {
            lower_layers.push(open_layer((i + 1) as LayerId, p)?);
        }
        mark_idmapped(&mut lower_layers);
        let work = match workdir {
            Some(w) => {
                let wfd = sys::open_root_dir(w).map_err(|e| (w.to_path_buf(), e))?;
                match sys::mkdir_at(wfd.as_fd(), OsStr::new("work"), 0o700) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err((w.join("work"), e)),
                }
                Some(
                    sys::open_dir_path(wfd.as_fd(), OsStr::new("work"))
                        .map_err(|e| (w.join("work"), e))?,
                )
            }
            None => None,
        };
        let mut devs = Vec::new();
        for l in upper.iter().chain(lower_layers.iter()) {
            if !devs.contains(&l.dev) {
                devs.push(l.dev);
            }
        }
        let any_override = upper.iter().chain(&lower_layers).any(|l| l.ovl.is_some());
        let data = data
            .iter()
            .map(|p| sys::open_root_dir(p).map_err(|e| (p.clone(), e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Layers {
            upper,
            work,
            lowers: lower_layers,
            data,
            fetch: None,
            any_override,
            devs,
        })
    }

    pub fn get(&self, id: LayerId) -> &Layer {
        if id == UPPER {
            self.upper.as_ref().expect("upper layer")
        } else {
            &self.lowers[id as usize - 1]
        }
    }

    /// The data of a lower-layer file (`fd` open, `st` its stat) when it is a metacopy
    /// stub: its data opened with `flags` from the data-only layers. `Ok(None)` for an
    /// ordinary file, or when the stack has no data layers (a stub is then shown as it
    /// is). Data a stub names that no data layer has is fetched when `may_fetch` and the
    /// stack has a fetcher (a lazily pulled image); else, or when that fails: `EIO`,
    /// logged (`ENODATA`, quietly, for a lazy stack asked without `may_fetch`).
    pub fn stub_data(
        &self,
        fd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        st: &sys::Stat,
        flags: sys::OFlags,
        may_fetch: bool,
    ) -> sys::SysResult<Option<OwnedFd>> {
        if self.data.is_empty() || !crate::metacopy::may_be_stub(st) {
            return Ok(None);
        }
        let Some(r) = crate::metacopy::redirect_of(fd, name)? else {
            return Ok(None);
        };
        let open = || {
            for d in &self.data {
                match crate::metacopy::open_data(d.as_fd(), &r, flags) {
                    Ok(f) => return Ok(Some(f)),
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        };
        if let Some(f) = open()? {
            return Ok(Some(f));
        }
        let what = String::from_utf8_lossy(&r);
        match &self.fetch {
            Some(_) if !may_fetch => return Err(Errno::NODATA),
            Some(fetcher) => match fetcher.fetch(&r) {
                Ok(()) => {
                    if let Some(f) = open()? {
                        return Ok(Some(f));
                    }
                    log::warn!("fetched the data of a file ({what}), but it is not there");
                }
                Err(why) => log::warn!("fetching the data of a file ({what}): {why}"),
            },
            None => log::warn!("the data of a file ({what}) is in no data-only layer"),
        }
        Err(Errno::IO)
    }

    pub fn has_upper(&self) -> bool {
        self.upper.is_some()
    }

    /// The override form of a layer (rootless layers), if it has one.
    #[inline]
    pub fn ovl(&self, id: LayerId) -> Option<&OverrideLayer> {
        if id == UPPER {
            self.upper.as_ref()?.ovl.as_ref()
        } else {
            self.lowers.get(id as usize - 1)?.ovl.as_ref()
        }
    }

    /// Whether any layer records owners in xattrs.
    #[inline]
    pub fn any_override(&self) -> bool {
        self.any_override
    }

    /// Decide how the upper layer keeps owners: `name` from `xattr_permissions=`, else
    /// what its root says; an unprivileged daemon over rootless lowers records them too
    /// (it cannot `chown` a copy to the owner a lower file shows), and marks the upper
    /// root so that later mounts and `commit` read it the same way.
    pub fn setup_upper_override(&mut self, name: Option<&'static str>, privileged: bool) {
        let lowers_override = self.any_override;
        let top_root = self.lowers.first().map(|l| (l.root.clone(), l.ovl));
        let Some(up) = self.upper.as_mut() else {
            return;
        };
        let name = match (name, up.ovl) {
            (Some(n), _) => n,
            (None, Some(_)) => return,
            (None, None) if lowers_override && !privileged => crate::override_stat::CONTAINERS,
            (None, None) => return,
        };
        let Ok(ovl) = OverrideLayer::with_name(up.root.fd(), name) else {
            return;
        };
        let root = up.root.fd();
        if matches!(sys::get_xattr(root, None, OsStr::new(name)), Ok(None)) {
            // The merged root shows the upper root: record what the lower root shows.
            let rec = match top_root {
                Some((lroot, Some(lovl))) => {
                    sys::stat_fd(lroot.fd()).map(|st| lovl.read(lroot.fd(), None, &st))
                }
                _ => sys::stat_fd(root).map(|st| ovl.default_for(&st)),
            };
            if let Err(e) = rec.and_then(|rec| ovl.write(root, None, &rec)) {
                log::warn!("upper dir: cannot record owners in {name}: {e}");
                return;
            }
        }
        up.ovl = Some(ovl);
        self.any_override = true;
    }

    /// Whether the owners read from layer `id` come through an idmapped mount.
    #[inline]
    pub fn idmapped(&self, id: LayerId) -> bool {
        id != UPPER && self.lowers[id as usize - 1].idmapped
    }

    pub fn num_lowers(&self) -> usize {
        self.lowers.len()
    }

    /// The inode number we report for a real inode: the real one when every layer is
    /// on one filesystem (as the kernel's overlayfs does), otherwise with the index of
    /// the filesystem in the top bits so numbers never collide across layers.
    #[inline]
    pub fn map_ino(&self, dev: u64, ino: u64) -> u64 {
        let idx = self.devs.iter().position(|d| *d == dev).unwrap_or(0) as u64;
        let v = if idx == 0 {
            ino
        } else {
            (idx << INO_BITS) | (ino & INO_MASK)
        };
        fix_reserved_ino(v)
    }
}

/// Mark the layers whose directory handle lies on an idmapped mount. The handles were
/// opened before the mount is reported ready and keep such a mount alive: podman 4.3
/// detaches its idmapped mounts of the lower dirs once the mount program returns.
fn mark_idmapped(lowers: &mut [Layer]) {
    if lowers.is_empty() {
        return;
    }
    let ids = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => idmapped_mount_ids(&text),
        Err(e) => {
            log::warn!("cannot read /proc/self/mountinfo ({e}): taking no layer as idmapped");
            return;
        }
    };
    if ids.is_empty() {
        return;
    }
    for l in lowers {
        l.idmapped = matches!(sys::mount_id(l.root.fd()), Ok(Some(id)) if ids.contains(&id));
        if l.idmapped {
            log::info!("lower layer {} is on an idmapped mount", l.path.display());
        }
    }
}

/// The ids of the mounts that `/proc/self/mountinfo` marks `idmapped` (the first field
/// of a line is the mount id, the sixth the per-mount options).
fn idmapped_mount_ids(mountinfo: &str) -> Vec<u64> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            let id = f.next()?.parse::<u64>().ok()?;
            let opts = f.nth(4)?;
            opts.split(',').any(|o| o == "idmapped").then_some(id)
        })
        .collect()
}

/// FUSE reserves 0 and uses 1 for the root: move any real inode with those numbers away.
#[inline]
pub fn fix_reserved_ino(ino: u64) -> u64 {
    if ino <= 1 { ino | (1 << 63) } else { ino }
}

/// Sanity check that a path is a usable directory, for friendly mount-time errors.
pub fn check_dir(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", path.display())),
        Err(e) => Err(format!("{}: {}", path.display(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idmapped_mounts_from_mountinfo() {
        // As podman 4.3 leaves them while it runs a mount program with `--uidmap`.
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
50 48 254:0 /var/lib/containers/storage/overlay /var/lib/containers/storage/overlay/c1/mapped/0 rw,relatime,idmapped - ext4 /dev/vda rw,discard
51 48 254:0 /srv/a\\040b /mnt/idmapped\\040dir ro,idmapped shared:7 - ext4 /dev/vda rw
52 22 0:45 / /idmapped rw,nosuid - tmpfs idmapped rw
bad line
";
        assert_eq!(idmapped_mount_ids(text), vec![50, 51]);
        assert!(idmapped_mount_ids("").is_empty());
    }

    #[test]
    fn mount_ids_match_mountinfo() {
        let fd = sys::open_root_dir(Path::new("/")).unwrap();
        let Some(id) = sys::mount_id(fd.as_fd()).unwrap() else {
            return; // a kernel before 5.8
        };
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            text.lines()
                .any(|l| l.split(' ').next() == Some(id.to_string().as_str())),
            "mount id {id} of / is not in mountinfo"
        );
    }
}
