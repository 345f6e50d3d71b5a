//! The fuse-overlayfs command line: `[-f] [-d] -o OPTS[,...] [-o OPTS] MOUNTPOINT`.
//!
//! Parsing only: no I/O, so every case is unit-tested.

use std::path::PathBuf;

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OverlayArgs {
    /// Lower layers, top first (leftmost in `lowerdir=`).
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers (after `::` in `lowerdir=`): where metacopy stubs in the
    /// lower layers find their data.
    pub data: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub debug: bool,
    /// `volatile` or `fsync=0`: skip fsync (throwaway containers).
    pub volatile: bool,
    pub read_only: bool,
    /// Explicit `passthrough=off|upper|all` (`on` = `upper`); `None` means automatic.
    pub passthrough: Option<PassthroughMode>,
    pub threads: Option<usize>,
    /// `uring[=on|off]`: FUSE's io_uring transport; `None`: automatic (`MountRequest::uring`).
    pub uring: Option<bool>,
    /// Entry/attribute timeout in seconds for objects that may change.
    pub timeout: Option<f64>,
    pub writeback: bool,
    /// `direct_writes=off`: write-only opens go through the FUSE page cache too.
    pub cached_writes: bool,
    /// READDIRPLUS: listings carry attributes (on unless `readdirplus=off`).
    pub readdirplus: bool,
    /// Read listed directories' subdirectories ahead (on unless `prefetch=off`).
    pub prefetch: bool,
    pub noexec: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub fsname: Option<String>,
    pub uid_map: Vec<IdMapping>,
    pub gid_map: Vec<IdMapping>,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    /// `xattr_permissions=1|2`: record upper-layer owners and modes in this xattr.
    pub upper_override: Option<&'static str>,
    /// `subids`: serve from a user namespace over the caller's subordinate ids (layers of
    /// a store made with them).
    pub subids: bool,
    /// Options accepted for compatibility that change nothing for us.
    pub ignored: Vec<String>,
    pub show_version: bool,
    pub show_help: bool,
}

use crate::overlay::fuse::{MountRequest, PassthroughMode};
use crate::overlay::idmap::IdMap;
pub use crate::overlay::idmap::IdRange as IdMapping;

impl OverlayArgs {
    /// What to mount, as the layer below the command line takes it.
    pub fn request(&self) -> MountRequest {
        MountRequest {
            lowers: self.lowers.clone(),
            data: self.data.clone(),
            upper: self.upper.clone(),
            work: self.work.clone(),
            mountpoint: self.mountpoint.clone(),
            fsync: !self.volatile,
            idmap: IdMap {
                uids: self.uid_map.clone(),
                gids: self.gid_map.clone(),
                squash_uid: self.squash_uid,
                squash_gid: self.squash_gid,
            },
            timeout: self.timeout.map(std::time::Duration::from_secs_f64),
            passthrough: self.passthrough,
            writeback: self.writeback,
            cached_writes: self.cached_writes,
            readdirplus: self.readdirplus,
            prefetch: self.prefetch,
            threads: self.threads,
            uring: self.uring,
            fsname: self.fsname.clone(),
            noexec: self.noexec,
            nodev: self.nodev,
            nosuid: self.nosuid,
            upper_override: self.upper_override,
            subids: self.subids,
        }
    }
}

/// Options fuse-overlayfs accepts that do not change what we do (or that we always do).
const ACCEPTED_NOOPS: &[&str] = &[
    "rw",
    "dev",
    "suid",
    "exec",
    "async",
    "atime",
    "noatime",
    "relatime",
    "allow_other",
    "allow_root",
    "default_permissions",
    "auto_unmount",
    "noacl",
    "acl",
    "static_nlink",
    "redirect_dir",
    "index",
    "metacopy",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "noxattrs",
    "fast_ino",
    "plugins",
    "subtype",
    "max_write",
    "userxattr",
    "xino",
    "nfs_export",
    "uuid",
    "squash_to_root_is_root",
];

/// Split a `lowerdir=` value as the kernel does: `L1:L2::D1::D2` gives the lower
/// layers `L1`, `L2` and the data-only layers `D1`, `D2`.
pub fn split_lowerdir(v: &str) -> Result<(Vec<PathBuf>, Vec<PathBuf>), String> {
    // Find unescaped "::" boundaries.
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push('\\');
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' if chars.peek() == Some(&':') => {
                chars.next();
                parts.push(std::mem::take(&mut cur));
            }
            c => cur.push(c),
        }
    }
    parts.push(cur);
    let lowers = split_layers(&parts[0])?;
    let mut data = Vec::new();
    for d in &parts[1..] {
        let l = split_layers(d)?;
        if l.len() != 1 {
            return Err(format!(
                "lowerdir: data-only layers are separated by \"::\" in {v:?}"
            ));
        }
        data.extend(l);
    }
    Ok((lowers, data))
}

/// Split a `lowerdir=` value on unescaped `:`; `\:` `\,` `\\` are escapes.
pub fn split_layers(v: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            },
            ':' => {
                if cur.is_empty() {
                    return Err(format!("lowerdir has an empty layer in {v:?}"));
                }
                out.push(PathBuf::from(std::mem::take(&mut cur)));
            }
            c => cur.push(c),
        }
    }
    if cur.is_empty() {
        return Err(format!("lowerdir has an empty layer in {v:?}"));
    }
    out.push(PathBuf::from(cur));
    Ok(out)
}

/// Split an `-o` string on unescaped commas.
fn split_opts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push('\\');
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parse `uidmapping=` values: `HOST:TO:LEN[:HOST:TO:LEN...]` (on-disk ids `HOST..`
/// are shown as `TO..`), with podman's optional leading `:`.
pub fn parse_mapping(v: &str) -> Result<Vec<IdMapping>, String> {
    let v = v.strip_prefix(':').unwrap_or(v);
    let nums: Result<Vec<u32>, _> = v.split(':').map(|x| x.trim().parse::<u32>()).collect();
    let nums = nums.map_err(|_| format!("bad id mapping {v:?} (want IN:OUT:LEN[:...])"))?;
    if nums.is_empty() || nums.len() % 3 != 0 {
        return Err(format!("bad id mapping {v:?} (want IN:OUT:LEN[:...])"));
    }
    let maps: Vec<IdMapping> = nums
        .chunks(3)
        .map(|c| IdMapping {
            host: c[0],
            to: c[1],
            len: c[2],
        })
        .collect();
    if maps.iter().any(|m| m.len == 0) {
        return Err(format!("bad id mapping {v:?}: a range has length 0"));
    }
    Ok(maps)
}

fn bool_value(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "on" | "yes" | "true" => Ok(true),
        "0" | "off" | "no" | "false" => Ok(false),
        _ => Err(format!("option {key}: expected on/off, got {v:?}")),
    }
}

/// Apply one `key[=value]` option.
fn apply_opt(a: &mut OverlayArgs, opt: &str) -> Result<(), String> {
    if opt.is_empty() {
        return Ok(()); // podman passes ",,"
    }
    let (key, val) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    let need = |v: Option<&str>| -> Result<String, String> {
        match v {
            Some(x) if !x.is_empty() => Ok(x.to_string()),
            _ => Err(format!("option {key} needs a value")),
        }
    };
    match key {
        "lowerdir" => {
            let v = val.unwrap_or("");
            if v.is_empty() {
                return Err("lowerdir is empty".into());
            }
            (a.lowers, a.data) = split_lowerdir(v)?;
        }
        "upperdir" => a.upper = Some(PathBuf::from(unescape(&need(val)?))),
        "workdir" => a.work = Some(PathBuf::from(unescape(&need(val)?))),
        "volatile" => a.volatile = true,
        "subids" => a.subids = true,
        "fsync" => a.volatile = !bool_value(key, &need(val)?)?,
        "ro" => a.read_only = true,
        "passthrough" => {
            use PassthroughMode as P;
            a.passthrough = Some(match need(val)?.as_str() {
                "upper" => P::Upper,
                "all" => P::All,
                v => {
                    if bool_value(key, v)? {
                        P::Upper
                    } else {
                        P::Off
                    }
                }
            })
        }
        "writeback" => a.writeback = bool_value(key, &need(val)?)?,
        "direct_writes" => a.cached_writes = !bool_value(key, &need(val)?)?,
        "readdirplus" => a.readdirplus = bool_value(key, &need(val)?)?,
        "prefetch" => a.prefetch = bool_value(key, &need(val)?)?,
        "uring" => {
            a.uring = Some(match val {
                None => true,
                Some(v) => bool_value(key, v)?,
            })
        }
        "threads" | "threaded" => {
            let v = need(val)?;
            let n: usize = v
                .parse()
                .map_err(|_| format!("option {key}: not a number: {v:?}"))?;
            a.threads = Some(n.clamp(1, 256));
        }
        "timeout" => {
            let v = need(val)?;
            let t: f64 = v
                .parse()
                .map_err(|_| format!("option timeout: not a number: {v:?}"))?;
            if !(0.0..=1e9).contains(&t) {
                return Err(format!("option timeout out of range: {v}"));
            }
            a.timeout = Some(t);
        }
        "noexec" => a.noexec = true,
        "nodev" => a.nodev = true,
        "nosuid" => a.nosuid = true,
        "fsname" => a.fsname = Some(need(val)?),
        "debug" => a.debug = true,
        "uidmapping" => a.uid_map = parse_mapping(&need(val)?)?,
        "gidmapping" => a.gid_map = parse_mapping(&need(val)?)?,
        "squash_to_root" => {
            a.squash_uid = Some(0);
            a.squash_gid = Some(0);
        }
        "squash_to_uid" => {
            let v = need(val)?;
            a.squash_uid = Some(
                v.parse()
                    .map_err(|_| format!("squash_to_uid: bad id {v:?}"))?,
            );
        }
        "squash_to_gid" => {
            let v = need(val)?;
            a.squash_gid = Some(
                v.parse()
                    .map_err(|_| format!("squash_to_gid: bad id {v:?}"))?,
            );
        }
        "xattr_permissions" => {
            a.upper_override = match need(val)?.as_str() {
                "0" => None,
                "1" => Some(crate::override_stat::PRIVILEGED),
                "2" => Some(crate::override_stat::USER),
                v => return Err(format!("option xattr_permissions: 0, 1 or 2, not {v:?}")),
            }
        }
        k if ACCEPTED_NOOPS.contains(&k) => a.ignored.push(opt.to_string()),
        _ => return Err(format!("unknown option {opt:?}")),
    }
    Ok(())
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(n) = chars.next()
        {
            out.push(n);
            continue;
        }
        out.push(c);
    }
    out
}

/// Parse the arguments after the program name.
pub fn parse(args: &[String]) -> Result<OverlayArgs, String> {
    let mut a = OverlayArgs {
        readdirplus: true,
        prefetch: true,
        ..OverlayArgs::default()
    };
    let mut mountpoint: Option<PathBuf> = None;
    let mut i = 0;
    let mut saw_o = false;
    while i < args.len() {
        let arg = &args[i];
        match arg.as_str() {
            "-f" | "--foreground" => a.foreground = true,
            "-d" | "--debug" => {
                a.debug = true;
                a.foreground = true;
            }
            "-h" | "--help" => a.show_help = true,
            "-V" | "--version" => a.show_version = true,
            "-o" => {
                i += 1;
                let v = args.get(i).ok_or("-o needs an argument")?;
                for o in split_opts(v) {
                    apply_opt(&mut a, &o)?;
                }
                saw_o = true;
            }
            s if s.starts_with("-o") => {
                for o in split_opts(&s[2..]) {
                    apply_opt(&mut a, &o)?;
                }
                saw_o = true;
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown argument {s:?}"));
            }
            s => {
                if mountpoint.is_some() {
                    return Err(format!(
                        "unexpected argument {s:?} (mountpoint given twice?)"
                    ));
                }
                mountpoint = Some(PathBuf::from(s));
            }
        }
        i += 1;
    }
    if a.show_help || a.show_version {
        return Ok(a);
    }
    if !saw_o || a.lowers.is_empty() {
        return Err("missing lowerdir= (usage: -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W] MOUNTPOINT)".into());
    }
    if a.upper.is_some() != a.work.is_some() {
        return Err("upperdir and workdir must be given together".into());
    }
    if a.read_only {
        a.upper = None;
        a.work = None;
    }
    a.mountpoint = mountpoint.ok_or("missing mountpoint")?;
    Ok(a)
}

pub const USAGE: &str = "usage: layerfs overlay [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=DIR,workdir=DIR][,OPTIONS] MOUNTPOINT

Options (fuse-overlayfs compatible):
  lowerdir=A:B:C     read-only layers, leftmost on top (escape ':' as '\\:')
  upperdir=DIR       writable layer (with workdir=); without it the mount is read-only
  workdir=DIR        scratch dir on the same filesystem as upperdir
  volatile, fsync=0  never fsync (throwaway containers)
  ro                 mount read-only even if upperdir is given
  threads=N          request threads (default: number of CPUs)
  passthrough=MODE   FUSE passthrough (root only): all (default; lower files too, so
                     mounts of a layer share its page cache), upper (=on), off
  writeback=on|off   kernel writeback cache (when passthrough is off)
  direct_writes=on|off  files opened write-only that do not pass through are
                     written without the FUSE page cache (default on; off with
                     writeback=on)
  readdirplus=on|off listings carry attributes (default on: a first walk needs
                     far fewer lookups; the kernel caches listings either way)
  prefetch=on|off    after a listing, read its subdirectories in the background, so a
                     walk on a cold disk overlaps reads with round trips (default on)
  uring=on|off       FUSE's io_uring transport (default on where the kernel has it):
                     each request is answered on the caller's CPU (first lookups,
                     opens and unlinks cost 2-3x less). Root switches the fuse
                     module's enable_uring on for the mount's start; an ordinary
                     user's mount takes it where root left it on. off: /dev/fuse
  timeout=SECONDS    attribute/entry cache time for writable objects
  uidmapping=HOST:TO:LEN[:...], gidmapping=...  on-disk ids HOST.. are shown as TO..
  squash_to_root, squash_to_uid=N, squash_to_gid=N  report every file as owned by N
  xattr_permissions=0|1|2  keep upper-layer owners and modes in an xattr (1: security.,
                     2: user.fuseoverlayfs.override_stat); lower layers that carry one
                     (rootless stores) are read the same way without the option
  subids             (an ordinary user) serve from a user namespace over the user's
                     subordinate ids in /etc/subuid and /etc/subgid: layers of a store
                     made with them
  noexec, nodev, nosuid, fsname=NAME
  accepted and ignored: rw dev suid exec atime noatime relatime allow_other allow_root
    default_permissions auto_unmount noacl acl static_nlink redirect_dir index metacopy
    context fscontext defcontext rootcontext noxattrs fast_ino plugins subtype max_write
    userxattr xino nfs_export uuid
  -f  stay in the foreground      -d  debug log, implies -f";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<OverlayArgs, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn basic() {
        let a = p(&["-o", "lowerdir=/a:/b,upperdir=/u,workdir=/w", "/m"]).unwrap();
        assert_eq!(a.lowers, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(a.upper, Some(PathBuf::from("/u")));
        assert_eq!(a.work, Some(PathBuf::from("/w")));
        assert_eq!(a.mountpoint, PathBuf::from("/m"));
        assert!(!a.foreground);
    }

    #[test]
    fn podman_style() {
        // Several -o, an empty option and volatile, mountpoint last.
        let a = p(&[
            "-o",
            "lowerdir=l/A:l/B,upperdir=C/diff,workdir=C/work,,volatile",
            "-o",
            "uidmapping=:0:100000:65536,gidmapping=:0:100000:65536",
            "C/merged",
        ])
        .unwrap();
        assert!(a.volatile);
        assert_eq!(
            a.uid_map,
            vec![IdMapping {
                host: 0,
                to: 100000,
                len: 65536
            }]
        );
        assert_eq!(a.mountpoint, PathBuf::from("C/merged"));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            split_layers(r"/a\:b:/c").unwrap(),
            vec![PathBuf::from("/a:b"), PathBuf::from("/c")]
        );
        let a = p(&["-o", "lowerdir=/a:/b::/d1::/d\\:2", "/m"]).unwrap();
        assert_eq!(a.lowers, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(a.data, vec![PathBuf::from("/d1"), PathBuf::from("/d:2")]);
        let a = p(&["-o", r"lowerdir=/x\,y", "/m"]).unwrap();
        assert_eq!(a.lowers, vec![PathBuf::from("/x,y")]);
    }

    #[test]
    fn errors() {
        assert!(p(&["/m"]).unwrap_err().contains("lowerdir"));
        assert!(p(&["-o", "lowerdir=", "/m"]).unwrap_err().contains("empty"));
        assert!(
            p(&["-o", "lowerdir=/a:::/b", "/m"])
                .unwrap_err()
                .contains("empty layer")
        );
        assert!(
            p(&["-o", "lowerdir=::/b", "/m"])
                .unwrap_err()
                .contains("empty layer")
        );
        assert!(
            p(&["-o", "lowerdir=/a:", "/m"])
                .unwrap_err()
                .contains("empty layer")
        );
        assert!(
            p(&["-o", "lowerdir=/a,bogus", "/m"])
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(
            p(&["-o", "lowerdir=/a,upperdir=/u", "/m"])
                .unwrap_err()
                .contains("together")
        );
        assert!(
            p(&["-o", "lowerdir=/a"])
                .unwrap_err()
                .contains("mountpoint")
        );
        assert!(
            p(&["-x", "-o", "lowerdir=/a", "/m"])
                .unwrap_err()
                .contains("unknown argument")
        );
        assert!(
            p(&["-o", "lowerdir=/a", "/m", "/n"])
                .unwrap_err()
                .contains("twice")
        );
        assert!(p(&["-o", "lowerdir=/a,uidmapping=1:2", "/m"]).is_err());
        assert!(p(&["-o", "lowerdir=/a,threads=x", "/m"]).is_err());
    }

    #[test]
    fn flags() {
        let a = p(&[
            "-d",
            "-olowerdir=/a,fsync=0,ro,upperdir=/u,workdir=/w",
            "/m",
        ])
        .unwrap();
        assert!(a.debug && a.foreground && a.volatile && a.read_only);
        assert_eq!(a.upper, None, "ro drops the upper layer");
        let a = p(&[
            "-o",
            "lowerdir=/a,squash_to_uid=1000,squash_to_gid=100,xattr_permissions=2",
            "/m",
        ])
        .unwrap();
        assert_eq!((a.squash_uid, a.squash_gid), (Some(1000), Some(100)));
        assert_eq!(a.upper_override, Some("user.fuseoverlayfs.override_stat"));
        assert!(a.ignored.is_empty());
        assert!(p(&["-o", "lowerdir=/a,xattr_permissions=3", "/m"]).is_err());
        assert!(p(&["--version"]).unwrap().show_version);
    }

    #[test]
    fn listing_options_default_on() {
        let a = p(&["-o", "lowerdir=/a", "/m"]).unwrap();
        assert!(a.readdirplus && a.prefetch);
        let r = a.request();
        assert!(r.readdirplus && r.prefetch);
        let a = p(&["-o", "lowerdir=/a,readdirplus=off,prefetch=off", "/m"]).unwrap();
        assert!(!a.readdirplus && !a.prefetch);
        assert!(!a.request().prefetch);
        assert!(p(&["-o", "lowerdir=/a,prefetch=maybe", "/m"]).is_err());
    }
}
