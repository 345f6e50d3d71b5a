//! What an ordinary user's mount shows, and what its changes commit to, against root's.

use std::path::{Path, PathBuf};

use crate::{LISTING, RootStore, User, rich_layer};
use support::skip_unless_root;

/// Changes through a mount, run by root in root's mount and by the user in the user's:
/// new objects with other owners and set-id bits, a fifo, changed modes and owners of
/// image files, a deleted and a renamed entry, and a tar unpacked with its owners.
pub(crate) const CHANGES: &str = r#"set -e
echo new > srv/new && chown 5:7 srv/new && chmod 4750 srv/new
mkdir -m 2770 srv/d && chown 9:9 srv/d && touch srv/d/inner
mkfifo -m 640 srv/fifo
echo more >> etc/shadow
chmod 600 bin/su
chown 33:33 home/alice/notes
rm bin/wall
ln -s ../etc/shadow srv/link
mv home/alice home/bob
cat root/.profile etc/secret >/dev/null
mkdir srv/untar && tar --same-owner -xpf "$1" -C srv/untar
# The same times on both sides, so that the committed layers can be compared.
find . -newermt @1700000001 -exec touch -h -d @1700000000 {} +
"#;

/// A tar with other owners, for `CHANGES` to unpack.
pub(crate) fn owned_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, uid, kind) in [
        ("pkg", 0o750, 11, tar::EntryType::Directory),
        ("pkg/tool", 0o4711, 12, tar::EntryType::Regular),
        ("pkg/conf", 0o640, 0, tar::EntryType::Regular),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid + 100);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        b.append_data(&mut h, path, &b""[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub(crate) fn root_side(root: &RootStore, changes: Option<&Path>) -> (String, PathBuf, String) {
    root.import_tar("rich", &rich_layer());
    let id = root.env.create("rich", "c");
    let mnt = root.env.mount("c");
    if let Some(tar) = changes {
        let o = std::process::Command::new("sh")
            .args(["-c", CHANGES, "sh", tar.to_str().unwrap()])
            .current_dir(&mnt)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    (root.listing(&mnt), mnt, id)
}

pub(crate) fn user_side(user: &User, changes: Option<&Path>) -> (String, PathBuf) {
    let tar = user.put("rich.tar", &rich_layer());
    user.ok(&["import", tar.to_str().unwrap(), "-t", "rich"]);
    user.ok(&["create", "rich", "--name", "c"]);
    let mnt = PathBuf::from(user.ok(&["mount", "c"]).trim());
    if let Some(tar) = changes {
        user.sh_ok(&format!(
            "cd '{}' && sh -c '{}' sh '{}'",
            mnt.display(),
            CHANGES.replace('\'', r"'\''"),
            tar.display()
        ));
    }
    let listing = user.sh_ok(&format!("cd '{}' && {LISTING}", mnt.display()));
    (listing, mnt)
}

#[test]
fn the_user_sees_the_owners_modes_and_types_root_sees() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let root = RootStore::new();
    let (want, _, _) = root_side(&root, None);
    let (got, mnt) = user_side(&user, None);
    assert_eq!(got, want, "the user's mount lists what root's lists");
    for line in [
        "./bin/su 0 0 4755 f 3",
        "./dev/null 0 0 666 c 0",
        "./dev/sda 0 6 660 b 0",
        "./dev/initctl 0 0 600 p 0",
        "./home/alice/big 2000000 2000001 644 f 4",
        "./var/mail 0 8 2775 d",
        "./srv/forged 0 0 644 f 2",
    ] {
        assert!(
            got.lines().any(|l| l.starts_with(line)),
            "{line:?} not in\n{got}"
        );
    }
    assert!(!got.contains("./srv/gone"), "a whiteout hides its name");
    // The store is the user's default one.
    assert!(
        user.store().join("layers").is_dir(),
        "{}",
        user.store().display()
    );
    // ls -l and stat see device numbers; find -type sees the types.
    let ls = user.sh_ok(&format!("ls -ln '{}/dev'", mnt.display()));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("crw-rw-rw-") && l.contains("1, 3")),
        "{ls}"
    );
    let found = user.sh_ok(&format!(
        "cd '{}' && find . -type c -o -type b -o -type p",
        mnt.display()
    ));
    assert_eq!(found.lines().count(), 3, "{found}");
}

#[test]
fn changes_commit_export_and_save_as_roots_do() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let root = RootStore::new();
    let tar = user.put("owned.tar", &owned_tar());
    let (want, _, _) = root_side(&root, Some(&tar));
    let (got, _) = user_side(&user, Some(&tar));
    assert_eq!(
        got, want,
        "after the same changes, the user's mount lists what root's lists"
    );
    for line in [
        "./srv/new 5 7 4750 f",
        "./srv/d 9 9 2770 d",
        "./srv/d/inner 0 9 644 f",
        "./srv/fifo 0 0 640 p",
        "./srv/untar/pkg/tool 12 112 4711 f",
        "./home/bob/notes 33 33 600 f",
    ] {
        assert!(
            got.lines().any(|l| l.starts_with(line)),
            "{line:?} not in\n{got}"
        );
    }
    assert_eq!(user.ok(&["diff", "c"]), root.env.ok(&["diff", "c"]));

    // The same layer, byte for byte; the same export.
    user.ok(&["umount", "c"]);
    root.env.ok(&["umount", "c"]);
    user.ok(&["commit", "c", "changed"]);
    root.env.ok(&["commit", "c", "changed"]);
    let diff_ids = |inspect: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(inspect).unwrap();
        v[0]["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    };
    let ids = diff_ids(&user.ok(&["inspect", "changed"]));
    assert_eq!(ids, diff_ids(&root.env.ok(&["inspect", "changed"])));
    assert_eq!(ids[0], support::images::sha(&rich_layer()));

    let uexp = user.home().join("c.tar");
    user.ok(&["export", "c", "-o", uexp.to_str().unwrap()]);
    let rexp = root.env.path("c.tar");
    root.env.ok(&["export", "c", "-o", rexp.to_str().unwrap()]);
    assert!(
        std::fs::read(&uexp).unwrap() == std::fs::read(&rexp).unwrap(),
        "export differs from root's"
    );

    // An unchanged container commits to the image's layers plus the empty layer, as
    // root's does, and what the user saves root imports to the same listing.
    user.ok(&["create", "rich", "--name", "same"]);
    root.env.ok(&["create", "rich", "--name", "same"]);
    user.ok(&["commit", "same", "same"]);
    root.env.ok(&["commit", "same", "same"]);
    assert_eq!(
        diff_ids(&user.ok(&["inspect", "same"])),
        diff_ids(&root.env.ok(&["inspect", "same"]))
    );
    let saved = user.home().join("saved.tar");
    user.ok(&["save", "changed", "-o", saved.to_str().unwrap()]);
    let back = RootStore::new();
    back.env.ok(&["import", saved.to_str().unwrap()]);
    back.env.create("changed", "back");
    let bmnt = back.env.mount("back");
    assert_eq!(
        back.listing(&bmnt),
        want,
        "saved by the user, imported by root"
    );
}
