//! What only `layerfs snapshotter` promises: containers run on while it is killed and
//! started again on the same socket and store; its snapshots are in the layerfs store,
//! where `layerfs system df` counts them and the shared base once, and a layer a layerfs
//! image has is kept once (containerd's unpacking of it ends on the store's layer dir).
//!
//! Not here: a `Prepare` answered "already exists" for a chain the store has (nothing
//! unpacked at all; unit-tested in `snapshotter::snapshots`). containerd asks so only
//! when the `Prepare` carries the label `containerd.io/snapshot.ref` = chain id (then it
//! finds the snapshot with `Walk` and records it: `metadata/snapshot.go`), and containerd
//! 1.6's `ctr` never sends it: `ctr images pull` fetches every blob, then unpacks through
//! `rootfs.ApplyLayerWithOpts` without labels, and `ctr snapshots prepare` takes none. The
//! unpacker behind the Go client's `Pull(WithPullUnpack)` (the CRI plugin, nerdctl) does;
//! a test of it needs such a client.

use std::fs;
use std::path::Path;
use std::process::Command;

use support::cli;
use support::mounts::mounts_below;

use crate::containerd::can_run;
use crate::fixture::*;

const LAYERFS: &str = "layerfs";

/// `du -s -B1`: bytes on disk.
fn du(p: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-s")
        .arg("-B1")
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success(), "du {}", p.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `layerfs --root STORE system df --format json`.
fn system_df(store: &Path) -> serde_json::Value {
    serde_json::from_str(&cli::ok(store, &["system", "df", "--format", "json"])).unwrap()
}

fn disk_usage(store: &Path) -> u64 {
    system_df(store)["DiskUsage"].as_u64().expect("DiskUsage")
}

/// A container runs on through `kill -9` and SIGTERM of the snapshotter, which starts
/// again on the same socket and store and picks up where it was.
fn restart_under_running_containers(mount_type: Option<&str>) {
    if !can_run() {
        return;
    }
    let imgs = Images::get();
    let mut e = Engine::with(true, mount_type);
    e.pull(LAYERFS, "a");
    e.run_detached(LAYERFS, "a", "long");
    e.exec("long", "w1", &["sh", "-c", "echo before > /root/mark"]);
    let before = e.snapshots_listing(LAYERFS);
    let snap = e.snapshotter.as_ref().unwrap();
    let (mount_dir, socket) = (snap.mount_dir.clone(), snap.socket.clone());
    // With the default mount type the root is a union mount under the mount dir; with
    // `overlay` containerd mounts the kernel's overlayfs itself.
    assert_eq!(
        mounts_below(&mount_dir).is_empty(),
        mount_type == Some("overlay"),
        "mounts under {}",
        mount_dir.display()
    );

    e.snapshotter.as_mut().unwrap().kill9();
    // The container's root is served apart from the snapshotter.
    assert_eq!(
        e.exec("long", "r1", &["cat", "/srv/a/link", "/root/mark"]),
        format!("{A_HELLO_TEXT}before\n")
    );
    e.exec("long", "w2", &["sh", "-c", "echo while-down >> /root/mark"]);
    // containerd cannot reach it meanwhile.
    let err = e.snap_fails(LAYERFS, &["ls"]);
    assert!(err.starts_with("ctr: "), "{err}");

    e.snapshotter.as_mut().unwrap().restart();
    e.wait_for_snapshotter(LAYERFS);
    assert_eq!(e.snapshots_listing(LAYERFS), before);
    assert_eq!(
        e.exec("long", "r2", &["cat", "/root/mark"]),
        "before\nwhile-down\n"
    );
    assert_eq!(
        e.run_sh(LAYERFS, "a", "after", "cat /srv/a/hello.txt"),
        A_HELLO_TEXT
    );
    e.snap_ok(LAYERFS, &["prepare", "work", &imgs.a_chain()]);
    e.snap_ok(LAYERFS, &["commit", "done", "work"]);
    e.snap_ok(LAYERFS, &["rm", "done"]);

    // SIGTERM: it exits, the mounts stay.
    let st = e.snapshotter.as_mut().unwrap().stop();
    assert!(st.is_some_and(|s| s.success()), "exit on SIGTERM: {st:?}");
    assert_eq!(
        e.exec("long", "r3", &["cat", "/srv/a/hello.txt"]),
        A_HELLO_TEXT
    );
    e.snapshotter.as_mut().unwrap().restart();
    e.wait_for_snapshotter(LAYERFS);
    assert_eq!(e.snapshots_listing(LAYERFS), before);
    e.remove_container("long");

    // The guards leave nothing: no mount under the mount dir, no daemon serving one.
    let dir = mount_dir.as_os_str().as_encoded_bytes().to_vec();
    drop(e);
    assert_eq!(mounts_below(&mount_dir), Vec::<std::path::PathBuf>::new());
    let daemons: Vec<u32> = support::procs::processes()
        .into_iter()
        .filter(|p| {
            p.args
                .iter()
                .any(|a| a.windows(dir.len()).any(|w| w == dir))
        })
        .map(|p| p.pid)
        .collect();
    assert_eq!(
        daemons,
        Vec::<u32>::new(),
        "processes still naming {}",
        mount_dir.display()
    );
    assert!(!socket.exists() || std::os::unix::net::UnixStream::connect(&socket).is_err());
}

#[test]
fn restart_under_running_containers_fuse() {
    restart_under_running_containers(None);
}

#[test]
fn restart_under_running_containers_overlay() {
    restart_under_running_containers(Some("overlay"));
}

#[test]
fn system_df_counts_snapshots_and_the_shared_base_once() {
    if !can_run() {
        return;
    }
    let imgs = Images::get();
    let e = Engine::with(true, None);
    for name in ["a", "b"] {
        e.pull(LAYERFS, name);
        e.pull("overlayfs", name);
    }
    let store = e.store();
    let df = system_df(&store);
    let disk = df["DiskUsage"].as_u64().unwrap();
    let rootfs = du(&support::debian::rootfs());
    let overlay = du(&e.ctrd.snapshotter_dir("overlayfs"));
    // The base once: twice would be over 2x the rootfs.
    assert!(
        disk > rootfs * 9 / 10 && disk < rootfs * 3 / 2,
        "layerfs DiskUsage {disk} for a {rootfs}-byte base: {df:#}"
    );
    assert!(
        overlay > rootfs * 9 / 10 && overlay < rootfs * 3 / 2,
        "overlayfs {overlay}"
    );
    assert!(
        disk <= overlay + overlay / 10,
        "layerfs {disk} vs overlayfs {overlay} bytes"
    );
    let on_disk = du(&store);
    assert!(
        disk.abs_diff(on_disk) < on_disk / 10,
        "DiskUsage {disk} vs du of the store {on_disk}"
    );
    // An active snapshot's writes count, and go with it.
    e.snap_ok(LAYERFS, &["prepare", "big", &imgs.a_chain()]);
    let m = e.path("big");
    let mut g = e.mount_snapshot(LAYERFS, "big", &m);
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(m.join("root/big"), &data).unwrap();
    g.unmount();
    let with = disk_usage(&store);
    assert!(
        with >= disk + (30 << 20),
        "32 MiB written: {disk} -> {with}"
    );
    // `ctr snapshots rm` drops containerd's record; its garbage collector removes the
    // snapshot from the snapshotter soon after.
    e.snap_ok(LAYERFS, &["rm", "big"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let after = disk_usage(&store);
        if after < disk + (2 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot removed: {disk} -> {after}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Sizes as `ctr snapshots usage` prints them ("16.0 KiB", "205.5 MiB"), in bytes.
fn ctr_size(s: &str) -> f64 {
    let (n, unit) = s.split_once(' ').unwrap_or((s, "B"));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("size {s:?}"));
    let k = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => panic!("unit {u:?} in {s:?}"),
    };
    n * k
}

/// Images that a layerfs store has already: containerd's unpacking of them ends on the
/// store's own layer dirs (the fresh copy goes at commit), so the base and the image's
/// layer are on disk once; `rmi` of the layerfs image keeps the layers the snapshots
/// stand on. And the snapshots' `Usage` adds up to `system df`'s Snapshots row.
#[test]
fn layers_the_store_has_are_not_stored_again() {
    if !can_run() {
        return;
    }
    let e = Engine::with(true, None);
    let store = e.store();
    cli::ok(&store, &["pull", "-q", &e.image_ref("a")]);
    let pulled = disk_usage(&store);
    e.pull(LAYERFS, "a");
    let rows = e.snapshots(LAYERFS);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let after = disk_usage(&store);
    assert!(
        after < pulled + (4 << 20),
        "containerd's unpacking stayed on disk: {pulled} -> {after}"
    );
    let snaps = du(&store.join("snapshots"));
    assert!(snaps < 1 << 20, "snapshot dirs hold {snaps} bytes");
    // The container runs on the store's layers.
    assert_eq!(
        e.run_sh(LAYERFS, "a", "on-store", "cat /srv/a/hello.txt"),
        A_HELLO_TEXT
    );
    // The layerfs image goes; its layers stay for the snapshots.
    let id = cli::ok(&store, &["images", "-q"]);
    cli::ok(&store, &["rmi", id.trim()]);
    assert!(
        disk_usage(&store) > pulled / 2,
        "rmi removed the layers the snapshots stand on"
    );
    assert_eq!(
        e.run_sh(LAYERFS, "a", "after-rmi", "cat /srv/a/hello.txt"),
        A_HELLO_TEXT
    );

    // Usage and df agree: an active snapshot with 8 MiB of its own.
    let imgs = Images::get();
    e.snap_ok(LAYERFS, &["prepare", "w", &imgs.a_chain()]);
    let m = e.path("w");
    let mut g = e.mount_snapshot(LAYERFS, "w", &m);
    fs::write(m.join("root/eight"), vec![7u8; 8 << 20]).unwrap();
    g.unmount();
    let usage = e.snap_ok(LAYERFS, &["usage"]);
    let total: f64 = usage
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| ctr_size(&format!("{} {}", f[1], f[2])))
        })
        .sum();
    let df = system_df(&store)["Snapshots"]["Size"].as_f64().unwrap();
    assert!(
        df >= 8.0 * 1048576.0 && (total - df).abs() <= df / 100.0 + 4096.0,
        "ctr snapshots usage {total} vs system df {df}:\n{usage}"
    );
}

/// The numbered snapshot dirs of a store (`ROOT/snapshots/<n>`).
fn snapshot_dirs(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.join("snapshots"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<u64>().is_ok() || n.starts_with("removing-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `kill -9` of the snapshotter in the middle of unpacking (at a few points of a
/// pull): after a restart the pull is done again and works, a container runs on it,
/// and once the image is gone containerd's garbage collection (its `Remove`s and
/// `Cleanup`) leaves no snapshot dir behind: nothing half-made was kept or lost.
#[test]
fn killed_mid_pull_the_store_stays_whole() {
    if !can_run() {
        return;
    }
    for delay_ms in [300u64, 900, 1800] {
        let e = Engine::with(true, None);
        let store = e.store();
        let image = e.image_ref("a");
        let pulled = std::thread::scope(|s| {
            let pull = s.spawn(|| {
                e.ctrd.ctr(&[
                    "images",
                    "pull",
                    "--plain-http",
                    "--snapshotter",
                    LAYERFS,
                    &image,
                ])
            });
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            // The guard sits in the engine; kill it through a raw pid, as a crash would.
            let pid = e.snapshotter.as_ref().unwrap().pid().expect("running");
            support::procs::signal(pid, rustix::process::Signal::KILL);
            pull.join().unwrap().status.success()
        });
        let mut e = e;
        e.snapshotter.as_mut().unwrap().restart();
        e.wait_for_snapshotter(LAYERFS);
        e.pull(LAYERFS, "a");
        assert_eq!(
            e.run_sh(LAYERFS, "a", "after-crash", "cat /srv/a/hello.txt"),
            A_HELLO_TEXT,
            "killed after {delay_ms} ms (first pull succeeded: {pulled})"
        );
        // `--sync`: garbage collection now. containerd paces its scheduled collections
        // by how long the last one took, and one that ran while the snapshotter was down
        // (killed above) stalled on it: the next scheduled one came minutes later
        // (observed: no image, container or lease left, the snapshots still in
        // containerd's records after 120 s).
        e.ctrd.ok(&["images", "rm", "--sync", &image]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = snapshot_dirs(&store);
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "killed after {delay_ms} ms: snapshot dirs left after the image went: {left:?}\n{}",
                e.snapshotter.as_ref().unwrap().log()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
