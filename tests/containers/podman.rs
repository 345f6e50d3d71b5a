//! podman (4.3) with layerfs as the overlay driver's `mount_program`, running the Debian
//! test rootfs with runc: rootful a plain run, `--uidmap`/`--gidmap` and `--userns=auto`;
//! rootless a plain run and `--userns keep-id`. With a user namespace podman 4.3 hands the mount program lower dirs
//! that are idmapped mounts *and* `uidmapping=`: the container must still see its own
//! ids (root owns `/etc`, so runc can bind-mount `/etc/hosts`), the upper layer must hold
//! container ids, not host ids, and so must the layer `podman commit` makes of it. The
//! container's view is compared with the kernel's overlayfs under the same podman.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use support::debian;
use support::layerfs_bin;
use support::podman::*;
use support::privilege::say_skipped;

const IMAGE: &str = "localhost/bookworm:test";

/// Writes into `/etc` (a copy-up of a lower dir whose owner is root) and `/root`,
/// reads `/etc/hosts` (podman bind-mounts it onto a file it makes in the upper `/etc`),
/// creates in a setgid dir, chowns, and prints the owners it sees.
const SCRIPT: &str = r#"set -e
echo "ids $(id -u):$(id -g)"
grep -q localhost /etc/hosts
echo made > /etc/made
mkdir /root/dir
echo data > /root/dir/file
chown 1000:1000 /root/dir/file
touch /var/mail/spool
stat -c 'owner %u:%g %n' / /etc /etc/hosts /etc/made /root /root/dir /root/dir/file /var/mail /var/mail/spool /var/local /usr/bin/env
"#;

/// What [`SCRIPT`] prints in a container whose ids are its own.
const SEEN: &str = "ids 0:0
owner 0:0 /
owner 0:0 /etc
owner 0:0 /etc/hosts
owner 0:0 /etc/made
owner 0:0 /root
owner 0:0 /root/dir
owner 1000:1000 /root/dir/file
owner 0:8 /var/mail
owner 0:8 /var/mail/spool
owner 0:50 /var/local
owner 0:0 /usr/bin/env
";

/// On-disk owners [`SCRIPT`] leaves in the upper layer: container ids, whatever the
/// mapping (as a container without one leaves them, and as the layer must record them).
const STORED: &[(&str, (u32, u32))] = &[
    ("etc", (0, 0)),
    ("etc/made", (0, 0)),
    ("root", (0, 0)),
    ("root/dir", (0, 0)),
    ("root/dir/file", (1000, 1000)),
    ("var/mail", (0, 8)),
    ("var/mail/spool", (0, 8)),
];

fn podman_with_image(mount_program: Option<&Path>) -> Podman {
    let p = Podman::new(mount_program);
    p.import_dir(&debian::rootfs(), IMAGE);
    p
}

/// The container's output, without podman's warnings.
fn seen(out: &str) -> String {
    out.lines()
        .filter(|l| l.starts_with("ids ") || l.starts_with("owner "))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn check_upper(p: &Podman, container: &str) {
    let upper = p.upper_dir(container);
    for (rel, (uid, gid)) in STORED {
        let m = std::fs::symlink_metadata(upper.join(rel))
            .unwrap_or_else(|e| panic!("{rel} in the upper dir {}: {e}", upper.display()));
        assert_eq!(
            (m.uid(), m.gid()),
            (*uid, *gid),
            "owner of {rel} in the upper dir"
        );
    }
}

/// Mounts below `dir` that the mount table marks idmapped (podman's mounts of the
/// lower dirs it hands the mount program).
fn idmapped_mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 5
                && Path::new(f[4]).starts_with(dir)
                && f[5].split(',').any(|o| o == "idmapped")
        })
        .map(str::to_string)
        .collect()
}

fn finish(mut p: Podman) {
    p.cleanup();
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn podman_runs_on_layerfs() {
    if skip_without_podman() {
        return;
    }
    let p = podman_with_image(Some(&layerfs_bin()));
    let (ok, out) = p.sh(&["--name", "plain"], IMAGE, SCRIPT);
    assert!(ok, "{out}");
    assert_eq!(seen(&out), SEEN);
    check_upper(&p, "plain");
    finish(p);
}

#[test]
fn podman_uidmap_on_layerfs_sees_and_stores_container_ids() {
    if skip_without_podman() {
        return;
    }
    let map = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    let p = podman_with_image(Some(&layerfs_bin()));
    let mut args = vec!["--name", "mapped"];
    args.extend(map);
    let (ok, out) = p.sh(&args, IMAGE, SCRIPT);
    assert!(ok, "{out}");
    assert_eq!(seen(&out), SEEN);
    check_upper(&p, "mapped");

    // The layer a commit makes records container ids: for what the container made,
    // chowned and copied up (`etc`, the parent of podman's `/etc/hosts`).
    p.ok(&["commit", "mapped", "localhost/committed:1"]);
    let owners = p.top_layer_owners("localhost/committed:1");
    for (rel, (uid, gid)) in STORED {
        assert_eq!(
            owners.get(*rel),
            Some(&(u64::from(*uid), u64::from(*gid))),
            "owner of {rel} in the committed layer: {owners:?}"
        );
    }
    let host_ids: BTreeMap<_, _> = owners
        .iter()
        .filter(|(_, (u, g))| *u >= 65536 || *g >= 65536)
        .collect();
    assert!(host_ids.is_empty(), "host ids in the layer: {host_ids:?}");
    // The committed image runs (mapped again) and shows what the first container made.
    let mut args = vec!["--rm"];
    args.extend(map);
    let (ok, out) = p.sh(
        &args,
        "localhost/committed:1",
        "stat -c '%u:%g %n' /etc/made /root/dir/file /var/mail/spool; cat /etc/made",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("0:0 /etc/made\n1000:1000 /root/dir/file\n0:8 /var/mail/spool\nmade\n"),
        "{out}"
    );

    // podman detaches its idmapped mounts of the lower dirs once the mount program has
    // returned: the daemon's handles keep them alive for the whole life of the container.
    let mut args = vec!["run", "-d", "--name", "live"];
    let run_args = p.run_args();
    args.extend(run_args.iter().map(String::as_str));
    args.extend(map);
    args.extend([IMAGE, "sleep", "600"]);
    p.ok(&args);
    assert_eq!(idmapped_mounts_below(p.dir.path()), Vec::<String>::new());
    let out = p.ok(&[
        "exec",
        "live",
        "sh",
        "-c",
        "grep -c . /etc/os-release >/dev/null && ls /usr/bin | wc -l && touch /etc/later && stat -c '%u:%g' /etc/later /usr/bin/env",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].parse::<u32>().unwrap() > 100, "{out}");
    assert_eq!(&lines[1..], ["0:0", "0:0"], "{out}");
    p.ok(&["stop", "-t", "0", "live"]);
    finish(p);

    // The kernel's overlayfs under the same podman shows the container the same ids.
    let k = podman_with_image(None);
    let mut args = vec!["--rm"];
    args.extend(map);
    let (ok, out) = k.sh(&args, IMAGE, SCRIPT);
    assert!(ok, "{out}");
    assert_eq!(seen(&out), SEEN);
    finish(k);
}

#[test]
fn podman_userns_auto_on_layerfs() {
    if skip_without_podman() {
        return;
    }
    let _subids = ContainersSubIds::add();
    let p = podman_with_image(Some(&layerfs_bin()));
    let script = format!("head -1 /proc/self/uid_map\n{SCRIPT}");
    let (ok, out) = p.sh(&["--name", "auto", "--userns=auto"], IMAGE, &script);
    assert!(ok, "{out}");
    let map: Vec<u64> = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        map[0] == 0 && map[1] >= 2147483647,
        "uid_map {map:?}: {out}"
    );
    assert_eq!(seen(&out), SEEN);
    check_upper(&p, "auto");
    finish(p);
}

/// Rootless podman (as a user made for the test, through `newuidmap`) with
/// `--userns keep-id`: the mapping podman passes is not contiguous
/// (`uidmapping=0:1:U:U:0:1:U+1:U+1:…`), and there are no idmapped lowers.
#[test]
fn podman_rootless_keep_id_on_layerfs() {
    if skip_without_podman() || skip_without_newuidmap() {
        return;
    }
    let user = RootlessUser::create();
    let p = Podman::rootless(&user, &layerfs_bin());
    p.import_dir(&debian::rootfs(), IMAGE);
    let ids = format!("{}:{}", user.uid, user.gid);

    // Without a mapping: the user is root in the container.
    let (ok, out) = p.sh(&["--rm"], IMAGE, SCRIPT);
    assert!(ok, "{out}");
    assert_eq!(seen(&out), SEEN);

    let script = r#"set -e
echo "ids $(id -u):$(id -g)"
grep -q localhost /etc/hosts
echo mine > /tmp/mine
stat -c 'owner %u:%g %n' / /etc /etc/hosts /tmp /tmp/mine /var/mail /usr/bin/env
"#;
    let (ok, out) = p.sh(&["--name", "keep", "--userns", "keep-id"], IMAGE, script);
    assert!(ok, "{out}");
    assert_eq!(
        seen(&out),
        format!(
            "ids {ids}
owner 0:0 /
owner 0:0 /etc
owner 0:0 /etc/hosts
owner 0:0 /tmp
owner {ids} /tmp/mine
owner 0:8 /var/mail
owner 0:0 /usr/bin/env
"
        )
    );
    p.ok(&["commit", "keep", "localhost/kept:1"]);
    let owners = p.top_layer_owners("localhost/kept:1");
    let (uid, gid) = (u64::from(user.uid), u64::from(user.gid));
    assert_eq!(owners.get("tmp/mine"), Some(&(uid, gid)), "{owners:?}");
    assert_eq!(owners.get("etc"), Some(&(0, 0)), "{owners:?}");
    assert_eq!(owners.get("tmp"), Some(&(0, 0)), "{owners:?}");
    finish(p);
}

/// `true` (with the reason printed) when `newuidmap` (package `uidmap`) is missing.
fn skip_without_newuidmap() -> bool {
    if Path::new("/usr/bin/newuidmap").exists() {
        return false;
    }
    say_skipped("needs newuidmap for rootless podman (package uidmap; scripts/deps installs it)");
    true
}

#[test]
fn podman_build_rootless_on_layerfs() {
    if skip_without_podman() || skip_without_newuidmap() {
        return;
    }
    let user = RootlessUser::create();
    let p = Podman::rootless(&user, &layerfs_bin());
    p.import_dir(&debian::rootfs(), IMAGE);
    // A build context the user can read.
    let ctx = p.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        format!(
            "FROM {IMAGE}\nRUN echo built > /built && chown 1:2 /built && mkdir -p /srv/app && rm /etc/motd\nCOPY note /srv/app/note\n"
        ),
    )
    .unwrap();
    std::fs::write(ctx.join("note"), "copied\n").unwrap();
    let ctx_s = ctx.to_str().unwrap();
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX", ctx_s])
        .status();
    p.ok(&["build", "-t", "localhost/built:1", ctx_s]);
    let owners = p.top_layer_owners("localhost/built:1");
    assert_eq!(owners.get("srv/app/note"), Some(&(0, 0)), "{owners:?}");
    let (ok, out) = p.sh(
        &["--rm"],
        "localhost/built:1",
        "stat -c '%u:%g' /built; cat /built /srv/app/note; test ! -e /etc/motd && echo gone",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "1:2\nbuilt\ncopied\ngone", "{out}");
    finish(p);
}
