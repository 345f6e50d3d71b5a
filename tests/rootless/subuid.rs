//! An ordinary user with subordinate ids (`nobody:200000:65536` in `/etc/subuid` and
//! `/etc/subgid`): store commands run in a user namespace over them, so a layer's files
//! have their mapped owners on disk (image uid 0 is the user's uid, 1000 is 200999), and
//! only device nodes and ids beyond the range are records. The mount still shows what
//! root's shows, changes commit to root's layer, and nothing on disk gives the user more
//! than its own ids and its range. A user with several ranges has them all, one after
//! another; a mount served from the namespace goes away on SIGTERM and SIGINT.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::mounts::is_mounted;
use support::podman::SubIdLine;
use support::procs::signal;
use support::skip_unless_root;

use crate::owners::{owned_tar, root_side, user_side};
use crate::{NOBODY, RootStore, User, disk_objects, rich_layer};

const START: u32 = 200_000;
const COUNT: u32 = 65_536;

/// The user with its range (both taken away on drop), or `None` when not root.
pub(crate) fn with_range() -> Option<(User, SubIdLine)> {
    with_ranges(&[&format!("nobody:{START}:{COUNT}")])
}

/// The user with these lines in `/etc/subuid` and `/etc/subgid`.
fn with_ranges(lines: &[&str]) -> Option<(User, SubIdLine)> {
    if skip_unless_root() {
        return None;
    }
    assert!(
        Path::new("/usr/bin/newuidmap").exists(),
        "newuidmap is missing: scripts/deps installs uidmap"
    );
    let ids = SubIdLine::add_all(lines);
    let user = User::new()?.with_subids();
    Some((user, ids))
}

/// The one layer's tree in the user's store.
fn layer_tree(user: &User) -> PathBuf {
    let dir = user.store().join("layers/sha256");
    let mut layers: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().join("diff"))
        .collect();
    assert_eq!(layers.len(), 1, "{layers:?}");
    layers.pop().unwrap()
}

fn record(p: &Path) -> Option<String> {
    support::xattr::xattrs(p)
        .get("user.containers.override_stat")
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Nothing below `dir` is owned by an id the user does not have, is a device node, or
/// is set-id and owned by real root.
fn only_the_users_ids(dir: &Path) {
    only_these_ids(dir, &[(START, COUNT)]);
}

/// `only_the_users_ids` for a user with these ranges (start, count).
fn only_these_ids(dir: &Path, ranges: &[(u32, u32)]) {
    let mine = |id: u32| id == NOBODY || ranges.iter().any(|(s, c)| (*s..s + c).contains(&id));
    for (p, uid, mode, dev) in disk_objects(dir) {
        let gid = fs::symlink_metadata(&p).unwrap().gid();
        assert!(mine(uid) && mine(gid), "{}: {uid}:{gid}", p.display());
        assert!(!dev, "{}: a device node on disk", p.display());
        assert!(
            mode & 0o6000 == 0 || uid != 0,
            "{}: set-id root",
            p.display()
        );
    }
}

#[test]
fn layers_have_mapped_owners_on_disk_and_the_mount_shows_roots_listing() {
    let Some((user, _ids)) = with_range() else {
        return;
    };
    let root = RootStore::new();
    let (want, _, _) = root_side(&root, None);
    let (got, mnt) = user_side(&user, None);
    assert_eq!(got, want, "the user's mount lists what root's lists");

    // The store says how it was made.
    assert_eq!(
        fs::read_to_string(user.store().join("idmap")).unwrap(),
        format!(
            "uid 0 {NOBODY} 1\nuid 1 {START} {COUNT}\ngid 0 {NOBODY} 1\ngid 1 {START} {COUNT}\n"
        )
    );
    // On disk: real owners within the range, set-id bits kept, fifos real; records
    // only for device nodes and ids beyond the range.
    let tree = layer_tree(&user);
    let md = |rel: &str| fs::symlink_metadata(tree.join(rel)).unwrap();
    let owner = |rel: &str| {
        let m = md(rel);
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner("bin/su"), (NOBODY, NOBODY, 0o4755));
    assert_eq!(owner("bin/wall"), (NOBODY, START + 4, 0o2755));
    assert_eq!(owner("etc/shadow"), (NOBODY, START + 41, 0o640));
    assert_eq!(owner("etc/secret"), (NOBODY, NOBODY, 0));
    assert_eq!(owner("home/alice"), (START + 999, START + 999, 0o750));
    assert_eq!(owner("home/alice/notes"), (START + 999, START + 999, 0o600));
    assert_eq!(owner("var/mail"), (NOBODY, START + 7, 0o2775));
    assert_eq!(owner("tmp"), (NOBODY, NOBODY, 0o1777));
    assert!(md("dev/initctl").file_type().is_fifo());
    assert_eq!(record(&tree.join("bin/su")), None);
    assert_eq!(record(&tree.join("home/alice/notes")), None);
    assert!(md("dev/null").is_file());
    assert_eq!(
        record(&tree.join("dev/null")).as_deref(),
        Some("0:0:0666:char-1-3")
    );
    assert_eq!(
        record(&tree.join("dev/sda")).as_deref(),
        Some("0:6:0660:block-8-0")
    );
    assert_eq!(owner("home/alice/big"), (NOBODY, NOBODY, 0o644));
    assert_eq!(
        record(&tree.join("home/alice/big")).as_deref(),
        Some("2000000:2000001:0644:file")
    );
    only_the_users_ids(&user.store());

    // Mounted by fusermount3 for the user: its alone, nosuid and nodev.
    let table = fs::read_to_string("/proc/self/mounts").unwrap();
    let opts = table
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(1) == mnt.to_str().as_ref())
        .map(|f| f[3].to_string())
        .unwrap();
    for o in ["nosuid", "nodev", "user_id=65534"] {
        assert!(opts.split(',').any(|x| x == o), "{o} not in {opts}");
    }
    // The user outside cannot read what image uid 1000 keeps to itself; the mount can.
    let notes = tree.join("home/alice/notes");
    assert!(
        !user
            .sh(&format!("cat '{}'", notes.display()))
            .status
            .success()
    );
    let shown = user.sh_ok(&format!("cat '{}/home/alice/notes'", mnt.display()));
    assert_eq!(shown, "hi\n");
    // What the user makes in the mount is root's, and the user's own on disk.
    let made = user.sh_ok(&format!(
        "cd '{}' && echo x > made && mkdir madedir && stat -c '%u %g' made madedir",
        mnt.display()
    ));
    assert_eq!(made, "0 0\n0 0\n");
    let upper = fs::read_dir(user.store().join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("upper"))
        .find(|p| p.is_dir())
        .unwrap();
    assert_eq!(fs::metadata(upper.join("made")).unwrap().uid(), NOBODY);
    // The upper layer keeps records, and real owners where the range has them: a chown
    // in the mount and a copy-up of a file of image uid 1000.
    user.sh_ok(&format!(
        "cd '{}' && chown 7:8 madedir && echo more >> home/alice/notes && ln -s x madelink",
        mnt.display()
    ));
    let disk = |rel: &str| {
        let m = fs::symlink_metadata(upper.join(rel)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(disk("madedir"), (START + 6, START + 7));
    assert_eq!(disk("home/alice/notes"), (START + 999, START + 999));
    assert_eq!(disk("madelink"), (NOBODY, NOBODY));
    let shown = user.sh_ok(&format!(
        "cd '{}' && stat -c '%u %g %a' madedir home/alice/notes",
        mnt.display()
    ));
    assert_eq!(shown, "7 8 755\n1000 1000 600\n");
    only_the_users_ids(&user.store());
}

#[test]
fn changes_commit_and_export_as_roots_do() {
    let Some((user, _ids)) = with_range() else {
        return;
    };
    let root = RootStore::new();
    let tar = user.put("owned.tar", &owned_tar());
    let (want, _, _) = root_side(&root, Some(&tar));
    let (got, _) = user_side(&user, Some(&tar));
    assert_eq!(
        got, want,
        "after the same changes, the user's mount lists what root's lists"
    );
    assert_eq!(user.ok(&["diff", "c"]), root.env.ok(&["diff", "c"]));
    user.ok(&["umount", "c"]);
    root.env.ok(&["umount", "c"]);
    user.ok(&["commit", "c", "changed"]);
    root.env.ok(&["commit", "c", "changed"]);
    let top = |inspect: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(inspect).unwrap();
        v[0]["Config"]["rootfs"]["diff_ids"][1]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        top(&user.ok(&["inspect", "changed"])),
        top(&root.env.ok(&["inspect", "changed"])),
        "the committed layer is root's"
    );
    // The committed layer has the owners the changes gave, on disk.
    let v: serde_json::Value = serde_json::from_str(&user.ok(&["inspect", "changed"])).unwrap();
    let layer = support::store_env::layer_dirs_of(&v[0]).remove(0);
    let owner = |rel: &str| {
        let m = fs::symlink_metadata(layer.join(rel)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner("srv/new"), (START + 4, START + 6, 0o4750));
    assert_eq!(owner("srv/d"), (START + 8, START + 8, 0o2770));
    assert_eq!(
        owner("srv/untar/pkg/tool"),
        (START + 11, START + 111, 0o4711)
    );
    assert_eq!(owner("home/bob/notes"), (START + 32, START + 32, 0o600));
    assert!(
        fs::symlink_metadata(layer.join("srv/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let uexp = user.home().join("c.tar");
    user.ok(&["export", "c", "-o", uexp.to_str().unwrap()]);
    let rexp = root.env.path("c.tar");
    root.env.ok(&["export", "c", "-o", rexp.to_str().unwrap()]);
    assert!(
        fs::read(&uexp).unwrap() == fs::read(&rexp).unwrap(),
        "export differs from root's"
    );
    // The committed layer, mounted again, lists the changes as root's does.
    user.ok(&["create", "changed", "--name", "again"]);
    root.env.create("changed", "again");
    let umnt = user.ok(&["mount", "again"]);
    let ulist = user.sh_ok(&format!("cd '{}' && {}", umnt.trim(), crate::LISTING));
    let rmnt = root.env.mount("again");
    assert_eq!(ulist, root.listing(&rmnt));
    // `rm -f` unmounts outside the namespace it runs in.
    user.ok(&["rm", "-f", "again", "c"]);
    assert!(
        !support::mounts::mount_table()
            .iter()
            .any(|m| m.mount_point.starts_with(user.home())),
        "rm -f unmounted the container"
    );
    user.ok(&["rmi", "changed", "rich"]);
    only_the_users_ids(&user.store());
    assert_eq!(
        fs::read_dir(user.store().join("layers/sha256"))
            .unwrap()
            .count(),
        0,
        "rmi removes layers owned by subordinate ids"
    );
}

#[test]
fn overlay_subids_serves_plain_dirs_as_the_namespace_sees_them() {
    let Some((user, _ids)) = with_range() else {
        return;
    };
    let h = user.home();
    let (mnt, opts) = user.one_file_stack();
    user.sh_ok(&format!("chmod 600 '{}/l/f'", h.display()));
    user.ok(&["overlay", "-o", &(opts + ",subids"), mnt.to_str().unwrap()]);
    let shown = user.sh_ok(&format!(
        "cd '{}/m' && echo x > g && cat f && stat -c '%n %u %g %a' f g",
        h.display()
    ));
    assert_eq!(shown, "hi\nf 0 0 600\ng 0 0 644\n");
    assert_eq!(fs::metadata(h.join("u/g")).unwrap().uid(), NOBODY);
    user.sh_ok(&format!("fusermount3 -u '{}/m'", h.display()));
}

#[test]
fn a_store_is_used_only_with_the_ids_it_was_made_with() {
    let Some((user, ids)) = with_range() else {
        return;
    };
    let tar = user.put("rich.tar", &rich_layer());
    user.ok(&["import", tar.to_str().unwrap(), "-t", "rich"]);
    let store = user.store();
    // In the plain mode, as root, or with another range: one line, nothing read.
    let off = user.sh(&format!(
        "LAYERFS_USERNS=off '{}' images",
        user.bin_path().display()
    ));
    let line = support::cli::one_error_line(&["images"], off);
    assert!(line.contains("owned by subordinate ids"), "{line}");
    let line = support::cli::fails(&store, &["images"]);
    assert!(line.contains("owned by subordinate ids"), "{line}");
    drop(ids);
    let _moved = SubIdLine::add(&format!("nobody:{}:{COUNT}", START + COUNT));
    let line = user.fails(&["images"]);
    assert!(
        line.contains("now has uids 0:65534:1,1:265536:65536"),
        "{line}"
    );
    // A store made in the plain mode stays in it when the user gains ranges: what was
    // recorded is read as recorded, and new layers are recorded the same way.
    let plain = user.home().join("plain");
    let p = plain.to_str().unwrap();
    let o = user.sh(&format!(
        "LAYERFS_USERNS=off '{}' --root '{p}' import '{}' -t rich",
        user.bin_path().display(),
        tar.display()
    ));
    assert!(o.status.success());
    let before = user.ok(&["--root", p, "images"]);
    assert!(before.contains("rich"), "{before}");
    let tar2 = user.put(
        "more.tar",
        &support::images::LayerBuilder::new()
            .file("more", b"more\n")
            .build(),
    );
    user.ok(&["--root", p, "import", tar2.to_str().unwrap(), "-t", "more"]);
    for (p, uid, _, dev) in disk_objects(&plain) {
        let gid = fs::symlink_metadata(&p).unwrap().gid();
        assert!(
            uid == NOBODY && gid == NOBODY && !dev,
            "{}: {uid}:{gid}",
            p.display()
        );
    }
    assert!(!plain.join("idmap").exists());
}

#[test]
fn a_range_newuidmap_refuses_is_one_line() {
    if skip_unless_root() {
        return;
    }
    // The range overlaps the user's own id: the kernel refuses the map.
    let _ids = SubIdLine::add(&format!("nobody:{NOBODY}:10"));
    let Some(user) = User::new() else { return };
    let user = user.with_subids();
    let tar = user.put("rich.tar", &rich_layer());
    let line = user.fails(&["import", tar.to_str().unwrap()]);
    assert!(line.contains("newuidmap"), "{line}");
    assert!(line.contains("subordinate ids of uid 65534"), "{line}");
    assert!(!user.store().join("layers").exists());
}

#[test]
fn without_a_range_the_store_is_the_plain_one() {
    if skip_unless_root() {
        return;
    }
    // No test adds a range meanwhile.
    let _quiet = SubIdLine::none();
    let has = |f: &str| {
        fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("nobody:") || l.starts_with("65534:"))
    };
    if has("/etc/subuid") && has("/etc/subgid") {
        support::privilege::say_skipped("nobody has subordinate ids on this machine");
        return;
    }
    let Some(user) = User::new() else { return };
    let user = user.with_subids();
    let tar = user.put("rich.tar", &rich_layer());
    user.ok(&["import", tar.to_str().unwrap(), "-t", "rich"]);
    assert!(!user.store().join("idmap").exists());
    // A mount asked to serve from the namespace says why it cannot.
    let mnt = user.home().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let lower = user.home().join("lower");
    fs::create_dir(&lower).unwrap();
    let opts = format!("lowerdir={},subids", lower.display());
    let line = user.fails(&["overlay", "-o", &opts, mnt.to_str().unwrap()]);
    assert!(line.contains("no subordinate ids"), "{line}");
    for (p, uid, _, dev) in disk_objects(&user.store()) {
        assert_eq!(uid, NOBODY, "{}", p.display());
        assert!(!dev);
    }
}

/// A layer with owners in both of `two_ranges`' ranges, at their edges, and beyond them.
fn two_range_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, (uid, gid), kind) in [
        ("./", 0o755, (0, 0), tar::EntryType::Directory),
        ("first", 0o755, (999, 1000), tar::EntryType::Directory),
        ("first/last", 0o640, (1000, 1000), tar::EntryType::Regular),
        ("second", 0o750, (1001, 1001), tar::EntryType::Directory),
        ("second/mid", 0o4755, (5000, 6000), tar::EntryType::Regular),
        ("second/end", 0o600, (65536, 65536), tar::EntryType::Regular),
        (
            "second/beyond",
            0o644,
            (65537, 65537),
            tar::EntryType::Regular,
        ),
        ("mixed", 0o2755, (1000, 1001), tar::EntryType::Regular),
        ("small", 0o644, (0, 42), tar::EntryType::Regular),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"x\n"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn every_range_of_the_user_is_mapped_one_after_another() {
    // 1000 ids, then 64536: image ids 1..=1000 are the first range, 1001..=65536 the
    // second; one line names the user, the other its uid.
    const SECOND: u32 = 300_000;
    let Some((user, _ids)) = with_ranges(&["nobody:200000:1000", "65534:300000:64536"]) else {
        return;
    };
    let layer = two_range_layer();
    let root = RootStore::new();
    root.import_tar("wide", &layer);
    root.env.create("wide", "c");
    let rmnt = root.env.mount("c");
    let want = root.listing(&rmnt);

    let tar = user.put("wide.tar", &layer);
    user.ok(&["import", tar.to_str().unwrap(), "-t", "wide"]);
    user.ok(&["create", "wide", "--name", "c"]);
    let mnt = PathBuf::from(user.ok(&["mount", "c"]).trim());
    let got = user.sh_ok(&format!("cd '{}' && {}", mnt.display(), crate::LISTING));
    assert_eq!(got, want, "the user's mount lists what root's lists");

    assert_eq!(
        fs::read_to_string(user.store().join("idmap")).unwrap(),
        format!(
            "uid 0 {NOBODY} 1\nuid 1 {START} 1000\nuid 1001 {SECOND} 64536\n\
             gid 0 {NOBODY} 1\ngid 1 {START} 1000\ngid 1001 {SECOND} 64536\n"
        )
    );
    let tree = layer_tree(&user);
    let owner = |rel: &str| {
        let m = fs::symlink_metadata(tree.join(rel)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner("first"), (START + 998, START + 999, 0o755));
    assert_eq!(owner("first/last"), (START + 999, START + 999, 0o640));
    assert_eq!(owner("second"), (SECOND, SECOND, 0o750));
    assert_eq!(owner("second/mid"), (SECOND + 3999, SECOND + 4999, 0o4755));
    assert_eq!(owner("second/end"), (SECOND + 64535, SECOND + 64535, 0o600));
    assert_eq!(owner("mixed"), (START + 999, SECOND, 0o2755));
    assert_eq!(owner("small"), (NOBODY, START + 41, 0o644));
    assert_eq!(record(&tree.join("second/mid")), None);
    assert_eq!(record(&tree.join("second/end")), None);
    assert_eq!(owner("second/beyond"), (NOBODY, NOBODY, 0o644));
    assert_eq!(
        record(&tree.join("second/beyond")).as_deref(),
        Some("65537:65537:0644:file")
    );
    // A change through the mount lands in the second range on disk too.
    user.sh_ok(&format!(
        "cd '{}' && touch second/made && chown 2000:3000 second/made",
        mnt.display()
    ));
    let upper = fs::read_dir(user.store().join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("upper"))
        .find(|p| p.is_dir())
        .unwrap();
    let made = fs::symlink_metadata(upper.join("second/made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (SECOND + 999, SECOND + 1999));
    let shown = user.sh_ok(&format!("stat -c '%u %g' '{}/second/made'", mnt.display()));
    assert_eq!(shown, "2000 3000\n");
    only_these_ids(&user.store(), &[(START, 1000), (SECOND, 64536)]);
}

/// The user's layerfs processes whose command line names `mnt`: (pid, whether it runs
/// outside any user namespace).
fn mount_daemons(user: &User, mnt: &Path) -> Vec<(u32, bool)> {
    user.daemons(mnt)
        .into_iter()
        .map(|pid| {
            let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default();
            let outside = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
            (pid, outside)
        })
        .collect()
}

/// Wait (at most 5 s) until `done`.
fn within_5s(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The mount at `mnt` is gone, leaving an ordinary empty dir, and no daemon runs for it.
fn taken_down(user: &User, mnt: &Path) {
    assert!(
        within_5s(|| !is_mounted(mnt)),
        "{} is still mounted",
        mnt.display()
    );
    let md = fs::metadata(mnt).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.dev(), fs::metadata(user.home()).unwrap().dev());
    assert_eq!(fs::read_dir(mnt).unwrap().count(), 0);
    assert!(
        within_5s(|| mount_daemons(user, mnt).is_empty()),
        "left running: {:?}",
        mount_daemons(user, mnt)
    );
}

#[test]
fn a_subids_mount_is_unmounted_on_sigterm_and_sigint() {
    let Some((user, _ids)) = with_range() else {
        return;
    };
    let (mnt, opts) = user.one_file_stack();
    let opts = opts + ",subids";
    let m = mnt.to_str().unwrap();
    // A daemon: one process outside the namespace (the one that stays of the command),
    // one serving from inside it; either takes the mount down.
    for (outside, sig) in [
        (false, Signal::TERM),
        (true, Signal::TERM),
        (true, Signal::INT),
    ] {
        user.ok(&["overlay", "-o", &opts, m]);
        assert!(is_mounted(&mnt));
        let daemons = mount_daemons(&user, &mnt);
        let Some(&(pid, _)) = daemons.iter().find(|d| d.1 == outside) else {
            panic!("no daemon (outside the namespace: {outside}) in {daemons:?}");
        };
        signal(pid, sig);
        taken_down(&user, &mnt);
    }
    // In the foreground the command exits 0, as a plain mount's does.
    let log = user.home().join("fg.log");
    let mut child = user
        .command(user.bin_path().to_str().unwrap())
        .args(["overlay", "-f", "-o", &opts, m])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(within_5s(|| is_mounted(&mnt)), "not mounted");
    signal(child.id(), Signal::TERM);
    let mut status = None;
    within_5s(|| {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    taken_down(&user, &mnt);
}
