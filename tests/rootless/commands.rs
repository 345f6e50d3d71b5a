//! Every store command as an ordinary user, in the user's default store.

use crate::{User, rich_layer};
use support::skip_unless_root;

#[test]
fn store_commands_work_and_check_sees_a_forged_record() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let tar = user.put("rich.tar", &rich_layer());
    user.ok(&["import", tar.to_str().unwrap(), "-t", "rich"]);
    user.ok(&["tag", "rich", "rich2:v2"]);
    let images = user.ok(&["images"]);
    assert!(
        images.contains("rich2") && images.contains("v2"),
        "{images}"
    );
    user.ok(&["create", "rich", "--name", "a"]);
    let mnt = user.ok(&["mount", "a"]);
    assert!(user.ok(&["ps"]).contains('a'));
    user.sh_ok(&format!("echo x > '{}/srv/added'", mnt.trim()));
    assert!(user.ok(&["diff", "a"]).contains("A /srv/added"));
    let df = user.ok(&["system", "df"]);
    assert!(df.contains("Containers"), "{df}");
    assert!(user.ok(&["system", "check"]).contains("all intact"));

    // A record changed behind the store's back is damage, as any other change.
    let layer = user
        .store()
        .join("layers/sha256")
        .join(support::images::hex_of(
            &support::images::sha(&rich_layer()),
        ))
        .join("diff");
    user.sh_ok(&format!(
        "setfattr -n user.containers.override_stat -v 0:0:04755:file '{}/bin/sh'",
        layer.display()
    ));
    let o = user.run(&["system", "check"]);
    assert!(!o.status.success(), "a forged record went unnoticed");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("bin/sh")
            || String::from_utf8_lossy(&o.stderr).contains("bin/sh")
    );
    user.sh_ok(&format!(
        "setfattr -x user.containers.override_stat '{}/bin/sh'",
        layer.display()
    ));
    assert!(user.ok(&["system", "check"]).contains("all intact"));

    user.ok(&["umount", "a"]);
    user.ok(&["rm", "a"]);
    user.ok(&["rmi", "rich", "rich2:v2"]);
    user.ok(&["system", "prune"]);
    let left = std::fs::read_dir(user.store().join("layers/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "prune left layers behind");
}

#[test]
fn shell_runs_as_root_of_a_user_namespace() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let tar = user.home().join("debian.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(support::debian::rootfs())
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    user.ok(&["import", tar.to_str().unwrap(), "-t", "debian"]);
    user.ok(&["create", "debian", "--name", "box"]);
    let out = user.ok(&[
        "shell",
        "box",
        "--",
        "/bin/sh",
        "-c",
        "id -u; echo hi > /etc/motd; touch /root/made; dpkg -l dpkg | tail -1",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "{out}");
    assert!(lines.last().unwrap().starts_with("ii  dpkg"), "{out}");
    // What the command made is root's in the container.
    let mnt = user.ok(&["mount", "box"]);
    let ls = user.sh_ok(&format!(
        "cd '{}' && ls -ln root/made etc/motd && cat etc/motd",
        mnt.trim()
    ));
    assert!(
        ls.lines()
            .take(2)
            .all(|l| l.split_whitespace().nth(2) == Some("0")),
        "{ls}"
    );
    assert!(ls.ends_with("hi\n"), "{ls}");
    assert!(user.ok(&["diff", "box"]).contains("A /root/made"));
}
