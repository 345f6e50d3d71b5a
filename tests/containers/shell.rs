//! `shell`: a command chrooted in the container as root, its exit code passed on; the
//! container is mounted for the time being (and left as it was); `dpkg -l` works in a
//! Debian image.

use std::path::PathBuf;
use std::process::Command;

use support::cli::*;
use support::images::*;
use support::mounts::*;
use support::samples::*;
use support::store_env::*;

#[test]
fn shell_runs_in_the_container() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    env.import(&image(vec![shell_layer(), base_layer()]), "sh:1");
    env.create("sh:1", "c1");
    let out = env.run(&[
        "shell",
        "c1",
        "--",
        "/bin/sh",
        "-c",
        "echo hello > /root/made-here; read v < /etc/os-release; echo \"$v $PATH $HOME\"; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "NAME=sample /usr/bin:/bin /root\n",
        "the image's Env and HOME"
    );
    // It was mounted only for the command.
    assert_eq!(env.ps()[0]["Mounted"], false);
    assert_eq!(env.ok(&["diff", "c1"]), "C /root\nA /root/made-here\n");
    // Mounted before: stays mounted; the default command is /bin/sh.
    let m = env.mount("c1");
    let out = Command::new(layerfs_bin())
        .args(["--root", env.root.to_str().unwrap(), "shell", "c1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(b"echo $((6*7))\n")?;
            ch.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    assert!(is_mounted(&m));
    // A program the container lacks: one line, exit 127.
    let out = env.run(&["shell", "c1", "--", "/usr/bin/nothing-here"]);
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/usr/bin/nothing-here") && err.contains("in the container"),
        "{err}"
    );
}

/// The Debian rootfs the test suite builds (`scripts/make-test-rootfs`).
fn debian_rootfs() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("LAYERFS_TEST_ROOTFS")
            .unwrap_or_else(|_| "/var/cache/layerfs-test/bookworm".into()),
    );
    assert!(
        p.join("var/lib/dpkg/status").is_file(),
        "{} is not a Debian rootfs: run scripts/make-test-rootfs (scripts/test does)",
        p.display()
    );
    p
}

#[test]
fn dpkg_lists_packages_in_a_debian_image() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::new();
    let rootfs = debian_rootfs();
    let tar = env.path("rootfs.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&rootfs)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    env.ok(&["import", tar.to_str().unwrap(), "--tag", "debian:12"]);
    env.create("debian:12", "deb");
    let out = env.run(&["shell", "deb", "--", "dpkg", "-l"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("ii  dpkg ")),
        "no dpkg in:\n{text}"
    );
    assert!(text.lines().filter(|l| l.starts_with("ii ")).count() > 50);
    // Inspecting changed nothing in the container.
    assert_eq!(env.ok(&["diff", "deb"]), "");
}
