//! Crashes: `kill -9` of the daemon at a random moment during a write-heavy workload
//! (new files, copy-ups of large lower files, appends, renames of files and of lower
//! directories), many times over the same upper dir. After each kill the dead mount is
//! cleaned and a fresh daemon mounted; then every write that was fsynced before the
//! kill must be there, no half-copied file may be visible, and the work dir must be
//! empty. At the end the kernel's overlayfs must read the same upper dir.
//!
//! Size: `LAYERFS_CRASH_ROUNDS` (default 12; the full run uses 50),
//! `LAYERFS_CRASH_SEED` (default 3).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::daemon::*;
use support::files::*;
use support::mounts::*;
use support::report::*;
use support::rng::*;
use support::shell::*;
use support::stack::*;
use support::tree::*;
use support::watchdog::*;

const BIG: usize = 4;
const BIG_SIZE: usize = 8 << 20;
const DIRS: usize = 3;

/// What the test knows about the merged tree.
#[derive(Default)]
struct Records {
    /// Files written and fsynced through the mount (relative path -> bytes).
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// Marker writes into big lower files: (file, offset) -> (bytes, fsynced).
    markers: BTreeMap<(usize, usize), (Vec<u8>, bool)>,
    /// Lower directory k currently lives at `D{k}` (false) or `E{k}` (true); `None`
    /// while a rename of it was cut by the kill.
    dir_moved: Vec<Option<bool>>,
}

type Shared = Arc<Mutex<Records>>;

fn big_orig(k: usize) -> Vec<u8> {
    let mut r = Rng::new(1000 + k as u64);
    r.bytes(BIG_SIZE)
}

fn lower_dir_file(d: usize, f: usize) -> Vec<u8> {
    format!("lower dir {d} file {f}\n")
        .repeat(50 + f)
        .into_bytes()
}

/// Check the merged view against the records; returns every problem found.
fn verify(mnt: &Path, rec: &Records) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, want) in &rec.files {
        match fs::read(mnt.join(rel)) {
            Ok(got) if &got == want => {}
            Ok(got) => bad.push(format!(
                "{}: {} bytes, want {} (fsynced content changed)",
                rel.display(),
                got.len(),
                want.len()
            )),
            Err(e) => bad.push(format!("{}: fsynced file unreadable: {e}", rel.display())),
        }
    }
    for k in 0..BIG {
        let p = mnt.join(format!("big{k}"));
        let got = match fs::read(&p) {
            Ok(g) => g,
            Err(e) => {
                bad.push(format!("big{k}: {e}"));
                continue;
            }
        };
        if got.len() != BIG_SIZE {
            bad.push(format!(
                "big{k}: size {} after crash, want {BIG_SIZE} (half-copied)",
                got.len()
            ));
            continue;
        }
        let mut want = big_orig(k);
        for ((f, off), (bytes, acked)) in &rec.markers {
            if *f != k {
                continue;
            }
            let here = &got[*off..*off + bytes.len()];
            if *acked || here == &bytes[..] {
                want[*off..*off + bytes.len()].copy_from_slice(bytes);
            }
        }
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            bad.push(format!(
                "big{k}: content differs at {first:?} (lost marker or torn copy)"
            ));
        }
    }
    for (d, state) in rec.dir_moved.iter().enumerate() {
        let names = [format!("D{d}"), format!("E{d}")];
        let present: Vec<&String> = names.iter().filter(|n| mnt.join(n).exists()).collect();
        if present.len() != 1 {
            bad.push(format!("lower dir {d}: present as {present:?}"));
            continue;
        }
        if let Some(moved) = state {
            let want = &names[usize::from(*moved)];
            if present[0] != want {
                bad.push(format!(
                    "lower dir {d}: at {} but renamed to {want}",
                    present[0]
                ));
            }
        }
        for f in 0..5 {
            let p = mnt.join(present[0]).join(format!("f{f}"));
            if fs::read(&p).ok() != Some(lower_dir_file(d, f)) {
                bad.push(format!("{}: lower file lost or changed", p.display()));
            }
        }
    }
    bad
}

fn workload(tid: usize, round: u64, mnt: PathBuf, rec: Shared, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(round * 100 + tid as u64);
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        match tid {
            0 => {
                // New files, written and fsynced.
                let rel = PathBuf::from(format!("n{}/r{round}-{n}", rng.below(DIRS as u64)));
                let len = rng.range(1, 200_000) as usize;
                let data = rng.bytes(len);
                let p = mnt.join(&rel);
                let _ = fs::create_dir_all(p.parent().unwrap());
                let r = File::create(&p).and_then(|f| {
                    f.write_all_at(&data, 0)?;
                    f.sync_all()
                });
                match r {
                    Ok(()) => {
                        rec.lock().unwrap().files.insert(rel, data);
                    }
                    Err(_) => return,
                }
            }
            1 => {
                // Copy-ups of big lower files: marker writes, fsynced.
                let k = rng.below(BIG as u64) as usize;
                let off = (rng.below((BIG_SIZE / 8 - 1) as u64) * 8) as usize;
                let bytes = format!("R{round:03}N{n:03}").into_bytes()[..8].to_vec();
                rec.lock()
                    .unwrap()
                    .markers
                    .insert((k, off), (bytes.clone(), false));
                let r = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(mnt.join(format!("big{k}")))
                    .and_then(|f| {
                        f.write_all_at(&bytes, off as u64)?;
                        f.sync_all()
                    });
                match r {
                    Ok(()) => {
                        rec.lock().unwrap().markers.insert((k, off), (bytes, true));
                    }
                    Err(_) => return,
                }
            }
            _ => {
                // Renames of recorded files and of lower directories; appends.
                if rng.chance(30) {
                    let d = rng.below(DIRS as u64) as usize;
                    let cur = rec.lock().unwrap().dir_moved[d];
                    let Some(moved) = cur else { continue };
                    let (from, to) = if moved {
                        (format!("E{d}"), format!("D{d}"))
                    } else {
                        (format!("D{d}"), format!("E{d}"))
                    };
                    rec.lock().unwrap().dir_moved[d] = None;
                    match fs::rename(mnt.join(from), mnt.join(to)) {
                        Ok(()) => rec.lock().unwrap().dir_moved[d] = Some(!moved),
                        Err(_) => return,
                    }
                } else {
                    let pick = {
                        let r = rec.lock().unwrap();
                        let keys: Vec<&PathBuf> = r.files.keys().collect();
                        if keys.is_empty() {
                            None
                        } else {
                            Some(keys[rng.below(keys.len() as u64) as usize].clone())
                        }
                    };
                    let Some(rel) = pick else { continue };
                    let data = rec.lock().unwrap().files.remove(&rel).unwrap();
                    if rng.chance(50) {
                        let to = PathBuf::from(format!("n{}/m{round}-{n}", rng.below(DIRS as u64)));
                        match fs::rename(mnt.join(&rel), mnt.join(&to)) {
                            Ok(()) => {
                                rec.lock().unwrap().files.insert(to, data);
                            }
                            Err(_) => return,
                        }
                    } else {
                        let len = rng.range(1, 5000) as usize;
                        let extra = rng.bytes(len);
                        let r = OpenOptions::new()
                            .append(true)
                            .open(mnt.join(&rel))
                            .and_then(|f| {
                                f.write_all_at(&extra, data.len() as u64)?;
                                f.sync_all()
                            });
                        match r {
                            Ok(()) => {
                                let mut d = data;
                                d.extend_from_slice(&extra);
                                rec.lock().unwrap().files.insert(rel, d);
                            }
                            Err(_) => return,
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn kill_daemon_during_writes() {
    if support::skip_unless_root() {
        return;
    }
    let rounds = env_u64("LAYERFS_CRASH_ROUNDS", 12);
    let seed = env_u64("LAYERFS_CRASH_SEED", 3);
    let mut report = Report::new("crash", "kill-9");
    let t = tempfile::tempdir().unwrap();
    let stack = new_stack(t.path(), 2);
    let mnt = t.path().join("m");
    for k in 0..BIG {
        fs::write(stack.lowers[k % 2].join(format!("big{k}")), big_orig(k)).unwrap();
    }
    for d in 0..DIRS {
        for f in 0..5 {
            write(
                &stack.lowers[f % 2].join(format!("D{d}/f{f}")),
                &lower_dir_file(d, f),
            );
        }
    }
    let rec: Shared = Arc::new(Mutex::new(Records {
        dir_moved: vec![Some(false); DIRS],
        ..Default::default()
    }));
    let mut rng = Rng::new(seed);
    let wd = Watchdog::new("crash", 120 + rounds * 30, vec![mnt.clone()]);
    for round in 0..rounds {
        let mut daemon = match Daemon::start(&stack, &mnt, &[]) {
            Ok(d) => d,
            Err(e) => {
                report.check(&format!("round {round}: remount after kill"), Err(e));
                break;
            }
        };
        report.ok(
            &format!("round {round}: work dir empty after mount"),
            work_leftovers(&stack).is_empty(),
            || format!("{:?}", work_leftovers(&stack)),
        );
        let bad = verify(&mnt, &rec.lock().unwrap());
        report.ok(
            &format!("round {round}: fsynced data intact, nothing half-copied"),
            bad.is_empty(),
            || bad.join("\n"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|tid| {
                let (m, r, s) = (mnt.clone(), rec.clone(), stop.clone());
                std::thread::spawn(move || workload(tid, round, m, r, s))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.range(5, 400)));
        daemon.kill9();
        stop.store(true, Ordering::Release);
        for w in workers {
            let _ = w.join();
        }
        // Clean the dead mount: `umount -l` or `fusermount3 -u`, in turn.
        let cleaned = if round % 2 == 0 {
            sh(&format!("umount -l {}", q(&mnt))).status.success()
        } else {
            sh(&format!("fusermount3 -u {}", q(&mnt))).status.success()
        };
        report.ok(
            &format!("round {round}: dead mount cleaned"),
            cleaned && !is_mounted(&mnt),
            || "mount still there".into(),
        );
        clean_mount(&mnt);
    }
    // Last look, with layerfs and with the kernel's overlayfs.
    let rec = rec.lock().unwrap();
    {
        let mut daemon = Daemon::start(&stack, &mnt, &[]).unwrap();
        let bad = verify(&mnt, &rec);
        report.ok("final: fsynced data intact", bad.is_empty(), || {
            bad.join("\n")
        });
        report.ok(
            "final: work dir empty",
            work_leftovers(&stack).is_empty(),
            || format!("{:?}", work_leftovers(&stack)),
        );
        let _ = umount(&mnt, false);
        report.ok(
            "final: daemon exits after umount",
            daemon.wait_exit(Duration::from_secs(10)).is_some(),
            || "still running".into(),
        );
    }
    let km = t.path().join("k");
    let kg = mount_kernel(&stack, &km);
    let bad = verify(&km, &rec);
    let _all_read = snapshot(&km, &SnapOpts::default());
    drop(kg);
    report.ok("kernel overlay reads the same data", bad.is_empty(), || {
        bad.join("\n")
    });
    report.check("no hang", wd.disarm());
    report.finish();
}
