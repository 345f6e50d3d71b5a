//! containerd with the snapshotter under test ([`SNAPSHOTTER`]): pulls that unpack the
//! shared base once, containers that change their root, container roots equal to those
//! of the reference snapshotter, the snapshots API round trip, an image removed under a
//! running container, and bad requests refused with containerd's own answers.

use std::fs;
use std::time::{Duration, Instant};

use support::debian::rootfs;

use crate::fixture::*;

/// Root, and the tools; `false` when the test must skip (saying why).
pub fn can_run() -> bool {
    if support::skip_unless_root() {
        return false;
    }
    !["containerd", "ctr", "runc"]
        .iter()
        .any(|t| support::skip_without_tool(t))
}

#[test]
fn pulls_unpack_the_shared_base_once() {
    if !can_run() {
        return;
    }
    let imgs = Images::get();
    let e = Engine::new();
    e.pull(SNAPSHOTTER, "a");
    let base_info = e.snap_ok(SNAPSHOTTER, &["info", &imgs.base_chain()]);
    assert!(base_info.contains("\"Kind\": \"Committed\""), "{base_info}");
    e.pull(SNAPSHOTTER, "b");
    // b's unpack found the base by its chain id and left it as it was.
    assert_eq!(
        e.snap_ok(SNAPSHOTTER, &["info", &imgs.base_chain()]),
        base_info,
        "the base snapshot after b's pull"
    );
    let rows = e.snapshots(SNAPSHOTTER);
    let mut committed: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.kind == "Committed")
        .map(|r| (r.key.clone(), r.parent.clone()))
        .collect();
    committed.sort();
    let mut want = vec![
        (imgs.base_chain(), String::new()),
        (imgs.a_chain(), imgs.base_chain()),
        (imgs.b_chain(), imgs.base_chain()),
    ];
    want.sort();
    assert_eq!(committed, want, "committed snapshots: {rows:#?}");
    assert_eq!(rows.len(), 3, "only committed snapshots: {rows:#?}");
    // A built-in snapshotter keeps one dir per snapshot: three, the base once.
    if let Ok(dirs) = fs::read_dir(e.ctrd.snapshotter_dir(SNAPSHOTTER).join("snapshots")) {
        assert_eq!(dirs.count(), 3, "snapshot dirs of {SNAPSHOTTER}");
    }
    // Each layer blob crossed the wire once, the base one too: b's pull found it in
    // the content store (`ctr images pull` fetches every blob the content store lacks,
    // then unpacks what has no snapshot yet).
    for l in [&imgs.base, &imgs.a.layers[1], &imgs.b.layers[1]] {
        assert_eq!(
            e.proxy.count("GET", &format!("/blobs/{}", l.digest)),
            1,
            "downloads of {}",
            l.digest
        );
    }
    let listed = e.ctrd.ok(&["images", "ls", "-q"]);
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort_unstable();
    assert_eq!(names, [e.image_ref("a"), e.image_ref("b")]);
}

/// Whether each path exists, one line each, from a shell in the container.
const PRESENCE: &str = r#"for p in /etc/issue.net /etc/issue /etc/motd /etc/motd.moved /root/new.txt /usr/share/doc/bash /usr/share/doc/bash.moved /srv/b /srv/b.moved; do if [ -e "$p" ]; then echo "$p present"; else echo "$p absent"; fi; done"#;

fn presence(present: &[&str]) -> String {
    [
        "/etc/issue.net",
        "/etc/issue",
        "/etc/motd",
        "/etc/motd.moved",
        "/root/new.txt",
        "/usr/share/doc/bash",
        "/usr/share/doc/bash.moved",
        "/srv/b",
        "/srv/b.moved",
    ]
    .iter()
    .map(|p| {
        let state = if present.contains(p) {
            "present"
        } else {
            "absent"
        };
        format!("{p} {state}\n")
    })
    .collect()
}

#[test]
fn containers_write_delete_and_rename() {
    if !can_run() {
        return;
    }
    let e = Engine::new();
    e.pull(SNAPSHOTTER, "a");
    e.pull(SNAPSHOTTER, "b");
    let before = e.snapshots_listing(SNAPSHOTTER);
    let script = format!(
        "set -e
        echo written > /root/new.txt
        rm /etc/issue
        mv /etc/motd /etc/motd.moved
        mv /usr/share/doc/bash /usr/share/doc/bash.moved
        mv /srv/b /srv/b.moved
        {PRESENCE}
        cat /root/new.txt /srv/b.moved/dir/file /etc/motd.moved
        ls /usr/share/doc/bash.moved
        stat -c '%u:%g %a' /srv/b.moved/dir /srv/b.moved/dir/file"
    );
    let out = e.run_sh(SNAPSHOTTER, "b", "changes", &script);
    let src = rootfs();
    let mut docs: Vec<String> = fs::read_dir(src.join("usr/share/doc/bash"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    docs.sort();
    assert!(docs.len() > 3, "{docs:?}");
    let mut want = presence(&[
        "/etc/motd.moved",
        "/root/new.txt",
        "/usr/share/doc/bash.moved",
        "/srv/b.moved",
    ]);
    want.push_str("written\n");
    want.push_str(B_FILE_TEXT);
    want.push_str(&fs::read_to_string(src.join("etc/motd")).unwrap());
    for d in &docs {
        want.push_str(&format!("{d}\n"));
    }
    want.push_str("0:0 750\n1000:1000 640\n");
    assert_eq!(out, want, "the container's own view of its changes");
    // The next container of the image starts from the image again.
    let out = e.run_sh(SNAPSHOTTER, "b", "fresh", PRESENCE);
    let want = presence(&["/etc/issue", "/etc/motd", "/usr/share/doc/bash", "/srv/b"]);
    assert_eq!(out, want, "a fresh container of b");
    // Image a keeps what b deletes, and has its own layer.
    let out = e.run_sh(
        SNAPSHOTTER,
        "a",
        "other",
        &format!("cat /{B_DELETES} /srv/a/link; test ! -e /srv/b"),
    );
    let want = fs::read_to_string(src.join(B_DELETES)).unwrap() + A_HELLO_TEXT;
    assert_eq!(out, want, "a container of a");
    // `--rm` took the containers' snapshots away.
    assert_eq!(e.snapshots_listing(SNAPSHOTTER), before);
}

/// The same changes, made from outside on a mounted active snapshot.
const OUTSIDE_CHANGES: &str = "set -e
    echo written > root/new.txt
    rm etc/issue
    mv etc/motd etc/motd.moved
    mv usr/share/doc/bash usr/share/doc/bash.moved
    mv srv/b srv/b.moved
    echo appended >> srv/b.moved/dir/file
    mkdir -p opt/new/dir
    chown 1000:1000 opt/new/dir
    chmod 2700 opt/new/dir
    ln -s ../../etc/hostname opt/new/link
    mknod opt/new/fifo p
    chmod 4755 usr/bin/env
    chown 1000:1000 etc/debian_version";

/// A container root of image b (read-only view, then an active snapshot after the same
/// changes) under snapshotters `s1` and `s2`: equal trees.
fn compare_roots(s1: &str, s2: &str) {
    let imgs = Images::get();
    let e = Engine::new();
    e.pull(s1, "b");
    e.pull(s2, "b");
    // Views first: a view has no `gc.root` label until `Engine::view` gives it one,
    // and containerd collects garbage soon after each removal.
    for s in [s1, s2] {
        e.view(s, "view", &imgs.b_chain());
        e.snap_ok(s, &["prepare", "root", &imgs.b_chain()]);
    }
    let mut views = Vec::new();
    let mut actives = Vec::new();
    for s in [s1, s2] {
        let m = e.path(&format!("view-{s}"));
        let g = e.mount_snapshot(s, "view", &m);
        views.push(tree_listing(&m));
        drop(g);
        let m = e.path(&format!("root-{s}"));
        let g = e.mount_snapshot(s, "root", &m);
        support::shell::shell(&format!(
            "cd {} && {OUTSIDE_CHANGES}",
            support::shell::q(&m)
        ));
        actives.push(tree_listing(&m));
        drop(g);
    }
    for s in [s1, s2] {
        e.snap_ok(s, &["rm", "view"]);
        e.snap_ok(s, &["rm", "root"]);
    }
    // Not vacuous: the whole rootfs, b's own layer, the whiteout.
    let v = &views[0];
    assert!(v.len() > 5000, "{} entries", v.len());
    assert!(v.contains_key(B_FILE) && v.contains_key("usr/bin/dpkg"));
    assert!(!v.contains_key(B_DELETES));
    assert_eq!(v[B_FILE].split(' ').nth(2), Some("1000:1000"));
    let a = &actives[0];
    assert!(a.contains_key("srv/b.moved/dir/file") && !a.contains_key("srv/b"));
    assert!(a["opt/new/link"].starts_with("l 777 0:0 18 ../../etc/hostname"));
    assert!(a["opt/new/dir"].starts_with("d 2700 1000:1000"));
    assert!(a["usr/bin/env"].starts_with("f 4755 0:0"));
    assert_same_listing(&views[0], &views[1], &format!("view of b: {s1} vs {s2}"));
    assert_same_listing(
        &actives[0],
        &actives[1],
        &format!("changed root: {s1} vs {s2}"),
    );
}

#[test]
fn container_roots_match_the_reference_snapshotter() {
    if !can_run() {
        return;
    }
    compare_roots(SNAPSHOTTER, reference_snapshotter());
}

#[test]
fn prepare_commit_view_remove_round_trip() {
    if !can_run() {
        return;
    }
    let imgs = Images::get();
    let s = SNAPSHOTTER;
    let e = Engine::new();
    e.pull(s, "a");
    let before = e.snapshots_listing(s);

    e.snap_ok(s, &["prepare", "work", &imgs.a_chain()]);
    let m = e.path("work");
    let mut g = e.mount_snapshot(s, "work", &m);
    assert_eq!(fs::read_to_string(m.join(A_HELLO)).unwrap(), A_HELLO_TEXT);
    fs::write(m.join("srv/a/written.txt"), b"committed data\n").unwrap();
    fs::remove_file(m.join("srv/a/link")).unwrap();
    g.unmount();
    e.snap_ok(s, &["commit", "done", "work"]);
    let rows = e.snapshots(s);
    let row = |k: &str| rows.iter().find(|r| r.key == k).cloned();
    assert_eq!(row("work"), None, "commit replaces the active snapshot");
    let done = row("done").expect("the committed snapshot");
    assert_eq!(
        (done.parent.as_str(), done.kind.as_str()),
        (imgs.a_chain().as_str(), "Committed")
    );

    e.view(s, "look", "done");
    let m = e.path("look");
    let mut g = e.mount_snapshot(s, "look", &m);
    assert_eq!(
        fs::read_to_string(m.join("srv/a/written.txt")).unwrap(),
        "committed data\n"
    );
    assert_eq!(fs::read_to_string(m.join(A_HELLO)).unwrap(), A_HELLO_TEXT);
    assert!(!m.join("srv/a/link").exists(), "the deletion was committed");
    let err = fs::write(m.join("srv/a/more"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "a view is read-only");
    g.unmount();

    // Parents go last: each of these has a child.
    for key in ["done".to_string(), imgs.a_chain(), imgs.base_chain()] {
        let err = e.snap_fails(s, &["rm", &key]);
        assert_eq!(
            err,
            format!(
                "ctr: failed to remove \"{key}\": cannot remove snapshot with child: failed precondition"
            )
        );
    }
    e.snap_ok(s, &["rm", "look"]);
    e.snap_ok(s, &["rm", "done"]);
    assert_eq!(e.snapshots_listing(s), before);
}

#[test]
fn an_image_removed_under_a_running_container() {
    if !can_run() {
        return;
    }
    let imgs = Images::get();
    let s = SNAPSHOTTER;
    let e = Engine::new();
    e.pull(s, "a");
    e.pull(s, "b");
    e.run_detached(s, "a", "long");
    e.ctrd.ok(&["images", "rm", &e.image_ref("a")]);
    assert_eq!(e.ctrd.ok(&["images", "ls", "-q"]).trim(), e.image_ref("b"));
    // The container goes on: its root is still there, a's layer included.
    assert_eq!(e.exec("long", "ls", &["ls", "/srv/a"]), "hello.txt\nlink\n");
    assert_eq!(e.exec("long", "cat", &["cat", "/srv/a/link"]), A_HELLO_TEXT);
    let out = e.exec(
        "long",
        "write",
        &[
            "sh",
            "-c",
            "echo more > /srv/a/more && cat /srv/a/more && ls / | wc -l",
        ],
    );
    let top = fs::read_dir(rootfs())
        .unwrap()
        .filter(|d| {
            !d.as_ref()
                .unwrap()
                .file_name()
                .as_encoded_bytes()
                .starts_with(b".")
        })
        .count();
    assert_eq!(out, format!("more\n{top}\n"));
    let rows = e.snapshots(s);
    assert!(
        rows.iter()
            .any(|r| r.key == "long" && r.parent == imgs.a_chain() && r.kind == "Active")
    );
    assert!(rows.iter().any(|r| r.key == imgs.a_chain()), "{rows:#?}");
    e.remove_container("long");
    // Nothing holds a's own snapshot now: containerd's collector removes it; b's and
    // the base stay.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut keys;
    loop {
        keys = e
            .snapshots(s)
            .into_iter()
            .map(|r| r.key)
            .collect::<Vec<_>>();
        keys.sort();
        if !keys.contains(&imgs.a_chain()) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut want = vec![imgs.base_chain(), imgs.b_chain()];
    want.sort();
    assert_eq!(keys, want, "after the container and image a are gone");
    assert_eq!(
        e.run_sh(s, "b", "b1", &format!("cat /{B_FILE}")),
        B_FILE_TEXT
    );
}

/// An error line with the internal snapshot ids (`NS/17/key`: how containerd's
/// metadata store names a snapshot to the snapshotter) made `NS/N/key`.
fn without_internal_id(line: &str, ns: &str) -> String {
    let pat = format!("{ns}/");
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find(&pat) {
        out.push_str(&rest[..i + pat.len()]);
        rest = &rest[i + pat.len()..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && rest[digits..].starts_with('/') {
            out.push('N');
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn bad_snapshot_requests_are_refused_and_change_nothing() {
    if !can_run() {
        return;
    }
    let e = Engine::new();
    // The answers are containerd 1.6's with its overlayfs snapshotter (another built-in
    // one, `native`, words the last two differently): overlayfs must still give them
    // here, and the snapshotter under test the same.
    for s in ["overlayfs", SNAPSHOTTER] {
        bad_requests(&e, s);
        if SNAPSHOTTER == "overlayfs" {
            break;
        }
    }
}

/// Each bad request to snapshotter `s` gets the answer overlayfs gives, and leaves the
/// snapshots as they were.
fn bad_requests(e: &Engine, s: &str) {
    let imgs = Images::get();
    e.pull(s, "a");
    let (base, top) = (imgs.base_chain(), imgs.a_chain());
    e.snap_ok(s, &["prepare", "active", &top]);
    e.view(s, "view", &top);
    let ns = e.ctrd.namespace.clone();
    let target = e.path("never-mounted");
    let target = target.to_str().unwrap();
    let missing = format!("sha256:{}", "0".repeat(64));
    // containerd's metadata store answers most of these before a snapshotter sees
    // them; a commit of a view and the mounts of a committed snapshot are the
    // snapshotter's own answers.
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["info", "nope"],
            "ctr: snapshot nope does not exist: not found".into(),
        ),
        (
            vec!["usage", "nope"],
            "ctr: snapshot nope does not exist: not found".into(),
        ),
        (
            vec!["mounts", target, "nope"],
            "ctr: snapshot nope does not exist: not found".into(),
        ),
        (
            vec!["rm", "nope"],
            "ctr: failed to remove \"nope\": snapshot nope does not exist: not found".into(),
        ),
        (
            vec!["commit", "done", "nope"],
            "ctr: snapshot nope does not exist: not found".into(),
        ),
        (
            vec!["prepare", "new", &missing],
            format!("ctr: parent snapshot {missing} does not exist: not found"),
        ),
        (
            vec!["view", "new", &missing],
            format!("ctr: parent snapshot {missing} does not exist: not found"),
        ),
        (
            vec!["prepare", "active", &top],
            "ctr: snapshot \"active\": already exists".into(),
        ),
        (
            vec!["view", "active", &top],
            "ctr: snapshot \"active\": already exists".into(),
        ),
        (
            vec!["prepare", &top, &base],
            format!("ctr: snapshot \"{top}\": already exists"),
        ),
        (
            vec!["commit", &base, "active"],
            format!("ctr: snapshot \"{base}\": already exists"),
        ),
        (
            vec!["commit", "done", "view"],
            format!(
                "ctr: failed to commit snapshot: snapshot \"{ns}/N/view\" is not active: failed precondition"
            ),
        ),
        (
            vec!["mounts", target, &top],
            format!(
                "ctr: failed to get active mount: requested snapshot {ns}/N/{top} not active or view: failed precondition"
            ),
        ),
        (
            vec!["rm", &top],
            format!(
                "ctr: failed to remove \"{top}\": cannot remove snapshot with child: failed precondition"
            ),
        ),
        (
            vec!["rm", &base],
            format!(
                "ctr: failed to remove \"{base}\": cannot remove snapshot with child: failed precondition"
            ),
        ),
    ];
    let listing = e.snapshots_listing(s);
    assert_eq!(listing.lines().count(), 5, "{listing}");
    // A built-in snapshotter's own dir (nothing for a proxy one, whose store is apart).
    let backend = e.ctrd.snapshotter_dir(s);
    let backend_entries = || {
        let mut v: Vec<_> = fs::read_dir(backend.join("snapshots"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let entries = backend_entries();
    let mut wrong = Vec::new();
    for (args, want) in &cases {
        let got = without_internal_id(&e.snap_fails(s, args), &ns);
        if &got != want {
            wrong.push(format!("{s} {args:?}:\n  got  {got}\n  want {want}"));
        }
        assert_eq!(e.snapshots_listing(s), listing, "{s} after {args:?}");
        assert_eq!(backend_entries(), entries, "the dir of {s} after {args:?}");
        assert!(!support::mounts::is_mounted(std::path::Path::new(target)));
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );
    // The snapshots still work.
    e.snap_ok(s, &["commit", "done", "active"]);
    e.snap_ok(s, &["rm", "view"]);
    e.snap_ok(s, &["rm", "done"]);
}
