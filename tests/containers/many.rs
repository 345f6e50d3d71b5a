//! Fifty containers of one image mounted at once: all work, each sees only its own
//! writes, `ps` lists them all, and the memory each mount costs is measured (printed
//! with `--nocapture`).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use support::mounts::*;
use support::procs::*;
use support::store_env::*;

const N: usize = 50;

#[test]
fn fifty_containers_mounted_at_once() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let t0 = Instant::now();
    let ids: Vec<String> = (0..N)
        .map(|i| env.create("sample:1", &format!("c{i:02}")))
        .collect();
    let created = t0.elapsed();
    let t1 = Instant::now();
    let mounts: Vec<PathBuf> = (0..N).map(|i| env.mount(&format!("c{i:02}"))).collect();
    let mounted = t1.elapsed();
    for (i, m) in mounts.iter().enumerate() {
        fs::write(m.join("etc/os-release"), format!("container {i}\n")).unwrap();
    }
    for (i, m) in mounts.iter().enumerate() {
        assert_eq!(
            fs::read_to_string(m.join("etc/os-release")).unwrap(),
            format!("container {i}\n")
        );
        assert_eq!(fs::read(m.join("srv/app/version")).unwrap(), b"v2\n");
    }
    let ps = env.ok(&["ps"]);
    assert_eq!(ps.lines().count(), N + 1, "{ps}");
    for id in &ids {
        assert!(ps.contains(&id[..12]));
    }

    // Memory of each daemon: right after mounting and after a full walk.
    let pids: Vec<u32> = ids
        .iter()
        .map(|id| container_daemon_pid(id).expect("daemon"))
        .collect();
    let rss = |pids: &[u32]| -> Vec<u64> { pids.iter().map(|p| rss_kib(*p)).collect() };
    let after_mount = rss(&pids);
    for m in &mounts {
        let st = Command::new("find").arg(m).arg("-ls").output().unwrap();
        assert!(st.status.success());
    }
    let after_walk = rss(&pids);
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64 / 1024.0;
    let max = |v: &[u64]| *v.iter().max().unwrap() as f64 / 1024.0;
    eprintln!(
        "{N} containers: create {:.2} s, mount {:.2} s ({:.0} ms each); daemon RSS after mount avg {:.1} MiB (max {:.1}), after find -ls avg {:.1} MiB (max {:.1}); total {:.0} MiB",
        created.as_secs_f64(),
        mounted.as_secs_f64(),
        mounted.as_secs_f64() * 1000.0 / N as f64,
        avg(&after_mount),
        max(&after_mount),
        avg(&after_walk),
        max(&after_walk),
        after_walk.iter().sum::<u64>() as f64 / 1024.0,
    );
    assert!(
        max(&after_walk) < 64.0,
        "a daemon uses {} MiB",
        max(&after_walk)
    );

    // Unmount them all in one command; every daemon ends.
    let names: Vec<String> = (0..N).map(|i| format!("c{i:02}")).collect();
    let mut args = vec!["umount"];
    args.extend(names.iter().map(String::as_str));
    env.ok(&args);
    assert!(mounts.iter().all(|m| !is_mounted(m)));
    for p in pids {
        wait_gone(p);
    }
    assert_eq!(env.ok(&["ps"]).lines().count(), 1);
    let mut args = vec!["rm"];
    args.extend(names.iter().map(String::as_str));
    env.ok(&args);
    assert!(env.ps().is_empty());
}
