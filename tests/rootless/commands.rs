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
