//! Warming the host's caches ahead of a walk.
//!
//! A program that lists a directory usually goes on into its subdirectories (`find`,
//! `du`, `tar c`, `cp -a`, `rm -r`). Each of its steps reaches the daemon only after the
//! previous one was answered, so on a cold host cache the disk reads of a walk happen one
//! at a time, each between two round trips. After building a listing for the first time,
//! the daemon hands the directory's subdirectories to background threads that read them
//! in every layer that has them (their entries, and each entry's inode with `fstatat`),
//! and one level further down, so the disk reads of the requests to come are done, in
//! parallel, while the walk is still busy with the ones before.
//!
//! In a stack with data-only layers, a regular file of a lower layer may be a metacopy
//! stub: its redirect is read too, and its data's inode stat'ed, so the first `stat` of
//! it (which shows the data's blocks) and its first open find both cached.
//!
//! It only reads, through the directory handles the requests use (opened with
//! `O_NOFOLLOW | O_DIRECTORY`): nothing of the mount's state changes and no request
//! waits for it. The work is bounded: the newest listing is warmed first (a walk goes
//! deep before it goes wide), at most [`MAX_JOBS`] listings wait (the oldest are dropped),
//! each warms at most [`MAX_SUBDIRS`] subdirectories of at most [`MAX_ENTRIES`] entries,
//! and a directory is read once. When the host's caches already hold what it reads (a
//! second mount of an image), it mostly stands aside: after [`CACHED_STREAK`] cached
//! directories it warms one listing in [`SAMPLE_EVERY`], until one is found cold.
//!
//! The same threads run chores that requests leave behind, before any warming: reading
//! ahead in a listing (`readdir_stream`; a request that needs the batch being read
//! waits for it) and freeing a large listing read to its end. A thread that reads ahead
//! for a request keeps off that request's CPU from then on ([`keep_off_cpu`]).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::layers::RealDir;
use crate::sys::{self, OFlags};

/// Listings waiting to be warmed; a newer one pushes out the oldest.
pub const MAX_JOBS: usize = 64;
/// Subdirectories warmed per listing.
pub const MAX_SUBDIRS: usize = 256;
/// Entries stat'ed per subdirectory and layer.
pub const MAX_ENTRIES: usize = 4096;
/// Background threads: more than one, so that disk reads overlap each other too.
const THREADS: usize = 2;
/// Levels warmed below a listed directory's subdirectories.
const DEPTH: u32 = 1;
/// Directories remembered as warmed (then the memory starts over).
const MAX_DONE: usize = 1 << 16;
/// Entries stat'ed before deciding whether a directory's inodes are cached.
const PROBE: usize = 8;
/// Reading a directory and stat'ing its first entries faster than this (a base plus
/// per entry) found them in the host's caches: a disk read takes longer.
const CACHED_BASE: Duration = Duration::from_micros(40);
const CACHED_STAT: Duration = Duration::from_micros(4);
/// After this many more cached directories than cold ones (a cold one halves the
/// count)...
pub const CACHED_STREAK: u32 = 32;
/// ...only one listing in this many is warmed.
pub const SAMPLE_EVERY: u64 = 8;

/// The subdirectories of one listing, in the order the listing gives them.
struct Job {
    /// The listed directory in each layer that has it (upper first).
    dirs: Vec<Arc<RealDir>>,
    names: Vec<OsString>,
    next: usize,
    /// Levels below these subdirectories still to warm.
    depth: u32,
}

/// One subdirectory to warm.
struct Task {
    dirs: Vec<Arc<RealDir>>,
    name: OsString,
    depth: u32,
}

/// Work a request leaves to the background (reading ahead in a listing); it returns
/// the subdirectories it found, to warm as a listing's.
pub type Chore = Box<dyn FnOnce() -> Option<(Vec<Arc<RealDir>>, Vec<OsString>)> + Send>;

#[derive(Default)]
struct Queue {
    /// Done before any warming: a request is about to need them.
    chores: std::collections::VecDeque<Chore>,
    jobs: Vec<Job>,
    started: bool,
    closed: bool,
}

impl Queue {
    fn push(&mut self, dirs: Vec<Arc<RealDir>>, mut names: Vec<OsString>, depth: u32) {
        names.truncate(MAX_SUBDIRS);
        if self.jobs.len() >= MAX_JOBS {
            self.jobs.remove(0);
        }
        self.jobs.push(Job {
            dirs,
            names,
            next: 0,
            depth,
        });
    }

    /// The next subdirectory to warm: from the newest listing.
    fn take(&mut self) -> Option<Task> {
        let job = self.jobs.last_mut()?;
        let task = Task {
            dirs: job.dirs.clone(),
            name: job.names[job.next].clone(),
            depth: job.depth,
        };
        job.next += 1;
        if job.next == job.names.len() {
            self.jobs.pop();
        }
        Some(task)
    }
}

struct Shared {
    /// Below this plus `cached_stat` per entry probed, a directory counts as cached.
    cached_base: Duration,
    cached_stat: Duration,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Directories warmed, by (device, inode), with the levels below them warmed too:
    /// a walk reaches most directories both as a listing's subdirectory and as a level
    /// below another listing's.
    done: Mutex<HashMap<(u64, u64), u32>>,
    /// Up for each directory read that the host's caches held, halved by one that
    /// they did not (so an odd slow read, on a busy CPU, does not end the sampling).
    cached: AtomicU32,
    listings: AtomicU64,
    /// Data-only layers: where the stubs of lower layers find their data.
    data: Vec<OwnedFd>,
}

impl Default for Shared {
    fn default() -> Self {
        Self::with_threshold(CACHED_BASE, CACHED_STAT)
    }
}

impl Shared {
    fn with_threshold(cached_base: Duration, cached_stat: Duration) -> Self {
        Shared {
            cached_base,
            cached_stat,
            queue: Default::default(),
            wake: Default::default(),
            done: Default::default(),
            cached: Default::default(),
            listings: Default::default(),
            data: Vec::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host's caches have held everything lately: warm only a sample, to notice
    /// when that changes, and leave the CPU (and the wake-ups) to the requests.
    fn skip(&self) -> bool {
        self.cached.load(Ordering::Relaxed) >= CACHED_STREAK
            && !self
                .listings
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SAMPLE_EVERY)
    }

    fn saw(&self, cached: bool) {
        let _ = self
            .cached
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(if cached {
                    (n + 1).min(2 * CACHED_STREAK)
                } else {
                    n / 2
                })
            });
    }

    /// Whether `dir` still needs reading to `depth` levels below it (and note that it
    /// is being read).
    fn claim(&self, dir: &OwnedFd, depth: u32) -> bool {
        let Ok(st) = sys::stat_fd(dir.as_fd()) else {
            return true;
        };
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if done.len() >= MAX_DONE {
            done.clear();
        }
        match done.entry((st.st_dev, st.st_ino)) {
            Entry::Occupied(e) if *e.get() >= depth => false,
            Entry::Occupied(mut e) => {
                e.insert(depth);
                true
            }
            Entry::Vacant(e) => {
                e.insert(depth);
                true
            }
        }
    }
}

/// The background readers; their threads start with the first listing and end when
/// this is dropped (with the filesystem).
#[derive(Default)]
pub struct Prefetcher {
    shared: Arc<Shared>,
}

impl Prefetcher {
    /// A prefetcher that also warms stubs' data in these data-only layers.
    pub fn with_data(data: Vec<OwnedFd>) -> Prefetcher {
        Prefetcher {
            shared: Arc::new(Shared {
                data,
                ..Shared::default()
            }),
        }
    }

    /// Warm `names`, the subdirectories of a directory whose real dirs are `dirs`.
    pub fn warm(&self, dirs: Vec<Arc<RealDir>>, names: Vec<OsString>) {
        if dirs.is_empty() || names.is_empty() || self.shared.skip() {
            return;
        }
        let mut q = self.shared.queue();
        if q.closed {
            return;
        }
        q.push(dirs, names, DEPTH);
        self.start(q);
    }

    /// Run `chore` on a background thread soon, before any warming. Returns `false`
    /// (and drops it) when no thread can run it.
    pub fn run_soon(&self, chore: Chore) -> bool {
        let mut q = self.shared.queue();
        if q.closed {
            return false;
        }
        q.chores.push_back(chore);
        self.start(q)
    }

    /// Start the background threads now (a mount does, so that its first listing does
    /// not wait for them: about 0.3 ms).
    pub fn start_threads(&self) {
        let q = self.shared.queue();
        if !q.closed {
            self.start(q);
        }
    }

    /// Start the threads if they are not running, and wake one.
    fn start(&self, mut q: MutexGuard<'_, Queue>) -> bool {
        if !q.started {
            q.started = true;
            let mut any = false;
            for _ in 0..THREADS {
                let shared = self.shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("layerfs-prefetch".into())
                    .spawn(move || run(&shared));
                // Without these threads nothing is warmed; requests work as before.
                match spawned {
                    Ok(_) => any = true,
                    Err(e) => log::debug!("prefetch thread: {e}"),
                }
            }
            if !any {
                q.closed = true;
                q.chores.clear();
                q.jobs.clear();
                return false;
            }
        }
        drop(q);
        self.shared.wake.notify_one();
        true
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        let mut q = self.shared.queue();
        q.closed = true;
        q.chores.clear();
        q.jobs.clear();
        drop(q);
        self.shared.wake.notify_all();
    }
}

enum Work {
    Chore(Chore),
    Warm(Task),
}

/// Keep the calling background thread off CPU `cpu` from now on: the CPU of the request
/// that queued its work, where that request's reader waits for the reply and runs on.
/// Reading a large listing ahead takes milliseconds of CPU; woken onto the reader's CPU
/// (a ring thread waiting in `SCHED_IDLE` makes it look idle to the scheduler) it ran
/// there, in turn with the reader, while the other CPU stood idle: a first listing of
/// 10,000 names took 5.1 ms instead of 3.5 ms in about half of the tries on 2 CPUs.
pub fn keep_off_cpu(cpu: usize) {
    thread_local! {
        /// The CPUs the thread was allowed at its first call (`None`: unknown).
        static CPUS: Option<rustix::thread::CpuSet> = sys::sched::thread_cpus().ok();
        /// The CPU it keeps off now.
        static OFF: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    }
    if OFF.get() == Some(cpu) {
        return;
    }
    CPUS.with(|cpus| {
        let Some(cpus) = cpus else { return };
        match sys::sched::keep_thread_off(cpus, cpu) {
            Ok(true) => OFF.set(Some(cpu)),
            Ok(false) => {}
            Err(e) => log::debug!("background thread's CPUs: {e}"),
        }
    });
}

fn run(shared: &Shared) {
    loop {
        let work = {
            let mut q = shared.queue();
            loop {
                if q.closed {
                    return;
                }
                if let Some(c) = q.chores.pop_front() {
                    break Work::Chore(c);
                }
                if let Some(t) = q.take() {
                    break Work::Warm(t);
                }
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let task = match work {
            Work::Warm(t) => t,
            Work::Chore(c) => {
                if let Some((dirs, names)) = c()
                    && !dirs.is_empty()
                    && !names.is_empty()
                    && !shared.skip()
                {
                    let mut q = shared.queue();
                    if q.closed {
                        return;
                    }
                    q.push(dirs, names, DEPTH);
                    drop(q);
                    shared.wake.notify_one();
                }
                continue;
            }
        };
        let mut read = false;
        let mut cached = true;
        let mut below = Vec::new();
        let mut subdirs = Vec::new();
        let mut seen = HashSet::new();
        for d in &task.dirs {
            let w = warm_one(shared, d, &task.name, task.depth);
            read |= w.read;
            cached &= w.cached;
            if let Some(fd) = w.fd {
                below.push(RealDir::new(d.layer, fd));
            }
            for n in w.subdirs {
                if seen.insert(n.clone()) {
                    subdirs.push(n);
                }
            }
        }
        if read {
            shared.saw(cached);
        }
        if task.depth > 0 && !subdirs.is_empty() {
            let mut q = shared.queue();
            if q.closed {
                return;
            }
            q.push(below, subdirs, task.depth - 1);
            drop(q);
            shared.wake.notify_one();
        }
    }
}

/// What warming one subdirectory in one layer found.
#[derive(Default)]
struct Warmed {
    /// The directory was read (it is one in this layer, and was not read before).
    read: bool,
    /// Its entries and first inodes came from the host's caches at once: the other
    /// inodes were not asked for.
    cached: bool,
    /// Entries stat'ed.
    entries: usize,
    /// The subdirectory, open, when its own subdirectories were asked for (`depth > 0`).
    fd: Option<OwnedFd>,
    subdirs: Vec<OsString>,
}

/// Read subdirectory `name` of `parent` and stat its entries (and list its own
/// subdirectories if `depth > 0`). Errors (not a directory in this layer, gone, no
/// permission) just end the warming of it.
fn warm_one(shared: &Shared, parent: &RealDir, name: &OsString, depth: u32) -> Warmed {
    let Ok(fd) = sys::open_at(
        parent.fd(),
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK,
        0,
    ) else {
        return Warmed::default();
    };
    if !shared.claim(&fd, depth) {
        return Warmed::default();
    }
    let started = Instant::now();
    let mut names = Vec::new();
    let _ = sys::read_dir_each(fd.as_fd(), |e| {
        names.push((e.name, e.dtype));
        names.len() < MAX_ENTRIES
    });
    let mut w = Warmed {
        read: true,
        ..Default::default()
    };
    let probe = names.len().min(PROBE);
    let fast = |started: Instant| {
        started.elapsed() < shared.cached_base + shared.cached_stat * probe as u32 && probe > 0
    };
    for (i, (n, dtype)) in names.into_iter().enumerate() {
        if i == probe {
            w.cached = fast(started);
        }
        let mut is_dir = dtype == libc::DT_DIR;
        if (!w.cached || dtype == libc::DT_UNKNOWN)
            && let Ok(st) = sys::stat_at(fd.as_fd(), &n)
        {
            w.entries += 1;
            is_dir = sys::mode_type(st.st_mode) == libc::S_IFDIR;
            if !shared.data.is_empty() && !parent.is_upper() && crate::metacopy::may_be_stub(&st) {
                warm_stub(shared, fd.as_fd(), &n);
            }
        }
        if depth > 0 && is_dir {
            w.subdirs.push(n);
        }
    }
    if w.entries == probe && probe < PROBE {
        w.cached = fast(started);
    }
    if depth > 0 {
        w.fd = Some(fd);
    }
    w
}

/// Read a stub's redirect and stat its data (both land in the host's caches).
fn warm_stub(shared: &Shared, dir: std::os::fd::BorrowedFd<'_>, name: &OsString) {
    // `redirect_of` gives only absolute paths of plain names.
    let Ok(Some(r)) = crate::metacopy::redirect_of(dir, Some(name)) else {
        return;
    };
    let rel = std::ffi::OsStr::from_bytes(&r[1..]);
    for d in &shared.data {
        if sys::stat_at(d.as_fd(), rel).is_ok() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn real_dir(path: &std::path::Path) -> Arc<RealDir> {
        let fd: OwnedFd = sys::open_root_dir(path).unwrap();
        RealDir::new(1, fd)
    }

    #[test]
    fn queue_is_bounded_and_newest_first() {
        let p = Prefetcher::default();
        // Fill the queue without a thread to drain it.
        p.shared.queue.lock().unwrap().started = true;
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..MAX_JOBS + 5 {
            p.warm(vec![real_dir(tmp.path())], vec![format!("d{i}").into()]);
        }
        let q = p.shared.queue.lock().unwrap();
        assert_eq!(q.jobs.len(), MAX_JOBS);
        assert_eq!(q.jobs[0].names[0], OsString::from("d5"));
        assert_eq!(
            q.jobs.last().unwrap().names[0],
            OsString::from(format!("d{}", MAX_JOBS + 4))
        );
    }

    /// Nothing counts as cached: every entry is stat'ed.
    fn cold() -> Shared {
        Shared::with_threshold(Duration::ZERO, Duration::ZERO)
    }

    fn tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path();
        std::fs::create_dir_all(p.join("sub/deeper")).unwrap();
        std::fs::create_dir(p.join("sub/other")).unwrap();
        for f in ["a", "b", "c"] {
            std::fs::write(p.join("sub").join(f), b"x").unwrap();
        }
        std::fs::create_dir(p.join("big")).unwrap();
        for i in 0..MAX_ENTRIES + 10 {
            std::fs::write(p.join("big").join(i.to_string()), b"").unwrap();
        }
        std::os::unix::fs::symlink("sub", p.join("link")).unwrap();
        std::fs::write(p.join("file"), b"x").unwrap();
        tmp
    }

    #[test]
    fn warming_stats_a_subdirectory_and_follows_nothing() {
        let tmp = tree();
        let dir = real_dir(tmp.path());
        let warm = |n: &str| warm_one(&cold(), &dir, &OsString::from(n), 0);
        let w = warm("sub");
        assert!(w.read && !w.cached);
        assert_eq!(w.entries, 5);
        // Without levels below asked for, no subdirectories and no handle come back.
        assert!(w.subdirs.is_empty() && w.fd.is_none());
        assert_eq!(warm("big").entries, MAX_ENTRIES);
        // A symlink to a directory is not followed; a file or a missing name is no error.
        for n in ["link", "file", "missing"] {
            let w = warm(n);
            assert!(!w.read && w.entries == 0, "{n}");
        }
    }

    #[test]
    fn a_level_below_comes_back_open() {
        let tmp = tree();
        let w = warm_one(&cold(), &real_dir(tmp.path()), &"sub".into(), 1);
        let mut subdirs = w.subdirs.clone();
        subdirs.sort();
        assert_eq!(subdirs, [OsString::from("deeper"), OsString::from("other")]);
        let below = RealDir::new(1, w.fd.unwrap());
        assert_eq!(warm_one(&cold(), &below, &"deeper".into(), 0).entries, 0);
        assert!(warm_one(&cold(), &below, &"deeper".into(), 0).read);
    }

    #[test]
    fn a_cached_directory_is_probed_not_stat_ed_whole() {
        let tmp = tree();
        let always = Shared::with_threshold(Duration::from_secs(3600), Duration::ZERO);
        let w = warm_one(&always, &real_dir(tmp.path()), &"big".into(), 0);
        assert!(w.read && w.cached);
        assert_eq!(w.entries, PROBE);
    }

    #[test]
    fn each_directory_is_read_once_per_depth() {
        let tmp = tree();
        let shared = cold();
        let dir = real_dir(tmp.path());
        assert!(warm_one(&shared, &dir, &"sub".into(), 0).read);
        assert!(!warm_one(&shared, &dir, &"sub".into(), 0).read);
        // Asked again for a level more: read again, once.
        assert!(warm_one(&shared, &dir, &"sub".into(), 1).read);
        assert!(!warm_one(&shared, &dir, &"sub".into(), 1).read);
        assert!(!warm_one(&shared, &dir, &"sub".into(), 0).read);
    }

    #[test]
    fn cached_directories_turn_warming_into_sampling() {
        let shared = Shared::default();
        assert!(!shared.skip());
        for _ in 0..CACHED_STREAK {
            shared.saw(true);
        }
        let warmed = (0..8 * SAMPLE_EVERY).filter(|_| !shared.skip()).count();
        assert_eq!(warmed as u64, 8);
        // One cold directory halves the count: every listing is warmed again.
        shared.saw(false);
        assert!((0..SAMPLE_EVERY).all(|_| !shared.skip()));
    }

    #[test]
    fn dropping_stops_the_thread() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        let p = Prefetcher::default();
        p.warm(vec![real_dir(tmp.path())], vec!["sub".into()]);
        let shared = p.shared.clone();
        drop(p);
        // The thread holds one reference until it sees `closed` and returns.
        for _ in 0..500 {
            if Arc::strong_count(&shared) == 1 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the prefetch thread did not stop");
    }

    #[test]
    fn a_thread_kept_off_a_cpu_runs_elsewhere_where_there_is_elsewhere() {
        std::thread::spawn(|| {
            let before = sys::sched::thread_cpus().unwrap();
            let here = sys::sched::current_cpu();
            keep_off_cpu(here);
            let after = sys::sched::thread_cpus().unwrap();
            if before.count() > 1 {
                assert!(!after.is_set(here), "still allowed on CPU {here}");
                assert_eq!(after.count(), before.count() - 1);
                assert_ne!(sys::sched::current_cpu(), here);
                // Kept off another CPU instead: the one before is allowed again.
                let other = (0..rustix::thread::CpuSet::MAX_CPU)
                    .find(|&c| c != here && before.is_set(c))
                    .unwrap();
                keep_off_cpu(other);
                let again = sys::sched::thread_cpus().unwrap();
                assert!(again.is_set(here) && !again.is_set(other));
            } else {
                // One CPU: nothing to move to, nothing changed.
                assert_eq!(after, before);
            }
        })
        .join()
        .unwrap();
    }
}
