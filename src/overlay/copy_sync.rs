//! Copy-ups whose data reaches the disk in the background, with a record that makes a
//! crash leave either the lower file or the whole copy.
//!
//! The kernel's overlayfs makes a copy durable (`fsync`) before renaming it into the
//! upper layer: a rename on disk before the data would leave an empty or partial file
//! hiding the lower one after a power cut. That wait is the disk's write time, on the
//! first write to every big lower file. Here the copy of a regular file with one name
//! and at least `DEFER_MIN` bytes is recorded instead: before its data is copied, a
//! record in the work dir (`#sync.INO`: the boot it was made in, the copy's inode number
//! on disk and its path in the upper layer) is made durable, which costs one small
//! journal commit. The copy then shows as soon as it is complete in the page cache, and
//! a background thread fsyncs it and removes the record. What a crash leaves, settled by
//! the next mount (`settle`) or by any command that reads the upper layer:
//! - a record from this boot (the daemon died, the machine did not): the copy is whole
//!   in the page cache; it is fsynced and the record dropped;
//! - a record from an earlier boot (a power cut, a reboot): the copy may be partial; it
//!   is removed and the lower file shows again, as after a copy-up interrupted before
//!   its rename (data written to the copy and never fsynced is lost either way).
//!
//! An `fsync` of the file, an `O_SYNC`/`O_DSYNC` open, a link, unlink or rename of it,
//! and the end of the session wait for its record to go first, so anything the user
//! made durable stays.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::copy_up::SavedTimes;
use crate::markers;
use crate::sys::{self, Errno, OFlags, SysResult};

/// The smallest copy worth a record: below it the record's own journal commit costs
/// about what syncing the copy does (300 copy-ups of small files for a `chmod`: 0.75 ms
/// each with a record, 0.5-0.6 ms synced in place).
pub(crate) const DEFER_MIN: u64 = 1 << 20;

const RECORD_PREFIX: &str = "#sync.";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The boot this machine is in (empty if unknown: a record made then is treated as
/// from another boot, the safe side).
fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The work-dir name of the record of node `ino`'s copy.
pub(crate) fn record_name(ino: u64) -> OsString {
    OsString::from(format!("{RECORD_PREFIX}{ino}"))
}

fn parse_record_name(name: &OsStr) -> Option<u64> {
    name.to_str()?.strip_prefix(RECORD_PREFIX)?.parse().ok()
}

/// A record's content: boot id, the copy's inode number on disk, its path in the upper
/// layer (relative, the rest of the record, any bytes).
fn encode(boot: &str, disk_ino: u64, path: &[u8]) -> Vec<u8> {
    let mut out = format!("{boot}\n{disk_ino}\n").into_bytes();
    out.extend_from_slice(path);
    out
}

fn decode(data: &[u8]) -> Option<(&str, u64, &[u8])> {
    let mut it = data.splitn(3, |&b| b == b'\n');
    let boot = std::str::from_utf8(it.next()?).ok()?;
    let ino = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    let path = it.next()?;
    (!path.is_empty()).then_some((boot, ino, path))
}

/// Write the record of a copy (`disk_ino` at `path` in the upper layer) for node `ino`
/// into the work dir and make it durable, before the copy gets any data.
pub(crate) fn write_record(
    work: BorrowedFd<'_>,
    ino: u64,
    disk_ino: u64,
    path: &[u8],
) -> SysResult<OsString> {
    let name = record_name(ino);
    let f = sys::open_at(
        work,
        &name,
        OFlags::CREATE | OFlags::TRUNC | OFlags::WRONLY,
        0o600,
    )?;
    let done = sys::write_all_fd(f.as_fd(), &encode(&boot_id(), disk_ino, path))
        .and_then(|()| sys::fsync(f.as_fd()))
        .and_then(|()| sync_dir(work));
    if let Err(e) = done {
        let _ = sys::unlink_at(work, &name);
        return Err(e);
    }
    Ok(name)
}

/// fsync a directory given as any descriptor (an `O_PATH` one cannot be synced).
fn sync_dir(dir: BorrowedFd<'_>) -> SysResult<()> {
    sys::fsync(sys::open_dir_read(dir)?.as_fd())
}

/// How long after a copy shows its sync starts, unless someone waits for it: the write
/// that asked for the copy lands first. The sync's writeback holds the file's block map
/// while it allocates the copy's blocks, and a write meanwhile waited 20-26 ms for it
/// (256 MiB on ext4, `ext4_da_get_block_prep`).
const SYNC_DELAY: Duration = Duration::from_millis(10);

/// One copy waiting for its fsync.
struct Job {
    ino: u64,
    file: OwnedFd,
    record: OsString,
    shown: Instant,
}

#[derive(Default)]
struct Shared {
    /// Node number → copies of it not yet on disk.
    pending: Mutex<HashMap<u64, u32>>,
    done: Condvar,
    /// How many copies are pending (read without the lock).
    count: AtomicUsize,
    /// Someone waits: sync without the delay.
    hurry: AtomicBool,
    /// The syncing thread, to wake when someone waits.
    thread: OnceLock<Thread>,
}

impl Shared {
    fn finished(&self, ino: u64) {
        let mut p = self.pending.lock();
        if let Some(n) = p.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                p.remove(&ino);
            }
        }
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.hurry.store(false, Ordering::Release);
        }
        drop(p);
        self.done.notify_all();
    }

    fn hurry(&self) {
        self.hurry.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// What syncs the copies: the shared state and the work dir.
struct Worker {
    shared: Arc<Shared>,
    work: OwnedFd,
}

impl Worker {
    /// Sleep out the job's delay, unless someone waits.
    fn delay(&self, job: &Job) {
        let due = job.shown + SYNC_DELAY;
        loop {
            let now = Instant::now();
            if now >= due || self.shared.hurry.load(Ordering::Acquire) {
                return;
            }
            std::thread::park_timeout(due - now);
        }
    }

    fn run(&self, job: Job) {
        sync_one(self.work.as_fd(), &job);
        self.shared.finished(job.ino);
    }
}

/// The copies not yet on disk, and the thread that syncs them (started with the first).
pub(crate) struct CopySyncs {
    worker: Option<Arc<Worker>>,
    shared: Arc<Shared>,
    queue: Mutex<Option<Sender<Job>>>,
}

impl CopySyncs {
    /// For a mount whose work dir is `work` (none: nothing is ever deferred).
    pub(crate) fn new(work: Option<OwnedFd>) -> Self {
        let shared = Arc::<Shared>::default();
        CopySyncs {
            worker: work.map(|work| {
                Arc::new(Worker {
                    shared: shared.clone(),
                    work,
                })
            }),
            shared,
            queue: Mutex::new(None),
        }
    }

    /// Whether copies can be deferred here (a work dir to keep records in).
    pub(crate) fn available(&self) -> bool {
        self.worker.is_some()
    }

    /// Node `ino` has a copy being made whose record is (about to be) written: waiters
    /// on it wait from now on. Pair with `push` or `abandon`.
    pub(crate) fn begin(&self, ino: u64) {
        let mut p = self.shared.pending.lock();
        *p.entry(ino).or_default() += 1;
        self.shared.count.fetch_add(1, Ordering::AcqRel);
    }

    /// The copy was not made (the caller removes its record and temporary file).
    pub(crate) fn abandon(&self, ino: u64) {
        self.shared.finished(ino);
    }

    /// The copy of node `ino` shows: fsync `file` and then drop `record`, in the background.
    pub(crate) fn push(&self, ino: u64, file: OwnedFd, record: OsString) {
        let Some(worker) = &self.worker else {
            self.shared.finished(ino);
            return;
        };
        let job = Job {
            ino,
            file,
            record,
            shown: Instant::now(),
        };
        let mut q = self.queue.lock();
        if q.is_none() {
            *q = start(worker.clone());
        }
        let job = match q.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        drop(q);
        // No thread could be started: sync it here.
        worker.run(job);
    }

    /// Wait until node `ino` has no copy whose data is not on disk.
    pub(crate) fn wait(&self, ino: u64) {
        if self.shared.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut p = self.shared.pending.lock();
        if p.contains_key(&ino) {
            self.shared.hurry();
        }
        while p.contains_key(&ino) {
            self.shared.done.wait(&mut p);
        }
    }

    /// Wait until every copy is on disk.
    pub(crate) fn wait_all(&self) {
        if self.shared.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut p = self.shared.pending.lock();
        if !p.is_empty() {
            self.shared.hurry();
        }
        while !p.is_empty() {
            self.shared.done.wait(&mut p);
        }
    }
}

fn start(worker: Arc<Worker>) -> Option<Sender<Job>> {
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name("layerfs-sync".into())
        .spawn(move || {
            let _ = worker.shared.thread.set(std::thread::current());
            for job in rx {
                worker.delay(&job);
                worker.run(job);
            }
        })
        .ok()?;
    Some(tx)
}

/// fsync a copy, then drop its record durably. A copy that cannot be synced keeps its
/// record: the next mount settles it.
fn sync_one(work: BorrowedFd<'_>, job: &Job) {
    if let Err(e) = sys::fsync(job.file.as_fd()) {
        log::warn!("copy-up: syncing a copy failed, left to the next mount: {e}");
        return;
    }
    let _ = sys::unlink_at(work, &job.record);
    let _ = sync_dir(work);
}

/// Settle what a daemon left in the work dir `work` of the upper layer `upper` (see the
/// module's text). Returns how many records there were.
pub(crate) fn settle(upper: BorrowedFd<'_>, work: BorrowedFd<'_>) -> SysResult<usize> {
    let records: Vec<(OsString, u64)> = sys::read_dir_all(work)?
        .into_iter()
        .filter_map(|e| parse_record_name(&e.name).map(|ino| (e.name, ino)))
        .collect();
    if records.is_empty() {
        return Ok(0);
    }
    let boot = boot_id();
    let mut settled = 0;
    for (name, ino) in &records {
        let data = match sys::open_at(work, name, OFlags::RDONLY, 0)
            .and_then(|f| sys::read_to_end_fd(f.as_fd()))
        {
            Ok(d) => d,
            // Dropped meanwhile by the daemon that made it.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e),
        };
        // A record being written by a live daemon may read short: left to that daemon,
        // or to the next mount, which empties the work dir after settling.
        let Some((b, disk_ino, path)) = decode(&data) else {
            continue;
        };
        let same_boot = !boot.is_empty() && b == boot;
        if !settle_copy(upper, path, disk_ino, *ino, same_boot)? {
            continue;
        }
        match sys::unlink_at(work, name) {
            Ok(()) | Err(Errno::NOENT) => settled += 1,
            Err(e) => return Err(e),
        }
    }
    sync_dir(work)?;
    Ok(settled)
}

/// One recorded copy: made durable (`same_boot`) or removed; found at its recorded path,
/// or, if a directory above it was renamed meanwhile, anywhere in the upper layer.
/// Returns whether its record can go: a copy of this boot that is not in place may be
/// one a live daemon is still making (a command reading a mounted container's upper
/// dir), so its record stays (the next mount empties the work dir anyway).
fn settle_copy(
    upper: BorrowedFd<'_>,
    path: &[u8],
    disk_ino: u64,
    ino: u64,
    same_boot: bool,
) -> SysResult<bool> {
    let found = at_path(upper, path, disk_ino, ino).or_else(|| search(upper, disk_ino, ino));
    let Some((dir, name)) = found else {
        // From an earlier boot: never renamed into place, or removed since.
        return Ok(!same_boot);
    };
    if same_boot {
        match sys::open_at(dir.as_fd(), &name, OFlags::RDONLY, 0) {
            Ok(f) => sys::fsync(f.as_fd()).map(|()| true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e),
        }
    } else {
        let times = SavedTimes::of(&sys::stat_fd(dir.as_fd())?);
        sys::unlink_at(dir.as_fd(), &name)?;
        times.restore_at(dir.as_fd());
        log::warn!(
            "copy-up of {:?} interrupted by a restart: the lower file shows again",
            String::from_utf8_lossy(path)
        );
        sync_dir(dir.as_fd()).map(|()| true)
    }
}

/// Whether `name` in `dir` is the recorded copy: the same inode on disk, a regular file,
/// and (where the xattr could be set) the mount's number for it.
fn is_copy(dir: BorrowedFd<'_>, name: &OsStr, disk_ino: u64, ino: u64) -> bool {
    let Ok(st) = sys::stat_at(dir, name) else {
        return false;
    };
    if st.st_ino != disk_ino || sys::mode_type(st.st_mode) != libc::S_IFREG {
        return false;
    }
    match markers::read_markers(dir, Some(name)).map(|m| m.origin_ino) {
        Ok(Some(o)) => o == ino,
        _ => true,
    }
}

fn at_path(
    upper: BorrowedFd<'_>,
    path: &[u8],
    disk_ino: u64,
    ino: u64,
) -> Option<(OwnedFd, OsString)> {
    let comps: Vec<&OsStr> = super::hardlinks::components(path).collect();
    let (last, dirs) = comps.split_last()?;
    let mut dir = sys::open_dir_path(upper, OsStr::new(".")).ok()?;
    for c in dirs {
        dir = sys::open_dir_path(dir.as_fd(), c).ok()?;
    }
    is_copy(dir.as_fd(), last, disk_ino, ino).then(|| (dir, last.to_os_string()))
}

fn search(upper: BorrowedFd<'_>, disk_ino: u64, ino: u64) -> Option<(OwnedFd, OsString)> {
    let mut stack = vec![sys::open_dir_path(upper, OsStr::new(".")).ok()?];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = sys::read_dir_all(dir.as_fd()) else {
            continue;
        };
        for e in entries {
            if e.dtype == libc::DT_DIR {
                if let Ok(d) = sys::open_dir_path(dir.as_fd(), &e.name) {
                    stack.push(d);
                }
            } else if e.ino == disk_ino && is_copy(dir.as_fd(), &e.name, disk_ino, ino) {
                let name = e.name.clone();
                return Some((dir, name));
            }
        }
    }
    None
}

/// The upper-layer path of `name` under a directory whose path is `dir` (both as the
/// mount shows them: an upper directory lives at its merged path).
pub(crate) fn join(dir: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_what_is_not_one() {
        let data = encode("b00t", 42, b"a/b\nc");
        assert_eq!(decode(&data), Some(("b00t", 42, &b"a/b\nc"[..])));
        assert_eq!(decode(b"b00t\n42\n"), None);
        assert_eq!(decode(b"b00t\nx\na"), None);
        assert_eq!(parse_record_name(&record_name(7)), Some(7));
        assert_eq!(parse_record_name(OsStr::new("#sync.")), None);
        assert_eq!(parse_record_name(OsStr::new("#lfs.1.2")), None);
    }

    /// An upper dir with `d/f` (a copy), a work dir, and the record of that copy made
    /// in boot `boot` for node 7.
    fn recorded_copy(boot: &str) -> (tempfile::TempDir, OwnedFd, OwnedFd, u64) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("upper/d")).unwrap();
        std::fs::create_dir_all(t.path().join("work")).unwrap();
        std::fs::write(t.path().join("upper/d/f"), b"copy").unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(t.path().join("upper/d/f")).unwrap(),
        );
        std::fs::write(
            t.path().join("work").join(record_name(7)),
            encode(boot, ino, b"d/f"),
        )
        .unwrap();
        let upper = sys::open_root_dir(&t.path().join("upper")).unwrap();
        let work = sys::open_root_dir(&t.path().join("work")).unwrap();
        (t, upper, work, ino)
    }

    fn work_is_empty(t: &tempfile::TempDir) -> bool {
        std::fs::read_dir(t.path().join("work"))
            .unwrap()
            .next()
            .is_none()
    }

    #[test]
    fn a_copy_from_this_boot_is_kept_and_its_record_dropped() {
        let (t, upper, work, _) = recorded_copy(&boot_id());
        assert_eq!(settle(upper.as_fd(), work.as_fd()).unwrap(), 1);
        assert_eq!(std::fs::read(t.path().join("upper/d/f")).unwrap(), b"copy");
        assert!(work_is_empty(&t));
    }

    #[test]
    fn a_copy_from_another_boot_is_removed_and_its_dir_keeps_its_times() {
        let (t, upper, work, _) = recorded_copy("another-boot");
        let d = t.path().join("upper/d");
        let old = filetime_of(&d);
        std::thread::sleep(std::time::Duration::from_millis(20));
        settle(upper.as_fd(), work.as_fd()).unwrap();
        assert!(!t.path().join("upper/d/f").exists());
        assert_eq!(filetime_of(&d), old);
        assert!(work_is_empty(&t));
    }

    #[test]
    fn a_copy_whose_dir_was_renamed_is_found_and_a_stranger_is_left_alone() {
        let (t, upper, work, _) = recorded_copy("another-boot");
        std::fs::create_dir_all(t.path().join("upper/e")).unwrap();
        std::fs::rename(t.path().join("upper/d"), t.path().join("upper/e/moved")).unwrap();
        // Another file now at the recorded path: not the copy (another inode).
        std::fs::create_dir_all(t.path().join("upper/d")).unwrap();
        std::fs::write(t.path().join("upper/d/f"), b"new").unwrap();
        settle(upper.as_fd(), work.as_fd()).unwrap();
        assert!(!t.path().join("upper/e/moved/f").exists());
        assert_eq!(std::fs::read(t.path().join("upper/d/f")).unwrap(), b"new");
        assert!(work_is_empty(&t));
    }

    #[test]
    fn a_record_whose_copy_never_showed_only_goes() {
        let (t, upper, work, _) = recorded_copy("another-boot");
        std::fs::remove_file(t.path().join("upper/d/f")).unwrap();
        std::fs::write(t.path().join("work/#lfs.1.0"), b"half").unwrap();
        settle(upper.as_fd(), work.as_fd()).unwrap();
        // The record goes; the half copy is for the work dir's cleaning.
        let left: Vec<_> = std::fs::read_dir(t.path().join("work"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![OsString::from("#lfs.1.0")]);
    }

    #[test]
    fn a_record_of_this_boot_whose_copy_is_not_in_place_stays_for_its_daemon() {
        let (t, upper, work, _) = recorded_copy(&boot_id());
        std::fs::remove_file(t.path().join("upper/d/f")).unwrap();
        // Being written by a live daemon: it reads short.
        std::fs::write(t.path().join("work").join(record_name(8)), b"").unwrap();
        assert_eq!(settle(upper.as_fd(), work.as_fd()).unwrap(), 0);
        assert_eq!(
            std::fs::read_dir(t.path().join("work")).unwrap().count(),
            2,
            "a live daemon's records were dropped"
        );
    }

    fn filetime_of(p: &std::path::Path) -> (i64, i64) {
        let m = std::fs::metadata(p).unwrap();
        use std::os::unix::fs::MetadataExt;
        (m.mtime(), m.mtime_nsec())
    }
}
