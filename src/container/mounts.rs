//! Mounting containers (and images, see `image_mounts`) through the daemon, and finding
//! their mounts.
//!
//! A container is mounted by running our own binary as `layerfs overlay -o
//! lowerdir=…,upperdir=…,workdir=…,fsname=layerfs:<id> MOUNTPOINT`, which returns once the
//! mount is ready and serves in the background. The source name carries the container
//! id, so `/proc/self/mountinfo` alone tells which containers are mounted where: no
//! state file can go stale. A mount whose daemon died answers `ENOTCONN`; such a mount
//! counts as not mounted and is detached by the next `mount`, `umount` or `rm`.
//!
//! The functions that take a `source` work on any mount made this way, whatever its
//! source says it is (`layerfs:<container id>`, `layerfs-image:<image id>`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::container::{Container, Containers, escape_opt_path, find};
use crate::error::{Error, IoContext, Result};
use crate::sys::{self, Errno};

/// Mount source of container mounts: `layerfs:<container id>`.
pub(crate) const SOURCE_PREFIX: &str = "layerfs:";

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountInfo {
    pub path: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parse mountinfo text.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("").to_string();
        let source = String::from_utf8_lossy(&unescape(r.next().unwrap_or(""))).into_owned();
        out.push(MountInfo {
            path: PathBuf::from(OsString::from_vec(unescape(mp))),
            fstype,
            source,
        });
    }
    out
}

/// Every mount in this mount namespace.
pub(crate) fn mount_table() -> Result<Vec<MountInfo>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").ctx("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerMount {
    pub path: PathBuf,
    /// False when the daemon behind it is gone (`ENOTCONN`).
    pub live: bool,
}

/// Whether the daemon behind a FUSE mountpoint still answers (`statfs` is never
/// answered from the kernel's caches, unlike `stat`). A dead daemon's mount answers
/// `ENOTCONN` (`ECONNABORTED` once aborted); one served over io_uring answers `ECANCELED`
/// while the kernel tears the dead daemon's ring down, before the connection ends.
pub(crate) fn is_live(path: &Path) -> bool {
    !matches!(
        sys::statfs_path(path),
        Err(Errno::NOTCONN) | Err(Errno::CONNABORTED) | Err(Errno::CANCELED)
    )
}

/// The source of a container's mounts.
fn container_source(id: &str) -> String {
    format!("{SOURCE_PREFIX}{id}")
}

/// The mountpoints of FUSE mounts whose source starts with `prefix`, by the rest of the
/// source (no liveness check: that touches the mount, so it is done only for the mounts
/// a command cares about).
pub(crate) fn mountpoints_by(prefix: &str) -> Result<HashMap<String, Vec<PathBuf>>> {
    let mut out: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for m in mount_table()? {
        if let Some(id) = m.source.strip_prefix(prefix)
            && m.fstype.starts_with("fuse")
        {
            out.entry(id.to_string()).or_default().push(m.path);
        }
    }
    Ok(out)
}

/// The mountpoints of container mounts, by container id.
pub(crate) fn mountpoints() -> Result<HashMap<String, Vec<PathBuf>>> {
    mountpoints_by(SOURCE_PREFIX)
}

pub(crate) fn with_liveness(paths: Vec<PathBuf>) -> Vec<ContainerMount> {
    paths
        .into_iter()
        .map(|path| ContainerMount {
            live: is_live(&path),
            path,
        })
        .collect()
}

/// The mounts of the given containers, by id, with their liveness.
pub(crate) fn mounts_for<'a>(
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<HashMap<String, Vec<ContainerMount>>> {
    let mut all = mountpoints()?;
    let mut out = HashMap::new();
    for id in ids {
        if let Some(paths) = all.remove(id) {
            out.insert(id.to_string(), with_liveness(paths));
        }
    }
    Ok(out)
}

/// The mounts with this source, with their liveness.
pub(crate) fn mounts_with_source(source: &str) -> Result<Vec<ContainerMount>> {
    let paths: Vec<PathBuf> = mount_table()?
        .into_iter()
        .filter(|m| m.source == source && m.fstype.starts_with("fuse"))
        .map(|m| m.path)
        .collect();
    Ok(with_liveness(paths))
}

/// The mounts of one container.
pub(crate) fn mounts_of(id: &str) -> Result<Vec<ContainerMount>> {
    mounts_with_source(&container_source(id))
}

/// Detach the mounts with this source whose daemon died. Returns how many.
fn clean_dead(source: &str) -> Result<usize> {
    let mut n = 0;
    for m in mounts_with_source(source)? {
        if !m.live {
            match sys::umount_detach(&m.path) {
                Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => n += 1,
                Err(e) => {
                    return Err(Error::from(e)
                        .context(format!("detaching the dead mount at {}", m.path.display())));
                }
            }
        }
    }
    Ok(n)
}

/// `umount`, retried for a moment while it says busy: a passing `stat` or `statfs` of
/// the mountpoint (another command listing mounts, a shell prompt) holds it for an
/// instant; open files and working directories do not go away by waiting.
pub(crate) fn umount_patiently(path: &Path) -> sys::SysResult<()> {
    let mut delay = std::time::Duration::from_millis(5);
    for _ in 0..6 {
        match sys::umount(path) {
            Err(Errno::BUSY) => std::thread::sleep(delay),
            other => return other,
        }
        delay *= 2;
    }
    sys::umount(path)
}

/// Unmount every mount of a container (dead ones are detached). A busy mount fails
/// unless `force`, which detaches it (processes using it keep their files; it goes away
/// when they are done). Returns the paths unmounted.
pub(crate) fn unmount_all(id: &str, name: &str, force: bool) -> Result<Vec<PathBuf>> {
    unmount_source(&container_source(id), &format!("container {name}"), force)
}

/// `unmount_all` for the mounts with this source; `what` names them in messages
/// ("container web").
pub(crate) fn unmount_source(source: &str, what: &str, force: bool) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for m in mounts_with_source(source)? {
        if !m.live {
            let _ = sys::umount_detach(&m.path);
            done.push(m.path);
            continue;
        }
        match umount_patiently(&m.path) {
            Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
            Err(Errno::BUSY) if force => {
                sys::umount_detach(&m.path).ctx(format!("detaching {}", m.path.display()))?
            }
            Err(Errno::BUSY) => {
                return Err(Error::in_use(format!(
                    "mountpoint {} of {what} is busy (a process has files open or its working directory there); use --force to detach it",
                    m.path.display()
                )));
            }
            Err(e) => {
                return Err(Error::from(e).context(format!("unmounting {}", m.path.display())));
            }
        }
        done.push(m.path);
    }
    Ok(done)
}

/// What `mount` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mounted {
    pub path: PathBuf,
    /// It was mounted there already.
    pub already: bool,
}

/// How to mount.
#[derive(Debug, Clone, Default)]
pub(crate) struct MountRequest {
    /// Where; the container's `merged` dir when `None`.
    pub mountpoint: Option<PathBuf>,
    /// More overlay options (`ro`, `volatile`, `threads=N`, …).
    pub options: Vec<String>,
    /// The layerfs binary to run as the daemon.
    pub program: PathBuf,
}

impl MountRequest {
    /// A request, refusing the options layerfs sets itself for a container mount.
    pub(crate) fn new(
        mountpoint: Option<PathBuf>,
        options: Vec<String>,
        program: PathBuf,
    ) -> Result<MountRequest> {
        for o in options.iter().flat_map(|o| o.split(',')) {
            let key = o.split('=').next().unwrap_or("");
            if matches!(key, "lowerdir" | "upperdir" | "workdir" | "fsname") {
                return Err(Error::invalid_input(format!(
                    "option {key} is set by layerfs for a container mount"
                )));
            }
        }
        Ok(MountRequest {
            mountpoint,
            options,
            program,
        })
    }
}

/// Mount a container (or report where it is mounted already). Takes the store lock, so
/// two commands never mount one container twice.
pub(crate) fn mount(cs: &Containers<'_>, c: &Container, req: &MountRequest) -> Result<Mounted> {
    let _lock = cs.store().lock()?;
    let source = container_source(&c.id);
    let what = format!("container {}", c.name);
    let wanted = match &req.mountpoint {
        Some(p) => Some(absolute(p)?),
        None => None,
    };
    if let Some(m) = existing_mount(&source, &what, wanted.as_deref())? {
        return Ok(m);
    }
    let lowers = cs.layer_dirs(c)?;
    let path = wanted.unwrap_or_else(|| cs.default_mountpoint(c));
    let (upper, work) = (cs.upper(c), cs.work(c));
    let data = [cs.store().objects_dir()];
    mount_new(
        &source,
        &what,
        path,
        (&lowers, &data),
        Some((&upper, &work)),
        req,
        cs.store().subids(),
    )
}

/// Where the mounts with `source` are mounted already, if they are (dead mounts are
/// detached first); asking for another mountpoint than the live one is refused. Run
/// under the store lock.
pub(crate) fn existing_mount(
    source: &str,
    what: &str,
    wanted: Option<&Path>,
) -> Result<Option<Mounted>> {
    clean_dead(source)?;
    let Some(cur) = mounts_with_source(source)?
        .into_iter()
        .find(|m| m.live)
        .map(|m| m.path)
    else {
        return Ok(None);
    };
    match wanted {
        Some(w) if w != cur => Err(Error::in_use(format!(
            "{what} is already mounted at {}",
            cur.display()
        ))),
        _ => Ok(Some(Mounted {
            path: cur,
            already: true,
        })),
    }
}

/// Mount a layer stack at `path` through the daemon, with `source` as the mount's
/// source: read-only without `upper` (upper and work dirs). A missing `path` dir is
/// created (and removed again if the mount fails). Run under the store lock, after
/// `existing_mount`. `subids`: the layers are a store's made with subordinate ids, which
/// the daemon serves from a user namespace over them.
pub(crate) fn mount_new(
    source: &str,
    what: &str,
    path: PathBuf,
    (lowers, data): (&[PathBuf], &[PathBuf]),
    upper: Option<(&Path, &Path)>,
    req: &MountRequest,
    subids: bool,
) -> Result<Mounted> {
    let mut created = false;
    match std::fs::symlink_metadata(&path) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(Error::invalid_input(format!(
                "mountpoint {} is not a directory",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(&path)
                .ctx(format!("creating the mountpoint {}", path.display()))?;
            created = true;
        }
        Err(e) => return Err(Error::io(format!("mountpoint {}", path.display()), e)),
    }
    if let Some(m) = mount_table()?.into_iter().find(|m| m.path == path) {
        if created {
            let _ = std::fs::remove_dir(&path);
        }
        return Err(Error::in_use(format!(
            "mountpoint {} is busy: {} ({}) is mounted there",
            path.display(),
            m.source,
            m.fstype
        )));
    }
    let mut opts = overlay_options(lowers, data, upper, source)?;
    if subids {
        opts.push_str(",subids");
    }
    for o in &req.options {
        opts.push(',');
        opts.push_str(o);
    }
    let res = run_daemon(&req.program, &opts, &path);
    if let Err(e) = res {
        if created {
            let _ = std::fs::remove_dir(&path);
        }
        return Err(e.context(format!("mounting {what}")));
    }
    Ok(Mounted {
        path,
        already: false,
    })
}

/// The path as an absolute, symlink-free path (the form mountinfo shows), whether it
/// exists or not (its parent must).
pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Ok(c);
    }
    let name = p
        .file_name()
        .ok_or_else(|| Error::invalid_input(format!("invalid mountpoint {}", p.display())))?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let parent = std::fs::canonicalize(parent).ctx(format!("mountpoint {}", p.display()))?;
    Ok(parent.join(name))
}

/// The daemon's `-o` for a layer stack:
/// `lowerdir=L1:…[::DATA][,upperdir=…,workdir=…],fsname=SOURCE`, with the data-only
/// layers (the store's file objects) after `::`.
pub(crate) fn overlay_options(
    lowers: &[PathBuf],
    data: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    source: &str,
) -> Result<String> {
    let mut opts = format!(
        "lowerdir={}",
        lowers
            .iter()
            .map(|l| escape_opt_path(l))
            .collect::<Result<Vec<_>>>()?
            .join(":")
    );
    for d in data {
        opts.push_str("::");
        opts.push_str(&escape_opt_path(d)?);
    }
    if let Some((upper, work)) = upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            escape_opt_path(upper)?,
            escape_opt_path(work)?
        ));
    }
    opts.push_str(&format!(",fsname={source}"));
    Ok(opts)
}

/// Run the daemon and wait until it says the mount is ready (or why not).
pub(crate) fn run_daemon(program: &Path, opts: &str, mnt: &Path) -> Result<()> {
    let out = Command::new(program)
        .arg("overlay")
        .arg("-o")
        .arg(opts)
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .ctx(format!("running {}", program.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("the mount daemon failed")
        .trim();
    Err(Error::new(
        line.strip_prefix("layerfs: ").unwrap_or(line).to_string(),
    ))
}

/// `umount`: every target is a mountpoint (a path that is a container mount) or else a
/// container name; all are resolved first, then each container's mounts are unmounted
/// (see `unmount_all`) under the store lock. A target without a mount is an error.
pub(crate) fn umount(cs: &Containers<'_>, targets: &[String], force: bool) -> Result<()> {
    let all = cs.list()?;
    let mut plan: Vec<&Container> = Vec::new();
    for t in targets {
        let by_path = if t.contains('/') || Path::new(t).exists() {
            container_at(Path::new(t))?
        } else {
            None
        };
        let c = match by_path {
            Some(id) => find(&all, &id)?,
            None => match find(&all, t) {
                Ok(c) => c,
                Err(_) if t.contains('/') => {
                    return Err(Error::not_found(format!("no container is mounted at {t}")));
                }
                Err(e) => return Err(e),
            },
        };
        plan.push(c);
    }
    let _lock = cs.store().lock()?;
    for c in plan {
        if unmount_all(&c.id, &c.name, force)?.is_empty() {
            return Err(Error::not_found(format!(
                "container {} is not mounted",
                c.name
            )));
        }
    }
    Ok(())
}

/// Find the container mounted at `path`, if any (the path may be given in any form).
pub(crate) fn container_at(path: &Path) -> Result<Option<String>> {
    mounted_at(path, SOURCE_PREFIX)
}

/// What is mounted at `path` (in any form) with a source starting with `prefix`: the
/// rest of the source.
pub(crate) fn mounted_at(path: &Path, prefix: &str) -> Result<Option<String>> {
    let Ok(p) = std::fs::canonicalize(path).or_else(|_| absolute(path)) else {
        return Ok(None);
    };
    Ok(mount_table()?.into_iter().find_map(|m| {
        (m.path == p)
            .then(|| m.source.strip_prefix(prefix).map(str::to_string))
            .flatten()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    90 22 0:50 / /tmp/a\\040b rw,nosuid - fuse.layerfs layerfs:abc rw,user_id=0\n\
                    91 22 0:51 / /x rw - overlay overlay rw,lowerdir=/l\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].path, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].source, "layerfs:abc");
        assert_eq!(m[1].fstype, "fuse.layerfs");
        assert_eq!(m[2].source, "overlay");
    }
}
