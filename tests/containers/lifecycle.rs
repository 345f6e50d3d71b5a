//! Container life cycle through the binary: create, ps, mount (default and custom
//! mountpoints, already mounted, by id prefix), umount (by name or mountpoint, busy),
//! rm (refused while mounted, -f), dead daemons, and every user error as one line that
//! changes nothing.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::process::Signal;

use support::cli::*;
use support::fingerprint::*;
use support::mounts::*;
use support::procs::*;
use support::samples::*;
use support::store_env::*;

#[test]
fn create_mount_ps_umount_rm() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let id = env.create("sample:1", "c1");
    let other = env.line(&["create", "sample:1"]);
    assert!(
        env.ok(&["create", "sample:1", "--name", "c3"])
            .ends_with('\n')
    );
    assert_ne!(id, other);

    // Mounted ones only by default; -a lists all, newest first, with the name and image.
    let ps = env.ok(&["ps"]);
    assert_eq!(ps.lines().count(), 1, "{ps}");
    assert!(ps.starts_with("CONTAINER ID   NAME"), "{ps}");
    let all = env.ps();
    assert_eq!(all.len(), 3);
    let c1 = all.iter().find(|c| c["Name"] == "c1").unwrap();
    assert_eq!(c1["ID"], id.as_str());
    assert_eq!(c1["Image"], "sample:1");
    assert_eq!(c1["Mounted"], false);
    let generated = all.iter().find(|c| c["ID"] == other.as_str()).unwrap();
    let gen_name = generated["Name"].as_str().unwrap();
    assert!(gen_name.contains('_'), "generated name {gen_name}");

    // Mount: the path alone on stdout, inside the store.
    let m = env.mount("c1");
    assert_eq!(m, env.root.join("containers").join(&id).join("merged"));
    assert_eq!(fs::read(m.join("srv/app/version")).unwrap(), b"v2\n");
    assert!(!m.join("etc/motd").exists(), "whiteout in the image");
    // Already mounted: the same path again, also by id prefix.
    assert_eq!(env.line(&["mount", "c1"]), m.to_str().unwrap());
    assert_eq!(env.line(&["mount", &id[..12]]), m.to_str().unwrap());
    let table = env.ok(&["ps"]);
    assert!(
        table.contains(&id[..12]) && table.contains(m.to_str().unwrap()),
        "{table}"
    );
    let first_col = table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(first_col, &id[..12], "ids are short by default: {table}");
    assert!(env.ok(&["ps", "--no-trunc"]).contains(&id));
    assert_eq!(env.ok(&["ps", "-q"]).trim(), &id[..12]);

    // Elsewhere while mounted: refused.
    let elsewhere = env.path("elsewhere");
    let err = env.fails(&["mount", "c1", elsewhere.to_str().unwrap()]);
    assert!(err.contains("already mounted at"), "{err}");

    // Unmount by mountpoint; then it is not mounted.
    env.ok(&["umount", m.to_str().unwrap()]);
    assert!(!is_mounted(&m));
    let err = env.fails(&["umount", "c1"]);
    assert_eq!(err, "layerfs: container c1 is not mounted");

    // A custom mountpoint (created when missing), by id prefix.
    let custom = env.path("mnt/c1");
    fs::create_dir_all(custom.parent().unwrap()).unwrap();
    assert_eq!(
        env.line(&["mount", &id[..8], custom.to_str().unwrap()]),
        custom.to_str().unwrap()
    );
    assert!(is_mounted(&custom));
    let c1 = env.ps().into_iter().find(|c| c["Name"] == "c1").unwrap();
    assert_eq!(c1["MountedAt"], custom.to_str().unwrap());
    // Relative mountpoint forms resolve to the same mount.
    assert_eq!(env.line(&["mount", "c1"]), custom.to_str().unwrap());
    env.ok(&["umount", "c1"]);
    assert!(!is_mounted(&custom));

    // Filters.
    let names = |args: &[&str]| -> Vec<String> {
        let v: Vec<serde_json::Value> = serde_json::from_str(&env.ok(args)).unwrap();
        let mut n: Vec<String> = v
            .iter()
            .map(|c| c["Name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    // A name filter matches part of a name: the generated name may hold a "c" too.
    let all = names(&["ps", "-a", "--format", "json"]);
    let with_c: Vec<String> = all.iter().filter(|n| n.contains('c')).cloned().collect();
    assert!(with_c.contains(&"c1".to_string()) && with_c.contains(&"c3".to_string()));
    assert_eq!(
        names(&["ps", "-a", "--filter", "name=c", "--format", "json"]),
        with_c
    );
    assert_eq!(
        names(&["ps", "-a", "--filter", "name=c3", "--format", "json"]),
        vec!["c3"]
    );
    assert_eq!(
        names(&[
            "ps",
            "-a",
            "-f",
            "ancestor=sample:1",
            "-f",
            "name=c3",
            "--format",
            "json"
        ]),
        vec!["c3"]
    );
    assert_eq!(
        names(&[
            "ps",
            "-a",
            "--filter",
            &format!("id={}", &id[..6]),
            "--format",
            "json"
        ]),
        vec!["c1"]
    );

    // rm by prefix and by name: records and dirs gone.
    assert_eq!(
        env.ok(&["rm", &id[..10], "c3"]),
        format!("{}\nc3\n", &id[..10])
    );
    assert!(!env.root.join("containers").join(&id).exists());
    let left = env.ps();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["ID"], other.as_str());
    let tmp: Vec<_> = fs::read_dir(env.root.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "leftovers in tmp: {tmp:?}");
}

#[test]
fn sizes_and_ancestors() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    env.import(&sibling_image(), "sibling:1");
    env.create("sample:1", "a");
    env.create("sibling:1", "b");
    let m = env.mount("a");
    fs::write(m.join("big"), vec![1u8; 123_456]).unwrap();
    env.ok(&["umount", "a"]);
    let v: Vec<serde_json::Value> =
        serde_json::from_str(&env.ok(&["ps", "-a", "-s", "--format", "json"])).unwrap();
    let a = v.iter().find(|c| c["Name"] == "a").unwrap();
    assert_eq!(a["SizeRw"], 123_456);
    let image_size = env.inspect("sample:1")["Size"].as_u64().unwrap();
    assert_eq!(a["SizeRootFs"].as_u64().unwrap(), image_size + 123_456);
    let t = env.ok(&["ps", "-a", "-s"]);
    assert!(t.contains("SIZE") && t.contains("123kB (virtual"), "{t}");

    // A container of an image made from `sample` counts `sample` as an ancestor.
    env.ok(&["commit", "a", "derived:1"]);
    env.create("derived:1", "d");
    let v: Vec<serde_json::Value> = serde_json::from_str(&env.ok(&[
        "ps",
        "-a",
        "--filter",
        "ancestor=sample:1",
        "--format",
        "json",
    ]))
    .unwrap();
    let mut n: Vec<&str> = v.iter().map(|c| c["Name"].as_str().unwrap()).collect();
    n.sort();
    assert_eq!(n, vec!["a", "d"]);
    // The store counts the containers: rmi refuses, df shows them.
    let err = env.fails(&["rmi", "sample:1"]);
    assert!(err.contains("used by container a"), "{err}");
    let df: serde_json::Value =
        serde_json::from_str(&env.ok(&["system", "df", "--format", "json"])).unwrap();
    assert_eq!(df["Containers"]["Total"], 3);
    assert!(df["Containers"]["Size"].as_u64().unwrap() >= 123_456);
}

#[test]
fn errors_are_one_line_and_change_nothing() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    env.create("sample:1", "c1");
    env.create("sample:1", "c2");
    let before = store_fingerprint(&env.root);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["create", "nope:1"], "no such image: nope:1"),
        (
            vec!["create", "sample:1", "--name", "c1"],
            "the container name \"c1\" is already in use",
        ),
        (
            vec!["create", "sample:1", "--name", "bad/name"],
            "invalid container name",
        ),
        (vec!["mount", "ghost"], "no such container: ghost"),
        (vec!["umount", "ghost"], "no such container: ghost"),
        (
            vec!["umount", "/no/such/mountpoint"],
            "no container is mounted at /no/such/mountpoint",
        ),
        (vec!["diff", "ghost"], "no such container: ghost"),
        (vec!["commit", "ghost", "x:1"], "no such container: ghost"),
        (vec!["commit", "c1", "Bad:Tag"], "invalid image reference"),
        (
            vec!["export", "ghost", "-o", "/tmp/never-written.tar"],
            "no such container: ghost",
        ),
        (vec!["rm", "c1", "ghost"], "no such container: ghost"),
        (vec!["shell", "ghost"], "no such container: ghost"),
        (
            vec!["save", "ghost:1", "-o", "/tmp/never-written.tar"],
            "no such image: ghost:1",
        ),
        (vec!["ps", "--filter", "colour=red"], "unknown filter"),
        (
            vec!["ps", "--filter", "ancestor=ghost"],
            "no such image: ghost",
        ),
        (vec!["mount", "c1", "-o", "upperdir=/tmp"], "set by layerfs"),
    ];
    for (args, want) in cases {
        let err = env.fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(
            store_fingerprint(&env.root),
            before,
            "{args:?} changed the store"
        );
    }
    assert!(!Path::new("/tmp/never-written.tar").exists());
    // `rm c1 ghost` removed nothing.
    assert_eq!(env.ps().len(), 2);

    // A mountpoint that is a file, or that holds another mount.
    let file = env.path("a-file");
    fs::write(&file, b"x").unwrap();
    let err = env.fails(&["mount", "c1", file.to_str().unwrap()]);
    assert!(err.contains("is not a directory"), "{err}");
    let m1 = env.mount("c1");
    let err = env.fails(&["mount", "c2", m1.to_str().unwrap()]);
    assert!(err.contains("is busy") && err.contains("layerfs:"), "{err}");
    assert!(
        !env.ps()
            .iter()
            .any(|c| c["Name"] == "c2" && c["Mounted"] == true)
    );

    // rm of a mounted container: refused (naming where), still there and mounted.
    let err = env.fails(&["rm", "c2", "c1"]);
    assert!(
        err.contains("container c1 is mounted at") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(env.ps().len(), 2);
    assert!(is_mounted(&m1));
    // -f unmounts first.
    env.ok(&["rm", "-f", "c1"]);
    assert!(!is_mounted(&m1));
    assert_eq!(env.ps().len(), 1);
}

#[test]
fn dead_daemon_is_detected_and_cleaned() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let id = env.create("sample:1", "c1");
    let m = env.mount("c1");
    fs::write(m.join("kept"), b"written before the crash").unwrap();
    let kill = |id: &str| {
        let pid = container_daemon_pid(id).expect("daemon pid");
        signal(pid, Signal::KILL);
        wait_gone(pid);
    };
    kill(&id);
    assert!(is_mounted(&m), "the kernel keeps the dead mount");
    // ENOTCONN, or ECONNABORTED when the kernel aborted the connection, or (served over
    // io_uring) ECANCELED while the kernel tears the dead daemon's ring down.
    let errno = fs::read_dir(&m).unwrap_err().raw_os_error();
    assert!(
        [
            Some(libc::ENOTCONN),
            Some(libc::ECONNABORTED),
            Some(libc::ECANCELED)
        ]
        .contains(&errno),
        "{errno:?}"
    );
    // ps: not mounted (the dead mount is named in JSON).
    assert_eq!(env.ok(&["ps"]).lines().count(), 1);
    let c = &env.ps()[0];
    assert_eq!(c["Mounted"], false);
    assert_eq!(c["DeadMounts"][0], m.to_str().unwrap());
    // umount cleans it.
    env.ok(&["umount", "c1"]);
    assert!(!is_mounted(&m));
    // Mount again, kill again: mount cleans up and mounts afresh; nothing was lost.
    let m = env.mount("c1");
    kill(&id);
    assert_eq!(env.line(&["mount", "c1"]), m.to_str().unwrap());
    assert_eq!(
        fs::read(m.join("kept")).unwrap(),
        b"written before the crash"
    );
    assert_eq!(env.ps()[0]["Mounted"], true);
    // rm -f copes with a dead mount too.
    kill(&id);
    env.ok(&["rm", "-f", "c1"]);
    assert!(!is_mounted(&m));
    assert!(env.ps().is_empty());
}

#[test]
fn busy_mount_needs_force() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let m = env.mounted("sample:1", "c1");
    let held = fs::File::open(m.join("etc/os-release")).unwrap();
    let err = env.fails(&["umount", "c1"]);
    assert!(err.contains("is busy") && err.contains("--force"), "{err}");
    assert!(is_mounted(&m));
    env.ok(&["umount", "--force", "c1"]);
    assert!(!is_mounted(&m));
    // The open file keeps working after the detach.
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
    assert!(s.starts_with("NAME=sample"));
    drop(held);
    assert_eq!(env.ps()[0]["Mounted"], false);
    // A relative mountpoint is resolved.
    let rel_parent: PathBuf = env.path("rel");
    fs::create_dir_all(&rel_parent).unwrap();
    let out = std::process::Command::new(layerfs_bin())
        .current_dir(&rel_parent)
        .args(["--root", env.root.to_str().unwrap(), "mount", "c1", "here"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        rel_parent.join("here").to_str().unwrap()
    );
    env.ok(&["umount", rel_parent.join("here").to_str().unwrap()]);
}

#[test]
fn container_outlives_its_image() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let id = env.create("sample:1", "c1");
    let m = env.mount("c1");
    fs::write(m.join("mine"), b"kept").unwrap();
    env.ok(&["umount", "c1"]);
    // rmi -f removes the image record; the layers stay for the container.
    env.ok(&["rmi", "-f", "sample:1"]);
    assert!(
        env.fails(&["inspect", "sample:1"])
            .contains("no such image")
    );
    let c = &env.ps()[0];
    assert_eq!(
        c["Image"],
        c["ImageID"].as_str().unwrap()[7..19],
        "short id shown"
    );
    let prune = env.ok(&["system", "prune", "-a"]);
    assert!(!prune.contains("Deleted layer"), "{prune}");
    let m = env.mount("c1");
    assert_eq!(fs::read(m.join("mine")).unwrap(), b"kept");
    assert_eq!(fs::read(m.join("srv/app/version")).unwrap(), b"v2\n");
    assert_eq!(env.ok(&["diff", "c1"]), "A /mine\n");
    // Commit needs the image's config: one clear line.
    let err = env.fails(&["commit", "c1", "x:1"]);
    assert!(err.contains("no longer in the store"), "{err}");
    // Once the container is gone, prune frees the layers.
    env.ok(&["rm", "-f", &id]);
    let prune = env.ok(&["system", "prune", "-a"]);
    assert_eq!(prune.matches("Deleted layer").count(), 2, "{prune}");
}
