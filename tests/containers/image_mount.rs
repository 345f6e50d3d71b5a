//! `image mount` / `image umount`: an image's layers mounted read-only, with no
//! container; shown by `images`, held against `rmi` and `system prune`, unmounted by
//! image or by mountpoint, and a killed daemon noticed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::process::Signal;

use support::files::errno_of;
use support::mounts::*;
use support::procs::*;
use support::store_env::*;
use support::tree::*;

fn images(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap()
}

fn disk_usage(env: &Env) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["system", "df", "--format", "json"])).unwrap();
    v["DiskUsage"].as_u64().unwrap()
}

/// The hex of the sample image's id.
fn sample_hex(env: &Env) -> String {
    env.inspect("sample:1")["Id"].as_str().unwrap()[7..].to_string()
}

fn image_mount(env: &Env, args: &[&str]) -> PathBuf {
    let mut a = vec!["image", "mount"];
    a.extend_from_slice(args);
    let p = PathBuf::from(env.line(&a));
    assert!(is_mounted(&p), "{} not mounted", p.display());
    p
}

/// Kill the daemon serving `mnt` (found by its mountpoint: tests running beside this one
/// mount the same sample image elsewhere).
fn kill_daemon(mnt: &Path) {
    let pid = daemon_pid(mnt).expect("the image mount's daemon");
    signal(pid, Signal::KILL);
    wait_gone(pid);
}

#[test]
fn image_mount_is_read_only_and_held() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let hex = sample_hex(&env);

    // Mounted inside the store, the path alone on stdout; read-only, no container.
    let m = image_mount(&env, &["sample:1"]);
    assert_eq!(m, env.root.join("images/mounts").join(&hex));
    let entry = mount_at(&m).unwrap();
    assert_eq!(entry.fstype, "fuse.layerfs");
    assert!(
        entry.source.starts_with("layerfs-image:") && entry.source.ends_with(&format!(":{hex}")),
        "{}",
        entry.source
    );
    assert!(env.ps().is_empty(), "no container record");
    assert_eq!(fs::read(m.join("srv/app/version")).unwrap(), b"v2\n");
    assert!(!m.join("etc/motd").exists(), "whiteout in the image");
    let ls = Command::new("ls")
        .arg("-A")
        .arg(m.join("etc"))
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("os-release") && !ls.contains("motd"), "{ls}");
    // The same tree a container of the image shows.
    let c = env.mounted("sample:1", "c1");
    assert_same_tree(
        &snapshot(&c, &SnapOpts::default()),
        &snapshot(&m, &SnapOpts::default()),
        "container vs image mount",
    );
    env.ok(&["rm", "-f", "c1"]);
    for (what, r) in [
        ("create", fs::write(m.join("new"), b"x")),
        ("write", fs::write(m.join("etc/os-release"), b"x")),
        ("mkdir", fs::create_dir(m.join("d"))),
        ("unlink", fs::remove_file(m.join("etc/passwd"))),
    ] {
        assert_eq!(errno_of(r), libc::EROFS, "{what}");
    }
    // Mounted below the store root, it is not counted as store disk use again: the
    // same use as once it is unmounted (and its mountpoint gone).
    let du = disk_usage(&env);
    // `system df` counts the mounted image as in use, and as no container.
    let df: serde_json::Value =
        serde_json::from_str(&env.ok(&["system", "df", "--format", "json"])).unwrap();
    assert_eq!(df["Images"]["Active"], 1, "{df:#}");
    assert_eq!(df["Images"]["Reclaimable"], 0, "{df:#}");
    assert_eq!(df["Containers"]["Total"], 0, "{df:#}");
    assert_eq!(df["PerImage"][0]["Containers"], 0, "{df:#}");

    // Mounting again gives the same path, by any name of the image; elsewhere is refused.
    for name in ["sample:1", "localhost/sample:1", &hex[..12]] {
        assert_eq!(image_mount(&env, &[name]), m, "{name}");
    }
    let err = env.fails(&[
        "image",
        "mount",
        "sample:1",
        env.path("other").to_str().unwrap(),
    ]);
    assert!(err.contains("already mounted at"), "{err}");

    // images: a MOUNTED AT column while an image is mounted; JSON always says.
    let table = env.ok(&["images"]);
    assert!(
        table.lines().next().unwrap().ends_with("MOUNTED AT"),
        "{table}"
    );
    assert!(table.contains(m.to_str().unwrap()), "{table}");
    let v = images(&env);
    assert_eq!(
        (&v[0]["Mounted"], &v[0]["MountedAt"]),
        (&true.into(), &m.to_str().unwrap().into())
    );
    assert!(v[0].get("DeadMounts").is_none());

    // rmi refuses a mounted image with one line and changes nothing; prune keeps it.
    let err = env.fails(&["rmi", "sample:1"]);
    assert!(
        err.contains("is mounted at") && err.contains("--force") && err.contains("image umount"),
        "{err}"
    );
    let prune = env.ok(&["system", "prune", "-a"]);
    assert!(!prune.contains("Deleted"), "{prune}");
    assert!(is_mounted(&m));
    env.inspect("sample:1");

    // A busy mount needs --force; umount by image removes the default mountpoint.
    let held = fs::File::open(m.join("etc/os-release")).unwrap();
    let err = env.fails(&["image", "umount", "sample:1"]);
    assert!(err.contains("is busy") && err.contains("--force"), "{err}");
    assert!(is_mounted(&m));
    drop(held);
    assert_eq!(env.ok(&["image", "umount", "sample:1"]), "sample:1\n");
    assert!(!is_mounted(&m) && !m.exists());
    assert_eq!(disk_usage(&env), du);
    let df: serde_json::Value =
        serde_json::from_str(&env.ok(&["system", "df", "--format", "json"])).unwrap();
    assert_eq!(df["Images"]["Active"], 0, "unmounted: {df:#}");
    assert!(!env.ok(&["images"]).contains("MOUNTED AT"));
    assert_eq!(images(&env)[0]["Mounted"], false);
    assert_eq!(
        env.fails(&["image", "umount", "sample:1"]),
        "layerfs: image sample:1 is not mounted"
    );

    // A mountpoint of one's own (created when missing), unmounted by its path; a path
    // where no image is mounted is one line.
    let custom = env.path("mnt");
    assert_eq!(
        image_mount(&env, &["sample:1", custom.to_str().unwrap()]),
        custom
    );
    let err = env.fails(&["image", "umount", env.root.to_str().unwrap()]);
    assert!(err.contains("no image is mounted at"), "{err}");
    env.ok(&["image", "umount", custom.to_str().unwrap()]);
    assert!(
        !is_mounted(&custom) && custom.is_dir(),
        "the user's dir stays"
    );

    // --all unmounts every image; then rmi --force unmounts before it removes.
    let m = image_mount(&env, &["sample:1"]);
    assert_eq!(
        env.ok(&["image", "umount", "--all"]),
        format!("{}\n", m.display())
    );
    assert!(!is_mounted(&m));
    let m = image_mount(&env, &["sample:1"]);
    let out = env.ok(&["rmi", "--force", "sample:1"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert!(!is_mounted(&m) && !m.exists());
    assert!(
        env.fails(&["image", "mount", "sample:1"])
            .contains("no such image")
    );
}

#[test]
fn killed_image_mount_daemon_is_noticed() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let m = image_mount(&env, &["sample:1"]);
    kill_daemon(&m);
    assert!(is_mounted(&m), "the kernel keeps the dead mount");
    // ECANCELED (io_uring) while the kernel tears the dead daemon's ring down.
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
    // images: not mounted, the dead mount named in JSON.
    assert!(!env.ok(&["images"]).contains("MOUNTED AT"));
    let v = images(&env);
    assert_eq!(v[0]["Mounted"], false);
    assert_eq!(v[0]["DeadMounts"][0], m.to_str().unwrap());
    // Mounting again detaches the dead mount and mounts afresh at the same place.
    assert_eq!(image_mount(&env, &["sample:1"]), m);
    assert_eq!(fs::read(m.join("srv/app/version")).unwrap(), b"v2\n");
    assert_eq!(mounts_below(Path::new(&m)).len(), 1, "one mount, not two");
    // umount detaches a dead one.
    kill_daemon(&m);
    env.ok(&["image", "umount", "sample:1"]);
    assert!(!is_mounted(&m));
    // A dead mount does not hold the image against rmi: it is detached.
    image_mount(&env, &["sample:1"]);
    kill_daemon(&m);
    let out = env.ok(&["rmi", "sample:1"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert!(!is_mounted(&m));
}

/// An image id is the same in every store holding the image: a store sees only its own
/// mounts of it.
#[test]
fn stores_do_not_share_image_mounts() {
    if support::skip_unless_root() {
        return;
    }
    let (a, b) = (Env::with_sample(), Env::with_sample());
    assert_eq!(sample_hex(&a), sample_hex(&b));
    let m = image_mount(&a, &["sample:1"]);
    assert_eq!(images(&b)[0]["Mounted"], false);
    assert!(!b.ok(&["images"]).contains("MOUNTED AT"));
    assert_eq!(
        b.fails(&["image", "umount", "sample:1"]),
        "layerfs: image sample:1 is not mounted"
    );
    let err = b.fails(&["image", "umount", m.to_str().unwrap()]);
    assert!(err.contains("no image is mounted at"), "{err}");
    assert_eq!(b.ok(&["image", "umount", "--all"]), "");
    b.ok(&["rmi", "sample:1"]);
    assert!(is_mounted(&m));
    assert_eq!(images(&a)[0]["Mounted"], true);
    a.ok(&["image", "umount", "sample:1"]);
    assert!(!is_mounted(&m));
}
