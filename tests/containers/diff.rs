//! `diff`: A/C/D lines as `docker diff` prints them, for every on-disk form the mount
//! writes (copy-ups, whiteouts, opaque directories, redirected directories, hard links),
//! the same mounted, unmounted and after a remount.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use support::files::*;
use support::store_env::*;

#[test]
fn changes_like_docker_diff() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    env.create("sample:1", "c1");
    env.create("sample:1", "quiet");
    let m = env.mount("c1");
    // A fresh container has no changes.
    assert_eq!(env.ok(&["diff", "c1"]), "");

    fs::write(m.join("etc/os-release"), "NAME=changed\n").unwrap();
    fs::remove_file(m.join("etc/issue")).unwrap();
    write(&m.join("etc/new.d/x"), b"x");
    fs::remove_file(m.join("srv/app/conf/a.conf")).unwrap();
    fs::rename(m.join("srv/app"), m.join("srv/app2")).unwrap();
    fs::remove_dir_all(m.join("opq")).unwrap();
    fs::create_dir(m.join("opq")).unwrap();
    fs::write(m.join("opq/new"), "n").unwrap();
    fs::write(m.join("newfile"), "f").unwrap();
    fs::set_permissions(m.join("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::hard_link(m.join("usr/lib/libx.so"), m.join("usr/lib/libx.hard")).unwrap();
    fs::remove_dir_all(m.join("var/log")).unwrap();

    let mut want = vec![
        "C /etc",
        "D /etc/issue",
        "A /etc/new.d",
        "A /etc/new.d/x",
        "C /etc/os-release",
        "A /newfile",
        "C /opq",
        "D /opq/keep1",
        "D /opq/keep2",
        "A /opq/new",
        "C /srv",
        "D /srv/app",
        "A /srv/app2",
        "A /srv/app2/conf",
        "A /srv/app2/conf/b.conf",
        "A /srv/app2/version",
        "C /usr",
        "C /usr/bin",
        "C /usr/bin/tool",
        "C /usr/lib",
        "A /usr/lib/libx.hard",
        "C /usr/lib/libx.so",
        "C /usr/lib/libx.so.1",
        "C /var",
        "D /var/log",
    ];
    want.sort_by(|a, b| a[2..].cmp(&b[2..]));
    let want = want.iter().map(|l| format!("{l}\n")).collect::<String>();
    assert_eq!(env.ok(&["diff", "c1"]), want, "mounted");
    env.ok(&["umount", "c1"]);
    assert_eq!(env.ok(&["diff", "c1"]), want, "unmounted");
    env.mount("c1");
    assert_eq!(env.ok(&["diff", "c1"]), want, "remounted");
    assert_eq!(env.ok(&["diff", "quiet"]), "");
}

#[test]
fn deep_deletes_under_opaque_and_renamed_dirs() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let m = env.mounted("sample:1", "c1");
    // Replace /srv with a new tree that has some of the old names again: every old entry
    // that is not there again is gone, at every depth.
    fs::remove_dir_all(m.join("srv")).unwrap();
    write(&m.join("srv/app/conf/b.conf"), b"new b");
    // A renamed dir that replaces an (empty after rm) dir of the image.
    fs::remove_dir_all(m.join("home/user")).unwrap();
    fs::rename(m.join("usr/lib"), m.join("home/user")).unwrap();
    let got = env.ok(&["diff", "c1"]);
    for l in [
        "C /srv\n",
        "C /srv/app\n",
        "C /srv/app/conf\n",
        "D /srv/app/conf/a.conf\n",
        "C /srv/app/conf/b.conf\n",
        "D /srv/app/version\n",
        "C /home/user\n",
        "D /home/user/notes\n",
        "A /home/user/libx.so\n",
        "A /home/user/libx.so.1\n",
        "A /home/user/libx.link\n",
        "D /usr/lib\n",
    ] {
        assert!(got.contains(l), "missing {l:?} in\n{got}");
    }
}
