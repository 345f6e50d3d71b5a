//! Security through the mount, as root with `allow_other`: an unprivileged user cannot
//! read a root-only file, write into a directory without permission, create device
//! nodes, or forge whiteouts and opaque markers (`trusted.*`, `*.overlay.*` xattrs,
//! `.wh.` names); symlinks in layers (and redirects in an upper dir) never lead the
//! daemon out of the layers; setuid/setgid bits are kept from layers and cleared on
//! write by a non-owner exactly as the kernel's overlayfs does. Each check runs with
//! passthrough on (default) and off.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use support::files::*;
use support::report::*;
use support::shell::*;
use support::stack::*;
use support::tree::*;
use support::xattr::*;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn fails_with(o: &std::process::Output, words: &str) -> Result<(), String> {
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() && err.contains(words) {
        Ok(())
    } else {
        Err(format!("expected failure with {words:?}: {}", out_str(o)))
    }
}

/// A stack with root-only files, a root-owned dir, a world-writable dir and setid files.
fn build(t: &Path) -> Stack {
    chmod(t, 0o755);
    let stack = new_stack(t, 2);
    for l in &stack.lowers {
        chmod(l, 0o755);
    }
    chmod(stack.upper.as_ref().unwrap(), 0o755);
    let low = &stack.lowers[1];
    write(&low.join("secret"), b"root only\n");
    chmod(&low.join("secret"), 0o600);
    write(&low.join("rootdir/file"), b"x");
    chmod(&low.join("rootdir"), 0o755);
    write(&low.join("pub/lowerfile"), b"lower\n");
    chmod(&low.join("pub"), 0o1777);
    write(&low.join("pub/opq/inside"), b"inside\n");
    chmod(&low.join("pub/opq"), 0o777);
    for (name, mode) in [
        ("suid", 0o6777),
        ("suid-root-write", 0o4755),
        ("sgid", 0o2777),
    ] {
        write(&low.join(name), b"setid file\n");
        chmod(&low.join(name), mode);
    }
    stack
}

/// Modes after the setid scenario, for comparison with the kernel.
fn setid_scenario(mnt: &Path) -> Vec<(String, u32)> {
    let _ = sh_as(
        NOBODY,
        NOGROUP,
        &format!("echo more >> {}", q(&mnt.join("suid"))),
    );
    let _ = sh_as(
        NOBODY,
        NOGROUP,
        &format!("echo more >> {}", q(&mnt.join("sgid"))),
    );
    let _ = sh(&format!("echo more >> {}", q(&mnt.join("suid-root-write"))));
    ["suid", "sgid", "suid-root-write"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                fs::symlink_metadata(mnt.join(n)).unwrap().mode() & 0o7777,
            )
        })
        .collect()
}

fn modes(v: &[(String, u32)]) -> String {
    v.iter()
        .map(|(n, m)| format!("{n}={m:o}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(mode: &str, extra: &[&str]) {
    let mut r = Report::new("security", mode);
    let t = tempfile::tempdir().unwrap();
    let stack = build(t.path());
    let mnt = t.path().join("m");
    let host = t.path().join("host");
    write(&host.join("passwd"), b"host file\n");
    let snap_opts = SnapOpts::with_mtimes();
    let host_before = snapshot(&host, &snap_opts);
    // Symlinks in the layers pointing out to the "host", shadowing a real lower dir.
    std::os::unix::fs::symlink(&host, stack.lowers[0].join("escape")).unwrap();
    write(
        &stack.lowers[1].join("escape/inner"),
        b"lower dir under the link",
    );
    std::os::unix::fs::symlink(host.join("passwd"), stack.lowers[0].join("link")).unwrap();
    // Redirects planted in the upper dir that try to climb out of the layers.
    let up = stack.upper.as_ref().unwrap();
    for (dir, target) in [("redir-rel", "../host"), ("redir-abs", "/../host")] {
        fs::create_dir_all(up.join(dir)).unwrap();
        set_xattr(&up.join(dir), "trusted.overlay.redirect", target.as_bytes());
    }
    fs::create_dir_all(mnt.parent().unwrap()).unwrap();
    let g = mount_layerfs(&stack, &mnt, extra);
    chmod(&mnt, 0o755);
    let m = |p: &str| q(&mnt.join(p));
    let nobody = |s: &str| sh_as(NOBODY, NOGROUP, s);

    r.check(
        "nobody cannot read a root-only 0600 lower file",
        fails_with(
            &nobody(&format!("cat {}", m("secret"))),
            "Permission denied",
        ),
    );
    let o = sh(&format!(
        "echo upper secret > {0} && chmod 600 {0}",
        m("upper-secret")
    ));
    r.ok("root writes a 0600 file", o.status.success(), || {
        out_str(&o)
    });
    r.check(
        "nobody cannot read a root-only 0600 upper file",
        fails_with(
            &nobody(&format!("cat {}", m("upper-secret"))),
            "Permission denied",
        ),
    );
    r.check(
        "nobody cannot create in a root-owned 0755 dir",
        fails_with(
            &nobody(&format!("touch {}", m("rootdir/new"))),
            "Permission denied",
        ),
    );
    r.check(
        "nobody cannot create in the root-owned mount root",
        fails_with(&nobody(&format!("touch {}", m("new"))), "Permission denied"),
    );
    r.check(
        "nobody cannot rename a root file out of a 0755 dir",
        fails_with(
            &nobody(&format!("mv {} {}", m("rootdir/file"), m("pub/stolen"))),
            "Permission denied",
        ),
    );
    r.check(
        "nobody cannot write a root-owned 0644 file",
        fails_with(
            &nobody(&format!("echo x >> {}", m("rootdir/file"))),
            "Permission denied",
        ),
    );
    let o = nobody(&format!("echo mine > {}", m("pub/mine")));
    r.ok(
        "nobody can create in a 1777 dir",
        o.status.success(),
        || out_str(&o),
    );
    r.ok(
        "files are created as the caller",
        fs::symlink_metadata(mnt.join("pub/mine"))
            .map(|m| (m.uid(), m.gid()))
            .ok()
            == Some((NOBODY, NOGROUP)),
        || "wrong owner".into(),
    );
    r.check(
        "sticky dir: nobody cannot remove root's lower file",
        fails_with(
            &nobody(&format!("rm -f {}", m("pub/lowerfile"))),
            "Operation not permitted",
        ),
    );
    r.check(
        "nobody cannot create a character device",
        fails_with(
            &nobody(&format!("mknod {} c 1 3", m("pub/null"))),
            "Operation not permitted",
        ),
    );
    r.check(
        "nobody cannot create a block device",
        fails_with(
            &nobody(&format!("mknod {} b 7 0", m("pub/loop"))),
            "Operation not permitted",
        ),
    );
    r.check(
        "nobody cannot create a 0/0 whiteout device",
        fails_with(
            &nobody(&format!("mknod {} c 0 0", m("pub/lowerfile2"))),
            "Operation not permitted",
        ),
    );
    r.check(
        "root cannot create a 0/0 whiteout device through the mount",
        fails_with(
            &sh(&format!("mknod {} c 0 0", m("pub/lowerfile3"))),
            "Operation not permitted",
        ),
    );
    // Forged markers.
    r.check(
        "nobody cannot set trusted.overlay.opaque",
        fails_with(
            &nobody(&format!(
                "setfattr -n trusted.overlay.opaque -v y {}",
                m("pub/opq")
            )),
            "Operation not permitted",
        ),
    );
    r.check(
        "nobody cannot set user.overlay.opaque on its own dir",
        fails_with(
            &nobody(&format!(
                "mkdir {0} && setfattr -n user.overlay.opaque -v y {0}",
                m("pub/own")
            )),
            "Operation not permitted",
        ),
    );
    r.check(
        "nobody cannot set user.overlay.opaque on a 0777 lower dir",
        fails_with(
            &nobody(&format!(
                "setfattr -n user.overlay.opaque -v y {}",
                m("pub/opq")
            )),
            "Operation not permitted",
        ),
    );
    for (what, name) in [
        ("opaque", "trusted.overlay.opaque"),
        ("whiteout", "trusted.overlay.whiteout"),
        ("redirect", "trusted.overlay.redirect"),
        ("user opaque", "user.overlay.opaque"),
        ("origin", "trusted.overlay.origin"),
    ] {
        r.check(
            &format!("root cannot set {what} ({name}) through the mount"),
            fails_with(
                &sh(&format!("setfattr -n {name} -v y {}", m("pub/opq"))),
                "Operation not permitted",
            ),
        );
    }
    r.ok(
        "forged opaque did not hide lower entries",
        mnt.join("pub/opq/inside").exists(),
        || "pub/opq/inside hidden".into(),
    );
    let o = nobody(&format!("touch {}", m("pub/.wh.lowerfile")));
    r.ok(
        "nobody cannot create an OCI whiteout name",
        !o.status.success(),
        || out_str(&o),
    );
    let o = sh(&format!("touch {}", m("pub/.wh..wh..opq")));
    r.ok(
        "root cannot create an OCI opaque marker name",
        !o.status.success(),
        || out_str(&o),
    );
    r.ok(
        "lower file still visible",
        mnt.join("pub/lowerfile").exists(),
        || "hidden by a forged marker".into(),
    );
    let o = sh(&format!("getfattr -d -m - -h {}", m("redir-rel")));
    r.ok(
        "internal xattrs are not listed",
        !String::from_utf8_lossy(&o.stdout).contains("overlay."),
        || out_str(&o),
    );
    // Symlinks out of the layers.
    r.ok(
        "a layer symlink shadows a lower dir (no merge through it)",
        fs::symlink_metadata(mnt.join("escape"))
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false),
        || "escape is not a symlink".into(),
    );
    for (what, cmd) in [
        ("touch -h", format!("touch -h {}", m("escape"))),
        ("chown -h", format!("chown -h nobody {}", m("escape"))),
        (
            "setfattr -h",
            format!("setfattr -h -n trusted.t -v 1 {}", m("escape")),
        ),
        ("touch -h link", format!("touch -h {}", m("link"))),
        ("mv link", format!("mv {} {}", m("link"), m("link2"))),
        ("rm link", format!("rm {}", m("link2"))),
        (
            "mv dir link",
            format!("mv {} {}", m("escape"), m("escape2")),
        ),
    ] {
        let o = sh(&cmd);
        r.ok(
            &format!("{what} on a layer symlink works"),
            o.status.success(),
            || out_str(&o),
        );
    }
    for d in ["redir-rel", "redir-abs"] {
        let names: Vec<String> = fs::read_dir(mnt.join(d))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        r.ok(
            &format!("a redirect climbing out of the layers ({d}) is not followed"),
            !names.iter().any(|n| n == "passwd"),
            || format!("{d} lists the host dir: {names:?}"),
        );
    }
    let d = diff_trees(&host_before, &snapshot(&host, &snap_opts));
    r.ok(
        "the host dir behind the symlinks is untouched",
        d.is_empty(),
        || d.join("\n"),
    );
    // setuid/setgid: kept from layers, cleared on write as the kernel does.
    r.ok(
        "setid bits shown from the layer",
        fs::symlink_metadata(mnt.join("suid")).unwrap().mode() & 0o7777 == 0o6777,
        || "mode differs".into(),
    );
    let ours = setid_scenario(&mnt);
    drop(g);
    let t2 = tempfile::tempdir().unwrap();
    let kstack = build(t2.path());
    let km = t2.path().join("k");
    let kg = mount_kernel(&kstack, &km);
    chmod(&km, 0o755);
    let theirs = setid_scenario(&km);
    drop(kg);
    r.ok(
        "setid bits after writes match the kernel's overlayfs",
        ours == theirs,
        || format!("layerfs {}, kernel {}", modes(&ours), modes(&theirs)),
    );
    r.ok(
        "a write by a non-owner cleared setuid",
        ours[0].1 & 0o4000 == 0,
        || modes(&ours),
    );
    r.ok(
        "lower layers untouched",
        fs::symlink_metadata(stack.lowers[1].join("suid"))
            .unwrap()
            .mode()
            & 0o7777
            == 0o6777
            && fs::read(stack.lowers[1].join("suid")).unwrap() == b"setid file\n",
        || "lower setid file changed".into(),
    );
    r.finish();
}

#[test]
fn security_passthrough_upper() {
    if support::skip_unless_root() {
        return;
    }
    run("passthrough-upper", &[]);
}

#[test]
fn security_passthrough_off() {
    if support::skip_unless_root() {
        return;
    }
    run("passthrough-off", &["passthrough=off"]);
}
