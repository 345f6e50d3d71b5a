//! Concurrency: many threads and processes doing random operations in shared
//! directories at once. Two writers meeting on a lower file for the first time (one
//! copy-up, no lost write), renames racing lookups, readdir during creates and deletes.
//! No deadlock (a watchdog bounds every run), no daemon crash, no lost fsynced write;
//! afterwards the upper dir mounts with the kernel's overlayfs and every file reads.
//!
//! Size: `LAYERFS_CONC_OPS` operations per thread (default 2000), `LAYERFS_CONC_THREADS`
//! (default 6), `LAYERFS_CONC_FILES` lower files raced on by first writers (default 24),
//! `LAYERFS_CONC_SEED` (default 7), `LAYERFS_CONC_DIRS` one-layer directories that become
//! merged while listed (default 12). `LAYERFS_CONC_MOUNT_OPTS`: extra mount options for
//! every mount (e.g. `readdirplus=off`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use support::daemon::*;
use support::files::*;
use support::procs::*;
use support::report::*;
use support::rng::*;
use support::shell::*;
use support::stack::*;
use support::tree::*;
use support::watchdog::*;

/// Errors a racing operation may legitimately get.
fn expected_race_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT)
            | Some(libc::EEXIST)
            | Some(libc::ENOTEMPTY)
            | Some(libc::EISDIR)
            | Some(libc::ENOTDIR)
            | Some(libc::EINVAL)
            // O_NOFOLLOW open of a name that another thread made a symlink.
            | Some(libc::ELOOP)
    )
}

/// Extra mount options from `LAYERFS_CONC_MOUNT_OPTS` (comma-separated).
fn mount_opts() -> Vec<&'static str> {
    let v = std::env::var("LAYERFS_CONC_MOUNT_OPTS").unwrap_or_default();
    let v: &'static str = Box::leak(v.into_boxed_str());
    v.split(',').filter(|o| !o.is_empty()).collect()
}

type Problems = Arc<Mutex<Vec<String>>>;
/// Files written and fsynced by one thread, never touched by the others.
type Precious = Arc<Mutex<Vec<(PathBuf, Vec<u8>)>>>;

fn problem(p: &Problems, s: String) {
    let mut v = p.lock().unwrap();
    if v.len() < 50 {
        eprintln!("problem: {s}");
        v.push(s);
    }
}

fn take(p: &Problems) -> Result<(), String> {
    let v = p.lock().unwrap();
    if v.is_empty() {
        Ok(())
    } else {
        Err(v.join("\n"))
    }
}

/// Every file of the merged tree reads through the kernel's overlayfs mounted on the
/// same directories, and shows the same tree as a fresh layerfs mount.
fn kernel_agrees(t: &Path, stack: &Stack, report: &mut Report) {
    let lm = t.join("again");
    let km = t.join("kernel");
    let lg = mount_layerfs(stack, &lm, &mount_opts());
    let ours = snapshot(
        &lm,
        &SnapOpts {
            dir_nlink: false,
            mtimes: false,
            ..SnapOpts::default()
        },
    );
    drop(lg);
    let kg = mount_kernel(stack, &km);
    let theirs = snapshot(
        &km,
        &SnapOpts {
            dir_nlink: false,
            mtimes: false,
            ..SnapOpts::default()
        },
    );
    drop(kg);
    let d = diff_trees(&ours, &theirs);
    report.ok("kernel overlay shows the same tree", d.is_empty(), || {
        d.join("\n")
    });
}

/// Several threads and processes open the same lower file for writing at the same
/// moment, each writing its own block: one copy-up, every write kept.
#[test]
fn first_writers_race_on_lower_files() {
    if support::skip_unless_root() {
        return;
    }
    let nfiles = env_u64("LAYERFS_CONC_FILES", 24) as usize;
    let seed = env_u64("LAYERFS_CONC_SEED", 7);
    let mut report = Report::new("concurrency", "first-writers");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 2);
    let mnt = t.path().join("m");
    let mut rng = Rng::new(seed);
    let size = 1 << 20;
    let mut orig = Vec::new();
    for k in 0..nfiles {
        let data = rng.bytes(size);
        let layer = &stack.lowers[k % 2];
        write(&layer.join(format!("d{}/f{k}", k % 3)), &data);
        orig.push(data);
    }
    let mut daemon = Daemon::start(&stack, &mnt, &mount_opts()).unwrap();
    let wd = Watchdog::new("first writers", 300, vec![mnt.clone()]);
    const THREADS: usize = 4;
    const PROCS: usize = 2;
    let block = 4096;
    #[allow(clippy::needless_range_loop)]
    for k in 0..nfiles {
        let path = mnt.join(format!("d{}/f{k}", k % 3));
        let barrier = Arc::new(Barrier::new(THREADS));
        let errors: Problems = Default::default();
        // Processes: dd opening the file O_WRONLY and writing one block each.
        let mut procs = Vec::new();
        for p in 0..PROCS {
            let slot = THREADS + p;
            let ch = (b'A' + slot as u8) as char;
            procs.push(
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "head -c {block} /dev/zero | tr '\\0' '{ch}' | dd of={} bs={block} seek={} conv=notrunc,fsync status=none",
                        q(&path),
                        slot * 16
                    ))
                    .spawn()
                    .unwrap(),
            );
        }
        let handles: Vec<_> = (0..THREADS)
            .map(|slot| {
                let (b, path, errors) = (barrier.clone(), path.clone(), errors.clone());
                std::thread::spawn(move || {
                    b.wait();
                    let r = OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)
                        .and_then(|f| {
                            f.write_all_at(
                                &vec![b'A' + slot as u8; block],
                                (slot * 16 * block) as u64,
                            )?;
                            f.sync_all()
                        });
                    if let Err(e) = r {
                        problem(&errors, format!("writer {slot} on {}: {e}", path.display()));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for mut p in procs {
            let st = p.wait().unwrap();
            if !st.success() {
                problem(
                    &errors,
                    format!("dd writer on {} exited {st}", path.display()),
                );
            }
        }
        let mut want = orig[k].clone();
        for slot in 0..THREADS + PROCS {
            let off = slot * 16 * block;
            want[off..off + block].fill(b'A' + slot as u8);
        }
        let got = fs::read(&path).unwrap_or_default();
        let r = take(&errors).and_then(|_| {
            if got == want {
                Ok(())
            } else {
                let first = got.iter().zip(&want).position(|(a, b)| a != b);
                Err(format!(
                    "{}: content differs (len {} vs {}, first difference at {first:?})",
                    path.display(),
                    got.len(),
                    want.len()
                ))
            }
        });
        report.check(&format!("f{k}: one copy-up, no lost write"), r);
    }
    report.check("no hang", wd.disarm());
    report.ok("daemon alive", pid_alive(daemon.pid()), || {
        "daemon died".into()
    });
    daemon.stop();
    // Exactly one upper copy per file, nothing left in the work dir, lowers untouched.
    #[allow(clippy::needless_range_loop)]
    for k in 0..nfiles {
        let up = stack
            .upper
            .as_ref()
            .unwrap()
            .join(format!("d{}/f{k}", k % 3));
        report.ok(&format!("f{k} copied up once"), up.is_file(), || {
            format!("{} missing", up.display())
        });
        let low = stack.lowers[k % 2].join(format!("d{}/f{k}", k % 3));
        report.ok(
            &format!("f{k} lower untouched"),
            fs::read(&low).unwrap() == orig[k],
            || "lower file changed".into(),
        );
    }
    report.ok("work dir empty", work_leftovers(&stack).is_empty(), || {
        format!("{:?}", work_leftovers(&stack))
    });
    kernel_agrees(t.path(), &stack, &mut report);
    report.finish();
}

const DIRS: usize = 4;
const CHURN: u64 = 40;

/// One random operation on shared names; returns an error only for unexpected results.
fn churn_op(rng: &mut Rng, mnt: &Path) -> Result<(), String> {
    let d = |rng: &mut Rng| mnt.join(format!("d{}", rng.below(DIRS as u64)));
    let name = |rng: &mut Rng| {
        if rng.chance(30) {
            format!("f{}", rng.below(20))
        } else {
            format!("c{}", rng.below(CHURN))
        }
    };
    let p = d(rng).join(name(rng));
    let op = rng.below(12);
    let r: std::io::Result<()> = match op {
        0 | 1 => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(rng.chance(50))
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .and_then(|f| f.write_all_at(b"churn data\n", rng.below(3) * 4096)),
        2 => fs::read(&p).map(|_| ()),
        3 => fs::symlink_metadata(&p).map(|_| ()),
        4 => fs::remove_file(&p),
        5 | 6 => {
            let to = d(rng).join(name(rng));
            fs::rename(&p, &to)
        }
        7 => {
            let s = d(rng).join(format!("s{}", rng.below(6)));
            if rng.chance(50) {
                fs::create_dir(&s)
            } else {
                fs::remove_dir(&s)
            }
        }
        8 => {
            // Move a subdirectory (maybe a lower one: a redirect) between dirs.
            let s = d(rng).join(format!("s{}", rng.below(6)));
            let to = d(rng).join(format!("s{}", rng.below(6)));
            fs::rename(&s, &to)
        }
        9 => fs::hard_link(&p, d(rng).join(name(rng))),
        10 => std::os::unix::fs::symlink("target-that-does-not-exist", &p),
        _ => fs::read_dir(d(rng)).and_then(|rd| {
            for e in rd {
                e?;
            }
            Ok(())
        }),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if expected_race_error(&e) => Ok(()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(format!("op {op} on {}: {e}", p.display())),
    }
}

/// Threads and shell processes churn shared directories (creates, writes, unlinks,
/// renames of files and of lower directories, links, readdir) while each thread also
/// writes, fsyncs and records files of its own; a reader lists the directories all the
/// time and checks that every recorded file shows, exactly once.
#[test]
fn random_operations_in_shared_dirs() {
    if support::skip_unless_root() {
        return;
    }
    let ops = env_u64("LAYERFS_CONC_OPS", 2000);
    let threads = env_u64("LAYERFS_CONC_THREADS", 6) as usize;
    let seed = env_u64("LAYERFS_CONC_SEED", 7);
    let mut report = Report::new("concurrency", "random-ops");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 2);
    let mnt = t.path().join("m");
    let mut rng = Rng::new(seed);
    for d in 0..DIRS {
        for f in 0..20 {
            let layer = &stack.lowers[f % 2];
            write(
                &layer.join(format!("d{d}/f{f}")),
                &rng.bytes(100 + f * 1000),
            );
        }
        for s in 0..3 {
            write(
                &stack.lowers[1].join(format!("d{d}/s{s}/inner")),
                b"inside a lower dir",
            );
        }
    }
    let mut daemon = Daemon::start(&stack, &mnt, &mount_opts()).unwrap();
    let wd = Watchdog::new("random ops", 600 + ops / 10, vec![mnt.clone()]);
    let problems: Problems = Default::default();
    // (path, content) of files written and fsynced, never touched by churn.
    let precious: Precious = Default::default();
    let stop = Arc::new(AtomicBool::new(false));

    let reader = {
        let (mnt, precious, problems, stop) = (
            mnt.clone(),
            precious.clone(),
            problems.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut lists = 0u64;
            while !stop.load(Ordering::Acquire) {
                for d in 0..DIRS {
                    let dir = mnt.join(format!("d{d}"));
                    let before: Vec<PathBuf> = precious
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(p, _)| p.clone())
                        .filter(|p| p.parent() == Some(&dir))
                        .collect();
                    let names: Vec<String> = match fs::read_dir(&dir) {
                        Ok(rd) => rd
                            .filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect(),
                        Err(e) => {
                            problem(&problems, format!("readdir {}: {e}", dir.display()));
                            continue;
                        }
                    };
                    let set: BTreeSet<&String> = names.iter().collect();
                    if set.len() != names.len() {
                        problem(&problems, format!("duplicate names in {}", dir.display()));
                    }
                    for p in before {
                        let n = p.file_name().unwrap().to_string_lossy().into_owned();
                        if !set.contains(&n) {
                            problem(
                                &problems,
                                format!("readdir of {} misses {n}", dir.display()),
                            );
                        }
                    }
                    lists += 1;
                }
            }
            lists
        })
    };
    let shells: Vec<_> = (0..2)
        .map(|k| {
            let m = q(&mnt);
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "cd {m} || exit 1; i=0; while [ $i -lt {n} ]; do i=$((i+1)); \
                     mv d{a}/c$((i % 40)) d{b}/c$(((i * 7) % 40)) 2>/dev/null; \
                     cat d{b}/f$((i % 20)) >/dev/null 2>&1; ls -la d{a} >/dev/null 2>&1; \
                     echo $i > d{b}/c$((i % 40)) 2>/dev/null; rm -f d{a}/c$(((i * 3) % 40)); done",
                    n = ops / 4,
                    a = k,
                    b = k + 2
                ))
                .spawn()
                .unwrap()
        })
        .collect();
    let workers: Vec<_> = (0..threads)
        .map(|tid| {
            let (mnt, precious, problems) = (mnt.clone(), precious.clone(), problems.clone());
            let mut rng = Rng::new(seed ^ ((tid as u64 + 1) * 0x1234_5678));
            std::thread::spawn(move || {
                let mut n = 0u64;
                for i in 0..ops {
                    if i % 10 == 0 {
                        let p = mnt.join(format!("d{}/p-{tid}-{n}", rng.below(DIRS as u64)));
                        n += 1;
                        let len = rng.range(1, 20000) as usize;
                        let data = rng.bytes(len);
                        let r = File::create(&p).and_then(|f| {
                            f.write_all_at(&data, 0)?;
                            f.sync_all()
                        });
                        match r {
                            Ok(()) => precious.lock().unwrap().push((p, data)),
                            Err(e) => problem(&problems, format!("precious {}: {e}", p.display())),
                        }
                    } else if let Err(e) = churn_op(&mut rng, &mnt) {
                        problem(&problems, e);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    for mut s in shells {
        let _ = s.wait();
    }
    stop.store(true, Ordering::Release);
    let lists = reader.join().unwrap();
    report.check(
        "threads and processes: only expected errors",
        take(&problems),
    );
    report.passed(ops * threads as u64 + lists);
    // Every fsynced file is there with its bytes.
    let all = precious.lock().unwrap().clone();
    let lost: Vec<String> = all
        .iter()
        .filter(|(p, d)| fs::read(p).ok().as_ref() != Some(d))
        .map(|(p, _)| p.display().to_string())
        .collect();
    report.ok("no lost fsynced write", lost.is_empty(), || {
        format!("{} of {} lost: {:?}", lost.len(), all.len(), lost)
    });
    report.check("no hang", wd.disarm());
    report.ok("daemon alive", pid_alive(daemon.pid()), || {
        "daemon died".into()
    });
    daemon.stop();
    report.ok("work dir empty", work_leftovers(&stack).is_empty(), || {
        format!("{:?}", work_leftovers(&stack))
    });
    kernel_agrees(t.path(), &stack, &mut report);
    // And the kernel sees every fsynced file.
    let km = t.path().join("kernel2");
    let kg = mount_kernel(&stack, &km);
    let lost_k: Vec<String> = all
        .iter()
        .filter(|(p, d)| {
            let rel = p.strip_prefix(&mnt).unwrap();
            fs::read(km.join(rel)).ok().as_ref() != Some(d)
        })
        .map(|(p, _)| p.display().to_string())
        .collect();
    drop(kg);
    report.ok(
        "kernel overlay reads every fsynced file",
        lost_k.is_empty(),
        || format!("{lost_k:?}"),
    );
    report.finish();
}

/// A thread that creates and deletes names `new-K-N` (N below `cycle`) in `dir` until
/// `stop`, after `start` lets it go.
fn churner(
    dir: PathBuf,
    k: usize,
    cycle: u64,
    stop: Arc<AtomicBool>,
    start: Arc<Barrier>,
    problems: Problems,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        start.wait();
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            let p = dir.join(format!("new-{k}-{}", i % cycle));
            let r = if (i / cycle).is_multiple_of(2) {
                File::create(&p).map(|_| ())
            } else {
                fs::remove_file(&p)
            };
            if let Err(e) = r
                && !expected_race_error(&e)
            {
                problem(&problems, format!("{}: {e}", p.display()));
            }
            i += 1;
        }
    })
}

/// Count each name a listing gives; a failed entry goes to `bad`.
fn count_names(
    entries: impl Iterator<Item = std::io::Result<fs::DirEntry>>,
    counts: &mut BTreeMap<String, u32>,
    bad: &mut Vec<String>,
) {
    for e in entries {
        match e {
            Ok(e) => {
                *counts
                    .entry(e.file_name().to_string_lossy().into_owned())
                    .or_default() += 1
            }
            Err(e) => bad.push(format!("readdir entry: {e}")),
        }
    }
}

/// The end of a listing test: what was checked, the churn's errors, no hang, the daemon
/// alive; then the daemon stops.
fn finish_listings(
    mut report: Report,
    listings: u64,
    bad: Vec<String>,
    problems: &Problems,
    wd: Watchdog,
    mut daemon: Daemon,
) {
    report.passed(listings);
    report.check(
        "every listing complete, no duplicates",
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("\n"))
        },
    );
    report.check("churn: only expected errors", take(problems));
    report.check("no hang", wd.disarm());
    report.ok("daemon alive", pid_alive(daemon.pid()), || {
        "daemon died".into()
    });
    daemon.stop();
    report.finish();
}

/// A large lower directory (several readdir calls per listing) listed over and over
/// while other threads create and delete names in it: every lower name shows exactly
/// once in every listing.
#[test]
fn readdir_during_creates_and_deletes() {
    if support::skip_unless_root() {
        return;
    }
    let entries = env_u64("LAYERFS_CONC_DIR_ENTRIES", 3000);
    let rounds = env_u64("LAYERFS_CONC_OPS", 2000);
    let report = Report::new("concurrency", "readdir-churn");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 2);
    let mnt = t.path().join("m");
    let big = "big";
    for i in 0..entries {
        let layer = &stack.lowers[(i % 2) as usize];
        write(&layer.join(format!("{big}/lower-{i:06}")), b"");
    }
    let daemon = Daemon::start(&stack, &mnt, &mount_opts()).unwrap();
    let wd = Watchdog::new("readdir churn", 600, vec![mnt.clone()]);
    let problems: Problems = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let dir = mnt.join(big);
    let start = Arc::new(Barrier::new(1));
    let churners: Vec<_> = (0..3)
        .map(|k| {
            churner(
                dir.clone(),
                k,
                500,
                stop.clone(),
                start.clone(),
                problems.clone(),
            )
        })
        .collect();
    let mut listings = 0;
    let mut bad = Vec::new();
    for _ in 0..(rounds / 50).max(10) {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        match fs::read_dir(&dir) {
            Ok(rd) => count_names(rd, &mut counts, &mut bad),
            Err(e) => bad.push(format!("opendir: {e}")),
        }
        let lower: Vec<_> = counts
            .iter()
            .filter(|(n, _)| n.starts_with("lower-"))
            .collect();
        if lower.len() as u64 != entries || lower.iter().any(|(_, c)| **c != 1) {
            bad.push(format!(
                "listing {listings}: {} lower names (want {entries}), duplicates: {:?}",
                lower.len(),
                counts
                    .iter()
                    .filter(|(_, c)| **c > 1)
                    .take(5)
                    .collect::<Vec<_>>()
            ));
        }
        if counts.values().any(|c| *c > 1) {
            bad.push(format!("listing {listings}: a new name shows twice"));
        }
        listings += 1;
        if bad.len() > 5 {
            break;
        }
    }
    stop.store(true, Ordering::Release);
    for c in churners {
        let _ = c.join();
    }
    finish_listings(report, listings, bad, &problems, wd, daemon);
}

/// Directories that one layer has are listed by position, as they are read; the first
/// change makes one merged. Here that change comes while a listing is under way, from
/// several threads creating and deleting names in it, and the listing goes on: each of
/// `LAYERFS_CONC_DIRS` such directories (default 12, 1,500 lower names each) is listed
/// while it changes, then listed again merged while the changes go on. Every lower name
/// shows exactly once in every listing; no name shows twice.
#[test]
fn listings_of_one_layer_dirs_that_become_merged() {
    if support::skip_unless_root() {
        return;
    }
    let dirs = env_u64("LAYERFS_CONC_DIRS", 12);
    let entries = 1500u64;
    let report = Report::new("concurrency", "one-layer-dirs-merge");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 2);
    let mnt = t.path().join("m");
    for d in 0..dirs {
        for i in 0..entries {
            write(&stack.lowers[0].join(format!("p{d}/lower-{i:05}")), b"");
        }
    }
    // The other layer has a directory too: the root is merged, these are not.
    write(&stack.lowers[1].join("q/x"), b"");
    let daemon = Daemon::start(&stack, &mnt, &mount_opts()).unwrap();
    let wd = Watchdog::new("one-layer listings", 600, vec![mnt.clone()]);
    let problems: Problems = Default::default();
    let mut bad = Vec::new();
    let mut listings = 0;
    let check = |counts: &BTreeMap<String, u32>, what: String, bad: &mut Vec<String>| {
        let lower = counts.keys().filter(|n| n.starts_with("lower-")).count() as u64;
        if lower != entries || counts.values().any(|c| *c != 1) {
            bad.push(format!(
                "{what}: {lower} lower names (want {entries}), twice: {:?}",
                counts
                    .iter()
                    .filter(|(_, c)| **c > 1)
                    .take(5)
                    .collect::<Vec<_>>()
            ));
        }
    };
    for d in 0..dirs {
        let dir = mnt.join(format!("p{d}"));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(4));
        let churners: Vec<_> = (0..3)
            .map(|k| {
                churner(
                    dir.clone(),
                    k,
                    50,
                    stop.clone(),
                    start.clone(),
                    problems.clone(),
                )
            })
            .collect();
        // The first listing starts (its first batch read) before any change.
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut rd = fs::read_dir(&dir).unwrap();
        if let Some(Ok(e)) = rd.next() {
            *counts
                .entry(e.file_name().to_string_lossy().into_owned())
                .or_default() += 1;
        }
        start.wait();
        // The directory is merged (it has an upper directory) before the listing goes on.
        let upper = stack.upper.as_ref().unwrap().join(format!("p{d}"));
        let t0 = std::time::Instant::now();
        while !upper.is_dir() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_micros(100));
        }
        count_names(rd, &mut counts, &mut bad);
        check(
            &counts,
            format!("p{d}, listed across its first change"),
            &mut bad,
        );
        listings += 1;
        for round in 0..5 {
            let mut counts: BTreeMap<String, u32> = BTreeMap::new();
            count_names(fs::read_dir(&dir).unwrap(), &mut counts, &mut bad);
            check(&counts, format!("p{d}, merged listing {round}"), &mut bad);
            listings += 1;
        }
        stop.store(true, Ordering::Release);
        for c in churners {
            let _ = c.join();
        }
        if bad.len() > 5 {
            break;
        }
    }
    finish_listings(report, listings, bad, &problems, wd, daemon);
}

/// Files and lower directories renamed back and forth while other threads look them up
/// and read them: a lookup finds the file or ENOENT, never another error or wrong bytes.
#[test]
fn renames_race_lookups() {
    if support::skip_unless_root() {
        return;
    }
    let rounds = env_u64("LAYERFS_CONC_OPS", 2000);
    let mut report = Report::new("concurrency", "rename-vs-lookup");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 2);
    let mnt = t.path().join("m");
    write(&stack.lowers[1].join("a/file"), b"the file's bytes");
    write(&stack.lowers[1].join("a/dir/deep/leaf"), b"leaf bytes");
    write(&stack.lowers[0].join("a/dir/top"), b"top bytes");
    fs::create_dir_all(stack.lowers[1].join("b")).unwrap();
    let mut daemon = Daemon::start(&stack, &mnt, &mount_opts()).unwrap();
    let wd = Watchdog::new("rename vs lookup", 600, vec![mnt.clone()]);
    let problems: Problems = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|k| {
            let (mnt, stop, problems) = (mnt.clone(), stop.clone(), problems.clone());
            std::thread::spawn(move || {
                let checks: [(&str, &[u8]); 3] = [
                    ("file", b"the file's bytes"),
                    ("dir/deep/leaf", b"leaf bytes"),
                    ("dir/top", b"top bytes"),
                ];
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let (rel, want) = checks[(n as usize + k) % 3];
                    let side = if n.is_multiple_of(2) { "a" } else { "b" };
                    let p = mnt.join(side).join(rel);
                    match fs::read(&p) {
                        Ok(d) if d == want => {}
                        Ok(d) => problem(
                            &problems,
                            format!(
                                "{}: wrong bytes {:?}",
                                p.display(),
                                String::from_utf8_lossy(&d)
                            ),
                        ),
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => problem(&problems, format!("{}: {e}", p.display())),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut renames = 0;
    for i in 0..rounds {
        let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
        for n in ["file", "dir"] {
            if let Err(e) = fs::rename(mnt.join(from).join(n), mnt.join(to).join(n)) {
                problem(&problems, format!("rename {from}/{n} -> {to}/{n}: {e}"));
            } else {
                renames += 1;
            }
        }
    }
    stop.store(true, Ordering::Release);
    let mut reads = 0;
    for r in readers {
        reads += r.join().unwrap();
    }
    report.passed(renames + reads);
    report.check("lookups see the file or ENOENT", take(&problems));
    let end = if rounds.is_multiple_of(2) { "a" } else { "b" };
    report.ok(
        "contents survive the renames",
        fs::read(mnt.join(end).join("dir/deep/leaf"))
            .ok()
            .as_deref()
            == Some(&b"leaf bytes"[..])
            && fs::read(mnt.join(end).join("file")).ok().as_deref()
                == Some(&b"the file's bytes"[..]),
        || "moved tree lost content".into(),
    );
    report.check("no hang", wd.disarm());
    report.ok("daemon alive", pid_alive(daemon.pid()), || {
        "daemon died".into()
    });
    daemon.stop();
    std::thread::sleep(Duration::from_millis(10));
    kernel_agrees(t.path(), &stack, &mut report);
    report.finish();
}

/// Opens of a copied-up file race its unlink (which puts a whiteout where the file was):
/// an open gets the file or `ENOENT`, never the whiteout (a device: `ENXIO`) or anything
/// else that held the name for a moment.
#[test]
fn opens_race_unlinks_of_copied_up_files() {
    if support::skip_unless_root() {
        return;
    }
    let files = env_u64("LAYERFS_CONC_FILES", 24) as usize * 16;
    let mut report = Report::new("concurrency", "open-vs-unlink");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 1);
    let mnt = t.path().join("m");
    for i in 0..files {
        write(&stack.lowers[0].join(format!("f{i}")), b"lower bytes");
    }
    let mut daemon = Daemon::start(&stack, &mnt, &mount_opts()).unwrap();
    let wd = Watchdog::new("open vs unlink", 300, vec![mnt.clone()]);
    let problems: Problems = Default::default();
    let mut opens = 0;
    for i in 0..files {
        let p = mnt.join(format!("f{i}"));
        // Copied up: removing it now replaces the upper file with a whiteout.
        OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b" and more"))
            .unwrap();
        let go = Arc::new(Barrier::new(2));
        let reader = {
            let (p, go, problems) = (p.clone(), go.clone(), problems.clone());
            std::thread::spawn(move || {
                go.wait();
                for n in 0..100_000u64 {
                    match File::open(&p) {
                        Ok(_) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return n,
                        Err(e) => problem(&problems, format!("open {}: {e}", p.display())),
                    }
                }
                100_000
            })
        };
        go.wait();
        std::thread::sleep(Duration::from_micros(50));
        if let Err(e) = fs::remove_file(&p) {
            problem(&problems, format!("unlink {}: {e}", p.display()));
        }
        opens += reader.join().unwrap();
    }
    report.passed(opens);
    report.check("opens see the file or ENOENT", take(&problems));
    report.check("no hang", wd.disarm());
    daemon.stop();
    report.finish();
}
