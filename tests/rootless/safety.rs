//! Nothing an ordinary user does through layerfs gives the user what the user does not
//! have: every attempt fails or stays inside the user's own files.

use std::path::PathBuf;

use crate::{User, disk_objects, rich_layer};
use support::mounts::mount_table;
use support::skip_unless_root;

fn mounted_rich(user: &User) -> PathBuf {
    let tar = user.put("rich.tar", &rich_layer());
    user.ok(&["import", tar.to_str().unwrap(), "-t", "rich"]);
    user.ok(&["create", "rich", "--name", "c"]);
    PathBuf::from(user.ok(&["mount", "c"]).trim())
}

#[test]
fn the_disk_holds_only_the_users_plain_files() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let mnt = mounted_rich(&user);
    user.sh_ok(&format!(
        "cd '{}' && touch bin/sh && chmod 6755 bin/sh && chown 0:0 bin/sh && mkfifo srv/p",
        mnt.display()
    ));
    let objects = disk_objects(&user.store());
    assert!(objects.len() > 20, "{objects:?}");
    for (p, uid, mode, dev) in objects {
        assert_eq!(uid, user.uid, "{} is not the user's", p.display());
        assert_eq!(
            mode & 0o6000,
            0,
            "{} is set-id on disk ({mode:o})",
            p.display()
        );
        assert!(!dev, "{} is a device node on disk", p.display());
    }
}

#[test]
fn set_id_files_and_device_nodes_in_the_mount_give_nothing() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let mnt = mounted_rich(&user);
    let m = mount_table()
        .into_iter()
        .find(|m| m.mount_point == mnt)
        .expect("the user's mount");
    let opts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = opts
        .lines()
        .find(|l| l.contains(&format!(" {} ", mnt.display())))
        .unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    assert!(m.fstype.starts_with("fuse"), "{}", m.fstype);

    // A set-uid root program in the container runs as the user.
    let id = user.sh_ok(&format!(
        "cd '{}' && cp /usr/bin/id srv/id && chown 0:0 srv/id && chmod 4755 srv/id && ls -ln srv/id && srv/id -u",
        mnt.display()
    ));
    assert!(id.starts_with("-rwsr-xr-x 1 0 0"), "{id}");
    assert_eq!(
        id.lines().last(),
        Some(user.uid.to_string().as_str()),
        "{id}"
    );
    // Device nodes from the image open nothing; new ones cannot be made.
    for dev in ["dev/sda", "dev/null"] {
        let o = user.sh(&format!("head -c1 '{}/{dev}'", mnt.display()));
        assert!(!o.status.success(), "{dev} opened");
    }
    let o = user.sh(&format!("mknod '{}/srv/mem' c 1 1", mnt.display()));
    assert!(
        !o.status.success(),
        "mknod of a device through the mount worked"
    );
}

#[test]
fn recorded_owners_are_hidden_and_refused_through_the_mount() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let mnt = mounted_rich(&user);
    let list = user.sh_ok(&format!("getfattr -d -m - '{}/srv/noted'", mnt.display()));
    assert!(list.contains("user.note"), "{list}");
    assert!(!list.contains("override_stat"), "{list}");
    for name in [
        "user.containers.override_stat",
        "user.fuseoverlayfs.override_stat",
    ] {
        let o = user.sh(&format!(
            "setfattr -n {name} -v 0:0:04755:file '{}/srv/noted'",
            mnt.display()
        ));
        assert!(!o.status.success(), "{name} set through the mount");
    }
    let ls = user.sh_ok(&format!("ls -ln '{}/srv/noted'", mnt.display()));
    assert!(ls.starts_with("-rw-r--r-- 1 0 0"), "{ls}");
}

#[test]
fn a_store_the_user_cannot_write_is_refused_in_one_line() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let tar = user.put("rich.tar", &rich_layer());
    let line = user.fails(&[
        "--root",
        "/var/lib/layerfs-rootless-denied",
        "import",
        tar.to_str().unwrap(),
    ]);
    assert!(line.contains("/var/lib/layerfs-rootless-denied"), "{line}");
    assert!(!std::path::Path::new("/var/lib/layerfs-rootless-denied").exists());
    let line = user.fails(&[
        "overlay",
        "-o",
        "lowerdir=/etc,upperdir=/root/upper,workdir=/root/work",
        user.home().to_str().unwrap(),
    ]);
    assert!(line.contains("/root"), "{line}");
}
