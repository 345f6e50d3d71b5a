//! User namespaces over an ordinary user's subordinate ids (`/etc/subuid`, `/etc/subgid`):
//! the user's own id is 0 inside, its subordinate ranges one after another from 1 (lowest
//! start first), as `podman unshare` maps them. The maps are written by the setuid
//! `newuidmap`/`newgidmap` (package `uidmap`).
//!
//! A process enters in two halves: the child unshares (it must be single-threaded) and
//! says so on a pipe; the parent, still outside, writes the child's maps and lets it go on.

use std::sync::atomic::AtomicU8;

use super::*;

/// Ids `inside..inside+count` in the namespace are `outside..` outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The uid and gid maps of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// The most lines the kernel takes in a `uid_map` or `gid_map`.
const MAX_MAP_LINES: usize = 340;

/// The most bytes the kernel takes in one write of a map (`newuidmap` writes the whole
/// map at once): less than a page.
const MAX_MAP_BYTES: usize = 4095;

impl IdMaps {
    /// The user's own ids as 0 and its subordinate ranges (start, count) one after
    /// another from 1, lowest start first (containers-storage's order, so that podman's
    /// namespace and ours agree), uids and gids each on their own. Ranges that do not
    /// fit a map the kernel takes (340 lines, under 4096 bytes, ids below 2^32 - 1) are
    /// left out.
    pub fn for_user(ids: (u32, u32), subuids: &[(u32, u32)], subgids: &[(u32, u32)]) -> IdMaps {
        IdMaps {
            uids: user_map(ids.0, subuids),
            gids: user_map(ids.1, subgids),
        }
    }

    /// `uid INSIDE OUTSIDE COUNT` and `gid …` lines.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (kind, map) in [("uid", &self.uids), ("gid", &self.gids)] {
            for r in map {
                s.push_str(&format!("{kind} {} {} {}\n", r.inside, r.outside, r.count));
            }
        }
        s
    }

    /// What `to_text` wrote.
    pub fn parse(text: &str) -> Option<IdMaps> {
        let mut m = IdMaps {
            uids: Vec::new(),
            gids: Vec::new(),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut it = line.split_whitespace();
            let kind = it.next()?;
            let r = parse_range(&mut it)?;
            match kind {
                "uid" => m.uids.push(r),
                "gid" => m.gids.push(r),
                _ => return None,
            }
        }
        (!m.uids.is_empty() && !m.gids.is_empty()).then_some(m)
    }

    /// The maps of the namespace this process is in; `None` in the initial one.
    pub fn of_this_process() -> Option<IdMaps> {
        let read = |f: &str| -> Option<Vec<IdRange>> {
            let s = std::fs::read_to_string(f).ok()?;
            s.lines()
                .map(|l| parse_range(&mut l.split_whitespace()))
                .collect()
        };
        let m = IdMaps {
            uids: read("/proc/self/uid_map")?,
            gids: read("/proc/self/gid_map")?,
        };
        (!is_initial(&m.uids)).then_some(m)
    }

    /// The id inside for an id outside, if mapped.
    pub fn uid_inside(&self, outside: u32) -> Option<u32> {
        inside(&self.uids, outside)
    }

    pub fn gid_inside(&self, outside: u32) -> Option<u32> {
        inside(&self.gids, outside)
    }

    /// The ids outside that 0 inside stands for (the user's own).
    pub fn root_outside(&self) -> Option<(u32, u32)> {
        let out = |m: &[IdRange]| m.iter().find(|r| r.inside == 0).map(|r| r.outside);
        Some((out(&self.uids)?, out(&self.gids)?))
    }

    /// `newuidmap`/`newgidmap` arguments after the pid.
    fn args(map: &[IdRange]) -> Vec<String> {
        map.iter()
            .flat_map(|r| [r.inside, r.outside, r.count])
            .map(|n| n.to_string())
            .collect()
    }
}

/// `own` as 0, then `ranges` by start, as far as the kernel's limits allow.
fn user_map(own: u32, ranges: &[(u32, u32)]) -> Vec<IdRange> {
    let line_len = |r: &IdRange| format!("{} {} {}\n", r.inside, r.outside, r.count).len();
    let mut map = vec![IdRange {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut bytes = line_len(&map[0]);
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|&(start, _)| start);
    for (start, count) in sorted {
        let next = map.last().map_or(0, |r| r.inside + r.count);
        // An extent must end below 2^32 - 1 inside too.
        let count = count.min(u32::MAX - next);
        let r = IdRange {
            inside: next,
            outside: start,
            count,
        };
        if count == 0 || map.len() == MAX_MAP_LINES || bytes + line_len(&r) > MAX_MAP_BYTES {
            break;
        }
        bytes += line_len(&r);
        map.push(r);
    }
    map
}

fn parse_range<'a>(it: &mut impl Iterator<Item = &'a str>) -> Option<IdRange> {
    let mut n = || it.next()?.parse::<u32>().ok();
    Some(IdRange {
        inside: n()?,
        outside: n()?,
        count: n()?,
    })
}

fn is_initial(map: &[IdRange]) -> bool {
    map == [IdRange {
        inside: 0,
        outside: 0,
        count: u32::MAX,
    }]
}

fn inside(map: &[IdRange], outside: u32) -> Option<u32> {
    map.iter().find_map(|r| {
        let off = outside.checked_sub(r.outside)?;
        (off < r.count).then(|| r.inside + off)
    })
}

/// 0: not known yet, 1: initial namespace, 2: another.
static INITIAL_NS: AtomicU8 = AtomicU8::new(0);

/// Whether this process is in the initial user namespace (`/proc/self/uid_map` is the
/// identity over all ids).
pub fn in_initial_userns() -> bool {
    match INITIAL_NS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let initial = IdMaps::of_this_process().is_none();
            INITIAL_NS.store(if initial { 1 } else { 2 }, Ordering::Relaxed);
            initial
        }
    }
}

/// The user the kernel sees this process as (the ids of FUSE requests it makes): its own
/// ids in the initial namespace; in another, the ids outside that 0 inside stands for.
pub fn owner_ids() -> (u32, u32) {
    static OUTSIDE: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    if in_initial_userns() {
        return (geteuid(), getegid());
    }
    OUTSIDE
        .get_or_init(|| IdMaps::of_this_process().and_then(|m| m.root_outside()))
        .unwrap_or((geteuid(), getegid()))
}

/// The subordinate ranges (start, count) of `uid` in `file` (`/etc/subuid` or
/// `/etc/subgid`), in file order: its lines by user name or by number, as `newuidmap`
/// reads them. Lines that are not exactly `WHO:START:COUNT` (no spaces), empty ranges and
/// ranges that run past the last id are skipped: `newuidmap` or the kernel would refuse
/// a map with them.
pub fn subordinate_ranges(file: &Path, uid: u32) -> Vec<(u32, u32)> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let name = user_name(uid);
    let number = uid.to_string();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(':');
            let who = it.next()?;
            let start = it.next()?.parse::<u32>().ok()?;
            let count = it.next()?.parse::<u32>().ok()?;
            let me = who == number || name.as_deref() == Some(who);
            let fits = start.checked_add(count).is_some();
            (it.next().is_none() && me && count > 0 && fits).then_some((start, count))
        })
        .collect()
}

/// The name of a user in `/etc/passwd`.
fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split(':');
        let name = it.next()?;
        let id = it.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// A program in `PATH`, or in `/usr/bin` and `/bin`.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Write a child's maps with `newuidmap` and `newgidmap`; the error is one line naming
/// the program and what it said.
pub fn write_id_maps(pid: u32, maps: &IdMaps) -> Result<(), String> {
    for (prog, map) in [("newuidmap", &maps.uids), ("newgidmap", &maps.gids)] {
        let Some(path) = find_program(prog) else {
            return Err(format!(
                "{prog} is not installed (Debian: apt-get install uidmap); \
                 or set LAYERFS_USERNS=off for a store without subordinate ids"
            ));
        };
        let out = std::process::Command::new(&path)
            .arg(pid.to_string())
            .args(IdMaps::args(map))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", path.display()))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            let msg = msg
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed");
            return Err(format!("{prog} {pid}: {}", msg.trim()));
        }
    }
    Ok(())
}

/// Mount a FUSE filesystem at `mountpoint` through `fusermount3 -o OPTIONS` and return
/// the connection's `/dev/fuse` descriptor, which `fusermount3` hands over a socket
/// (`_FUSE_COMMFD`). This must run outside any user namespace: `fusermount3` is set-uid
/// root, and a namespace that does not map root ignores that.
pub fn fusermount_mount(mountpoint: &Path, options: &str) -> Result<OwnedFd, String> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::os::unix::net::UnixStream;
    let prog = find_program("fusermount3").ok_or_else(|| {
        "fusermount3 is not installed (Debian: apt-get install fuse3): an unprivileged mount goes through it"
            .to_string()
    })?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())
        .map_err(|e| format!("fcntl: {e}"))?;
    let child = std::process::Command::new(&prog)
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    drop(theirs);
    let child = child.map_err(|e| format!("running {}: {e}", prog.display()))?;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let got = rustix::net::recvmsg(
        &ours,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    );
    let mut fd = None;
    if got.is_ok() {
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
                fd = fd.or(fds.next());
            }
        }
    }
    drop(ours);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for fusermount3: {e}"))?;
    fd.ok_or_else(|| {
        let msg = String::from_utf8_lossy(&out.stderr);
        msg.lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("fusermount3 failed")
            .trim()
            .to_string()
    })
}

/// The environment variable that hands a re-executed child its two pipe ends.
const SYNC_ENV: &str = "_LAYERFS_USERNS_SYNC";

/// In a child, before anything else: `unshare(CLONE_NEWUSER)`, tell the parent on `tell`,
/// and wait on `wait` until the parent has written the maps. The process must be
/// single-threaded. Returns false when the parent gave up (it says why).
pub fn unshare_user_and_wait(tell: BorrowedFd<'_>, wait: BorrowedFd<'_>) -> SysResult<bool> {
    // SAFETY: CLONE_NEWUSER only (no CLONE_FILES), and callers are single-threaded:
    // fresh from exec or fork, before any thread starts.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER)? };
    INITIAL_NS.store(2, Ordering::Relaxed);
    write_all_fd(tell, b"u")?;
    let mut go = [0u8; 1];
    Ok(matches!(rustix::io::read(wait, &mut go), Ok(1)) && go == *b"g")
}

/// In the parent: wait for the child to unshare, write its maps, let it go on. `false`
/// when the child did not unshare (it says why itself).
pub fn map_child(pid: u32, maps: &IdMaps, told: OwnedFd, go: OwnedFd) -> Result<bool, String> {
    let mut said = [0u8; 1];
    match rustix::io::read(told.as_fd(), &mut said) {
        Ok(1) if said == *b"u" => {}
        _ => return Ok(false),
    }
    write_id_maps(pid, maps)?;
    write_all_fd(go.as_fd(), b"g").map_err(|e| format!("write: {e}"))?;
    Ok(true)
}

/// Run this program again (same arguments) in a new user namespace with `maps`, with
/// `env` added; returns its exit code (128 + signal when killed).
pub fn rerun_in_userns(maps: &IdMaps, env: &[(&str, &OsStr)]) -> Result<i32, String> {
    use std::os::unix::process::ExitStatusExt;
    // The child's ends stay open across exec; ours close on exec.
    let (told_rd, told_wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let (go_rd, go_wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    for fd in [&told_wr, &go_rd] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
            .map_err(|e| format!("fcntl: {e}"))?;
    }
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(std::env::args_os().skip(1)).env(
        SYNC_ENV,
        format!("{},{}", told_wr.as_raw_fd(), go_rd.as_raw_fd()),
    );
    if let Some(arg0) = std::env::args_os().next() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn();
    drop(told_wr);
    drop(go_rd);
    let mut child = child.map_err(|e| format!("running /proc/self/exe: {e}"))?;
    let mapped = map_child(child.id(), maps, told_rd, go_wr);
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    mapped?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// In a child started by [`rerun_in_userns`]: enter the namespace (first thing in
/// `main`, while single-threaded). `None` when this process was not started that way;
/// `Some(false)` when the parent gave up.
pub fn enter_userns_if_rerun() -> Option<SysResult<bool>> {
    let v = std::env::var(SYNC_ENV).ok()?;
    // SAFETY: called first thing in `main`, before any thread exists, so nothing reads
    // the environment concurrently.
    unsafe { std::env::remove_var(SYNC_ENV) };
    let (a, b) = v.split_once(',')?;
    let (tell, wait) = (a.parse::<i32>().ok()?, b.parse::<i32>().ok()?);
    // SAFETY: the two descriptors were opened by the parent for us and are owned by
    // nothing else in this process (we just took their numbers from the environment).
    let (tell, wait) = unsafe { (OwnedFd::from_raw_fd(tell), OwnedFd::from_raw_fd(wait)) };
    Some(unshare_user_and_wait(tell.as_fd(), wait.as_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_translate() {
        let m = IdMaps::for_user((1000, 1001), &[(200000, 65536)], &[(300000, 10)]);
        assert_eq!(
            m.to_text(),
            "uid 0 1000 1\nuid 1 200000 65536\ngid 0 1001 1\ngid 1 300000 10\n"
        );
        assert_eq!(IdMaps::parse(&m.to_text()), Some(m.clone()));
        assert_eq!(m.uid_inside(1000), Some(0));
        assert_eq!(m.uid_inside(200000 + 999), Some(1000));
        assert_eq!(m.uid_inside(200000 + 65536), None);
        assert_eq!(m.gid_inside(300009), Some(10));
        assert_eq!(m.gid_inside(300010), None);
        assert_eq!(m.root_outside(), Some((1000, 1001)));
        assert_eq!(
            IdMaps::args(&m.uids),
            ["0", "1000", "1", "1", "200000", "65536"]
        );
        assert_eq!(IdMaps::parse("uid 0 1 1\n"), None);
        assert_eq!(IdMaps::parse("uid 0 1\ngid 0 1 1\n"), None);
    }

    #[test]
    fn subordinate_ranges_by_name_or_number() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("subuid");
        std::fs::write(
            &f,
            "alice:100000:65536\n4242:5:0\n4242:300000:10\nroot:1:2\n",
        )
        .unwrap();
        assert_eq!(subordinate_ranges(&f, 4242), [(300000, 10)]);
        assert_eq!(subordinate_ranges(&f, 0), [(1, 2)]);
        assert_eq!(subordinate_ranges(&f, 4243), []);
        assert_eq!(subordinate_ranges(&t.path().join("none"), 0), []);
    }

    #[test]
    fn every_line_of_the_user_in_file_order() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("subuid");
        // root (uid 0) by name and by number; other users' lines, malformed lines,
        // empty ranges and ranges past the last id in between.
        std::fs::write(
            &f,
            "root:300000:64536\n\
             alice:100000:65536\n\
             0:200000:1000\n\
             # root:1:1\n\
             root:x:10\n\
             root:5\n\
             root:5:6:7\n\
             root:7:0\n\
             root:4294967295:1\n\
             00:9:9\n\
             rootx:9:9\n\
             \n\
             \x20root:9:9\n\
             root:9 :9\n\
             root:400000:5\n\
             1:500000:10\n",
        )
        .unwrap();
        assert_eq!(
            subordinate_ranges(&f, 0),
            [(300000, 64536), (200000, 1000), (400000, 5)]
        );
        assert_eq!(subordinate_ranges(&f, 1), [(500000, 10)]);
    }

    #[test]
    fn several_ranges_follow_each_other_inside() {
        let m = IdMaps::for_user(
            (1000, 1000),
            &[(300000, 64536), (200000, 1000)],
            &[(500000, 10)],
        );
        assert_eq!(
            m.to_text(),
            "uid 0 1000 1\nuid 1 200000 1000\nuid 1001 300000 64536\n\
             gid 0 1000 1\ngid 1 500000 10\n"
        );
        assert_eq!(IdMaps::parse(&m.to_text()), Some(m.clone()));
        assert_eq!(m.uid_inside(200999), Some(1000));
        assert_eq!(m.uid_inside(300000), Some(1001));
        assert_eq!(m.uid_inside(364535), Some(65536));
        assert_eq!(m.uid_inside(364536), None);
        assert_eq!(
            IdMaps::args(&m.uids),
            [
                "0", "1000", "1", "1", "200000", "1000", "1001", "300000", "64536"
            ]
        );
        // One range is the one-range map a store recorded before.
        assert_eq!(
            IdMaps::for_user((1000, 1000), &[(200000, 65536)], &[(200000, 65536)]).to_text(),
            "uid 0 1000 1\nuid 1 200000 65536\ngid 0 1000 1\ngid 1 200000 65536\n"
        );
    }

    #[test]
    fn maps_stay_within_what_the_kernel_takes() {
        // Many short lines: 340 in all, the user's own one included.
        let many: Vec<(u32, u32)> = (0..1000).map(|i| (10 + 2 * i, 1)).collect();
        let m = IdMaps::for_user((1, 1), &many, &many[..3]);
        assert_eq!(m.uids.len(), 340);
        assert_eq!(m.gids.len(), 4);
        assert_eq!(
            m.uids[339],
            IdRange {
                inside: 339,
                outside: 10 + 2 * 338,
                count: 1
            }
        );
        // Long lines: the text stays below a page.
        let long: Vec<(u32, u32)> = (0..300)
            .map(|i| (3_000_000_000 + i * 1_000_000, 1_000_000))
            .collect();
        let m = IdMaps::for_user((1, 1), &long, &long);
        let text = |map: &[IdRange]| {
            map.iter()
                .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
                .collect::<String>()
        };
        assert!(
            text(&m.uids).len() <= MAX_MAP_BYTES,
            "{}",
            text(&m.uids).len()
        );
        assert!(m.uids.len() < 300);
        // Ids inside end below 2^32 - 1: a range is cut short there, later ones dropped.
        let all = [(u32::MAX - 1, 1), (10, u32::MAX - 10), (0, 10)];
        let m = IdMaps::for_user((1, 1), &all, &all);
        assert_eq!(m.uids.len(), 3);
        assert_eq!(
            m.uids[1],
            IdRange {
                inside: 1,
                outside: 0,
                count: 10
            }
        );
        let last = m.uids[2];
        assert_eq!((last.inside, last.outside), (11, 10));
        assert_eq!(last.inside + last.count, u32::MAX);
    }
}
