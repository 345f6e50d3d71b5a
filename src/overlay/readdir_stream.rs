//! Positional listings: a directory that only one lower layer has, listed as it is read.
//!
//! Such a directory (no upper directory, one lower one) lists exactly its lower
//! directory's entries less that layer's markers. Its listing is served in the lower
//! directory's own order, one `getdents64` batch at a time: the first reply waits for
//! one batch, not for the whole directory, and the next batch is read in the background
//! while the kernel and the reader take in the last one (a 10,000-entry directory: the
//! first reply in about 0.2 ms instead of the 2.7 ms a sorted, hashed listing needs).
//!
//! Offsets are positions in that order: `.` 1, `..` 2, the k-th name k + 3, all below
//! [`HASHED_OFFSETS`]; merged listings ([`super::readdir`]) use keyed hashes at or above
//! it, so an offset says which kind of listing it continues and the daemon keeps no
//! per-stream state either way. A lower layer does not change, so a position names the
//! same entry for every reader, READDIR and READDIRPLUS alike, as the kernel's listing
//! cache needs (`shared/FIELD-NOTES.md`, "Listings").
//!
//! A directory that gains an upper directory (a name created or removed in it, or its
//! own attributes changed) is listed merged from then on, from offset 0. A reader in the
//! middle of a positional listing goes on through the lower directory, as the kernel's
//! overlayfs goes on through an open real directory: a name added since it started may
//! not show and a name removed since may still show, but every name that stayed shows
//! exactly once.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::cache::{ShardedLru, Weighted};
use super::fs::OverlayFs;
use super::inode_table::Node;
use super::layers::{Layers, RealDir};
use super::readdir::{DirEntryRef, lower_listed};
use crate::sys::{self, SysResult};

/// Offsets at or above this continue a merged (hash-ordered) listing; below it, a
/// positional one.
pub const HASHED_OFFSETS: u64 = 1 << 62;

/// Entries read ahead of a reader: a reader of a large directory usually reads on to
/// its end, and reading is the daemon's part of a listing's cost.
const AHEAD: usize = 8192;

/// A directory larger than this (its `st_size`: about 1,000 short names on ext4, 1,600
/// on tmpfs or btrfs) is read ahead in the background, its first `getdents64` read is
/// [`FIRST_BATCH_BYTES`] (about 100 short names), and its first READDIRPLUS reply
/// carries few attributes ([`super::readdir::FIRST_PLUS_ENTRIES`]), so that the first
/// reply comes soon. A smaller one is read in one 32 KiB read, as a merged listing is.
const BIG_DIR_BYTES: i64 = 32 * 1024;
const FIRST_BATCH_BYTES: usize = 4096;

/// The listing of one directory in its lower layer's order, read as far as asked.
pub struct DirStream {
    layers: Arc<Layers>,
    dir: Arc<RealDir>,
    dev: u64,
    /// Regular files may stand for other types (rootless records): type left to stat.
    stand_ins: bool,
    /// Hand each batch's subdirectories to the prefetcher.
    warm: bool,
    /// Larger than [`BIG_DIR_BYTES`]: read ahead.
    big: bool,
    /// Entries read so far (the cache's weight); changed only under `state`'s lock.
    len: AtomicUsize,
    state: Mutex<State>,
    /// A batch was read (or its read failed).
    read: Condvar,
}

/// Entries of one `getdents64` batch as listed: their names in one buffer, one
/// allocation per batch rather than per name (a 10,000-entry directory is read by a
/// background thread while the reader waits for its next reply; a name apiece was
/// about a fifth of that thread's time, in `malloc`, `free` and page faults).
struct Batch {
    /// The position of its first entry in the listing.
    start: usize,
    names: Vec<u8>,
    entries: Vec<BatchEntry>,
}

struct BatchEntry {
    /// Where the name ends in `names` (it starts where the one before ends).
    end: u32,
    ino: u64,
    dtype: u8,
}

impl Batch {
    fn with_capacity(start: usize, entries: usize, name_bytes: usize) -> Batch {
        Batch {
            start,
            names: Vec::with_capacity(name_bytes),
            entries: Vec::with_capacity(entries),
        }
    }

    fn push(&mut self, name: &OsStr, ino: u64, dtype: u8) {
        self.names.extend_from_slice(name.as_bytes());
        self.entries.push(BatchEntry {
            end: self.names.len() as u32,
            ino,
            dtype,
        });
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entry `k` of the batch; its offset is its position + 1.
    fn get(&self, k: usize) -> DirEntryRef<'_> {
        let from = match k {
            0 => 0,
            _ => self.entries[k - 1].end as usize,
        };
        let e = &self.entries[k];
        DirEntryRef {
            name: OsStr::from_bytes(&self.names[from..e.end as usize]),
            ino: e.ino,
            dtype: e.dtype,
            off: (self.start + k + 1) as u64,
        }
    }
}

/// Where the reading of the lower directory is.
enum Reader {
    Idle(sys::DirReader),
    /// A thread reads a batch (outside the lock).
    Busy,
    Done,
}

struct State {
    /// Batches as read, in order; `.` and `..` are the first.
    batches: Vec<Arc<Batch>>,
    reader: Reader,
    /// A background read is queued.
    ahead_queued: bool,
}

impl Weighted for DirStream {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl DirStream {
    /// Entries read so far.
    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn new(
        layers: Arc<Layers>,
        dir: Arc<RealDir>,
        stand_ins: bool,
        warm: bool,
        ino: u64,
        parent_ino: u64,
    ) -> SysResult<Self> {
        let reader = sys::DirReader::open(dir.fd())?;
        let big = sys::stat_fd(dir.fd())?.st_size > BIG_DIR_BYTES;
        let dev = layers.get(dir.layer).dev;
        let mut dots = Batch::with_capacity(0, 2, 3);
        dots.push(OsStr::new("."), ino, libc::DT_DIR);
        dots.push(OsStr::new(".."), parent_ino, libc::DT_DIR);
        Ok(DirStream {
            layers,
            dir,
            dev,
            stand_ins,
            warm,
            big,
            len: AtomicUsize::new(2),
            state: Mutex::new(State {
                batches: vec![Arc::new(dots)],
                reader: Reader::Idle(reader),
                ahead_queued: false,
            }),
            read: Condvar::new(),
        })
    }

    /// The batch holding entry `i` and `i`'s place in it, reading as far as needed;
    /// `None` past the end. Subdirectories of batches read on the way go to `subdirs`.
    fn batch_at(
        &self,
        i: usize,
        subdirs: &mut Vec<OsString>,
    ) -> SysResult<Option<(Arc<Batch>, usize)>> {
        let mut st = self.state.lock();
        while i >= self.len() {
            if !self.read_batch(&mut st, subdirs, true)? {
                return Ok(None);
            }
        }
        let b = &st.batches[st.batches.partition_point(|b| b.start <= i) - 1];
        Ok(Some((b.clone(), i - b.start)))
    }

    /// Read one `getdents64` batch and append what it lists, or (`wait`) wait for the
    /// thread reading one. Returns `false` at the end of the directory, or when another
    /// thread reads and `wait` is not set.
    fn read_batch(
        &self,
        st: &mut MutexGuard<'_, State>,
        subdirs: &mut Vec<OsString>,
        wait: bool,
    ) -> SysResult<bool> {
        let mut reader = match std::mem::replace(&mut st.reader, Reader::Busy) {
            Reader::Idle(r) => r,
            Reader::Done => {
                st.reader = Reader::Done;
                return Ok(false);
            }
            Reader::Busy => {
                if wait {
                    self.read.wait(st);
                }
                return Ok(wait);
            }
        };
        // The first batch small: a reply needs its first names soon, and a reader
        // often wants no more than a few (`ls | head`, a lookup by listing).
        let bytes = if self.big && self.len() == 2 {
            FIRST_BATCH_BYTES
        } else {
            usize::MAX
        };
        // Only the thread that holds the reader appends: the length stays until then, and
        // readers of the batches before go on meanwhile.
        let start = self.len();
        let read =
            MutexGuard::unlocked(st, || self.read_entries(&mut reader, start, bytes, subdirs));
        let (batch, more) = match read {
            Ok(r) => r,
            Err(e) => {
                st.reader = Reader::Idle(reader);
                self.read.notify_all();
                return Err(e);
            }
        };
        st.reader = if more {
            Reader::Idle(reader)
        } else {
            Reader::Done
        };
        if !batch.entries.is_empty() {
            let len = start + batch.len();
            st.batches.push(Arc::new(batch));
            self.len.store(len, Ordering::Relaxed);
        }
        self.read.notify_all();
        Ok(true)
    }

    /// Read one batch of at most `bytes` from `reader`: the listed entries, the first of
    /// them entry `start`, and whether the directory has more.
    fn read_entries(
        &self,
        reader: &mut sys::DirReader,
        start: usize,
        bytes: usize,
        subdirs: &mut Vec<OsString>,
    ) -> SysResult<(Batch, bool)> {
        // Sized for a full 32 KiB read of short names (one allocation each, mostly), and
        // shrunk to what was read: a small directory's listing stays small while cached.
        let mut batch = Batch::with_capacity(start, 1024, 16 * 1024);
        let more = reader.next_batch_each(bytes, |name, ino, dtype| {
            let Some((ino, dtype)) =
                lower_listed(&self.layers, &self.dir, self.dev, name, ino, dtype)
            else {
                return;
            };
            if self.warm && dtype == libc::DT_DIR {
                subdirs.push(name.to_os_string());
            }
            let dtype = if self.stand_ins && dtype == libc::DT_REG {
                libc::DT_UNKNOWN
            } else {
                dtype
            };
            batch.push(name, ino, dtype);
        })?;
        batch.names.shrink_to_fit();
        batch.entries.shrink_to_fit();
        Ok((batch, more))
    }

    /// A large directory (read ahead; few attributes in its first READDIRPLUS reply).
    pub fn is_big(&self) -> bool {
        self.big
    }

    /// Whether entries up to `target` should be read now, in the background; marks a
    /// background read as queued when so.
    fn wants_ahead(&self, target: usize) -> bool {
        let mut st = self.state.lock();
        if !self.big || matches!(st.reader, Reader::Done) || st.ahead_queued || self.len() >= target
        {
            return false;
        }
        st.ahead_queued = true;
        true
    }

    /// Read ahead up to entry `target` (in the background); the subdirectories found.
    fn read_ahead(&self, target: usize) -> Vec<OsString> {
        let mut subdirs = Vec::new();
        let mut st = self.state.lock();
        st.ahead_queued = false;
        while self.len() < target {
            match self.read_batch(&mut st, &mut subdirs, false) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // The request that needs these entries reads them and reports it.
                    log::debug!("reading ahead in a listing: {e}");
                    break;
                }
            }
        }
        subdirs
    }
}

/// Positional listings by directory node (bounded by entries held, least recently used
/// out; a listing read to its end is dropped, as the kernel keeps it).
pub struct StreamCache {
    streams: ShardedLru<DirStream>,
}

impl StreamCache {
    pub fn new(budget_entries: usize) -> Self {
        StreamCache {
            streams: ShardedLru::new(budget_entries, 16),
        }
    }
}

impl OverlayFs {
    /// The positional listing that continues at `offset` in directory `node`: `None`
    /// when `offset` continues a merged listing, or the directory is merged and
    /// `offset` starts one.
    pub(super) fn stream_at(
        &self,
        node: &Arc<Node>,
        offset: u64,
    ) -> SysResult<Option<Arc<DirStream>>> {
        if offset >= HASHED_OFFSETS {
            return Ok(None);
        }
        let cached = self.streams.streams.get(node.serial);
        // Continuing: the listing it started in, merged since or not.
        if offset > 2
            && let Some(s) = cached
        {
            return Ok(Some(s));
        }
        let view = self.dir_view(node)?;
        let [lower] = &view.lowers[..] else {
            // Never more or fewer lowers than it had: a position came from elsewhere.
            return Ok(None);
        };
        if offset <= 2 && view.upper.is_some() {
            return Ok(None);
        }
        if let Some(s) = cached {
            return Ok(Some(s));
        }
        let s = Arc::new(DirStream::new(
            self.res.layers.clone(),
            lower.clone(),
            self.layers().any_override(),
            self.opts.prefetch && node.first_listing(),
            node.ino,
            self.parent_ino(node)?,
        )?);
        self.streams.streams.put(node.serial, s.clone());
        Ok(Some(s))
    }

    /// Serve `s` from `offset`: entries go to `add` until it says the reply is full.
    pub(super) fn serve_stream(
        &self,
        node: &Arc<Node>,
        s: &Arc<DirStream>,
        offset: u64,
        mut add: impl FnMut(DirEntryRef<'_>) -> bool,
    ) -> SysResult<()> {
        node.mark_listed();
        // Entry i has offset i + 1: the one after `offset` is entry `offset`.
        let mut i = offset as usize;
        let mut subdirs = Vec::new();
        let first = i;
        let mut ahead = false;
        let result = loop {
            let (batch, at) = match s.batch_at(i, &mut subdirs) {
                Ok(Some(b)) => b,
                Ok(None) => {
                    if i == first {
                        // Asked past the end: the kernel holds what it read.
                        self.streams
                            .streams
                            .remove_if(node.serial, |v| Arc::ptr_eq(v, s));
                    }
                    break Ok(());
                }
                Err(e) => break Err(e),
            };
            if !ahead && i >= 2 {
                // Read on in the background while this reply is filled and taken in
                // (past `.` and `..`: the first batch of names is read here, at once).
                ahead = true;
                self.read_ahead(s, i + AHEAD);
            }
            let mut full = false;
            for k in at..batch.len() {
                if add(batch.get(k)) {
                    full = true;
                    break;
                }
                i += 1;
            }
            if full {
                break Ok(());
            }
        };
        self.warm_names(s, subdirs);
        if i > first {
            self.streams.streams.reweigh(node.serial, s);
        }
        result
    }

    /// Have `s` read up to entry `target` in the background.
    fn read_ahead(&self, s: &Arc<DirStream>, target: usize) {
        if !s.wants_ahead(target) {
            return;
        }
        let stream = s.clone();
        let dir = s.dir.clone();
        let cpu = sys::sched::current_cpu();
        let queued = self.prefetch.run_soon(Box::new(move || {
            super::prefetch::keep_off_cpu(cpu);
            let subdirs = stream.read_ahead(target);
            Some((vec![dir], subdirs))
        }));
        if !queued {
            s.state.lock().ahead_queued = false;
        }
    }

    fn warm_names(&self, s: &DirStream, subdirs: Vec<OsString>) {
        if !subdirs.is_empty() {
            self.prefetch.warm(vec![s.dir.clone()], subdirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::ffi::OsStr;

    use super::*;
    use crate::overlay::fs::ROOT_INO;
    use crate::overlay::readdir::DirReply;
    use crate::overlay::types::Ctx;

    /// What a reply of at most `.0` entries carries: names and offsets.
    struct Buf(usize, Vec<(OsString, u64)>);

    impl DirReply for Buf {
        fn add(&mut self, e: DirEntryRef<'_>) -> bool {
            let full = self.1.len() == self.0;
            if !full {
                self.1.push((e.name.to_os_string(), e.off));
            }
            full
        }
    }

    fn read(fs: &OverlayFs, ino: u64, offset: u64, cap: usize) -> Vec<(OsString, u64)> {
        let mut b = Buf(cap, Vec::new());
        fs.readdir_into(ino, offset, &mut b).unwrap();
        b.1
    }

    /// Read a whole listing from `offset` in replies of `cap` entries.
    fn read_all(fs: &OverlayFs, ino: u64, mut offset: u64, cap: usize) -> Vec<(OsString, u64)> {
        let mut all = Vec::new();
        loop {
            let got = read(fs, ino, offset, cap);
            let Some(last) = got.last() else {
                return all;
            };
            offset = last.1;
            all.extend(got);
        }
    }

    fn names(l: &[(OsString, u64)]) -> Vec<String> {
        l.iter()
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect()
    }

    /// A layer with `d/` holding `n` files and a whiteout of a name no layer has.
    fn layer(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("l");
        std::fs::create_dir_all(lower.join("d")).unwrap();
        for i in 0..n {
            std::fs::write(lower.join(format!("d/f{i:05}")), b"x").unwrap();
        }
        std::fs::write(lower.join("d/.wh.gone"), b"").unwrap();
        (t, lower)
    }

    #[test]
    fn a_batch_gives_back_each_name_whole_with_its_offset() {
        use std::os::unix::ffi::OsStrExt;
        let names: [&[u8]; 4] = [b"a", b"a-much-longer-name", b"\xff\xfe not utf-8", b"z"];
        let mut b = Batch::with_capacity(10, 0, 0);
        for (i, n) in names.iter().enumerate() {
            b.push(OsStr::from_bytes(n), 100 + i as u64, libc::DT_REG);
        }
        assert_eq!(b.len(), 4);
        for (k, n) in names.iter().enumerate() {
            let e = b.get(k);
            assert_eq!(e.name.as_bytes(), *n);
            assert_eq!((e.ino, e.off), (100 + k as u64, 11 + k as u64));
        }
    }

    #[test]
    fn a_one_layer_directory_lists_by_position_and_resumes_anywhere() {
        let (_t, lower) = layer(3000);
        let fs = OverlayFs::new(crate::overlay::Options::new(vec![lower], None, None)).unwrap();
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
        let all = read_all(&fs, d, 0, 700);
        assert_eq!(
            all.len(),
            3002,
            "every name once, with . and .., no whiteout"
        );
        assert_eq!(names(&all[..2]), [".", ".."]);
        let offs: Vec<u64> = all.iter().map(|e| e.1).collect();
        assert_eq!(offs, (1..=3002).collect::<Vec<u64>>(), "positions in order");
        let set: HashSet<_> = names(&all).into_iter().collect();
        assert_eq!(set.len(), 3002);
        assert!(!set.contains(".wh.gone"));
        // Read to its end, the listing is dropped; a reader resuming in the middle
        // (telldir/seekdir, the kernel's cache ending early) gets the same rest.
        for at in [1, 2, 3, 999, 1500, 3001] {
            let rest = read_all(&fs, d, at, 256);
            assert_eq!(rest, all[at as usize..], "resumed at {at}");
        }
        assert!(read(&fs, d, 3002, 10).is_empty(), "nothing past the end");
    }

    #[test]
    fn a_reader_goes_on_through_the_lower_directory_once_it_is_merged() {
        let (t, lower) = layer(2000);
        let upper = t.path().join("u");
        let work = t.path().join("w");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let fs = OverlayFs::new(crate::overlay::Options::new(
            vec![lower],
            Some(upper.clone()),
            Some(work),
        ))
        .unwrap();
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
        let head = read(&fs, d, 0, 500);
        let at = head.last().unwrap().1;
        assert!(at < HASHED_OFFSETS);
        // The directory changes: a name added, one removed (a whiteout in a new upper
        // directory): it is merged from now on.
        // As whoever runs the test (root, or nobody in CI's unprivileged tier).
        let me = Ctx {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            pid: 0,
        };
        fs.create(me, d, OsStr::new("new"), 0o644, libc::O_WRONLY)
            .unwrap();
        let removed = &head.last().unwrap().0.clone();
        // Another reader at the same place reads to the end (the daemon drops its copy
        // then), and the first one's next read builds it again, from the lower layer.
        let other = names(&read_all(&fs, d, at, 300));
        assert!(other.contains(&"f01999".to_string()) || head.iter().any(|e| e.0 == "f01999"));
        fs.unlink(d, OsStr::new(removed)).unwrap();
        assert!(upper.join("d").is_dir());
        // The reader that had read 500 names goes on: each name that stayed once.
        let rest = read_all(&fs, d, at, 300);
        let mut seen: Vec<String> = names(&head);
        seen.extend(names(&rest));
        let set: HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(set.len(), seen.len(), "no name twice");
        for i in 0..2000 {
            let n = format!("f{i:05}");
            assert!(
                set.contains(&n) || n == *removed.to_string_lossy(),
                "{n} lost"
            );
        }
        // A new listing is the merged one, in hash order.
        let merged = read_all(&fs, d, 0, 700);
        let m = names(&merged);
        assert!(m.contains(&"new".to_string()));
        assert!(!m.contains(&removed.to_string_lossy().into_owned()));
        assert_eq!(m.len(), 2002);
        assert!(merged[2..].iter().all(|e| e.1 >= HASHED_OFFSETS));
    }

    #[test]
    fn the_first_readdirplus_reply_of_a_large_directory_carries_few_attributes() {
        use crate::overlay::readdir::{DirPlusReply, FIRST_PLUS_ENTRIES};
        use crate::overlay::types::Entry;
        struct Plus(usize);
        impl DirPlusReply for Plus {
            fn add(&mut self, _: DirEntryRef<'_>, _: Option<&Entry>) -> bool {
                self.0 += 1;
                false
            }
        }
        let (_t, lower) = layer(3000);
        let fs = OverlayFs::new(crate::overlay::Options::new(vec![lower], None, None)).unwrap();
        let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
        let mut p = Plus(0);
        fs.readdirplus_into(d, 0, &mut p).unwrap();
        assert_eq!(p.0, FIRST_PLUS_ENTRIES);
        // Later READDIRPLUS requests (the reader looked names up meanwhile) are not.
        let mut p = Plus(0);
        fs.readdirplus_into(d, FIRST_PLUS_ENTRIES as u64, &mut p)
            .unwrap();
        assert_eq!(p.0, 3002 - FIRST_PLUS_ENTRIES);
        // A small directory's first reply is not capped.
        let root = fs
            .lookup(ROOT_INO, OsStr::new("d"))
            .map(|_| ROOT_INO)
            .unwrap();
        let mut p = Plus(0);
        fs.readdirplus_into(root, 0, &mut p).unwrap();
        assert_eq!(p.0, 3, ". .. d");
    }
}
