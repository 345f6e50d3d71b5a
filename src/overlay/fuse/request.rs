//! A mount request as plain data, and its checks: what the command line (or a container
//! record) asks for, turned into validated absolute paths before anything is mounted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result, describe};
use crate::overlay::idmap::IdMap;
use crate::sys;

/// Which files go through FUSE passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassthroughMode {
    Off,
    /// Files in the upper layer only: lower files use the FUSE page cache (one copy
    /// per mount), and a descriptor opened before a copy-up reads the copy.
    Upper,
    /// Lower files too (the default as root): their page cache is the lower file's,
    /// shared by every mount of the layer. A descriptor opened on a lower file keeps
    /// reading it after a copy-up and a write; an open that needs the upper file while
    /// such descriptors live moves the name to a new node (see `OverlayFs::supersede`).
    All,
}

/// Everything a mount is asked to be.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MountRequest {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers: where metacopy stubs find their data.
    pub data: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
    /// `fsync` and copy-ups reach the disk (off for `volatile` / `fsync=0`).
    pub fsync: bool,
    /// Owner mapping between the layers and the mount.
    pub idmap: IdMap,
    /// Entry/attribute validity for objects that may change; `None`: the default.
    pub timeout: Option<Duration>,
    /// `None`: automatic (every file as root, nothing otherwise).
    pub passthrough: Option<PassthroughMode>,
    pub writeback: bool,
    /// Write-only opens of files that do not pass through use the FUSE page cache like
    /// other opens (`direct_writes=off`); by default their writes go straight to the
    /// daemon.
    pub cached_writes: bool,
    pub readdirplus: bool,
    /// Warm listed directories' subdirectories in the background.
    pub prefetch: bool,
    /// Request threads; `None`: one per core (2 to 16).
    pub threads: Option<usize>,
    /// FUSE's io_uring transport: `None` automatic (where the kernel has it: root turns
    /// `enable_uring` on for INIT, an ordinary user needs it left on),
    /// `Some(false)` never (`uring=off`), `Some(true)` asked for (a warning where it
    /// cannot be had).
    pub uring: Option<bool>,
    pub fsname: Option<String>,
    pub noexec: bool,
    pub nodev: bool,
    pub nosuid: bool,
    /// Record upper-layer owners and modes in this xattr (`xattr_permissions=`).
    pub upper_override: Option<&'static str>,
    /// Serve from a user namespace over the caller's subordinate ids, mounted from
    /// outside it (the layers of a store made with them).
    pub subids: bool,
}

/// Tunables of the FUSE side.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// Entry and attribute validity for objects that may change (upper layer).
    pub ttl: Duration,
    /// Validity for objects only in lower layers (immutable).
    pub lower_ttl: Duration,
    /// FUSE passthrough for open files.
    pub passthrough: PassthroughMode,
    /// Cache writes in the kernel (not together with passthrough).
    pub writeback: bool,
    /// Handles opened write-only that do not pass through get `FOPEN_DIRECT_IO`: their
    /// writes reach the daemon without first being copied into the FUSE page cache
    /// (where they would stay as a second copy of the upper file's pages), and without
    /// the `security.capability` lookup the kernel makes before every cached write.
    pub direct_writes: bool,
    /// Answer listings with READDIRPLUS (entries with attributes), as well as keeping
    /// the kernel's listing cache.
    pub readdirplus: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            ttl: Duration::from_secs(86400),
            lower_ttl: Duration::from_secs(86400 * 365),
            passthrough: PassthroughMode::Off,
            writeback: false,
            direct_writes: true,
            readdirplus: true,
        }
    }
}

impl FuseOptions {
    /// Entry and attribute validity of an object.
    pub fn ttl_for(&self, immutable: bool) -> Duration {
        if immutable { self.lower_ttl } else { self.ttl }
    }

    /// How long the kernel may keep a negative entry: every creation goes through us.
    pub fn negative_ttl(&self, writable: bool) -> Duration {
        self.ttl_for(!writable)
    }

    /// Whether a handle opened with `flags` gets `FOPEN_DIRECT_IO` (`direct_writes`): a
    /// write-only handle that does not pass through. It cannot read or be mapped, so
    /// nothing is lost: the kernel invalidates the pages other handles cached over the
    /// range it writes, and the data is not kept twice (FUSE page cache and upper file).
    pub fn direct_io(&self, flags: i32) -> bool {
        self.direct_writes && flags & libc::O_ACCMODE == libc::O_WRONLY
    }
}

impl MountRequest {
    /// The FUSE tunables this request asks for, given our privileges.
    pub fn fuse_options(&self) -> FuseOptions {
        let mut o = FuseOptions::default();
        if let Some(t) = self.timeout {
            o.ttl = t;
        }
        o.passthrough = if !sys::is_privileged() {
            PassthroughMode::Off
        } else {
            self.passthrough.unwrap_or(PassthroughMode::All)
        };
        o.writeback = self.writeback;
        // The writeback cache is the other way to take writes off the caller's path.
        o.direct_writes = !self.cached_writes && !self.writeback;
        o.readdirplus = self.readdirplus;
        o
    }
}

/// "WHAT PATH: reason", with the kind and errno of the I/O error.
fn io_err(what: &str, p: &Path, e: &std::io::Error) -> Error {
    let msg = format!("{what} {}: {}", p.display(), describe(e));
    match e.raw_os_error() {
        Some(errno) => Error::with_errno(msg, errno),
        None => Error::with_kind(ErrorKind::of_io(e), msg),
    }
}

fn check_dir(p: &Path, what: &str) -> Result<PathBuf> {
    let c = std::fs::canonicalize(p).map_err(|e| io_err(what, p, &e))?;
    let md = std::fs::metadata(&c).map_err(|e| io_err(what, p, &e))?;
    if !md.is_dir() {
        return Err(Error::invalid_input(format!(
            "{what} {} is not a directory",
            p.display()
        )));
    }
    Ok(c)
}

/// Validated, absolute paths of a mount request.
#[derive(Debug, Clone)]
pub struct MountPlan {
    pub lowers: Vec<PathBuf>,
    pub data: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
}

/// Check every path: existence, type, readability, overlaps, same filesystem.
pub fn plan(a: &MountRequest) -> Result<MountPlan> {
    let mut lowers = Vec::new();
    for l in &a.lowers {
        let c = check_dir(l, "lowerdir")?;
        if let Err(e) = std::fs::read_dir(&c) {
            return Err(io_err("lowerdir", l, &e));
        }
        lowers.push(c);
    }
    let mut data = Vec::new();
    for l in &a.data {
        data.push(check_dir(l, "data-only lowerdir")?);
    }
    let upper = a
        .upper
        .as_deref()
        .map(|u| check_dir(u, "upperdir"))
        .transpose()?;
    let work = a
        .work
        .as_deref()
        .map(|w| check_dir(w, "workdir"))
        .transpose()?;
    let mountpoint = check_dir(&a.mountpoint, "mountpoint")?;
    for l in lowers.iter().chain(upper.iter()).chain(work.iter()) {
        if mountpoint.starts_with(l) {
            return Err(Error::invalid_input(format!(
                "mountpoint {} is inside layer {}",
                mountpoint.display(),
                l.display()
            )));
        }
        if l.starts_with(&mountpoint) {
            return Err(Error::invalid_input(format!(
                "layer {} is inside the mountpoint {}",
                l.display(),
                mountpoint.display()
            )));
        }
    }
    if let (Some(u), Some(w)) = (&upper, &work) {
        if u == w || u.starts_with(w) || w.starts_with(u) {
            return Err(Error::invalid_input(format!(
                "upperdir {} and workdir {} must not contain each other",
                u.display(),
                w.display()
            )));
        }
        for l in &lowers {
            if u.starts_with(l) || l.starts_with(u) {
                return Err(Error::invalid_input(format!(
                    "upperdir {} overlaps lowerdir {}",
                    u.display(),
                    l.display()
                )));
            }
        }
        use std::os::unix::fs::MetadataExt;
        let du = std::fs::metadata(u).map(|m| m.dev()).unwrap_or(0);
        let dw = std::fs::metadata(w).map(|m| m.dev()).unwrap_or(1);
        if du != dw {
            return Err(Error::invalid_input(format!(
                "workdir {} must be on the same filesystem as upperdir {}",
                w.display(),
                u.display()
            )));
        }
        if std::fs::metadata(u)
            .map(|m| m.permissions().readonly())
            .unwrap_or(false)
            && !sys::is_namespace_root()
        {
            return Err(Error::invalid_input(format!(
                "upperdir {} is not writable",
                u.display()
            )));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::not_found(
            "/dev/fuse is missing (load the fuse module, or run with --device /dev/fuse)",
        ));
    }
    Ok(MountPlan {
        lowers,
        data,
        upper,
        work,
        mountpoint,
    })
}
